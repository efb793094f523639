"""Compare LMDB (py-lmdb) and RocksDB (rocksdict) as the storage node's durable engine.

Run:  .venv/bin/python bench/engines.py [--records N] [--dir PARENT] ...

Every write below is acknowledged only after it is durable on disk:

* LMDB: ``lmdb.open(map_size=8 GiB)`` with the defaults ``sync=True`` and
  ``metasync=True``, so each write transaction fsyncs on commit.
* RocksDB: ``Options(raw_mode=True)`` (bytes in/out, no pickling); everything else
  is left at the rocksdict/RocksDB defaults (64 MiB memtable, Snappy compression,
  2 background jobs). Writes use ``WriteOptions.sync=True``,
  which fsyncs the WAL before the call returns. After the load, the memtable is
  flushed so reads come from an SST file, not the memtable (at the default size the
  whole data set would otherwise fit in the memtable).

Record layout (the storage node's own):

* key   = 8-byte big-endian token (first 8 bytes of blake2b over the
          tenant length + tenant + key) + 1-byte tenant length + tenant + key,
          built by storage_node.engine.encode_key
* value = 8-byte HLC + 4-byte origin (big-endian) + 1 tombstone flag byte + 100 bytes

Operations (ratio column = lmdb / rocksdict; > 1 means the lmdb figure is higher):

1. batched durable put: batches of ``--batch`` records, one durable commit per batch;
2. single-record durable put: one durable commit per record;
3. random point gets of existing keys, both in one read transaction/snapshot and
   with a fresh read transaction per get (what a per-RPC handler would do);
4. token-ordered range scans (seek to the first key >= a random start token, iterate
   until past start + ``--scan-fraction`` of the token space) and a full scan;
5. asyncio: concurrent single durable puts issued via ``asyncio.to_thread`` from
   several tasks while a ticker measures event-loop lag, since the node is driven
   from an asyncio gRPC server and a call that holds the GIL stalls the loop.

All data lives in a fresh temporary directory that is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import lmdb
import rocksdict

from pairdb.storage_node.layout import encode_key

Record = tuple[bytes, bytes]

TOKEN_SPACE = 1 << 64
LMDB_MAP_SIZE = 8 << 30
VALUE_SIZE = 100
VALUE_LEN = 12 + 1 + VALUE_SIZE  # version + tombstone flag + payload
ORIGIN_NODE = 7
TENANTS = (b"acme", b"globex-corp", b"initech")


# --------------------------------------------------------------------------- records


def make_key(tenant: bytes, user_key: bytes) -> bytes:
    """The storage node's own key layout: token + tenant length + tenant + key."""
    return encode_key(tenant.decode(), user_key.decode())


def make_value(hlc: int, payload: bytes, tombstone: bool = False) -> bytes:
    """Build the engine value: 12-byte version + tombstone flag + payload."""
    return struct.pack(">QIB", hlc, ORIGIN_NODE, int(tombstone)) + payload


def make_records(count: int, start: int, rng: random.Random) -> list[Record]:
    """Generate ``count`` records spread round-robin over the tenants."""
    # HLC = physical milliseconds << 16 | logical counter, like the real clock.
    base_hlc = int(time.time() * 1000) << 16
    records = []
    for i in range(start, start + count):
        tenant = TENANTS[i % len(TENANTS)]
        key = make_key(tenant, b"user:%010d" % i)
        # Random payload so RocksDB's Snappy compression gains nothing it would not in prod.
        records.append((key, make_value(base_hlc + i, rng.randbytes(VALUE_SIZE))))
    return records


