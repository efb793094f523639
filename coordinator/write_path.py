"""The write path: version a write, fan it out to its replicas, acknowledge at the level asked.

Every target gets the write in parallel with its own deadline. The reply goes
back as soon as the replica plan is satisfied; the remaining sends run on in
the background so slow replicas still converge. When too many replicas fail
for the level to be met, the client gets UNAVAILABLE naming who answered and
who failed and why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from coordinator.errors import Unavailable
from coordinator.hlc import HybridLogicalClock
from coordinator.quorum import Consistency, ReplicaPlan
from coordinator.routing import route
from coordinator.topology import Topology, TopologyCache
from pairdb import metrics
from pairdb.keyspace import Version
from storage_node.client import StoragePool, describe_failure
from storage_node.engine import StoredRecord

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: Version
    acknowledged: int


class WritePath:
    def __init__(self, cache: TopologyCache, pool: StoragePool, clock: HybridLogicalClock) -> None:
        self._cache = cache
        self._pool = pool
        self._clock = clock
        self._background: set[asyncio.Task[bool]] = set()

    async def put(self, tenant_id: str, key: str, value: bytes, level: Consistency) -> WriteResult:
        return await self._write(tenant_id, key, value, tombstone=False, level=level)

    async def delete(self, tenant_id: str, key: str, level: Consistency) -> WriteResult:
        return await self._write(tenant_id, key, b"", tombstone=True, level=level)

    async def _write(
        self, tenant_id: str, key: str, value: bytes, *, tombstone: bool, level: Consistency
    ) -> WriteResult:
        started = time.perf_counter()
        # Pinned: a barrier waits for this write before counting our new epoch as applied.
        with self._cache.pin() as topology:
            r = await route(self._cache, topology, tenant_id, key, level, write=True)
            record = StoredRecord(tenant_id, key, value, self._clock.now(), tombstone)
            acknowledged = await self.replicate(r.topology, r.plan, record)
        migrating = "true" if topology.future is not None else "false"
        metrics.WRITE_LATENCY.labels(migrating).observe(time.perf_counter() - started)
        return WriteResult(record.version, acknowledged)

    async def replicate(self, topology: Topology, plan: ReplicaPlan, record: StoredRecord) -> int:
        """Send record to every target of plan; return the acks counted once the plan is met."""
        sends = {
            asyncio.ensure_future(self._pool.node(n, topology.address(n)).apply(record)): n
            for n in plan.targets
        }
        acked: set[str] = set()
        failed: dict[str, str] = {}
        pending = set(sends)
        joining = set(plan.new or ()) - set(plan.old)
        for task, node in sends.items():
            if node in joining:
                task.add_done_callback(_count_dual_write)
        try:
            while pending and not plan.satisfied(acked):
                if not plan.still_possible(acked, failed):
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    node = sends[task]
                    exc = task.exception()
                    if exc is None:
                        acked.add(node)
                    else:
                        failed[node] = describe_failure(exc)
                        log.warning(
                            "Dual-write failed to migration node"
                            if node in joining
                            else "Replica write failed",
                            node_id=node,
                            tenant_id=record.tenant_id,
                            key=record.key,
                            error=failed[node],
                        )
        finally:
            # Keep the slower sends running: they still make replicas converge.
            for task in pending:
                self._background.add(task)
                task.add_done_callback(self._forget)
        if not plan.satisfied(acked):
            raise Unavailable(_shortfall(plan, acked, failed))
        return len(acked)

    def _forget(self, task: asyncio.Task[bool]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("Late replica write failed", error=describe_failure(task.exception()))


def _shortfall(plan: ReplicaPlan, acked: set[str], failed: dict[str, str]) -> str:
    failures = ", ".join(f"{n} ({why})" for n, why in sorted(failed.items())) or "none"
    return f"{plan.describe_shortfall(acked)}; failed: {failures}"


def _count_dual_write(task: asyncio.Future[bool]) -> None:
    failed = task.cancelled() or task.exception() is not None
    metrics.DUAL_WRITES.labels("failure" if failed else "success").inc()
