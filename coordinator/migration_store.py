"""Migration rows and the data copy's plan and checkpoints, in PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from pairdb.coordinator.metadata import Metadata, MigrationRow, PlannedRange, from_db_token, to_db_token
from pairdb.kernel import migration as m
from pairdb.kernel.errors import AlreadyExists
from pairdb.kernel.migration import NodeState, Phase, Status
from pairdb.serving import request_ids


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
    )


class MigrationStore:
    def __init__(self, metadata: Metadata) -> None:
        self._pool = metadata.pool

    async def create(self, request: m.NodeAdditionInput, workflow_id: str) -> MigrationRow:
        """Record a queued node addition; ALREADY_EXISTS if the node is in the ring or already joining."""
        async with self._pool.acquire() as conn, conn.transaction():
            node = await conn.fetchrow("SELECT status FROM nodes WHERE node_id = $1", request.node_id)
            if node is not None and node["status"] != NodeState.REMOVED:
                raise AlreadyExists(f"node {request.node_id!r} is already in the cluster ({node['status']})")
            taken = await conn.fetchval(
                "SELECT node_id FROM nodes WHERE host = $1 AND port = $2 AND status <> 'removed'",
                request.host,
                request.port,
            )
            if taken:
                raise AlreadyExists(f"{request.host}:{request.port} is already the address of node {taken!r}")
            try:
                row = await conn.fetchrow(
                    "INSERT INTO migrations (migration_id, type, node_id, host, port, virtual_nodes,"
                    " workflow_id, phase, status, started_by, request_id)"
                    " VALUES ($1, 'node_addition', $2, $3, $4, $5, $6, 'queued', 'queued', $7, $8)"
                    " RETURNING *",
                    request.migration_id,
                    request.node_id,
                    request.host,
                    request.port,
                    request.virtual_nodes,
                    workflow_id,
                    request.started_by,
                    request_ids.current(),
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"node {request.node_id!r} already has a migration in progress") from None
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

    async def save_plan(self, migration_id: str, ranges: Sequence[tuple[int, int, list[str], int]]) -> bool:
        """Store the plan once; a retried planning step keeps the first plan and its checkpoints."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM migrations WHERE migration_id = $1 FOR UPDATE", migration_id)
            if await conn.fetchval("SELECT 1 FROM copy_ranges WHERE migration_id = $1 LIMIT 1", migration_id):
                return False
            await conn.executemany(
                "INSERT INTO copy_ranges (migration_id, range_index, start_token, end_token, sources,"
                " keys_estimate) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (migration_id, i, to_db_token(s), to_db_token(e), src, est)
                    for i, (s, e, src, est) in enumerate(ranges)
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

    async def mark_copied(self, migration_id: str, index: int, keys: int, size: int) -> None:
        await self._pool.execute(
            "UPDATE copy_ranges SET copied = true, copies = copies + 1, keys = $3, bytes = $4"
            " WHERE migration_id = $1 AND range_index = $2",
            migration_id,
            index,
            keys,
            size,
        )

    async def mark_verified(self, migration_id: str, index: int) -> None:
        await self._pool.execute(
            "UPDATE copy_ranges SET verified = true WHERE migration_id = $1 AND range_index = $2",
            migration_id,
            index,
        )

    async def totals(self, migration_id: str) -> dict[str, int]:
        row = await self._pool.fetchrow(
            "SELECT count(*) AS ranges_total, count(*) FILTER (WHERE copied) AS ranges_done,"
            " coalesce(sum(keys), 0) AS keys_copied, coalesce(sum(bytes), 0) AS bytes_copied,"
            " coalesce(sum(keys_estimate), 0) AS keys_total,"
            " count(*) FILTER (WHERE verified) AS ranges_verified"
            " FROM copy_ranges WHERE migration_id = $1",
            migration_id,
        )
        assert row is not None
        return {k: int(v) for k, v in dict(row).items()}
