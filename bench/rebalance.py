"""How fast a node addition moves data, next to Redis Cluster's rebalance of the same data, on this machine.

Run:  .venv/bin/python bench/rebalance.py [--keys 300000] [--large-keys 20000] [--skip-redis] [--with-load]
                                         [--throttle KEYS_PER_S] [--range-keys 1000000]

One run measures, one after the other, on the same machine:

1. the disk: 256 MiB written in 1 MiB writes, then fdatasync (MiB/s);
2. the engine: LMDB durable puts in batches of 500, the copy's apply unit (keys/s):
   the ceiling for what a copy can write into one node;
3. Redis Cluster (``redis-server`` from Debian's package, installed with apt-get
   when missing): 3 masters, no replicas, no persistence (its defaults for a
   benchmark); ``--keys`` keys of 100 bytes loaded with ``redis-cli --pipe``; a
   4th empty master added and ``redis-cli --cluster rebalance
   --cluster-use-empty-masters`` timed: keys moved (the new master's DBSIZE),
   seconds, keys/s;
4. pairdb: a LocalCluster (PostgreSQL, Temporal, 3 storage nodes, a
   coordinator, a worker); the same keys loaded through BatchWrite into one tenant
   (RF ``--rf``, default 3); node-4 added and timed from AddStorageNode to
   ``completed``: keys copied, seconds, keys/s of the whole addition and of its
   copy; the worker's peak RSS, sampled every 0.2 s;
5. with ``--with-load``, 4 again while clients write and read (32 in flight);
6. ``--large-keys`` keys of 16 KiB (Valkey's slot-migration benchmark size),
   pairdb only: the copy in MiB/s next to the disk and to the streaming caps
   other databases ship by default (Cassandra 24 MiB/s, CockroachDB 32 MiB/s);
7. with ``--throttle R``, 4 again with the addition throttled to R keys/s: the
   copy rate the migration reports over its whole copy, as a share of R;
8. with ``--range-keys N``, a cluster whose nodes have one virtual node each,
   loaded with 3N keys, so node-4 gains ranges of about N keys (a third of the
   ring): the largest range copied and the worker's peak RSS.

Everything runs in a fresh temporary directory, deleted at the end.
"""

from __future__ import annotations

import os

# This script starts servers (fork, then exec) while its gRPC channels run: gRPC's fork handlers
# could crash a child before its exec. Off before grpc loads, as in every process pairdb starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pairdb.client import Client, ClientError
from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import ManagedProcess, free_port
from pairdb.serving import logs
from pairdb.storage_node.engine import Engine

MB = 1024 * 1024
SMALL_VALUE = 100
LARGE_VALUE = 16 * 1024
TENANT = "bench"
LOAD_BATCH = 1000
LOAD_CONCURRENCY = 4
ENGINE_BATCH = 500
# Streaming caps other databases ship by default, for the MiB/s comparison.
PEER_CAPS = {"Cassandra stream_throughput_outbound": 24 * MB, "CockroachDB rebalance rate": 32 * MB}
REDIS_SLOTS = 16384
BEFORE_COPY_ENDS = ("queued", "dual_write", "data_copy")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    system: str
    keys: int
    seconds: float
    note: str = ""
    value_bytes: int = SMALL_VALUE

    @property
    def rate(self) -> float:
        return self.keys / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.rate * self.value_bytes / MB


# --------------------------------------------------------------------------- the machine


def disk_write_rate(directory: Path, total: int = 256 * MB) -> float:
    """Bytes per second of sequential 1 MiB writes made durable by one fdatasync."""
    path = directory / "disk-probe"
    chunk = os.urandom(MB)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(total // MB):
            os.write(fd, chunk)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return total / seconds


def engine_put_rate(directory: Path, keys: int, value_bytes: int) -> float:
    """Keys per second of durable LMDB puts in batches of ENGINE_BATCH (one commit and fsync each)."""
    engine = Engine(directory / "engine-probe")
    value = os.urandom(value_bytes)
    records = [StoredRecord(TENANT, f"k{i:08d}", value, Version(1 << 16, 1)) for i in range(keys)]
    try:
        started = time.perf_counter()
        for at in range(0, keys, ENGINE_BATCH):
            engine.apply_records(records[at : at + ENGINE_BATCH])
        return keys / (time.perf_counter() - started)
    finally:
        engine.close()
        shutil.rmtree(directory / "engine-probe", ignore_errors=True)


# --------------------------------------------------------------------------- Redis Cluster


def ensure_redis() -> None:
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    print("installing redis-server (Debian package) ...", file=sys.stderr, flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "redis-server"], check=True, env=env)


