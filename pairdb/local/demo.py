"""`pairdb demo`: grow a live cluster by one node while clients read and write, and prove nothing was lost.

1. start a fresh local cluster (PostgreSQL, Temporal + UI, 3 storage nodes, 2 coordinators, a worker);
2. load sample data over 3 tenants from a JSON Lines file, as `pairdb load` does;
3. start node-4 and add it online while a writer and a reader keep running through both coordinators;
4. check every acknowledged write at QUORUM, and every key node-4 should own on node-4 itself;
5. print a summary and stop the cluster. Exit 0 only when nothing was lost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pairdb import loading, progress
from pairdb.client import Client, ClientError
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.ring import Ring
from pairdb.kernel import migration as m
from pairdb.kernel.keyspace import token
from pairdb.kernel.migration import NodeState
from pairdb.local.cluster import LocalCluster
from pairdb.storage_node.engine import StoredRecord

TENANTS = {"acme": 3, "globex": 3, "initech": 2}
# Batches in flight while loading and checking.
LOAD_CONCURRENCY = 4
CHECK_BATCH = 1000


@dataclass
class Traffic:
    """Writers and readers through every coordinator, recording what was acknowledged."""

    clients: list[Client]
    acknowledged: dict[tuple[str, str], bytes] = field(default_factory=dict)
    writes: int = 0
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, writers: int = 4, readers: int = 2) -> None:
        self._tasks = [asyncio.ensure_future(self._write(w)) for w in range(writers)]
        self._tasks += [asyncio.ensure_future(self._read(r)) for r in range(readers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, worker: int) -> None:
        rng = random.Random(worker)
        tenants = list(TENANTS)
        for n in itertools.count():
            if self._stop.is_set():
                return
            # Each writer owns its keys and writes each one at a time: its last
            # acknowledged value is exactly what a later read must return.
            tenant, key = tenants[n % len(tenants)], f"live-{worker}-{rng.randrange(500)}"
            value = f"{key}@{n}".encode()
            try:
                await self.clients[n % len(self.clients)].put(tenant, key, value)
                self.acknowledged[(tenant, key)] = value
            except ClientError as exc:
                self.errors.append(f"write {tenant}/{key}: {exc}")
            self.writes += 1
            await asyncio.sleep(0.002)  # steady client traffic, not a saturation test

    async def _read(self, worker: int) -> None:
        rng = random.Random(100 + worker)
        for n in itertools.count():
            if self._stop.is_set():
                return
            try:
                await self.clients[n % len(self.clients)].get(
                    rng.choice(list(TENANTS)), f"key-{rng.randrange(1000)}"
                )
            except ClientError as exc:
                self.errors.append(f"read: {exc}")
            self.reads += 1
            await asyncio.sleep(0.002)


async def _load(client: Client, data_dir: Path, keys: int) -> dict[tuple[str, str], bytes]:
    """Write the sample data to a JSON Lines file and load it as `pairdb load` does."""
    rows = {
        (tenant, f"key-{i}"): f"{tenant}-value-{i}".encode()
        for i in range(keys // len(TENANTS))
        for tenant in TENANTS
    }
    path = data_dir / "sample.jsonl"
    lines = (json.dumps({"tenant": t, "key": k, "value": v.decode()}) for (t, k), v in rows.items())
    await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n")
    print(f"  pairdb load {path}", flush=True)
    report = await loading.Loader(client, path, "jsonl", concurrency=LOAD_CONCURRENCY).run()
    if report.rejected or report.loaded != len(rows):
        raise RuntimeError(
            f"loading the sample data rejected {report.rejected} rows; see {report.rejected_path}"
        )
    print(
        f"  loaded {report.loaded:,} keys in {report.seconds:.1f} s ({report.loaded / report.seconds:,.0f}/s)"
    )
    return rows


async def _check_quorum(clients: list[Client], expected: dict[tuple[str, str], bytes]) -> list[str]:
    """Read every key back at QUORUM, in batches through both coordinators."""
    lost: list[str] = []
    keys = list(expected)
    chunks = iter(range(0, len(keys), CHECK_BATCH))
    checked = 0

    async def worker(n: int) -> None:
        nonlocal checked
        client = clients[n % len(clients)]
        for start in chunks:
            batch = keys[start : start + CHECK_BATCH]
            for (tenant, key), got in zip(batch, await client.get_many(batch), strict=True):
                value = expected[(tenant, key)]
                if isinstance(got, ClientError):
                    lost.append(f"{tenant}/{key}: acknowledged {value!r}, read failed: {got}")
                elif got.value != value or not got.found:
                    lost.append(
                        f"{tenant}/{key}: acknowledged {value!r}, read {got.value if got.found else None!r}"
                    )
            checked += len(batch)
            if checked % 20_000 < CHECK_BATCH:
                print(f"  checked {checked:,} of {len(expected):,}", flush=True)

    await asyncio.gather(*(worker(n) for n in range(LOAD_CONCURRENCY)))
    return lost


async def _check_new_node(
    cluster: LocalCluster, expected: dict[tuple[str, str], bytes]
) -> tuple[int, list[str]]:
    """Every key whose replica set now includes node-4 is on node-4 with its acknowledged value."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    ring = Ring.from_tokens((t, n) for t, n in snap.tokens if snap.nodes[n].status == NodeState.ACTIVE)
    held: dict[tuple[str, str], StoredRecord] = {}
    node4 = cluster.nodes["node-4"].client()
    try:
        async for batch in node4.scan_range(0, 0, batch_size=5000, timeout=600):
            for r in batch:
                held[(r.tenant_id, r.key)] = r
    finally:
        await node4.close()
    owned = [k for k in expected if "node-4" in ring.replicas(token(*k), TENANTS[k[0]])]
    missing = [f"{t}/{k}" for t, k in owned if (t, k) not in held or held[(t, k)].value != expected[(t, k)]]
    return len(owned), missing


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    path.chmod(0o755)  # the embedded PostgreSQL runs as its own user


