"""Chaos: add a node under client load while faults are injected, then check the history.

    python bench/chaos.py --schedules N --seed S [--keys K] [--minutes M] [--kinds a,b]

Each schedule starts a fresh local cluster (PostgreSQL, Temporal dev server,
three storage nodes behind TCP proxies, two coordinators, a worker), loads
data, starts clients that write, overwrite, delete and read through both
coordinators, adds node-4, and injects faults drawn from the seed at points of
the migration. Every operation is recorded; after the cluster converges the
checker (pairdb/checker.py) reads every key back and judges the history.
Exit status 1 on any violation, with the seed and the offending keys'
histories.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client as TemporalClient
from temporalio.client import WorkflowExecutionStatus

from coordinator.metadata import Metadata
from coordinator.ring import Ring
from pairdb import logs
from pairdb import migration as m
from pairdb.checker import DELETE, GET, PUT, FinalRead, History, Verdict, check_key, newest_acknowledged
from pairdb.client import Client, ClientError, MigrationStatus, Value
from pairdb.cluster import LocalCluster
from pairdb.keyspace import token
from storage_node.client import StorageError

KILLS = (
    "kill_joining_node",
    "kill_old_replica",
    "kill_coordinator",
    "kill_worker",
    "kill_temporal",
    "kill_postgres",
)
NETWORK = ("net_latency", "net_drop", "net_unreachable", "net_one_way")
CONTROL = ("cancel_readd", "rollback_readd")
KINDS = KILLS + NETWORK + CONTROL
TENANTS = {"chaos-a": 3, "chaos-b": 2}
T = TypeVar("T")
THROTTLE = 400  # keys/s: keeps the copy running long enough for faults to land in it


@dataclass
class Result:
    index: int
    seed: int
    faults: list[str]
    operations: int = 0
    acknowledged: int = 0
    verdict: Verdict = field(default_factory=Verdict)
    migrations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_dir: str = ""

    def line(self) -> str:
        v = self.verdict
        return (
            f"schedule {self.index:>2} seed={self.seed} faults={','.join(self.faults)} ops={self.operations} "
            f"acked={self.acknowledged} lost={len(v.lost)} resurrected={len(v.resurrected)} "
            f"phantom={len(v.phantom)} stuck={len(v.stuck)} migrations={','.join(self.migrations)} "
            f"({self.seconds:.0f} s)"
        )


class Workload:
    """Clients that write, overwrite, delete and read through every coordinator, recording each operation."""

    def __init__(self, clients: list[Client], history: History, keys: int, rng: random.Random) -> None:
        self.clients = clients
        self.history = history
        self.keys = keys
        self.rng = rng
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, workers: int = 6) -> None:
        self._tasks = [
            asyncio.ensure_future(self._run(w, random.Random(self.rng.random()))) for w in range(workers)
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, worker: int, rng: random.Random) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            tenant = rng.choice(list(TENANTS))
            key = f"k{rng.randrange(self.keys)}"
            c = (worker + n) % len(self.clients)
            roll = rng.random()
            kind = PUT if roll < 0.6 else DELETE if roll < 0.75 else GET
            op = self.history.begin(kind, tenant, key, c)
            try:
                if kind == PUT:
                    op.value = f"op{op.id}".encode()
                    History.ok(op, await self.clients[c].put(tenant, key, op.value))
                elif kind == DELETE:
                    History.ok(op, await self.clients[c].delete(tenant, key))
                else:
                    got = await self.clients[c].get(tenant, key)
                    History.ok(op, got.version)
            except ClientError as exc:
                History.failed(op, f"{exc.code.name}: {exc.message[:120]}")
            except Exception as exc:  # a client-side failure is recorded, never fatal
                History.failed(op, repr(exc)[:120])
            await asyncio.sleep(0.003)


async def _retry(call: Callable[[], Awaitable[MigrationStatus]], attempts: int = 60) -> MigrationStatus:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await call()
        except ClientError as exc:
            last = exc
            await asyncio.sleep(0.5)
    raise RuntimeError(f"no coordinator answered: {last}")


class Schedule:
    def __init__(
        self,
        index: int,
        seed: int,
        keys: int,
        minutes: float,
        kinds: list[str] | None,
        sabotage: Callable[[LocalCluster], Awaitable[None]] | None = None,
    ) -> None:
        # sabotage: breaks the system on purpose before the check (tests prove the checker can fail).
        self.sabotage = sabotage
        self.index = index
        self.seed = seed
        self.rng = random.Random(seed * 1_000_003 + index)
        self.keys = keys
        self.deadline = time.monotonic() + minutes * 60
        # Every kind comes up within len(KINDS) schedules; one more is drawn at random.
        first = KINDS[(seed + index) % len(KINDS)]
        extra = self.rng.choice([k for k in KILLS + NETWORK if k != first])
        self.faults = kinds or [first, extra]
        self.result = Result(index, seed, self.faults)

    async def run(self) -> Result:
        started = time.monotonic()
        path = await asyncio.to_thread(_fresh_dir)
        self.result.log_dir = str(path / "logs")
        cluster = LocalCluster(path, storage_nodes=3, coordinators=2, proxies=True, log_level="WARNING")
        await cluster.start()
        clients = [Client(c.address, timeout=5) for c in cluster.coordinator_procs]
        history = History()
        try:
            for tenant, rf in TENANTS.items():
                await clients[0].create_tenant(tenant, rf)
            workload = Workload(clients, history, self.keys, self.rng)
            await self._load(clients[0], history)
            workload.start()
            try:
                await self._migrate(cluster, clients)
            except Exception as exc:  # a migration that cannot end is a finding, not a harness crash
                self.result.verdict.stuck.append(f"migration did not end: {type(exc).__name__}: {exc}")
            await workload.stop()
            await self._heal(cluster)
            if self.sabotage is not None:
                await self.sabotage(cluster)
            stuck = self.result.verdict.stuck
            self.result.verdict = await self._check(cluster, clients, history)
            self.result.verdict.stuck[:0] = stuck
        finally:
            for client in clients:
                await client.close()
            await cluster.stop()
            if self.result.verdict.ok:
                shutil.rmtree(path, ignore_errors=True)
        self.result.operations = len(history.ops)
        self.result.acknowledged = history.acknowledged
        self.result.seconds = time.monotonic() - started
        return self.result

    async def _load(self, client: Client, history: History) -> None:
        sem = asyncio.Semaphore(32)

        async def put(tenant: str, i: int) -> None:
            async with sem:
                op = history.begin(PUT, tenant, f"k{i}", 0)
                op.value = f"op{op.id}".encode()
                try:
                    History.ok(op, await client.put(tenant, f"k{i}", op.value))
                except ClientError as exc:
                    History.failed(op, exc.message)

        await asyncio.gather(*(put(t, i) for t in TENANTS for i in range(self.keys)))

    async def _migrate(self, cluster: LocalCluster, clients: list[Client]) -> None:
        node4 = await cluster.add_storage_node("node-4")
        control = next((f for f in self.faults if f in CONTROL), None)
        added = await clients[0].add_node(
            "node-4",
            "127.0.0.1",
            node4.advertised_port,
            throttle_keys_per_second=THROTTLE,
            hold_at_cutover=control == "rollback_readd",
        )
        injections = [
            asyncio.ensure_future(self._inject(kind, cluster, clients, added.migration_id))
            for kind in self.faults
            if kind not in CONTROL
        ]
        if control is not None:
            injections.append(asyncio.ensure_future(self._control(control, clients, added.migration_id)))
        await asyncio.gather(*injections)
        status = await self._finish(clients, added.migration_id)
        self.result.migrations.append(status.status)
        if status.status in (m.S_CANCELLED, m.S_ROLLED_BACK, m.S_FAILED):
            again = await _retry_add(clients, node4.advertised_port)
            self.result.migrations.append((await self._finish(clients, again)).status)

    async def _finish(self, clients: list[Client], migration_id: str) -> MigrationStatus:
        with contextlib.suppress(ClientError):
            await clients[0].throttle_migration(migration_id, 0)
        while time.monotonic() < self.deadline:
            status = await _retry(lambda: _any(clients, lambda c: c.migration(migration_id)))
            if status.ended:
                return status
            await asyncio.sleep(0.5)
        raise TimeoutError(f"migration {migration_id} did not end in time")

    async def _wait_phase(self, clients: list[Client], migration_id: str, phases: tuple[str, ...]) -> bool:
        while time.monotonic() < self.deadline:
            status = await _retry(lambda: _any(clients, lambda c: c.migration(migration_id)))
            if status.phase in phases:
                return True
            if status.ended:
                return False
            await asyncio.sleep(0.2)
        return False

    async def _inject(
        self, kind: str, cluster: LocalCluster, clients: list[Client], migration_id: str
    ) -> None:
        phases = (
            (m.DATA_COPY,) if kind in ("kill_joining_node", "kill_worker") else (m.DUAL_WRITE, m.DATA_COPY)
        )
        if not await self._wait_phase(clients, migration_id, phases):
            return
        await asyncio.sleep(self.rng.uniform(0, 1.5))
        outage = self.rng.uniform(1.0, 3.0)
        victim = self.rng.choice(["node-1", "node-2", "node-3"])
        if kind == "kill_joining_node":
            await cluster.kill_storage_node("node-4")
            await asyncio.sleep(outage)
            await cluster.restart_storage_node("node-4")
        elif kind == "kill_old_replica":
            await cluster.kill_storage_node(victim)
            await asyncio.sleep(outage)
            await cluster.restart_storage_node(victim)
        elif kind == "kill_coordinator":
            i = self.rng.randrange(len(cluster.coordinator_procs))
            await cluster.coordinator_procs[i].process.kill()
            await asyncio.sleep(outage)
            await cluster.restart_coordinator(i)
        elif kind == "kill_worker":
            assert cluster.worker is not None
            await cluster.worker.kill()
            await asyncio.sleep(outage)
            await cluster.start_worker()
        elif kind == "kill_temporal":
            await cluster.temporal_server.kill()
            await asyncio.sleep(outage)
            await cluster.temporal_server.start()
        elif kind == "kill_postgres":
            cluster.postgres.kill()
            await asyncio.sleep(outage)
            await _restart_postgres(cluster)
        else:
            proxy = cluster.nodes[self.rng.choice([victim, "node-4"])].proxy
            assert proxy is not None
            if kind == "net_latency":
                proxy.latency, proxy.jitter = self.rng.uniform(0.02, 0.2), 0.05
            elif kind == "net_drop":
                for _ in range(3):
                    proxy.drop_connections()
                    await asyncio.sleep(outage / 3)
            elif kind == "net_unreachable":
                proxy.block()
            elif kind == "net_one_way":
                proxy.one_way = True
            await asyncio.sleep(outage)
            proxy.heal()

    async def _control(self, kind: str, clients: list[Client], migration_id: str) -> None:
        if kind == "cancel_readd":
            phase = self.rng.choice([m.DUAL_WRITE, m.DATA_COPY])
            if await self._wait_phase(clients, migration_id, (phase, m.DATA_COPY)):
                with contextlib.suppress(ClientError):
                    await _any(clients, lambda c: c.cancel_migration(migration_id))
        elif await self._wait_phase(clients, migration_id, (m.CUTOVER,)):
            await asyncio.sleep(self.rng.uniform(0, 1))
            await _any(clients, lambda c: c.rollback_migration(migration_id))

    async def _heal(self, cluster: LocalCluster) -> None:
        if cluster.postgres.pid is None:
            await _restart_postgres(cluster)
        if cluster.temporal_server.pid is None:
            await cluster.temporal_server.start()
        for node in cluster.nodes.values():
            if node.proxy is not None:
                node.proxy.heal()
            if not node.process.running:
                await cluster.restart_storage_node(node.node_id)
        for i, c in enumerate(cluster.coordinator_procs):
            if not c.process.running:
                await cluster.restart_coordinator(i)

    async def _check(self, cluster: LocalCluster, clients: list[Client], history: History) -> Verdict:
        verdict = Verdict()
        metadata = await Metadata.connect(cluster.dsn)
        try:
            snap = await metadata.snapshot()
            rows = await metadata.pool.fetch(
                "SELECT migration_id, workflow_id, status, phase FROM migrations"
            )
        finally:
            await metadata.close()
        # Stuck: every migration ended, the registry holds none, and no workflow still runs.
        temporal = await TemporalClient.connect(cluster.temporal_server.address)
        for row in rows:
            if row["status"] not in m.TERMINAL_STATUSES:
                verdict.stuck.append(f"migration {row['migration_id']} is {row['status']} in {row['phase']}")
        for workflow_id in {r["workflow_id"] for r in rows}:
            # The workflow returns just after its last activity recorded the outcome: allow it that moment.
            for _ in range(60):
                described = await temporal.get_workflow_handle(workflow_id).describe()
                if described.status != WorkflowExecutionStatus.RUNNING:
                    break
                await asyncio.sleep(0.5)
            else:
                verdict.stuck.append(f"workflow {workflow_id} still running 30 s after its migration ended")
        if snap.in_flight is not None:
            verdict.stuck.append(f"registry still holds migration {snap.in_flight.migration_id}")

        ring = Ring.from_tokens((t, n) for t, n in snap.tokens if snap.nodes[n].status == "active")
        storage = {n: cluster.nodes[n].client() for n in ring.node_ids}

        async def holders(key: tuple[str, str], version: tuple[int, int]) -> tuple[int, list[str]]:
            replicas = ring.replicas(token(*key), TENANTS[key[0]])
            lacking = []
            for node in replicas:
                try:
                    record = await storage[node].get(*key)
                except StorageError:
                    record = None
                if record is None or (record.version.hlc, record.version.origin) < version:
                    lacking.append(node)
            return len(replicas) - len(lacking), lacking

        try:
            keys = list(history.by_key().items())
            for i, (key, ops) in enumerate(keys):
                newest = newest_acknowledged(ops)
                rf = TENANTS[key[0]]
                # Durability first, before a read repairs anything: a quorum holds the newest acknowledged op.
                holding = rf
                if newest is not None and newest.version is not None:
                    holding, _ = await holders(key, newest.version)
                got = await _read(clients, key, i)
                check_key(
                    key, ops, FinalRead(got.found, got.value, got.version, holding, rf // 2 + 1), verdict
                )
            # Convergence: after the reads (and their read repair), every replica, node-4 included, holds it.
            await asyncio.sleep(1)
            for key, ops in keys:
                newest = newest_acknowledged(ops)
                if newest is None or newest.version is None or key in verdict.evidence:
                    continue
                _, lacking = await holders(key, newest.version)
                if lacking:
                    verdict.lost.append(
                        f"{key[0]}/{key[1]}: replicas {lacking} lack #{newest.id} after read repair"
                    )
                    verdict.evidence[key] = ops
        finally:
            for c in storage.values():
                await c.close()
        return verdict


async def _restart_postgres(cluster: LocalCluster) -> None:
    """Start PostgreSQL again after a kill -9; its killed backends may take a moment to go."""
    for attempt in range(10):
        try:
            await cluster.postgres.start()
            return
        except RuntimeError:
            if attempt == 9:
                raise
            await asyncio.sleep(1)


def _fresh_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="pairdb-chaos-"))
    path.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    return path


async def _any(clients: list[Client], call: Callable[[Client], Awaitable[T]]) -> T:
    """The first coordinator that answers (one may be down)."""
    last: ClientError | None = None
    for client in clients:
        try:
            return await call(client)
        except ClientError as exc:
            last = exc
    assert last is not None
    raise last


async def _retry_add(clients: list[Client], port: int) -> str:
    for _ in range(60):
        try:
            added = await _any(clients, lambda c: c.add_node("node-4", "127.0.0.1", port))
            return added.migration_id
        except ClientError:
            await asyncio.sleep(0.5)
    raise RuntimeError("could not add node-4 again")


async def _read(clients: list[Client], key: tuple[str, str], i: int) -> Value:
    for attempt in range(60):
        try:
            return await clients[(i + attempt) % len(clients)].get(*key)
        except ClientError:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"no QUORUM read of {key} succeeded")


async def run(schedules: int, seed: int, keys: int, minutes: float, kinds: list[str] | None) -> int:
    tally: Counter[str] = Counter()
    results = []
    for index in range(schedules):
        result = await Schedule(index, seed, keys, minutes, kinds).run()
        results.append(result)
        tally.update(result.faults)
        print(result.line(), flush=True)
        if not result.verdict.ok:
            _report(result)
    lost = sum(len(r.verdict.lost) + len(r.verdict.phantom) for r in results)
    resurrected = sum(len(r.verdict.resurrected) for r in results)
    stuck = sum(len(r.verdict.stuck) for r in results)
    print("faults by kind: " + ", ".join(f"{k}={tally[k]}" for k in KINDS))
    operations, acknowledged = sum(r.operations for r in results), sum(r.acknowledged for r in results)
    print(
        f"schedules={schedules} faults={sum(tally.values())} operations={operations} "
        f"acknowledged={acknowledged} lost={lost} resurrected={resurrected} stuck={stuck}"
    )
    return 0 if lost == resurrected == stuck == 0 else 1


def _report(result: Result) -> None:
    v = result.verdict
    rerun = f"--seed {result.seed} --schedules {result.index + 1}"
    print(f"  VIOLATION in schedule {result.index} (re-run: {rerun}); logs kept in {result.log_dir}")
    for line in (v.stuck + v.resurrected + v.phantom + v.lost)[:20]:
        print(f"    {line}")
    for key, ops in list(v.evidence.items())[:5]:
        print(f"    history of {key[0]}/{key[1]}:")
        for op in ops[-12:]:
            print(f"      {op.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=20, help="schedules to run (default %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for every random choice (default %(default)s)"
    )
    parser.add_argument("--keys", type=int, default=1000, help="keys per tenant (default %(default)s)")
    parser.add_argument(
        "--minutes", type=float, default=4, help="time limit per schedule (default %(default)s)"
    )
    parser.add_argument(
        "--kinds", default="", help=f"comma-separated fault kinds instead of drawn ones: {', '.join(KINDS)}"
    )
    args = parser.parse_args()
    logs.configure(json=False, level="WARNING")
    kinds = [k for k in args.kinds.split(",") if k] or None
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    sys.exit(asyncio.run(run(args.schedules, args.seed, args.keys, args.minutes, kinds)))


if __name__ == "__main__":
    main()
