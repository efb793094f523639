"""The storage engine: durable, token-ordered, versioned last-write-wins records on LMDB.

Chosen over RocksDB by bench/engines.py (figures in the README). Every method
is synchronous and short; committer.py runs writes on one thread
with group commit, so the event loop never waits on an fsync.

The `records` database holds each record in layout.py's form: keys sort by
token, so a token range is one sequential cursor walk. The `meta`
database holds counters kept in the same transaction as the writes they count
(the node's, and each tenant's live keys and bytes, for storage quotas), and the
node's fence epoch (see proto/storage.proto).

Writes take entries (layout.py): what a coordinator sent or a copy pulled is
stored as it came, once checked, without being decoded into a record.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import lmdb

from pairdb.kernel.keyspace import APPLIED, TOKEN_MAX, Applied, StoredRecord, Version, in_range
from pairdb.storage_node.layout import (
    ENTRY,
    TOKEN,
    TOMBSTONE,
    VERSION,
    Entry,
    clockwise,
    decode,
    encode_entry,
    encode_key,
    is_tombstone,
    order,
    tenant_of,
)

__all__ = [
    "Applied",
    "Engine",
    "RangeRepair",
    "Stats",
    "StoredRecord",
    "TenantUsage",
    "digest_of",
]

_COUNTERS = struct.Struct(">QQQ")
_COUNTERS_KEY = b"counters"
_FENCE = struct.Struct(">Q")
_FENCE_KEY = b"fence"
_PURGED_KEY = b"purged"
_U64 = struct.Struct(">Q")
# b"repaired" | start (8) | end (8) -> the hlc a repair of (start, end] started at (8 bytes).
_REPAIRED_PREFIX = b"repaired"
_RANGE = struct.Struct(">QQ")
# b"usage/" | tenant -> its live keys and their bytes (key and value), tombstones excluded.
_USAGE_PREFIX = b"usage/"
_USAGE = struct.Struct(">QQ")
# Present once every record was counted into the usage counters (a node older than them
# counts its records once, when it opens).
_USAGE_COUNTED_KEY = b"usage-counted"
DIGEST_BYTES = 16
DEFAULT_MAP_SIZE = 1 << 40  # address space, not disk: LMDB files grow as written


@dataclass(frozen=True, slots=True)
class Stats:
    keys: int
    bytes: int
    tombstones: int
    # Tombstones purged since the node was created (Engine.purge_tombstones).
    purged: int = 0


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's live data on this node: keys, and their bytes (key and value)."""

    keys: int
    bytes: int


class _UsageChange:
    """How a write transaction changes the node's counters and each tenant's usage, added as it commits."""

    def __init__(self) -> None:
        self.keys = self.size = self.tombstones = 0
        self.by_tenant: dict[bytes, list[int]] = {}

    def came(self, db_key: bytes, db_value: bytes) -> None:
        """db_value is stored under db_key now."""
        self._count(db_key, db_value, 1)

    def went(self, db_key: bytes, db_value: bytes) -> None:
        """db_value, stored under db_key, is gone (deleted or replaced)."""
        self._count(db_key, db_value, -1)

    def _count(self, db_key: bytes, db_value: bytes, sign: int) -> None:
        if is_tombstone(db_value):
            self.tombstones += sign
        else:
            value_bytes = len(db_value) - VERSION.size
            self.keys += sign
            self.size += sign * value_bytes
            self.add(db_key, value_bytes, sign)

    def add(self, db_key: bytes, value_bytes: int, sign: int) -> None:
        tenant = tenant_of(db_key)
        change = self.by_tenant.get(tenant)
        if change is None:
            change = self.by_tenant[tenant] = [0, 0]
        change[0] += sign
        change[1] += sign * (len(db_key) - 9 - len(tenant) + value_bytes)


@dataclass(frozen=True, slots=True)
class RangeRepair:
    """A range a finished repair covered, and the hlc that repair started at."""

    start: int
    end: int
    repaired_at: int


def range_hash() -> hashlib._Hash:
    """The hash of range digests: SHA-256, which CPUs compute in hardware (SHA-NI, ARMv8): on this
    project's machine twice as fast as blake2b over large values. A digest keeps its first 16 bytes."""
    return hashlib.sha256()


