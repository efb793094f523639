"""How close the coordinator comes to the gRPC round-trip rates of Python on this machine.

Run:  .venv/bin/python bench/rpc.py [--seconds S] [--concurrency C]   (about 90 s with the defaults)

Measurements, one after the other, each a ~1 s warm-up followed by
``--seconds`` of closed-loop load from asyncio tasks in this process (each
keeps one request in flight), 100-byte payloads, loopback only:

(a) ``raw grpc.aio echo``: unary calls to a bytes-in/bytes-out echo server in a
    child process (generic handler, no protobuf): the ceiling for any Python
    RPC on this machine;
(b) ``the plumbing ceiling``: a coordinator that does no work at all, a child
    process answering each call once two of three no-op storage servers
    acknowledged it, its calls to them coalesced by pairdb's own coalescer:
    what any replicated design in Python could reach here;
(c) pairdb: ``Client.put`` and ``Client.get`` at QUORUM, RF 3, through a
    LocalCluster (PostgreSQL, 3 storage nodes, 1 coordinator) started in a fresh
    temporary directory and deleted at the end;
(d) pairdb: ``Client.put_many`` and ``get_many`` of 1,000 keys per call, 4 calls
    in flight, in keys per second.

Each pairdb figure is printed as a share of (a) and of (b), and with the CPU time
each process (this client, the coordinator, each storage node) spent per key in
its measured window: their sum against this machine's cores bounds the rate any
run here could reach at that cost. Latencies are
``time.perf_counter`` around each call. Any failed request aborts the run: a
rate with errors in it is not one to quote.
"""

from __future__ import annotations

import os

# This script starts servers (fork, then exec) while its gRPC channels run: gRPC's fork handlers
# could crash a child before its exec. Off before grpc loads, as in every process pairdb starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import math
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from pairdb.client import ClientError
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import ManagedProcess, die_with_parent, free_port
from pairdb.serving import logs
from pairdb.storage_node.coalescing import Coalescer, Send

BENCH_SERVICE = "pairdb.bench.Bench"
ROLE_METHODS = {"echo": "Echo", "noop-storage": "Apply", "noop-coordinator": "Write"}
NOOP_STORAGE_METHOD = f"/{BENCH_SERVICE}/Apply"
PAYLOAD_BYTES = 100
WARMUP_SECONDS = 1.0
# A per-request deadline bounds the run even if a server stops answering.
REQUEST_TIMEOUT = 10.0
TENANT = "bench"
REPLICATION_FACTOR = 3
BATCH_KEYS = 1000
# Batch calls in flight: each already carries BATCH_KEYS writes.
BATCH_CONCURRENCY = 4
# Resolved at import: the echo child is this file, whatever the working directory.
SCRIPT = Path(__file__).resolve()

# One request of worker `w`, its `i`-th; raises on failure.
Op = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Result:
    label: str
    ops_per_second: float
    p50_ms: float
    p99_ms: float
    keys_per_op: int = 1
    # CPU seconds per key each measured process spent in the window, by role; empty if not measured.
    cpu_per_key: Mapping[str, float] = field(default_factory=dict)

    @property
    def keys_per_second(self) -> float:
        return self.ops_per_second * self.keys_per_op

    @property
    def cpu_bound_keys_per_second(self) -> float:
        """The rate this machine's cores could carry at this CPU cost per key, were they all busy."""
        return len(os.sched_getaffinity(0)) / sum(self.cpu_per_key.values())


def _cpu_seconds(processes: Mapping[str, psutil.Process]) -> dict[str, float]:
    return {role: sum(p.cpu_times()[:2]) for role, p in processes.items()}


# --------------------------------------------------------------------------- no-work servers (children)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _noop_storage(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    # A coalesced call: a 4-byte item count, then the items; the answer is the count (all "applied").
    return request[:4]


