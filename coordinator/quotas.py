"""Per-tenant limits a coordinator enforces: a request rate and a storage quota.

Rate (max_ops_per_second): a token bucket per tenant in each coordinator
process, holding one second's worth; every request takes one token, a batch one
per item of that tenant. The limit is per coordinator process: a tenant whose
clients spread over N coordinator processes gets up to N times it. (Splitting it
would need the live coordinator count on every request's path, and a client
pinned to one coordinator would get only its share.) A batch larger than the
bucket passes when the bucket is full and leaves it in debt, so the average
still holds and a big batch is never refused for ever.

Storage (max_bytes): the bytes of live data (keys and values, tombstones
excluded) the tenant stores, each key counted once. Storage nodes count each
tenant's bytes in the write's own transaction (storage_node/engine.py) and report
them in Stats; a coordinator polls every node every USAGE_POLL_SECONDS while
some tenant has a storage quota, and estimates a tenant's size as the sum over
nodes divided by its replication factor: each key lives on RF nodes, so with
replicas in sync that is exact. The estimate runs high while a ring change or
hinted handoff leaves extra or missing copies (a joining node's copies count
until cleanup), and a node that does not answer counts as it last did. Writes,
never deletes, are refused while the estimate is at or over the quota; the
estimate lags by up to a poll, so a tenant may overshoot by what it writes meanwhile.

Both refusals are RESOURCE_EXHAUSTED with the limit in the message, counted in
pairdb_quota_refusals by reason. Limits come with the tenants in the registry
the coordinator reloads on every change (SetTenantLimits bumps the epoch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from pairdb.coordinator.metadata import TenantInfo
from pairdb.coordinator.topology import TopologyCache
from pairdb.kernel.clocks import boottime
from pairdb.kernel.errors import ResourceExhausted
from pairdb.serving import metrics
from pairdb.serving.loops import stop_task
from pairdb.storage_node.client import StorageError, StoragePool

log = structlog.get_logger()

USAGE_POLL_SECONDS = 2.0


class TokenBucket:
    """rate tokens a second, holding at most one second's worth; starts full."""

    def __init__(self, rate: int, clock: Callable[[], float] = boottime) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._at = clock()

    def take(self, n: int) -> bool:
        """Take n tokens if the bucket holds them (or is full, for n beyond its size)."""
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < min(n, self.rate):
            return False
        self._tokens -= n
        return True


def size(n: int) -> str:
    """Bytes for a person: 1.2 MB, 512 B (decimal units, as quotas are set)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


class Quotas:
    def __init__(
        self,
        cache: TopologyCache,
        pool: StoragePool,
        poll_seconds: float = USAGE_POLL_SECONDS,
        clock: Callable[[], float] = boottime,
    ) -> None:
        self._cache = cache
        self._pool = pool
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        # node id -> tenant id -> live bytes, as the node last reported.
        self._by_node: dict[str, dict[str, int]] = {}
        # tenant id -> estimated live bytes, from _by_node.
        self._stored: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tenant-usage")

    async def stop(self) -> None:
        await stop_task(self._task)

    # -- on each request -------------------------------------------------------------

    def admit(self, tenant_id: str, requests: int = 1) -> None:
        """Take `requests` from the tenant's rate, or raise ResourceExhausted."""
        tenant = self._cache.current.tenants.get(tenant_id)
        if tenant is None or not tenant.max_ops_per_second:
            return  # unknown tenants are refused NOT_FOUND when routed
        bucket = self._buckets.get(tenant_id)
        if bucket is None or bucket.rate != tenant.max_ops_per_second:
            bucket = self._buckets[tenant_id] = TokenBucket(tenant.max_ops_per_second, self._clock)
        if not bucket.take(requests):
            metrics.QUOTA_REFUSALS.labels("rate").inc(requests)
            raise ResourceExhausted(
                f"tenant {tenant_id} is limited to {tenant.max_ops_per_second} requests/s per coordinator: "
                "retry later, or raise its limit (pairdb tenant set-limits)"
            )

    def check_storage(self, tenant_id: str, writes: int = 1) -> None:
        """Raise ResourceExhausted if the tenant stores its quota or more (for `writes` refused)."""
        tenant = self._cache.current.tenants.get(tenant_id)
        if tenant is None or not tenant.max_bytes:
            return
        stored = self._stored.get(tenant_id, 0)
        if stored >= tenant.max_bytes:
            metrics.QUOTA_REFUSALS.labels("storage").inc(writes)
            raise ResourceExhausted(
                f"tenant {tenant_id} stores {size(stored)}, its quota is {size(tenant.max_bytes)}: "
                "delete data or raise the quota (pairdb tenant set-limits)"
            )

    def stored_bytes(self, tenant_id: str) -> int | None:
        """The tenant's estimated live bytes, None while usage is not polled."""
        return self._stored.get(tenant_id, 0) if self._by_node else None

    # -- usage polling -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.poll()
            except Exception as exc:  # the loop must outlive any failure
                log.warning("Tenant usage poll failed", error=f"{type(exc).__name__}: {exc}")

    async def poll(self) -> None:
        """Ask every node in the ring for its tenants' bytes (only while some tenant has a quota)."""
        topology = self._cache.current
        self._buckets = {t: b for t, b in self._buckets.items() if t in topology.tenants}
        if not any(t.max_bytes for t in topology.tenants.values()):
            self._by_node, self._stored = {}, {}
            return
        # The ring before any in-flight change: it holds every copy until the change's cleanup
        # (a joining node's copies would count twice).
        members = topology.ring.node_ids

        async def ask(node_id: str) -> None:
            try:
                stats = await self._pool.node(node_id, topology.address(node_id)).stats()
            except StorageError as exc:
                log.info("Tenant usage unknown for now", node_id=node_id, error=exc.code.name)
                return  # counts as it last did
            self._by_node[node_id] = stats.tenant_bytes

        await asyncio.gather(*(ask(n) for n in sorted(members)))
        self._by_node = {n: usage for n, usage in self._by_node.items() if n in members}
        self._stored = estimate(self._by_node, topology.tenants)


def estimate(by_node: dict[str, dict[str, int]], tenants: dict[str, TenantInfo]) -> dict[str, int]:
    """Each tenant's live bytes counted once: the sum over nodes over its replication factor."""
    total: dict[str, int] = {}
    for usage in by_node.values():
        for tenant_id, n in usage.items():
            total[tenant_id] = total.get(tenant_id, 0) + n
    return {t: n // tenants[t].replication_factor for t, n in total.items() if t in tenants}
