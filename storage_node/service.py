"""StorageService: the node-internal gRPC API over the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from pairdb.keyspace import MAX_KEY_BYTES, MAX_TENANT_ID_BYTES, MAX_VALUE_BYTES
from proto import storage_pb2, storage_pb2_grpc
from storage_node.committer import GroupCommitter
from storage_node.engine import Engine
from storage_node.wire import from_proto, to_proto

log = structlog.get_logger()
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_SCAN_BATCH = 512
MAX_SCAN_BATCH = 10_000
MAX_APPLY_BATCH = 10_000
# Value bytes per streamed scan message: far under the 64 MB message limit, even with the
# one 1 MB value that crosses it and 10,000 keys of under 400 bytes each.
MAX_SCAN_BATCH_BYTES = 16 * 1024 * 1024


def _check_key(tenant_id: str, key: str) -> str | None:
    """Why (tenant_id, key) cannot address a record, or None: the engine's key holds only so much."""
    if not tenant_id or len(tenant_id.encode()) > MAX_TENANT_ID_BYTES:
        return f"tenant_id must be 1..{MAX_TENANT_ID_BYTES} bytes"
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        return f"key must be 1..{MAX_KEY_BYTES} bytes"
    return None


def _check_record(record: storage_pb2.Record) -> str | None:
    """Why a record cannot be stored, or None. Coordinators check too; a node trusts no caller."""
    problem = _check_key(record.tenant_id, record.key)
    if problem:
        return problem
    if len(record.value) > MAX_VALUE_BYTES:
        return f"value must be at most {MAX_VALUE_BYTES} bytes"
    if not record.HasField("version") or record.version.hlc == 0:
        return "record needs a version with a non-zero hlc"
    return None


class StorageService(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, node_id: str, engine: Engine, committer: GroupCommitter) -> None:
        self._node_id = node_id
        self._engine = engine
        self._committer = committer

    async def Apply(self, request: storage_pb2.ApplyRequest, context: Context) -> storage_pb2.ApplyResponse:
        problem = _check_record(request.record)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        record = from_proto(request.record)
        [applied] = await self._committer.apply([record])
        return storage_pb2.ApplyResponse(applied=applied)

    async def ApplyBatch(
        self, request: storage_pb2.ApplyBatchRequest, context: Context
    ) -> storage_pb2.ApplyBatchResponse:
        if len(request.records) > MAX_APPLY_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds at most {MAX_APPLY_BATCH} records"
            )
        for i, message in enumerate(request.records):
            problem = _check_record(message)
            if problem:
                # Refuse the whole batch: nothing half-written.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"record {i}: {problem}")
        applied = await self._committer.apply([from_proto(r) for r in request.records])
        return storage_pb2.ApplyBatchResponse(applied=applied)

    async def Get(self, request: storage_pb2.GetRequest, context: Context) -> storage_pb2.GetResponse:
        problem = _check_key(request.tenant_id, request.key)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        # An LMDB point read is a memory-mapped lookup of a few microseconds:
        # cheaper inline than a thread hop.
        record = self._engine.get(request.tenant_id, request.key)
        if record is None:
            return storage_pb2.GetResponse(found=False)
        return storage_pb2.GetResponse(found=True, record=to_proto(record, with_token=True))

    async def ScanRange(
        self, request: storage_pb2.ScanRangeRequest, context: Context
    ) -> AsyncIterator[storage_pb2.ScanRangeBatch]:
        batch_size = min(request.batch_size or DEFAULT_SCAN_BATCH, MAX_SCAN_BATCH)
        start, end = request.range.start, request.range.end
        after: bytes | None = None
        while True:
            records, after = await asyncio.to_thread(
                self._engine.scan,
                start,
                end,
                limit=batch_size,
                after=after,
                include_tombstones=request.include_tombstones,
            )
            batch: list[storage_pb2.Record] = []
            size = 0
            for r in records:
                batch.append(to_proto(r, with_token=True))
                size += len(r.value)
                if size >= MAX_SCAN_BATCH_BYTES:
                    yield storage_pb2.ScanRangeBatch(records=batch)
                    batch, size = [], 0
            if batch:
                yield storage_pb2.ScanRangeBatch(records=batch)
            if after is None:
                return

    async def RangeDigest(
        self, request: storage_pb2.RangeDigestRequest, context: Context
    ) -> storage_pb2.RangeDigestResponse:
        digest, count = await asyncio.to_thread(self._engine.digest, request.range.start, request.range.end)
        return storage_pb2.RangeDigestResponse(digest=digest, count=count)

    async def DeleteRange(
        self, request: storage_pb2.DeleteRangeRequest, context: Context
    ) -> storage_pb2.DeleteRangeResponse:
        # An unset range reads as (0, 0], the whole ring: only an explicit range may delete.
        if not request.HasField("range"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "range is required")
        deleted = await self._committer.delete_range(request.range.start, request.range.end)
        log.info(
            "Range deleted",
            node_id=self._node_id,
            start=request.range.start,
            end=request.range.end,
            deleted=deleted,
        )
        return storage_pb2.DeleteRangeResponse(deleted=deleted)

    async def Stats(self, request: storage_pb2.StatsRequest, context: Context) -> storage_pb2.StatsResponse:
        stats = self._engine.stats()
        return storage_pb2.StatsResponse(
            node_id=self._node_id, keys=stats.keys, bytes=stats.bytes, tombstones=stats.tombstones
        )
