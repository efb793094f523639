"""Migration rows and the data copy's plan and checkpoints, in PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from pairdb.coordinator.metadata import (
    Connection,
    Metadata,
    MigrationRow,
    PlannedRange,
    from_db_token,
    to_db_token,
)
from pairdb.kernel.errors import AlreadyExists
from pairdb.kernel.migration import ChangeType, NodeAdditionInput, NodeState, Phase, Status
from pairdb.serving import request_ids


@dataclass(frozen=True, slots=True)
class CopiedRange:
    """A planned range copied to its target: its checkpoint."""

    index: int
    keys: int
    size: int


@dataclass(frozen=True, slots=True)
class CopyTotals:
    """A migration's planned ranges summed, with when its copy began (None before that)."""

    ranges_total: int
    ranges_done: int
    keys_copied: int
    bytes_copied: int
    keys_total: int
    ranges_verified: int
    started_at: float | None


def _migration(row: asyncpg.Record) -> MigrationRow:
    progress = row["progress"]
    return MigrationRow(
        migration_id=row["migration_id"],
        type=row["type"],
        node_id=row["node_id"],
        host=row["host"],
        port=row["port"],
        virtual_nodes=row["virtual_nodes"],
        workflow_id=row["workflow_id"],
        phase=Phase(row["phase"]),
        status=Status(row["status"]),
        progress=json.loads(progress) if isinstance(progress, str) else dict(progress or {}),
        error=row["error"] or "",
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        estimated_completion=row["estimated_completion"],
        request_id=row["request_id"],
        node_dead=row["node_dead"],
        replaces=row["replaces"],
        tenant_id=row["tenant_id"],
        replication_factor=row["replication_factor"],
    )


def _range(row: asyncpg.Record) -> PlannedRange:
    return PlannedRange(
        index=row["range_index"],
        start=from_db_token(row["start_token"]),
        end=from_db_token(row["end_token"]),
        sources=list(row["sources"]),
        keys_estimate=row["keys_estimate"],
        copied=row["copied"],
        verified=row["verified"],
        copies=row["copies"],
        target=row["target"] or "",
    )


@dataclass(frozen=True, slots=True)
class NewChange:
    """A ring change to record: what the migrations row says of it."""

    change: ChangeType
    # The node added, removed, or replacing `replaces`; '' for an RF change.
    node_id: str = ""
    host: str = ""
    port: int = 0
    virtual_nodes: int = 0
    started_by: str = ""
    node_dead: bool = False
    replaces: str = ""
    tenant_id: str = ""
    replication_factor: int = 0
    migration_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def addition(cls, request: NodeAdditionInput) -> NewChange:
        return cls(
            ChangeType.NODE_ADDITION,
            request.node_id,
            request.host,
            request.port,
            request.virtual_nodes,
            request.started_by,
            migration_id=request.migration_id,
        )


async def _check_new_node(conn: Connection, node_id: str, host: str, port: int) -> None:
    """ALREADY_EXISTS if the node a change brings in is in the cluster, or its address is taken."""
    node = await conn.fetchrow("SELECT status FROM nodes WHERE node_id = $1", node_id)
    if node is not None and node["status"] != NodeState.REMOVED:
        raise AlreadyExists(f"node {node_id!r} is already in the cluster ({node['status']})")
    taken = await conn.fetchval(
        "SELECT node_id FROM nodes WHERE host = $1 AND port = $2 AND status <> 'removed'", host, port
    )
    if taken:
        raise AlreadyExists(f"{host}:{port} is already the address of node {taken!r}")


