"""The roles a caller can hold, and who a caller is once authenticated.

Client roles come from API keys (or an admin client certificate); cluster roles
only from certificates signed by the cluster's CA, whose subject OU names the role.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    # Tenants, nodes, ring changes, repairs, keys, the audit log.
    ADMIN = "admin"
    # One tenant's data.
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"
    # Cluster processes (certificates only): what a storage node lets in.
    COORDINATOR = "coordinator"
    WORKER = "worker"
    STORAGE_NODE = "storage-node"

    @property
    def tenant_scoped(self) -> bool:
        return self in (Role.READ_WRITE, Role.READ_ONLY)


CLUSTER_ROLES = frozenset({Role.COORDINATOR, Role.WORKER, Role.STORAGE_NODE})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a key's id or a certificate's common name, its role, its tenant."""

    name: str
    role: Role
    # Only for tenant-scoped roles.
    tenant: str | None = None