def token_bound(token: int) -> bytes:
    """Smallest possible key whose token is ``token``."""
    return token.to_bytes(8, "big")


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the result table."""

    label: str
    lmdb: float = 0.0
    rocksdict: float = 0.0
    fmt: str = "{:,.0f}"


@dataclass
class Table:
    """Result rows keyed by label, filled in one engine at a time."""

    rows: dict[str, Row] = field(default_factory=dict)

    def set(self, engine: str, label: str, value: float, fmt: str = "{:,.0f}") -> None:
        row = self.rows.setdefault(label, Row(label, fmt=fmt))
        setattr(row, engine, value)

    def render(self) -> str:
        width = max(len(r.label) for r in self.rows.values())
        head = f"{'operation':<{width}} | {'lmdb':>12} | {'rocksdict':>12} | {'ratio':>6}"
        lines = [head, "-" * len(head)]
        for r in self.rows.values():
            ratio = f"{r.lmdb / r.rocksdict:.2f}" if r.rocksdict else "-"
            lines.append(
                f"{r.label:<{width}} | {r.fmt.format(r.lmdb):>12} | "
                f"{r.fmt.format(r.rocksdict):>12} | {ratio:>6}"
            )
        return "\n".join(lines)


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    """Run ``fn`` (which returns an item count) and return (count, seconds)."""
    start = time.perf_counter()
    count = fn()
    return count, time.perf_counter() - start


def value_len(value: object) -> int:
    """Length of a fetched value; every benchmarked get targets an existing key."""
    if not isinstance(value, bytes):
        raise KeyError("benchmark key missing from the store")
    return len(value)


def disk_usage_mib(path: Path) -> float:
    """Allocated bytes under ``path`` (st_blocks, so sparse files count truthfully)."""
    total = sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
    return total / (1 << 20)


def fsync_latency_us(directory: Path, rounds: int = 200) -> float:
    """Median latency of a 4 KiB write + fdatasync on the benchmark filesystem."""
    path = directory / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        for i in range(rounds):
            start = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 4096)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples) * 1e6


# --------------------------------------------------------------------------- engines


class Engine(ABC):
    """The handful of operations the benchmark needs, implemented per engine."""

    name: str

    @abstractmethod
    def put_batch(self, batch: Sequence[Record]) -> None:
        """Write ``batch`` atomically and durably."""

    @abstractmethod
    def put_one(self, key: bytes, value: bytes) -> None:
        """Write one record durably."""

    @abstractmethod
    def get_each(self, keys: Sequence[bytes]) -> int:
        """Point-get every key with a fresh read view per get; return bytes read."""

    @abstractmethod
    def get_shared(self, keys: Sequence[bytes]) -> int:
        """Point-get every key inside one read view; return bytes read."""

    @abstractmethod
    def scan(self, start: bytes, end: bytes | None) -> int:
        """Count records with start <= key < end (end None = to the last key)."""

    def settle(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Bring the store to a steady state before the read phase."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's files."""


class LmdbEngine(Engine):
    name = "lmdb"

    def __init__(self, path: Path) -> None:
        # sync/metasync default to True: commit returns only after fsync.
        self.env = lmdb.open(str(path), map_size=LMDB_MAP_SIZE)

    def put_batch(self, batch: Sequence[Record]) -> None:
        with self.env.begin(write=True) as txn:
            for key, value in batch:
                txn.put(key, value)

    def put_one(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value)

    def get_each(self, keys: Sequence[bytes]) -> int:
        total = 0
        for key in keys:
            with self.env.begin() as txn:
                total += value_len(txn.get(key))
        return total

    def get_shared(self, keys: Sequence[bytes]) -> int:
        with self.env.begin() as txn:
            return sum(value_len(txn.get(key)) for key in keys)

    def scan(self, start: bytes, end: bytes | None) -> int:
        count = 0
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start):
                return 0
            for key, _value in cursor.iternext():
                if end is not None and key >= end:
                    break
                count += 1
        return count

    def close(self) -> None:
        self.env.close()


