"""The one client of StorageService, used by coordinators and the migration worker alike.

One channel per node, reused by every request; every call has a deadline.
Single-record writes and point reads are coalesced: concurrent ones share an
ApplyMany or GetMany call (coalescing.py), each keeping its own outcome.
Failures surface as StorageError naming the node, so callers can say which
replica failed and why; a refusal by the node's fence as StaleEpoch. Data
calls take the registry epoch the caller routed them by (0: not routed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from pairdb.kernel.keyspace import APPLIED, Applied, StoredRecord, Version
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.security.tls import ChannelTls, secure_channel
from pairdb.serving import request_ids
from pairdb.storage_node.coalescing import Caps, Coalescer
from pairdb.storage_node.layout import encode_entry, pack_entries
from pairdb.storage_node.wire import FAILED_NODE_METADATA, FENCE_METADATA, from_proto, to_proto

DEFAULT_TIMEOUT = 2.0
# A client replaced after a certificate rotation is closed this much later: its calls have ended.
_RETIRE_AFTER_SECONDS = 60.0
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A restarted node should be found again quickly, not after a long backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


class StorageError(Exception):
    def __init__(self, node_id: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{node_id}: {code.name} {details}")
        self.node_id = node_id
        self.code = code
        self.details = details


class StaleEpoch(StorageError):
    """The node is fenced at a newer epoch than the request was routed by: route again."""

    def __init__(self, node_id: str, details: str, fence: int) -> None:
        super().__init__(node_id, grpc.StatusCode.ABORTED, details)
        self.fence = fence


def _error(node_id: str, exc: grpc.aio.AioRpcError) -> StorageError:
    # (key, value) pairs at run time, whatever the stubs call them.
    metadata: Any = exc.trailing_metadata() or ()
    trailing = dict(metadata)
    # A pull that failed on its source's side is the source's failure (PullRanges).
    node_id = trailing.get(FAILED_NODE_METADATA, node_id)
    fence = trailing.get(FENCE_METADATA)
    if exc.code() == grpc.StatusCode.ABORTED and fence is not None:
        return StaleEpoch(node_id, exc.details() or "", int(fence))
    return StorageError(node_id, exc.code(), exc.details() or "")


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _item_error(node_id: str, error: storage_pb2.ItemError) -> StorageError:
    return StorageError(node_id, _STATUS_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN), error.message)


def _applied(reply: storage_pb2.ApplyResponse) -> Applied:
    if reply.applied:
        return APPLIED
    return Applied(False, Version(reply.current.hlc, reply.current.origin), reply.same)


# Bytes an item adds to a call, beyond its key and value: version, flags, framing.
_ITEM_OVERHEAD = 48


def describe_failure(exc: BaseException | None) -> str:
    """A short reason for a failed call, for logs and client-facing messages."""
    if isinstance(exc, StorageError):
        return f"{exc.code.name}: {exc.details}"
    return repr(exc)


@dataclass(frozen=True, slots=True)
class NodeStats:
    node_id: str
    keys: int
    bytes: int
    tombstones: int
    tombstones_purged: int = 0
    # (start, end, wall ms its covering repair started) per range a finished repair covered.
    repairs: tuple[tuple[int, int, int], ...] = ()
    # Each tenant's live bytes (keys and values) on the node.
    tenant_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A node's client traffic, as its last reply to a copy told (proto/storage.proto, NodeLoad)."""

    client_ops_per_second: float
    scheduling_delay_ms: float
    # time.monotonic() when it arrived: an old report says little.
    at: float

    @classmethod
    def from_proto(cls, load: storage_pb2.NodeLoad) -> NodeLoad:
        return cls(load.client_ops_per_second, load.scheduling_delay_ms, time.monotonic())

    def to_proto(self) -> storage_pb2.NodeLoad:
        return storage_pb2.NodeLoad(
            client_ops_per_second=self.client_ops_per_second, scheduling_delay_ms=self.scheduling_delay_ms
        )


@dataclass(frozen=True)
class Pulled:
    """What one PullRanges call moved: (entries, bytes) by range position, how many of those entries
    were newer than the target's, and where the next call goes on (None: every range is done)."""

    moved: dict[int, tuple[int, int]]
    applied: int
    next: tuple[int, bytes] | None


