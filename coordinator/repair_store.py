"""Repair rows and their range plans and checkpoints, in PostgreSQL (schema 0004)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pairdb.coordinator.metadata import Metadata, from_db_token, to_db_token
from pairdb.kernel.errors import AlreadyExists
from pairdb.kernel.migration import Status


@dataclass(frozen=True, slots=True)
class RepairRow:
    repair_id: str
    # "" : every tenant.
    tenant_id: str
    status: Status
    progress: dict[str, Any]
    error: str
    started_by: str
    started_at: datetime
    completed_at: datetime | None
    estimated_completion: datetime | None


@dataclass(frozen=True, slots=True)
class RepairedRange:
    """A range repaired: its checkpoint and what it took."""

    index: int
    streamed: int
    scanned: int
    purged: int
    # Replicas that could not be reached: the range is repaired but not complete.
    unreachable: Sequence[str]


@dataclass(frozen=True, slots=True)
class RepairTotals:
    """A repair's ranges summed, with when its first step began (None before that)."""

    ranges_total: int
    ranges_done: int
    ranges_incomplete: int
    keys_total: int
    keys_done: int
    streamed: int
    scanned: int
    purged: int
    started_at: float | None


@dataclass(frozen=True, slots=True)
class RepairRange:
    index: int
    start: int
    end: int
    keys_estimate: int
    repaired: bool
    # Every replica answered, so the range's old tombstones could go.
    complete: bool
    unreachable: list[str]


