"""Send one record to the replicas of a plan and wait until the plan is met, or cannot be.

Shared by the write path (a new write) and the read path (making the value a
read returns durable before it returns it). A replica acknowledges when it
applied the record or already holds this very record. One that holds a newer
record does not: a new write must then be versioned above it (clock skew), a
read's write-back counts it as holding something at least as new.

Sends still running when the plan is met keep going in the background, so
slow replicas converge; they stay counted as in flight under their epoch, and
a barrier waits for them like for the request itself.

A send that fails because the replica could not take the record then, on time
or late, leaves a hint (hints.py) that is replayed once the replica is back.
Hints are taken after the answers are counted and never change an outcome.

A dual write to a joining node whose answer the plan can do without waits in
that node's coalescer for company (patient). A write still undecided after
what most writes take lately (p90), or one whose other replica failed, needs
that answer after all: it hurries the patient sends, so a slow old replica
costs one round trip to the joining node, not the patient linger.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from pairdb.coordinator.answer_times import AnswerTimes
from pairdb.coordinator.hints import HintStore, hintable
from pairdb.coordinator.quorum import ReplicaPlan, Tally
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.keyspace import Applied, StoredRecord, Version
from pairdb.serving import metrics
from pairdb.storage_node.client import StaleEpoch, StoragePool, describe_failure
from pairdb.storage_node.layout import encode_entry, pack_entry

log = structlog.get_logger()


@dataclass
class Outcome:
    """Who acknowledged, who failed and why, who holds something newer."""

    acked: set[str]
    failed: dict[str, str] = field(default_factory=dict)
    newer: dict[str, Version] = field(default_factory=dict)
    # A replica fenced at a newer epoch than the request's view: route again.
    stale: StaleEpoch | None = None
    # Whether acked meets the plan: the tally's answer, so a caller need not count again.
    met: bool = False

    def shortfall(self, plan: ReplicaPlan) -> str:
        failures = ", ".join(f"{n} ({why})" for n, why in sorted(self.failed.items())) or "none"
        newer = ", ".join(f"{n} (holds {v})" for n, v in sorted(self.newer.items()))
        return f"{plan.describe_shortfall(self.acked)}; failed: {failures}" + (
            f"; newer: {newer}" if newer else ""
        )


@dataclass
class Delivery:
    """One record on its way to the targets of its plan."""

    plan: ReplicaPlan
    record: StoredRecord
    # Nodes that hold the record already: they count as acknowledged and get nothing.
    holding: Collection[str] = ()
    # The key's token, when routing computed it already (None: computed again if needed).
    token: int | None = None


class _Round:
    """The sends of one delivery, and whether their answers decided it yet."""

    __slots__ = ("answers", "decided", "delivery", "expected", "joining", "newer_counts", "outcome", "tally")

    def __init__(self, delivery: Delivery, newer_counts: bool) -> None:
        self.delivery = delivery
        self.newer_counts = newer_counts
        self.outcome = Outcome(set(delivery.holding))
        self.tally = Tally(delivery.plan, self.outcome.acked)
        self.expected = 0  # answers to wait for: one per node it was sent to
        self.joining = _joining(delivery.plan)
        self.decided = False
        # Answers taken in so far; a send may be done before its answer is taken (callbacks run later).
        self.answers = 0

    def take(self, node: str, result: Applied | BaseException) -> None:
        self.answers += 1
        outcome = self.outcome
        if isinstance(result, BaseException):
            self.tally.miss(node)
            outcome.failed[node] = describe_failure(result)
            if isinstance(result, StaleEpoch):
                outcome.stale = result
            return
        if result.applied or result.same or self.newer_counts:
            outcome.acked.add(node)
            self.tally.ack(node)
        else:
            assert result.current is not None, "a node that did not apply a record says what it holds"
            outcome.newer[node] = result.current
            self.tally.miss(node)

    def settled(self) -> Outcome:
        """The outcome, once decided: later answers change it no more."""
        self.outcome.met = self.tally.met
        return self.outcome

    def decide(self) -> bool:
        """Whether this round's outcome is settled: the plan met, or no longer possible, or stale."""
        return (
            self.outcome.stale is not None
            or self.tally.met
            or not self.tally.possible
            or self.answers == self.expected
        )


