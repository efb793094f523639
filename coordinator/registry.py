"""The dual-write registry's source of truth in PostgreSQL, and its barrier.

Each change of an in-flight ring change's phase (and of the nodes and tokens
it moves) happens in one transaction that bumps the registry epoch and
NOTIFYs coordinators. `barrier(epoch)` returns once every coordinator with a
live lease reports that epoch applied, with no request of an older epoch
still in flight on it; a coordinator whose lease lapses stops serving, so it
no longer holds the barrier up.

Phases move only along the migration's graph, checked in the transaction that
moves them: a step forward only from the phase before it, a step back
(rolling_back, cancelling) never once cleanup began, and nothing once the
migration has ended. An activity can outlive its workflow (a cancel reaches it
only at its next heartbeat; a terminate never does) while compensation or the
reconciler moves on; its late step is refused instead of undoing theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from pairdb.coordinator.metadata import APPLIED_CHANNEL, Connection, Metadata, bump_epoch, to_db_token
from pairdb.kernel.errors import FailedPrecondition, NotFound
from pairdb.kernel.migration import TERMINAL, ChangeType, NodeState, Phase, Status

log = structlog.get_logger()


# A coordinator whose lease ran out this recently still holds a barrier up: PostgreSQL's
# clock and the coordinator's may run at slightly different rates.
LEASE_DRIFT_MARGIN_SECONDS = 0.5


class StepRefused(FailedPrecondition):
    """The migration is not where this step starts from: it ended, or went another way."""


# The phase each step forward starts from; a retried step finds its own phase already set.
_FORWARD_FROM = {
    Phase.DUAL_WRITE: Phase.QUEUED,
    Phase.DATA_COPY: Phase.DUAL_WRITE,
    Phase.CUTOVER: Phase.DATA_COPY,
    Phase.CLEANUP: Phase.CUTOVER,
}
_PAST_RETURN = (Phase.CLEANUP, Phase.DONE)


def check_step(row: asyncpg.Record | Mapping[str, Any], phase: Phase) -> None:
    """Refuse a move of the locked migration row to phase that its graph does not allow."""
    current, migration_id = Phase(row["phase"]), row["migration_id"]
    if row["status"] in TERMINAL:
        raise StepRefused(
            f"migration {migration_id} has ended ({row['status']}"
            + (f": {row['error']}" if row["error"] else "")
            + ")"
        )
    if current == phase:
        return
    if phase in (Phase.ROLLING_BACK, Phase.CANCELLING):
        if current in _PAST_RETURN:
            raise StepRefused(f"migration {migration_id} is in {current}, past the point of no return")
        if phase == Phase.ROLLING_BACK and current == Phase.CANCELLING:
            raise StepRefused(f"migration {migration_id} is cancelling already")
        return
    if _FORWARD_FROM.get(phase) != current:
        raise StepRefused(
            f"migration {migration_id} is in {current}, not {_FORWARD_FROM.get(phase)}: "
            f"a step to {phase} that outlived its turn"
        )


async def _set_node(conn: Connection, node_id: str, status: NodeState) -> None:
    await conn.execute("UPDATE nodes SET status = $2, updated_at = now() WHERE node_id = $1", node_id, status)


async def _complete(conn: Connection, row: asyncpg.Record) -> None:
    """Make the change's new ring the ring."""
    change, node_id = ChangeType(row["type"]), row["node_id"]
    if change is ChangeType.NODE_REMOVAL:
        await conn.execute("DELETE FROM ring_tokens WHERE node_id = $1", node_id)
        await _set_node(conn, node_id, NodeState.REMOVED)
    elif change is ChangeType.NODE_REPLACEMENT:
        await conn.execute("UPDATE ring_tokens SET node_id = $1 WHERE node_id = $2", node_id, row["replaces"])
        await _set_node(conn, row["replaces"], NodeState.REMOVED)
        await _set_node(conn, node_id, NodeState.ACTIVE)
    elif change is ChangeType.RF_CHANGE:
        await conn.execute(
            "UPDATE tenants SET replication_factor = $2 WHERE tenant_id = $1",
            row["tenant_id"],
            row["replication_factor"],
        )


