"""StorageService: the node-internal gRPC API over the engine.

Two guards stand before the engine. The fence (proto/storage.proto) refuses a
request routed by an epoch older than the last one a registry step announced,
so a coordinator that stalled past a ring change cannot write or read by the
ring it knew. The clock check refuses versions further ahead of this node's
clock than the cluster's maximum offset: one forged or runaway version would
otherwise win over every later write of its key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import structlog

from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS, WallClock
from pairdb.kernel.keyspace import (
    MAX_KEY_BYTES,
    MAX_TENANT_ID_BYTES,
    MAX_VALUE_BYTES,
    Applied,
    StoredRecord,
    Version,
)
from pairdb.kernel.sabotage import SKIP_FENCE
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.serving import metrics
from pairdb.serving.interception import ServicerContext
from pairdb.storage_node import pull
from pairdb.storage_node.background import BackgroundReadFailed, BackgroundReads, ReaderThread
from pairdb.storage_node.client import StoragePool
from pairdb.storage_node.committer import GroupCommitter
from pairdb.storage_node.engine import Engine
from pairdb.storage_node.layout import Entry, MalformedEntries, encode_entry, read_entry, split_entries
from pairdb.storage_node.load import LoadMeter
from pairdb.storage_node.wire import FAILED_NODE_METADATA, FENCE_METADATA, from_proto, to_proto

T = TypeVar("T")
# Why a record is refused: its status and a message.
Refusal = tuple[grpc.StatusCode, str]

log = structlog.get_logger()

DEFAULT_SCAN_BATCH = 512
MAX_SCAN_BATCH = 10_000
MAX_APPLY_BATCH = 10_000
# Value bytes per streamed scan message: far under the 64 MB message limit, even with the
# one 1 MB value that crosses it and 10,000 keys of under 400 bytes each.
MAX_SCAN_BATCH_BYTES = 16 * 1024 * 1024
# Ranges one RangeDigests or ScanRange call may ask for.
MAX_RANGES = 10_000
# Values a GetMany reply carries at most before it leaves the remaining keys out: a reply stays
# well inside the message limit (server.py) however large the values read.
MAX_GET_MANY_REPLY_BYTES = 32 * 1024 * 1024


def _check_key(tenant_id: str, key: str) -> str | None:
    """Why (tenant_id, key) cannot address a record, or None: the engine's key holds only so much."""
    return _check_key_sizes(len(tenant_id.encode()), len(key.encode()))


def _check_key_sizes(tenant_bytes: int, key_bytes: int) -> str | None:
    if not 0 < tenant_bytes <= MAX_TENANT_ID_BYTES:
        return f"tenant_id must be 1..{MAX_TENANT_ID_BYTES} bytes"
    if not 0 < key_bytes <= MAX_KEY_BYTES:
        return f"key must be 1..{MAX_KEY_BYTES} bytes"
    return None


def _check_record(tenant_bytes: int, key_bytes: int, value_bytes: int, hlc: int) -> str | None:
    """Why a record of these sizes (UTF-8 bytes) and hlc cannot be stored, or None. Coordinators
    check too; a node trusts no caller."""
    problem = _check_key_sizes(tenant_bytes, key_bytes)
    if problem:
        return problem
    if value_bytes > MAX_VALUE_BYTES:
        return f"value must be at most {MAX_VALUE_BYTES} bytes"
    if hlc == 0:  # an unset version reads as 0 too
        return "record needs a version with a non-zero hlc"
    return None


def _fill_applied(reply: storage_pb2.ApplyResponse, result: Applied) -> None:
    if result.current is None:  # applied: the sender knows the version, the record's own
        reply.applied = True
        return
    reply.applied = result.applied
    reply.current.hlc, reply.current.origin = result.current.hlc, result.current.origin
    reply.same = result.same


