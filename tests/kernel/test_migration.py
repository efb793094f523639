"""How a copy plan is cut into steps (kernel/migration.py, chunked)."""

from __future__ import annotations

from pairdb.kernel.migration import CHUNK_KEYS, CHUNK_MAX_RANGES, chunked


def test_an_empty_copy_is_one_step_of_every_range() -> None:
    assert chunked([0] * 200) == [list(range(200))]


def test_steps_close_once_they_hold_chunk_keys() -> None:
    third = CHUNK_KEYS // 3 + 1  # three of them reach CHUNK_KEYS
    assert chunked([third] * 7) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunked([CHUNK_KEYS * 2, 1, 1]) == [[0], [1, 2]]


def test_a_step_holds_at_most_chunk_max_ranges() -> None:
    steps = chunked([0] * (CHUNK_MAX_RANGES * 2 + 1))
    assert [len(s) for s in steps] == [CHUNK_MAX_RANGES, CHUNK_MAX_RANGES, 1]


def test_every_range_is_in_exactly_one_step_in_order() -> None:
    estimates = [(i * 7919) % 5000 for i in range(1000)]
    assert [i for step in chunked(estimates) for i in step] == list(range(1000))
    assert chunked([]) == []
