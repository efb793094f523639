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
that node's coalescer for company (patient), while the old replicas' calls are
crowded (a busy coordinator, where the joining node's per-call cost is what
patience saves). A write still undecided after what most writes take lately
(p90), or one whose other replica failed, needs that answer after all: it
hurries the patient sends, so a slow old replica costs one round trip to the
joining node, not the patient linger. Under a load with headroom nothing is
patient: a write the joining node does not delay would wait for both old
replicas it shares with the future set instead of the first two of three.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog

from pairdb.coordinator.answer_times import AnswerTimes
from pairdb.coordinator.hints import HintStore, hintable
from pairdb.coordinator.quorum import Consistency, ReplicaPlan, Tally
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.keyspace import APPLIED, Applied, StoredRecord, Version
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
    """The sends of deliveries that share their plan's sets and holders, and whether their answers
    decided them yet.

    A batch travels in slices of such deliveries: each target gets a slice whole,
    in one call, and as long as a target's answer is the same for all of it (the
    common case: all applied, or the call failed) one tally counts for the slice.
    The first answer that differs within it splits it into a round per delivery,
    each starting from what the slice had counted.
    """

    __slots__ = (
        "answers",
        "decided",
        "deliveries",
        "expected",
        "joining",
        "newer_counts",
        "outcome",
        "packed",
        "parts",
        "positions",
        "tally",
    )

    def __init__(self, deliveries: list[Delivery], positions: list[int], newer_counts: bool) -> None:
        first = deliveries[0]
        self.deliveries = deliveries
        self.positions = positions  # where the deliveries' outcomes go in send_many's answer
        self.newer_counts = newer_counts
        self.outcome = Outcome(set(first.holding))
        self.tally = Tally(first.plan, self.outcome.acked)
        self.expected = 0  # answers to wait for: one per node it was sent to
        self.joining = _joining(first.plan)
        self.decided = False
        # Answers taken in so far; a send may be done before its answer is taken (callbacks run later).
        self.answers = 0
        self.parts: list[_Round] | None = None  # once split: a round per delivery
        self.packed = b""  # the deliveries as packed entries, when sent by direct calls

    def answer(self, node: str, results: Sequence[Applied | BaseException]) -> int:
        """Take node's answers, one per delivery; how many deliveries they decided."""
        if self.parts is not None:
            return sum(part.answer(node, [result]) for part, result in zip(self.parts, results, strict=True))
        if self.decided:  # a late answer: the outcome was given already
            return 0
        same = self._same(results)
        if same is None:
            self._split()
            return self.answer(node, results)
        self._take(node, same)
        if self.decide():
            self.decided = True
            return len(self.deliveries)
        return 0

    def _same(self, results: Sequence[Applied | BaseException]) -> Applied | BaseException | None:
        """The one answer results amount to for every delivery, or None if they differ."""
        first = results[0]
        if len(results) == 1 or all(r is first for r in results):  # one record, or a failed call
            return first
        if all(
            not isinstance(r, BaseException) and (r.applied or r.same or self.newer_counts) for r in results
        ):
            return APPLIED  # every delivery acknowledged
        return None

    def _split(self) -> None:
        """A round per delivery, each having taken the answers the slice took."""
        parts = []
        for delivery, position in zip(self.deliveries, self.positions, strict=True):
            part = _Round([delivery], [position], self.newer_counts)
            for node in self.outcome.acked - part.outcome.acked:  # the holders are counted already
                part.outcome.acked.add(node)
                part.tally.ack(node)
            for node in self.outcome.failed:
                part.tally.miss(node)
            part.outcome.failed.update(self.outcome.failed)
            part.outcome.stale = self.outcome.stale
            part.expected, part.answers = self.expected, self.answers
            parts.append(part)
        self.parts = parts

    def _take(self, node: str, result: Applied | BaseException) -> None:
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

    def settled(self) -> list[tuple[int, Outcome]]:
        """Each delivery's position and outcome, once decided: later answers change them no more."""
        if self.parts is not None:
            return [settled for part in self.parts for settled in part.settled()]
        self.outcome.met = self.tally.met
        # Undivided, the slice's deliveries had the same answers: one outcome serves them all.
        return [(position, self.outcome) for position in self.positions]

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
        straight to each node in calls of up to CALL_ITEMS records, in slices
        (_Round) counted as one while their answers agree. Either way each
        record is decided on its own answers.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        sends: dict[asyncio.Future[Any], tuple[str, list[_Round]]] = {}
        waiting: set[str] = set()  # nodes with patient sends of ours
        coalesced = len(deliveries) < DIRECT_CALLS_FROM
        if coalesced:
            rounds = [_Round([d], [i], newer_counts) for i, d in enumerate(deliveries)]
            for round_ in rounds:
                delivery = round_.deliveries[0]
                can_wait = self._patient(topology, delivery.plan) if patient else frozenset()
                for node in delivery.plan.targets:
                    if node not in round_.outcome.acked:
                        client = self._pool.node(node, topology.address(node))
                        send = client.submit_apply(
                            delivery.record, epoch=topology.epoch, patient=node in can_wait
                        )
                        sends[send] = (node, [round_])
                        if node in can_wait:
                            waiting.add(node)
        else:
            rounds = _slices(deliveries, newer_counts)
            per_node: dict[str, list[_Round]] = {}
            for round_ in rounds:
                for node in round_.deliveries[0].plan.targets:
                    if node not in round_.outcome.acked:
                        per_node.setdefault(node, []).append(round_)
            for node, slices in per_node.items():
                client = self._pool.node(node, topology.address(node))
                for part in _calls(slices):
                    packed = b"".join(round_.packed for round_ in part)
                    count = sum(len(round_.deliveries) for round_ in part)
                    call = client.apply_entries(packed, count, epoch=topology.epoch)
                    sends[asyncio.ensure_future(call)] = (node, part)
        for _, part in sends.values():
            for round_ in part:
                round_.expected += 1

        undecided = 0  # deliveries
        for round_ in rounds:
            if round_.decide():  # nothing to send, or the holders alone meet the plan
                round_.decided = True
            else:
                undecided += len(round_.deliveries)
        all_decided: asyncio.Future[None] = loop.create_future()

        def hurry() -> None:
            for node in waiting:
                self._pool.node(node, topology.address(node)).hurry_applies()
            waiting.clear()

        def answered(send: asyncio.Future[Any]) -> None:
            nonlocal undecided
            node, part = sends[send]
            results = _results(send, sum(len(round_.deliveries) for round_ in part))
            failed = any(isinstance(result, BaseException) for result in results)
            if failed:
                _log_failures(node, part, results)
            at = 0
            for round_ in part:
                size = len(round_.deliveries)
                answers = results[at : at + size] if len(part) > 1 else results
                at += size
                if dual_write and node in round_.joining:
                    _count_dual_writes(answers)
                undecided -= round_.answer(node, answers)
                if (
                    waiting
                    and node not in waiting
                    and not round_.decided
                    and node not in round_.outcome.acked
                ):
                    hurry()  # a replica it counted on failed: the patient answers are needed now
            if not undecided and not all_decided.done():
                all_decided.set_result(None)
            if self._hints is not None:
                _leave_hints(self._hints, node, part, results, topology.epoch, failed)

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
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        for round_ in rounds:
            for position, outcome in round_.settled():
                outcomes[position] = outcome
        return cast(list[Outcome], outcomes)

    def _patient(self, topology: Topology, plan: ReplicaPlan) -> frozenset[str]:
        """The sends of plan that may wait for company now: _patient(plan) while every old
        replica's calls are crowded, none otherwise."""
        can_wait = _patient(plan)
        if can_wait and all(self._pool.node(n, topology.address(n)).writes_crowded for n in plan.old):
            return can_wait
        return frozenset()


