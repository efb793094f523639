"""pairdb's metadata in PostgreSQL, through asyncpg: tenants, nodes, ring tokens, leases.

Every change to what coordinators route by bumps the registry epoch in the
same transaction and NOTIFYs `pairdb_registry`, so caches know to reload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from pairdb.coordinator import schema
from pairdb.kernel.errors import AlreadyExists
from pairdb.kernel.migration import ChangeType, NodeState, Phase, Status
from pairdb.kernel.repair import DEFAULT_GC_GRACE_SECONDS

log = structlog.get_logger()

NOTIFY_CHANNEL = "pairdb_registry"
# A coordinator renewed its lease (and reported the epoch it applied): barriers look again.
APPLIED_CHANNEL = "pairdb_applied"
_TOKEN_OFFSET = 1 << 63


@dataclass(frozen=True, slots=True)
class TenantInfo:
    tenant_id: str
    replication_factor: int
    created_at: datetime
    # The registry epoch that created it: views of the ring older than that never route it.
    created_epoch: int = 0
    # How long its deletes' tombstones are kept at least (tombstone GC, activities/repair.py).
    gc_grace_seconds: int = DEFAULT_GC_GRACE_SECONDS
    # Its limits (coordinator/quotas.py); 0: unlimited.
    max_ops_per_second: int = 0
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Registration:
    """A coordinator's claim on its id: its version origin and where its last incarnation's clock got."""

    origin: int
    hlc_ceiling_ms: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    host: str
    port: int
    status: NodeState
    virtual_nodes: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class InFlight:
    """The ring change in progress, as the dual-write registry knows it."""

    migration_id: str
    node_id: str
    phase: Phase
    change: ChangeType = ChangeType.NODE_ADDITION
    # A replacement's dead node, whose tokens node_id takes.
    replaces: str = ""
    # An RF change's tenant and the replication factor it moves to.
    tenant_id: str = ""
    replication_factor: int = 0


@dataclass(frozen=True, slots=True)
class MigrationRow:
    migration_id: str
    type: str
    node_id: str
    host: str
    port: int
    virtual_nodes: int
    workflow_id: str
    phase: Phase
    status: Status
    progress: dict[str, Any]
    error: str
    started_at: datetime
    completed_at: datetime | None
    estimated_completion: datetime | None
    request_id: str = ""
    node_dead: bool = False
    replaces: str = ""
    tenant_id: str = ""
    replication_factor: int = 0

    @property
    def change(self) -> ChangeType:
        return ChangeType(self.type)

    def in_flight(self) -> InFlight:
        """The change as the registry routes by it (its phase as recorded)."""
        return InFlight(
            self.migration_id,
            self.node_id,
            self.phase,
            self.change,
            self.replaces,
            self.tenant_id,
            self.replication_factor,
        )

    @property
    def subject(self) -> str:
        """What the change is about: the node added or removed, the dead node replaced, the tenant."""
        return self.tenant_id or self.replaces or self.node_id

    @property
    def detail(self) -> str:
        """What the subject does not say: the replacement node, the RF, a dead node, an error."""
        parts = []
        if self.replaces:
            parts.append(f"by {self.node_id}")
        if self.tenant_id:
            parts.append(f"to replication factor {self.replication_factor}")
        if self.node_dead:
            parts.append("dead")
        if self.error:
            parts.append(self.error)
        return "; ".join(parts)

    @property
    def dead(self) -> frozenset[str]:
        """Nodes this change must never wait for: a dead node removed or replaced."""
        if self.replaces:
            return frozenset({self.replaces})
        return frozenset({self.node_id}) if self.node_dead else frozenset()


@dataclass(frozen=True, slots=True)
class PlannedRange:
    index: int
    start: int
    end: int
    sources: list[str]
    keys_estimate: int
    copied: bool
    verified: bool
    copies: int
    # The node the range is copied to.
    target: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a coordinator routes by, read in one transaction."""

    epoch: int
    nodes: dict[str, NodeInfo]
    tokens: list[tuple[int, str]]
    tenants: dict[str, TenantInfo]
    in_flight: InFlight | None = None


def to_db_token(token: int) -> int:
    return token - _TOKEN_OFFSET


def from_db_token(value: int) -> int:
    return value + _TOKEN_OFFSET


def _tenant(row: asyncpg.Record) -> TenantInfo:
    return TenantInfo(
        row["tenant_id"],
        row["replication_factor"],
        row["created_at"],
        row["created_epoch"],
        row["gc_grace_seconds"],
        row["max_ops_per_second"],
        row["max_bytes"],
    )


def _node(row: asyncpg.Record) -> NodeInfo:
    return NodeInfo(row["node_id"], row["host"], row["port"], NodeState(row["status"]), row["virtual_nodes"])


