"""Dropping the ranges old replicas gave up: touching ranges are deleted as one (activities/cleanup.py)."""

from __future__ import annotations

import random

from pairdb.activities.cleanup import adjoined
from pairdb.kernel.keyspace import TOKEN_MAX, in_range


def covers(ranges: list[tuple[int, int]], token: int) -> bool:
    return any(in_range(token, start, end) for start, end in ranges)


def test_touching_ranges_join_and_the_others_stay_apart() -> None:
    assert adjoined([(30, 40), (10, 20), (20, 30), (50, 60)]) == [(10, 40), (50, 60)]


def test_a_range_that_wraps_joins_its_neighbour_but_never_closes_the_circle() -> None:
    assert adjoined([(TOKEN_MAX - 10, 5), (TOKEN_MAX - 20, TOKEN_MAX - 10)]) == [(TOKEN_MAX - 20, 5)]
    # The whole circle in two halves stays two deletes: (t, t] would mean the whole ring.
    half = TOKEN_MAX // 2
    assert len(adjoined([(0, half), (half, 0)])) == 2


def test_joined_ranges_cover_exactly_the_tokens_the_ranges_did() -> None:
    rng = random.Random(7)
    cuts = sorted({rng.randrange(TOKEN_MAX) for _ in range(40)})
    ring = list(zip(cuts, cuts[1:] + cuts[:1], strict=True))
    ranges = rng.sample(ring, 25)
    joined = adjoined(ranges)
    assert len(joined) < len(ranges)
    for token in [*cuts, *(c + 1 for c in cuts), *(rng.randrange(TOKEN_MAX) for _ in range(2000))]:
        assert covers(joined, token) == covers(ranges, token)
