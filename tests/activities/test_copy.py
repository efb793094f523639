"""How the copy groups small ranges: one call per node for many ranges, never a big range with others."""

from __future__ import annotations

from pairdb.activities.copy import GROUP_RANGES, _groups
from pairdb.coordinator.metadata import PlannedRange


def planned(index: int, keys: int) -> PlannedRange:
    return PlannedRange(index, index, index + 1, ["node-1"], keys, False, False, 0, "node-4")


def test_small_ranges_go_together_up_to_the_keys_of_a_batch() -> None:
    todo = [planned(i, 30) for i in range(10)]
    groups = _groups(todo, 100)
    assert [[p.index for p in g] for g in groups] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_range_bigger_than_a_batch_goes_alone() -> None:
    todo = [planned(0, 10), planned(1, 5000), planned(2, 10), planned(3, 0)]
    assert [[p.index for p in g] for g in _groups(todo, 100)] == [[0], [1], [2, 3]]


def test_a_group_holds_at_most_group_ranges_empty_ranges() -> None:
    todo = [planned(i, 0) for i in range(GROUP_RANGES * 2 + 1)]
    assert [len(g) for g in _groups(todo, 100)] == [GROUP_RANGES, GROUP_RANGES, 1]
    assert _groups([], 100) == []
