"""What a node addition (or a repair) costs the clients of a live cluster, and an addition at the least.

Run:  .venv/bin/python bench/migration_impact.py [--keys 100000] [--seconds 15] [--concurrency 32]
                                                 [--rounds 3] [--operation addition|repair]

1. A LocalCluster (PostgreSQL, Temporal, 3 storage nodes, a coordinator, a
   worker) with one RF 3 tenant holding ``--keys`` keys of 100 bytes (loaded
   through BatchWrite).
2. Steady: ``--concurrency`` clients, half writing and half reading (QUORUM),
   for ``--seconds``: ops/s, p50 and p99 latency. Each client sends its next
   request when the last one is answered: the load saturates the machine.
3. ``--rounds`` times, under the same load throughout:
   During: node-4 (node-5, ...) is added, from AddStorageNode until the
   migration completed (its status polled every 0.5 s; the node's process was
   started a second before, as an operator starts it). The copy yields to the
   clients (activities/pace.py), so it takes longer than on an idle cluster.
   After: ``--seconds`` on the 4 nodes, nothing running. Every process shares
   this machine's cores, so a 4th storage node adds processes and replica
   calls but no CPU.
   Removal: the node is removed again, under the load; then ``--seconds`` on
   the 3 nodes, which is the next round's steady window.
   Each round's ratios are to the mean of the 3-node windows either side of
   it (the bracket), and the medians of the rounds' ratios are the result:
   this machine's speed drifts by ±20 % within minutes (every process's CPU
   per operation rising and falling together), so a window measured minutes
   before an addition is no yardstick for it by itself.
4. Steps 1-3 again on a fresh cluster under a load that leaves the machine
   headroom, as a production cluster has: the clients offer ``--offered``
   (a share of the saturating run's steady ops/s) at fixed intervals, and a
   latency counts from when a request was due, not sent (a client that falls
   behind shows it as latency, not as fewer requests). The default, 30 %, kept
   this machine's two cores 64-71 % busy (every process's, the bench's
   clients included); at 60 % they were 80-90 % busy, since a saturated
   coordinator gathers more requests into each replica call and so spends
   less per request: that was no headroom, and a long window's p99 strayed
   0.96-13x from a short one's with nothing running.
5. Nearly empty: a cluster whose tenant holds 100 keys; the seconds from
   AddStorageNode until ``completed`` (the fixed cost of an addition).

Every window shows the share of the machine's CPU time in use meanwhile
(psutil's ``cpu_times``), so a reader sees how much headroom a load left.

With ``--operation repair``, step 3 is instead two anti-entropy repairs under the same
load: one of a cluster whose replicas agree (the daily case: digests
only), and one after node-3 lost its data directory and restarted empty (the
worst case: a third of all replicas streamed).
"""

from __future__ import annotations

import os

# This script starts servers (fork, then exec) while its gRPC channels run: gRPC's fork handlers
# could crash a child before its exec. Off before grpc loads, as in every process pairdb starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lifecycle import added, timed
from bench.rebalance import TENANT, load_pairdb, say
from bench.rpc import percentile
from pairdb.client import Client
from pairdb.local.cluster import LocalCluster, StorageNodeProcess
from pairdb.serving import logs

VALUE_BYTES = 100
EMPTY_KEYS = 100


@dataclass(frozen=True)
class Window:
    label: str
    ops_per_second: float
    p50_ms: float
    p99_ms: float
    # The share of the machine's CPU time in use meanwhile, every process's.
    busy: float


def cpu_times() -> tuple[float, float]:
    """The machine's CPU seconds so far: (busy, total).

    Busy is all but idle and iowait; steal (the host ran another guest while
    ours wanted the CPU) counts as busy. Linux counts guest time in user and
    nice already.
    """
    times = psutil.cpu_times()
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


@dataclass(frozen=True)
class Mark:
    """When a window starts: the time and the machine's CPU time then."""

    at: float
    cpu: tuple[float, float]