class RocksEngine(Engine):
    name = "rocksdict"

    def __init__(self, path: Path) -> None:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        self.db = rocksdict.Rdict(str(path), options)
        self.sync = rocksdict.WriteOptions()
        self.sync.sync = True

    def put_batch(self, batch: Sequence[Record]) -> None:
        wb = rocksdict.WriteBatch(raw_mode=True)
        for key, value in batch:
            wb.put(key, value)
        self.db.write(wb, self.sync)

    def put_one(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value, self.sync)

    def get_each(self, keys: Sequence[bytes]) -> int:
        get = self.db.get
        return sum(value_len(get(key)) for key in keys)

    def get_shared(self, keys: Sequence[bytes]) -> int:
        # A snapshot is RocksDB's analogue of an LMDB read txn (one consistent view).
        snapshot = self.db.snapshot()
        return sum(value_len(snapshot[key]) for key in keys)

    def scan(self, start: bytes, end: bytes | None) -> int:
        count = 0
        # items(from_key=...) seeks to the first key >= start and iterates in Rust,
        # measurably faster than driving RdictIter.next() from Python.
        # raw_mode guarantees bytes; the stubs only know the generic key union.
        pairs = cast("Iterator[tuple[bytes, bytes]]", self.db.items(from_key=start))
        for key, _value in pairs:
            if end is not None and key >= end:
                break
            count += 1
        return count

    def settle(self) -> None:
        self.db.flush(True)

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- phases


def bench_asyncio(engine: Engine, records: Sequence[Record], tasks: int) -> tuple[float, float, float]:
    """Durable single puts from ``tasks`` asyncio tasks via worker threads.

    Returns (records/s, p99 loop lag ms, max loop lag ms).
    """
    tick = 0.001

    async def run() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=tasks))
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            # A 1 ms heartbeat: anything beyond 1 ms is time the loop could not run.
            while not done.is_set():
                start = time.perf_counter()
                await asyncio.sleep(tick)
                lags.append(max(0.0, time.perf_counter() - start - tick))

        async def writer(part: Sequence[Record]) -> None:
            for key, value in part:
                await asyncio.to_thread(engine.put_one, key, value)

        heartbeat = asyncio.create_task(ticker())
        start = time.perf_counter()
        await asyncio.gather(*(writer(records[i::tasks]) for i in range(tasks)))
        elapsed = time.perf_counter() - start
        done.set()
        await heartbeat
        lags.sort()
        p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
        return len(records) / elapsed, p99 * 1e3, (lags[-1] if lags else 0.0) * 1e3

    return asyncio.run(run())


