"""The coordinator's side of repairs: start RepairWorkflow, keep the repair Schedule, report on them.

As with ring changes, the coordinator never repairs anything itself: it starts
the workflow on Temporal by name; the worker's activities keep the `repairs`
rows current, which status and listings read. A repair is steered (cancel,
pause, throttle) through the same workflow updates as a migration.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from pairdb.coordinator.metadata import MigrationRow
from pairdb.coordinator.repair_store import RepairRow, RepairStore
from pairdb.kernel import migration as m
from pairdb.kernel import repair as r
from pairdb.kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from pairdb.kernel.migration import Phase, Status

log = structlog.get_logger()

MAX_INTERVAL_HOURS = 24 * 30


def as_migration(row: RepairRow) -> MigrationRow:
    """A repair as status and listings show migrations: type `repair`, its tenant (or `all`) as node;
    `queued` while it waits for a ring change, and why."""
    waiting = str(row.progress.get("waiting_for", "")) if row.status == Status.IN_PROGRESS else ""
    return MigrationRow(
        migration_id=row.repair_id,
        type=r.REPAIR_TYPE,
        node_id=row.tenant_id or "all",
        host="",
        port=0,
        virtual_nodes=0,
        workflow_id=row.repair_id,
        phase=(Phase.QUEUED if waiting else Phase.REPAIRING)
        if row.status == Status.IN_PROGRESS
        else Phase.DONE,
        status=row.status,
        progress=row.progress,
        error=f"waiting: {waiting}" if waiting else row.error,
        started_at=row.started_at,
        completed_at=row.completed_at,
        estimated_completion=row.estimated_completion,
    )


def _attributes(tenant_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_PHASE), Phase.QUEUED),
            SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_NODE), tenant_id or "all"),
            SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_STATUS), Status.IN_PROGRESS),
            SearchAttributePair(SearchAttributeKey.for_keyword(m.SA_TYPE), r.REPAIR_TYPE),
        ]
    )


class Repairs:
    def __init__(self, store: RepairStore, temporal: Client | None) -> None:
        self._store = store
        self._temporal = temporal

    def _client(self) -> Client:
        if self._temporal is None:
            raise FailedPrecondition(
                "this coordinator has no Temporal address (--temporal), so it cannot run repairs"
            )
        return self._temporal

    async def get(self, repair_id: str) -> MigrationRow | None:
        row = await self._store.get(repair_id)
        return None if row is None else as_migration(row)

    async def listing(self, recent: int) -> list[MigrationRow]:
        return [as_migration(row) for row in await self._store.listing(recent)]

    async def start(self, tenant_id: str, throttle: int, started_by: str) -> str:
        """Record and start a repair of every tenant (or of one); its id is its workflow id.

        ALREADY_EXISTS while another repair of the same scope runs. A row left running by a
        workflow that ended without finishing it (terminated) is closed first.
        """
        client = self._client()
        workflow_id = r.workflow_id(tenant_id, uuid.uuid4().hex[:8])
        scope = f"tenant {tenant_id}" if tenant_id else "every tenant"
        running = await self._store.running(tenant_id)
        if running is not None and not await self._runs(running.repair_id):
            await self._store.finish(
                running.repair_id, Status.FAILED, "its workflow ended without finishing it (terminated?)"
            )
        await self._store.begin(workflow_id, tenant_id, started_by)
        try:
            await client.start_workflow(
                r.WORKFLOW_NAME,
                r.RepairInput(tenant_id, throttle, started_by),
                id=workflow_id,
                task_queue=m.TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=_attributes(tenant_id),
                static_summary=f"Repair {scope}",
                static_details=f"**Anti-entropy repair** of {scope}, started by {started_by or 'unknown'}",
            )
        except WorkflowAlreadyStartedError:
            await self._store.delete(workflow_id)
            raise AlreadyExists(f"a repair of {scope} is running already (workflow {workflow_id})") from None
        except RPCError as exc:
            await self._store.delete(workflow_id)
            raise Unavailable(f"Temporal did not start the repair ({exc}); retry shortly") from None
        log.info("Repair requested", repair_id=workflow_id, tenant_id=tenant_id or None, throttle=throttle)
        return workflow_id

    async def _runs(self, workflow_id: str) -> bool:
        try:
            described = await self._client().get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise Unavailable(f"could not ask Temporal about repair {workflow_id} ({exc}); retry") from None
        return described.status == WorkflowExecutionStatus.RUNNING

    async def schedule(self, every_hours: int) -> str:
        """Create the repair Schedule, or set its interval if it exists; what was done."""
        if not 1 <= every_hours <= MAX_INTERVAL_HOURS:
            raise InvalidArgument(f"every_hours must be 1..{MAX_INTERVAL_HOURS}, got {every_hours}")
        every = timedelta(hours=every_hours)
        spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)])
        client = self._client()
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(
                r.WORKFLOW_NAME,
                r.RepairInput(started_by="schedule"),
                id="repair-scheduled",
                task_queue=m.TASK_QUEUE,
                typed_search_attributes=_attributes(""),
            ),
            spec=spec,
            # A repair still running when the next is due: the next is skipped, not stacked.
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
        try:
            await client.create_schedule(r.SCHEDULE_ID, schedule)
            log.info("Repair schedule created", schedule_id=r.SCHEDULE_ID, every_hours=every_hours)
            return f"schedule {r.SCHEDULE_ID} created: a repair of every tenant every {every_hours} h"
        except ScheduleAlreadyRunningError:
            pass

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            current.description.schedule.spec = spec
            return ScheduleUpdate(schedule=current.description.schedule)

        await client.get_schedule_handle(r.SCHEDULE_ID).update(update)
        log.info("Repair schedule updated", schedule_id=r.SCHEDULE_ID, every_hours=every_hours)
        return f"schedule {r.SCHEDULE_ID} updated: a repair of every tenant every {every_hours} h"
