"""Asking a key's replicas for it, and collecting their answers as they come.

A read asks as many replicas as its level needs (a quorum: two of three) and
is decided once they answered. The others are spares: one is asked at once
when an asked replica fails, and all are asked when the first asks are slower
than the p99 of recent answers (speculative retry, as Cassandra's). Asking
every replica would cost a third more replica calls per read for answers the
read does not need; a replica that missed writes catches up by its hints and
by anti-entropy repair, and by read repair whenever a read asks it.

Which replicas go first: during a ring change, those in both replica sets a
write goes to, so that a record both of them hold is already durable in each
set and the read returns it without writing it back; otherwise in turn, so
that every replica serves its share of reads. What is returned, and how it is
made durable first, is read_path.py's business; this module only collects
answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence

from pairdb.coordinator.answer_times import AnswerTimes
from pairdb.kernel.keyspace import StoredRecord
from pairdb.serving import metrics
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError, StoragePool, describe_failure

Answer = StoredRecord | None


def first_asks(replicas: Sequence[str], turn: int, preferred: Collection[str] = ()) -> tuple[str, ...]:
    """The replicas in the order they are asked: preferred ones first, each group rotated by turn."""
    n = len(replicas)
    at = turn % n if n else 0
    rotated = tuple(replicas[at:]) + tuple(replicas[:at])  # slices: every read of a batch does this
    if not preferred:
        return rotated
    return tuple(r for r in rotated if r in preferred) + tuple(r for r in rotated if r not in preferred)


class Countdown:
    """The reads of one batch still undecided; `done` resolves once none is.

    Each read tells it when decided, a plain call: gathering a batch's decisions
    as futures cost a scheduled callback per key.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self._left = 1  # held until every read of the batch is made: one may be decided as it is

    def add(self) -> None:
        self._left += 1

    def one_decided(self) -> None:
        self._left -= 1
        if not self._left:
            self.done.set_result(None)

    def all_made(self) -> None:
        """Every read of the batch is made."""
        self.one_decided()


class DirectGets:
    """The first asks of a batch's reads, sent to each node in direct GetMany calls.

    A batch is a coalesced unit already (as a batch write's sends are): its asks
    skip the nodes' coalescers and go in calls of up to `call_items` keys once every
    read is made (send()). An ask made after that, a spare, goes through the
    pool as a single read's does. Each ask is still a future of its own, so a read
    takes its answers the same way whichever path they came by.
    """

    def __init__(
        self, pool: StoragePool, epoch: int, call_items: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._pool, self._epoch, self._call_items, self._loop = pool, epoch, call_items, loop
        self._asks: dict[str, _NodeAsks] = {}
        self._sent = False

    def node(self, node_id: str, address: str) -> _NodeAsks | NodeClient:
        if self._sent:
            return self._pool.node(node_id, address)
        asks = self._asks.get(node_id)
        if asks is None:
            asks = self._asks[node_id] = _NodeAsks(self._pool.node(node_id, address), self._loop)
        return asks

    def send(self) -> list[asyncio.Future[None]]:
        """Send every ask made so far; the calls, each settling its asks' futures as it ends."""
        self._sent = True
        calls: list[asyncio.Future[None]] = []
        for asks in self._asks.values():
            for at in range(0, len(asks.keys), self._call_items):
                part = slice(at, at + self._call_items)
                calls.append(asyncio.ensure_future(asks.send(part, self._epoch)))
        return calls


class _NodeAsks:
    """One node's share of a batch's first asks."""

    def __init__(self, client: NodeClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client, self._loop = client, loop
        self.keys: list[tuple[str, str]] = []
        self._futures: list[asyncio.Future[Answer]] = []

    def submit_get(self, tenant_id: str, key: str, *, epoch: int) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = self._loop.create_future()
        self.keys.append((tenant_id, key))
        self._futures.append(future)
        return future

    async def send(self, part: slice, epoch: int) -> None:
        futures = self._futures[part]
        try:
            results = await self._client.get_many(self.keys[part], epoch=epoch)
        except BaseException as exc:  # the whole call failed (or was cancelled): each ask with it
            for future in futures:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, StorageError):
                future.set_exception(result)
            else:
                future.set_result(result)


class KeyRead:
    """The asks of one key's read, and the answers taken so far.

    `decision` resolves once the read has `need` answers, can no longer get them,
    or a replica refused it as routed by a stale epoch. Answers arriving later
    are left in `late` for the read path to check after its reply.
    """

    def __init__(
        self,
        pool: StoragePool | DirectGets,
        addresses: Mapping[str, str],
        epoch: int,
        tenant_id: str,
        key: str,
        replicas: Sequence[str],
        need: int,
        times: AnswerTimes | None,
        batch: Countdown | None = None,
    ) -> None:
        """replicas: in the order to ask them (first_asks); the first `need` are asked now.

        times: where each answer's time goes; None when the caller times the read as a whole.
        batch: the countdown of the batch this read is one of, told once it is decided.
        """
        self.tenant_id, self.key, self.need = tenant_id, key, need
        self.replicas = tuple(replicas)
        self.answers: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}
        self.stale: StaleEpoch | None = None
        self.late: dict[asyncio.Future[Answer], str] = {}
        # On Python 3.11 each get_running_loop() is a getpid() system call: a batch's reads share one.
        loop = batch.loop if batch is not None else asyncio.get_running_loop()
        self._batch = batch
        if batch is not None:
            batch.add()
        self.decision: asyncio.Future[None] = loop.create_future()
        self._pool, self._addresses, self._epoch, self._times = pool, addresses, epoch, times
        self._loop = loop
        self._asked_at = loop.time()
        self._spares = list(reversed(self.replicas[need:]))
        for node in self.replicas[:need]:
            self._ask(node)
        self._decide()

    @property
    def asked(self) -> int:
        return len(self.replicas) - len(self._spares)

    def speculate(self) -> None:
        """Ask every spare: the first asks are slow (called when the read's wait ran out)."""
        if self.decision.done() or not self._spares:
            return
        metrics.READ_SPARES.labels("slow").inc(len(self._spares))
        while self._spares:
            self._ask(self._spares.pop())

    def _ask(self, node: str) -> None:
        client = self._pool.node(node, self._addresses[node])
        ask = client.submit_get(self.tenant_id, self.key, epoch=self._epoch)
        self.late[ask] = node
        ask.add_done_callback(self._answered)

    def _answered(self, ask: asyncio.Future[Answer]) -> None:
        exc = None if ask.cancelled() else ask.exception()
        failed = exc is not None or ask.cancelled()
        if not failed and self._times is not None:
            self._times.add(self._loop.time() - self._asked_at)
        if self.decision.done():
            return  # a late answer: the read path drains it
        node = self.late.pop(ask)
        if failed:
            self.failed[node] = "cancelled" if exc is None else describe_failure(exc)
            if isinstance(exc, StaleEpoch):
                self.stale = exc
            elif self._spares:
                metrics.READ_SPARES.labels("failed").inc()
                self._ask(self._spares.pop())  # in place of the one that failed
        else:
            self.answers[node] = ask.result()
        self._decide()

    def _decide(self) -> None:
        if self.decision.done():
            return
        possible = len(self.replicas) - len(self.failed)
        if self.stale is not None or len(self.answers) >= self.need or possible < self.need:
            self.decision.set_result(None)
            if self._batch is not None:
                self._batch.one_decided()
