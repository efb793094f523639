"""StorageService over gRPC on a real storage-node process."""

from __future__ import annotations

import grpc
import pytest

from pairdb.kernel.keyspace import TOKEN_MAX, Version, in_range, token
from pairdb.local.cluster import LocalCluster
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.storage_node.client import NodeClient, StorageError
from pairdb.storage_node.engine import StoredRecord
from pairdb.storage_node.service import MAX_RANGES


@pytest.fixture
async def node(cluster: LocalCluster) -> NodeClient:
    return cluster.nodes["node-1"].client()


def rec(tenant: str, key: str, hlc: int, value: bytes = b"", tombstone: bool = False) -> StoredRecord:
    return StoredRecord(tenant, key, value, Version(hlc, 7), tombstone)


async def test_out_of_order_applies_keep_the_newest(node: NodeClient) -> None:
    tenant = "svc-order"
    assert (await node.apply(rec(tenant, "k", 300, b"newest"))).applied
    assert await node.apply_batch([rec(tenant, "k", 100, b"old"), rec(tenant, "k", 200, b"older")]) == [
        False,
        False,
    ]
    stored = await node.get(tenant, "k")
    assert stored is not None and stored.value == b"newest"


async def test_tombstone_beats_older_and_loses_to_newer_over_grpc(node: NodeClient) -> None:
    tenant = "svc-tomb"
    await node.apply(rec(tenant, "k", 100, b"v1"))
    assert (await node.apply(rec(tenant, "k", 200, tombstone=True))).applied
    assert not (await node.apply(rec(tenant, "k", 150, b"stale"))).applied
    stored = await node.get(tenant, "k")
    assert stored is not None and stored.tombstone
    assert (await node.apply(rec(tenant, "k", 250, b"v2"))).applied
    stored = await node.get(tenant, "k")
    assert stored is not None and stored.value == b"v2" and not stored.tombstone


async def test_scan_range_streams_the_range_in_batches(node: NodeClient) -> None:
    tenant = "svc-scan"
    records = [rec(tenant, f"k{i}", 10, b"v") for i in range(300)]
    await node.apply_batch(records)
    start, end = 0, TOKEN_MAX // 2
    batches = [b async for b in node.scan_range(start, end, batch_size=16)]
    assert all(len(b) <= 16 for b in batches)
    ours = [r.key for b in batches for r in b if r.tenant_id == tenant]
    expected = sorted((r for r in records if in_range(r.token, start, end)), key=lambda r: r.token)
    assert ours == [r.key for r in expected]


async def test_range_digest_and_delete_range(node: NodeClient) -> None:
    tenant = "svc-range"
    await node.apply_batch([rec(tenant, f"k{i}", 10, b"v") for i in range(50)])
    t = token(tenant, "k0")
    digest, count = await node.range_digest(t - 1, t)
    assert count >= 1 and len(digest) == 16
    assert await node.delete_range(t - 1, t) >= 1
    assert await node.get(tenant, "k0") is None
    assert await node.get(tenant, "k1") is not None or in_range(token(tenant, "k1"), t - 1, t)


async def test_many_ranges_digested_in_one_call_answer_as_one_call_each(node: NodeClient) -> None:
    tenant = "svc-digests"
    await node.apply_batch([rec(tenant, f"k{i}", 10, b"v" * i) for i in range(200)])
    step = TOKEN_MAX // 7
    ranges = [(i * step, (i + 1) * step) for i in range(7)] + [(TOKEN_MAX - 5, 3), (0, 0)]
    assert await node.range_digests(ranges) == [await node.range_digest(s, e) for s, e in ranges]
    assert await node.range_digests(ranges, tenants=[tenant]) == [
        await node.range_digest(s, e, tenants=[tenant]) for s, e in ranges
    ]
    assert await node.count_ranges(ranges) == [await node.count_range(s, e) for s, e in ranges]


async def test_a_digest_call_asks_for_one_to_ten_thousand_ranges(cluster: LocalCluster) -> None:
    channel = cluster.aio_channel(cluster.nodes["node-1"].address, "node-1")
    stub = storage_pb2_grpc.StorageServiceStub(channel)
    too_many = [storage_pb2.TokenRange(start=i, end=i + 1) for i in range(MAX_RANGES + 1)]
    try:
        for ranges in ([], too_many):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RangeDigests(storage_pb2.RangeDigestsRequest(ranges=ranges))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"1 to {MAX_RANGES} ranges" in (err.value.details() or "")
    finally:
        await channel.close(None)


async def test_invalid_records_are_refused_whole(cluster: LocalCluster, node: NodeClient) -> None:
    channel = cluster.aio_channel(cluster.nodes["node-1"].address, "node-1")
    stub = storage_pb2_grpc.StorageServiceStub(channel)
    good = storage_pb2.Record(
        tenant_id="svc-bad", key="fine", value=b"v", version=storage_pb2.Version(hlc=5, origin=1)
    )
    no_version = storage_pb2.Record(tenant_id="svc-bad", key="no-version", value=b"v")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ApplyBatch(storage_pb2.ApplyBatchRequest(records=[good, no_version]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "record 1" in (err.value.details() or "")
    finally:
        await channel.close(None)
    assert await node.get("svc-bad", "fine") is None  # nothing half-written


async def test_an_unreachable_node_is_reported_by_name() -> None:
    from pairdb.local.processes import free_port

    client = NodeClient("ghost", f"127.0.0.1:{free_port()}", timeout=1)
    try:
        with pytest.raises(StorageError) as err:
            await client.stats()
        assert err.value.node_id == "ghost" and err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await client.close()


async def test_stats_report_each_tenants_live_bytes_through_writes_overwrites_and_deletes(
    node: NodeClient,
) -> None:
    tenant = "svc-usage"
    await node.apply_batch([rec(tenant, f"k{i}", 100, b"12345") for i in range(10)])  # 10 x (2 + 5)
    await node.apply(rec(tenant, "k0", 200, b"1"))  # overwritten: 2 + 1
    await node.apply(rec(tenant, "k1", 200, tombstone=True))  # deleted
    assert (await node.stats()).tenant_bytes[tenant] == 8 * 7 + 3
    await node.delete_range(0, 0, tenants=[tenant])  # the whole ring, this tenant only
    assert tenant not in (await node.stats()).tenant_bytes
