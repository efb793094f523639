"""How long each ring change takes on a loaded cluster: add, remove, replace a dead node, remove a dead
node, lower and raise a tenant's replication factor.

Run:  .venv/bin/python bench/lifecycle.py [--keys 100000]

One LocalCluster (PostgreSQL, Temporal, four storage nodes, a coordinator, a
worker) with one tenant of ``--keys`` keys of 100 bytes at RF 3, idle while the
operations run one after another:

  add node-5 | remove node-5 | node-4 kill -9ed and its data deleted, replaced
  by node-6 | node-6 kill -9ed, removed --dead | RF 3 -> 2 | RF 2 -> 3

Each figure is the seconds from the request until the migration is
`completed` (its status polled every 0.2 s), with the keys its plan copied.
"""

from __future__ import annotations

import os

# This script starts servers (fork, then exec) while its gRPC channels run: gRPC's fork handlers
# could crash a child before its exec. Off before grpc loads, as in every process pairdb starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rebalance import TENANT, load_pairdb, say
from pairdb.client import Client, StartedChange
from pairdb.local.cluster import LocalCluster
from pairdb.serving import logs

VALUE_BYTES = 100


async def timed(
    client: Client, start: Awaitable[str | StartedChange], poll: float = 0.2
) -> tuple[float, int]:
    """Seconds until the migration started by `start` completed (its status asked every poll seconds),
    and the keys it copied."""
    began = time.perf_counter()
    started = await start
    migration_id = started if isinstance(started, str) else started.migration_id
    while not (status := await client.migration(migration_id)).ended:  # noqa: ASYNC110 - polling a status
        await asyncio.sleep(poll)
    if status.status != "completed":
        raise RuntimeError(f"migration {migration_id} ended {status.status}: {status.error}")
    return time.perf_counter() - began, status.keys_copied


async def added(client: Client, node_id: str, port: int) -> str:
    return (await client.add_node(node_id, "127.0.0.1", port)).migration_id


async def run(args: argparse.Namespace, workdir: Path) -> list[tuple[str, float, int]]:
    cluster = LocalCluster(workdir, storage_nodes=4, default_tenant=None, log_level="WARNING")
    await cluster.start()
    rows: list[tuple[str, float, int]] = []
    try:
        async with cluster.client() as client:
            await client.create_tenant(TENANT, 3)
            say(f"loading {args.keys:,} keys ...")
            await load_pairdb(client, args.keys, VALUE_BYTES)
            await asyncio.sleep(1.5)  # let the nodes' load windows close: the copy runs unthrottled

            say("add node-5 ...")
            node5 = await cluster.add_storage_node("node-5")
            rows.append(("add a node", *await timed(client, added(client, "node-5", node5.port))))
            say("remove node-5 ...")
            rows.append(("remove a live node", *await timed(client, client.remove_node("node-5"))))

            say("node-4 dies (kill -9, data deleted); replace it by node-6 ...")
            await cluster.kill_storage_node("node-4")
            shutil.rmtree(cluster.data_dir / "nodes" / "node-4")
            node6 = await cluster.add_storage_node("node-6")
            replace = client.replace_node("node-4", "node-6", "127.0.0.1", node6.port)
            rows.append(("replace a dead node", *await timed(client, replace)))

            say("node-6 dies; remove it --dead ...")
            await cluster.kill_storage_node("node-6")
            rows.append(("remove a dead node", *await timed(client, client.remove_node("node-6", dead=True))))

            say("RF 3 -> 2, then 2 -> 3 ...")
            rows.append(("lower RF 3 -> 2", *await timed(client, client.set_replication_factor(TENANT, 2))))
            rows.append(("raise RF 2 -> 3", *await timed(client, client.set_replication_factor(TENANT, 3))))
    finally:
        await cluster.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the tenant (default %(default)s)")
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys must be positive")
    logs.configure(json=False, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-lifecycle-"))
    workdir.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    try:
        rows = asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"pairdb ring changes on an idle cluster of {args.keys:,} keys (100 B, RF 3, 4 nodes)")
    print(f"{'operation':<22} | {'seconds':>7} | {'keys copied':>11}")
    print("-" * 47)
    for name, seconds, keys in rows:
        print(f"{name:<22} | {seconds:>7.1f} | {keys:>11,}")


if __name__ == "__main__":
    main()
