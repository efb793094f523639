"""How fast a copy goes: the operator's throttle as a ceiling, and less while clients are busy.

A copy is background work: on a node that serves clients it competes with
them for CPU and for the disk. So it paces itself from what the nodes it talks
to say of their client traffic on every reply (storage_node/load.py): while no
node has client traffic to speak of, the copy runs at the ceiling (no limit
without a throttle); while clients are busy, its rate follows the nodes'
scheduling delay, additive increase and multiplicative decrease as TCP does,
never under a floor so that it always finishes. The same idea as CockroachDB's
elastic admission control, which slows rebalancing when the Go scheduler's
latency rises. (The increase is multiplicative too, so a copy that yielded is
back at speed within seconds of the clients going quiet.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog
from temporalio import activity

from pairdb.storage_node.client import NodeClient

log = structlog.get_logger()

# Client ops per second on a node under which the copy does not yield to them.
QUIET_CLIENT_OPS = 50.0
# A node whose event loop runs this late has requests waiting for CPU: the copy slows down.
BUSY_DELAY_MS = 5.0
# The copy never goes slower than this (keys/s), however busy the clients: it must end.
FLOOR_KEYS_PER_SECOND = 500.0
# How often the rate follows the nodes' reports, and how old a report may be to count. The
# first adjustment comes sooner: a copy step may be over in well under a second.
ADJUST_SECONDS = 0.25
FIRST_ADJUST_SECONDS = 0.1
FRESH_SECONDS = 2.0
# Records per batch while the copy yields: a client write never waits long behind a copy's commit.
YIELDING_BATCH = 200
# While clients are busy but the nodes keep up, each adjustment raises the rate by a quarter and this.
INCREASE_KEYS_PER_SECOND = 500.0


class Throttle:
    """A token bucket in keys per second; 0 means no limit.

    It starts empty and holds at most one second of tokens: a new copy step
    (each chunk of ranges is one) gets no burst, so the operator's rate holds
    over the whole migration, not per chunk.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._allowance = 0.0
        self._last = time.monotonic()

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate
        self._allowance = min(self._allowance, rate)

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate > 0:
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now

    async def take(self, n: int) -> None:
        self._refill()
        if self.rate <= 0:
            return
        self._allowance -= n
        wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        while wait > 0:
            # Sleep in slices so a slow throttle never misses a heartbeat.
            step = min(wait, 1.0)
            await asyncio.sleep(step)
            activity.heartbeat()
            wait -= step


class Pace:
    """The copy's rate: at most ceiling keys/s (0: no ceiling), lowered while the nodes' clients are busy."""

    def __init__(
        self,
        ceiling: int,
        nodes: Sequence[NodeClient],
        *,
        adaptive: bool = True,
        start: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """start: the rate a previous step of the same copy ended at (a copy is many steps)."""
        self.ceiling = float(ceiling)
        self._nodes = nodes
        self._adaptive = adaptive
        self._clock = clock
        self._bucket = Throttle(self.ceiling if start is None else start)
        self._adjusted = clock()
        self._wait = FIRST_ADJUST_SECONDS
        self._yielding = False
        self._taken = 0  # keys since the last adjustment: the rate the copy really went at

    @property
    def rate(self) -> float:
        """The rate in force, keys/s; 0 means none."""
        return self._bucket.rate

    def batch(self, n: int) -> int:
        """How many records the next batch may hold, n at most: fewer while the copy yields."""
        return min(n, YIELDING_BATCH) if self._yielding else n

    async def take(self, n: int) -> None:
        """Wait until n more keys may be copied."""
        if self._adaptive:
            self.follow(self._clock())
        await self._bucket.take(n)
        self._taken += n

    def follow(self, now: float) -> None:
        """Set the rate by the nodes' reports (at most every ADJUST_SECONDS, the first time sooner)."""
        if now - self._adjusted < self._wait:
            return
        loads = [n.load for n in self._nodes if n.load is not None and now - n.load.at < FRESH_SECONDS]
        if not loads:
            return  # nothing heard yet: keep the rate
        busy = [load for load in loads if load.client_ops_per_second >= QUIET_CLIENT_OPS]
        went = self._taken / (now - self._adjusted)
        self._adjusted, self._taken, self._wait = now, 0, ADJUST_SECONDS
        if not busy:
            self._bucket.set_rate(self.ceiling)  # nobody to yield to
            if self._yielding:
                self._yielding = False
                log.info("No client traffic on the copy's nodes; copying at full pace", ceiling=self.ceiling)
            return
        if not self._yielding:
            self._yielding = True
            log.info(
                "Clients are busy on the copy's nodes; the copy yields to them",
                client_ops_per_second=round(max(load.client_ops_per_second for load in busy)),
                scheduling_delay_ms=round(max(load.scheduling_delay_ms for load in busy), 1),
            )
        # Without a rate in force, start from the one the copy really went at.
        current = self._bucket.rate or max(went, FLOOR_KEYS_PER_SECOND)
        if max(load.scheduling_delay_ms for load in busy) > BUSY_DELAY_MS:
            rate = max(FLOOR_KEYS_PER_SECOND, current / 2)
        else:
            rate = current * 1.25 + INCREASE_KEYS_PER_SECOND
        if self.ceiling:
            rate = min(rate, self.ceiling)
        self._bucket.set_rate(rate)