def _slices(deliveries: Sequence[Delivery], newer_counts: bool) -> list[_Round]:
    """A batch's deliveries in rounds of up to CALL_ITEMS whose plans have the same sets and holders,
    each with its records packed as entries once for all its targets, in the form the nodes store."""
    cohorts: dict[tuple[object, frozenset[str]], list[int]] = {}
    for i, delivery in enumerate(deliveries):
        holding = frozenset(delivery.holding) if delivery.holding else _NO_HOLDERS
        cohorts.setdefault((_sets(delivery.plan), holding), []).append(i)
    rounds = []
    for positions in cohorts.values():
        for at in range(0, len(positions), CALL_ITEMS):
            chosen = positions[at : at + CALL_ITEMS]
            members = [deliveries[i] for i in chosen]
            round_ = _Round(members, chosen, newer_counts)
            round_.packed = b"".join(pack_entry(encode_entry(d.record, d.token)) for d in members)
            rounds.append(round_)
    return rounds


def _calls(slices: list[_Round]) -> list[list[_Round]]:
    """One node's slices in calls of up to CALL_ITEMS records, each slice whole in one call."""
    calls: list[list[_Round]] = []
    size = CALL_ITEMS
    for round_ in slices:
        if size + len(round_.deliveries) > CALL_ITEMS:
            calls.append([])
            size = 0
        calls[-1].append(round_)
        size += len(round_.deliveries)
    return calls


