"""Send one record to the replicas of a plan and wait until the plan is met, or cannot be.

Shared by the write path (a new write) and the read path (making the value a
read returns durable before it returns it). A replica acknowledges when it
applied the record or already holds this very record. One that holds a newer
record does not: a new write must then be versioned above it (clock skew), a
read's write-back counts it as holding something at least as new.

Sends still running when the plan is met keep going in the background, so
slow replicas converge; they stay counted as in flight under their epoch, and
a barrier waits for them like for the request itself.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import structlog

from pairdb.coordinator.quorum import ReplicaPlan
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.keyspace import Applied, StoredRecord, Version
from pairdb.serving import metrics
from pairdb.storage_node.client import StaleEpoch, StoragePool, describe_failure

log = structlog.get_logger()


@dataclass
class Outcome:
    """Who acknowledged, who failed and why, who holds something newer."""

    acked: set[str]
    failed: dict[str, str] = field(default_factory=dict)
    newer: dict[str, Version] = field(default_factory=dict)
    # A replica fenced at a newer epoch than the request's view: route again.
    stale: StaleEpoch | None = None

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


class _Round:
    """The sends of one delivery, and whether their answers decided it yet."""

    __slots__ = ("answers", "decided", "delivery", "joining", "newer_counts", "outcome", "sends")

    def __init__(self, delivery: Delivery, newer_counts: bool) -> None:
        self.delivery = delivery
        self.newer_counts = newer_counts
        self.outcome = Outcome(set(delivery.holding))
        self.sends: dict[asyncio.Future[Applied], str] = {}
        self.joining = set(delivery.plan.new or ()) - set(delivery.plan.old)
        self.decided = False
        # Answers taken in so far; a send may be done before its answer is taken (callbacks run later).
        self.answers = 0

    def answer(self, node: str, send: asyncio.Future[Applied]) -> None:
        self.answers += 1
        outcome = self.outcome
        exc = None if send.cancelled() else send.exception()
        if send.cancelled() or exc is not None:
            outcome.failed[node] = "cancelled" if exc is None else describe_failure(exc)
            if isinstance(exc, StaleEpoch):
                outcome.stale = exc
            else:
                record = self.delivery.record
                log.warning(
                    "Dual-write failed to migration node" if node in self.joining else "Replica write failed",
                    node_id=node,
                    tenant_id=record.tenant_id,
                    key=record.key,
                    error=outcome.failed[node],
                )
            return
        result = send.result()
        if result.applied or result.same or self.newer_counts:
            outcome.acked.add(node)
        else:
            outcome.newer[node] = result.current

    def decide(self) -> bool:
        """Whether this round's outcome is settled: the plan met, or no longer possible, or stale."""
        plan, outcome = self.delivery.plan, self.outcome
        return (
            outcome.stale is not None
            or plan.satisfied(outcome.acked)
            or not plan.still_possible(outcome.acked, [*outcome.failed, *outcome.newer])
            or self.answers == len(self.sends)
        )


class Replicator:
    def __init__(self, cache: TopologyCache, pool: StoragePool) -> None:
        self._cache = cache
        self._pool = pool

    async def send(
        self,
        topology: Topology,
        plan: ReplicaPlan,
        record: StoredRecord,
        *,
        holding: Collection[str] = (),
        newer_counts: bool = False,
        dual_write: bool = False,
    ) -> Outcome:
        """Send record to every target of plan but those `holding` it already.

        newer_counts: a replica holding a newer record acknowledges (a read's write-back).
        dual_write: count sends to nodes only the future ring has, for the dual-write metrics.
        """
        [outcome] = await self.send_many(
            topology, [Delivery(plan, record, holding)], newer_counts=newer_counts, dual_write=dual_write
        )
        return outcome

    async def send_many(
        self,
        topology: Topology,
        deliveries: Sequence[Delivery],
        *,
        newer_counts: bool = False,
        dual_write: bool = False,
    ) -> list[Outcome]:
        """send() for many records at once: one outcome each, back when every one is decided.

        The sends of all records to one node leave in as few calls as the node's
        caps allow (coalescing.py); each record is decided on its own answers.
        """
        rounds = [_Round(d, newer_counts) for d in deliveries]
        undecided = len(rounds)
        all_decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def answered(round_: _Round, node: str, send: asyncio.Future[Applied]) -> None:
            nonlocal undecided
            if round_.decided:  # a late answer: the outcome was given already
                _log_late_failure(send)
                return
            round_.answer(node, send)
            if not round_.decided and round_.decide():
                round_.decided = True
                undecided -= 1
                if not undecided and not all_decided.done():
                    all_decided.set_result(None)

        for round_ in rounds:
            record, plan = round_.delivery.record, round_.delivery.plan
            for node in plan.targets:
                if node in round_.outcome.acked:
                    continue
                send = self._pool.node(node, topology.address(node)).submit_apply(
                    record, epoch=topology.epoch
                )
                round_.sends[send] = node
                if dual_write and node in round_.joining:
                    send.add_done_callback(_count_dual_write)
            if round_.decide():  # nothing to send, or the holders alone meet the plan
                round_.decided = True
                undecided -= 1
            for send, node in round_.sends.items():
                send.add_done_callback(functools.partial(answered, round_, node))
        try:
            if undecided:
                await all_decided
        finally:
            for round_ in rounds:
                for send in round_.sends:
                    if not send.done():
                        # Still writing by this epoch's view: a barrier waits for it too.
                        self._cache.track(topology.epoch, send)
        return [round_.outcome for round_ in rounds]


def _log_late_failure(task: asyncio.Future[Applied]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Late replica write failed", error=describe_failure(task.exception()))


def _count_dual_write(task: asyncio.Future[Applied]) -> None:
    failed = task.cancelled() or task.exception() is not None
    metrics.DUAL_WRITES.labels("failure" if failed else "success").inc()
