"""How close the coordinator comes to the raw gRPC round-trip rate of Python on this machine.

Run:  .venv/bin/python bench/rpc.py [--seconds S] [--concurrency C]   (about 40 s with the defaults)

Three measurements, one after the other, each a ~1 s warm-up followed by
``--seconds`` of closed-loop load from ``--concurrency`` asyncio tasks in this
process (each task keeps one request in flight), 100-byte payloads, loopback only:

1. ``raw grpc.aio echo``: unary calls to a bytes-in/bytes-out echo server run by
   this same script in a child process (``--echo-server PORT``, a generic handler,
   no protobuf): what a Python gRPC service that does no work at all achieves
   here, so the ceiling for any Python RPC on this machine, and the figure the
   other two are compared with.
2. ``coordinator WriteKeyValue``: ``Client.put`` at QUORUM to tenant ``bench``
   (RF 3) of a LocalCluster (PostgreSQL, 3 storage nodes, 1 coordinator) that the
   script starts in a fresh temporary directory and stops and deletes at the end.
3. ``coordinator ReadKeyValue``: ``Client.get`` at QUORUM of the keys written in 2.

Each row gives completed requests per second over the measured window and the
p50/p99 latency (``time.perf_counter`` around each request) of those requests.
Any failed request aborts the run: a rate with errors in it is not one to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from pairdb.client import Client
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import ManagedProcess, die_with_parent, free_port
from pairdb.serving import logs

ECHO_SERVICE = "pairdb.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
PAYLOAD_BYTES = 100
WARMUP_SECONDS = 1.0
# A per-request deadline bounds the run even if a server stops answering.
REQUEST_TIMEOUT = 10.0
TENANT = "bench"
REPLICATION_FACTOR = 3
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


# --------------------------------------------------------------------------- echo server (child)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve_echo(port: int) -> None:
    """The child process: echo every request until SIGTERM."""
    server = grpc.aio.server()
    # No (de)serializers: the handler sees and returns the raw bytes, no protobuf involved.
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"echo server: cannot listen on 127.0.0.1:{port}")
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


async def measure(label: str, op: Op, seconds: float, concurrency: int) -> Result:
    """Run op from `concurrency` tasks for a warm-up plus `seconds`; count only the measured window."""
    print(f"measuring {label} ...", file=sys.stderr, flush=True)
    window_start = time.perf_counter() + WARMUP_SECONDS
    deadline = window_start + seconds
    latencies: list[float] = []

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
    if not latencies:
        raise RuntimeError(f"{label}: no request completed in the measured window")
    latencies.sort()
    return Result(
        label,
        len(latencies) / seconds,
        percentile(latencies, 0.50) * 1e3,
        percentile(latencies, 0.99) * 1e3,
    )


# --------------------------------------------------------------------------- measurements


async def bench_echo(args: argparse.Namespace, workdir: Path) -> Result:
    """Measurement 1: raw grpc.aio unary round trips to the echo child process."""
    port = free_port()
    # ManagedProcess sets PAIRDB_PARENT_PID, so the child dies with us (see die_with_parent).
    server = ManagedProcess(
        "echo-server",
        [sys.executable, str(SCRIPT), "--echo-server", str(port)],
        workdir / "logs" / "echo-server.log",
    )
    payload = os.urandom(PAYLOAD_BYTES)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        ECHO_METHOD, request_serializer=None, response_deserializer=None
    )

    async def probe() -> None:
        await echo(payload, timeout=1.0)

    async def op(w: int, i: int) -> None:
        reply = await echo(payload, timeout=REQUEST_TIMEOUT)
        if len(reply) != PAYLOAD_BYTES:
            raise RuntimeError(f"echo returned {len(reply)} bytes, sent {PAYLOAD_BYTES}")

    try:
        await server.start()
        await server.wait_ready(probe)
        return await measure("raw grpc.aio echo", op, args.seconds, args.concurrency)
    finally:
        await channel.close(grace=None)
        await server.stop()


async def bench_coordinator(args: argparse.Namespace, workdir: Path) -> list[Result]:
    """Measurements 2 and 3: QUORUM writes, then QUORUM reads of the keys written, via the coordinator."""
    print(
        "starting LocalCluster (PostgreSQL, 3 storage nodes, 1 coordinator) ...", file=sys.stderr, flush=True
    )
    cluster = LocalCluster(workdir / "cluster", storage_nodes=3, coordinators=1, temporal=False)
    try:
        await cluster.start()
        async with Client(cluster.coordinator_address, timeout=REQUEST_TIMEOUT) as client:
            await client.create_tenant(TENANT, REPLICATION_FACTOR)
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

            writes = await measure(
                "coordinator WriteKeyValue (RF 3, QUORUM)", write, args.seconds, args.concurrency
            )
            reads = await measure(
                "coordinator ReadKeyValue (RF 3, QUORUM)", read, args.seconds, args.concurrency
            )
            return [writes, reads]
    finally:
        await cluster.stop()


# --------------------------------------------------------------------------- report


def render(results: Sequence[Result]) -> str:
    width = max(len("measurement"), *(len(r.label) for r in results))
    head = f"{'measurement':<{width}} | {'ops/s':>9} | {'p50 ms':>7} | {'p99 ms':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.label:<{width}} | {r.ops_per_second:>9,.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f}")
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
    echo = await bench_echo(args, workdir)
    writes, reads = await bench_coordinator(args, workdir)
    print(render([echo, writes, reads]))
    print()
    print(
        f"coordinator vs raw gRPC ceiling: writes {writes.ops_per_second / echo.ops_per_second:.1%}, "
        f"reads {reads.ops_per_second / echo.ops_per_second:.1%} of "
        f"{echo.ops_per_second:,.0f} ops/s"
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
        "--echo-server",
        type=int,
        metavar="PORT",
        default=None,
        help="internal: run only the echo gRPC server on 127.0.0.1:PORT (the script starts it itself)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.echo_server is not None:
        die_with_parent()
        asyncio.run(serve_echo(args.echo_server))
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