def _crc16(data: bytes) -> int:
    """CRC16-XMODEM, Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _cli(*args: str, stdin: bytes | None = None, check: bool = True) -> str:
    done = subprocess.run(["redis-cli", *args], input=stdin, capture_output=True, check=False, timeout=3600)
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr).decode()[-800:]
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {output}")
    return done.stdout.decode()


def _redis_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too; Redis takes ports up to 55,535."""
    for _ in range(1000):
        port = free_port()
        if port <= 55_535 and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports: list[int] = []
        self.processes: list[ManagedProcess] = []

    async def start_master(self) -> int:
        port = _redis_port()
        directory = self.workdir / f"redis-{port}"
        directory.mkdir(parents=True)
        process = ManagedProcess(
            f"redis-{port}",
            [
                "redis-server",
                "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--save", "", "--appendonly", "no", "--protected-mode", "no",
            ],
            directory / "redis.log",
        )  # fmt: skip
        await process.start()

        async def ping() -> None:
            if "PONG" not in await asyncio.to_thread(_cli, "-p", str(port), "ping", check=False):
                raise RuntimeError("not up yet")

        await process.wait_ready(ping)
        self.ports.append(port)
        self.processes.append(process)
        return port

    async def create(self, masters: int) -> None:
        for _ in range(masters):
            await self.start_master()
        addresses = [f"127.0.0.1:{p}" for p in self.ports]
        await asyncio.to_thread(
            _cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"
        )
        await self.wait_ok()

    async def wait_ok(self) -> None:
        """Until every node says cluster_state:ok and redis-cli finds them agreeing on the configuration."""
        for _ in range(300):
            infos = [await asyncio.to_thread(_cli, "-p", str(p), "cluster", "info") for p in self.ports]
            if all("cluster_state:ok" in info for info in infos):
                check = await asyncio.to_thread(
                    subprocess.run,
                    ["redis-cli", "--cluster", "check", f"127.0.0.1:{self.ports[0]}"],
                    capture_output=True,
                    check=False,
                )
                if check.returncode == 0 and b"[ERR]" not in check.stdout:
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("Redis Cluster did not reach cluster_state:ok with every node agreeing")

    async def wait_known(self, port: int) -> None:
        """Until every node's view of the cluster lists the node on port (gossip takes a moment)."""
        for _ in range(300):
            views = [await asyncio.to_thread(_cli, "-p", str(p), "cluster", "nodes") for p in self.ports]
            if all(f":{port}@" in view for view in views):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the Redis node on port {port} did not become known to every node")

    def slot_owners(self) -> dict[int, int]:
        """slot -> port, from CLUSTER NODES."""
        owners: dict[int, int] = {}
        for line in _cli("-p", str(self.ports[0]), "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for part in fields[8:]:
                if part.startswith("["):
                    continue  # a slot being migrated
                low, _, high = part.partition("-")
                for slot in range(int(low), int(high or low) + 1):
                    owners[slot] = port
        return owners

    async def load(self, keys: int, value_bytes: int) -> None:
        owners = await asyncio.to_thread(self.slot_owners)
        value = os.urandom(value_bytes)
        per_node: dict[int, list[bytes]] = {p: [] for p in self.ports}
        for i in range(keys):
            key = b"k%08d" % i
            per_node[owners[_crc16(key) % REDIS_SLOTS]].append(_resp(b"SET", key, value))
        for port, commands in per_node.items():
            await asyncio.to_thread(_cli, "-p", str(port), "--pipe", stdin=b"".join(commands))

    def dbsize(self, port: int) -> int:
        return int(_cli("-p", str(port), "dbsize").strip())

    async def stop(self) -> None:
        for process in self.processes:
            await process.stop()


async def bench_redis(workdir: Path, keys: int) -> Row:
    ensure_redis()
    say(f"Redis Cluster: 3 masters, loading {keys:,} keys ...")
    redis = RedisCluster(workdir / "redis")
    try:
        await redis.create(3)
        await redis.load(keys, SMALL_VALUE)
        total = sum([await asyncio.to_thread(redis.dbsize, p) for p in redis.ports])
        if total != keys:
            raise RuntimeError(f"Redis Cluster holds {total} keys, loaded {keys}")
        new = await redis.start_master()
        first = f"127.0.0.1:{redis.ports[0]}"
        await asyncio.to_thread(_cli, "--cluster", "add-node", f"127.0.0.1:{new}", first)
        await redis.wait_known(new)
        await redis.wait_ok()
        say("Redis Cluster: rebalancing onto a 4th master ...")
        started = time.perf_counter()
        await asyncio.to_thread(_cli, "--cluster", "rebalance", first, "--cluster-use-empty-masters")
        seconds = time.perf_counter() - started
        moved = await asyncio.to_thread(redis.dbsize, new)
        return Row("Redis Cluster rebalance", moved, seconds, "3 -> 4 masters, redis-cli --cluster rebalance")
    finally:
        await redis.stop()


# --------------------------------------------------------------------------- pairdb


async def load_pairdb(client: Client, keys: int, value_bytes: int) -> None:
    value = os.urandom(value_bytes)
    batch = max(1, min(LOAD_BATCH, (8 * MB) // value_bytes))
    chunks = iter(range(0, keys, batch))

    async def worker() -> None:
        for start in chunks:
            items: list[tuple[str, str, bytes | None]] = [
                (TENANT, f"k{i:08d}", value) for i in range(start, min(start + batch, keys))
            ]
            for result in await client.put_many(items):
                if isinstance(result, ClientError):
                    raise result

    await asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY)))


