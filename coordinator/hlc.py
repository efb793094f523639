"""Hybrid logical clock: versions that follow wall time but never go backwards.

A version's hlc is wall milliseconds << 16 | a logical counter. The counter
orders writes within one millisecond, and absorbs a wall clock that steps back.

Two bounds keep it honest. It ignores versions more than the cluster's
maximum clock offset ahead of its own wall clock (a forged or runaway version
must not drag every later version with it, nor overflow 64 bits). And it
never issues a version past its ceiling, the wall time its coordinator has
persisted with its lease, so a restarted coordinator, which waits for its
clock to pass that ceiling, never issues a version it issued before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS
from pairdb.kernel.keyspace import Version

log = structlog.get_logger()

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class ClockCeiling(Exception):
    """The clock reached the ceiling persisted with the lease; the next renewal raises it."""


class HybridLogicalClock:
    def __init__(
        self,
        origin: int,
        wall_ms: Callable[[], int] | None = None,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
    ) -> None:
        self.origin = origin
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.max_offset_ms = max_offset_ms
        # Wall milliseconds no version may pass; None: no ceiling (tools and tests).
        self.ceiling_ms: int | None = None
        self._last = 0

    def start_after(self, wall_ms: int) -> None:
        """Issue only versions above wall_ms from now on (a previous incarnation's ceiling)."""
        self._last = max(self._last, wall_ms << LOGICAL_BITS)

    @property
    def high_water_ms(self) -> int:
        """The newest wall time this clock has reached, issued, observed or read."""
        return max(self._last >> LOGICAL_BITS, self.wall_ms())

    def now(self) -> Version:
        """A version newer than every version this clock issued or observed."""
        physical = self.wall_ms() << LOGICAL_BITS
        # When wall time has not moved past the last hlc, the logical counter
        # advances (and carries into the millisecond field when it overflows).
        candidate = physical if physical > self._last else self._last + 1
        if self.ceiling_ms is not None and candidate >> LOGICAL_BITS > self.ceiling_ms:
            raise ClockCeiling(
                f"the clock reached its persisted ceiling ({self.ceiling_ms} ms); "
                "it moves on at the next lease renewal"
            )
        self._last = candidate
        return Version(candidate, self.origin)

    def observe(self, version: Version) -> bool:
        """Move past a version seen elsewhere, so our next write is newer than it.

        Returns False, ignoring it, when the version is further ahead of our
        wall clock than the maximum offset allows.
        """
        if version.hlc <= self._last:
            return True
        ahead = (version.hlc >> LOGICAL_BITS) - self.wall_ms()
        if ahead > self.max_offset_ms:
            log.warning(
                "Ignoring a version ahead of the maximum clock offset",
                version=str(version),
                ahead_ms=ahead,
                max_offset_ms=self.max_offset_ms,
            )
            return False
        self._last = version.hlc
        return True