class Load:
    """Clients sending requests, half writes and half reads; latencies of completed ones.

    rate None: each client sends its next request as soon as the last one was
    answered (a closed loop: it saturates the machine). A rate in ops/s: the
    clients send at fixed intervals that add up to it, and a latency counts from
    when the request was due.
    """

    def __init__(self, client: Client, keys: int, concurrency: int, rate: float | None = None) -> None:
        self._client, self._keys = client, keys
        self._stop = asyncio.Event()
        self._latencies: list[tuple[float, float]] = []  # (end, seconds)
        interval = concurrency / rate if rate else 0.0
        self._tasks = [
            asyncio.create_task(self._run(w, interval, w * interval / concurrency))
            for w in range(concurrency)
        ]

    async def _run(self, w: int, interval: float, offset: float) -> None:
        value = os.urandom(VALUE_BYTES)
        i = 0
        due = time.perf_counter() + offset
        while not self._stop.is_set():
            key = f"k{(w * 7919 + i * 104729) % self._keys:08d}"
            if interval:
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                started, due = due, due + interval
            else:
                started = time.perf_counter()
            if i % 2:
                await self._client.put(TENANT, key, value)
            else:
                await self._client.get(TENANT, key)
            end = time.perf_counter()
            self._latencies.append((end, end - started))
            i += 1

    @staticmethod
    def mark() -> Mark:
        return Mark(time.perf_counter(), cpu_times())

    def window(self, label: str, since: Mark) -> Window:
        """The requests completed from since until now."""
        end, cpu = time.perf_counter(), cpu_times()
        inside = sorted(seconds for at, seconds in self._latencies if since.at <= at <= end)
        if not inside:
            raise RuntimeError(f"{label}: no request completed")
        busy = (cpu[0] - since.cpu[0]) / max(cpu[1] - since.cpu[1], 1e-9)
        return Window(
            label,
            len(inside) / (end - since.at),
            percentile(inside, 0.5) * 1e3,
            percentile(inside, 0.99) * 1e3,
            busy,
        )

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


# Each status poll is a Temporal query: poll as an operator would, not 20 times a second.
OPERATOR_POLL = 0.5


async def add_node_and_wait(client: Client, node: StorageNodeProcess, poll: float = OPERATOR_POLL) -> float:
    """Add a node whose process is up; the seconds from AddStorageNode until its migration completed."""
    return (await timed(client, added(client, node.node_id, node.port), poll))[0]


async def repairs_under_load(cluster: LocalCluster, client: Client, load: Load) -> list[tuple[Window, float]]:
    say("repairing a cluster whose replicas agree, under load ...")
    start = load.mark()
    in_sync = (await timed(client, client.repair(), OPERATOR_POLL))[0]
    windows = [(load.window("repair, in sync", start), in_sync)]
    say("node-3 loses its data directory and restarts empty ...")
    await cluster.kill_storage_node("node-3")
    shutil.rmtree(cluster.data_dir / "nodes" / "node-3")
    await cluster.restart_storage_node("node-3")
    say("repairing it under load ...")
    start = load.mark()
    refill = (await timed(client, client.repair(), OPERATOR_POLL))[0]
    windows.append((load.window("repair, node-3 empty", start), refill))
    return windows


async def start_cluster(workdir: Path, keys: int) -> LocalCluster:
    cluster = LocalCluster(workdir, storage_nodes=3, coordinators=1, default_tenant=None, log_level="WARNING")
    await cluster.start()
    async with cluster.client() as client:
        await client.create_tenant(TENANT, 3)
        await load_pairdb(client, keys, VALUE_BYTES)
    return cluster


@dataclass(frozen=True)
class Observed:
    """A loaded cluster's windows: steady, then each later window with its operation's seconds (None:
    plain)."""

    steady: Window
    windows: Sequence[tuple[Window, float | None]]


