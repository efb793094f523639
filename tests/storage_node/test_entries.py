"""A range moves between nodes as packed entries: the joining node pulls it from the source, newest kept.

Two real StorageServices over gRPC on loopback, in this process, each on its
own LMDB directory (a copy's source and its joining node); the joining node
dials the source itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pairdb.kernel.keyspace import Version, in_range
from pairdb.local.processes import free_port
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


async def pull_all(
    source: NodeClient, joining: NodeClient, ranges: list[tuple[int, int]], **limits: int
) -> tuple[dict[int, int], int, int]:
    """Every entry of the ranges pulled by joining, call after call: entries by range, applied, calls."""
    moved: dict[int, int] = {}
    applied = calls = 0
    at, after = 0, b""
    while True:
        pulled = await joining.pull_ranges(source, ranges, at=at, after=after, **limits)
        calls += 1
        applied += pulled.applied
        for position, (entries, _) in pulled.moved.items():
            moved[position] = moved.get(position, 0) + entries
        if pulled.next is None:
            return moved, applied, calls
        at, after = pulled.next


async def test_a_range_moves_as_entries_and_the_newest_version_of_each_key_stays(
    nodes: tuple[Node, Node],
) -> None:
    source, joining = nodes
    records = [rec(f"k{i}", 20, f"v{i}".encode(), tombstone=i % 5 == 0) for i in range(100)]
    await source.client.apply_batch(records)
    await joining.client.apply_batch([rec("k1", 99, b"newer here"), rec("k2", 5, b"older here")])
    moved, applied, calls = await pull_all(source.client, joining.client, [(0, 0)], batch_size=7)
    assert moved == {0: 100} and calls == 1
    assert applied == 99  # all but k1, newer where it lands
    expected = {r.key: r for r in records} | {"k1": rec("k1", 99, b"newer here")}
    assert {k: await joining.client.get("t", k) for k in expected} == expected


async def test_many_ranges_move_in_one_call_each_counted_apart(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    records = [rec(f"k{i}", 20) for i in range(100)]
    await source.client.apply_batch(records)
    tokens = sorted(r.token for r in records)
    ranges = [(tokens[10], tokens[40]), (tokens[40], tokens[41]), (tokens[90], tokens[5])]
    moved, _, calls = await pull_all(source.client, joining.client, ranges, batch_size=7)
    assert moved == {0: 30, 1: 1, 2: 15} and calls == 1  # (t90, t5] wraps: t91..t99 and t0..t5
    assert await joining.client.get("t", records[0].key) == (
        records[0] if any(in_range(records[0].token, s, e) for s, e in ranges) else None
    )


async def test_a_pull_stops_at_its_limit_and_the_next_goes_on_where_it_stopped(
    nodes: tuple[Node, Node],
) -> None:
    """A worker paces a copy by how much it asks for per call: no entry is skipped or moved twice."""
    source, joining = nodes
    records = [rec(f"k{i}", 20) for i in range(100)]
    await source.client.apply_batch(records)
    tokens = sorted(r.token for r in records)
    ranges = [(tokens[0], tokens[50]), (tokens[50], tokens[99])]  # every key but the first
    moved, applied, calls = await pull_all(source.client, joining.client, ranges, batch_size=7, max_entries=7)
    assert moved == {0: 50, 1: 49} and applied == 99
    assert 99 / 13 <= calls <= 15  # a call stops at the batch that reaches 7 (a range's end cuts one short)
    assert joining.engine.stats().keys == 99
    _, nothing, _ = await pull_all(source.client, joining.client, ranges, max_bytes=1)
    assert nothing == 0  # pulled again: every entry is there already


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


async def test_a_pull_names_what_it_needs(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    async with grpc.aio.insecure_channel(joining.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        everything = [storage_pb2.TokenRange(start=0, end=0)]
        for request, why in (
            (storage_pb2.PullRangesRequest(ranges=everything), "source_id and source_address are required"),
            (
                storage_pb2.PullRangesRequest(
                    source_id="joining", source_address=source.address, ranges=everything
                ),
                "cannot pull from itself",
            ),
            (storage_pb2.PullRangesRequest(source_id="source", source_address=source.address), "1 to 10000"),
            (
                storage_pb2.PullRangesRequest(
                    source_id="source", source_address=source.address, ranges=everything, at=1
                ),
                "past the 1 ranges",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.PullRanges(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert why in (refused.value.details() or "")


async def test_an_entry_from_the_future_fails_the_pull_as_its_source_s_failure(
    nodes: tuple[Node, Node],
) -> None:
    source, joining = nodes
    # Straight into the source's engine: what its service would refuse, a broken peer might hold.
    source.engine.apply_records(
        [
            StoredRecord("t", "now", b"v", now_version()),
            StoredRecord("t", "ahead", b"v", now_version(ahead_ms=10 * MAX_OFFSET_MS)),
        ]
    )
    with pytest.raises(StorageError) as refused:
        await joining.client.pull_ranges(source.client, [(0, 0)])
    # The source is named: the worker pulls from another old replica.
    assert refused.value.node_id == "source"
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ahead of this node's clock" in refused.value.details
    assert joining.engine.stats().keys == 0  # the batch was refused whole


async def test_a_stale_epoch_is_refused_by_the_node_fenced_past_it(nodes: tuple[Node, Node]) -> None:
    source, joining = nodes
    await source.client.apply_batch([rec(f"k{i}", 20) for i in range(10)])
    await joining.client.set_fence(5)
    with pytest.raises(StaleEpoch) as target_fenced:
        await joining.client.pull_ranges(source.client, [(0, 0)], epoch=4)
    assert target_fenced.value.node_id == "joining" and target_fenced.value.fence == 5
    await source.client.set_fence(9)
    with pytest.raises(StaleEpoch) as source_fenced:
        await joining.client.pull_ranges(source.client, [(0, 0)], epoch=6)
    assert source_fenced.value.node_id == "source" and source_fenced.value.fence == 9
    assert joining.engine.stats().keys == 0


async def test_an_unreachable_source_is_named_as_the_failure(nodes: tuple[Node, Node]) -> None:
    _, joining = nodes
    nobody = NodeClient("gone", f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(StorageError) as failed:
            await joining.client.pull_ranges(nobody, [(0, 0)], timeout=5)
    finally:
        await nobody.close()
    assert failed.value.node_id == "gone" and failed.value.code == grpc.StatusCode.UNAVAILABLE


async def test_the_sources_load_as_the_joining_node_heard_it_reaches_the_copys_client_of_the_source(
    nodes: tuple[Node, Node],
) -> None:
    source, joining = nodes
    await source.client.apply_batch([rec(f"k{i}", 20) for i in range(10)])
    unheard = NodeClient("source", source.address)  # the copy never called the source itself
    try:
        assert unheard.load is None
        await pull_all(unheard, joining.client, [(0, 0)])
        assert unheard.load is not None
    finally:
        await unheard.close()
