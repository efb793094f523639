"""Activities that move a migration through the dual-write registry, each settled by barrier and fence.

Every step is idempotent: the registry leaves a phase that is already set
untouched, and a barrier or fence on an epoch already reached returns at once.
A step the migration's graph does not allow (coordinator/registry.py) fails for
good, e.g. a step forward of an activity that outlived its terminated workflow
after the reconciler undid the migration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pairdb.activities.context import StepContext
from pairdb.coordinator.registry import StepRefused
from pairdb.coordinator.ring import allocate_tokens
from pairdb.kernel.migration import (
    TERMINAL,
    ChangeType,
    EnterPhase,
    FinishMigration,
    MigrationRef,
    NodeState,
    Phase,
    Status,
)
from pairdb.serving import metrics

log = structlog.get_logger()


@asynccontextmanager
async def _refused_for_good() -> AsyncIterator[None]:
    """A step the migration's graph refuses stays refused: no retry will change that."""
    try:
        yield
    except StepRefused as exc:
        raise ApplicationError(str(exc), type="StepRefused", non_retryable=True) from None


class RegistrySteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    @activity.defn(name="claim_ring_change")
    async def claim_ring_change(self, ref: MigrationRef) -> bool:
        """True once this migration holds the one ring-change slot; False while another runs."""
        migration_id = ref.migration_id
        async with _refused_for_good():
            claimed = await self._ctx.registry.claim_ring_change(migration_id)
        if claimed:
            metrics.ACTIVE_MIGRATIONS.set(1)
        return claimed

    @activity.defn(name="enable_dual_write")
    async def enable_dual_write(self, ref: MigrationRef) -> int:
        """Phase dual_write: the new ring beside the old (an added node joins with its tokens);
        writes reach old ∪ new from the barrier on."""
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        tokens: list[int] = []
        if row.change is ChangeType.NODE_ADDITION:
            topology = await self._ctx.topology()
            existing = [(v.token, v.node_id) for v in topology.ring.vnodes]
            tokens = allocate_tokens(existing, row.node_id, row.virtual_nodes)
        async with _refused_for_good():
            epoch = await self._ctx.registry.begin(migration_id, tokens)
        await self._ctx.settle(epoch, row)
        log.info("Dual write active", migration_id=migration_id, node_id=row.node_id, epoch=epoch)
        return epoch

    @activity.defn(name="enter_phase")
    async def enter_phase(self, step: EnterPhase) -> int:
        """Move to data_copy, cutover (an added node becomes active) or cleanup, then barrier."""
        migration_id, phase = step.migration_id, step.phase
        row = await self._ctx.migration(migration_id)
        node_status = NodeState.ACTIVE if phase == Phase.CUTOVER and row.change.adds_node else None
        async with _refused_for_good():
            epoch = await self._ctx.registry.set_phase(migration_id, phase, node_status)
        await self._ctx.settle(epoch, row)
        return epoch

    @activity.defn(name="restore_reads_on_old")
    async def restore_reads_on_old(self, ref: MigrationRef) -> int:
        """Rollback, first step: reads go back to the old replicas (an added node joins again); barrier."""
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        node_status = NodeState.JOINING if row.change.adds_node else None
        async with _refused_for_good():
            epoch = await self._ctx.registry.set_phase(migration_id, Phase.ROLLING_BACK, node_status)
        await self._ctx.settle(epoch, row)
        return epoch

    @activity.defn(name="remove_joining_node")
    async def remove_joining_node(self, ref: MigrationRef) -> int:
        """Cancel an addition or replacement: the new node leaves the ring, dual writes stop; barrier."""
        return await self._abandon(ref)

    @activity.defn(name="restore_old_ring")
    async def restore_old_ring(self, ref: MigrationRef) -> int:
        """Cancel a removal or RF change: the old ring and RFs again, dual writes stop; barrier."""
        return await self._abandon(ref)

    async def _abandon(self, ref: MigrationRef) -> int:
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        async with _refused_for_good():
            epoch = await self._ctx.registry.abandon(migration_id)
        await self._ctx.settle(epoch, row)
        return epoch

    @activity.defn(name="finish_migration")
    async def finish_migration(self, finish: FinishMigration) -> int:
        """Record the outcome; the migration leaves the registry (barrier) and frees the ring-change slot."""
        migration_id, status, error = finish.migration_id, finish.status, finish.error
        row = await self._ctx.migration(migration_id)
        async with _refused_for_good():
            epoch = await self._ctx.registry.finish(migration_id, status, error)
        await self._ctx.settle(epoch, row)
        if row.status not in TERMINAL:  # count once, not on a retry
            metrics.ACTIVE_MIGRATIONS.set(0)
            metrics.MIGRATION_DURATION.labels(status).observe(
                (datetime.now(UTC) - row.started_at).total_seconds()
            )
            if status == Status.FAILED:
                metrics.PHASE_FAILURES.labels(row.phase).inc()
            if status == Status.COMPLETED:
                log.info(
                    f"{row.change.label} migration completed successfully",
                    migration_id=migration_id,
                    node_id=row.node_id,
                    total_duration=f"{(datetime.now(UTC) - row.started_at).total_seconds():.2f}s",
                )
        log.info("Migration finished", migration_id=migration_id, status=status, error=error or None)
        return epoch
