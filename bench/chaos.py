"""Chaos: change the ring under client load while faults are injected, then check the history.

    python bench/chaos.py --schedules N --seed S [--keys K] [--minutes M] [--kinds a,b]
                          [--operations add,remove,replace,set_rf] [--only I]

Each schedule starts a fresh local cluster (PostgreSQL, Temporal dev server,
three storage nodes behind TCP proxies — four for a removal or replacement —,
two coordinators that each reach PostgreSQL through a proxy of their own, a
worker), loads data, starts clients that write, overwrite, delete and read
through both coordinators, and runs one ring change and then an anti-entropy
repair (with tombstone GC: the tenants' grace period is GC_GRACE_SECONDS), the schedules taking the
operations in turn: add node-4; remove node-4 (live); replace node-4, first
killed with kill -9 and its data deleted, by node-5; or change a tenant's
replication factor (2 -> 3, or 3 -> 2). Faults drawn from the seed are injected,
each in a phase of the change drawn too (dual_write, data_copy, cutover or
cleanup; schedules with a fault in cutover or cleanup hold the change at
cutover until it has landed); "the joining node" is the node added, removed
or replacing. Every
third schedule writes only, so its replicas are checked before any read has
repaired them. Every operation is recorded with its real-time interval; after
the faults heal the harness reads every key once more and the checker
(bench/checker.py) judges the whole history per key: linearizable, nothing
lost, nothing resurrected, no stale read, durable on a quorum, no migration
stuck; then, after a second repair, that every replica holds what the final
reads returned. Exit status 1 on any violation, with the seed and the offending keys'
histories.
"""

from __future__ import annotations

import os

# This script starts servers (fork, then exec) while its gRPC channels run: gRPC's fork handlers
# could crash a child before its exec. Off before grpc loads, as in every process pairdb starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client as TemporalClient
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

if __package__ in (None, ""):  # run as `python bench/chaos.py`: the repository is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.checker import DELETE, GET, PUT, Durability, History, Op, Verdict, check_key, last_acknowledged
from pairdb.client import NO_RETRY, Client, ClientError
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.quorum import Consistency, required
from pairdb.coordinator.ring import Ring
from pairdb.kernel import migration as m
from pairdb.kernel.clocks import CLOCK_OFFSET_ENV
from pairdb.kernel.keyspace import token
from pairdb.kernel.migration import TERMINAL, NodeState, Phase, Status
from pairdb.kernel.sabotage import SABOTAGE_ENV
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from pairdb.serving import logs
from pairdb.storage_node.client import StorageError

KILLS = (
    "kill_joining_node",
    "kill_old_replica",
    "kill_coordinator",
    "kill_worker",
    "kill_temporal",
    "kill_postgres",
)
PAUSES = ("pause_coordinator", "pause_storage_node")
NETWORK = ("net_latency", "net_drop", "net_unreachable", "net_one_way", "partition_coordinator_pg")
CLOCK = ("clock_skew",)
CONTROL = (
    "cancel_readd",
    "rollback_readd",
    "terminate_workflow",
    "cancel_during_compensation",
    "double_stop",
)
KINDS = KILLS + PAUSES + NETWORK + CLOCK + CONTROL
PHASES = (Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CUTOVER, Phase.CLEANUP)
# Where each control fault may land: a stop asks for what that phase allows.
CONTROL_PHASES = {
    "cancel_readd": (Phase.DUAL_WRITE, Phase.DATA_COPY),
    "rollback_readd": (Phase.CUTOVER,),
    "terminate_workflow": PHASES,
    "cancel_during_compensation": (Phase.DATA_COPY, Phase.CUTOVER),
    "double_stop": (Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CUTOVER),
}
TENANTS = {"chaos-a": 3, "chaos-b": 2}
# The tenants' tombstone grace period: short, so the repair each schedule runs purges the deletes of
# its first seconds; longer than any write may stay in flight here (a pause past the lease and a
# storage call's deadline), as a grace period must be.
GC_GRACE_SECONDS = 20
OPERATIONS = ("add", "remove", "replace", "set_rf")
T = TypeVar("T")
THROTTLE = 400  # keys/s: keeps the copy running long enough for faults to land in it
LEASE = 5.0  # coordinator lease: a pause or a partition from PostgreSQL outlives it
SKEW_MS = (250, 450)  # coordinator-2 runs ahead by this much, within the 500 ms maximum offset
STEP_BACK_MS = 600  # and its clock steps back this much when it restarts