class NoopCoordinator:
    """A coordinator that does no work: each request goes to three no-op storage servers through
    pairdb's coalescer (one per server) and is answered when two of them acknowledged it."""

    def __init__(self, node_ports: list[int]) -> None:
        self._channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in node_ports]
        self._nodes = [
            Coalescer(self._sender(channel), lambda: TimeoutError("no-op storage server timed out"))
            for channel in self._channels
        ]

    @staticmethod
    def _sender(channel: grpc.aio.Channel) -> Send[bytes, bool]:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            NOOP_STORAGE_METHOD, request_serializer=None, response_deserializer=None
        )

        async def send(epoch: int, items: list[bytes], timeout: float) -> list[bool]:
            reply = await call(len(items).to_bytes(4, "big") + b"".join(items), timeout=timeout)
            return [True] * int.from_bytes(reply, "big")

        return send

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        sends = [
            node.submit(request, epoch=0, size=len(request), timeout=REQUEST_TIMEOUT) for node in self._nodes
        ]
        acked = 0
        for done in asyncio.as_completed(sends):
            if await done:
                acked += 1
            if acked == 2:
                return request
        raise RuntimeError("fewer than two no-op storage servers acknowledged")


async def serve(role: str, port: int, node_ports: list[int]) -> None:
    """The child process: serve one no-work role until SIGTERM."""
    server = grpc.aio.server()
    # No (de)serializers: the handlers see and return raw bytes, no protobuf involved.
    handler: Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
    if role == "echo":
        handler = _echo
    elif role == "noop-storage":
        handler = _noop_storage
    else:
        handler = NoopCoordinator(node_ports).handle
    generic = grpc.method_handlers_generic_handler(
        BENCH_SERVICE, {ROLE_METHODS[role]: grpc.unary_unary_rpc_method_handler(handler)}
    )
    server.add_generic_rpc_handlers((generic,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"{role} server: cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


# --------------------------------------------------------------------------- load generator


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def measure(
    label: str,
    op: Op,
    seconds: float,
    concurrency: int,
    keys_per_op: int = 1,
    processes: Mapping[str, psutil.Process] | None = None,
) -> Result:
    """Run op from `concurrency` tasks for a warm-up plus `seconds`; count only the measured window.

    processes: by role, those whose CPU time over the window is reported per key.
    """
    print(f"measuring {label} ...", file=sys.stderr, flush=True)
    window_start = time.perf_counter() + WARMUP_SECONDS
    deadline = window_start + seconds
    latencies: list[float] = []
    cpu: list[dict[str, float]] = []  # CPU times at the window's start and at its end

    async def meter() -> None:
        for at in (window_start, deadline):
            await asyncio.sleep(at - time.perf_counter())
            cpu.append(_cpu_seconds(processes or {}))

    async def worker(w: int) -> None:
        i = 0
        while (start := time.perf_counter()) < deadline:
            await op(w, i)
            end = time.perf_counter()
            # Requests finishing after the deadline ran while others were already stopping.
            if window_start <= end <= deadline:
                latencies.append(end - start)
            i += 1

    # TaskGroup: one failed request cancels the other workers instead of leaving them running.
    async with asyncio.TaskGroup() as group:
        for w in range(concurrency):
            group.create_task(worker(w))
        if processes:
            group.create_task(meter())
    if not latencies:
        raise RuntimeError(f"{label}: no request completed in the measured window")
    latencies.sort()
    keys = len(latencies) * keys_per_op
    return Result(
        label,
        len(latencies) / seconds,
        percentile(latencies, 0.50) * 1e3,
        percentile(latencies, 0.99) * 1e3,
        keys_per_op,
        {role: (cpu[1][role] - cpu[0][role]) / keys for role in cpu[0]} if cpu else {},
    )


# --------------------------------------------------------------------------- measurements


async def start_child(role: str, workdir: Path, node_ports: Sequence[int] = ()) -> tuple[ManagedProcess, int]:
    """One no-work server in a child process (this script); returns it and its port once it answers."""
    port = free_port()
    argv = [sys.executable, str(SCRIPT), "--serve", role, str(port)]
    if node_ports:
        argv += ["--nodes", ",".join(map(str, node_ports))]
    # ManagedProcess sets PAIRDB_PARENT_PID, so the child dies with us (see die_with_parent).
    child = ManagedProcess(f"{role}-{port}", argv, workdir / "logs" / f"{role}-{port}.log")
    await child.start()
    return child, port


async def bench_bytes_service(
    label: str, role: str, args: argparse.Namespace, workdir: Path, node_roles: int = 0
) -> Result:
    """Closed-loop unary calls with 100-byte payloads to a no-work server (and its no-op nodes)."""
    children: list[ManagedProcess] = []
    channel: grpc.aio.Channel | None = None
    try:
        node_ports = []
        for _ in range(node_roles):
            child, port = await start_child("noop-storage", workdir)
            children.append(child)
            node_ports.append(port)
        front, port = await start_child(role, workdir, node_ports)
        children.append(front)
        payload = os.urandom(PAYLOAD_BYTES)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{BENCH_SERVICE}/{ROLE_METHODS[role]}", request_serializer=None, response_deserializer=None
        )

        async def probe() -> None:
            await call(payload, timeout=1.0)

        async def op(w: int, i: int) -> None:
            reply = await call(payload, timeout=REQUEST_TIMEOUT)
            if len(reply) != PAYLOAD_BYTES:
                raise RuntimeError(f"{role} returned {len(reply)} bytes, sent {PAYLOAD_BYTES}")

        await front.wait_ready(probe)
        return await measure(label, op, args.seconds, args.concurrency)
    finally:
        if channel is not None:
            await channel.close(grace=None)
        for child in reversed(children):
            await child.stop()


async def bench_coordinator(args: argparse.Namespace, workdir: Path) -> list[Result]:
    """Measurements 2 and 3: QUORUM writes, then QUORUM reads of the keys written, via the coordinator."""
    print(
        "starting LocalCluster (PostgreSQL, 3 storage nodes, 1 coordinator) ...", file=sys.stderr, flush=True
    )
    cluster = LocalCluster(workdir / "cluster", storage_nodes=3, coordinators=1, temporal=False)
    try:
        await cluster.start()
        async with cluster.connect(cluster.coordinator_address, timeout=REQUEST_TIMEOUT) as client:
            await client.create_tenant(TENANT, REPLICATION_FACTOR)
            processes = _processes(cluster)
            value = os.urandom(PAYLOAD_BYTES)
            written: list[str] = []

            async def write(w: int, i: int) -> None:
                key = f"w{w}-{i}"
                await client.put(TENANT, key, value, "QUORUM")
                written.append(key)

            async def read(w: int, i: int) -> None:
                # Workers stride through the written keys so they do not all read the same ones.
                key = written[(i * args.concurrency + w) % len(written)]
                got = await client.get(TENANT, key, "QUORUM")
                if not got.found or got.value != value:
                    raise RuntimeError(f"read of {key!r} did not return the value written")

            label = "coordinator WriteKeyValue (RF 3, QUORUM)"
            writes = await measure(label, write, args.seconds, args.concurrency, processes=processes)
            label = "coordinator ReadKeyValue (RF 3, QUORUM)"
            reads = await measure(label, read, args.seconds, args.concurrency, processes=processes)

            async def batch_write(w: int, i: int) -> None:
                items: list[tuple[str, str, bytes | None]] = [
                    (TENANT, f"b{w}-{i}-{j}", value) for j in range(BATCH_KEYS)
                ]
                for result in await client.put_many(items, "QUORUM"):
                    if isinstance(result, ClientError):
                        raise result

            async def batch_read(w: int, i: int) -> None:
                start = (i * BATCH_CONCURRENCY + w) * BATCH_KEYS
                keys = [(TENANT, written[(start + j) % len(written)]) for j in range(BATCH_KEYS)]
                for got in await client.get_many(keys, "QUORUM"):
                    if isinstance(got, ClientError) or got.value != value:
                        raise RuntimeError(f"a batch read did not return the value written: {got}")

            label = f"BatchWrite, {BATCH_KEYS:,} keys per call"
            batch_writes = await measure(
                label, batch_write, args.seconds, BATCH_CONCURRENCY, BATCH_KEYS, processes
            )
            label = f"BatchRead, {BATCH_KEYS:,} keys per call"
            batch_reads = await measure(
                label, batch_read, args.seconds, BATCH_CONCURRENCY, BATCH_KEYS, processes
            )
            return [writes, reads, batch_writes, batch_reads]
    finally:
        await cluster.stop()


def _processes(cluster: LocalCluster) -> dict[str, psutil.Process]:
    """This client, the coordinator and each storage node, by role (their background readers idle here)."""
    processes = {"client": psutil.Process()}
    for role, managed in [
        ("coordinator", cluster.coordinator_procs[0].process),
        *((node_id, node.process) for node_id, node in sorted(cluster.nodes.items())),
    ]:
        assert managed.pid is not None, f"{role} is not running"
        processes[role] = psutil.Process(managed.pid)
    return processes


# --------------------------------------------------------------------------- report


def render(results: Sequence[Result]) -> str:
    width = max(len("measurement"), *(len(r.label) for r in results))
    head = f"{'measurement':<{width}} | {'calls/s':>9} | {'keys/s':>9} | {'p50 ms':>7} | {'p99 ms':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.label:<{width}} | {r.ops_per_second:>9,.0f} | {r.keys_per_second:>9,.0f} | "
            f"{r.p50_ms:>7.2f} | {r.p99_ms:>7.2f}"
        )
    return "\n".join(lines)


