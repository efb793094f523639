"""API keys and the audit log in PostgreSQL (schema 0006), through asyncpg."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pairdb.kernel.errors import NotFound
from pairdb.security import api_keys
from pairdb.security.roles import Role

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool
CLIENT_ROLES = (Role.ADMIN, Role.READ_WRITE, Role.READ_ONLY)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key: everything but its secret, which is not stored."""

    key_id: str
    name: str
    role: Role
    tenant_id: str | None
    secret_sha256: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    principal: str
    role: str
    action: str
    target: dict[str, Any]
    outcome: str
    message: str = ""
    coordinator_id: str = ""
    at: datetime | None = None
    id: int = 0


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        row["key_id"],
        row["name"],
        Role(row["role"]),
        row["tenant_id"],
        row["secret_sha256"],
        row["created_at"],
        row["created_by"],
        row["revoked_at"],
    )


def _event(row: asyncpg.Record) -> AuditEvent:
    target = row["target"]
    return AuditEvent(
        row["principal"],
        row["role"],
        row["action"],
        json.loads(target) if isinstance(target, str) else dict(target or {}),
        row["outcome"],
        row["message"],
        row["coordinator_id"],
        row["at"],
        row["id"],
    )


async def create_key(
    conn: Connection,
    role: Role,
    tenant_id: str | None,
    name: str,
    created_by: str,
    *,
    adopt: api_keys.KeyParts | None = None,
) -> tuple[KeyRecord, str]:
    """A new key, stored; returns its record and its token (the only time the token exists).

    adopt: store this key, made elsewhere (a first admin key handed in as a Docker secret).
    """
    if role not in CLIENT_ROLES:
        raise ValueError(f"an API key's role is admin, read-write or read-only, not {role}")
    if role.tenant_scoped != (tenant_id is not None):
        raise ValueError("read-write and read-only keys name a tenant; admin keys do not")
    new = adopt or api_keys.generate()
    row = await conn.fetchrow(
        "INSERT INTO api_keys (key_id, name, role, tenant_id, secret_sha256, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        new.key_id,
        name,
        role.value,
        tenant_id,
        new.secret_sha256,
        created_by,
    )
    assert row is not None  # INSERT ... RETURNING
    return _key(row), new.token


async def has_active_admin(conn: Connection) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)"
    )
    return found


class AuthStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_key(
        self, role: Role, tenant_id: str | None, name: str, created_by: str
    ) -> tuple[KeyRecord, str]:
        return await create_key(self._pool, role, tenant_id, name, created_by)

    async def key(self, key_id: str) -> KeyRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        return None if row is None else _key(row)

    async def keys(self) -> list[KeyRecord]:
        return [_key(r) for r in await self._pool.fetch("SELECT * FROM api_keys ORDER BY created_at, key_id")]

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoked now (a revoked key stays revoked at its first revocation time); NOT_FOUND if unknown."""
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 RETURNING *",
            key_id,
        )
        if row is None:
            raise NotFound(f"no API key {key_id!r}: `pairdb key list` shows them")
        return _key(row)

    async def record(self, event: AuditEvent) -> None:
        await self._pool.execute(
            "INSERT INTO audit_log (principal, role, action, target, outcome, message, coordinator_id)"
            " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
            event.principal,
            event.role,
            event.action,
            json.dumps(event.target),
            event.outcome,
            event.message,
            event.coordinator_id,
        )

    async def events(self, limit: int) -> list[AuditEvent]:
        """The newest `limit` events, newest first."""
        rows = await self._pool.fetch("SELECT * FROM audit_log ORDER BY id DESC LIMIT $1", limit)
        return [_event(r) for r in rows]