# A connection of its own or one from the pool: what a transaction's helpers take.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def bump_epoch(conn: Connection) -> int:
    epoch: int = await conn.fetchval("UPDATE registry SET epoch = epoch + 1 RETURNING epoch")
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(epoch))
    return epoch


class Metadata:
    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn

    @classmethod
    async def connect(
        cls, dsn: str, min_size: int = 1, max_size: int = 10, wait: float = 60.0, migrate: bool = True
    ) -> Metadata:
        """Open a pool and bring the schema up to date (unless not `migrate`).

        A pool of one (min_size = max_size = 1) is a dedicated connection that asyncpg
        reconnects on its next use once it breaks: what the coordinator's lease runs on.

        PostgreSQL may be starting or recovering (after a crash, or started
        alongside us): keep trying for `wait` seconds before giving up.
        """
        deadline = time.monotonic() + wait
        delay = 0.1
        while True:
            try:
                pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
                if migrate:
                    async with pool.acquire() as conn:
                        await schema.apply(conn)
                return cls(pool, dsn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "PostgreSQL not ready; retrying", error=f"{type(exc).__name__}: {exc}", delay=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        await self.pool.close()

    async def epoch(self) -> int:
        value: int = await self.pool.fetchval("SELECT epoch FROM registry")
        return value

    async def snapshot(self) -> Snapshot:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            epoch = await conn.fetchval("SELECT epoch FROM registry")
            nodes = {r["node_id"]: _node(r) for r in await conn.fetch("SELECT * FROM nodes")}
            tokens = [
                (from_db_token(r["token"]), r["node_id"])
                for r in await conn.fetch("SELECT token, node_id FROM ring_tokens")
            ]
            tenants = {r["tenant_id"]: _tenant(r) for r in await conn.fetch("SELECT * FROM tenants")}
            row = await conn.fetchrow(
                "SELECT migration_id, node_id, phase, type, replaces, tenant_id, replication_factor"
                " FROM migrations WHERE status = 'in_progress'"
            )
        in_flight = (
            InFlight(
                row["migration_id"],
                row["node_id"],
                Phase(row["phase"]),
                ChangeType(row["type"]),
                row["replaces"],
                row["tenant_id"],
                row["replication_factor"],
            )
            if row
            else None
        )
        return Snapshot(epoch, nodes, tokens, tenants, in_flight)

    # -- tenants ---------------------------------------------------------------

    async def create_tenant(
        self,
        tenant_id: str,
        replication_factor: int,
        gc_grace_seconds: int = DEFAULT_GC_GRACE_SECONDS,
        max_ops_per_second: int = 0,
        max_bytes: int = 0,
    ) -> TenantInfo:
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialised with ring changes (join_node_directly), so its epoch orders it after them.
            await conn.execute("SELECT 1 FROM registry FOR UPDATE")
            exists = await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id)
            if exists:
                raise AlreadyExists(f"tenant {tenant_id!r} already exists")
            epoch = await bump_epoch(conn)
            row = await conn.fetchrow(
                "INSERT INTO tenants (tenant_id, replication_factor, created_epoch, gc_grace_seconds,"
                " max_ops_per_second, max_bytes) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                tenant_id,
                replication_factor,
                epoch,
                gc_grace_seconds,
                max_ops_per_second,
                max_bytes,
            )
        assert row is not None
        return _tenant(row)

    async def get_tenant(self, tenant_id: str) -> TenantInfo | None:
        row = await self.pool.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)
        return None if row is None else _tenant(row)

    async def set_tenant_limits(
        self, tenant_id: str, max_ops_per_second: int | None, max_bytes: int | None
    ) -> TenantInfo | None:
        """Change a tenant's limits (None keeps one); None when there is no such tenant.

        Bumps the epoch: every coordinator reloads the registry, and with it the limits.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM registry FOR UPDATE")
            row = await conn.fetchrow(
                "UPDATE tenants SET max_ops_per_second = coalesce($2, max_ops_per_second),"
                " max_bytes = coalesce($3, max_bytes) WHERE tenant_id = $1 RETURNING *",
                tenant_id,
                max_ops_per_second,
                max_bytes,
            )
            if row is None:
                return None
            await bump_epoch(conn)
        return _tenant(row)

    # -- nodes -----------------------------------------------------------------

    async def list_nodes(self) -> list[NodeInfo]:
        return [_node(r) for r in await self.pool.fetch("SELECT * FROM nodes ORDER BY node_id")]

    async def join_node_directly(self, node: NodeInfo, tokens: Sequence[int]) -> bool:
        """Put a node straight into the ring as active, if the cluster has no tenant yet.

        With no tenant there is no data and no request to route, and a tenant
        created later is routed only by views that include this node (its
        created_epoch is newer). Returns False, changing nothing, once a tenant exists.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise with every ring change and tenant creation.
            await conn.execute("SELECT 1 FROM registry FOR UPDATE")
            if await conn.fetchval("SELECT 1 FROM tenants LIMIT 1"):
                return False
            if await conn.fetchval("SELECT 1 FROM migrations WHERE status = 'in_progress'"):
                return False
            exists = await conn.fetchval("SELECT 1 FROM nodes WHERE node_id = $1", node.node_id)
            if exists:
                raise AlreadyExists(f"node {node.node_id!r} is already in the cluster")
            taken = await conn.fetchval(
                "SELECT node_id FROM nodes WHERE host = $1 AND port = $2", node.host, node.port
            )
            if taken:
                raise AlreadyExists(f"{node.address} is already the address of node {taken!r}")
            await conn.execute(
                "INSERT INTO nodes (node_id, host, port, status, virtual_nodes) VALUES ($1, $2, $3, $4, $5)",
                node.node_id,
                node.host,
                node.port,
                node.status,
                node.virtual_nodes,
            )
            await conn.executemany(
                "INSERT INTO ring_tokens (token, node_id) VALUES ($1, $2)",
                [(to_db_token(t), node.node_id) for t in tokens],
            )
            await bump_epoch(conn)
        return True

    # -- coordinators ------------------------------------------------------------
    # Lease times are PostgreSQL's clock_timestamp() when the statement runs: later than
    # the moment the coordinator started counting its own lease, so it always lapses
    # on the coordinator first.

    async def register_coordinator(
        self, coordinator_id: str, address: str, lease_seconds: float, incarnation: str
    ) -> Registration | None:
        """Take coordinator_id's lease for this incarnation, unless another one holds it live.

        Returns None while another process's lease on the id is live.
        """
        row = await self.pool.fetchrow(
            "INSERT INTO coordinators (coordinator_id, address, lease_expires_at, incarnation)"
            " VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3), $4)"
            " ON CONFLICT (coordinator_id) DO UPDATE SET address = EXCLUDED.address,"
            "   lease_expires_at = EXCLUDED.lease_expires_at, started_at = now(),"
            "   incarnation = EXCLUDED.incarnation"
            " WHERE coordinators.lease_expires_at <= clock_timestamp()"
            "   OR coordinators.incarnation = EXCLUDED.incarnation"
            " RETURNING origin, hlc_ceiling_ms",
            coordinator_id,
            address,
            lease_seconds,
            incarnation,
        )
        return None if row is None else Registration(row["origin"], row["hlc_ceiling_ms"])

    async def lease_holder(self, coordinator_id: str) -> tuple[str, float] | None:
        """(address, seconds left) of the live lease on coordinator_id, if any."""
        row = await self.pool.fetchrow(
            "SELECT address, extract(epoch FROM lease_expires_at - clock_timestamp()) AS left"
            " FROM coordinators WHERE coordinator_id = $1 AND lease_expires_at > clock_timestamp()",
            coordinator_id,
        )
        return None if row is None else (row["address"], float(row["left"]))

    async def renew_lease(
        self,
        coordinator_id: str,
        incarnation: str,
        applied_epoch: int,
        lease_seconds: float,
        hlc_ceiling_ms: int,
    ) -> bool:
        """Extend this incarnation's lease; False when another process has taken the id over.

        NOTIFYs APPLIED_CHANNEL, so a barrier waiting for this coordinator looks again at once.
        """
        renewed = await self.pool.fetch(
            "WITH renewed AS ("
            " UPDATE coordinators SET applied_epoch = $3,"
            " lease_expires_at = clock_timestamp() + make_interval(secs => $4),"
            " hlc_ceiling_ms = greatest(hlc_ceiling_ms, $5)"
            " WHERE coordinator_id = $1 AND incarnation = $2 RETURNING coordinator_id)"
            " SELECT pg_notify($6, coordinator_id) FROM renewed",
            coordinator_id,
            incarnation,
            applied_epoch,
            lease_seconds,
            hlc_ceiling_ms,
            APPLIED_CHANNEL,
        )
        return len(renewed) == 1

    async def release_lease(self, coordinator_id: str, incarnation: str, hlc_ceiling_ms: int) -> None:
        """Give the lease up at a clean stop, with the clock's real high-water mark (no wait to restart)."""
        await self.pool.execute(
            "UPDATE coordinators SET lease_expires_at = clock_timestamp(), hlc_ceiling_ms = $3"
            " WHERE coordinator_id = $1 AND incarnation = $2",
            coordinator_id,
            incarnation,
            hlc_ceiling_ms,
        )
