"""A migration's phase moves only along its graph, whoever asks: a late step is refused, not applied."""

from __future__ import annotations

import pytest

from pairdb.coordinator.registry import StepRefused, check_step
from pairdb.kernel import migration as m
from pairdb.kernel.migration import Phase, Status, Undo


def row(phase: str, status: str = Status.IN_PROGRESS) -> dict[str, str]:
    return {"migration_id": "mig", "phase": phase, "status": status, "error": ""}


@pytest.mark.parametrize(
    ("current", "step"),
    [
        (Phase.QUEUED, Phase.DUAL_WRITE),
        (Phase.DUAL_WRITE, Phase.DATA_COPY),
        (Phase.DATA_COPY, Phase.CUTOVER),
        (Phase.CUTOVER, Phase.CLEANUP),
        (Phase.CUTOVER, Phase.CUTOVER),  # a retried step finds its phase set
        (Phase.CUTOVER, Phase.ROLLING_BACK),
        (Phase.DATA_COPY, Phase.ROLLING_BACK),  # the cutover step never committed: reads were on old anyway
        (Phase.ROLLING_BACK, Phase.CANCELLING),
        (Phase.DUAL_WRITE, Phase.CANCELLING),
    ],
)
def test_the_steps_of_the_graph_are_allowed(current: Phase, step: Phase) -> None:
    check_step(row(current), step)


@pytest.mark.parametrize(
    ("current", "step"),
    [
        (Phase.CANCELLING, Phase.DUAL_WRITE),  # a join that outlived its cancel must not put the node back
        (Phase.ROLLING_BACK, Phase.CLEANUP),  # nor a cleanup step that outlived its rollback
        (Phase.CLEANUP, Phase.ROLLING_BACK),  # past the point of no return nothing goes back
        (Phase.CLEANUP, Phase.CANCELLING),
        (Phase.CANCELLING, Phase.ROLLING_BACK),
        (Phase.DATA_COPY, Phase.CLEANUP),  # no phase is skipped
        (Phase.CLEANUP, Phase.CUTOVER),  # a reset workflow replaying an earlier step
    ],
)
def test_a_step_off_the_graph_is_refused(current: Phase, step: Phase) -> None:
    with pytest.raises(StepRefused):
        check_step(row(current), step)


def test_nothing_moves_once_the_migration_ended() -> None:
    for step in (Phase.DUAL_WRITE, Phase.CANCELLING, Phase.CLEANUP):
        with pytest.raises(StepRefused, match="has ended"):
            check_step(row(Phase.CANCELLING, Status.FAILED), step)


def test_undo_steps_take_each_phase_back_to_the_old_ring() -> None:
    assert m.undo_steps(Phase.QUEUED) == []
    assert m.undo_steps(Phase.DATA_COPY) == [Undo.REMOVE_NODE, Undo.WIPE_NODE]
    assert m.undo_steps(Phase.CUTOVER) == [Undo.RESTORE_READS, Undo.REMOVE_NODE, Undo.WIPE_NODE]
    assert m.undo_steps(Phase.CLEANUP) == []  # past the point of no return: finished forward instead
