"""Hybrid logical clock: versions that follow wall time but never go backwards.

A version's hlc is wall milliseconds << 16 | a logical counter. The counter
orders writes within one millisecond, and absorbs a wall clock that steps back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pairdb.keyspace import Version

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class HybridLogicalClock:
    def __init__(self, origin: int, wall_ms: Callable[[], int] | None = None) -> None:
        self.origin = origin
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = 0

    def now(self) -> Version:
        """A version newer than every version this clock issued or observed."""
        physical = self._wall_ms() << LOGICAL_BITS
        # When wall time has not moved past the last hlc, the logical counter
        # advances (and carries into the millisecond field when it overflows).
        self._last = physical if physical > self._last else self._last + 1
        return Version(self._last, self.origin)

    def observe(self, version: Version) -> None:
        """Move past a version seen elsewhere, so our next write is newer than it."""
        if version.hlc > self._last:
            self._last = version.hlc
