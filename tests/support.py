"""Helpers for tests that run migrations under client load."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from prometheus_client.parser import text_string_to_metric_families

from pairdb.client import Client, ClientError, MigrationStatus
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.ring import Ring
from pairdb.kernel.keyspace import Version, token
from pairdb.local.cluster import LocalCluster
from pairdb.proto import storage_pb2_grpc
from pairdb.serving.server import new_server
from pairdb.storage_node.client import NodeStats
from pairdb.storage_node.committer import GroupCommitter
from pairdb.storage_node.engine import Engine
from pairdb.storage_node.service import StorageService

# The maximum clock offset of in-process storage nodes (start_node).
MAX_OFFSET_MS = 500


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 60, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


async def scrape(port: int) -> dict[str, float]:
    """Samples by name{labels}, e.g. 'pairdb_dual_writes_total{outcome="success"}'."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    text = await asyncio.to_thread(fetch)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def wait_phase(
    client: Client, migration_id: str, *phases: str, timeout: float = 120
) -> MigrationStatus:
    seen: list[MigrationStatus] = []

    async def reached() -> bool:
        status = await client.migration(migration_id)
        seen.append(status)
        if status.ended and status.phase not in phases:
            raise AssertionError(f"migration ended {status.status} in {status.phase}: {status.error}")
        return status.phase in phases

    await wait_for(reached, timeout, f"phase {phases}")
    return seen[-1]


async def wait_ended(client: Client, migration_id: str, timeout: float = 180) -> MigrationStatus:
    result: list[MigrationStatus] = []

    async def ended() -> bool:
        result.append(await client.migration(migration_id))
        return result[-1].ended

    await wait_for(ended, timeout, f"migration {migration_id} to end")
    return result[-1]


async def load(client: Client, tenants: list[str], keys_per_tenant: int) -> dict[tuple[str, str], bytes]:
    written: dict[tuple[str, str], bytes] = {}
    sem = asyncio.Semaphore(32)

    async def put(tenant: str, i: int) -> None:
        async with sem:
            value = f"{tenant}-initial-{i}".encode()
            await client.put(tenant, f"key-{i}", value)
            written[(tenant, f"key-{i}")] = value

    await asyncio.gather(*(put(t, i) for t in tenants for i in range(keys_per_tenant)))
    return written