def _digest(
    entries: Iterable[tuple[bytes, bytes]], tenants: frozenset[bytes] = frozenset()
) -> tuple[bytes, int]:
    h = range_hash()
    count = 0
    for db_key, db_value in entries:
        if tenants and tenant_of(db_key) not in tenants:
            continue
        # _entry's bytes, fed piece by piece: no copy of a large value.
        h.update(len(db_key).to_bytes(2, "big"))
        h.update(db_key)
        h.update(db_value)
        count += 1
    return h.digest()[:DIGEST_BYTES], count


def _entry(db_key: bytes, db_value: bytes) -> bytes:
    return len(db_key).to_bytes(2, "big") + db_key + db_value


def digest_entry(record: StoredRecord) -> bytes:
    """What one record adds to a range digest; fed in scan order, they give Engine.digest."""
    return _entry(*encode_entry(record))


def digest_of(records: Iterable[StoredRecord], start: int, end: int) -> tuple[bytes, int]:
    """The digest Engine.digest(start, end) would give for a node holding exactly these records.

    Lets the migration worker compare a merged view of several replicas with
    one node's RangeDigest.
    """
    entries = [encode_entry(r) for r in records]
    # Clockwise from start, as the engine walks: tokens above start first when the range wraps.
    entries.sort(key=lambda e: clockwise(e[0], start, end))
    return _digest(entries)


def _segments(start: int, end: int) -> list[tuple[int, int]]:
    """The inclusive token intervals of the ring range (start, end]."""
    if start < end:
        return [(start + 1, end)]
    # Wrapping (start == end is the whole ring): (start, MAX] then [0, end].
    parts = [(start + 1, TOKEN_MAX)] if start < TOKEN_MAX else []
    return [*parts, (0, end)]


def _count(cursor: lmdb.Cursor, start: int, end: int) -> int:
    count = 0
    for lo, hi in _segments(start, end):
        if not cursor.set_range(TOKEN.pack(lo)):
            continue
        for db_key in cursor.iternext(keys=True, values=False):
            if TOKEN.unpack_from(db_key)[0] > hi:
                break
            count += 1
    return count


def _overlap(s1: int, e1: int, s2: int, e2: int) -> bool:
    """Whether ring ranges (s1, e1] and (s2, e2] share a token: then one holds the other's end."""
    return in_range(e1, s2, e2) or in_range(e2, s1, e1)


