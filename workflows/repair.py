"""RepairWorkflow: anti-entropy repair of the whole ring (or one tenant), range by range.

    begin -> plan -> repair each step of ranges (queued while a ring change runs) -> finish

Started by `pairdb repair` (through a coordinator) or by the `pairdb-repair`
Temporal Schedule. The work is in activities/repair.py; this module decides
what runs next. Shown and steered as a migration is: the `progress` query, the
cancel/pause/throttle updates and signals, the Migration* search attributes
with MigrationType=repair. A step repairs nothing while a ring change is in
flight; the workflow then waits (phase `queued`) and asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    from pairdb.activities.repair import RepairSteps
    from pairdb.kernel import migration as m
    from pairdb.kernel import repair as r
    from pairdb.kernel.migration import Phase, Status
    from pairdb.workflows.ring_change import COPY_STEP
    from pairdb.workflows.steering import Steering

PHASE_KEY = SearchAttributeKey.for_keyword(m.SA_PHASE)
NODE_KEY = SearchAttributeKey.for_keyword(m.SA_NODE)
STATUS_KEY = SearchAttributeKey.for_keyword(m.SA_STATUS)
TYPE_KEY = SearchAttributeKey.for_keyword(m.SA_TYPE)

# How often a repair that yields to a ring change asks again.
RING_CHANGE_POLL = timedelta(seconds=5)

BOOKKEEPING = ActivityConfig(
    start_to_close_timeout=timedelta(minutes=2),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)),
)
# A step survives its nodes restarting, as a copy step does (it heartbeats every few seconds).
REPAIR_STEP = COPY_STEP


class _Stop(Exception):
    """An operator asked to cancel."""


@workflow.defn(name=r.WORKFLOW_NAME)
class RepairWorkflow(Steering):
    _noun = "the repair"

    def __init__(self) -> None:
        self._state = m.MigrationState("", "", Phase.QUEUED, Status.IN_PROGRESS)
        self._stop = False

    @workflow.run
    async def run(self, request: r.RepairInput) -> m.MigrationState:
        s = self._state
        repair_id = workflow.info().workflow_id
        s.migration_id, s.node_id = repair_id, request.tenant_id or "all"
        s.throttle_keys_per_second = request.throttle_keys_per_second
        self._publish()
        await workflow.execute_activity_method(
            RepairSteps.begin_repair,
            r.BeginRepair(repair_id, request.tenant_id, request.started_by or "schedule"),
            **BOOKKEEPING,
        )
        status, error = Status.COMPLETED, ""
        try:
            await self._repair(repair_id)
        except _Stop:
            status = Status.CANCELLED
        except asyncio.CancelledError:
            # Temporal's own cancel: record it, then end cancelled.
            await asyncio.shield(self._finish(Status.CANCELLED, ""))
            raise
        except ActivityError as exc:
            status, error = Status.FAILED, _cause(exc)
        await self._finish(status, error)
        return s

    async def _repair(self, repair_id: str) -> None:
        s = self._state
        s.phase = Phase.REPAIRING
        self._publish()
        plan = await workflow.execute_activity_method(
            RepairSteps.plan_repair, r.RepairRef(repair_id), **BOOKKEEPING
        )
        s.progress.ranges_total, s.progress.keys_total = plan.ranges_total, plan.keys_total
        self._publish()
        for chunk in plan.chunks:
            while True:
                await workflow.wait_condition(lambda: not s.paused or self._stop)
                if self._stop:
                    raise _Stop()
                step = await workflow.execute_activity_method(
                    RepairSteps.repair_ranges,
                    r.RepairChunk(repair_id, chunk, s.throttle_keys_per_second),
                    **REPAIR_STEP,
                )
                s.progress = step.progress
                if not step.waiting_for:
                    s.phase, s.error = Phase.REPAIRING, ""
                    self._publish()
                    break
                s.phase, s.error = Phase.QUEUED, f"waiting: {step.waiting_for}"
                self._publish()
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(lambda: self._stop, timeout=RING_CHANGE_POLL)

    async def _finish(self, status: Status, error: str) -> None:
        s = self._state
        ended = await workflow.execute_activity_method(
            RepairSteps.finish_repair, r.FinishRepair(s.migration_id, status, error), **BOOKKEEPING
        )
        s.status, s.phase, s.error = ended.status, Phase.DONE, ended.error
        self._publish()

    # -- what operators see -----------------------------------------------------------------

    def _publish(self) -> None:
        s, p = self._state, self._state.progress
        workflow.upsert_search_attributes(
            [
                PHASE_KEY.value_set(s.phase),
                NODE_KEY.value_set(s.node_id),
                STATUS_KEY.value_set(s.status),
                TYPE_KEY.value_set(r.REPAIR_TYPE),
            ]
        )
        scope = "every tenant" if s.node_id == "all" else f"tenant `{s.node_id}`"
        lines = [f"**Repairing {scope}** — phase **{s.phase}**, status **{s.status}**"]
        if p.ranges_total:
            lines.append(
                f"- compared {p.keys_copied:,} of ~{p.keys_total:,} keys ({p.percent:.1f}%), "
                f"ranges {p.ranges_done}/{p.ranges_total}"
            )
            lines.append(f"- rate {p.keys_per_second:,.0f} keys/s, ETA {p.eta_seconds:.0f} s")
        if s.paused:
            lines.append("- **paused**")
        if s.throttle_keys_per_second:
            lines.append(f"- throttle {s.throttle_keys_per_second:,} keys/s")
        if s.error:
            lines.append(f"- {s.error}")
        workflow.set_current_details("\n".join(lines))

    @workflow.query(name=m.QUERY_PROGRESS)
    def progress(self) -> m.MigrationState:
        return self._state

    # -- stopping (pause, resume and throttle: Steering) -------------------------------------------

    @workflow.signal
    def cancel(self) -> None:
        self._stop = True

    @workflow.update(name=m.UPDATE_CANCEL)
    def cancel_repair(self) -> str:
        self._stop = True
        return (
            f"cancelling the repair after its current step ({self._state.progress.ranges_done} ranges done)"
        )

    @cancel_repair.validator
    def _validate_cancel(self) -> None:
        self._refuse_if_ended()

    @workflow.update(name=m.UPDATE_ROLLBACK)
    def rollback_repair(self) -> str:
        raise ApplicationError("unreachable: the validator refuses")

    @rollback_repair.validator
    def _validate_rollback(self) -> None:
        raise ApplicationError(
            "a repair has nothing to roll back (it only adds what replicas lack); cancel it"
        )


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)
