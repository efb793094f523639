"""RingChangeWorkflow: change the ring online in four phases, or undo it cleanly.

    queued -> dual_write -> data_copy (copy, verify) -> cutover -> cleanup -> done

Every ring change runs this orchestration: adding a node (node_addition.py),
and, at the end of this module, removing one (live or dead), replacing a dead
one, changing a tenant's replication factor. What differs between them, the
activities read from the migration's row: which ring and RFs are old and new,
who gains and who loses ranges. The workflows differ only in their name, their
input and what the Temporal UI says.

Cancel (before cutover) and rollback (during cutover) are signals, updates
with validators (for callers that want a yes/no), and Temporal's own
cancellation. A phase that fails past its retries rolls back to the last safe
state and the migration ends `failed`. Compensation, once begun, and cleanup,
past the point of no return, run to the end whatever stop requests arrive
meanwhile. What no workflow code can handle (a terminated workflow) the
reconciler finishes (activities/reconciler.py). Every step that touches the
world is an activity; this module only decides what runs next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    # Activities by reference, so mypy checks every call across the Temporal boundary; their
    # modules load outside the sandbox and run only in the worker, never in workflow code.
    from pairdb.activities.cleanup import CleanupSteps
    from pairdb.activities.copy import CopySteps
    from pairdb.activities.registry_steps import RegistrySteps
    from pairdb.kernel import migration as m
    from pairdb.kernel.migration import (
        TERMINAL,
        ChangeType,
        CopyChunk,
        EnterPhase,
        FinishMigration,
        MigrationRef,
        Phase,
        Status,
        Undo,
    )
    from pairdb.workflows.steering import Steering

# Ranges per copy step of plans that do not cut their own steps (made by an earlier version).
CHUNK_RANGES = 16
# Workflows started before compensation and cleanup became uninterruptible replay as they ran.
UNINTERRUPTIBLE_PATCH = "uninterruptible-compensation"
QUEUE_POLL = timedelta(seconds=1)

PHASE_KEY = SearchAttributeKey.for_keyword(m.SA_PHASE)
NODE_KEY = SearchAttributeKey.for_keyword(m.SA_NODE)
STATUS_KEY = SearchAttributeKey.for_keyword(m.SA_STATUS)
TYPE_KEY = SearchAttributeKey.for_keyword(m.SA_TYPE)

# Registry steps end in a barrier, which waits at most a coordinator lease.
REGISTRY_STEP = ActivityConfig(
    start_to_close_timeout=timedelta(minutes=2),
    heartbeat_timeout=timedelta(seconds=20),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=10
    ),
)
# A copy chunk survives its nodes restarting: retried for minutes, heartbeats every range.
COPY_STEP = ActivityConfig(
    start_to_close_timeout=timedelta(minutes=30),
    heartbeat_timeout=timedelta(seconds=10),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=30
    ),
)
# Past the point of no return (cleanup) and while undoing: retry until it works.
MUST_FINISH = ActivityConfig(
    start_to_close_timeout=timedelta(minutes=30),
    heartbeat_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
)

# Wiping a cancelled node: it may be the very node that is down.
BEST_EFFORT = ActivityConfig(
    start_to_close_timeout=timedelta(minutes=5),
    heartbeat_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5
    ),
)


A = TypeVar("A")
R = TypeVar("R")


class _Stop(Exception):
    """An operator asked to cancel or roll back."""


class RingChangeWorkflow(Steering):
    """The orchestration every ring change shares; subclasses name it and give its input."""

    def __init__(self) -> None:
        self._state = m.MigrationState("", "", Phase.QUEUED, Status.QUEUED)
        self._change = ChangeType.NODE_ADDITION
        # Set by cancel or rollback, however asked; where the migration got to decides which it is.
        self._stop = False

    # -- the run ------------------------------------------------------------------------

    async def _run(self, request: m.RingChangeInput) -> m.MigrationState:
        s = self._state
        s.migration_id, s.node_id, self._change = request.migration_id, request.subject, request.change
        s.throttle_keys_per_second = request.throttle_keys_per_second
        self._publish()
        try:
            await self._wait_for_turn()
            await self._phase(Phase.DUAL_WRITE, RegistrySteps.enable_dual_write, MigrationRef(s.migration_id))
            await self._data_copy()
            if request.hold_at_cutover:
                # Held from before the phase starts: a resume sent as soon as cutover shows is not lost.
                s.holding_at_cutover = s.paused = True
            await self._phase(
                Phase.CUTOVER, RegistrySteps.enter_phase, EnterPhase(s.migration_id, Phase.CUTOVER)
            )
            await self._hold_at_cutover(request.hold_at_cutover)
            self._raise_if_stopped()
            await self._uninterruptible(self._cleanup())
            return s
        except _Stop:
            await self._uninterruptible(self._undo(self._stopped_status(), ""))
            return s
        except asyncio.CancelledError:
            # Temporal's own cancel means cancel (or rollback once reads moved).
            await self._uninterruptible(self._undo(self._stopped_status(), ""))
            raise
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                await self._uninterruptible(self._undo(self._stopped_status(), ""))
                raise
            if s.phase == Phase.CLEANUP:
                raise  # cleanup steps retry forever; only a bug gets here (the reconciler finishes it)
            error = f"phase {s.phase} failed: {_cause(exc)}"
            workflow.logger.error("Migration phase failed; rolling back", extra={"error": error})
            await self._uninterruptible(self._undo(Status.FAILED, error))
            return s

    async def _wait_for_turn(self) -> None:
        """Stay `queued` until this migration holds the one ring-change slot."""
        while not await self._activity(
            RegistrySteps.claim_ring_change, MigrationRef(self._state.migration_id)
        ):
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(lambda: self._stop, timeout=QUEUE_POLL)
            self._raise_if_stopped()
        self._state.status = Status.IN_PROGRESS
        self._publish()

    async def _data_copy(self) -> None:
        s = self._state
        await self._phase(
            Phase.DATA_COPY, RegistrySteps.enter_phase, EnterPhase(s.migration_id, Phase.DATA_COPY)
        )
        plan = await self._activity(CopySteps.plan_copy, MigrationRef(s.migration_id), stoppable=True)
        s.progress.ranges_total, s.progress.keys_total = plan.ranges_total, plan.keys_total
        self._publish()
        chunks = plan.chunks or [
            list(range(i, min(i + CHUNK_RANGES, plan.ranges_total)))
            for i in range(0, plan.ranges_total, CHUNK_RANGES)
        ]
        for chunk in chunks:
            await workflow.wait_condition(lambda: not s.paused or self._stop)
            self._raise_if_stopped()
            s.progress = await self._activity(
                CopySteps.copy_ranges,
                CopyChunk(s.migration_id, chunk, s.throttle_keys_per_second),
                COPY_STEP,
                stoppable=True,
            )
            self._publish()
        for chunk in chunks:
            self._raise_if_stopped()
            # Without the throttle (it limits the keys copied), but yielding to clients as the copy does.
            await self._activity(
                CopySteps.verify_ranges, CopyChunk(s.migration_id, chunk), COPY_STEP, stoppable=True
            )

    async def _hold_at_cutover(self, hold: bool) -> None:
        """With hold_at_cutover, wait for resume (then cleanup) or rollback."""
        s = self._state
        if not hold:
            return
        self._publish()
        await workflow.wait_condition(lambda: not s.paused or self._stop)
        s.holding_at_cutover = False
        self._publish()

    async def _cleanup(self) -> None:
        """Past the point of no return: reads and writes use the new ring only, then old copies go."""
        s = self._state
        await self._phase(
            Phase.CLEANUP, RegistrySteps.enter_phase, EnterPhase(s.migration_id, Phase.CLEANUP), MUST_FINISH
        )
        await self._activity(CleanupSteps.drop_moved_ranges, MigrationRef(s.migration_id), MUST_FINISH)
        await self._finish(Status.COMPLETED)
        s.phase = Phase.DONE
        self._publish()

    async def _undo(self, status: Status, error: str) -> None:
        """Compensate back to the old ring from wherever the migration stopped, then record status."""
        s = self._state
        ref = MigrationRef(s.migration_id)
        for step in m.undo_steps(s.phase, self._change):
            if step is Undo.RESTORE_READS:
                await self._phase(Phase.ROLLING_BACK, RegistrySteps.restore_reads_on_old, ref, MUST_FINISH)
            elif step is Undo.REMOVE_NODE:
                await self._phase(Phase.CANCELLING, RegistrySteps.remove_joining_node, ref, MUST_FINISH)
            elif step is Undo.RESTORE_RING:
                await self._phase(Phase.CANCELLING, RegistrySteps.restore_old_ring, ref, MUST_FINISH)
            else:
                wipe = (
                    CleanupSteps.wipe_joining_node
                    if step is Undo.WIPE_NODE
                    else CleanupSteps.drop_gained_ranges
                )
                try:
                    await self._activity(wipe, ref, BEST_EFFORT)
                except ActivityError as exc:
                    # Out of every replica set already: what it holds is never read.
                    error = "; ".join(
                        e for e in (error, f"could not delete what was copied: {_cause(exc)}") if e
                    )
        s.error = error
        await self._finish(status)

    async def _uninterruptible(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work to its end: a stop request that arrives meanwhile (a Temporal cancel too) waits.

        Half-done compensation or cleanup would leave the ring between two states.
        """
        if not workflow.patched(UNINTERRUPTIBLE_PATCH):
            await work  # a run that began before this rule: replay it as it ran
            return
        task = asyncio.ensure_future(work)
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # absorbed: nothing later in this task may see it as pending
                if task.done():
                    break
                workflow.logger.warning(
                    "Stop request deferred: this step runs to its end first",
                    extra={"migration_id": self._state.migration_id, "phase": self._state.phase},
                )
        task.result()

    def _stopped_status(self) -> Status:
        return Status.ROLLED_BACK if self._reads_on_new() else Status.CANCELLED

    async def _finish(self, status: Status) -> None:
        s = self._state
        await self._activity(
            RegistrySteps.finish_migration, FinishMigration(s.migration_id, status, s.error), MUST_FINISH
        )
        s.status = status
        self._publish()

    # -- steps ---------------------------------------------------------------------------

    async def _phase(
        self,
        phase: Phase,
        activity: Callable[[Any, A], Awaitable[int]],
        arg: A,
        config: ActivityConfig = REGISTRY_STEP,
    ) -> None:
        started = workflow.now()
        self._state.phase = phase
        self._state.phase_history.append(phase)
        self._publish()
        await self._activity(activity, arg, config)
        workflow.logger.info(
            "Migration phase completed",
            extra={
                "migration_id": self._state.migration_id,
                "phase": phase,
                "duration": str(workflow.now() - started),
            },
        )

    async def _activity(
        self,
        activity: Callable[[Any, A], Awaitable[R]],
        arg: A,
        config: ActivityConfig = REGISTRY_STEP,
        *,
        stoppable: bool = False,
    ) -> R:
        """Run one step; a stoppable one is cancelled as soon as an operator asks to stop (then _Stop)."""
        handle = workflow.start_activity_method(activity, arg, **config)
        if not stoppable:
            return await handle
        stop = asyncio.ensure_future(workflow.wait_condition(lambda: self._stop))
        try:
            await workflow.wait([handle, stop], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handle.cancel()  # wait() does not pass a cancel on to what it waits for
            stop.cancel()
            raise
        if handle.done():
            stop.cancel()
            return handle.result()
        handle.cancel()
        try:
            await handle
        except ActivityError as exc:
            if not is_cancelled_exception(exc):
                raise
        raise _Stop()

    def _raise_if_stopped(self) -> None:
        if self._stop:
            raise _Stop()

    def _reads_on_new(self) -> bool:
        return self._state.phase in (Phase.CUTOVER, Phase.ROLLING_BACK)

    # -- what operators see -----------------------------------------------------------------

    def _publish(self) -> None:
        s, p = self._state, self._state.progress
        workflow.upsert_search_attributes(
            [
                PHASE_KEY.value_set(s.phase),
                NODE_KEY.value_set(s.node_id),
                STATUS_KEY.value_set(s.status),
                TYPE_KEY.value_set(self._change),
            ]
        )
        lines = [f"**{self._headline()}** — phase **{s.phase}**, status **{s.status}**"]
        if p.ranges_total:
            lines.append(
                f"- copied {p.keys_copied:,} of ~{p.keys_total:,} keys ({p.percent:.1f}%), "
                f"ranges {p.ranges_done}/{p.ranges_total}"
            )
            lines.append(f"- rate {p.keys_per_second:,.0f} keys/s, ETA {p.eta_seconds:.0f} s")
        if s.holding_at_cutover:
            lines.append(
                "- **holding at cutover**: reads use the new replicas; resume to clean up, or roll back"
            )
        elif s.paused:
            lines.append("- **paused**")
        if s.throttle_keys_per_second:
            lines.append(f"- throttle {s.throttle_keys_per_second:,} keys/s")
        if s.error:
            lines.append(f"- error: {s.error}")
        workflow.set_current_details("\n".join(lines))

    def _headline(self) -> str:
        return {
            ChangeType.NODE_ADDITION: "Adding node `{}`",
            ChangeType.NODE_REMOVAL: "Removing node `{}`",
            ChangeType.NODE_REPLACEMENT: "Replacing dead node `{}`",
            ChangeType.RF_CHANGE: "Changing the replication factor of tenant `{}`",
        }[self._change].format(self._state.node_id)

    @workflow.query(name=m.QUERY_PROGRESS)
    def progress(self) -> m.MigrationState:
        return self._state

    # -- stopping: signals (the `temporal` CLI); pause, resume and throttle are Steering's --------

    @workflow.signal
    def cancel(self) -> None:
        """Cancel before cutover; during cutover this rolls back; ignored once cleanup began."""
        if self._state.phase in (Phase.CLEANUP, Phase.DONE):
            workflow.logger.warning("cancel ignored: the migration is past cutover")
            return
        self._stop = True

    @workflow.signal
    def rollback(self) -> None:
        """Roll back during cutover; before it, the same as cancel."""
        self.cancel()

    # -- updates (the coordinator's RPCs): a yes/no answer ------------------------------------------

    @workflow.update(name=m.UPDATE_CANCEL)
    def cancel_migration(self) -> str:
        if self._stop:
            return f"already stopping: phase {self._state.phase}"
        self._stop = True
        return f"cancelling: phase {self._state.phase}"

    @cancel_migration.validator
    def _validate_cancel(self) -> None:
        if self._state.phase in (Phase.CUTOVER, Phase.ROLLING_BACK) and not self._stop:
            raise ApplicationError("the migration is in cutover: roll it back instead of cancelling")
        if self._state.phase in (Phase.CLEANUP, Phase.DONE) or self._state.status in TERMINAL:
            raise ApplicationError(
                f"too late to cancel: phase {self._state.phase}, "
                f"status {self._state.status}; undo it with the opposite ring change instead"
            )

    @workflow.update(name=m.UPDATE_ROLLBACK)
    def rollback_migration(self) -> str:
        if self._stop:
            return f"already stopping: phase {self._state.phase}"
        self._stop = True
        return "rolling back: reads return to the old replicas"

    @rollback_migration.validator
    def _validate_rollback(self) -> None:
        if self._stop and self._state.phase in (Phase.CUTOVER, Phase.ROLLING_BACK):
            return  # a repeat: harmless
        if self._state.phase != Phase.CUTOVER:
            raise ApplicationError(
                f"rollback applies during cutover; the migration is in {self._state.phase}"
                + (
                    " (cancel it instead)"
                    if self._state.phase in (Phase.QUEUED, Phase.DUAL_WRITE, Phase.DATA_COPY)
                    else ""
                )
            )


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


# -- the ring changes besides an addition: each a name for the same orchestration ---------------


@workflow.defn(name=ChangeType.NODE_REMOVAL.workflow_name)
class NodeRemovalWorkflow(RingChangeWorkflow):
    """A node leaves the ring: its ranges go to the nodes that gain them, from a quorum of their old
    replicas (the leaving node among them); a dead node (`--dead`) is never asked, its ranges are
    re-replicated from the survivors."""

    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)


@workflow.defn(name=ChangeType.NODE_REPLACEMENT.workflow_name)
class NodeReplacementWorkflow(RingChangeWorkflow):
    """A new node takes a dead node's tokens, filled from a quorum of each range's survivors while
    writes go to them and to it; the dead node never has to answer."""

    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)


@workflow.defn(name=ChangeType.RF_CHANGE.workflow_name)
class ReplicationChangeWorkflow(RingChangeWorkflow):
    """A tenant moves to another replication factor: raised, its data reaches the replicas it gains
    before reads count on them; lowered, reads move to the smaller sets first, then cleanup deletes
    the extra copies."""

    @workflow.run
    async def run(self, request: m.RingChangeInput) -> m.MigrationState:
        return await self._run(request)