@dataclass
class Writer:
    """Clients overwriting keys through every coordinator, recording each acknowledged write.

    Each worker owns its keys and writes them one at a time, so the last
    acknowledged value of a key is exactly what a later read must return.
    """

    clients: list[Client]
    tenant: str
    keys: int = 200
    workers: int = 4
    acknowledged: dict[str, bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    operations: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(w)) for w in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        mine = [f"w{worker}-k{i}" for i in range(self.keys // self.workers)]
        for n in itertools.count():
            if self._stop.is_set():
                return
            key = rng.choice(mine)
            value = f"{key}-v{n}".encode()
            client = self.clients[n % len(self.clients)]
            try:
                await client.put(self.tenant, key, value)
                self.acknowledged[key] = value
            except ClientError as exc:
                self.errors.append(f"{key}: {exc}")
            self.operations += 1
            await asyncio.sleep(0.002)

    async def lost(self, client: Client) -> list[str]:
        """Keys whose QUORUM read does not return their last acknowledged value."""
        lost = []
        for key, value in self.acknowledged.items():
            got = await client.get(self.tenant, key)
            if got.value != value:
                lost.append(f"{key}: acknowledged {value!r}, read {got.value!r}")
        return lost


async def rings(cluster: LocalCluster, joined: str) -> tuple[Ring, Ring]:
    """The ring without `joined` and the ring with it, from the cluster's metadata."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    members = {n for n, info in snap.nodes.items() if info.status == "active"}
    old = Ring.from_tokens((t, n) for t, n in snap.tokens if n in members and n != joined)
    new = Ring.from_tokens((t, n) for t, n in snap.tokens if n in members | {joined})
    return old, new


async def read_all(clients: list[Client], written: dict[tuple[str, str], bytes]) -> list[str]:
    bad = []
    for i, ((tenant, key), value) in enumerate(written.items()):
        got = await clients[i % len(clients)].get(tenant, key)
        if got.value != value:
            bad.append(f"{tenant}/{key}")
    return bad


async def current_ring(cluster: LocalCluster) -> Ring:
    """The ring of the cluster's active nodes, from its metadata."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    return Ring.from_tokens((t, n) for t, n in snap.tokens if snap.nodes[n].status == "active")


async def misplaced(
    cluster: LocalCluster, keys: dict[str, list[str]], alive: set[str] | None = None
) -> list[str]:
    """Keys not held by exactly their replica set (by the current ring and each tenant's RF).

    keys: tenant -> keys to look up; asked of every live storage node directly.
    """
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    ring = Ring.from_tokens((t, n) for t, n in snap.tokens if snap.nodes[n].status == "active")
    nodes = sorted(
        alive if alive is not None else {n for n, i in snap.nodes.items() if i.status != "removed"}
    )
    clients = {n: cluster.nodes[n].client() for n in nodes}
    bad: list[str] = []
    try:
        for tenant, names in keys.items():
            rf = snap.tenants[tenant].replication_factor
            for key in names:
                held = {n for n, c in clients.items() if await c.get(tenant, key) is not None}
                expected = set(ring.replicas(token(tenant, key), rf))
                if held != expected:
                    bad.append(f"{tenant}/{key}: on {sorted(held)}, replicas {sorted(expected)}")
    finally:
        for c in clients.values():
            await c.close()
    return bad


@dataclass(frozen=True)
class RegistryState:
    in_flight: str | None  # the migration id the registry routes by, if any
    node_status: str | None
    tokens: int


async def registry_state(cluster: LocalCluster, node_id: str) -> RegistryState:
    """What PostgreSQL holds about the ring change in flight and about node_id."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    node = snap.nodes.get(node_id)
    return RegistryState(
        snap.in_flight.migration_id if snap.in_flight else None,
        node.status if node else None,
        sum(1 for _, n in snap.tokens if n == node_id),
    )


async def temporal_cli(cluster: LocalCluster, *args: str) -> str:
    """Run the real `temporal` CLI against the cluster's Temporal server, as an operator would."""
    from pairdb.local.temporal import temporal_binary

    proc = await asyncio.create_subprocess_exec(
        str(temporal_binary()),
        *args,
        "--address",
        cluster.temporal_server.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


async def start_node(
    path: Path, node_id: str = "fenced"
) -> tuple[grpc.aio.Server, GroupCommitter, Engine, int]:
    """A StorageService in this process, on loopback, over its own LMDB directory at path."""
    engine = Engine(path)
    committer = GroupCommitter(engine)
    committer.start()
    server = new_server()
    storage_pb2_grpc.add_StorageServiceServicer_to_server(
        StorageService(node_id, engine, committer, max_clock_offset_ms=MAX_OFFSET_MS), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, committer, engine, port


def now_version(origin: int = 1, ahead_ms: int = 0) -> Version:
    """A version of now on this machine's clock (plus ahead_ms)."""
    return Version((time.time_ns() // 1_000_000 + ahead_ms) << 16, origin)


async def divergent(cluster: LocalCluster, tenants: dict[str, int]) -> list[str]:
    """Ranges whose replicas' digests differ, per group of tenants sharing an RF (tenant -> RF).

    Asked of the storage nodes directly: no coordinator, no client read, no read repair.
    """
    ring = await current_ring(cluster)
    clients = {n: cluster.nodes[n].client() for n in ring.node_ids}
    bad: list[str] = []
    try:
        for start, end, _ in ring.ranges():
            for rf in sorted(set(tenants.values())):
                group = [t for t, r in tenants.items() if r == rf]
                digests = {
                    n: await clients[n].range_digest(start, end, tenants=group)
                    for n in ring.replicas(end, rf)
                }
                if len(set(digests.values())) > 1:
                    counts = {n: count for n, (_, count) in digests.items()}
                    bad.append(f"({start}, {end}] RF {rf}: {counts}")
    finally:
        for c in clients.values():
            await c.close()
    return bad


async def node_stats(cluster: LocalCluster, node_id: str) -> NodeStats:
    client = cluster.nodes[node_id].client()
    try:
        return await client.stats()
    finally:
        await client.close()


def credentials(cluster: LocalCluster) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the cluster's admin key, for calls made without pairdb.client."""
    return (("authorization", f"Bearer {cluster.admin_key}"),)


class _WithCredentials(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), *self._metadata])  # type: ignore[attr-defined,no-any-return]

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def authorized(channel: grpc.Channel, cluster: LocalCluster) -> grpc.Channel:
    """A blocking channel whose every call carries the cluster's admin key."""
    return grpc.intercept_channel(channel, _WithCredentials(credentials(cluster)))


async def hints_replayed(cluster: LocalCluster, node_id: str, timeout: float = 60) -> None:
    """Wait until every write node_id missed while down has reached it (no hint left for it).

    A test that takes a node of the shared session cluster down leaves hints that are replayed
    later; without this wait, a later test counting records would see them arrive.
    """
    conn = await asyncpg.connect(cluster.dsn)
    try:

        async def replayed() -> bool:
            left: int = await conn.fetchval("SELECT count(*) FROM hints WHERE node_id = $1", node_id)
            return left == 0

        await wait_for(replayed, timeout, f"the writes {node_id} missed to be replayed to it")
    finally:
        await conn.close()
