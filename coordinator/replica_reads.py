"""Asking a key's replicas for it: a quorum first, the others only when needed.

A QUORUM read needs answers from a quorum, so it asks just that many replicas
(rotating which, so every replica takes its share and is checked by reads in
turn). It asks the remaining ones when an asked replica fails, or has not
answered within the speculative delay: about the 99th percentile of recent
replica answers (as Cassandra's `speculative_retry = 99p`), so a slow replica
costs a read a little time instead of its deadline. What is returned, and how
it is made durable first, is read_path.py's business; this module only
collects answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pairdb.kernel.keyspace import StoredRecord
from pairdb.serving.alarms import Alarms
from pairdb.storage_node.client import StaleEpoch, StoragePool, describe_failure

Answer = StoredRecord | None

# Bounds of the speculative delay: never below what a loaded loopback round trip takes,
# never so long that a slow replica holds a read near its deadline.
MIN_SPECULATION = 0.002
MAX_SPECULATION = 0.25


class SpeculationDelay:
    """A running estimate of the 99th percentile of replica answer times (frugal streaming).

    Each answer slower than the estimate raises it by a factor; each faster one
    lowers it by that factor's 99th root. It settles where 1 % of answers are
    slower: the 99th percentile, from constant memory and a multiplication per answer.
    """

    QUANTILE = 0.99
    STEP = 1.05

    def __init__(self, initial: float = 0.02) -> None:
        self.seconds = initial
        self._down = self.STEP ** (-(1 - self.QUANTILE) / self.QUANTILE)

    def observe(self, seconds: float) -> None:
        estimate = self.seconds * (self.STEP if seconds > self.seconds else self._down)
        self.seconds = min(max(estimate, MIN_SPECULATION), MAX_SPECULATION)


class KeyRead:
    """The asks of one key's read, and the answers taken so far.

    `decision` resolves once the read has `need` answers, can no longer get them,
    or a replica refused it as routed by a stale epoch. Answers arriving later
    are left in `late` for the read path to check after its reply.
    """

    def __init__(
        self,
        pool: StoragePool,
        addresses: dict[str, str],
        epoch: int,
        tenant_id: str,
        key: str,
        replicas: Sequence[str],
        need: int,
        first: int,
        delay: SpeculationDelay,
        alarms: Alarms,
    ) -> None:
        self.tenant_id, self.key, self.need = tenant_id, key, need
        self.replicas = tuple(replicas[first:]) + tuple(replicas[:first])  # asked in this order
        self.answers: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}
        self.stale: StaleEpoch | None = None
        self.late: dict[asyncio.Future[Answer], str] = {}
        self._pool, self._addresses, self._epoch, self._delay = pool, addresses, epoch, delay
        self._asked = 0
        self._outstanding = 0
        self._loop = asyncio.get_running_loop()
        self.decision: asyncio.Future[None] = self._loop.create_future()
        for _ in range(min(need, len(self.replicas))):
            self._ask_next()
        if self._asked < len(self.replicas):
            alarms.at(self._loop.time() + delay.seconds, self._speculate)
        self._decide()

    def _ask_next(self) -> None:
        node = self.replicas[self._asked]
        self._asked += 1
        self._outstanding += 1
        client = self._pool.node(node, self._addresses[node])
        ask = client.submit_get(self.tenant_id, self.key, epoch=self._epoch)
        self.late[ask] = node
        started = self._loop.time()
        ask.add_done_callback(lambda done: self._answered(done, started))

    def _speculate(self) -> None:
        while not self.decision.done() and self._asked < len(self.replicas):
            self._ask_next()

    def _answered(self, ask: asyncio.Future[Answer], started: float) -> None:
        if self.decision.done():
            return  # a late answer: the read path drains it
        node = self.late.pop(ask)
        self._outstanding -= 1
        exc = None if ask.cancelled() else ask.exception()
        if ask.cancelled() or exc is not None:
            self.failed[node] = "cancelled" if exc is None else describe_failure(exc)
            if isinstance(exc, StaleEpoch):
                self.stale = exc
            elif self._asked < len(self.replicas):
                self._ask_next()  # a replica failed: ask one that was not asked yet
        else:
            self.answers[node] = ask.result()
            self._delay.observe(self._loop.time() - started)
        self._decide()

    def _decide(self) -> None:
        if self.decision.done():
            return
        possible = len(self.answers) + self._outstanding + len(self.replicas) - self._asked
        if self.stale is not None or len(self.answers) >= self.need or possible < self.need:
            self.decision.set_result(None)
