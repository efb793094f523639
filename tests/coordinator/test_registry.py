"""A migration's phase moves only along its graph, whoever asks: a late step is refused, not applied."""

from __future__ import annotations

import pytest

from pairdb.coordinator.registry import StepRefused, check_step
from pairdb.kernel import migration as m


def row(phase: str, status: str = m.S_IN_PROGRESS) -> dict[str, str]:
    return {"migration_id": "mig", "phase": phase, "status": status, "error": ""}


@pytest.mark.parametrize(
    ("current", "step"),
    [
        (m.QUEUED, m.DUAL_WRITE),
        (m.DUAL_WRITE, m.DATA_COPY),
        (m.DATA_COPY, m.CUTOVER),
        (m.CUTOVER, m.CLEANUP),
        (m.CUTOVER, m.CUTOVER),  # a retried step finds its phase set
        (m.CUTOVER, m.ROLLING_BACK),
        (m.DATA_COPY, m.ROLLING_BACK),  # the cutover step never committed: reads were on old anyway
        (m.ROLLING_BACK, m.CANCELLING),
        (m.DUAL_WRITE, m.CANCELLING),
    ],
)
def test_the_steps_of_the_graph_are_allowed(current: str, step: str) -> None:
    check_step(row(current), step)


@pytest.mark.parametrize(
    ("current", "step"),
    [
        (m.CANCELLING, m.DUAL_WRITE),  # a join that outlived its cancel must not put the node back
        (m.ROLLING_BACK, m.CLEANUP),  # nor a cleanup step that outlived its rollback
        (m.CLEANUP, m.ROLLING_BACK),  # past the point of no return nothing goes back
        (m.CLEANUP, m.CANCELLING),
        (m.CANCELLING, m.ROLLING_BACK),
        (m.DATA_COPY, m.CLEANUP),  # no phase is skipped
        (m.CLEANUP, m.CUTOVER),  # a reset workflow replaying an earlier step
    ],
)
def test_a_step_off_the_graph_is_refused(current: str, step: str) -> None:
    with pytest.raises(StepRefused):
        check_step(row(current), step)


def test_nothing_moves_once_the_migration_ended() -> None:
    for step in (m.DUAL_WRITE, m.CANCELLING, m.CLEANUP):
        with pytest.raises(StepRefused, match="has ended"):
            check_step(row(m.CANCELLING, m.S_FAILED), step)


def test_undo_steps_take_each_phase_back_to_the_old_ring() -> None:
    assert m.undo_steps(m.QUEUED) == []
    assert m.undo_steps(m.DATA_COPY) == [m.UNDO_REMOVE_NODE, m.UNDO_WIPE_NODE]
    assert m.undo_steps(m.CUTOVER) == [m.UNDO_RESTORE_READS, m.UNDO_REMOVE_NODE, m.UNDO_WIPE_NODE]
    assert m.undo_steps(m.CLEANUP) == []  # past the point of no return: finished forward instead
