"""Recorded histories (happy path, cancel, rollback) replay on today's workflow code.

A change that makes NodeAdditionWorkflow nondeterministic for migrations
already running fails here. Re-record the fixtures with
`PAIRDB_RECORD_HISTORIES=1 pytest tests/workflows/test_node_addition.py`
only when a change is meant to be incompatible (and then version the workflow).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from pairdb.kernel import migration as m
from pairdb.workflows.node_addition import NodeAdditionWorkflow

HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.parametrize("name", ["happy_path", "cancel", "rollback"])
async def test_recorded_history_replays_without_nondeterminism(name: str) -> None:
    history = WorkflowHistory.from_json(f"add-node-{name}", (HISTORIES / f"{name}.json").read_text())
    result = await Replayer(workflows=[NodeAdditionWorkflow]).replay_workflow(
        history, raise_on_replay_failure=True
    )
    assert result.replay_failure is None


@workflow.defn(name="NodeAdditionWorkflow", sandboxed=False)
class SkipsTheQueue:
    """A deliberately incompatible change: starts with dual writes instead of claiming the ring."""

    @workflow.run
    async def run(self, request: m.NodeAdditionInput) -> None:
        await workflow.execute_activity(
            "enable_dual_write", request.migration_id, start_to_close_timeout=timedelta(minutes=1)
        )


async def test_an_incompatible_change_is_caught_by_replay() -> None:
    history = WorkflowHistory.from_json("add-node", (HISTORIES / "happy_path.json").read_text())
    result = await Replayer(workflows=[SkipsTheQueue]).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