_NO_HOLDERS: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=4096)
def _sets(plan: ReplicaPlan) -> tuple[Consistency, frozenset[str], frozenset[str] | None]:
    """What a tally of plan counts: its level and sets, in whatever order routing gave their nodes."""
    return plan.level, frozenset(plan.old), None if plan.new is None else frozenset(plan.new)


def _count_dual_writes(answers: Sequence[Applied | BaseException]) -> None:
    failures = sum(1 for answer in answers if isinstance(answer, BaseException))
    if failures:
        metrics.DUAL_WRITES.labels("failure").inc(failures)
    if len(answers) > failures:
        metrics.DUAL_WRITES.labels("success").inc(len(answers) - failures)


def _each(
    part: list[_Round], results: list[Applied | BaseException]
) -> Iterator[tuple[_Round, Delivery, bool, Applied | BaseException]]:
    """Each delivery of a call's rounds: its round, whether it was decided before this answer, and
    its answer."""
    at = 0
    for round_ in part:
        for i, delivery in enumerate(round_.deliveries):
            decided = round_.parts[i].decided if round_.parts is not None else round_.decided
            yield round_, delivery, decided, results[at]
            at += 1


def _log_failures(node: str, part: list[_Round], results: list[Applied | BaseException]) -> None:
    """One line per failed call; one per record the node refused on its own. Fences are not failures."""
    failures = [e for e in results if isinstance(e, BaseException)]
    if not failures or isinstance(failures[0], StaleEpoch):
        return
    error = failures[0]
    if len(results) > 1 and all(e is error for e in results):
        log.warning("Replica call failed", node_id=node, records=len(results), error=describe_failure(error))
        return
    for round_, delivery, decided, result in _each(part, results):
        if isinstance(result, BaseException):
            record = delivery.record
            log.warning(
                # A call carries several plans' records: the node may be joining in some only.
                "Dual-write failed to migration node" if node in round_.joining else "Replica write failed",
                node_id=node,
                tenant_id=record.tenant_id,
                key=record.key,
                late=decided,
                error=describe_failure(result),
            )


def _leave_hints(
    hints: HintStore,
    node: str,
    part: list[_Round],
    results: list[Applied | BaseException],
    epoch: int,
    failed: bool,
) -> None:
    """A hint for each record the node could not take then; the node is heard from if it answered."""
    answered = not failed
    if failed:
        for _, delivery, _, result in _each(part, results):
            if not isinstance(result, BaseException):
                answered = True
            elif hintable(result):
                hints.record(node, delivery.record, epoch)
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