def _repair(row: asyncpg.Record) -> RepairRow:
    progress = row["progress"]
    return RepairRow(
        repair_id=row["repair_id"],
        tenant_id=row["tenant_id"],
        status=Status(row["status"]),
        progress=json.loads(progress) if isinstance(progress, str) else dict(progress or {}),
        error=row["error"] or "",
        started_by=row["started_by"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        estimated_completion=row["estimated_completion"],
    )


def _range(row: asyncpg.Record) -> RepairRange:
    return RepairRange(
        index=row["range_index"],
        start=from_db_token(row["start_token"]),
        end=from_db_token(row["end_token"]),
        keys_estimate=row["keys_estimate"],
        repaired=row["repaired"],
        complete=row["complete"],
        unreachable=list(row["unreachable"]),
    )


class RepairStore:
    def __init__(self, metadata: Metadata) -> None:
        self._pool = metadata.pool

    async def begin(self, repair_id: str, tenant_id: str, started_by: str) -> RepairRow:
        """Record a running repair; a retried step finds the row it made.

        ALREADY_EXISTS while another repair of the same scope runs.
        """
        try:
            await self._pool.execute(
                "INSERT INTO repairs (repair_id, tenant_id, status, started_by)"
                " VALUES ($1, $2, 'in_progress', $3)"
                " ON CONFLICT (repair_id) DO NOTHING",
                repair_id,
                tenant_id,
                started_by,
            )
        except asyncpg.UniqueViolationError:
            running = await self.running(tenant_id)
            raise AlreadyExists(
                f"a repair of {f'tenant {tenant_id}' if tenant_id else 'every tenant'} is running already"
                + (f" ({running.repair_id})" if running else "")
            ) from None
        row = await self.get(repair_id)
        assert row is not None
        return row

    async def running(self, tenant_id: str) -> RepairRow | None:
        """The running repair of this scope (a tenant, or "" for every tenant), if any."""
        row = await self._pool.fetchrow(
            "SELECT * FROM repairs WHERE tenant_id = $1 AND status = 'in_progress'", tenant_id
        )
        return None if row is None else _repair(row)

    async def delete(self, repair_id: str) -> None:
        await self._pool.execute("DELETE FROM repairs WHERE repair_id = $1", repair_id)

    async def get(self, repair_id: str) -> RepairRow | None:
        row = await self._pool.fetchrow("SELECT * FROM repairs WHERE repair_id = $1", repair_id)
        return None if row is None else _repair(row)

    async def listing(self, recent: int) -> list[RepairRow]:
        """Running repairs and the `recent` latest ended ones, oldest first."""
        rows = await self._pool.fetch(
            "(SELECT * FROM repairs WHERE status = 'in_progress')"
            " UNION ALL (SELECT * FROM repairs WHERE status <> 'in_progress'"
            " ORDER BY started_at DESC LIMIT $1) ORDER BY started_at",
            recent,
        )
        return [_repair(r) for r in rows]

    async def finish(self, repair_id: str, status: Status, error: str = "") -> None:
        await self._pool.execute(
            "UPDATE repairs SET status = $2, error = NULLIF($3, ''), completed_at = now(), updated_at = now()"
            " WHERE repair_id = $1 AND status = 'in_progress'",
            repair_id,
            status,
            error,
        )

    async def save_progress(
        self, repair_id: str, progress: dict[str, Any], estimated_completion: datetime | None
    ) -> None:
        await self._pool.execute(
            "UPDATE repairs SET progress = $2::jsonb, estimated_completion = $3, updated_at = now()"
            " WHERE repair_id = $1",
            repair_id,
            json.dumps(progress),
            estimated_completion,
        )

    async def graces(self) -> dict[str, int]:
        """Every tenant's tombstone grace period, in seconds."""
        rows = await self._pool.fetch("SELECT tenant_id, gc_grace_seconds FROM tenants")
        return {r["tenant_id"]: r["gc_grace_seconds"] for r in rows}

    # -- the plan -----------------------------------------------------------------------

    async def save_plan(self, repair_id: str, ranges: Sequence[tuple[int, int, int]]) -> bool:
        """Store the plan once ((start, end, keys estimate) per range); a retry keeps the first."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM repairs WHERE repair_id = $1 FOR UPDATE", repair_id)
            if await conn.fetchval("SELECT 1 FROM repair_ranges WHERE repair_id = $1 LIMIT 1", repair_id):
                return False
            await conn.executemany(
                "INSERT INTO repair_ranges (repair_id, range_index, start_token, end_token, keys_estimate)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(repair_id, i, to_db_token(s), to_db_token(e), est) for i, (s, e, est) in enumerate(ranges)],
            )
            return True

    async def plan(self, repair_id: str, indexes: Sequence[int] | None = None) -> list[RepairRange]:
        if indexes is None:
            rows = await self._pool.fetch(
                "SELECT * FROM repair_ranges WHERE repair_id = $1 ORDER BY range_index", repair_id
            )
        else:
            rows = await self._pool.fetch(
                "SELECT * FROM repair_ranges WHERE repair_id = $1 AND range_index = ANY($2::int[])"
                " ORDER BY range_index",
                repair_id,
                list(indexes),
            )
        return [_range(r) for r in rows]

    async def mark_repaired(self, repair_id: str, ranges: Sequence[RepairedRange]) -> None:
        """Checkpoint repaired ranges, in one transaction (activities/checkpoints.py batches them)."""
        await self._pool.executemany(
            "UPDATE repair_ranges SET repaired = true, complete = $3, streamed = $4, scanned = $5,"
            " purged = $6, unreachable = $7 WHERE repair_id = $1 AND range_index = $2",
            [
                (
                    repair_id,
                    r.index,
                    not r.unreachable,
                    r.streamed,
                    r.scanned,
                    r.purged,
                    sorted(r.unreachable),
                )
                for r in ranges
            ],
        )

    async def totals(self, repair_id: str) -> RepairTotals:
        # The start time comes in the same query: progress is saved after every batch of checkpoints.
        row = await self._pool.fetchrow(
            "SELECT count(*) AS ranges_total, count(*) FILTER (WHERE repaired) AS ranges_done,"
            " count(*) FILTER (WHERE repaired AND NOT complete) AS ranges_incomplete,"
            " coalesce(sum(keys_estimate), 0) AS keys_total,"
            " coalesce(sum(keys_estimate) FILTER (WHERE repaired), 0) AS keys_done,"
            " coalesce(sum(streamed), 0) AS streamed, coalesce(sum(scanned), 0) AS scanned,"
            " coalesce(sum(purged), 0) AS purged,"
            " (SELECT (progress->>'repair_started_at')::float8 FROM repairs WHERE repair_id = $1)"
            " AS started_at"
            " FROM repair_ranges WHERE repair_id = $1",
            repair_id,
        )
        assert row is not None
        started_at = row["started_at"]
        counts = {k: int(v) for k, v in dict(row).items() if k != "started_at"}
        return RepairTotals(**counts, started_at=started_at)

    async def unreachable(self, repair_id: str) -> list[str]:
        """The replicas some range of the repair could not reach."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT unnest(unreachable) AS node_id FROM repair_ranges WHERE repair_id = $1"
            " ORDER BY 1",
            repair_id,
        )
        return [r["node_id"] for r in rows]
