"""The audit log: one structlog line and one audit_log row per admin RPC, refused ones too.

The row is written before the reply, so `pairdb audit` right after a call
shows it; a PostgreSQL hiccup costs the row (logged), never the action.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from pairdb.coordinator.auth_store import AuditEvent, AuthStore
from pairdb.security.roles import Principal

log = structlog.get_logger()

WRITE_TIMEOUT = 2.0
_MAX_TARGET_CHARS = 2_000


def target_of(request: Any) -> dict[str, Any]:
    """The request's fields; admin requests carry no secret (CreateApiKey's reply does, never logged)."""
    if not isinstance(request, Message):
        return {}
    fields = MessageToDict(request, preserving_proto_field_name=True)
    if len(json.dumps(fields)) > _MAX_TARGET_CHARS:
        return {"truncated": True, "fields": sorted(fields)}
    return fields


class Auditor:
    def __init__(self, store: AuthStore, coordinator_id: str) -> None:
        self._store = store
        self._coordinator_id = coordinator_id

    async def record(
        self,
        principal: Principal | None,
        action: str,
        request: Any,
        outcome: str,
        message: str = "",
        *,
        row: bool = True,
    ) -> None:
        """Log the event; row=False only logs it (calls without credentials must not write to PostgreSQL)."""
        event = AuditEvent(
            principal=principal.name if principal else "unauthenticated",
            role=principal.role.value if principal else "",
            action=action,
            target=target_of(request),
            outcome=outcome,
            message=message,
            coordinator_id=self._coordinator_id,
        )
        log.info(
            "audit",
            principal=event.principal,
            role=event.role,
            action=action,
            target=event.target,
            outcome=outcome,
            message=message,
        )
        if not row:
            return
        try:
            await asyncio.wait_for(self._store.record(event), WRITE_TIMEOUT)
        except Exception as exc:
            log.error(
                "Audit row not written",
                action=action,
                principal=event.principal,
                error=f"{type(exc).__name__}: {exc}",
            )
