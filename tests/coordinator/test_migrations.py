"""Starting a migration's workflow, and reading its pause and throttle for a status.

A unit test of coordinator/migrations.py with fake Temporal clients and stores.
A Temporal error after the migration was recorded never deletes it: the start
may have reached Temporal before the error, so the row stays for the workflow
(if it runs) or for the reconciler (if it never started). A status asks the
workflow at most once per CONTROL_SECONDS, and never answers from before an
update this coordinator sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from pairdb.coordinator.migrations import CONTROL_SECONDS, Control, Migrations
from pairdb.kernel import migration as m
from pairdb.kernel.errors import Unavailable

REQUEST = m.NodeAdditionInput("mig-1", "node-9", "127.0.0.1", 7009, 8)
RECORDED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeRow:
    started_at: datetime = RECORDED_AT


@dataclass
class FakeStore:
    deleted: list[str] = field(default_factory=list)

    async def create(self, request: m.NodeAdditionInput, workflow_id: str) -> FakeRow:
        return FakeRow()

    async def delete(self, migration_id: str) -> None:
        self.deleted.append(migration_id)


@dataclass
class FakeDescription:
    status: WorkflowExecutionStatus
    start_time: datetime


class FakeHandle:
    def __init__(self, description: FakeDescription | None) -> None:
        self._description = description

    async def describe(self, **_: Any) -> FakeDescription:
        if self._description is None:
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")
        return self._description


class FakeTemporal:
    """start_workflow fails as if the reply was lost; describe says what Temporal really has."""

    namespace = "default"

    def __init__(self, description: FakeDescription | None) -> None:
        self._description = description

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        raise RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    def get_workflow_handle(self, workflow_id: str) -> FakeHandle:
        return FakeHandle(self._description)


def migrations(store: FakeStore, description: FakeDescription | None) -> Migrations:
    return Migrations(store, FakeTemporal(description))  # type: ignore[arg-type]


async def test_a_start_whose_reply_was_lost_but_whose_workflow_runs_succeeds_and_keeps_the_row() -> None:
    store = FakeStore()
    running = FakeDescription(WorkflowExecutionStatus.RUNNING, RECORDED_AT + timedelta(seconds=1))
    started = await migrations(store, running).start_node_addition(REQUEST, keys_to_move=0)
    assert started.migration_id == "mig-1" and store.deleted == []


async def test_a_start_that_failed_leaves_the_row_for_the_reconciler_and_says_so() -> None:
    store = FakeStore()
    with pytest.raises(Unavailable, match="migration status mig-1"):
        await migrations(store, None).start_node_addition(REQUEST, keys_to_move=0)
    assert store.deleted == []


async def test_an_earlier_migrations_run_does_not_count_as_this_ones_start() -> None:
    store = FakeStore()
    earlier = FakeDescription(WorkflowExecutionStatus.RUNNING, RECORDED_AT - timedelta(minutes=5))
    with pytest.raises(Unavailable):
        await migrations(store, earlier).start_node_addition(REQUEST, keys_to_move=0)
    assert store.deleted == []


# -- a status's pause and throttle: asked of the workflow, reused for a moment -------------------------


@dataclass
class Running:
    """A migration row as control() reads it."""

    workflow_id: str = "add-node-node-9"
    status: m.Status = m.Status.IN_PROGRESS
    migration_id: str = "mig-1"


class SteeredWorkflow:
    """The workflow's side: its pause as the updates left it; counts the queries it answers."""

    def __init__(self) -> None:
        self.paused = False
        self.queries = 0
        self.answer_gate: asyncio.Event | None = None  # set: a query answers only once it is
        self.asked = asyncio.Event()  # a query reached the workflow

    async def query(self, name: str, *, result_type: type) -> m.MigrationState:
        assert name == m.QUERY_PROGRESS
        self.queries += 1
        self.asked.set()
        paused = self.paused  # what the workflow has when the query reaches it
        if self.answer_gate is not None:
            await self.answer_gate.wait()
        return m.MigrationState("mig-1", "node-9", m.Phase.DATA_COPY, m.Status.IN_PROGRESS, paused=paused)

    async def execute_update(self, update: str, *, args: list[object], **_: Any) -> str:
        assert update == m.UPDATE_PAUSE
        self.paused = bool(args[0])
        return ""


class SteeredTemporal:
    namespace = "default"

    def __init__(self) -> None:
        self.workflow = SteeredWorkflow()

    def get_workflow_handle(self, workflow_id: str) -> SteeredWorkflow:
        return self.workflow


class RowStore:
    async def get(self, migration_id: str) -> Running:
        return Running()


def steered(now: list[float]) -> tuple[Migrations, SteeredWorkflow]:
    temporal = SteeredTemporal()
    migrations = Migrations(RowStore(), temporal, clock=lambda: now[0])  # type: ignore[arg-type]
    return migrations, temporal.workflow


async def test_status_reads_within_a_moment_ask_the_workflow_once() -> None:
    now = [100.0]
    migrations, workflow = steered(now)
    row = Running()
    for _ in range(5):
        assert not (await migrations.control(row)).paused  # type: ignore[arg-type]
    assert workflow.queries == 1
    now[0] += CONTROL_SECONDS
    await migrations.control(row)  # type: ignore[arg-type]
    assert workflow.queries == 2


async def test_a_pause_through_this_coordinator_shows_in_the_next_status_at_once() -> None:
    now = [100.0]
    migrations, workflow = steered(now)
    row = Running()
    assert not (await migrations.control(row)).paused  # type: ignore[arg-type]
    await migrations.pause("mig-1", True)
    assert (await migrations.control(row)).paused  # type: ignore[arg-type]
    assert workflow.queries == 2


async def test_an_answer_asked_for_before_a_pause_is_not_kept_for_after_it() -> None:
    now = [100.0]
    migrations, workflow = steered(now)
    row = Running()
    workflow.answer_gate = asyncio.Event()
    asked = asyncio.ensure_future(migrations.control(row))  # type: ignore[arg-type]
    await workflow.asked.wait()
    await migrations.pause("mig-1", True)  # the workflow is paused; the answer on its way is not
    workflow.answer_gate.set()
    assert not (await asked).paused
    workflow.answer_gate = None
    assert (await migrations.control(row)).paused  # type: ignore[arg-type]


async def test_an_ended_migration_is_never_asked() -> None:
    migrations, workflow = steered([100.0])
    ended = Running(status=m.Status.COMPLETED)
    assert await migrations.control(ended) == Control(False, 0)  # type: ignore[arg-type]
    assert workflow.queries == 0
