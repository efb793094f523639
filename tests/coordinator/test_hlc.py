"""Versions from the hybrid logical clock only ever go up, whatever the wall clock does."""

from __future__ import annotations

from coordinator.hlc import HybridLogicalClock
from pairdb.keyspace import Version


def test_versions_increase_within_one_millisecond() -> None:
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: 1000)
    versions = [clock.now() for _ in range(100)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 100
    assert all(v.wall_ms == 1000 for v in versions)


def test_a_wall_clock_that_steps_back_does_not_reorder_versions() -> None:
    wall = [5000]
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: wall[0])
    before = clock.now()
    wall[0] = 4000
    after = clock.now()
    assert after > before


def test_observing_a_newer_version_moves_the_clock_past_it() -> None:
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: 1000)
    remote = Version((9000 << 16) | 3, origin=2)
    clock.observe(remote)
    assert clock.now() > remote


def test_origin_breaks_ties() -> None:
    a = HybridLogicalClock(origin=1, wall_ms=lambda: 1000).now()
    b = HybridLogicalClock(origin=2, wall_ms=lambda: 1000).now()
    assert a.hlc == b.hlc and b > a
