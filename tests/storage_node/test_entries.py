"""A range moves between nodes as packed entries: scanned on one, applied on another, newest kept.

Two real StorageServices over gRPC on loopback, in this process, each on its
own LMDB directory (a copy's source and its joining node).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pairdb.kernel.keyspace import Version, in_range
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError
from pairdb.storage_node.engine import Engine, StoredRecord
from tests.support import MAX_OFFSET_MS, now_version, start_node


@dataclass
class Node:
    client: NodeClient
    engine: Engine
    address: str


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    started = [await start_node(tmp_path / name, name) for name in ("source", "joining")]
    pair = [
        Node(NodeClient(name, f"127.0.0.1:{port}"), engine, f"127.0.0.1:{port}")
        for name, (_, _, engine, port) in zip(("source", "joining"), started, strict=True)
    ]
    yield pair[0], pair[1]
    for node, (server, committer, engine, _) in zip(pair, started, strict=True):
        await node.client.close()
        await server.stop(None)
        await committer.stop()
        engine.close()


def rec(key: str, hlc: int, value: bytes = b"v", tombstone: bool = False) -> StoredRecord:
    return StoredRecord("t", key, b"" if tombstone else value, Version(hlc << 16, 1), tombstone)


async def move(source: NodeClient, joining: NodeClient, batch_size: int) -> tuple[list[int], int]:
    """Every entry of source onto joining: the batch sizes scanned, and how many were applied."""
    sizes, applied = [], 0
    async for entries, count in source.scan_entries(0, 0, batch_size=batch_size):
        sizes.append(count)
        applied += await joining.apply_entries(entries)
    return sizes, applied


async def test_a_range_moves_as_entries_and_the_newest_version_of_each_key_stays(
    nodes: tuple[Node, Node],
) -> None:
    source, joining = nodes
    records = [rec(f"k{i}", 20, f"v{i}".encode(), tombstone=i % 5 == 0) for i in range(100)]
    await source.client.apply_batch(records)
    await joining.client.apply_batch([rec("k1", 99, b"newer here"), rec("k2", 5, b"older here")])
    sizes, applied = await move(source.client, joining.client, batch_size=7)
    assert sum(sizes) == 100 and max(sizes) <= 7
    assert applied == 99  # all but k1, newer where it lands
    expected = {r.key: r for r in records} | {"k1": rec("k1", 99, b"newer here")}
    assert {k: await joining.client.get("t", k) for k in expected} == expected


async def test_many_ranges_stream_in_one_call_each_batch_naming_its_range(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    records = [rec(f"k{i}", 20) for i in range(100)]
    await source.client.apply_batch(records)
    tokens = sorted(r.token for r in records)
    ranges = [(tokens[10], tokens[40]), (tokens[40], tokens[41]), (tokens[90], tokens[5])]
    moved = [0] * len(ranges)
    async for at, entries, count in source.client.scan_entries_many(ranges, batch_size=7):
        assert count <= 7
        moved[at] += await joining.client.apply_entries(entries)
    assert moved == [30, 1, 15]  # (t90, t5] wraps: t91..t99 and t0..t5
    assert await joining.client.get("t", records[0].key) == (
        records[0] if any(in_range(records[0].token, s, e) for s, e in ranges) else None
    )


async def test_several_ranges_are_scanned_as_entries_only(nodes: tuple[Node, Node]) -> None:
    source, _ = nodes
    async with grpc.aio.insecure_channel(source.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        request = storage_pb2.ScanRangeRequest(ranges=[storage_pb2.TokenRange(start=0, end=5)])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ScanRange(request):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "entries only" in (refused.value.details() or "")


async def test_malformed_entries_are_refused_whole(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    await source.client.apply_batch([rec(f"k{i}", 20) for i in range(10)])
    [(entries, _)] = [batch async for batch in source.client.scan_entries(0, 0)]
    async with grpc.aio.insecure_channel(joining.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        for bad in (b"\x00\x01garbage", entries[:-3], entries + b"\x00"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ApplyEntries(storage_pb2.ApplyEntriesRequest(entries=bad))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "entr" in (refused.value.details() or "")
    assert joining.engine.stats().keys == 0  # nothing half-written


async def test_an_entry_from_the_future_or_a_stale_epoch_is_refused(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    # Straight into the source's engine: what its service would refuse, a broken peer might send.
    source.engine.apply_records(
        [
            StoredRecord("t", "now", b"v", now_version()),
            StoredRecord("t", "ahead", b"v", now_version(ahead_ms=10 * MAX_OFFSET_MS)),
        ]
    )
    [(entries, count)] = [batch async for batch in source.client.scan_entries(0, 0)]
    assert count == 2
    with pytest.raises(StorageError) as refused:
        await joining.client.apply_entries(entries)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ahead of this node's clock" in refused.value.details
    await joining.client.set_fence(5)
    with pytest.raises(StaleEpoch):
        await joining.client.apply_entries(entries, epoch=4)
    assert joining.engine.stats().keys == 0
