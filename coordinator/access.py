"""Who may call what: every CoordinatorService RPC's required permission, in one table.

Data reads need a read-only or read-write key on every tenant they touch,
writes and deletes a read-write key, everything else (tenants, nodes, ring
changes, repairs, keys, the audit log) the admin role. An RPC without a rule
is refused to everyone: a method added later is closed until it gets one.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pairdb.proto import coordinator_pb2
from pairdb.security.roles import Principal, Role

SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


class Need(enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def _one(request: Any) -> Iterable[str]:
    return (request.tenant_id,)


def _items(request: Any) -> Iterable[str]:
    return {item.tenant_id for item in request.items}


@dataclass(frozen=True, slots=True)
class Rule:
    need: Need
    # The tenants a data call touches (every item's for batches); None for admin calls.
    tenants: Callable[[Any], Iterable[str]] | None = None


_ADMIN = Rule(Need.ADMIN)

RULES: dict[str, Rule] = {
    "WriteKeyValue": Rule(Need.WRITE, _one),
    "DeleteKeyValue": Rule(Need.WRITE, _one),
    "BatchWrite": Rule(Need.WRITE, _items),
    "ReadKeyValue": Rule(Need.READ, _one),
    "BatchRead": Rule(Need.READ, _items),
    "GetTenant": Rule(Need.READ, _one),
    "CreateTenant": _ADMIN,
    "UpdateTenant": _ADMIN,
    "SetTenantLimits": _ADMIN,
    "AddStorageNode": _ADMIN,
    "RemoveStorageNode": _ADMIN,
    "ReplaceStorageNode": _ADMIN,
    "ListStorageNodes": _ADMIN,
    "ListMigrations": _ADMIN,
    "GetMigrationStatus": _ADMIN,
    "CancelMigration": _ADMIN,
    "RollbackMigration": _ADMIN,
    "PauseMigration": _ADMIN,
    "ThrottleMigration": _ADMIN,
    "Repair": _ADMIN,
    "ScheduleRepair": _ADMIN,
    "CreateApiKey": _ADMIN,
    "ListApiKeys": _ADMIN,
    "RevokeApiKey": _ADMIN,
    "ListAuditEvents": _ADMIN,
}

# The caller of the RPC being served (each RPC runs in its own task): set by the authorization wrapper.
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def bind(principal: Principal) -> None:
    _principal.set(principal)


def current() -> Principal | None:
    return _principal.get()


def rule(method: str) -> Rule | None:
    """The rule of a full method name (/pairdb.v1.CoordinatorService/X) or a bare RPC name."""
    return RULES.get(method.rpartition("/")[2])


def who(principal: Principal) -> str:
    """The caller as a refusal names it: `key k1`, `certificate ops-laptop`."""
    if principal.name.startswith("cert:"):
        return f"certificate {principal.name.removeprefix('cert:')}"
    return f"key {principal.name}"


def describe(principal: Principal) -> str:
    """`key k1 (read-only on tenant a)`."""
    scope = f" on tenant {principal.tenant}" if principal.tenant else ""
    return f"{who(principal)} ({principal.role}{scope})"


def denial(principal: Principal, method: str, request: Any) -> str | None:
    """Why principal may not make this call, or None when it may."""
    name = method.rpartition("/")[2]
    found = RULES.get(name)
    if found is None:
        return f"{name} has no access rule, so it is refused to everyone"
    if principal.role is Role.ADMIN:
        return None
    if found.tenants is None:
        return f"{name} needs the admin role; the caller is {describe(principal)}"
    if not principal.role.tenant_scoped:
        return f"{name} needs a key for the tenant; the caller is {describe(principal)}"
    for tenant in sorted(found.tenants(request)):
        if tenant != principal.tenant:
            return f"{who(principal)} is for tenant {principal.tenant}, not {tenant or repr(tenant)}"
    if found.need is Need.WRITE and principal.role is not Role.READ_WRITE:
        return f"{who(principal)} is read-only on tenant {principal.tenant}: writes need a read-write key"
    return None
