"""How fast a copy goes: the operator's throttle as a ceiling, and less while clients are busy.

A copy is background work: on a node that serves clients it competes with
them for CPU and for the disk. So it paces itself from what the nodes it talks
to say of their client traffic on every reply (storage_node/load.py): while no
node has client traffic to speak of, the copy runs at the ceiling (no limit
without a throttle); while clients are busy, it runs as TCP sends: from a
modest rate, growing by a quarter each adjustment while the nodes' scheduling
delay stays low (slow start), halving when it rises, and after the first
halving growing by a fixed step only (congestion avoidance); never under a
floor, so that it always finishes. The same idea as CockroachDB's elastic
admission control, which slows rebalancing when the Go scheduler's latency
rises. A copy whose clients leave is back at the ceiling at the next
adjustment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import structlog
from temporalio import activity

from pairdb.storage_node.client import NodeClient

log = structlog.get_logger()

# Client ops per second on a node under which the copy does not yield to them.
QUIET_CLIENT_OPS = 50.0
# A node whose event loop runs this late on average has requests waiting for CPU: the copy slows
# down. (CockroachDB's elastic work yields at 1 ms of scheduler latency too.)
BUSY_DELAY_MS = 1.0
# The copy never goes slower than this (keys/s), however busy the clients: it must end.
FLOOR_KEYS_PER_SECOND = 500.0
# The rate a copy starts yielding from when it finds the clients busy (it may have gone far faster).
YIELD_START_KEYS_PER_SECOND = 1000.0
# How often the rate follows the nodes' reports, and how old a report may be to count. The
# first adjustment comes sooner: a copy step may be over in well under a second.
ADJUST_SECONDS = 0.25
FIRST_ADJUST_SECONDS = 0.1
FRESH_SECONDS = 2.0
# Records per batch while the copy yields: a client write never waits long behind a copy's commit.
YIELDING_BATCH = 200
# Ranges copied (or verified) at once while the copy yields: each keeps a scan or a digest going on
# its nodes, work that holds Python's GIL between records while the nodes' loops serve clients.
YIELDING_RANGES = 2
# While clients are busy but the nodes keep up, each adjustment raises the rate by a quarter until
# it first had to halve, by this after.
INCREASE_KEYS_PER_SECOND = 250.0


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


@dataclass(frozen=True)
class PaceState:
    """Where a pace got to: a copy is many steps, and each goes on from where the last one was."""

    rate: float
    yielding: bool
    halved: bool


class Pace:
    """The copy's rate: at most ceiling keys/s (0: no ceiling), lowered while the nodes' clients are busy."""

    def __init__(
        self,
        ceiling: int,
        nodes: Sequence[NodeClient],
        *,
        adaptive: bool = True,
        start: PaceState | None = None,
        parallel: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """start: the state a previous step of the same copy ended in; parallel: ranges at once, at most."""
        self.ceiling = float(ceiling)
        self._parallel = parallel
        self._active = 0  # ranges that hold a turn
        self._turns = asyncio.Condition()
        self._nodes = nodes
        self._adaptive = adaptive
        self._clock = clock
        self._yielding = start is not None and start.yielding
        # Once the rate had to halve, it grows by a fixed step only.
        self._halved = start is not None and start.halved
        rate = start.rate if start is not None and start.yielding else self.ceiling
        self._bucket = Throttle(min(rate, self.ceiling) if self.ceiling else rate)
        self._adjusted = clock()
        self._wait = FIRST_ADJUST_SECONDS

    @property
    def rate(self) -> float:
        """The rate in force, keys/s; 0 means none."""
        return self._bucket.rate

    @property
    def state(self) -> PaceState:
        return PaceState(self.rate, self._yielding, self._halved)

    def batch(self, n: int) -> int:
        """How many records the next batch may hold, n at most: fewer while the copy yields."""
        return min(n, YIELDING_BATCH) if self._yielding else n

    def turn_keys(self, n: int) -> int:
        """How many keys one turn may take on, n at most: about a second's worth at the rate in force.

        A turn checkpoints what it did when it ends: a throttled or yielding copy
        whose turns took many seconds each would show the operator no progress
        for that long, and a retried step would do all of it again.
        """
        n = self.batch(n)
        if self.rate > 0:
            n = min(n, max(1, int(self.rate / self._turns_at_once())))
        return n

    def _turns_at_once(self) -> int:
        return min(self._parallel, YIELDING_RANGES) if self._yielding else self._parallel

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A range's turn: parallel ranges at once, YIELDING_RANGES while the copy yields."""
        async with self._turns:
            await self._turns.wait_for(lambda: self._active < self._turns_at_once())
            self._active += 1
        try:
            yield
        finally:
            async with self._turns:
                self._active -= 1
                self._turns.notify_all()

    async def take(self, n: int) -> None:
        """Wait until n more keys may be copied."""
        if self._adaptive:
            self.follow(self._clock())
        await self._bucket.take(n)

    def follow(self, now: float) -> None:
        """Set the rate by the nodes' reports (at most every ADJUST_SECONDS, the first time sooner)."""
        if now - self._adjusted < self._wait:
            return
        loads = [n.load for n in self._nodes if n.load is not None and now - n.load.at < FRESH_SECONDS]
        if not loads:
            return  # nothing heard yet: keep the rate
        busy = [load for load in loads if load.client_ops_per_second >= QUIET_CLIENT_OPS]
        self._adjusted, self._wait = now, ADJUST_SECONDS
        if not busy:
            self._bucket.set_rate(self.ceiling)  # nobody to yield to
            if self._yielding:
                self._yielding = False
                log.info("No client traffic on the copy's nodes; copying at full pace", ceiling=self.ceiling)
            return
        delay = max(load.scheduling_delay_ms for load in busy)
        if not self._yielding:
            self._yielding = True
            log.info(
                "Clients are busy on the copy's nodes; the copy yields to them",
                client_ops_per_second=round(max(load.client_ops_per_second for load in busy)),
                scheduling_delay_ms=round(delay, 1),
            )
            # From a modest rate, whatever it went at alone (an unlimited copy has no rate at all).
            current = min(self._bucket.rate or YIELD_START_KEYS_PER_SECOND, YIELD_START_KEYS_PER_SECOND)
        else:
            current = self._bucket.rate
        if delay > BUSY_DELAY_MS:
            rate = max(FLOOR_KEYS_PER_SECOND, current / 2)
            self._halved = True
        elif self._halved:
            rate = current + INCREASE_KEYS_PER_SECOND
        else:
            rate = current * 1.25
        if self.ceiling:
            rate = min(rate, self.ceiling)
        self._bucket.set_rate(rate)