@dataclass(frozen=True, slots=True)
class Lagging:
    coordinator_id: str
    applied_epoch: int


class Registry:
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self._pool = metadata.pool

    async def _locked_migration(self, conn: Connection, migration_id: str) -> asyncpg.Record:
        # The registry row serialises every ring change among all workers and coordinators.
        await conn.execute("SELECT 1 FROM registry FOR UPDATE")
        row = await conn.fetchrow("SELECT * FROM migrations WHERE migration_id = $1", migration_id)
        if row is None:
            raise NotFound(f"migration {migration_id} does not exist")
        return row

    async def claim_ring_change(self, migration_id: str) -> bool:
        """Take the one ring-change slot for this migration if it is free and this is the oldest queued."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked_migration(conn, migration_id)
            if row["status"] == Status.IN_PROGRESS:
                return True
            if row["status"] != Status.QUEUED:
                raise StepRefused(f"migration {migration_id} is {row['status']}: {row['error'] or ''}")
            busy = await conn.fetchval("SELECT 1 FROM migrations WHERE status = 'in_progress'")
            older = await conn.fetchval(
                "SELECT 1 FROM migrations WHERE status = 'queued' AND started_at < $1", row["started_at"]
            )
            if busy or older:
                return False
            await conn.execute(
                "UPDATE migrations SET status = 'in_progress', updated_at = now() WHERE migration_id = $1",
                migration_id,
            )
            await bump_epoch(conn)
            return True

    async def begin(self, migration_id: str, tokens: Sequence[int] = ()) -> int:
        """Phase dual_write: the ring change takes effect beside the old ring. Idempotent.

        An added node joins as `joining` with its future tokens; a replacement joins with none
        (it takes the dead node's at the end); a node removed, or replaced, is `leaving`.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked_migration(conn, migration_id)
            check_step(row, Phase.DUAL_WRITE)
            change = ChangeType(row["type"])
            if change.adds_node:
                node = await conn.fetchrow("SELECT status FROM nodes WHERE node_id = $1", row["node_id"])
                if node is None or node["status"] == NodeState.REMOVED:
                    if node is not None:
                        await conn.execute("DELETE FROM nodes WHERE node_id = $1", row["node_id"])
                    await conn.execute(
                        "INSERT INTO nodes (node_id, host, port, status, virtual_nodes)"
                        " VALUES ($1, $2, $3, 'joining', $4)",
                        row["node_id"],
                        row["host"],
                        row["port"],
                        row["virtual_nodes"],
                    )
                    await conn.executemany(
                        "INSERT INTO ring_tokens (token, node_id) VALUES ($1, $2)",
                        [(to_db_token(t), row["node_id"]) for t in tokens],
                    )
            leaving = row["replaces"] if change is ChangeType.NODE_REPLACEMENT else row["node_id"]
            if change in (ChangeType.NODE_REMOVAL, ChangeType.NODE_REPLACEMENT):
                await _set_node(conn, leaving, NodeState.LEAVING)
            return await self._set_phase(conn, migration_id, Phase.DUAL_WRITE)

    async def set_phase(self, migration_id: str, phase: Phase, node_status: NodeState | None = None) -> int:
        """Move the migration to phase (and its node to node_status) in one epoch.

        Once the migration has ended, a step back is a no-op (whoever ended it took the
        node out); any other move its graph does not allow fails with StepRefused.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked_migration(conn, migration_id)
            if row["status"] in TERMINAL and phase in (Phase.ROLLING_BACK, Phase.CANCELLING):
                return int(await conn.fetchval("SELECT epoch FROM registry"))
            check_step(row, phase)
            if node_status is not None:
                await conn.execute(
                    "UPDATE nodes SET status = $2, updated_at = now() WHERE node_id = $1",
                    row["node_id"],
                    node_status,
                )
            return await self._set_phase(conn, migration_id, phase)

    async def _set_phase(self, conn: Connection, migration_id: str, phase: Phase) -> int:
        current = await conn.fetchrow(
            "SELECT phase, (SELECT epoch FROM registry) AS epoch FROM migrations WHERE migration_id = $1",
            migration_id,
        )
        assert current is not None
        if current["phase"] == phase:
            return int(current["epoch"])  # a retried step: already done
        await conn.execute(
            "UPDATE migrations SET phase = $2, updated_at = now() WHERE migration_id = $1",
            migration_id,
            phase,
        )
        return await bump_epoch(conn)

    async def abandon(self, migration_id: str) -> int:
        """Compensation: the old ring again, every dual write stops (phase cancelling).

        A node being added (or replacing a dead one) leaves the ring; a node being
        removed, or the dead node being replaced, is active again. A no-op once the
        migration has ended: whoever ended it did this.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked_migration(conn, migration_id)
            if row["status"] in TERMINAL:
                return int(await conn.fetchval("SELECT epoch FROM registry"))
            check_step(row, Phase.CANCELLING)
            change = ChangeType(row["type"])
            if change.adds_node:
                await conn.execute("DELETE FROM ring_tokens WHERE node_id = $1", row["node_id"])
                await _set_node(conn, row["node_id"], NodeState.REMOVED)
            if change is ChangeType.NODE_REPLACEMENT:
                await _set_node(conn, row["replaces"], NodeState.ACTIVE)
            if change is ChangeType.NODE_REMOVAL:
                await _set_node(conn, row["node_id"], NodeState.ACTIVE)
            return await self._set_phase(conn, migration_id, Phase.CANCELLING)

    async def finish(self, migration_id: str, status: Status, error: str = "") -> int:
        """End the migration: it leaves the registry and frees the ring-change slot.

        Completed only from cleanup on, and then the ring becomes the new one in the same
        epoch: a removed node's tokens go, a dead node's pass to its replacement, the
        tenant's RF changes. Anything else only before cleanup (the ring must match).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._locked_migration(conn, migration_id)
            if row["status"] in TERMINAL:
                return int(await conn.fetchval("SELECT epoch FROM registry"))
            if (status == Status.COMPLETED) != (row["phase"] in _PAST_RETURN):
                raise StepRefused(f"migration {migration_id} in {row['phase']} cannot end {status}")
            if status == Status.COMPLETED:
                await _complete(conn, row)
            phase = Phase.DONE if status == Status.COMPLETED else row["phase"]
            await conn.execute(
                "UPDATE migrations SET status = $2, phase = $3, error = NULLIF($4, ''),"
                " completed_at = now(), updated_at = now() WHERE migration_id = $1",
                migration_id,
                status,
                phase,
                error,
            )
            return await bump_epoch(conn)

    async def lagging(self, epoch: int) -> list[Lagging]:
        rows = await self._pool.fetch(
            "SELECT coordinator_id, applied_epoch FROM coordinators"
            " WHERE lease_expires_at + make_interval(secs => $2) > clock_timestamp() AND applied_epoch < $1"
            " ORDER BY coordinator_id",
            epoch,
            LEASE_DRIFT_MARGIN_SECONDS,
        )
        return [Lagging(r["coordinator_id"], r["applied_epoch"]) for r in rows]

    async def barrier(
        self,
        epoch: int,
        heartbeat: Callable[[list[Lagging]], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        """Wait until every coordinator with a live lease has applied epoch (or its lease lapsed).

        Looks again whenever a coordinator reports (LISTEN on APPLIED_CHANNEL),
        and every `poll` seconds in case a notification was missed or a lease lapsed.
        """
        reported = asyncio.Event()

        def on_report(*_: object) -> None:
            reported.set()

        async with self._pool.acquire() as listener:
            await listener.add_listener(APPLIED_CHANNEL, on_report)
            try:
                while True:
                    reported.clear()
                    behind = await self.lagging(epoch)
                    if not behind:
                        return
                    if heartbeat is not None:
                        heartbeat(behind)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reported.wait(), poll)
            finally:
                await listener.remove_listener(APPLIED_CHANNEL, on_report)
