"""Prometheus metrics of every pairdb process, and the gRPC interceptor that times each RPC.

Each process serves /metrics on its own --metrics-port; a metric that process
never touches simply stays at zero (or absent, for labelled ones).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from pairdb.serving.interception import ServicerContext, Stream, Unary

# -- every gRPC server -------------------------------------------------------------
RPC_REQUESTS = Counter(
    "pairdb_rpc_requests", "gRPC requests served, by method and status code", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "pairdb_rpc_latency_seconds",
    "gRPC request latency",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

INSECURE = Gauge(
    "pairdb_insecure",
    "1 when this process was started with --insecure and listens beyond loopback without TLS or auth",
)

# -- coordinator ---------------------------------------------------------------------
DUAL_WRITES = Counter(
    "pairdb_dual_writes", "Writes sent to a joining node during a migration, by outcome", ["outcome"]
)
WRITE_LATENCY = Histogram(
    "pairdb_write_latency_seconds",
    "Client write latency, during a migration or not",
    ["migrating"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REGISTRY_EPOCH = Gauge("pairdb_registry_epoch", "The newest registry epoch this coordinator has loaded")
APPLIED_EPOCH = Gauge("pairdb_applied_epoch", "The registry epoch this coordinator reports as applied")
ACTIVE_MIGRATIONS = Gauge(
    "pairdb_active_migrations", "Ring changes in flight (0 or 1: they run one at a time)"
)
UNKNOWN_TENANT_REQUESTS = Counter(
    "pairdb_unknown_tenant_requests",
    "Requests for a tenant that does not exist, by how the coordinator knew: queried (a registry "
    "reload) or cached (found missing a moment ago, no query)",
    ["how"],
)
QUOTA_REFUSALS = Counter(
    "pairdb_quota_refusals",
    "Requests (batch items each) refused with RESOURCE_EXHAUSTED by a tenant's limits, by reason: "
    "rate (max_ops_per_second) or storage (max_bytes)",
    ["reason"],
)
READ_SPARES = Counter(
    "pairdb_read_spares",
    "Replicas a read asked beyond the ones its level needs, by reason: slow (the first asked had not "
    "answered within the p99 of recent answers: speculative retry) or failed (one of them failed)",
    ["reason"],
)
HINTS_STORED = Counter("pairdb_hints_stored", "Hints (writes a replica missed) written to PostgreSQL")
HINTS_REPLAYED = Counter("pairdb_hints_replayed", "Hints delivered to their node and deleted")
HINTS_DROPPED = Counter(
    "pairdb_hints_dropped",
    "Hints given up, by reason: full (the node's bound), expired (older than the window), not_replica "
    "(the node no longer replicates the key), node_down (failing longer than the window), refused",
    ["reason"],
)
HINTS_PENDING = Gauge(
    "pairdb_hints_pending", "Hints stored for each node, as this coordinator last counted them", ["node_id"]
)

# -- storage node ---------------------------------------------------------------------
STORAGE_KEYS = Gauge("pairdb_storage_keys", "Live keys on this storage node")
STORAGE_BYTES = Gauge("pairdb_storage_bytes", "Bytes of live values on this storage node")
STORAGE_READ_BYTES = Counter(
    "pairdb_storage_read_bytes", "Bytes of values this storage node's point reads (Get, GetMany) returned"
)
STORAGE_TOMBSTONES = Gauge("pairdb_storage_tombstones", "Tombstones on this storage node")
STORAGE_PURGED = Gauge(
    "pairdb_storage_tombstones_purged", "Tombstones this storage node purged after covering repairs"
)
STORAGE_OLDEST_REPAIR = Gauge(
    "pairdb_storage_oldest_repair_age_seconds",
    "Age of the oldest covering repair among the ranges this node recorded one for (0: none yet)",
)

# -- migration worker ------------------------------------------------------------------
COPY_KEYS = Counter("pairdb_copy_keys", "Keys copied to joining nodes")
COPY_BYTES = Counter("pairdb_copy_bytes", "Bytes copied to joining nodes (values; whole entries when pulled)")
COPY_RANGES = Counter(
    "pairdb_copy_ranges",
    "Ranges copied, by how: pulled (from one source) or merged (a quorum's newest, some tenants only)",
    ["how"],
)
REPAIR_RANGES = Counter(
    "pairdb_repair_ranges",
    "Ranges repaired: in_sync (digests equal), repaired (records sent), incomplete (a replica missing)",
    ["outcome"],
)
REPAIR_RECORDS = Counter("pairdb_repair_records", "Records a repair sent to a replica that lacked them")
TOMBSTONES_PURGED = Counter("pairdb_tombstones_purged", "Tombstones purged by repairs, over all replicas")
MIGRATION_DURATION = Histogram(
    "pairdb_migration_duration_seconds",
    "Time from start to end of a migration",
    ["status"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
)
PHASE_FAILURES = Counter(
    "pairdb_migration_phase_failures", "Migrations that failed, by the phase that failed", ["phase"]
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port from a background thread (prometheus_client's own server)."""
    if port:
        start_http_server(port, addr=host)


class Timed:
    """Wrapper counting and timing every RPC with its final status code."""

    def unary(self, method: str, inner: Unary) -> Unary:
        latency, count = _instruments(method)

        async def timed(request: Any, context: ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                reply = await inner(request, context)
                failed = False
                return reply
            finally:
                count(context, failed)
                latency.observe(time.perf_counter() - started)

        return timed

    def stream(self, method: str, inner: Stream) -> Stream:
        latency, count = _instruments(method)

        async def timed(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                async for reply in inner(request, context):
                    yield reply
                failed = False
            finally:
                count(context, failed)
                latency.observe(time.perf_counter() - started)

        return timed


def _instruments(full_method: str) -> tuple[Any, Callable[[ServicerContext, bool], None]]:
    """The method's latency histogram and a counter by final code, looked up once per method."""
    service, _, method = full_method.rpartition("/")
    service = service.lstrip("/").rsplit(".", 1)[-1]
    counters: dict[str, Any] = {}

    def count(context: ServicerContext, failed: bool) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        counter = counters.get(name)
        if counter is None:
            counter = counters[name] = RPC_REQUESTS.labels(service, method, name)
        counter.inc()

    return RPC_LATENCY.labels(service, method), count