def bench_engine(
    engine: Engine,
    args: argparse.Namespace,
    load: Sequence[Record],
    singles: Sequence[Record],
    async_recs: Sequence[Record],
    table: Table,
) -> None:
    """Run every phase against one engine and record the results in ``table``."""
    name = engine.name
    # Same seed per engine so both see identical get keys and scan ranges.
    rng = random.Random(args.seed + 1)

    # 1. batched durable put (this is also the initial load).
    def batched() -> int:
        for i in range(0, len(load), args.batch):
            engine.put_batch(load[i : i + args.batch])
        return len(load)

    n, secs = timed(batched)
    table.set(name, f"batched durable put ({args.batch}/batch), records/s", n / secs)
    table.set(name, "batched durable put, batches/s", n / args.batch / secs)

    # 2. single-record durable put.
    def single() -> int:
        for key, value in singles:
            engine.put_one(key, value)
        return len(singles)

    n, secs = timed(single)
    table.set(name, "single durable put, records/s", n / secs)

    engine.settle()

    # 3. random point gets of existing keys.
    keys = [load[rng.randrange(len(load))][0] for _ in range(args.gets)]
    for label, get in (("one read txn/snapshot", engine.get_shared), ("fresh read per get", engine.get_each)):
        start = time.perf_counter()
        got = get(keys)
        secs = time.perf_counter() - start
        # Every value is VALUE_LEN bytes, so the byte total proves every get hit.
        if got != len(keys) * VALUE_LEN:
            raise RuntimeError(f"{name}: point gets read {got} bytes, expected {len(keys) * VALUE_LEN}")
        table.set(name, f"point get, {label}, gets/s", len(keys) / secs)

    # 4. token-ordered scans.
    width = int(TOKEN_SPACE * args.scan_fraction)

    def ranges() -> int:
        total = 0
        for _ in range(args.scans):
            start = rng.randrange(TOKEN_SPACE - width)
            total += engine.scan(token_bound(start), token_bound(start + width))
        return total

    n, secs = timed(ranges)
    table.set(name, f"range scan ({args.scan_fraction:.0%} of tokens), records/s", n / secs)
    n, secs = timed(lambda: engine.scan(b"", None))
    if n != len(load) + len(singles):
        raise RuntimeError(f"{name}: full scan saw {n} records, expected {len(load) + len(singles)}")
    table.set(name, "full scan, records/s", n / secs)

    # 5. asyncio-driven durable puts.
    rate, p99, worst = bench_asyncio(engine, async_recs, args.tasks)
    table.set(name, f"asyncio to_thread single put x{args.tasks} tasks, rec/s", rate)
    table.set(name, "  event-loop lag p99, ms", p99, fmt="{:.2f}")
    table.set(name, "  event-loop lag max, ms", worst, fmt="{:.2f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark LMDB vs RocksDB (rocksdict) for pairdb's durable engine.",
    )
    parser.add_argument(
        "--records",
        type=int,
        default=200_000,
        help="records loaded with batched durable puts (default: 200000)",
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="records per durable batch commit (default: 100)"
    )
    parser.add_argument(
        "--single", type=int, default=2_000, help="records written one durable commit each (default: 2000)"
    )
    parser.add_argument(
        "--gets", type=int, default=100_000, help="random point gets of existing keys (default: 100000)"
    )
    parser.add_argument(
        "--scans", type=int, default=10, help="number of random token-range scans (default: 10)"
    )
    parser.add_argument(
        "--scan-fraction",
        type=float,
        default=0.10,
        help="share of the token space each range scan covers (default: 0.10)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=4,
        help="concurrent asyncio tasks in the to_thread put phase (default: 4)",
    )
    parser.add_argument(
        "--async-records",
        type=int,
        default=2_000,
        help="records written in the asyncio phase (default: 2000)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent directory for the fresh temporary data directory "
        "(default: the system temp dir); only that subdirectory is deleted",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    args = parser.parse_args(argv)
    if not 0 < args.scan_fraction <= 1:
        parser.error("--scan-fraction must be in (0, 1]")
    if min(args.records, args.batch, args.single, args.gets, args.tasks, args.async_records) < 1:
        parser.error("counts must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pairdb-engines-", dir=args.dir))
    try:
        print("pairdb storage engine benchmark")
        print(
            f"machine : {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"{platform.machine()}"
        )
        print(f"python  : {sys.version.split()[0]} ({platform.python_implementation()})")
        print(
            f"lmdb    : py-lmdb {importlib.metadata.version('lmdb')}, "
            f"liblmdb {'.'.join(map(str, lmdb.version()))}"
        )
        print(f"rocksdb : rocksdict {importlib.metadata.version('rocksdict')}")
        print(f"data dir: {workdir}")
        print(f"fsync   : {fsync_latency_us(workdir):.0f} us median (4 KiB write + fdatasync)")
        print(
            f"workload: {args.records:,} records, {len(TENANTS)} tenants, "
            f"{args.batch}/batch, {args.single:,} single puts, {args.gets:,} gets, "
            f"{args.scans} scans of {args.scan_fraction:.0%}"
        )
        print()

        rng = random.Random(args.seed)
        load = make_records(args.records, 0, rng)
        singles = make_records(args.single, args.records, rng)
        async_recs = make_records(args.async_records, args.records + args.single, rng)

        table = Table()
        for factory in (LmdbEngine, RocksEngine):
            path = workdir / factory.name
            engine = factory(path)
            started = time.perf_counter()
            try:
                bench_engine(engine, args, load, singles, async_recs, table)
            finally:
                engine.close()
            table.set(factory.name, "on-disk size after run, MiB", disk_usage_mib(path), fmt="{:,.1f}")
            table.set(factory.name, "engine wall time, s", time.perf_counter() - started, fmt="{:.1f}")

        print(table.render())
        print()
        print("ratio = lmdb / rocksdict: >1 means lmdb is higher (better for rates, worse for lag/size/time)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