class Sampler:
    """The peak RSS of a process, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.2)

    async def stop(self) -> int:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.peak


class ClientLoad:
    """Writers and readers keeping `concurrency` requests in flight, until stopped."""

    def __init__(self, client: Client, keys: int, concurrency: int = 32) -> None:
        self._stop = asyncio.Event()
        self.ops = 0
        self._tasks = [asyncio.create_task(self._run(client, keys, w)) for w in range(concurrency)]

    async def _run(self, client: Client, keys: int, w: int) -> None:
        i = 0
        value = os.urandom(SMALL_VALUE)
        while not self._stop.is_set():
            key = f"k{(w * 7919 + i * 104729) % keys:08d}"
            if i % 2:
                await client.put(TENANT, key, value)
            else:
                await client.get(TENANT, key)
            self.ops += 1
            i += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@dataclass
class PairdbRun:
    whole: Row
    copy: Row
    # The worker's peak RSS (bytes), the copy rate the migration itself reports (keys copied over
    # the copy's whole time, pauses between steps included), and the most keys one range held.
    peak: int
    reported_rate: float
    largest_range: int


async def bench_pairdb(
    workdir: Path,
    keys: int,
    value_bytes: int,
    rf: int,
    with_load: bool,
    *,
    throttle: int = 0,
    virtual_nodes: int = 0,
) -> PairdbRun:
    label = f"pairdb node addition{' under client load' if with_load else ''}"
    if throttle:
        label += f" throttled to {throttle:,} keys/s"
    say(f"{label}: starting a cluster, loading {keys:,} keys of {value_bytes:,} B ...")
    cluster = LocalCluster(
        workdir,
        storage_nodes=3,
        coordinators=1,
        default_tenant=None,
        log_level="WARNING",
        virtual_nodes=virtual_nodes,
    )
    try:
        await cluster.start()
        async with cluster.client() as client:
            await client.create_tenant(TENANT, rf)
            started = time.perf_counter()
            await load_pairdb(client, keys, value_bytes)
            load_seconds = time.perf_counter() - started
            say(f"  loaded in {load_seconds:.1f} s ({keys / load_seconds:,.0f} keys/s)")
            # An idle cluster is one whose nodes no longer report the loading as client traffic
            # (storage_node/load.py keeps half-second windows): else the copy starts out yielding to it.
            await asyncio.sleep(1.5)
            node4 = await cluster.add_storage_node("node-4")
            assert cluster.worker is not None and cluster.worker.pid is not None
            sampler = Sampler(cluster.worker.pid)
            load = ClientLoad(client, keys) if with_load else None
            started = time.perf_counter()
            added = await client.add_node(
                "node-4", "127.0.0.1", node4.port, virtual_nodes, throttle_keys_per_second=throttle
            )
            copy_started = copy_ended = 0.0
            while True:
                status = await client.migration(added.migration_id)
                now = time.perf_counter()
                if status.phase == "data_copy" and not copy_started:
                    copy_started = now
                if copy_started and not copy_ended and status.phase not in BEFORE_COPY_ENDS:
                    copy_ended = now
                if status.ended:
                    break
                await asyncio.sleep(0.1)
            seconds = time.perf_counter() - started
            if load is not None:
                await load.stop()
            peak = await sampler.stop()
            if status.status != "completed":
                raise RuntimeError(f"the node addition ended {status.status}: {status.error}")
            moved = status.keys_copied
            whole = Row(label, moved, seconds, f"RF {rf}, AddStorageNode to completed", value_bytes)
            copy = Row(
                "  its data copy", moved, (copy_ended or now) - copy_started, "data_copy phase", value_bytes
            )
            # What the migration recorded: its copy rate (the status shows none once it ended), its ranges.
            connection = await asyncpg.connect(cluster.dsn)
            try:
                reported = await connection.fetchval(
                    "SELECT (progress->>'keys_per_second')::float FROM migrations WHERE migration_id = $1",
                    added.migration_id,
                )
                largest = await connection.fetchval(
                    "SELECT coalesce(max(keys), 0) FROM copy_ranges WHERE migration_id = $1",
                    added.migration_id,
                )
            finally:
                await connection.close()
            return PairdbRun(whole, copy, peak, float(reported or 0.0), int(largest))
    finally:
        await cluster.stop()


# --------------------------------------------------------------------------- report


def render(rows: Sequence[Row], reference: Row | None) -> str:
    columns = ("keys", "seconds", "keys/s", "MiB/s", "vs Redis")
    head = f"{'system':<44} | " + " | ".join(f"{c:>9}" for c in columns) + " | note"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.rate / reference.rate:.2f}x" if reference and reference.rate else "-"
        lines.append(
            f"{r.system:<44} | {r.keys:>9,} | {r.seconds:>9.2f} | {r.rate:>9,.0f} | "
            f"{r.mb_per_second:>9.1f} | {ratio:>9} | {r.note}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    print("pairdb rebalance benchmark: moving data onto a 4th node")
    print(f"machine : {os.cpu_count()} cores, {platform.system()} {platform.release()}, {platform.machine()}")
    print(
        f"data    : {args.keys:,} keys x {SMALL_VALUE} B; "
        f"{args.large_keys:,} keys x {LARGE_VALUE // 1024} KiB"
    )
    print(flush=True)
    disk = await asyncio.to_thread(disk_write_rate, workdir)
    engine_small = await asyncio.to_thread(engine_put_rate, workdir, 100_000, SMALL_VALUE)
    rows: list[Row] = []
    redis = None if args.skip_redis else await bench_redis(workdir, args.keys)
    if redis:
        rows.append(redis)
    plain = await bench_pairdb(workdir / "pairdb", args.keys, SMALL_VALUE, args.rf, False)
    copy = plain.copy
    rows += [plain.whole, plain.copy]
    peaks = [f"worker peak RSS {plain.peak / MB:,.0f} MB"]
    if args.with_load:
        shutil.rmtree(workdir / "pairdb", ignore_errors=True)
        loaded = await bench_pairdb(workdir / "pairdb", args.keys, SMALL_VALUE, args.rf, True)
        rows += [loaded.whole, loaded.copy]
        peaks.append(f"under load {loaded.peak / MB:,.0f} MB")
    throttled = None
    if args.throttle:
        shutil.rmtree(workdir / "pairdb", ignore_errors=True)
        throttled = await bench_pairdb(
            workdir / "pairdb", args.keys, SMALL_VALUE, args.rf, False, throttle=args.throttle
        )
        rows += [throttled.whole, throttled.copy]
    large_rows: list[Row] = []
    if args.large_keys:
        shutil.rmtree(workdir / "pairdb", ignore_errors=True)
        large = await bench_pairdb(workdir / "pairdb", args.large_keys, LARGE_VALUE, args.rf, False)
        large_rows = [large.whole, large.copy]
        peaks.append(f"16 KiB values {large.peak / MB:,.0f} MB")
    big = None
    if args.range_keys:
        shutil.rmtree(workdir / "pairdb", ignore_errors=True)
        # One virtual node per node: node-4 gains whole thirds of the ring, ~range_keys keys each.
        big = await bench_pairdb(
            workdir / "pairdb", 3 * args.range_keys, SMALL_VALUE, args.rf, False, virtual_nodes=1
        )
        rows += [big.whole, big.copy]
    print(render(rows, redis))
    if large_rows:
        print()
        print(render(large_rows, None))
    print()
    print(f"disk write rate (1 MiB writes + fdatasync): {disk / MB:,.0f} MiB/s")
    print(
        f"engine durable puts, batches of {ENGINE_BATCH}: {engine_small:,.0f} keys/s ({SMALL_VALUE} B values)"
    )
    print(f"pairdb copy vs engine put rate: {copy.rate / engine_small:.1%}")
    if redis:
        print(
            f"pairdb copy vs Redis Cluster rebalance: {copy.rate / redis.rate:.2f}x "
            f"(whole addition {plain.whole.rate / redis.rate:.2f}x)"
        )
    if large_rows:
        caps = ", ".join(f"{name} {cap / MB:.0f} MiB/s" for name, cap in PEER_CAPS.items())
        print(f"16 KiB copy: {large_rows[1].mb_per_second:,.0f} MiB/s (defaults elsewhere: {caps})")
    if throttled:
        print(
            f"throttle {args.throttle:,} keys/s: the migration reports {throttled.reported_rate:,.0f} keys/s "
            f"over its whole copy ({throttled.reported_rate / args.throttle:.1%} of the throttle)"
        )
    if big:
        print(
            f"largest range copied: {big.largest_range:,} keys (of {big.copy.keys:,}); "
            f"worker peak RSS during that addition {big.peak / MB:,.0f} MB"
        )
    print("; ".join(peaks))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keys", type=int, default=300_000, help="100-byte keys to move (default %(default)s)"
    )
    parser.add_argument(
        "--large-keys",
        type=int,
        default=20_000,
        help="16 KiB keys for the MiB/s figure; 0 skips (default %(default)s)",
    )
    parser.add_argument(
        "--rf", type=int, default=3, help="pairdb tenant replication factor (default %(default)s)"
    )
    parser.add_argument("--skip-redis", action="store_true", help="measure pairdb only")
    parser.add_argument("--with-load", action="store_true", help="also move the data under client load")
    parser.add_argument(
        "--throttle",
        type=int,
        default=0,
        help="also run an addition throttled to this many keys/s and compare its copy rate; 0 skips",
    )
    parser.add_argument(
        "--range-keys",
        type=int,
        default=0,
        help="also copy ranges of about this many keys (3x as many keys, one virtual node per node) "
        "and report the worker's peak memory; 0 skips",
    )
    args = parser.parse_args(argv)
    if (
        args.keys < 1
        or args.large_keys < 0
        or args.throttle < 0
        or args.range_keys < 0
        or not 1 <= args.rf <= 3
    ):
        parser.error(
            "--keys must be positive, --large-keys, --throttle, --range-keys not negative, --rf 1..3"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(json=False, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-rebalance-"))
    workdir.chmod(0o755)  # the embedded PostgreSQL runs as its own user
    try:
        asyncio.run(run(args, workdir))
    except asyncio.CancelledError:
        raise SystemExit("rebalance.py: stopped by SIGTERM") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