@dataclass(frozen=True)
class Round:
    """One addition on a loaded cluster, bracketed by 3-node windows before it and after the added node
    was removed again: this machine's speed drifts by minutes, and the bracket's mean is the steady
    figure of the addition's own minutes."""

    before: Window
    during: Window
    took: float
    after: Window  # the 4-node cluster, nothing running
    removal: Window
    removal_took: float
    again: Window  # the 3 nodes once more: the next round's `before`

    @property
    def steady(self) -> Window:
        """The bracket: the mean of the 3-node windows either side of the addition."""
        a, b = self.before, self.again
        return Window(
            "steady (bracket)",
            (a.ops_per_second + b.ops_per_second) / 2,
            (a.p50_ms + b.p50_ms) / 2,
            (a.p99_ms + b.p99_ms) / 2,
            (a.busy + b.busy) / 2,
        )


async def measured(load: Load, label: str, seconds: float) -> Window:
    """The load's window over the next seconds."""
    start = load.mark()
    await asyncio.sleep(seconds)
    return load.window(label, start)


async def additions_under_load(workdir: Path, args: argparse.Namespace, rate: float | None) -> list[Round]:
    """A loaded cluster, --rounds times: a node added under load, a window with it, its removal under
    load, and a window on the 3 nodes again. Each round adds a new node (node-4, node-5, ...): a
    removed node's identity is not reused."""
    say(f"starting a cluster with {args.keys:,} keys ...")
    cluster = await start_cluster(workdir, args.keys)
    try:
        async with cluster.client() as client:
            load = Load(client, args.keys, args.concurrency, rate)
            try:
                rounds = await rounds_of_additions(cluster, client, load, args)
            finally:
                await load.stop()
    finally:
        await cluster.stop()
    return rounds


async def rounds_of_additions(
    cluster: LocalCluster, client: Client, load: Load, args: argparse.Namespace
) -> list[Round]:
    rounds: list[Round] = []
    await asyncio.sleep(2)  # warm-up
    before = await measured(load, "steady (3 nodes)", args.seconds)
    for r in range(args.rounds):
        node_id = f"node-{4 + r}"
        # The operator starts the node's process first (on a machine of its own, usually): its
        # start-up is not the addition's.
        node = await cluster.add_storage_node(node_id)
        await asyncio.sleep(1)
        say(f"round {r + 1} of {args.rounds}: adding {node_id} under load ...")
        start = load.mark()
        took = await add_node_and_wait(client, node)
        during = load.window("during the addition", start)
        after = await measured(load, "after it (4 nodes)", args.seconds)
        say(f"removing {node_id} under load ...")
        start = load.mark()
        removal_took, _ = await timed(client, client.remove_node(node_id), OPERATOR_POLL)
        removal = load.window("during its removal", start)
        await cluster.kill_storage_node(node_id)
        again = await measured(load, "steady (3 nodes)", args.seconds)
        rounds.append(Round(before, during, took, after, removal, removal_took, again))
        before = again
    return rounds


async def run(args: argparse.Namespace, workdir: Path) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    what = "a node addition" if args.operation == "addition" else "anti-entropy repairs"
    print(f"pairdb migration impact: client traffic before and during {what}")
    print(f"load    : {args.concurrency} clients, half QUORUM writes, half QUORUM reads, RF 3")
    print(flush=True)
    if args.operation == "repair":
        say(f"starting a cluster with {args.keys:,} keys ...")
        cluster = await start_cluster(workdir / "loaded", args.keys)
        try:
            async with cluster.client() as client:
                load = Load(client, args.keys, args.concurrency)
                await asyncio.sleep(2)  # warm-up
                steady = await measured(load, "steady", args.seconds)
                windows = await repairs_under_load(cluster, client, load)
                await load.stop()
        finally:
            await cluster.stop()
        _report(Observed(steady, windows))
        return

    saturated = await additions_under_load(workdir / "saturated", args, None)
    rate = args.offered * statistics.median(w.ops_per_second for w in _steady_windows(saturated))
    say(f"again, the clients offering {rate:,.0f} ops/s ({args.offered:.0%} of the saturating load) ...")
    headroom = await additions_under_load(workdir / "headroom", args, rate)
    say(f"starting a cluster with {EMPTY_KEYS} keys ...")
    empty = await start_cluster(workdir / "empty", EMPTY_KEYS)
    try:
        async with empty.client() as client:
            node4 = await empty.add_storage_node("node-4")
            empty_seconds = await add_node_and_wait(client, node4, poll=0.05)
    finally:
        await empty.stop()

    print("saturating load (each client sends when answered):")
    _report_rounds(saturated)
    offered = f"{rate:,.0f} ops/s offered, {args.offered:.0%} of the saturating steady rate"
    print(f"load with headroom ({offered}):")
    _report_rounds(headroom)
    print(
        "(steady: the mean of the 3-node windows before the addition and after the added node's removal,\n"
        " the addition's own minutes; this machine's speed drifts by ±20 % within minutes. after it: the\n"
        " same load on 4 nodes, nothing running. Every process shares this machine's cores: a 4th storage\n"
        " node adds processes and replica calls, not CPUs, as it would on a machine of its own.)"
    )
    print(f"addition to a nearly empty cluster ({EMPTY_KEYS} keys): {empty_seconds:.2f} s")