def render_cpu(results: Sequence[Result]) -> str:
    """CPU microseconds per key by process, their sum, and the rate the cores could carry at that cost."""
    measured = [r for r in results if r.cpu_per_key]
    if not measured:
        return ""
    roles = list(measured[0].cpu_per_key)
    width = max(len("CPU us per key"), *(len(r.label) for r in measured))
    head = f"{'CPU us per key':<{width}} | " + " | ".join(f"{role:>11}" for role in roles)
    head += f" | {'all':>6} | {'cores allow':>11}"
    lines = [head, "-" * len(head)]
    for r in measured:
        cells = " | ".join(f"{r.cpu_per_key[role] * 1e6:>11.1f}" for role in roles)
        total = sum(r.cpu_per_key.values()) * 1e6
        lines.append(f"{r.label:<{width}} | {cells} | {total:>6.0f} | {r.cpu_bound_keys_per_second:>9,.0f}/s")
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    # SIGTERM (e.g. from `timeout`) cancels the run as Ctrl-C does, so the finally blocks stop the cluster.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    print("pairdb RPC benchmark: raw grpc.aio ceiling vs coordinator")
    print(
        f"machine : {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{platform.system()} {platform.release()}, {platform.machine()}"
    )
    print(f"python  : {sys.version.split()[0]} ({platform.python_implementation()})")
    print(f"grpc    : grpcio {grpc.__version__}")
    print(
        f"load    : {args.concurrency} concurrent requests in flight, {PAYLOAD_BYTES}-byte payloads, "
        f"{WARMUP_SECONDS:.0f} s warm-up + {args.seconds:g} s per measurement, loopback"
    )
    print(flush=True)
    echo = await bench_bytes_service("(a) raw grpc.aio echo", "echo", args, workdir)
    plumbing = await bench_bytes_service(
        "(b) no-work coordinator, coalesced to 3 no-op nodes", "noop-coordinator", args, workdir, node_roles=3
    )
    pairdb = await bench_coordinator(args, workdir)
    print(render([echo, plumbing, *pairdb]))
    print()
    print(render_cpu(pairdb))
    print(
        f"(cores allow: {len(os.sched_getaffinity(0))} cores / the CPU seconds all of these processes spent "
        "per key: the most keys/s this machine could carry at that cost, were nothing else running)"
    )
    print()
    for r in pairdb:
        print(
            f"{r.label}: {r.keys_per_second / echo.ops_per_second:.1%} of (a) echo, "
            f"{r.keys_per_second / plumbing.ops_per_second:.1%} of (b) plumbing ceiling (keys/s vs calls/s)"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the coordinator's read/write rates with the raw grpc.aio round-trip rate.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="length of each measurement, after a 1 s warm-up (default: 10)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="requests kept in flight at once, one asyncio task each (default: 32)",
    )
    parser.add_argument(
        "--serve",
        nargs=2,
        metavar=("ROLE", "PORT"),
        default=None,
        help="internal: run only one no-work server (echo, noop-storage, noop-coordinator) on "
        "127.0.0.1:PORT (the script starts its children itself)",
    )
    parser.add_argument("--nodes", default="", help="internal: the no-op nodes' ports of a noop-coordinator")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve is not None:
        die_with_parent()
        role, port = args.serve
        asyncio.run(serve(role, int(port), [int(p) for p in args.nodes.split(",") if p]))
        return
    # LocalCluster logs its progress; only warnings and errors belong beside the results.
    logs.configure(json=False, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-rpc-bench-"))
    try:
        asyncio.run(run(args, workdir))
    except asyncio.CancelledError:
        raise SystemExit("rpc.py: stopped by SIGTERM; the cluster and echo server were stopped") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