class Engine:
    def __init__(self, path: Path, map_size: int = DEFAULT_MAP_SIZE, *, readonly: bool = False) -> None:
        """readonly: reads only, beside the node's own engine in another process (background.py)."""
        self.path = path
        if readonly:
            self._env = lmdb.open(str(path), map_size=map_size, max_dbs=2, readonly=True, readahead=False)
            self._records = self._env.open_db(b"records", create=False)
            self._meta = self._env.open_db(b"meta", create=False)
            return
        # The node's data is its tenants' values: readable by its own user only.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # sync/metasync on: a committed transaction is on disk, so an
        # acknowledged write survives kill -9 and power loss.
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=2, sync=True, metasync=True, readahead=False, mode=0o600
        )
        # mode applies to new files only; tighten those an older pairdb left readable.
        for name in ("data.mdb", "lock.mdb"):
            (path / name).chmod(0o600)
        self._records = self._env.open_db(b"records")
        self._meta = self._env.open_db(b"meta")
        self._count_usage_once()

    def close(self) -> None:
        self._env.close()

    # -- writes (call from one thread at a time) ---------------------------------

    def apply_many(self, records: Sequence[StoredRecord]) -> list[bool]:
        """apply_records, answering only whether each record was applied."""
        return [a.applied for a in self.apply_records(records)]

    def apply_records(self, records: Sequence[StoredRecord]) -> list[Applied]:
        """apply_entries of the records, encoded."""
        return self.apply_entries([encode_entry(r) for r in records])

    def apply_entries(self, entries: Sequence[Entry]) -> list[Applied]:
        """Store each entry newer than the stored one (StoredRecord.order, read from the bytes); one commit.

        An equal or older entry is ignored, which makes retries and copies
        idempotent; its answer says which version the node holds instead. The
        caller checked the entries (layout.read_entry): they are stored as they are.
        """
        applied: list[Applied] = []
        usage = _UsageChange()
        header = VERSION.unpack_from
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._records)
            # Read and written in one C call each: per entry, only the comparison runs in Python.
            held = dict(cursor.getmulti([db_key for db_key, _ in entries]))
            stored: list[Entry] = []
            for entry in entries:
                db_key, db_value = entry
                current = held.get(db_key)
                if current is not None:
                    new_hlc, new_origin, _ = header(db_value)
                    old_hlc, old_origin, _ = header(current)
                    if (new_hlc, new_origin) != (old_hlc, old_origin):
                        newer = (new_hlc, new_origin) > (old_hlc, old_origin)
                    else:  # one version, two writers: the content decides, as on every replica
                        newer = order(db_value) > order(current)
                    if not newer:
                        applied.append(Applied(False, Version(old_hlc, old_origin), same=db_value == current))
                        continue
                    usage.went(db_key, current)
                held[db_key] = db_value  # a later entry of the same key meets this one
                stored.append(entry)
                usage.came(db_key, db_value)
                applied.append(APPLIED)
            # In order, so of one key's entries the newest, stored last, stays.
            cursor.putmulti(stored)
            self._add_usage(txn, usage)
        return applied

    def raise_fence(self, epoch: int) -> int:
        """Raise the fence to epoch (never lower it), durably; returns the fence in force."""
        with self._env.begin(write=True) as txn:
            fence = max(self._fence(txn), epoch)
            txn.put(_FENCE_KEY, _FENCE.pack(fence), db=self._meta)
        return fence

    def fence(self) -> int:
        with self._env.begin() as txn:
            return self._fence(txn)

    def _fence(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_FENCE_KEY, db=self._meta)
        return 0 if raw is None else int(_FENCE.unpack(raw)[0])

    def delete_range(self, start: int, end: int, tenants: frozenset[str] = frozenset()) -> int:
        """Remove every record, tombstones included, in (start, end]; one durable commit.

        With tenants, only their records: the others in the range stay.
        """
        return self.delete_slice(start, end, tenants)[0]

    def delete_slice(
        self,
        start: int,
        end: int,
        tenants: frozenset[str] = frozenset(),
        *,
        limit: int = 0,
        after: bytes | None = None,
    ) -> tuple[int, bytes | None]:
        """delete_range over the first limit records (0: all) of (start, end] past after; one commit.

        Returns how many were removed and the key to go on after, None once the range is done.
        """
        wanted = {t.encode() for t in tenants}
        doomed: list[tuple[bytes, bytes]] = []
        usage = _UsageChange()
        with self._env.begin(write=True) as txn:
            last: bytes | None = None
            for visited, (db_key, db_value) in enumerate(self._walk(txn, start, end, after), 1):
                if not wanted or tenant_of(db_key) in wanted:
                    doomed.append((db_key, db_value))
                if visited == limit:
                    last = db_key
                    break
            for db_key, db_value in doomed:
                usage.went(db_key, db_value)
                txn.delete(db_key, db=self._records)
            self._add_usage(txn, usage)
        return len(doomed), last

    def purge_tombstones(self, start: int, end: int, cutoffs: Mapping[str, int], repaired_at: int = 0) -> int:
        """Remove the tombstones of (start, end] older than their tenant's cutoff hlc; one durable commit.

        Only tenants in cutoffs are touched. The caller (a repair) vouches that
        every replica of the range holds each of these deletes, so no replica
        can bring an older value back. repaired_at, when set, records that a
        repair started at that hlc covered the range (Stats reports it);
        records of earlier repairs of overlapping ranges are dropped.
        """
        wanted = {t.encode(): cutoff for t, cutoff in cutoffs.items()}
        purged = 0
        usage = _UsageChange()
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._records)
            for lo, hi in _segments(start, end) if wanted else []:
                if not cursor.set_range(TOKEN.pack(lo)):
                    continue
                while True:
                    db_key = cursor.key()
                    if TOKEN.unpack_from(db_key)[0] > hi:
                        break
                    cutoff = wanted.get(tenant_of(db_key))
                    db_value = cursor.value()
                    hlc, _, flags = VERSION.unpack_from(db_value)
                    if cutoff is None or not flags & TOMBSTONE or hlc >= cutoff:
                        if not cursor.next():
                            break
                        continue
                    usage.tombstones -= 1
                    purged += 1
                    # delete() moves the cursor to the next record.
                    if not cursor.delete() or cursor.key() == b"":
                        break
            self._add_usage(txn, usage)
            raw = txn.get(_PURGED_KEY, db=self._meta)
            total = (0 if raw is None else _U64.unpack(raw)[0]) + purged
            txn.put(_PURGED_KEY, _U64.pack(total), db=self._meta)
            if repaired_at:
                for old in self._repairs_in(txn):
                    if _overlap(old.start, old.end, start, end):
                        txn.delete(_REPAIRED_PREFIX + _RANGE.pack(old.start, old.end), db=self._meta)
                txn.put(_REPAIRED_PREFIX + _RANGE.pack(start, end), _U64.pack(repaired_at), db=self._meta)
        return purged

    # -- reads (any thread) --------------------------------------------------------

    def get(self, tenant_id: str, key: str) -> StoredRecord | None:
        db_key = encode_key(tenant_id, key)
        with self._env.begin() as txn:
            raw = txn.get(db_key, db=self._records)
            return None if raw is None else decode(db_key, raw)

    def scan(
        self, start: int, end: int, *, limit: int, after: bytes | None = None, include_tombstones: bool = True
    ) -> tuple[list[StoredRecord], bytes | None]:
        """Up to limit records of (start, end] in token order, resuming after the key `after`.

        Returns the records and the resume key for the next call (None at the end).
        Each call is its own short read transaction, so a long scan never pins
        old pages while writes go on.
        """
        out: list[StoredRecord] = []
        last: bytes | None = None
        with self._env.begin() as txn:
            for db_key, db_value in self._walk(txn, start, end, after):
                last = db_key
                record = decode(db_key, db_value)
                if include_tombstones or not record.tombstone:
                    out.append(record)
                if len(out) >= limit:
                    return out, last
        return out, None

    def scan_entries(
        self, start: int, end: int, *, limit: int, max_bytes: int, after: bytes | None = None
    ) -> tuple[bytes, int, bytes | None]:
        """Like scan, tombstones included, but packed entries: (entries, how many, resume key or None).

        Stops after limit entries or once max_bytes are packed.
        """
        out = bytearray()
        count = 0
        with self._env.begin() as txn:
            for db_key, db_value in self._walk(txn, start, end, after):
                out += ENTRY.pack(len(db_key), len(db_value))
                out += db_key
                out += db_value
                count += 1
                if count >= limit or len(out) >= max_bytes:
                    return bytes(out), count, db_key
        return bytes(out), count, None

    def scan_entries_many(
        self,
        ranges: Sequence[tuple[int, int]],
        *,
        limit: int,
        max_bytes: int,
        at: int = 0,
        after: bytes | None = None,
    ) -> tuple[list[tuple[int, bytes, int]], tuple[int, bytes | None] | None]:
        """scan_entries over ranges[at:] (from after in ranges[at]), up to limit entries or max_bytes in all.

        Returns (position, entries, how many) for each range with entries, and
        where to go on: (position, resume key or None), or None once every range is done.
        """
        pieces: list[tuple[int, bytes, int]] = []
        left, room = limit, max_bytes
        for position in range(at, len(ranges)):
            start, end = ranges[position]
            entries, count, resume = self.scan_entries(
                start, end, limit=left, max_bytes=room, after=after if position == at else None
            )
            if count:
                pieces.append((position, entries, count))
            left, room = left - count, room - len(entries)
            if resume is not None:  # the limit or max_bytes was reached in this range
                return pieces, (position, resume)
        return pieces, None

    def count(self, start: int, end: int) -> int:
        """How many records (tombstones included) are in (start, end]; no value is read."""
        return self.counts([(start, end)])[0]

    def counts(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """count() of each range, in one read transaction."""
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._records)
            return [_count(cursor, start, end) for start, end in ranges]

    def digest(self, start: int, end: int, tenants: frozenset[str] = frozenset()) -> tuple[bytes, int]:
        """A hash of every record in (start, end] (key, version and content), and their count.

        The content counts: replicas holding one version with different values differ.
        With tenants, only their records count (replica sets differ between replication factors).
        """
        return self.digests([(start, end)], tenants)[0]

    def digests(
        self, ranges: Sequence[tuple[int, int]], tenants: frozenset[str] = frozenset()
    ) -> list[tuple[bytes, int]]:
        """digest() of each range, in one read transaction."""
        wanted = frozenset(t.encode() for t in tenants)
        with self._env.begin() as txn:
            return [_digest(self._walk(txn, start, end, None), wanted) for start, end in ranges]

    def stats(self) -> Stats:
        with self._env.begin() as txn:
            raw = txn.get(_PURGED_KEY, db=self._meta)
            return Stats(*self._counters(txn), purged=0 if raw is None else _U64.unpack(raw)[0])

    def tenant_usage(self) -> dict[str, TenantUsage]:
        """Each tenant's live keys and bytes on this node (tenants with none are left out)."""
        out: dict[str, TenantUsage] = {}
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._meta)
            if cursor.set_range(_USAGE_PREFIX):
                for db_key, db_value in cursor:
                    if not bytes(db_key).startswith(_USAGE_PREFIX):
                        break
                    keys, size = _USAGE.unpack(db_value)
                    out[bytes(db_key[len(_USAGE_PREFIX) :]).decode()] = TenantUsage(keys, size)
        return out

    def _add_usage(self, txn: lmdb.Transaction, usage: _UsageChange) -> None:
        """Add a transaction's change to the node's counters and to each tenant's usage."""
        keys, size, tombstones = self._counters(txn)
        counters = (keys + usage.keys, size + usage.size, tombstones + usage.tombstones)
        txn.put(_COUNTERS_KEY, _COUNTERS.pack(*counters), db=self._meta)
        for tenant, (keys, size) in usage.by_tenant.items():
            if not keys and not size:
                continue
            counter = _USAGE_PREFIX + tenant
            raw = txn.get(counter, db=self._meta)
            old_keys, old_size = (0, 0) if raw is None else _USAGE.unpack(raw)
            keys, size = old_keys + keys, old_size + size
            if keys or size:
                txn.put(counter, _USAGE.pack(keys, size), db=self._meta)
            else:
                txn.delete(counter, db=self._meta)

    def _count_usage_once(self) -> None:
        """Count the records of a node written before usage counters existed; once, one transaction.

        A walk over every record: on a large node a slow first start after the upgrade.
        """
        with self._env.begin(write=True) as txn:
            if txn.get(_USAGE_COUNTED_KEY, db=self._meta) is not None:
                return
            usage = _UsageChange()
            for db_key, db_value in txn.cursor(db=self._records):
                if not VERSION.unpack_from(db_value)[2] & TOMBSTONE:
                    usage.add(bytes(db_key), len(db_value) - VERSION.size, 1)
            self._add_usage(txn, usage)
            txn.put(_USAGE_COUNTED_KEY, b"", db=self._meta)

    def repairs(self) -> list[RangeRepair]:
        """The ranges finished repairs covered (the latest per range), in token order."""
        with self._env.begin() as txn:
            return self._repairs_in(txn)

    def _repairs_in(self, txn: lmdb.Transaction) -> list[RangeRepair]:
        out: list[RangeRepair] = []
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(_REPAIRED_PREFIX):
            for db_key, db_value in cursor:
                if not bytes(db_key).startswith(_REPAIRED_PREFIX):
                    break
                start, end = _RANGE.unpack_from(db_key, len(_REPAIRED_PREFIX))
                out.append(RangeRepair(start, end, _U64.unpack(db_value)[0]))
        return out

    def _counters(self, txn: lmdb.Transaction) -> tuple[int, int, int]:
        raw = txn.get(_COUNTERS_KEY, db=self._meta)
        return (0, 0, 0) if raw is None else _COUNTERS.unpack(raw)

    def _walk(
        self, txn: lmdb.Transaction, start: int, end: int, after: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        cursor = txn.cursor(db=self._records)
        segments = _segments(start, end)
        resume_in = 0
        if after is not None:
            after_token = TOKEN.unpack_from(after)[0]
            resume_in = next(i for i, (lo, hi) in enumerate(segments) if lo <= after_token <= hi)
        for i, (lo, hi) in enumerate(segments):
            if i < resume_in:
                continue  # finished by an earlier call
            if i == resume_in and after is not None:
                if not cursor.set_range(after):
                    continue
                if cursor.key() == after and not cursor.next():
                    continue
            elif not cursor.set_range(TOKEN.pack(lo)):
                continue
            while True:
                db_key = cursor.key()
                if TOKEN.unpack_from(db_key)[0] > hi:
                    break
                yield bytes(db_key), bytes(cursor.value())
                if not cursor.next():
                    break
