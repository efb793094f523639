"""The read path: ask the replicas, return the newest record, but only once it is durable.

A read asks enough replicas of the read set to meet its level, more only when
one fails or is slow (replica_reads.py), and takes the newest record among the
answers.
Before returning it, it makes that record held at the read's level in every
set the current phase writes to (blocking read repair, as the write-back
phase of ABD): otherwise a value a client has seen
could vanish from the next read, after a replica failure, a cutover or a
rollback moved reads to other replicas. With it, QUORUM reads and writes
behave as one linearizable register per key.

Answers arriving after the reply are checked in the background: stale
replicas are repaired, and a late answer newer than what was returned (a write
in flight) is spread to the replicas that answered first.

A batch (get_many) reads many keys under one pinned view, each decided by the
same rules; a key refused by a fence is read again the single-key way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from pairdb.coordinator.answer_times import AnswerTimes
from pairdb.coordinator.batch import one_by_one
from pairdb.coordinator.hlc import HybridLogicalClock
from pairdb.coordinator.quorum import Consistency, ReplicaPlan, required
from pairdb.coordinator.replica_reads import Countdown, DirectGets, KeyRead, first_asks
from pairdb.coordinator.replication import DIRECT_CALLS_FROM, Replicator
from pairdb.coordinator.routing import Route, StaleView, route, route_many
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.coordinator.write_path import ROUTE_ATTEMPTS
from pairdb.kernel.errors import PairdbError, Unavailable
from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.kernel.sabotage import REPAIR_READ_SET_ONLY
from pairdb.serving.alarms import Alarms
from pairdb.storage_node.client import StaleEpoch, StoragePool, describe_failure
from pairdb.storage_node.coalescing import COALESCED_CALL_ITEMS

log = structlog.get_logger()

_Answer = StoredRecord | None

# Batches a batch read's wait is the p99 of, and how often it is worked out again.
BATCH_WINDOW = 128
BATCH_EVERY = 4


@dataclass(frozen=True, slots=True)
class ReadResult:
    found: bool
    value: bytes
    version: Version | None


def _newest(answers: list[_Answer]) -> _Answer:
    present = [a for a in answers if a is not None]
    return max(present, key=lambda r: r.order) if present else None


def _is_stale(answer: _Answer, newest: StoredRecord) -> bool:
    return answer is None or answer.order < newest.order


def _speculate(reads: list[KeyRead]) -> None:
    for read in reads:
        read.speculate()


class ReadPath:
    def __init__(
        self,
        cache: TopologyCache,
        pool: StoragePool,
        replicator: Replicator,
        clock: HybridLogicalClock,
        sabotage: frozenset[str] = frozenset(),
    ) -> None:
        self._cache = cache
        self._pool = pool
        self._replicator = replicator
        self._clock = clock
        self._sabotage = sabotage
        # Whose turn it is to be asked first: reads spread over a key's replicas.
        self._turn = 0
        # When to stop waiting for the first asks: the p99 of how long single reads' answers took
        # lately, and of how long whole batches took. A batch's answers come in calls of hundreds of
        # keys, spread over the batch: timed one by one, a window held only the last batch, its
        # p99 about that batch's slowest answer, and about every other batch outlasted it and asked
        # spares for its undecided keys (measured: a fifth of all keys read, a quarter of the
        # coordinator's batch read rate, more work the busier it was). A batch is one sample.
        self._single_times = AnswerTimes(0.05, floor=0.005, ceiling=pool.timeout / 2)
        self._batch_times = AnswerTimes(
            0.5, floor=0.005, ceiling=pool.timeout / 2, window=BATCH_WINDOW, every=BATCH_EVERY
        )
        self._speculation = Alarms()

    async def get(self, tenant_id: str, key: str, level: Consistency) -> ReadResult:
        fence = 0
        for _ in range(ROUTE_ATTEMPTS):
            with self._cache.pin() as topology:
                try:
                    r = await route(self._cache, topology, tenant_id, key, level, write=False)
                    result = await self._get(r, tenant_id, key)
                    self._cache.check_lease()  # never answer by a view a barrier may have left behind
                    return result
                except StaleView:
                    fence = 0
                except StaleEpoch as exc:
                    fence = exc.fence
            await self._cache.catch_up(fence)
        raise Unavailable(f"the ring changed {ROUTE_ATTEMPTS} times during this read; retry it")

    async def get_many(
        self, keys: Sequence[tuple[str, str]], level: Consistency
    ) -> list[ReadResult | PairdbError]:
        """Each (tenant_id, key)'s result or error, in order, under one pinned view.

        A key whose answers cannot settle it in bulk (a replica fenced at a newer
        epoch, a view older than its tenant) is read again the single-key way.
        """
        results: list[ReadResult | PairdbError | None] = [None] * len(keys)
        single: list[int] = []
        with self._cache.pin() as topology:
            reads: list[tuple[int, Route, KeyRead]] = []
            loop = asyncio.get_running_loop()
            started = loop.time()
            batch = Countdown(loop)
            # Enough keys to be a batch of their own: first asks go in direct calls, as a batch write's,
            # of as many keys as a node's coalescer puts in one (its reply grows with the values read).
            direct = (
                DirectGets(self._pool, topology.epoch, COALESCED_CALL_ITEMS, loop)
                if len(keys) >= DIRECT_CALLS_FROM
                else None
            )
            routes = await route_many(self._cache, topology, keys, level, write=False)
            for i, ((tenant_id, key), r) in enumerate(zip(keys, routes, strict=True)):
                if isinstance(r, StaleView):
                    single.append(i)
                    continue
                if isinstance(r, PairdbError):
                    results[i] = r
                    continue
                reads.append((i, r, self._ask(r, tenant_id, key, None, batch, direct)))
            calls = direct.send() if direct is not None else []
            batch.all_made()
            asks = [read for _, _, read in reads]
            self._speculation.at(started + self._batch_times.delay, _speculate, asks)
            try:
                await batch.done
            finally:
                for call in calls:
                    if not call.done():
                        self._cache.track(topology.epoch, call)  # decided by spares: it still runs
            if asks:
                self._batch_times.add(loop.time() - started)
                asks.clear()  # the alarm, when it rings, has no decided read of it to go through
            for i, r, read in reads:
                try:
                    results[i] = await self._conclude(r, read)
                except StaleEpoch:
                    single.append(i)
                except PairdbError as exc:
                    results[i] = exc
            self._cache.check_lease()
        if single:
            await one_by_one(single, lambda i: self.get(*keys[i], level), results)
        return [r for r in results if r is not None]

    def _ask(
        self,
        r: Route,
        tenant_id: str,
        key: str,
        times: AnswerTimes | None,
        batch: Countdown | None = None,
        direct: DirectGets | None = None,
    ) -> KeyRead:
        replicas, topology = r.plan.old, r.topology
        self._turn += 1
        preferred: frozenset[str] = frozenset()
        if r.writes.new is not None:
            # Replicas in both sets a write goes to first: what they both hold needs no write-back.
            preferred = frozenset(r.writes.old) & frozenset(r.writes.new)
        return KeyRead(
            direct or self._pool,
            topology.addresses,
            topology.epoch,
            tenant_id,
            key,
            first_asks(replicas, self._turn, preferred),
            required(r.plan.level, len(replicas)),
            times,
            batch,
        )

    async def _get(self, r: Route, tenant_id: str, key: str) -> ReadResult:
        read = self._ask(r, tenant_id, key, self._single_times)
        if read.asked < len(read.replicas):
            when = asyncio.get_running_loop().time() + self._single_times.delay
            self._speculation.at(when, read.speculate)
        await read.decision
        return await self._conclude(r, read)

    async def _conclude(self, r: Route, read: KeyRead) -> ReadResult:
        """The read's result from its answers, once the newest of them is durable."""
        topology, answers = r.topology, read.answers
        if read.stale is not None:
            self._later(topology, self._drain(topology, read.late, answers, None))
            raise read.stale
        if len(answers) < read.need:
            self._later(topology, self._drain(topology, read.late, answers, None))
            got = ", ".join(sorted(answers)) or "none"
            failures = ", ".join(f"{n} ({why})" for n, why in sorted(read.failed.items()))
            raise Unavailable(
                f"{r.plan.level.name} read needs {read.need} of {len(read.replicas)} replicas, "
                f"{len(answers)} answered ({got}); failed: {failures}"
            )
        newest = _newest(list(answers.values()))
        if newest is not None:
            self._clock.observe(newest.version)
            await self._make_durable(r, newest, answers)
        if read.late:
            self._later(topology, self._drain(topology, read.late, answers, newest))
        if newest is None or newest.tombstone:
            return ReadResult(False, b"", newest.version if newest else None)
        return ReadResult(True, newest.value, newest.version)

    async def _make_durable(self, r: Route, newest: StoredRecord, answers: dict[str, _Answer]) -> None:
        """Write newest back until it is held at the read's level in every set the phase writes to."""
        plan = r.writes
        if REPAIR_READ_SET_ONLY in self._sabotage:
            plan = ReplicaPlan(r.plan.level, r.plan.old)
        top = newest.order
        holding: set[str] = set()
        stale: list[str] = []  # answered nothing, or something older
        for n, a in answers.items():  # each answer's order worked out once
            if a is not None and a.order >= top:
                holding.add(n)
            else:
                stale.append(n)
        if plan.satisfied(holding):
            # Durable already, the common case: no write-back, only the stale answers repaired.
            if stale:
                self._later(r.topology, self._repair(r.topology, newest, stale))
            return
        # Replicas that answered with something older get it too, even when the plan is met without them.
        # A client waits already, and a write-back means a replica lagged: no send waits for company.
        outcome = await self._replicator.send(
            r.topology, plan, newest, holding=holding, newer_counts=True, patient=False
        )
        if outcome.stale is not None:
            raise outcome.stale
        if not plan.satisfied(outcome.acked):
            raise Unavailable(
                f"the newest version {newest.version} could not be made durable before returning it: "
                + outcome.shortfall(plan)
            )
        log.debug(
            "Read repair", tenant_id=newest.tenant_id, key=newest.key, nodes=sorted(outcome.acked - holding)
        )
        stale_elsewhere = [n for n in stale if n not in plan.targets]
        if stale_elsewhere:
            self._later(r.topology, self._repair(r.topology, newest, stale_elsewhere))

    async def _repair(self, topology: Topology, newest: StoredRecord, nodes: list[str]) -> None:
        results = await asyncio.gather(
            *(self._pool.node(n, topology.address(n)).apply(newest, epoch=topology.epoch) for n in nodes),
            return_exceptions=True,
        )
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "Read repair failed",
                    node_id=node,
                    tenant_id=newest.tenant_id,
                    key=newest.key,
                    error=describe_failure(result),
                )

    async def _drain(
        self,
        topology: Topology,
        late: dict[asyncio.Future[_Answer], str],
        early: dict[str, _Answer],
        returned: _Answer,
    ) -> None:
        """Repair after the reply: late stale answers, and everyone older than a late newer answer."""
        answers = dict(early)
        for task, node in late.items():
            try:
                answers[node] = await task
            except Exception:
                continue  # a replica that failed is repaired by a later read
        best = _newest([returned, *answers.values()])
        if best is None:
            return
        stale = [n for n, a in answers.items() if _is_stale(a, best)]
        if returned is not None and best.order == returned.order:
            stale = [n for n in stale if n not in early]  # the reply already made the early ones hold it
        if stale:
            await self._repair(topology, best, stale)

    def _later(self, topology: Topology, coro: Coroutine[Any, Any, None]) -> None:
        self._cache.track(topology.epoch, asyncio.ensure_future(coro))