class StorageService(storage_pb2_grpc.StorageServiceServicer):
    def __init__(
        self,
        node_id: str,
        engine: Engine,
        committer: GroupCommitter,
        max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        clock: WallClock | None = None,
        sabotage: frozenset[str] = frozenset(),
        load: LoadMeter | None = None,
        background: BackgroundReads | None = None,
        peers: StoragePool | None = None,
    ) -> None:
        """background: where scans, digests and counts for copies and repairs run (background.py);
        by default on a thread of this process. peers: clients of the nodes it pulls from
        (PullRanges), with this node's certificate when the cluster runs TLS."""
        self._node_id = node_id
        # Client traffic is counted here; the copy's calls carry the count back to it.
        self._load = load or LoadMeter()
        self._skip_fence = SKIP_FENCE in sabotage
        self._engine = engine
        self._committer = committer
        self._max_offset_ms = max_clock_offset_ms
        self._clock = clock or WallClock()
        # Raised here first, then on disk: from the moment SetFence starts, stale requests are refused.
        self._fence = engine.fence()
        self._background = background or ReaderThread(engine)
        self._peers = peers or StoragePool()

    async def _read_in_background(self, read: Awaitable[T], context: ServicerContext) -> T:
        """The read's result; a failed one (its reader process died twice over) is UNAVAILABLE: retry."""
        try:
            return await read
        except BackgroundReadFailed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"storage node {self._node_id}: {exc}; retry")
            raise  # abort raised already

    async def close(self) -> None:
        await self._background.close()
        await self._peers.close()

    async def _check_epoch(self, epoch: int, context: ServicerContext) -> None:
        if epoch and epoch < self._fence and not self._skip_fence:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"request routed by epoch {epoch}, but node {self._node_id} is fenced at epoch "
                f"{self._fence}: the caller's view of the ring is out of date; route again",
                trailing_metadata=((FENCE_METADATA, str(self._fence)),),
            )

    def _refusal(self, record: StoredRecord, now_ms: int) -> Refusal | None:
        """Why one record is refused (and with which status), or None; now_ms: this node's clock."""
        tenant_bytes, key_bytes = len(record.tenant_id.encode()), len(record.key.encode())
        hlc, origin = record.version
        return self._checked(tenant_bytes, key_bytes, len(record.value), hlc, origin, now_ms)

    def _entry_refusal(self, entry: Entry, now_ms: int) -> Refusal | None:
        """_refusal of an entry, read from its bytes, which must be of the engine's layout."""
        try:
            sizes_and_version = read_entry(*entry)
        except MalformedEntries as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        return self._checked(*sizes_and_version, now_ms)

    def _checked(
        self, tenant_bytes: int, key_bytes: int, value_bytes: int, hlc: int, origin: int, now_ms: int
    ) -> Refusal | None:
        problem = _check_record(tenant_bytes, key_bytes, value_bytes, hlc)
        if problem:
            return grpc.StatusCode.INVALID_ARGUMENT, problem
        ahead = (hlc >> 16) - now_ms
        if ahead > self._max_offset_ms:
            return grpc.StatusCode.FAILED_PRECONDITION, (
                f"version {Version(hlc, origin)} is {ahead} ms ahead of this node's clock (max offset "
                f"{self._max_offset_ms} ms); check the clock of the coordinator that wrote it"
            )
        return None

    def _refusals(
        self, items: Sequence[T], refusal: Callable[[T, int], Refusal | None]
    ) -> dict[int, Refusal]:
        """Each refused item's index, with its status and why."""
        now_ms = self._clock.now_ms()  # a call's records arrived together: one reading of the clock
        refusals: dict[int, Refusal] = {}
        for i, item in enumerate(items):
            refused = refusal(item, now_ms)
            if refused:
                refusals[i] = refused
        return refusals

    async def _check_records(
        self, records: Sequence[StoredRecord], context: ServicerContext, *, batch: bool
    ) -> None:
        """Refuse the whole request if any record is malformed or from the future: nothing half-written."""
        refusals = self._refusals(records, self._refusal)
        if refusals:
            i, (code, problem) = min(refusals.items())
            await context.abort(code, f"record {i}: {problem}" if batch else problem)

    async def _check_count(self, count: int, context: ServicerContext) -> None:
        if count > MAX_APPLY_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds at most {MAX_APPLY_BATCH} records"
            )

    async def Apply(
        self, request: storage_pb2.ApplyRequest, context: ServicerContext
    ) -> storage_pb2.ApplyResponse:
        await self._check_epoch(request.epoch, context)
        record = from_proto(request.record)
        await self._check_records([record], context, batch=False)
        [result] = await self._committer.apply([encode_entry(record)])
        self._load.served(1)
        reply = storage_pb2.ApplyResponse()
        _fill_applied(reply, result)
        return reply

    async def ApplyBatch(
        self, request: storage_pb2.ApplyBatchRequest, context: ServicerContext
    ) -> storage_pb2.ApplyBatchResponse:
        await self._check_epoch(request.epoch, context)
        await self._check_count(len(request.records), context)
        records = [from_proto(r) for r in request.records]
        await self._check_records(records, context, batch=True)
        results = await self._committer.apply([encode_entry(r) for r in records])
        return storage_pb2.ApplyBatchResponse(applied=[r.applied for r in results], load=self._load.report())

    async def PullRanges(
        self, request: storage_pb2.PullRangesRequest, context: ServicerContext
    ) -> storage_pb2.PullRangesResponse:
        await self._check_epoch(request.epoch, context)
        problem = None
        if not request.source_id or not request.source_address:
            problem = "source_id and source_address are required: the old replica to pull from"
        elif request.source_id == self._node_id:
            problem = f"node {self._node_id} cannot pull from itself"
        elif not 0 < len(request.ranges) <= MAX_RANGES:
            problem = f"ask for 1 to {MAX_RANGES} ranges at a time, not {len(request.ranges)}"
        elif request.at >= len(request.ranges):
            problem = f"at {request.at} is past the {len(request.ranges)} ranges"
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        epoch = request.epoch

        async def apply(entries: list[Entry]) -> int:
            if epoch and epoch < self._fence and not self._skip_fence:
                raise pull.Fenced(self._fence)  # a cancel raised the fence mid-pull: write no more
            refusals = self._refusals(entries, self._entry_refusal)
            if refusals:
                i, (code, why) = min(refusals.items())
                raise pull.SourceFailed(code, f"record {i} of a batch: {why}")
            return sum(r.applied for r in await self._committer.apply_background(entries))

        source = self._peers.node(request.source_id, request.source_address)
        try:
            reply = await pull.pull(source, request, apply, context.time_remaining())
        except pull.Fenced:
            await self._check_epoch(epoch, context)  # refuses, as any request of that epoch now
            raise
        except pull.SourceFailed as exc:
            trailing = [(FAILED_NODE_METADATA, request.source_id)]
            if exc.fence is not None:
                trailing.append((FENCE_METADATA, str(exc.fence)))
            await context.abort(
                exc.code, f"pulling from {request.source_id}: {exc.why}", trailing_metadata=tuple(trailing)
            )
            raise
        reply.load.CopyFrom(self._load.report())
        return reply

    async def ApplyMany(
        self, request: storage_pb2.ApplyManyRequest, context: ServicerContext
    ) -> storage_pb2.ApplyManyResponse:
        await self._check_epoch(request.epoch, context)
        entries: Sequence[Entry]
        if request.entries:
            if request.records:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send records or entries, not both")
            try:
                entries = split_entries(request.entries)
            except MalformedEntries as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"entries: {exc}")
                raise
            await self._check_count(len(entries), context)
            refusals = self._refusals(entries, self._entry_refusal)
            if refusals:
                entries = [e for i, e in enumerate(entries) if i not in refusals]
        else:
            await self._check_count(len(request.records), context)
            records = [from_proto(m) for m in request.records]  # each message's fields read once
            refusals = self._refusals(records, self._refusal)
            entries = [encode_entry(r) for i, r in enumerate(records) if i not in refusals]
        count = len(entries) + len(refusals)
        # One group commit (one fsync) for every accepted record of the call: one bad record fails alone.
        results = await self._committer.apply(entries)
        self._load.served(count)
        if not refusals and all(result.applied for result in results):
            return storage_pb2.ApplyManyResponse(all_applied=True)
        outcomes = [storage_pb2.ApplyOutcome() for _ in range(count)]
        for i, (code, why) in refusals.items():
            outcomes[i].error.code, outcomes[i].error.message = code.value[0], why
        accepted = (i for i in range(count) if i not in refusals)
        for i, result in zip(accepted, results, strict=True):
            _fill_applied(outcomes[i].result, result)
        return storage_pb2.ApplyManyResponse(outcomes=outcomes)

    async def Get(self, request: storage_pb2.GetRequest, context: ServicerContext) -> storage_pb2.GetResponse:
        await self._check_epoch(request.epoch, context)
        problem = _check_key(request.tenant_id, request.key)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        reply = storage_pb2.GetResponse()
        self._read_into(reply, request.tenant_id, request.key)
        metrics.STORAGE_READ_BYTES.inc(len(reply.record.value))
        self._load.served(1)
        return reply

    async def GetMany(
        self, request: storage_pb2.GetManyRequest, context: ServicerContext
    ) -> storage_pb2.GetManyResponse:
        await self._check_epoch(request.epoch, context)
        await self._check_count(len(request.keys), context)
        reply = storage_pb2.GetManyResponse()
        size = 0
        for k in request.keys:
            if size >= MAX_GET_MANY_REPLY_BYTES:
                break  # the caller asks again for the keys left out (NodeClient.get_many)
            outcome = reply.outcomes.add()
            problem = _check_key(k.tenant_id, k.key)
            if problem:
                outcome.error.code, outcome.error.message = grpc.StatusCode.INVALID_ARGUMENT.value[0], problem
            else:
                self._read_into(outcome.result, k.tenant_id, k.key)
                size += len(outcome.result.record.value)
        metrics.STORAGE_READ_BYTES.inc(size)
        self._load.served(len(reply.outcomes))
        return reply

    def _read_into(self, reply: storage_pb2.GetResponse, tenant_id: str, key: str) -> None:
        # An LMDB point read is a memory-mapped lookup of a few microseconds:
        # cheaper inline than a thread hop. Fields are set in place (no message
        # built and copied); the token is left out: a point read's caller knows the key.
        record = self._engine.get(tenant_id, key)
        if record is None:
            return
        reply.found = True
        out = reply.record
        out.tenant_id, out.key, out.value, out.tombstone = tenant_id, key, record.value, record.tombstone
        out.version.hlc, out.version.origin = record.version.hlc, record.version.origin

    async def ScanRange(
        self, request: storage_pb2.ScanRangeRequest, context: ServicerContext
    ) -> AsyncIterator[storage_pb2.ScanRangeBatch]:
        await self._check_epoch(request.epoch, context)
        ranges = [(r.start, r.end) for r in request.ranges]
        if ranges and not request.entries:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "several ranges are scanned as entries only"
            )
        if len(ranges) > MAX_RANGES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"ask for at most {MAX_RANGES} ranges, not {len(ranges)}"
            )
        # An unset range reads as (0, 0], the whole ring: streaming every tenant out is asked for by name.
        if not ranges and not request.HasField("range"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "range is required")
        batch_size = min(request.batch_size or DEFAULT_SCAN_BATCH, MAX_SCAN_BATCH)
        if request.entries:
            ranges = ranges or [(request.range.start, request.range.end)]
            if request.at >= len(ranges):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"at {request.at} is past the {len(ranges)} ranges"
                )
            position: tuple[int, bytes | None] | None = (request.at, request.after or None)
            while position is not None:
                pieces, position = await self._read_in_background(
                    self._background.scan_entries_many(
                        ranges,
                        limit=batch_size,
                        max_bytes=MAX_SCAN_BATCH_BYTES,
                        at=position[0],
                        after=position[1],
                    ),
                    context,
                )
                for at, entries, count in pieces:
                    yield storage_pb2.ScanRangeBatch(
                        entries=entries, entry_count=count, range=at, load=self._load.report()
                    )
            return
        start, end = request.range.start, request.range.end
        after: bytes | None = None
        while True:
            records, after = await self._read_in_background(
                self._background.scan(
                    start, end, limit=batch_size, after=after, include_tombstones=request.include_tombstones
                ),
                context,
            )
            batch: list[storage_pb2.Record] = []
            size = 0
            for r in records:
                batch.append(to_proto(r, with_token=True))
                size += len(r.value)
                if size >= MAX_SCAN_BATCH_BYTES:
                    yield storage_pb2.ScanRangeBatch(records=batch, load=self._load.report())
                    batch, size = [], 0
            if batch:
                yield storage_pb2.ScanRangeBatch(records=batch, load=self._load.report())
            if after is None:
                return

    async def RangeDigest(
        self, request: storage_pb2.RangeDigestRequest, context: ServicerContext
    ) -> storage_pb2.RangeDigestResponse:
        await self._check_epoch(request.epoch, context)
        ranges = [(request.range.start, request.range.end)]
        (reply,) = await self._digests(ranges, request.count_only, frozenset(request.tenants), context)
        reply.load.CopyFrom(self._load.report())
        return reply

    async def RangeDigests(
        self, request: storage_pb2.RangeDigestsRequest, context: ServicerContext
    ) -> storage_pb2.RangeDigestsResponse:
        await self._check_epoch(request.epoch, context)
        if not 0 < len(request.ranges) <= MAX_RANGES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ask for 1 to {MAX_RANGES} ranges at a time, not {len(request.ranges)}",
            )
        ranges = [(r.start, r.end) for r in request.ranges]
        replies = await self._digests(ranges, request.count_only, frozenset(request.tenants), context)
        return storage_pb2.RangeDigestsResponse(ranges=replies, load=self._load.report())

    async def _digests(
        self,
        ranges: list[tuple[int, int]],
        count_only: bool,
        tenants: frozenset[str],
        context: ServicerContext,
    ) -> list[storage_pb2.RangeDigestResponse]:
        """Each range's digest and count (only its count, read without values, when that is all asked)."""
        if count_only and not tenants:
            counts = await self._read_in_background(self._background.counts(ranges), context)
            return [storage_pb2.RangeDigestResponse(count=count) for count in counts]
        digests = await self._read_in_background(self._background.digests(ranges, tenants), context)
        return [
            storage_pb2.RangeDigestResponse(digest=b"" if count_only else digest, count=count)
            for digest, count in digests
        ]

    async def DeleteRange(
        self, request: storage_pb2.DeleteRangeRequest, context: ServicerContext
    ) -> storage_pb2.DeleteRangeResponse:
        await self._check_epoch(request.epoch, context)
        # An unset range reads as (0, 0], the whole ring: only an explicit range may delete.
        if not request.HasField("range"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "range is required")
        tenants = frozenset(request.tenants)
        deleted = await self._committer.delete_range(request.range.start, request.range.end, tenants)
        log.info(
            "Range deleted",
            node_id=self._node_id,
            start=request.range.start,
            end=request.range.end,
            tenants=sorted(tenants) or None,
            deleted=deleted,
        )
        return storage_pb2.DeleteRangeResponse(deleted=deleted, load=self._load.report())

    async def PurgeTombstones(
        self, request: storage_pb2.PurgeTombstonesRequest, context: ServicerContext
    ) -> storage_pb2.PurgeTombstonesResponse:
        await self._check_epoch(request.epoch, context)
        if not request.HasField("range"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "range is required")
        # A cutoff ahead of this node's clock would purge deletes still on their way to other replicas.
        limit = (self._clock.now_ms() + self._max_offset_ms) << 16
        late = sorted(t for t, cutoff in request.cutoffs.items() if cutoff > limit)
        if late:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cutoffs of {', '.join(late)} are ahead of this node's clock: a purge may only "
                "remove deletes older than a finished repair",
            )
        start, end = request.range.start, request.range.end
        purged = await self._committer.purge_tombstones(
            start, end, dict(request.cutoffs), request.repaired_at
        )
        if purged:
            log.info(
                "Tombstones purged",
                node_id=self._node_id,
                start=start,
                end=end,
                tenants=sorted(request.cutoffs),
                purged=purged,
            )
        return storage_pb2.PurgeTombstonesResponse(purged=purged)

    async def SetFence(
        self, request: storage_pb2.SetFenceRequest, context: ServicerContext
    ) -> storage_pb2.SetFenceResponse:
        before = self._fence
        self._fence = max(self._fence, request.epoch)
        fence = await self._committer.raise_fence(request.epoch)
        if fence > before:
            log.info("Fence raised", node_id=self._node_id, epoch=fence)
        return storage_pb2.SetFenceResponse(fence=fence)

    async def Stats(
        self, request: storage_pb2.StatsRequest, context: ServicerContext
    ) -> storage_pb2.StatsResponse:
        stats = self._engine.stats()
        return storage_pb2.StatsResponse(
            node_id=self._node_id,
            keys=stats.keys,
            bytes=stats.bytes,
            tombstones=stats.tombstones,
            fence=self._fence,
            tombstones_purged=stats.purged,
            repairs=[
                storage_pb2.RangeRepair(
                    range=storage_pb2.TokenRange(start=r.start, end=r.end), repaired_at_ms=r.repaired_at >> 16
                )
                for r in self._engine.repairs()
            ],
            tenants=[
                storage_pb2.TenantUsage(tenant_id=tenant, keys=usage.keys, bytes=usage.bytes)
                for tenant, usage in self._engine.tenant_usage().items()
            ],
        )
