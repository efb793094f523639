"""Hinted handoff's store: the writes a replica missed, kept for it until it answers again.

A send that failed because the replica could not take the write *then* (down,
unreachable, too slow, the call cancelled) leaves a hint: the node, the record,
the epoch the write was routed by, and when. Hints only hasten convergence —
read repair and the ring changes' copy and verify converge replicas without
them — so they never count toward a write's level, and a hint lost (a crash
before the flush, a full store) costs time, never data.

The request path only appends to a buffer in memory; a background task writes
the buffer to PostgreSQL in batches, one COPY per flush, over a pool of its own
(hint traffic never delays a lease renewal). handoff.py replays the hints.

Bounds: at most max_hints_per_node hints per node (hint_counts holds each
node's exact count, locked by the flush that checks it), none kept longer than
max_hint_window, and a bounded buffer while PostgreSQL is slow or away.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import grpc
import structlog

from pairdb.coordinator.metadata import Connection
from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.serving import metrics
from pairdb.serving.loops import stop_task
from pairdb.storage_node.client import StaleEpoch, StorageError

log = structlog.get_logger()

DEFAULT_MAX_HINTS_PER_NODE = 100_000
DEFAULT_MAX_HINT_WINDOW = 3 * 3600.0
# The largest window accepted: a tenth of the tombstone grace period (HintLimits.max_hint_window).
MAX_HINT_WINDOW = 24 * 3600.0

# Failures that say the node could not take the write then, nothing about the write itself.
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# Hints waiting in memory for the next flush, at most (PostgreSQL slow or away: further ones are dropped).
MAX_BUFFERED = 20_000
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
# A node that failed and then stayed unheard of this long (no traffic to it) starts a new failure streak.
STREAK_GAP = 60.0
_MAX_FLUSH_BACKOFF = 2.0
_U64_OFFSET = 1 << 63
_COLUMNS = ("node_id", "tenant_id", "key", "value", "hlc", "origin", "tombstone", "epoch", "created_at")


class DropReason(enum.StrEnum):
    FULL = "full"  # the node holds max_hints_per_node already, or the buffer is full
    EXPIRED = "expired"  # older than max_hint_window
    NOT_REPLICA = "not_replica"  # the node no longer replicates the key (it left, or the ring moved)
    # The record is older than its tenant's tombstone grace period: a delete that superseded it may
    # have been purged by a repair since, and the replayed record would bring the key back.
    PAST_GRACE = "past_grace"
    NODE_DOWN = "node_down"  # the node has been failing for longer than max_hint_window
    REFUSED = "refused"  # the node refuses the record itself (its version, its content)


def hintable(failure: BaseException) -> bool:
    """Whether a failed send becomes a hint: the node could not take the write then.

    Not a fence's refusal (StaleEpoch: the write is routed again by a newer
    view, by which that node may be no replica at all), nor a refusal of the
    record itself (INVALID_ARGUMENT, FAILED_PRECONDITION: it would be refused again).
    """
    if isinstance(failure, StaleEpoch):
        return False
    if isinstance(failure, StorageError):
        return failure.code in _TRANSIENT
    return isinstance(failure, asyncio.CancelledError | ConnectionError | TimeoutError)


@dataclass(frozen=True, slots=True)
class HintLimits:
    # Hints kept per node; past it, new hints for the node are dropped (counted) until replay makes room.
    max_hints_per_node: int = DEFAULT_MAX_HINTS_PER_NODE
    # Seconds a hint is kept: older ones are deleted, never replayed, and a node failing for longer
    # gets no new ones (it needs a repair, not a backlog). It must stay far below the grace period
    # after which tombstones may be purged (by default 10 days, as Cassandra's gc_grace_seconds): a
    # hint replayed after the tombstone that superseded its record was purged would bring the deleted
    # value back. Hence the MAX_HINT_WINDOW ceiling; a tenant with a shorter grace period has its
    # hints dropped once their record is older than it (handoff.py).
    max_hint_window: float = DEFAULT_MAX_HINT_WINDOW

    def __post_init__(self) -> None:
        if self.max_hints_per_node < 0:
            raise ValueError(f"max_hints_per_node must be 0 or more, not {self.max_hints_per_node}")
        if not 0 < self.max_hint_window <= MAX_HINT_WINDOW:
            raise ValueError(
                f"max_hint_window must be more than 0 and at most {MAX_HINT_WINDOW:.0f} seconds, far below "
                f"the tombstone grace period; not {self.max_hint_window}"
            )


@dataclass(frozen=True, slots=True)
class Hint:
    """A write node_id missed."""

    node_id: str
    record: StoredRecord
    # The epoch the write was routed by: a coordinator whose view is older leaves the hint alone.
    epoch: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredHint:
    id: int
    hint: Hint
    # Older than the window, by PostgreSQL's clock when it was claimed.
    expired: bool


@dataclass(slots=True)
class Settlement:
    """What a replay did with the hints it claimed; the hints it does not name stay for later."""

    replayed: list[int] = field(default_factory=list)
    dropped: dict[DropReason, list[int]] = field(default_factory=dict)

    def drop(self, reason: DropReason, hint_id: int) -> None:
        self.dropped.setdefault(reason, []).append(hint_id)

    @property
    def done(self) -> list[int]:
        return self.replayed + [i for ids in self.dropped.values() for i in ids]


Deliver = Callable[[list[StoredHint]], Awaitable[Settlement]]


class HintStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        limits: HintLimits = HintLimits(),
        *,
        flush_interval: float = 0.1,
        flush_size: int = 500,
    ) -> None:
        self._pool = pool
        self.limits = limits
        self._flush_interval = flush_interval
        self._flush_size = flush_size
        self._buffer: list[Hint] = []
        self._buffered_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Per node failing since it was last heard from: monotonic time of its first and last failure.
        self._failing: dict[str, tuple[float, float]] = {}
        # Nodes whose last flushed hints were dropped for their bound: said once, not at every flush.
        self._full: set[str] = set()

    @classmethod
    async def connect(cls, dsn: str, limits: HintLimits = HintLimits()) -> HintStore:
        """A store over a small pool of its own, opened lazily (the schema is Metadata.connect's)."""
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=4)
        return cls(pool, limits)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hint-flush")

    async def stop(self) -> None:
        """Stop flushing, write what is buffered if PostgreSQL takes it promptly, close the pool."""
        await stop_task(self._task)
        try:
            async with asyncio.timeout(2):
                await self.flush()
        except Exception as exc:
            log.warning("Buffered hints lost at stop", hints=len(self._buffer), error=f"{exc!r}")
        with contextlib.suppress(Exception):
            await self._pool.close()

    # -- the request path: memory only -------------------------------------------------

    def record(self, node_id: str, record: StoredRecord, epoch: int) -> None:
        """Keep record for node_id, which could not take it: buffered for the next flush."""
        if self.failed(node_id) > self.limits.max_hint_window:
            metrics.HINTS_DROPPED.labels(DropReason.NODE_DOWN).inc()
            return
        size = len(record.value)
        if len(self._buffer) >= MAX_BUFFERED or self._buffered_bytes + size > MAX_BUFFERED_BYTES:
            metrics.HINTS_DROPPED.labels(DropReason.FULL).inc()
            return
        self._buffer.append(Hint(node_id, record, epoch, datetime.now(UTC)))
        self._buffered_bytes += size
        if len(self._buffer) >= self._flush_size:
            self._wake.set()

    def failed(self, node_id: str) -> float:
        """Note a transient failure of node_id; returns for how long it has been failing, seconds."""
        now = time.monotonic()
        first, last = self._failing.get(node_id, (now, now))
        if now - last > STREAK_GAP:
            first = now  # unheard of for a while: whether it was back meanwhile is unknown
        self._failing[node_id] = (first, now)
        return now - first

    def heard(self, node_id: str) -> None:
        """node_id answered: it is failing no more."""
        if node_id in self._failing:
            del self._failing[node_id]

    # -- the flush -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.0
            except Exception as exc:  # PostgreSQL away: keep the buffer (bounded) and try again
                backoff = min(max(2 * backoff, self._flush_interval), _MAX_FLUSH_BACKOFF)
                log.warning(
                    "Hint flush failed; retrying",
                    hints=len(self._buffer),
                    error=f"{type(exc).__name__}: {exc}",
                    delay=backoff,
                )

    async def flush(self) -> None:
        """Write the buffered hints: one transaction, one COPY, each node kept within its bound."""
        hints, self._buffer, self._buffered_bytes = self._buffer, [], 0
        if not hints:
            return
        try:
            kept = await self._write(hints)
        except BaseException:
            self._requeue(hints)
            raise
        metrics.HINTS_STORED.inc(len(kept))
        dropped = Counter(h.node_id for h in hints) - Counter(h.node_id for h in kept)
        if dropped:
            metrics.HINTS_DROPPED.labels(DropReason.FULL).inc(dropped.total())
        for node_id in sorted(dropped.keys() - self._full):
            log.warning(
                "Hints dropped: the node holds as many as it may",
                node_id=node_id,
                limit=self.limits.max_hints_per_node,
                hints=dropped[node_id],
            )
        self._full = (self._full - {h.node_id for h in kept}) | dropped.keys()

    async def _write(self, hints: list[Hint]) -> list[Hint]:
        """Store the hints each node has room for; returns those."""
        nodes = sorted({h.node_id for h in hints})
        async with self._pool.acquire() as conn, conn.transaction():
            # Locks the nodes' counts until commit, always in node order (no deadlock between flushes).
            rows = await conn.fetch(
                "INSERT INTO hint_counts (node_id) SELECT unnest($1::text[])"
                " ON CONFLICT (node_id) DO UPDATE SET pending = hint_counts.pending"
                " RETURNING node_id, pending",
                nodes,
            )
            room = {r["node_id"]: self.limits.max_hints_per_node - r["pending"] for r in rows}
            kept: list[Hint] = []
            for h in hints:
                if room[h.node_id] > 0:
                    kept.append(h)
                    room[h.node_id] -= 1
            if kept:
                await conn.copy_records_to_table("hints", records=[_row(h) for h in kept], columns=_COLUMNS)
                added = Counter(h.node_id for h in kept)
                await conn.execute(
                    "UPDATE hint_counts AS c SET pending = c.pending + a.n"
                    " FROM unnest($1::text[], $2::bigint[]) AS a (node_id, n) WHERE c.node_id = a.node_id",
                    list(added),
                    list(added.values()),
                )
        return kept

    def _requeue(self, hints: list[Hint]) -> None:
        """Put hints a flush could not write back in front of the buffer, within its bounds."""
        kept: list[Hint] = []
        size = 0
        for h in hints + self._buffer:
            if len(kept) < MAX_BUFFERED and size + len(h.record.value) <= MAX_BUFFERED_BYTES:
                kept.append(h)
                size += len(h.record.value)
        if len(kept) < len(hints) + len(self._buffer):
            metrics.HINTS_DROPPED.labels(DropReason.FULL).inc(len(hints) + len(self._buffer) - len(kept))
        self._buffer, self._buffered_bytes = kept, size

    # -- replay's side (handoff.py) ----------------------------------------------------------

    async def pending(self) -> dict[str, int]:
        """Hints stored per node (one small table), also set as the pending gauge."""
        counts = {r["node_id"]: r["pending"] for r in await self._pool.fetch("SELECT * FROM hint_counts")}
        for node_id, count in counts.items():
            metrics.HINTS_PENDING.labels(node_id).set(count)
        return counts

    async def expire(self, node_id: str, oldest: int = 1000) -> int:
        """Delete the node's hints older than the window, among its `oldest` first; how many were.

        Hints are stored about in the order they were made, so the oldest are the
        ones to look at; a few at a time keeps the sweep cheap while a node is down.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM hints WHERE id IN ("
                " SELECT id FROM hints WHERE id IN"
                "  (SELECT id FROM hints WHERE node_id = $1 ORDER BY id LIMIT $2)"
                " AND created_at < clock_timestamp() - make_interval(secs => $3)"
                " FOR UPDATE SKIP LOCKED) RETURNING id",
                node_id,
                oldest,
                self.limits.max_hint_window,
            )
            await _uncount(conn, node_id, len(rows))
        _dropped(node_id, DropReason.EXPIRED, len(rows))
        return len(rows)

    async def forget(self, node_id: str, epoch: int) -> int:
        """Delete every hint of a node the ring (by epoch) no longer has, routed by epoch or older."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM hints WHERE id IN ("
                " SELECT id FROM hints WHERE node_id = $1 AND epoch <= $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING id",
                node_id,
                epoch,
            )
            await _uncount(conn, node_id, len(rows))
        _dropped(node_id, DropReason.NOT_REPLICA, len(rows))
        return len(rows)

    async def replay(
        self, node_id: str, deliver: Deliver, *, limit: int = 500, max_bytes: int = 4 * 1024 * 1024
    ) -> Settlement | None:
        """Claim the node's oldest hints that no other coordinator holds, and let deliver settle them.

        One transaction: the hints stay locked while deliver sends them, and what
        it settled is deleted only once it returned. If it raises (the node
        failed) or this process dies, they stay for a later replay: at least once.
        None when the node has no hint left to claim.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            sizes = await conn.fetch(
                "SELECT id, octet_length(value) AS size FROM hints WHERE node_id = $1"
                " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                node_id,
                limit,
            )
            if not sizes:
                return None
            ids: list[int] = []
            total = 0
            for r in sizes:
                if ids and total + r["size"] > max_bytes:
                    break  # the rest stays locked until commit, and is left as it is
                ids.append(r["id"])
                total += r["size"]
            rows = await conn.fetch(
                "SELECT *, created_at < clock_timestamp() - make_interval(secs => $2) AS expired"
                " FROM hints WHERE id = ANY($1::bigint[]) ORDER BY id",
                ids,
                self.limits.max_hint_window,
            )
            settled = await deliver([_stored(r) for r in rows])
            done = settled.done
            if done:
                await conn.execute("DELETE FROM hints WHERE id = ANY($1::bigint[])", done)
                await _uncount(conn, node_id, len(done))
        metrics.HINTS_REPLAYED.inc(len(settled.replayed))
        for reason, dropped in settled.dropped.items():
            _dropped(node_id, reason, len(dropped))
        return settled


async def _uncount(conn: Connection, node_id: str, deleted: int) -> None:
    if deleted:
        await conn.execute(
            "UPDATE hint_counts SET pending = pending - $2 WHERE node_id = $1", node_id, deleted
        )


def _dropped(node_id: str, reason: DropReason, count: int) -> None:
    if count:
        metrics.HINTS_DROPPED.labels(reason).inc(count)
        log.info("Hints dropped", node_id=node_id, reason=str(reason), hints=count)


def _row(h: Hint) -> tuple[object, ...]:
    r = h.record
    return (
        h.node_id,
        r.tenant_id,
        r.key,
        r.value,
        r.version.hlc - _U64_OFFSET,
        r.version.origin,
        r.tombstone,
        h.epoch,
        h.created_at,
    )


def _stored(row: asyncpg.Record) -> StoredHint:
    version = Version(row["hlc"] + _U64_OFFSET, row["origin"])
    record = StoredRecord(row["tenant_id"], row["key"], bytes(row["value"]), version, row["tombstone"])
    return StoredHint(
        row["id"], Hint(row["node_id"], record, row["epoch"], row["created_at"]), row["expired"]
    )