@dataclass
class Fault:
    kind: str
    phase: str
    # Its own random choices (victim, duration...), drawn in one order whatever the timing.
    rng: random.Random = field(default_factory=random.Random, repr=False)
    landed: str = ""  # the phase it actually began in ("" when the migration ended first)

    def __str__(self) -> str:
        return f"{self.kind}@{self.landed or self.phase + '?'}"


@dataclass
class Result:
    index: int
    seed: int
    faults: list[Fault]
    write_only: bool
    operation: str = "add"
    operations: int = 0
    acknowledged: int = 0
    verdict: Verdict = field(default_factory=Verdict)
    migrations: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    purged: int = 0
    seconds: float = 0.0
    log_dir: str = ""

    def line(self) -> str:
        v = self.verdict
        return (
            f"schedule {self.index:>2} seed={self.seed} {self.operation} "
            f"faults={','.join(map(str, self.faults))}"
            f"{' write-only' if self.write_only else ''} ops={self.operations} acked={self.acknowledged} "
            f"lost={len(v.lost)} resurrected={len(v.resurrected)} stale={len(v.stale_reads)} "
            f"nonlinearizable={len(v.nonlinearizable)} phantom={len(v.phantom)} stuck={len(v.stuck)} "
            f"unchecked={len(v.unchecked)} migrations={','.join(self.migrations)} "
            f"repairs={','.join(self.repairs)} purged={self.purged} ({self.seconds:.0f} s)"
        )


class Workload:
    """Clients that write, overwrite, delete (and read) through every coordinator, recording every op."""

    def __init__(
        self, clients: list[Client], history: History, keys: int, rng: random.Random, reads: bool
    ) -> None:
        self.clients = clients
        self.history = history
        self.keys = keys
        self.rng = rng
        self.reads = reads
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
            roll = rng.random() * (1.0 if self.reads else 0.75)
            kind = PUT if roll < 0.6 else "delete" if roll < 0.75 else GET
            op = self.history.begin(kind, tenant, key, c)
            try:
                if kind == PUT:
                    op.value = f"op{op.id}".encode()
                    History.ok(op, await self.clients[c].put(tenant, key, op.value))
                elif kind == GET:
                    got = await self.clients[c].get(tenant, key)
                    History.ok(op, got.version, found=got.found, value=got.value)
                else:
                    History.ok(op, await self.clients[c].delete(tenant, key))
            except ClientError as exc:
                History.failed(op, f"{exc.code.name}: {exc.message[:120]}")
            except Exception as exc:  # a client-side failure is recorded, never fatal
                History.failed(op, repr(exc)[:120])
            await asyncio.sleep(0.003)