class MigrationStore:
    def __init__(self, metadata: Metadata) -> None:
        self._pool = metadata.pool

    async def create(self, change: NewChange, workflow_id: str) -> MigrationRow:
        """Record a queued ring change.

        ALREADY_EXISTS if a node it brings in is in the cluster already (or its address is
        taken), or a node or tenant it touches has another unfinished ring change.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialised with every other ring change recorded or moved.
            await conn.execute("SELECT 1 FROM registry FOR UPDATE")
            if change.change.adds_node:
                await _check_new_node(conn, change.node_id, change.host, change.port)
            touched = [n for n in (change.node_id, change.replaces) if n]
            busy = await conn.fetchrow(
                "SELECT migration_id, type, node_id, replaces, tenant_id FROM migrations"
                " WHERE status IN ('queued', 'in_progress')"
                " AND ((type <> 'rf_change' AND (node_id = ANY($1::text[]) OR replaces = ANY($1::text[])))"
                "      OR (type = 'rf_change' AND tenant_id = $2))",
                touched,
                change.tenant_id or None,
            )
            if busy is not None:
                what = f"tenant {change.tenant_id!r}" if change.tenant_id else f"node {touched[-1]!r}"
                raise AlreadyExists(
                    f"{what} already has a ring change in progress: {busy['type']} "
                    f"{busy['migration_id']}; wait for it or cancel it first"
                )
            try:
                row = await conn.fetchrow(
                    "INSERT INTO migrations (migration_id, type, node_id, host, port, virtual_nodes,"
                    " workflow_id, phase, status, started_by, request_id, node_dead, replaces, tenant_id,"
                    " replication_factor)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 'queued', $8, $9, $10, $11, $12, $13)"
                    " RETURNING *",
                    change.migration_id,
                    change.change,
                    change.node_id,
                    change.host,
                    change.port,
                    change.virtual_nodes,
                    workflow_id,
                    change.started_by,
                    request_ids.current(),
                    change.node_dead,
                    change.replaces,
                    change.tenant_id,
                    change.replication_factor,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(
                    f"{change.tenant_id or change.node_id!r} already has a ring change in progress"
                ) from None
        assert row is not None
        return _migration(row)

    async def delete(self, migration_id: str) -> None:
        await self._pool.execute("DELETE FROM migrations WHERE migration_id = $1", migration_id)

    async def get(self, migration_id: str) -> MigrationRow | None:
        row = await self._pool.fetchrow("SELECT * FROM migrations WHERE migration_id = $1", migration_id)
        return None if row is None else _migration(row)

    async def unfinished(self) -> list[MigrationRow]:
        rows = await self._pool.fetch(
            "SELECT * FROM migrations WHERE status IN ('queued', 'in_progress') ORDER BY started_at"
        )
        return [_migration(r) for r in rows]

    @asynccontextmanager
    async def exclusive(self, migration_id: str) -> AsyncIterator[bool]:
        """Whether this process alone may act on the migration now (an advisory lock while inside)."""
        async with self._pool.acquire() as conn:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", migration_id))
            try:
                yield got
            finally:
                if got:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", migration_id)

    async def listing(self, recent: int) -> list[MigrationRow]:
        """The unfinished ring changes and the `recent` last ended ones, oldest first."""
        rows = await self._pool.fetch(
            "(SELECT * FROM migrations WHERE status IN ('queued', 'in_progress'))"
            " UNION ALL (SELECT * FROM migrations WHERE status NOT IN ('queued', 'in_progress')"
            "   ORDER BY completed_at DESC NULLS LAST LIMIT $1)"
            " ORDER BY started_at",
            recent,
        )
        return [_migration(r) for r in rows]

    async def all(self) -> list[MigrationRow]:
        return [_migration(r) for r in await self._pool.fetch("SELECT * FROM migrations ORDER BY started_at")]

    async def save_progress(
        self, migration_id: str, progress: dict[str, Any], estimated_completion: datetime | None
    ) -> None:
        await self._pool.execute(
            "UPDATE migrations SET progress = $2::jsonb, estimated_completion = $3, updated_at = now()"
            " WHERE migration_id = $1",
            migration_id,
            json.dumps(progress),
            estimated_completion,
        )

    # -- the copy plan ---------------------------------------------------------------

    async def save_plan(
        self, migration_id: str, ranges: Sequence[tuple[int, int, list[str], str, int]]
    ) -> bool:
        """Store the plan once; a retried planning step keeps the first plan and its checkpoints.

        ranges: (start, end, sources, target, keys estimate) each.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM migrations WHERE migration_id = $1 FOR UPDATE", migration_id)
            if await conn.fetchval("SELECT 1 FROM copy_ranges WHERE migration_id = $1 LIMIT 1", migration_id):
                return False
            await conn.executemany(
                "INSERT INTO copy_ranges (migration_id, range_index, start_token, end_token, sources,"
                " target, keys_estimate) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (migration_id, i, to_db_token(s), to_db_token(e), src, target, est)
                    for i, (s, e, src, target, est) in enumerate(ranges)
                ],
            )
            return True

    async def plan(self, migration_id: str, indexes: Sequence[int] | None = None) -> list[PlannedRange]:
        if indexes is None:
            rows = await self._pool.fetch(
                "SELECT * FROM copy_ranges WHERE migration_id = $1 ORDER BY range_index", migration_id
            )
        else:
            rows = await self._pool.fetch(
                "SELECT * FROM copy_ranges WHERE migration_id = $1 AND range_index = ANY($2::int[])"
                " ORDER BY range_index",
                migration_id,
                list(indexes),
            )
        return [_range(r) for r in rows]

    async def mark_copied(self, migration_id: str, ranges: Sequence[CopiedRange]) -> None:
        """Checkpoint copied ranges, in one transaction (activities/checkpoints.py batches them)."""
        await self._pool.executemany(
            "UPDATE copy_ranges SET copied = true, copies = copies + 1, keys = $3, bytes = $4"
            " WHERE migration_id = $1 AND range_index = $2",
            [(migration_id, r.index, r.keys, r.size) for r in ranges],
        )

    async def mark_verified(self, migration_id: str, indexes: Sequence[int]) -> None:
        await self._pool.execute(
            "UPDATE copy_ranges SET verified = true WHERE migration_id = $1 AND range_index = ANY($2::int[])",
            migration_id,
            list(indexes),
        )

    async def totals(self, migration_id: str) -> CopyTotals:
        # The start time comes in the same query: progress is saved after every batch of checkpoints.
        row = await self._pool.fetchrow(
            "SELECT count(*) AS ranges_total, count(*) FILTER (WHERE copied) AS ranges_done,"
            " coalesce(sum(keys), 0) AS keys_copied, coalesce(sum(bytes), 0) AS bytes_copied,"
            " coalesce(sum(keys_estimate), 0) AS keys_total,"
            " count(*) FILTER (WHERE verified) AS ranges_verified,"
            " (SELECT (progress->>'copy_started_at')::float8 FROM migrations WHERE migration_id = $1)"
            " AS started_at"
            " FROM copy_ranges WHERE migration_id = $1",
            migration_id,
        )
        assert row is not None
        started_at = row["started_at"]
        counts = {k: int(v) for k, v in dict(row).items() if k != "started_at"}
        return CopyTotals(**counts, started_at=started_at)
