"""What TLS and authentication cost on single-key writes: the same cluster, secured and not, side by side.

Run:  .venv/bin/python bench/security_cost.py [--seconds S] [--concurrency C] [--rounds R]

Two LocalClusters (PostgreSQL, 3 storage nodes, 1 coordinator, RF 3) run at once:
``secure`` as every cluster runs by default (TLS on every hop: client → coordinator,
coordinator → storage nodes with mutual TLS; API-key authentication of every call),
and ``insecure`` (plaintext on loopback, the coordinator started with --insecure: no
authentication). Closed-loop QUORUM puts of 100-byte values from asyncio tasks in
this process, measured in alternating rounds (secure, insecure, secure, ...) so that
drift of the machine falls on both; the figures are the medians over the rounds, and
the ratio secure/insecure is the cost. Any failed request aborts the run.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rpc import Result, measure
from pairdb.client import Client
from pairdb.local.cluster import LocalCluster
from pairdb.serving import logs

TENANT = "bench"
PAYLOAD = os.urandom(100)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    clusters = {
        "secure": LocalCluster(workdir / "secure", default_tenant=None, log_level="WARNING", temporal=False),
        "insecure": LocalCluster(
            workdir / "insecure",
            default_tenant=None,
            log_level="WARNING",
            temporal=False,
            tls=False,
            insecure=True,
        ),
    }
    try:
        for cluster in clusters.values():
            await cluster.start()
        results: dict[str, list[Result]] = {name: [] for name in clusters}
        for round_ in range(args.rounds):
            for name, cluster in clusters.items():
                async with cluster.client() as client:
                    if round_ == 0:
                        await client.create_tenant(TENANT, 3)
                    label = f"{name} WriteKeyValue (RF 3, QUORUM), round {round_ + 1}"
                    writes = measure(label, _writer(client, round_), args.seconds, args.concurrency)
                    results[name].append(await writes)
        print()
        print(f"medians of {args.rounds} rounds")
        print(f"{'cluster':<9} | {'writes/s':>9} | {'p50 ms':>7} | {'p99 ms':>7}")
        medians = {}
        for name, runs in results.items():
            ops = statistics.median(r.ops_per_second for r in runs)
            p50 = statistics.median(r.p50_ms for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            medians[name] = (ops, p50, p99)
            print(f"{name:<9} | {ops:>9,.0f} | {p50:>7.2f} | {p99:>7.2f}")
        s, i = medians["secure"], medians["insecure"]
        print(
            f"secure / insecure: writes/s {s[0] / i[0]:.2f}x, p50 {s[1] / i[1]:.2f}x, p99 {s[2] / i[2]:.2f}x"
        )
    finally:
        for cluster in clusters.values():
            await cluster.stop()


def _writer(client: Client, round_: int) -> Callable[[int, int], Awaitable[None]]:
    async def write(w: int, i: int) -> None:
        await client.put(TENANT, f"r{round_}-w{w}-{i}", PAYLOAD, "QUORUM")

    return write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="per round and cluster (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default %(default)s)")
    args = parser.parse_args()
    logs.configure(json=False, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-bench-security-"))
    workdir.chmod(0o755)
    try:
        asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