class Schedule:
    def __init__(
        self,
        index: int,
        seed: int,
        keys: int,
        minutes: float,
        kinds: list[str] | None,
        *,
        phases: list[str] | None = None,
        write_only: bool | None = None,
        sabotage: Callable[[LocalCluster], Awaitable[None]] | None = None,
        sabotage_env: str = "",
        repair: bool = True,
        operation: str = "add",
    ) -> None:
        # sabotage: breaks the system on purpose before the check; sabotage_env: PAIRDB_SABOTAGE for
        # every process (tests prove the checker catches what each safeguard prevents).
        self.sabotage = sabotage
        self.sabotage_env = sabotage_env
        # An anti-entropy repair (and its tombstone GC) after the ring change, under the same load.
        # Not in write-only schedules: it would copy a write that reached too few replicas to the
        # others before the check could see that it had.
        self.repair = repair
        self.index = index
        self.seed = seed
        self.operation = operation
        # The node the change adds, removes, or that replaces node-4 (kill_joining_node's target).
        self.moving = "node-5" if operation == "replace" else "node-4" if operation != "set_rf" else "node-3"
        self.dead: set[str] = set()  # killed for good: never restarted by the heal
        self._workflow_id = ""
        self.rng = random.Random(seed * 1_000_003 + index)
        self.keys = keys
        self.minutes = minutes
        self.deadline = 0.0
        # Every kind comes up within len(KINDS) schedules; one more is drawn at random.
        first = KINDS[(seed + index) % len(KINDS)]
        extra = self.rng.choice([k for k in KILLS + PAUSES + NETWORK + CLOCK if k != first])
        chosen = kinds or [first, extra]
        drawn = [self.rng.choice(CONTROL_PHASES.get(k, PHASES)) for k in chosen]
        self.faults = [
            Fault(k, p, random.Random(self.rng.random()))
            for k, p in zip(chosen, phases or drawn, strict=False)
        ]
        self.write_only = (index % 3 == 2) if write_only is None else write_only
        self.skew_ms = self.rng.randint(*SKEW_MS)
        self.workload_seed = self.rng.random()
        self.result = Result(index, seed, self.faults, self.write_only, operation)
        self._metadata: Metadata | None = None
        self._phases: dict[str, str] = {}  # migration id -> the phase last seen

    @property
    def control(self) -> Fault | None:
        return next((f for f in self.faults if f.kind in CONTROL), None)

    async def run(self) -> Result:
        started = time.monotonic()
        self.deadline = started + self.minutes * 60
        path = await asyncio.to_thread(_fresh_dir)
        self.result.log_dir = str(path / "logs")
        with _environment(SABOTAGE_ENV, self.sabotage_env):
            cluster = LocalCluster(
                path,
                storage_nodes=4 if self.operation in ("remove", "replace") else 3,
                coordinators=1,
                proxies=True,
                postgres_proxies=True,
                coordinator_lease_seconds=LEASE,
                log_level="WARNING",
            )
            await cluster.start()
        history = History()
        clients: list[Client] = []
        checked = False
        try:
            with _environment(SABOTAGE_ENV, self.sabotage_env):
                await cluster.start_coordinator(free_port(), env=self._coordinator_2_env(self.skew_ms))
            clients = [
                cluster.connect(c.address, timeout=5, retry=NO_RETRY) for c in cluster.coordinator_procs
            ]
            self._metadata = await Metadata.connect(cluster.dsn, min_size=0)  # PostgreSQL may be killed
            for tenant, rf in TENANTS.items():
                await clients[0].create_tenant(tenant, rf, gc_grace_seconds=GC_GRACE_SECONDS)
            workload = Workload(
                clients, history, self.keys, random.Random(self.workload_seed), reads=not self.write_only
            )
            await self._load(clients[0], history)
            workload.start()
            try:
                await self._migrate(cluster, clients)
            except Exception as exc:  # a migration that cannot end is a finding, not a harness crash
                self.result.verdict.stuck.append(f"migration did not end: {type(exc).__name__}: {exc}")
            try:
                if self.repair and not self.write_only:
                    await self._repair(clients)
            except Exception as exc:
                self.result.verdict.stuck.append(f"repair did not end: {type(exc).__name__}: {exc}")
            await workload.stop()
            stuck = self.result.verdict.stuck
            try:
                await self._heal(cluster)
                if self.sabotage is not None:
                    await self.sabotage(cluster)
                self.result.verdict = await self._check(cluster, clients, history)
                checked = True
            except Exception as exc:  # a check that cannot finish proves nothing: report it, keep the logs
                self.result.verdict.unchecked.append(f"the check failed: {type(exc).__name__}: {exc}")
            self.result.verdict.stuck[:0] = stuck
        finally:
            for client in clients:
                await client.close()
            if self._metadata is not None:
                await self._metadata.close()
            await cluster.stop()
            if checked and self.result.verdict.ok:
                shutil.rmtree(path, ignore_errors=True)
        self.result.operations = len(history.ops)
        self.result.acknowledged = history.acknowledged
        self.result.seconds = time.monotonic() - started
        return self.result

    def _coordinator_2_env(self, offset_ms: int) -> dict[str, str] | None:
        if not any(f.kind == "clock_skew" for f in self.faults):
            return None
        return {CLOCK_OFFSET_ENV: str(offset_ms)}

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

    # -- the migration and its faults ------------------------------------------------------------

    async def _migrate(self, cluster: LocalCluster, clients: list[Client]) -> None:
        hold = any(f.phase in (Phase.CUTOVER, Phase.CLEANUP) for f in self.faults)
        if self.operation == "add":
            await cluster.add_storage_node("node-4")
        elif self.operation == "replace":
            await cluster.kill_storage_node("node-4")  # the disk died with it
            self.dead.add("node-4")
            await asyncio.to_thread(shutil.rmtree, cluster.data_dir / "nodes" / "node-4")
            await cluster.add_storage_node("node-5")
        migration_id = await _any(clients, lambda c: self._start(c, cluster, hold))
        injections: list[tuple[asyncio.Future[None], Fault]] = []
        for phase in PHASES:
            if not await self._reached(migration_id, phase):
                break
            if phase == Phase.CLEANUP:
                continue  # cleanup faults start with the resume below
            fired = self._fire(phase, cluster, clients, migration_id)
            injections += fired
            if phase == Phase.CUTOVER and hold:
                # A stop asked in cutover must reach the workflow before the resume does.
                stops = [f for f, fault in fired if fault.kind in CONTROL]
                await asyncio.gather(*stops, return_exceptions=True)
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                if await self._resume(clients, migration_id) and await self._reached(
                    migration_id, Phase.CLEANUP
                ):
                    injections += self._fire(Phase.CLEANUP, cluster, clients, migration_id)
        outcomes = await asyncio.gather(*(f for f, _ in injections), return_exceptions=True)
        for (_, fault), outcome in zip(injections, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # A process that does not come back is a finding; the migration is still judged.
                self.result.verdict.stuck.append(f"{fault}: {type(outcome).__name__}: {str(outcome)[:300]}")
        status = await self._finish(clients, migration_id)
        self.result.migrations.append(status.status)
        if status.status in (Status.CANCELLED, Status.ROLLED_BACK, Status.FAILED):
            again = await self._retry(clients, cluster)
            self.result.migrations.append((await self._finish(clients, again)).status)

    async def _start(
        self, client: Client, cluster: LocalCluster, hold: bool, throttle: int = THROTTLE
    ) -> str:
        """Ask for this schedule's ring change; its migration id."""
        if self.operation == "add":
            port = cluster.nodes["node-4"].advertised_port
            self._workflow_id = m.workflow_id("node-4")
            added = await client.add_node(
                "node-4", "127.0.0.1", port, hold_at_cutover=hold, throttle_keys_per_second=throttle
            )
            return added.migration_id
        if self.operation == "remove":
            started = await client.remove_node(
                "node-4", hold_at_cutover=hold, throttle_keys_per_second=throttle
            )
        elif self.operation == "replace":
            port = cluster.nodes["node-5"].advertised_port
            started = await client.replace_node(
                "node-4", "node-5", "127.0.0.1", port, hold_at_cutover=hold, throttle_keys_per_second=throttle
            )
        else:
            tenant, rf = ("chaos-b", 3) if self.index % 2 == 0 else ("chaos-a", 2)
            started = await client.set_replication_factor(
                tenant, rf, hold_at_cutover=hold, throttle_keys_per_second=throttle
            )
        self._workflow_id = started.workflow_id
        return started.migration_id

    async def _retry(self, clients: list[Client], cluster: LocalCluster) -> str:
        """The same ring change again, once the stopped one let go of its node (or tenant)."""
        for _ in range(120):
            try:
                return await _any(clients, lambda c: self._start(c, cluster, hold=False, throttle=0))
            except ClientError:
                await asyncio.sleep(0.5)
        raise RuntimeError(f"could not start the {self.operation} again")

    def _fire(
        self, phase: str, cluster: LocalCluster, clients: list[Client], migration_id: str
    ) -> list[tuple[asyncio.Future[None], Fault]]:
        started: list[tuple[asyncio.Future[None], Fault]] = []
        for fault in self.faults:
            if fault.phase == phase:
                fault.landed = self._phase_now(migration_id)
                task = asyncio.ensure_future(self._inject(fault, cluster, clients, migration_id))
                started.append((task, fault))
        return started

    async def _inject(
        self, fault: Fault, cluster: LocalCluster, clients: list[Client], migration_id: str
    ) -> None:
        kind, rng = fault.kind, fault.rng
        await asyncio.sleep(rng.uniform(0, 0.5))
        row = await self._row(migration_id)
        fault.landed = row[0] if row is not None else fault.landed
        outage = rng.uniform(1.0, 3.0)
        beyond_lease = LEASE + rng.uniform(1.0, 3.0)
        victim = rng.choice(["node-1", "node-2", "node-3"])
        i = rng.randrange(len(cluster.coordinator_procs))
        if kind in CONTROL:
            await self._control(kind, rng, clients, migration_id, cluster)
        elif kind == "kill_joining_node":
            await cluster.kill_storage_node(self.moving)
            await asyncio.sleep(outage)
            await cluster.restart_storage_node(self.moving)
        elif kind == "kill_old_replica":
            await cluster.kill_storage_node(victim)
            await asyncio.sleep(outage)
            await cluster.restart_storage_node(victim)
        elif kind == "kill_coordinator":
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
        elif kind == "pause_coordinator":
            # Frozen with requests in flight, for longer than its lease: barriers move on without it.
            cluster.coordinator_procs[i].process.pause()
            await asyncio.sleep(beyond_lease)
            cluster.coordinator_procs[i].process.resume()
        elif kind == "pause_storage_node":
            node = cluster.nodes[rng.choice([victim, self.moving])].process
            node.pause()
            await asyncio.sleep(outage)
            node.resume()
        elif kind == "partition_coordinator_pg":
            proxy = cluster.coordinator_procs[i].pg_proxy
            assert proxy is not None
            if rng.random() < 0.5:
                proxy.hold()  # queries hang, then arrive late
            else:
                proxy.block()
            await asyncio.sleep(beyond_lease)
            proxy.heal()
        elif kind == "clock_skew":
            # Coordinator 2 has run ahead since the start; now its clock steps back across a restart.
            await cluster.coordinator_procs[1].process.kill()
            await cluster.restart_coordinator(1, env=self._coordinator_2_env(self.skew_ms - STEP_BACK_MS))
        else:
            proxy = cluster.nodes[rng.choice([victim, self.moving])].proxy
            assert proxy is not None
            if kind == "net_latency":
                proxy.latency, proxy.jitter = rng.uniform(0.02, 0.2), 0.05
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

    async def _control(
        self, kind: str, rng: random.Random, clients: list[Client], migration_id: str, cluster: LocalCluster
    ) -> None:
        in_cutover = self._phase_now(migration_id) == Phase.CUTOVER

        async def workflow() -> WorkflowHandle[Any, Any]:
            """The workflow, through Temporal, which may be down (another fault): then the call fails."""
            temporal = await TemporalClient.connect(cluster.temporal_server.address)
            return temporal.get_workflow_handle(self._workflow_id)

        def stop(c: Client) -> Awaitable[str]:
            """What stops the migration where it is: a rollback in cutover, a cancel before it."""
            return c.rollback_migration(migration_id) if in_cutover else c.cancel_migration(migration_id)

        if kind == "cancel_readd":
            with contextlib.suppress(ClientError):
                await _any(clients, lambda c: c.cancel_migration(migration_id))
        elif kind == "rollback_readd":
            with contextlib.suppress(ClientError):
                await _any(clients, lambda c: c.rollback_migration(migration_id))
        elif kind == "terminate_workflow":
            # What an operator's `temporal workflow terminate` does: no workflow code runs.
            with contextlib.suppress(Exception):
                await (await workflow()).terminate(reason="chaos")
        elif kind == "cancel_during_compensation":
            with contextlib.suppress(ClientError):
                await _any(clients, stop)
            await asyncio.sleep(rng.uniform(0, 0.5))
            with contextlib.suppress(Exception):
                await (await workflow()).cancel()
        elif kind == "double_stop":
            # The same stop through three channels: an RPC, a signal, Temporal's own cancel.
            with contextlib.suppress(ClientError):
                await _any(clients, stop)
            with contextlib.suppress(Exception):
                await (await workflow()).signal("cancel")
            with contextlib.suppress(Exception):
                await (await workflow()).cancel()

    def _phase_now(self, migration_id: str) -> str:
        return self._phases.get(migration_id, "")

    async def _reached(self, migration_id: str, phase: str) -> bool:
        """Wait until the migration is in phase or past it; False when it ended before."""
        order: dict[str, int] = {p: i for i, p in enumerate(PHASES)}
        while time.monotonic() < self.deadline:
            row = await self._row(migration_id)
            if row is not None:
                current, status = row
                self._phases[migration_id] = current
                if current in order and order[current] >= order[phase]:
                    return True
                if current == Phase.DONE:
                    return phase == Phase.CLEANUP
                if status in TERMINAL or current in (Phase.CANCELLING, Phase.ROLLING_BACK):
                    return False
            await asyncio.sleep(0.05)
        return False

    async def _row(self, migration_id: str) -> tuple[str, str] | None:
        assert self._metadata is not None
        try:
            row = await self._metadata.pool.fetchrow(
                "SELECT phase, status FROM migrations WHERE migration_id = $1", migration_id
            )
        except Exception:  # PostgreSQL may be down: ask again
            return None
        return None if row is None else (row["phase"], row["status"])

    async def _resume(self, clients: list[Client], migration_id: str) -> bool:
        """Let a migration held at cutover go on to cleanup (unless a fault stopped it meanwhile)."""
        while time.monotonic() < self.deadline:
            row = await self._row(migration_id)
            if row is not None and (row[0] != Phase.CUTOVER or row[1] in TERMINAL):
                return False
            try:
                await _any(clients, lambda c: c.pause_migration(migration_id, False))
                return True
            except ClientError:
                await asyncio.sleep(0.5)
        return False

    async def _finish(self, clients: list[Client], migration_id: str) -> _Status:
        with contextlib.suppress(ClientError):
            await _any(clients, lambda c: c.throttle_migration(migration_id, 0))
        while time.monotonic() < self.deadline:
            row = await self._row(migration_id)
            if row is not None and row[1] in TERMINAL:
                return _Status(row[1])
            await asyncio.sleep(0.5)
        raise TimeoutError(f"migration {migration_id} did not end in time")

    async def _repair(self, clients: list[Client]) -> None:
        """An anti-entropy repair (and its tombstone GC) while the clients go on; it must end.

        It may end `failed` (a node it needed was down): then it purged nothing there.
        """
        repair_id = ""
        for _ in range(60):
            try:
                repair_id = (await _any(clients, lambda c: c.repair())).migration_id
                break
            except ClientError:
                await asyncio.sleep(0.5)  # a coordinator or Temporal coming back from a fault
        if not repair_id:
            raise RuntimeError("no coordinator would start a repair")
        ended = time.monotonic() + 180
        while time.monotonic() < ended:
            with contextlib.suppress(ClientError):
                status = await _any(clients, lambda c: c.migration(repair_id))
                if status.ended:
                    self.result.repairs.append(status.status)
                    return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"repair {repair_id} did not end in 180 s")

    async def _heal(self, cluster: LocalCluster) -> None:
        if cluster.postgres.pid is None:
            await _restart_postgres(cluster)
        if cluster.temporal_server.pid is None:
            await cluster.temporal_server.start()
        for node in cluster.nodes.values():
            if node.node_id in self.dead:
                continue
            node.process.resume()
            if node.proxy is not None:
                node.proxy.heal()
            if not node.process.running:
                await cluster.restart_storage_node(node.node_id)
        for i, c in enumerate(cluster.coordinator_procs):
            c.process.resume()
            if c.pg_proxy is not None:
                c.pg_proxy.heal()
            if not c.process.running:
                await cluster.restart_coordinator(i)
        if cluster.worker is not None and not cluster.worker.running:
            await cluster.start_worker()

    # -- the check --------------------------------------------------------------------------------

    async def _check(self, cluster: LocalCluster, clients: list[Client], history: History) -> Verdict:
        verdict = Verdict()
        metadata = await Metadata.connect(cluster.dsn)
        try:
            snap = await metadata.snapshot()
            rows = await metadata.pool.fetch(
                "SELECT migration_id, workflow_id, status, phase FROM migrations"
            )
            self.result.purged = int(
                await metadata.pool.fetchval("SELECT coalesce(sum(purged), 0) FROM repair_ranges")
            )
        finally:
            await metadata.close()
        # Stuck: every migration ended, the registry holds none, and no workflow still runs.
        temporal = await TemporalClient.connect(cluster.temporal_server.address)
        for row in rows:
            if row["status"] not in TERMINAL:
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

        ring = Ring.from_tokens((t, n) for t, n in snap.tokens if snap.nodes[n].status == NodeState.ACTIVE)
        storage = {n: cluster.nodes[n].client() for n in ring.node_ids}
        # The replication factors the ring change left (an RF change moved one).
        rfs = {t: info.replication_factor for t, info in snap.tenants.items()}

        def purgeable(wanted: tuple[tuple[int, int], bool, bytes], ops: list[Op] | None = None) -> bool:
            """Whether a repair may have purged the delete that would make a replica hold nothing.

            A delete (the wanted one, or one of ops, whatever its outcome: a failed one may have
            landed) counts once it is older than the grace period.
            """
            (hlc, _), tombstone, _ = wanted
            if tombstone and time.time() * 1000 - (hlc >> 16) > GC_GRACE_SECONDS * 1000:
                return True
            now = time.monotonic()
            return any(op.kind == DELETE and now - op.start > GC_GRACE_SECONDS for op in ops or [])

        async def holders(
            key: tuple[str, str], wanted: tuple[tuple[int, int], bool, bytes], later: list[Op] | None = None
        ) -> list[str]:
            """The key's replicas that lack (version, tombstone, value) or anything newer.

            Nothing at all holds a delete whose tombstone a repair may have purged (the wanted one, or
            one of `later`): an older value would still count as lacking it, and the final reads
            would see the resurrection.
            """
            lacking = []
            for node in ring.replicas(token(*key), rfs[key[0]]):
                for attempt in range(3):
                    try:
                        record = await storage[node].get(*key)
                        break
                    except StorageError:
                        record = None
                        await asyncio.sleep(0.5 * (attempt + 1))  # a node just healed may still be waking
                held = (
                    None
                    if record is None
                    else ((record.version.hlc, record.version.origin), record.tombstone, record.value)
                )
                if (held is None and not purgeable(wanted, later)) or (held is not None and held < wanted):
                    lacking.append(node)
            return lacking

        try:
            by_key = history.by_key()
            # Durability first, before any final read repairs anything (and, in write-only
            # schedules, before any read at all): a quorum holds the last acknowledged write.
            durability: dict[tuple[str, str], Durability] = {}
            for key, ops in by_key.items():
                newest = last_acknowledged(ops)
                if newest is not None and newest.version is not None:
                    later = [op for op in ops if op.start >= newest.start]
                    lacking = await holders(
                        key, (newest.version, newest.kind != PUT, _written(newest)), later
                    )
                    rf = rfs[key[0]]
                    durability[key] = Durability(rf - len(lacking), required(Consistency.QUORUM, rf))
            finals = {key: await _final_read(clients, history, key, i) for i, key in enumerate(by_key)}
            for key, ops in history.by_key().items():
                check_key(key, ops, verdict, durability.get(key))
            # Convergence: after the final reads, the hints and an anti-entropy repair, every replica,
            # the ones the ring change added included, holds what the reads returned. (A read asks a
            # quorum and repairs only the replicas it asked; the repair is what reaches the others.)
            if self.repair:
                await self._repair(clients)
            else:
                await asyncio.sleep(1)
            for key, final in finals.items():
                if final.version is None or final.version == (0, 0) or key in verdict.evidence:
                    continue
                lacking = await holders(
                    key, (final.version, not final.found, final.value if final.found else b"")
                )
                if lacking:
                    verdict.lost.append(f"{key[0]}/{key[1]}: replicas {lacking} lack #{final.id}'s version")
                    verdict.evidence[key] = by_key[key]
        finally:
            for c in storage.values():
                await c.close()
        return verdict


