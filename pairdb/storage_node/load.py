"""How busy clients keep this node, told to the background work it serves.

A copy must yield to client traffic (as CockroachDB's admission control makes
rebalancing "elastic" work). The node knows two things the copy cannot see:
how many client reads and writes it serves, and how late its event loop runs
(the scheduling delay, on average: above a few milliseconds, requests wait for
CPU, be it taken by this process or by the machine's others; an average, so
that one pause of the collector does not read as a busy node). Both ride on every reply to
a copy's ScanRange and ApplyBatch (proto/storage.proto, NodeLoad).
"""

from __future__ import annotations

import asyncio
import time

from pairdb.proto import storage_pb2
from pairdb.serving.loops import stop_task

# The meter's window: client ops are counted, and the delay averaged, per window,
# and a report is of the last full window (or the current one, when it is worse). Short, so
# a copy learns within a second that the clients left.
WINDOW_SECONDS = 0.5
# How often the delay sampler wakes: often enough to see a busy loop, rare enough to cost nothing.
TICK_SECONDS = 0.02


class LoadMeter:
    def __init__(self) -> None:
        self._window_start = time.monotonic()
        self._ops = self._last_ops = 0
        self._delay_sum, self._delays = 0.0, 0  # this window's samples
        self._last_delay = 0.0
        self._last_span = WINDOW_SECONDS
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="load-meter")

    async def stop(self) -> None:
        await stop_task(self._task)

    def served(self, items: int) -> None:
        """Count client reads or writes just served."""
        self._roll()
        self._ops += items

    def report(self) -> storage_pb2.NodeLoad:
        self._roll()
        return storage_pb2.NodeLoad(
            client_ops_per_second=max(self._last_ops / self._last_span, self._ops / WINDOW_SECONDS),
            scheduling_delay_ms=max(self._last_delay, self._mean_delay()) * 1e3,
        )

    def _roll(self) -> None:
        now = time.monotonic()
        span = now - self._window_start
        if span < WINDOW_SECONDS:
            return
        if span >= 2 * WINDOW_SECONDS:
            # A whole window passed unseen: nothing was served in it.
            self._last_ops, self._last_delay, self._last_span = 0, 0.0, WINDOW_SECONDS
        else:
            self._last_ops, self._last_delay, self._last_span = self._ops, self._mean_delay(), span
        self._ops, self._delay_sum, self._delays, self._window_start = 0, 0.0, 0, now

    def _mean_delay(self) -> float:
        return self._delay_sum / self._delays if self._delays else 0.0

    async def _sample(self) -> None:
        while True:
            due = time.monotonic() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            late = max(time.monotonic() - due, 0.0)
            self._roll()
            self._delay_sum += late
            self._delays += 1