@functools.lru_cache(maxsize=4096)
def _joining(plan: ReplicaPlan) -> frozenset[str]:
    """Nodes only the future ring has: sends to them are dual writes."""
    return frozenset(plan.new or ()) - frozenset(plan.old)


@functools.lru_cache(maxsize=4096)
def _patient(plan: ReplicaPlan) -> frozenset[str]:
    """The joining nodes whose answers the plan needs only when another replica fails.

    Their sends wait for company in the coalescer (a few large calls to a node
    that only follows along); a write still waits for them when it must.
    """
    joining = _joining(plan)
    return joining if joining and plan.satisfied(set(plan.targets) - joining) else frozenset()


# From this many records a send_many calls the nodes directly (a batch); below, through their coalescers.
DIRECT_CALLS_FROM = 32
# Records per direct call.
CALL_ITEMS = 1000
# The share of writes decided without their patient sends' answers: the others hurry them, and
# none waits longer than HURRY_AT_MOST_AFTER seconds before it does.
HURRY_AFTER_QUANTILE = 0.9
HURRY_AT_MOST_AFTER = 0.5


class Replicator:
    def __init__(self, cache: TopologyCache, pool: StoragePool, hints: HintStore | None = None) -> None:
        self._cache = cache
        self._pool = pool
        self._hints = hints
        # How long coalesced sends took to decide lately: a write undecided for longer hurries.
        self._decided = AnswerTimes(
            0.01, floor=0.002, ceiling=HURRY_AT_MOST_AFTER, quantile=HURRY_AFTER_QUANTILE
        )

    async def send(
        self,
        topology: Topology,
        plan: ReplicaPlan,
        record: StoredRecord,
        *,
        holding: Collection[str] = (),
        newer_counts: bool = False,
        dual_write: bool = False,
        patient: bool = True,
    ) -> Outcome:
        """Send record to every target of plan but those `holding` it already.

        newer_counts: a replica holding a newer record acknowledges (a read's write-back).
        dual_write: count sends to nodes only the future ring has, for the dual-write metrics.
        patient: joining nodes the plan can do without may wait for company (not when a client
        waits already, as for a read's write-back).
        """
        [outcome] = await self.send_many(
            topology,
            [Delivery(plan, record, holding)],
            newer_counts=newer_counts,
            dual_write=dual_write,
            patient=patient,
        )
        return outcome

    async def send_many(
        self,
        topology: Topology,
        deliveries: Sequence[Delivery],
        *,
        newer_counts: bool = False,
        dual_write: bool = False,
        patient: bool = True,
    ) -> list[Outcome]:
        """send() for many records at once: one outcome each, back when every one is decided.

        A few records go through each node's coalescer, sharing calls with
        other requests' records; a batch is a coalesced unit already and goes
        straight to each node in calls of up to CALL_ITEMS records. Either way
        each record is decided on its own answers.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        rounds = [_Round(d, newer_counts) for d in deliveries]
        sends: dict[asyncio.Future[Any], tuple[str, list[_Round]]] = {}
        waiting: set[str] = set()  # nodes with patient sends of ours
        coalesced = len(rounds) < DIRECT_CALLS_FROM
        if not coalesced:
            per_node: dict[str, list[tuple[_Round, bytes]]] = {}
            for round_ in rounds:
                # Encoded once for all its replicas, in the form the nodes store.
                delivery = round_.delivery
                entry = pack_entry(encode_entry(delivery.record, delivery.token))
                for node in delivery.plan.targets:
                    if node not in round_.outcome.acked:
                        per_node.setdefault(node, []).append((round_, entry))
            for node, group in per_node.items():
                client = self._pool.node(node, topology.address(node))
                for at in range(0, len(group), CALL_ITEMS):
                    chunk = group[at : at + CALL_ITEMS]
                    packed = b"".join(e for _, e in chunk)
                    call = client.apply_entries(packed, len(chunk), epoch=topology.epoch)
                    sends[asyncio.ensure_future(call)] = (node, [r for r, _ in chunk])
        else:
            for round_ in rounds:
                can_wait = _patient(round_.delivery.plan) if patient else frozenset()
                for node in round_.delivery.plan.targets:
                    if node not in round_.outcome.acked:
                        client = self._pool.node(node, topology.address(node))
                        send = client.submit_apply(
                            round_.delivery.record, epoch=topology.epoch, patient=node in can_wait
                        )
                        sends[send] = (node, [round_])
                        if node in can_wait:
                            waiting.add(node)
        for _, part in sends.values():
            for round_ in part:
                round_.expected += 1

        undecided = 0
        for round_ in rounds:
            if round_.decide():  # nothing to send, or the holders alone meet the plan
                round_.decided = True
            else:
                undecided += 1
        all_decided: asyncio.Future[None] = loop.create_future()

        def hurry() -> None:
            for node in waiting:
                self._pool.node(node, topology.address(node)).hurry_applies()
            waiting.clear()

        def answered(send: asyncio.Future[Any]) -> None:
            nonlocal undecided
            node, part = sends[send]
            results = _results(send, len(part))
            _log_failures(node, part, results)
            for round_, result in zip(part, results, strict=True):
                if dual_write and node in round_.joining:
                    metrics.DUAL_WRITES.labels(
                        "failure" if isinstance(result, BaseException) else "success"
                    ).inc()
                if round_.decided:  # a late answer: the outcome was given already
                    continue
                round_.take(node, result)
                if round_.decide():
                    round_.decided = True
                    undecided -= 1
                elif waiting and node not in waiting and node not in round_.outcome.acked:
                    hurry()  # a replica it counted on failed: the patient answers are needed now
            if not undecided and not all_decided.done():
                all_decided.set_result(None)
            if self._hints is not None:
                _leave_hints(self._hints, node, part, results, topology.epoch)

        for send in sends:
            send.add_done_callback(answered)
        timer = loop.call_later(self._decided.delay, hurry) if waiting and undecided else None
        try:
            if undecided:
                await all_decided
            if coalesced:
                self._decided.add(loop.time() - started)
        finally:
            if timer is not None:
                timer.cancel()
            for send in sends:
                if not send.done():
                    # Still writing by this epoch's view: a barrier waits for it too.
                    self._cache.track(topology.epoch, send)
        return [round_.settled() for round_ in rounds]


def _log_failures(node: str, part: list[_Round], results: list[Applied | BaseException]) -> None:
    """One line per failed call; one per record the node refused on its own. Fences are not failures."""
    failures = [(r, e) for r, e in zip(part, results, strict=True) if isinstance(e, BaseException)]
    if not failures or isinstance(failures[0][1], StaleEpoch):
        return
    error = failures[0][1]
    if len(part) > 1 and all(e is error for _, e in failures):
        log.warning("Replica call failed", node_id=node, records=len(part), error=describe_failure(error))
        return
    for round_, exc in failures:
        record = round_.delivery.record
        log.warning(
            "Dual-write failed to migration node" if node in round_.joining else "Replica write failed",
            node_id=node,
            tenant_id=record.tenant_id,
            key=record.key,
            late=round_.decided,
            error=describe_failure(exc),
        )


def _leave_hints(
    hints: HintStore, node: str, part: list[_Round], results: list[Applied | BaseException], epoch: int
) -> None:
    """A hint for each record the node could not take then; the node is heard from if it answered."""
    answered = False
    for round_, result in zip(part, results, strict=True):
        if not isinstance(result, BaseException):
            answered = True
        elif hintable(result):
            hints.record(node, round_.delivery.record, epoch)
    if answered:
        hints.heard(node)


def _results(send: asyncio.Future[Any], count: int) -> list[Applied | BaseException]:
    """A send's answers, one per record: a call that failed fails each of its records."""
    if send.cancelled():
        return [asyncio.CancelledError("the replica call was cancelled")] * count
    exc = send.exception()
    if exc is not None:
        return [exc] * count
    result = send.result()
    return result if isinstance(result, list) else [result]