def _written(op: Op) -> bytes:
    return op.value if op.kind == PUT else b""


@dataclass(frozen=True)
class _Status:
    status: str


async def _final_read(clients: list[Client], history: History, key: tuple[str, str], i: int) -> Op:
    for attempt in range(60):
        op = history.begin(GET, key[0], key[1], -1)
        op.final = True
        try:
            got = await clients[(i + attempt) % len(clients)].get(*key)
        except ClientError as exc:
            History.failed(op, f"{exc.code.name}: {exc.message[:120]}")
            await asyncio.sleep(0.5)
            continue
        History.ok(op, got.version, found=got.found, value=got.value)
        return op
    raise RuntimeError(f"no QUORUM read of {key} succeeded")


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the processes started inside (nothing when value is empty)."""
    if not value:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


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


async def run(
    schedules: int,
    seed: int,
    keys: int,
    minutes: float,
    kinds: list[str] | None,
    only: int | None = None,
    ring_changes: tuple[str, ...] = OPERATIONS,
) -> int:
    tally: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    results = []
    for index in [only] if only is not None else range(schedules):
        operation = ring_changes[(seed + index) % len(ring_changes)]
        result = await Schedule(index, seed, keys, minutes, kinds, operation=operation).run()
        results.append(result)
        tally.update(f.kind for f in result.faults)
        landed.update(f.landed or "not reached" for f in result.faults)
        print(result.line(), flush=True)
        if not result.verdict.ok:
            _report(result)
    total = {
        name: sum(len(getattr(r.verdict, name)) for r in results)
        for name in ("lost", "resurrected", "stale_reads", "nonlinearizable", "phantom", "stuck", "unchecked")
    }
    print("faults by kind: " + ", ".join(f"{k}={tally[k]}" for k in KINDS))
    ran = Counter(r.operation for r in results)
    print("ring changes: " + ", ".join(f"{op}={ran[op]}" for op in ring_changes))
    print("faults by phase they landed in: " + ", ".join(f"{p}={n}" for p, n in sorted(landed.items())))
    operations, acknowledged = sum(r.operations for r in results), sum(r.acknowledged for r in results)
    print(
        f"schedules={len(results)} write_only={sum(r.write_only for r in results)} "
        f"faults={sum(tally.values())} "
        f"operations={operations} acknowledged={acknowledged} lost={total['lost']} "
        f"resurrected={total['resurrected']} stale_reads={total['stale_reads']} "
        f"linearizability_violations={total['nonlinearizable']} phantom={total['phantom']} "
        f"stuck={total['stuck']} unchecked={total['unchecked']}"
    )
    return 0 if not any(total.values()) else 1


def _report(result: Result) -> None:
    v = result.verdict
    rerun = f"--seed {result.seed} --only {result.index}"
    print(f"  VIOLATION in schedule {result.index} (re-run: {rerun}); logs kept in {result.log_dir}")
    for line in v.lines[:20]:
        print(f"    {line}")
    for key, ops in list(v.evidence.items())[:5]:
        print(f"    history of {key[0]}/{key[1]}:")
        for op in ops[-16:]:
            print(f"      {op.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schedules", type=int, default=20, help="schedules to run (default %(default)s)")
    parser.add_argument(
        "--only", type=int, default=None, help="run only the schedule of this index (a re-run)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for every random choice (default %(default)s)"
    )
    parser.add_argument("--keys", type=int, default=1000, help="keys per tenant (default %(default)s)")
    parser.add_argument(
        "--minutes", type=float, default=5, help="time limit per schedule (default %(default)s)"
    )
    parser.add_argument(
        "--kinds", default="", help=f"comma-separated fault kinds instead of drawn ones: {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--operations",
        default=",".join(OPERATIONS),
        help="ring changes the schedules take in turn (default %(default)s)",
    )
    args = parser.parse_args()
    operations = tuple(o for o in args.operations.split(",") if o)
    if not operations or set(operations) - set(OPERATIONS):
        parser.error(f"--operations takes some of: {', '.join(OPERATIONS)}")
    logs.configure(json=False, level="WARNING")
    kinds = [k for k in args.kinds.split(",") if k] or None
    unknown = set(kinds or ()) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    sys.exit(
        asyncio.run(run(args.schedules, args.seed, args.keys, args.minutes, kinds, args.only, operations))
    )


if __name__ == "__main__":
    main()