async def run_demo(data_dir: Path, keys: int, log_level: str = "WARNING") -> int:
    await asyncio.to_thread(_fresh_dir, data_dir)
    cluster = LocalCluster(data_dir, storage_nodes=3, coordinators=2, log_level=log_level)
    print(f"pairdb demo: starting a fresh cluster in {data_dir}", flush=True)
    await cluster.start()
    clients = [cluster.client(0), cluster.client(1)]
    try:
        print(f"  coordinators {', '.join(c.address for c in cluster.coordinator_procs)}")
        print(f"  temporal UI  {cluster.temporal_server.ui_url}", flush=True)
        for tenant, rf in TENANTS.items():
            await clients[0].create_tenant(tenant, rf)
        print(f"loading {keys:,} keys over tenants {', '.join(TENANTS)} ...", flush=True)
        expected = await _load(clients[0], data_dir, keys)

        node4 = await cluster.add_storage_node("node-4")
        traffic = Traffic(clients)
        traffic.start()
        await asyncio.sleep(1)
        print(f"adding node-4 at {node4.address} while clients write and read ...", flush=True)
        started = time.monotonic()
        added = await clients[0].add_node("node-4", "127.0.0.1", node4.port)
        status = await clients[0].migration(added.migration_id)
        last_line = ""
        while not status.ended:
            line = progress.bar(status)
            if line != last_line:
                print(f"  {line}", flush=True)
                last_line = line
            await asyncio.sleep(1)
            status = await clients[1].migration(added.migration_id)
        duration = time.monotonic() - started
        await asyncio.sleep(0.5)
        await traffic.stop()
        print(f"  {progress.bar(status)}")
        print(
            f"migration {status.status} in {duration:.1f} s; checking every acknowledged write ...",
            flush=True,
        )

        expected.update(traffic.acknowledged)
        lost = await _check_quorum(clients, expected)
        owned, missing = await _check_new_node(cluster, expected)
        url = cluster.temporal_server.workflow_url(m.workflow_id("node-4"))
        print()
        print("summary")
        print(f"  migration            {status.status} (phase {status.phase})")
        print(f"  keys moved           {status.keys_copied:,} ({status.ranges_done} ranges)")
        print(f"  duration             {duration:.1f} s")
        print(
            f"  client operations    {traffic.writes:,} writes, {traffic.reads:,} reads during the migration"
        )
        print(f"  client errors        {len(traffic.errors)}")
        print(f"  keys checked         {len(expected):,} at QUORUM; {owned:,} on node-4 itself")
        print(f"  missing on node-4    {len(missing)}")
        print(f"  lost writes: {len(lost)}")
        print(f"  workflow             {url}")
        for line in (lost + missing + traffic.errors)[:10]:
            print(f"    {line}")
        ok = status.status == "completed" and not lost and not missing
        return 0 if ok else 1
    finally:
        for client in clients:
            await client.close()
        print("stopping the cluster ...", flush=True)
        await cluster.stop()
