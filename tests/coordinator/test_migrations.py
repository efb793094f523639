"""Starting a migration's workflow: a Temporal error after the migration was recorded never deletes it.

A unit test of coordinator/migrations.py with a fake Temporal client and store:
the start may have reached Temporal before the error, so the row stays for the
workflow (if it runs) or for the reconciler (if it never started).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from pairdb.coordinator.migrations import Migrations
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