def _steady_windows(rounds: Sequence[Round]) -> list[Window]:
    return [rounds[0].before, *(r.again for r in rounds)]


def _table(windows: Sequence[Window]) -> None:
    print(f"{'window':<22} | {'ops/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'CPU busy':>8}")
    print("-" * 64)
    for w in windows:
        figures = f"{w.ops_per_second:>8,.0f} | {w.p50_ms:>7.2f} | {w.p99_ms:>7.2f} | {w.busy:>8.0%}"
        print(f"{w.label:<22} | {figures}")
    print()


def _report_rounds(rounds: Sequence[Round]) -> None:
    """Every window in the order measured, each round's ratios to its bracket, and their medians."""
    _table([rounds[0].before, *(w for r in rounds for w in (r.during, r.after, r.removal, r.again))])
    for i, r in enumerate(rounds, 1):
        steady = r.steady
        print(
            f"round {i}: addition {r.took:.1f} s, during / steady: {_ratios(r.during, steady)}; "
            f"after / steady: {_ratios(r.after, steady)}; removal {r.removal_took:.1f} s, "
            f"during it / steady: {_ratios(r.removal, steady)}"
        )
    throughput = statistics.median(r.during.ops_per_second / r.steady.ops_per_second for r in rounds)
    p99 = statistics.median(r.during.p99_ms / r.steady.p99_ms for r in rounds)
    took = statistics.median(r.took for r in rounds)
    print(
        f"during the addition / steady, median of {len(rounds)}: "
        f"throughput {throughput:.2f}x, p99 {p99:.2f}x (it took {took:.1f} s)"
    )
    print()


def _report(observed: Observed) -> None:
    """Each window next to the steady one."""
    _table([observed.steady, *(w for w, _ in observed.windows)])
    for w, seconds in observed.windows:
        took = f" (it took {seconds:.1f} s)" if seconds is not None else ""
        print(f"{w.label} / steady: {_ratios(w, observed.steady)}{took}")


def _ratios(w: Window, base: Window) -> str:
    return f"throughput {w.ops_per_second / base.ops_per_second:.2f}x, p99 {w.p99_ms / base.p99_ms:.2f}x"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the tenant (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="steady window (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default %(default)s)"
    )
    parser.add_argument(
        "--offered",
        type=float,
        default=0.3,
        help="the headroom run's load, a share of the saturating steady ops/s; at 0.3 this machine's "
        "two cores were 64-71%% busy (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="additions per load, each bracketed by 3-node windows (default %(default)s)",
    )
    parser.add_argument(
        "--operation",
        choices=["addition", "repair"],
        default="addition",
        help="what runs under the load (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if (
        args.keys < EMPTY_KEYS
        or args.seconds <= 0
        or args.rounds < 1
        or args.concurrency < 1
        or not 0 < args.offered <= 1
    ):
        parser.error(
            f"--keys at least {EMPTY_KEYS}, --seconds positive, --rounds at least 1, "
            "--concurrency at least 1, --offered in (0, 1]"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(json=False, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-impact-"))
    workdir.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    try:
        asyncio.run(run(args, workdir))
    except asyncio.CancelledError:
        raise SystemExit("migration_impact.py: stopped by SIGTERM") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
