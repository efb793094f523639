"""The write path: version a write, fan it out to its replicas, acknowledge at the level asked.

Every target gets the write in parallel with its own deadline (replication.py).
The reply goes back as soon as the replica plan is satisfied. Three things can
send a write round again:

- a replica holds a newer version of the key: this coordinator's clock is
  behind the one that wrote it (clock skew), yet a write that starts after
  another was acknowledged must win over it. The clock observes the newer
  version and the write goes out again above it;
- a replica is fenced at a newer epoch, or the tenant is newer than the pinned
  view: the view is out of date, so the coordinator refreshes it and routes again;
- neither: too many replicas failed, and the client gets UNAVAILABLE naming
  who answered, who failed and why.

No reply leaves after the coordinator's lease ran out: a barrier may have
moved on without it meanwhile.

A batch (put_many) is many writes under one pinned view, sent to each replica
in as few calls as possible and decided key by key by the same plan rules. A
key that needs one of the three decisions above goes the single-key way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import structlog

from pairdb.coordinator.batch import one_by_one
from pairdb.coordinator.hlc import ClockCeiling, HybridLogicalClock
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.replication import Delivery, Replicator
from pairdb.coordinator.routing import StaleView, route, route_many
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.errors import PairdbError, Unavailable
from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.kernel.sabotage import SKIP_REVERSION
from pairdb.serving import metrics
from pairdb.storage_node.client import StaleEpoch

log = structlog.get_logger()

# Views refreshed before a request gives up: each is a ring change that happened meanwhile.
ROUTE_ATTEMPTS = 3
# Rounds a write may lose to newer versions in a row (each a concurrent write or clock skew).
MAX_REVERSIONS = 4


# NamedTuples, as StoredRecord: a batch builds one of each per key, and a tuple builds at C speed.


class WriteResult(NamedTuple):
    version: Version
    acknowledged: int


class Write(NamedTuple):
    """One item of a batch: a value, or a delete (tombstone)."""

    tenant_id: str
    key: str
    value: bytes
    tombstone: bool = False


class WritePath:
    def __init__(
        self,
        cache: TopologyCache,
        replicator: Replicator,
        clock: HybridLogicalClock,
        sabotage: frozenset[str] = frozenset(),
    ) -> None:
        self._cache = cache
        self._replicator = replicator
        self._clock = clock
        self._sabotage = sabotage

    async def put(self, tenant_id: str, key: str, value: bytes, level: Consistency) -> WriteResult:
        return await self._write(tenant_id, key, value, False, level=level)

    async def delete(self, tenant_id: str, key: str, level: Consistency) -> WriteResult:
        return await self._write(tenant_id, key, b"", True, level=level)

    async def _write(
        self, tenant_id: str, key: str, value: bytes, tombstone: bool, *, level: Consistency
    ) -> WriteResult:
        started = time.perf_counter()
        fence = 0
        for _ in range(ROUTE_ATTEMPTS):
            # Pinned: a barrier waits for this write before counting our new epoch as applied.
            with self._cache.pin() as topology:
                try:
                    r = await route(self._cache, topology, tenant_id, key, level, write=True)
                    record = StoredRecord(tenant_id, key, value, self._now(), tombstone)
                    result = await self.replicate(topology, r.plan, record)
                    self._cache.check_lease()
                except StaleView:
                    fence = 0
                except StaleEpoch as exc:
                    fence = exc.fence
                else:
                    migrating = "true" if topology.future is not None else "false"
                    metrics.WRITE_LATENCY.labels(migrating).observe(time.perf_counter() - started)
                    return result
            await self._cache.catch_up(fence)
        raise Unavailable(f"the ring changed {ROUTE_ATTEMPTS} times during this write; retry it")

    async def put_many(self, writes: Sequence[Write], level: Consistency) -> list[WriteResult | PairdbError]:
        """Each write's result or error, in order; not a transaction (each is acknowledged on its own)."""
        results: list[WriteResult | PairdbError | None] = [None] * len(writes)
        single: list[int] = []  # keys the single-key path finishes
        with self._cache.pin() as topology:
            routed: list[int] = []
            deliveries: list[Delivery] = []
            keys = [(w.tenant_id, w.key) for w in writes]
            routes = await route_many(self._cache, topology, keys, level, write=True)
            for i, (w, r) in enumerate(zip(writes, routes, strict=True)):
                if isinstance(r, StaleView):
                    single.append(i)
                    continue
                if isinstance(r, PairdbError):
                    results[i] = r
                    continue
                routed.append(i)
                deliveries.append(
                    Delivery(
                        r.plan,
                        StoredRecord(w.tenant_id, w.key, w.value, self._now(), w.tombstone),
                        token=r.token,
                    )
                )
            outcomes = await self._replicator.send_many(topology, deliveries, dual_write=True)
            self._cache.check_lease()
        for i, delivery, outcome in zip(routed, deliveries, outcomes, strict=True):
            if outcome.met:
                results[i] = WriteResult(delivery.record.version, len(outcome.acked))
            elif outcome.stale is not None or outcome.newer:
                single.append(i)
            else:
                results[i] = Unavailable(outcome.shortfall(delivery.plan))
        if single:
            await one_by_one(single, lambda i: self._write(*_fields(writes[i]), level=level), results)
        return [r for r in results if r is not None]

    async def replicate(self, topology: Topology, plan: ReplicaPlan, record: StoredRecord) -> WriteResult:
        """Send record until plan is met, versioning it above any newer version a replica holds."""
        for _ in range(MAX_REVERSIONS + 1):
            outcome = await self._replicator.send(
                topology, plan, record, dual_write=True, newer_counts=SKIP_REVERSION in self._sabotage
            )
            if outcome.stale is not None:
                raise outcome.stale
            if outcome.met:
                return WriteResult(record.version, len(outcome.acked))
            if not outcome.newer:
                raise Unavailable(outcome.shortfall(plan))
            newest = max(outcome.newer.values())
            if not self._clock.observe(newest):
                raise Unavailable(
                    f"a replica holds version {newest} of this key, further ahead of this coordinator's "
                    f"clock than the maximum offset ({self._clock.max_offset_ms} ms); check the clocks"
                )
            log.info(
                "Write versioned again above a newer version",
                tenant_id=record.tenant_id,
                key=record.key,
                version=str(record.version),
                newer=str(newest),
            )
            record = record._replace(version=self._now())
        raise Unavailable(
            f"the write lost to newer versions {MAX_REVERSIONS + 1} times in a row "
            "(heavy contention on this key); retry it"
        )

    def _now(self) -> Version:
        try:
            return self._clock.now()
        except ClockCeiling as exc:
            raise Unavailable(str(exc)) from None


def _fields(w: Write) -> tuple[str, str, bytes, bool]:
    return w.tenant_id, w.key, w.value, w.tombstone
