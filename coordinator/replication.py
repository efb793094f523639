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
from collections.abc import Collection
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
        outcome = Outcome(set(holding))
        sends = {
            asyncio.ensure_future(
                self._pool.node(n, topology.address(n)).apply(record, epoch=topology.epoch)
            ): n
            for n in plan.targets
            if n not in outcome.acked
        }
        joining = set(plan.new or ()) - set(plan.old)
        if dual_write:
            for task, node in sends.items():
                if node in joining:
                    task.add_done_callback(_count_dual_write)
        pending = set(sends)
        try:
            while pending and not plan.satisfied(outcome.acked) and outcome.stale is None:
                if not plan.still_possible(outcome.acked, [*outcome.failed, *outcome.newer]):
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._settle(outcome, sends[task], task, record, newer_counts, sends[task] in joining)
        finally:
            for task in pending:
                self._cache.track(topology.epoch, task)
                task.add_done_callback(_log_late_failure)
        return outcome

    @staticmethod
    def _settle(
        outcome: Outcome,
        node: str,
        task: asyncio.Future[Applied],
        record: StoredRecord,
        newer_counts: bool,
        joining: bool,
    ) -> None:
        exc = task.exception()
        if exc is None:
            result = task.result()
            if result.applied or result.same or newer_counts:
                outcome.acked.add(node)
            else:
                outcome.newer[node] = result.current
            return
        outcome.failed[node] = describe_failure(exc)
        if isinstance(exc, StaleEpoch):
            outcome.stale = exc
            return
        log.warning(
            "Dual-write failed to migration node" if joining else "Replica write failed",
            node_id=node,
            tenant_id=record.tenant_id,
            key=record.key,
            error=outcome.failed[node],
        )


def _log_late_failure(task: asyncio.Future[Applied]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("Late replica write failed", error=describe_failure(task.exception()))


def _count_dual_write(task: asyncio.Future[Applied]) -> None:
    failed = task.cancelled() or task.exception() is not None
    metrics.DUAL_WRITES.labels("failure" if failed else "success").inc()