class NodeClient:
    def __init__(
        self,
        node_id: str,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        caps: Caps | None = None,
        tls: ChannelTls | None = None,
        short_of_cpu: Callable[[], bool] | None = None,
    ) -> None:
        """tls: this process's cluster certificate; the node must then prove it is node_id of the cluster.

        short_of_cpu: whether this process is short of CPU now, for the coalescers' linger (coalescing.py).
        """
        self.node_id = node_id
        self.address = address
        self.timeout = timeout
        self.tls_version = tls.version if tls else 0
        self._channel = (
            secure_channel(address, tls, _CHANNEL_OPTIONS, server_name=node_id)
            if tls
            else grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        )
        self._stub = storage_pb2_grpc.StorageServiceStub(self._channel)
        caps = caps or Caps()
        self._writes: Coalescer[StoredRecord, Applied] = Coalescer(
            self._coalesced_apply, self._expired, caps, short_of_cpu
        )
        self._reads: Coalescer[tuple[str, str], StoredRecord | None] = Coalescer(
            self._get_many, self._expired, caps, short_of_cpu
        )
        # What the node last said of its client traffic, on a reply to ScanRange or ApplyBatch.
        self.load: NodeLoad | None = None

    async def close(self) -> None:
        await self._writes.close()
        await self._reads.close()
        await self._channel.close(None)

    def _expired(self) -> StorageError:
        return StorageError(self.node_id, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def connected(self, timeout: float) -> bool:
        """Wait until the channel to the node is up, at most timeout; whether it is.

        A channel that lost its node retries with a backoff (up to a second here) and fails calls
        at once meanwhile: background work that is about to ask a node that just came back waits
        for it here instead of finding it unreachable.
        """
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def _call(self, method: Callable[..., Awaitable[Any]], request: object, timeout: float) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=request_ids.outgoing())
        except grpc.aio.AioRpcError as exc:
            raise _error(self.node_id, exc) from None

    def submit_apply(
        self, record: StoredRecord, *, epoch: int = 0, timeout: float | None = None, patient: bool = False
    ) -> asyncio.Future[Applied]:
        """Apply one record, coalesced with concurrent ones; a future rather than a task, to stay cheap.

        patient: the caller does not wait for this answer unless another replica fails (coalescing.py).
        """
        size = len(record.value) + len(record.key) + len(record.tenant_id) + _ITEM_OVERHEAD
        return self._writes.submit(
            record, epoch=epoch, size=size, timeout=timeout or self.timeout, patient=patient
        )

    @property
    def writes_crowded(self) -> bool:
        """Most writes to this node lately found a call out already (coalescing.py)."""
        return self._writes.crowded

    def hurry_applies(self) -> None:
        """Send the patient applies waiting for company now: a write waits for one of them after all."""
        self._writes.hurry()

    async def apply(self, record: StoredRecord, *, epoch: int = 0, timeout: float | None = None) -> Applied:
        return await self.submit_apply(record, epoch=epoch, timeout=timeout)

    async def _coalesced_apply(
        self, epoch: int, records: list[StoredRecord], timeout: float
    ) -> list[Applied | StorageError]:
        return await self.apply_many(records, epoch=epoch, timeout=timeout)

    async def apply_many(
        self, records: Sequence[StoredRecord], *, epoch: int = 0, timeout: float | None = None
    ) -> list[Applied | StorageError]:
        """Independent writes in one call (ApplyMany): each record's outcome, or the error it failed with."""
        packed = pack_entries(encode_entry(r) for r in records)
        return await self.apply_entries(packed, len(records), epoch=epoch, timeout=timeout)

    async def apply_entries(
        self, packed: bytes, count: int, *, epoch: int = 0, timeout: float | None = None
    ) -> list[Applied | StorageError]:
        """apply_many of count records already packed as entries (layout.py): how a batch sent to
        several replicas is encoded once, and what the node stores as it comes."""
        request = storage_pb2.ApplyManyRequest(entries=packed, epoch=epoch)
        reply = await self._call(self._stub.ApplyMany, request, timeout or self.timeout)
        if reply.all_applied:
            return [APPLIED] * count
        return [
            _item_error(self.node_id, o.error) if o.HasField("error") else _applied(o.result)
            for o in reply.outcomes
        ]

    async def apply_batch(
        self, records: Sequence[StoredRecord], *, epoch: int = 0, timeout: float | None = None
    ) -> list[bool]:
        request = storage_pb2.ApplyBatchRequest(records=[to_proto(r) for r in records], epoch=epoch)
        reply = await self._call(self._stub.ApplyBatch, request, timeout or self.timeout)
        self._heard(reply.load)
        return list(reply.applied)

    def _heard(self, load: storage_pb2.NodeLoad) -> None:
        self.load = NodeLoad.from_proto(load)

    def submit_get(
        self, tenant_id: str, key: str, *, epoch: int = 0, timeout: float | None = None
    ) -> asyncio.Future[StoredRecord | None]:
        """Read one key, coalesced with concurrent reads of this node."""
        size = len(key) + len(tenant_id) + _ITEM_OVERHEAD
        return self._reads.submit((tenant_id, key), epoch=epoch, size=size, timeout=timeout or self.timeout)

    async def get(
        self, tenant_id: str, key: str, *, epoch: int = 0, timeout: float | None = None
    ) -> StoredRecord | None:
        return await self.submit_get(tenant_id, key, epoch=epoch, timeout=timeout)

    async def get_many(
        self, keys: list[tuple[str, str]], *, epoch: int = 0, timeout: float | None = None
    ) -> list[StoredRecord | StorageError | None]:
        """Many keys in one call (GetMany), not through the coalescer: each record, None, or its error."""
        return await self._get_many(epoch, keys, timeout or self.timeout)

    async def _get_many(
        self, epoch: int, keys: list[tuple[str, str]], timeout: float
    ) -> list[StoredRecord | StorageError | None]:
        results: list[StoredRecord | StorageError | None] = []
        while len(results) < len(keys):
            # A node answers only as many keys as fit one reply: the rest are asked again. Each reply
            # has the whole timeout: a read of many large values takes as many as it needs, and a
            # deadline shared by all of them would fail it on a slow machine however steadily it went.
            # (The caller's own deadline bounds the whole.)
            request = storage_pb2.GetManyRequest(
                keys=[storage_pb2.RecordKey(tenant_id=t, key=k) for t, k in keys[len(results) :]], epoch=epoch
            )
            reply = await self._call(self._stub.GetMany, request, timeout)
            if not reply.outcomes or len(results) + len(reply.outcomes) > len(keys):
                raise StorageError(
                    self.node_id,
                    grpc.StatusCode.INTERNAL,
                    f"GetMany answered {len(reply.outcomes)} of {len(keys) - len(results)} keys",
                )
            results.extend(
                _item_error(self.node_id, o.error)
                if o.HasField("error")
                else from_proto(o.result.record)
                if o.result.found
                else None
                for o in reply.outcomes
            )
        return results

    async def scan_range(
        self,
        start: int,
        end: int,
        *,
        batch_size: int = 0,
        include_tombstones: bool = True,
        epoch: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[list[StoredRecord]]:
        """Batches of the records in (start, end], in token order. timeout bounds the whole stream."""
        request = storage_pb2.ScanRangeRequest(
            range=storage_pb2.TokenRange(start=start, end=end),
            batch_size=batch_size,
            include_tombstones=include_tombstones,
            epoch=epoch,
        )
        async for batch in self._scan(request, timeout):
            yield [from_proto(r) for r in batch.records]

    async def scan_entries(
        self, start: int, end: int, *, batch_size: int = 0, epoch: int = 0, timeout: float | None = None
    ) -> AsyncIterator[tuple[bytes, int]]:
        """The records of (start, end], tombstones included, packed: batches of (entries, count)."""
        request = storage_pb2.ScanRangeRequest(
            range=storage_pb2.TokenRange(start=start, end=end),
            batch_size=batch_size,
            include_tombstones=True,
            epoch=epoch,
            entries=True,
        )
        async for batch in self._scan(request, timeout):
            yield batch.entries, batch.entry_count

    async def scan_entries_many(
        self,
        ranges: Sequence[tuple[int, int]],
        *,
        at: int = 0,
        after: bytes = b"",
        batch_size: int = 0,
        epoch: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[tuple[int, bytes, int]]:
        """scan_entries of each (start, end] in turn, in one call: (position in ranges, entries, count).

        From ranges[at], after the engine key after in it (empty: its start). A
        batch holds entries of one range; a range with none has no batch.
        """
        request = storage_pb2.ScanRangeRequest(
            ranges=[storage_pb2.TokenRange(start=start, end=end) for start, end in ranges],
            batch_size=batch_size,
            include_tombstones=True,
            epoch=epoch,
            entries=True,
            at=at,
            after=after,
        )
        async for batch in self._scan(request, timeout):
            yield batch.range, batch.entries, batch.entry_count

    async def _scan(
        self, request: storage_pb2.ScanRangeRequest, timeout: float | None
    ) -> AsyncIterator[storage_pb2.ScanRangeBatch]:
        try:
            async for batch in self._stub.ScanRange(
                request, timeout=timeout, metadata=request_ids.outgoing()
            ):
                self._heard(batch.load)
                yield batch
        except grpc.aio.AioRpcError as exc:
            raise _error(self.node_id, exc) from None

    async def pull_ranges(
        self,
        source: NodeClient,
        ranges: Sequence[tuple[int, int]],
        *,
        at: int = 0,
        after: bytes = b"",
        max_entries: int = 0,
        max_bytes: int = 0,
        batch_size: int = 0,
        epoch: int = 0,
        timeout: float | None = None,
    ) -> Pulled:
        """Have this node pull the ranges from source (from ranges[at], after the key after) and apply
        them, up to about max_entries or max_bytes (0: no limit). A failure on the source's side
        raises a StorageError naming the source; the source's load is updated from the reply."""
        request = storage_pb2.PullRangesRequest(
            source_id=source.node_id,
            source_address=source.address,
            ranges=[storage_pb2.TokenRange(start=start, end=end) for start, end in ranges],
            at=at,
            after=after,
            epoch=epoch,
            max_entries=max_entries,
            max_bytes=max_bytes,
            batch_size=batch_size,
        )
        reply = await self._call(self._stub.PullRanges, request, timeout or self.timeout)
        self._heard(reply.load)
        if reply.HasField("source_load"):  # the target heard the source: its load paces the copy too
            source.load = NodeLoad.from_proto(reply.source_load)
        return Pulled(
            {p.range: (p.entries, p.bytes) for p in reply.pulled},
            sum(p.applied for p in reply.pulled),
            None if reply.done else (reply.next_at, reply.next_after),
        )

    async def count_range(self, start: int, end: int, *, epoch: int = 0, timeout: float | None = None) -> int:
        """How many records (tombstones included) the node holds in (start, end]."""
        request = storage_pb2.RangeDigestRequest(
            range=storage_pb2.TokenRange(start=start, end=end), epoch=epoch, count_only=True
        )
        reply = await self._call(self._stub.RangeDigest, request, timeout or 10 * self.timeout)
        return int(reply.count)

    async def count_ranges(
        self, ranges: Sequence[tuple[int, int]], *, epoch: int = 0, timeout: float | None = None
    ) -> list[int]:
        """count_range of each (start, end], in one call (nodes before RangeDigests answer UNIMPLEMENTED)."""
        reply = await self._digests(ranges, (), epoch, timeout, count_only=True)
        return [int(r.count) for r in reply.ranges]

    async def range_digest(
        self,
        start: int,
        end: int,
        *,
        tenants: Iterable[str] = (),
        epoch: int = 0,
        timeout: float | None = None,
    ) -> tuple[bytes, int]:
        """The digest and count of (start, end]'s records: only those of tenants, when given."""
        request = storage_pb2.RangeDigestRequest(
            range=storage_pb2.TokenRange(start=start, end=end), epoch=epoch, tenants=sorted(tenants)
        )
        reply = await self._call(self._stub.RangeDigest, request, timeout or 10 * self.timeout)
        if reply.HasField("load"):
            self._heard(reply.load)
        return bytes(reply.digest), int(reply.count)

    async def range_digests(
        self,
        ranges: Sequence[tuple[int, int]],
        *,
        tenants: Iterable[str] = (),
        epoch: int = 0,
        timeout: float | None = None,
    ) -> list[tuple[bytes, int]]:
        """range_digest of each (start, end], in one call."""
        reply = await self._digests(ranges, tenants, epoch, timeout, count_only=False)
        return [(bytes(r.digest), int(r.count)) for r in reply.ranges]

    async def _digests(
        self,
        ranges: Sequence[tuple[int, int]],
        tenants: Iterable[str],
        epoch: int,
        timeout: float | None,
        *,
        count_only: bool,
    ) -> storage_pb2.RangeDigestsResponse:
        request = storage_pb2.RangeDigestsRequest(
            ranges=[storage_pb2.TokenRange(start=start, end=end) for start, end in ranges],
            epoch=epoch,
            count_only=count_only,
            tenants=sorted(tenants),
        )
        # A digest reads every value of its ranges: far longer than a point read may take.
        reply: storage_pb2.RangeDigestsResponse = await self._call(
            self._stub.RangeDigests, request, timeout or 10 * self.timeout
        )
        self._heard(reply.load)
        return reply

    async def delete_range(
        self,
        start: int,
        end: int,
        *,
        tenants: Iterable[str] = (),
        epoch: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Delete (start, end]'s records: only those of tenants, when given."""
        request = storage_pb2.DeleteRangeRequest(
            range=storage_pb2.TokenRange(start=start, end=end), epoch=epoch, tenants=sorted(tenants)
        )
        reply = await self._call(self._stub.DeleteRange, request, timeout or 30 * self.timeout)
        if reply.HasField("load"):
            self._heard(reply.load)
        return int(reply.deleted)

    async def purge_tombstones(
        self,
        start: int,
        end: int,
        cutoffs: Mapping[str, int],
        *,
        repaired_at: int = 0,
        epoch: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Purge (start, end]'s tombstones older than their tenant's cutoff hlc; how many went."""
        request = storage_pb2.PurgeTombstonesRequest(
            range=storage_pb2.TokenRange(start=start, end=end),
            epoch=epoch,
            cutoffs=dict(cutoffs),
            repaired_at=repaired_at,
        )
        reply = await self._call(self._stub.PurgeTombstones, request, timeout or 30 * self.timeout)
        return int(reply.purged)

    async def set_fence(self, epoch: int, timeout: float | None = None) -> int:
        """Refuse requests routed by epochs older than epoch from now on; returns the fence in force."""
        reply = await self._call(
            self._stub.SetFence, storage_pb2.SetFenceRequest(epoch=epoch), timeout or self.timeout
        )
        return int(reply.fence)

    async def stats(self, timeout: float | None = None) -> NodeStats:
        reply = await self._call(self._stub.Stats, storage_pb2.StatsRequest(), timeout or self.timeout)
        return NodeStats(
            self.node_id,
            reply.keys,
            reply.bytes,
            reply.tombstones,
            reply.tombstones_purged,
            tuple((r.range.start, r.range.end, r.repaired_at_ms) for r in reply.repairs),
            {u.tenant_id: u.bytes for u in reply.tenants},
        )


class StoragePool:
    """NodeClients by node id, kept while the node's address and this process's certificate stay the same."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ChannelTls | None = None,
        short_of_cpu: Callable[[], bool] | None = None,
    ) -> None:
        """short_of_cpu: whether this process is short of CPU now (NodeClient)."""
        self.timeout = timeout
        self.tls = tls
        self._short_of_cpu = short_of_cpu
        self._clients: dict[str, NodeClient] = {}
        # Clients replaced after a certificate rotation, each with the task that closes it later.
        self._retired: dict[NodeClient, asyncio.Task[None]] = {}

    def node(self, node_id: str, address: str) -> NodeClient:
        client = self._clients.get(node_id)
        version = self.tls.refresh() if self.tls else 0
        if client is None or client.address != address or client.tls_version != version:
            if client is not None and client.tls_version != version:
                self._retire(client)
            client = NodeClient(node_id, address, self.timeout, tls=self.tls, short_of_cpu=self._short_of_cpu)
            self._clients[node_id] = client
        return client

    def _retire(self, client: NodeClient) -> None:
        """Close a client whose certificate rotated once calls already on it had time to end."""

        async def later() -> None:
            await asyncio.sleep(_RETIRE_AFTER_SECONDS)
            del self._retired[client]
            await client.close()

        self._retired[client] = asyncio.get_running_loop().create_task(later())

    async def close(self) -> None:
        for client, task in list(self._retired.items()):
            task.cancel()
            await client.close()
        self._retired.clear()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
