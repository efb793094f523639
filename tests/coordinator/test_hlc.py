"""Versions from the hybrid logical clock only ever go up, whatever the wall clock does."""

from __future__ import annotations

import pytest

from pairdb.coordinator.hlc import ClockCeiling, HybridLogicalClock
from pairdb.kernel.keyspace import Version


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
    remote = Version((1300 << 16) | 3, origin=2)  # 300 ms ahead: within the maximum offset
    clock.observe(remote)
    assert clock.now() > remote


def test_origin_breaks_ties() -> None:
    a = HybridLogicalClock(origin=1, wall_ms=lambda: 1000).now()
    b = HybridLogicalClock(origin=2, wall_ms=lambda: 1000).now()
    assert a.hlc == b.hlc and b > a


def test_a_version_beyond_the_maximum_offset_is_not_observed() -> None:
    """A forged hlc=2^64-1 must neither pin the clock nor overflow the next version."""
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: 1000, max_offset_ms=500)
    assert not clock.observe(Version((1 << 64) - 1, 2))
    assert clock.now().hlc < 1 << 63
    assert clock.observe(Version(1400 << 16, 2))  # within the offset: fine
    assert clock.now() > Version(1400 << 16, 2)


def test_no_version_passes_the_ceiling() -> None:
    wall = [1000]
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: wall[0])
    clock.ceiling_ms = 1000
    clock.now()
    wall[0] = 1001
    with pytest.raises(ClockCeiling):
        clock.now()


def test_a_clock_started_after_a_ceiling_issues_versions_above_it() -> None:
    clock = HybridLogicalClock(origin=1, wall_ms=lambda: 900)
    clock.start_after(1000)
    assert clock.now().wall_ms >= 1000
