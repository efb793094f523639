"""How much of the time this process's event loop has work: running, or ready and waiting for a CPU.

Read from the kernel's statistics of the loop's own thread
(/proc/thread-self/schedstat: nanoseconds run, nanoseconds waited on a run
queue). A loop with work nearly all the time bounds the process's throughput,
and saving CPU per request (a coordinator's linger, storage_node/coalescing.py)
then pays; one with work half the time has CPU to spare, and the same saving
would only add latency. Measured on a 2-core machine running a whole cluster,
the coordinator's loop had work 50 % of the time at 650 client ops/s and
92 % saturated. Its event loop's timer delay could not tell these apart (0.15
and 0.5 ms): a busy loop still runs its timers nearly on time.

Where the kernel does not say (not Linux, or schedstat off), nothing is known.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pairdb.serving.loops import stop_task

SCHEDSTAT = Path("/proc/thread-self/schedstat")
# How often the share is read: the window it is the share of.
WINDOW_SECONDS = 0.5
# A loop with work this share of the time or more is busy: its process is short of CPU.
BUSY_SHARE = 0.8


def _read(path: Path) -> int | None:
    """Nanoseconds the calling thread ran or waited to run; None where the kernel does not say."""
    try:
        run, wait, _ = path.read_text().split()
        return int(run) + int(wait)
    except (OSError, ValueError):
        return None


class LoopDemand:
    def __init__(self, path: Path = SCHEDSTAT) -> None:
        self._path = path
        self.share = 0.0  # of the last window
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return _read(self._path) is not None

    def busy(self) -> bool:
        return self.share >= BUSY_SHARE

    def start(self) -> None:
        """Sample from the loop's own thread (the file tells of the thread reading it)."""
        self._task = asyncio.create_task(self._sample(), name="loop-demand")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _sample(self) -> None:
        last, at = _read(self._path), time.monotonic()
        while last is not None:
            await asyncio.sleep(WINDOW_SECONDS)
            # A read of a /proc file is a few microseconds and never waits for a disk.
            now_ns, now = _read(self._path), time.monotonic()
            if now_ns is None:
                return
            self.share = (now_ns - last) / 1e9 / max(now - at, 1e-9)
            last, at = now_ns, now
