"""The reconciler: finishes migrations whose workflow is no longer running.

`temporal workflow terminate` runs no workflow code at all. A workflow may
also time out, fail on a bug, or never start (its coordinator died between
recording the migration and starting the workflow). Each would leave the
migration unfinished: dual writes on, the one ring-change slot held, every
later ring change queued for ever.

Every migration worker runs this loop. Every few seconds it looks at the
unfinished migrations; for each whose workflow is not running (its latest
run, so a reset's new run keeps the migration), it runs the very steps the
workflow would have run, all idempotent: back to the old ring from wherever
the migration got, or, past the point of no return, the rest of the cleanup.
Then it records a terminal status that says what happened. An advisory lock
keeps two workers from doing it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from pairdb.activities.cleanup import CleanupSteps
from pairdb.activities.context import StepContext
from pairdb.activities.registry_steps import RegistrySteps
from pairdb.coordinator.metadata import MigrationRow
from pairdb.kernel import migration as m
from pairdb.kernel.migration import TERMINAL, EnterPhase, FinishMigration, MigrationRef, Phase, Status, Undo

log = structlog.get_logger()

INTERVAL_SECONDS = 5.0
# A migration recorded this recently may still be having its workflow started.
START_GRACE = timedelta(seconds=30)
NEVER_STARTED = "never started"


class Reconciler:
    def __init__(
        self,
        ctx: StepContext,
        temporal: Client,
        registry: RegistrySteps | None = None,
        cleanup: CleanupSteps | None = None,
    ) -> None:
        self._ctx = ctx
        self._temporal = temporal
        # The very steps the workflow runs (tests pass recording ones).
        self._registry = registry or RegistrySteps(ctx)
        self._cleanup = cleanup or CleanupSteps(ctx)

    async def run(self, stop: asyncio.Event, interval: float = INTERVAL_SECONDS) -> None:
        while not stop.is_set():
            try:
                await self.reconcile()
            except Exception as exc:  # PostgreSQL or Temporal away: try again next time
                log.warning("Reconciliation pass failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def reconcile(self) -> list[str]:
        """One pass; returns the ids of the migrations it finished."""
        finished = []
        for row in await self._ctx.store.unfinished():
            ended = await self._workflow_ended(row)
            if ended is None:
                continue
            async with self._ctx.store.exclusive(row.migration_id) as mine:
                current = await self._ctx.store.get(row.migration_id)
                if not mine or current is None or current.status in TERMINAL:
                    continue
                ended = await self._workflow_ended(current)  # again, now that no one else acts on it
                if ended is None:
                    continue
                await self._finish(current, ended)
                finished.append(row.migration_id)
        return finished

    async def _workflow_ended(self, row: MigrationRow) -> str | None:
        """How the migration's workflow ended ("terminated", "never started", ...), or None if it runs."""
        try:
            described = await self._temporal.get_workflow_handle(row.workflow_id).describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            described = None
        status = described.status if described is not None else None
        if status == WorkflowExecutionStatus.RUNNING:
            return None
        young = datetime.now(UTC) - row.started_at < START_GRACE
        if row.status == Status.QUEUED and young:
            return None  # its coordinator may be starting the workflow right now
        if described is None or (row.status == Status.QUEUED and described.start_time < row.started_at):
            return NEVER_STARTED  # no run, or only an earlier migration's run of this workflow id
        return status.name.lower().replace("_", " ") if status is not None else "closed"

    async def _finish(self, row: MigrationRow, ended: str) -> None:
        migration_id = row.migration_id
        ref = MigrationRef(migration_id)
        structlog.contextvars.bind_contextvars(migration_id=migration_id, node_id=row.node_id)
        log.warning(
            "Migration's workflow is not running; reconciling",
            workflow_id=row.workflow_id,
            workflow=ended,
            status=row.status,
            phase=row.phase,
        )
        if row.phase in (Phase.CLEANUP, Phase.DONE):
            # Past the point of no return: finish what the workflow began.
            if row.phase == Phase.CLEANUP:
                # Its barrier and fence may not have finished when the workflow stopped: again, idempotently.
                await self._registry.enter_phase(EnterPhase(migration_id, Phase.CLEANUP))
                await self._cleanup.drop_moved_ranges(ref)
            await self._registry.finish_migration(FinishMigration(migration_id, Status.COMPLETED))
            return
        error = f"workflow {row.workflow_id} {ended}"
        steps = m.undo_steps(row.phase, row.change)
        for step in steps:
            if step is Undo.RESTORE_READS:
                await self._registry.restore_reads_on_old(ref)
            elif step is Undo.REMOVE_NODE:
                await self._registry.remove_joining_node(ref)
            elif step is Undo.RESTORE_RING:
                await self._registry.restore_old_ring(ref)
            else:
                wipe = (
                    self._cleanup.wipe_joining_node
                    if step is Undo.WIPE_NODE
                    else self._cleanup.drop_gained_ranges
                )
                try:
                    await wipe(ref)
                except Exception as exc:  # out of every replica set already: what it holds is never read
                    error += f"; could not delete what was copied: {exc}"
        status = Status.CANCELLED if ended == "canceled" else Status.FAILED
        undone = "; the reconciler undid it" if steps else ""
        await self._registry.finish_migration(FinishMigration(migration_id, status, error + undone))
