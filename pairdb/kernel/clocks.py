"""The clocks pairdb reads: wall time for versions, boot time for leases.

Versions follow wall time (coordinator/hlc.py), so clocks may differ between
processes by up to a configured maximum offset (`--max-clock-offset-ms`,
CockroachDB's `--max-offset`); ordering must survive that. Tests skew a
process's wall clock on purpose with the PAIRDB_CLOCK_OFFSET_MS environment
variable.

Leases are measured on CLOCK_BOOTTIME: unlike CLOCK_MONOTONIC it keeps counting
while the machine is suspended, so a coordinator frozen with its VM sees its
lease lapse when it wakes up instead of serving on a lease that ran out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLOCK_OFFSET_ENV = "PAIRDB_CLOCK_OFFSET_MS"
# The largest offset between any two clocks of a cluster that pairdb tolerates.
DEFAULT_MAX_OFFSET_MS = 500


def boottime() -> float:
    """Seconds on a clock that never goes back and counts through a suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True, slots=True)
class WallClock:
    """Wall-clock milliseconds, shifted by offset_ms (non-zero only in tests)."""

    offset_ms: int = 0

    @classmethod
    def from_env(cls) -> WallClock:
        raw = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
        try:
            return cls(int(raw) if raw else 0)
        except ValueError:
            raise SystemExit(
                f"{CLOCK_OFFSET_ENV} must be a whole number of milliseconds, got {raw!r}"
            ) from None

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms
