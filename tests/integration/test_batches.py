"""BatchWrite and BatchRead: many keys per call, each item with its own result.

A real cluster (PostgreSQL, three storage nodes, a coordinator) over gRPC on loopback.
"""

from __future__ import annotations

import grpc
import pytest

from pairdb.client import Client, ClientError, InvalidArgument, NotFound, Unavailable, Value
from pairdb.kernel.keyspace import MAX_BATCH_ITEMS, MAX_BATCH_VALUE_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES
from pairdb.local.cluster import LocalCluster
from pairdb.proto import coordinator_pb2 as pb
from pairdb.proto import coordinator_pb2_grpc
from tests.support import credentials, hints_replayed, scrape


def values(results: list[Value | ClientError]) -> list[bytes | None]:
    return [r.value if isinstance(r, Value) and r.found else None for r in results]


async def test_a_batch_writes_and_reads_back_every_key_across_tenants(client: Client, tenant: str) -> None:
    await client.create_tenant(f"{tenant}-rf2", 2)
    items = [(tenant if i % 2 else f"{tenant}-rf2", f"k{i}", f"v{i}".encode()) for i in range(2500)]
    versions = await client.put_many(items)  # three calls: the client splits at the item limit
    assert len(versions) == len(items) and all(isinstance(v, tuple) for v in versions)
    read = await client.get_many([(t, k) for t, k, _ in items])
    assert values(read) == [v for _, _, v in items]
    # What a batch wrote, a single read sees, and at the version the batch returned.
    single = await client.get(tenant, "k1")
    assert single.value == b"v1" and single.version == versions[1]


async def test_a_batch_deletes_keys_whose_value_is_none(client: Client, tenant: str) -> None:
    await client.put_many([(tenant, "gone", b"x"), (tenant, "kept", b"y")])
    await client.put_many([(tenant, "gone", None)])
    assert values(await client.get_many([(tenant, "gone"), (tenant, "kept")])) == [None, b"y"]


async def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_is_written(
    client: Client, tenant: str
) -> None:
    items: list[tuple[str, str, bytes | None]] = [
        (tenant, "good-1", b"a"),
        (tenant, "", b"empty key"),
        (tenant, "x" * (MAX_KEY_BYTES + 1), b"long key"),
        (tenant, "too-big", b"x" * (MAX_VALUE_BYTES + 1)),
        ("no-such-tenant", "k", b"unknown tenant"),
        ("bad tenant!", "k", b"invalid tenant id"),
        (tenant, "good-2", b"b"),
    ]
    results = await client.put_many(items)
    good_1, empty, long_key, too_big, unknown, invalid, good_2 = results
    assert isinstance(good_1, tuple) and isinstance(good_2, tuple)
    assert isinstance(empty, InvalidArgument) and "key must not be empty" in empty.message
    assert isinstance(long_key, InvalidArgument) and f"limit is {MAX_KEY_BYTES}" in long_key.message
    assert isinstance(too_big, InvalidArgument) and f"limit is {MAX_VALUE_BYTES}" in too_big.message
    assert isinstance(unknown, NotFound) and "create it with CreateTenant" in unknown.message
    assert isinstance(invalid, InvalidArgument) and "invalid tenant_id" in invalid.message
    read = await client.get_many([(tenant, "good-1"), (tenant, ""), (tenant, "too-big"), (tenant, "good-2")])
    assert values(read) == [b"a", None, None, b"b"]
    assert isinstance(read[1], InvalidArgument)


async def test_a_batch_over_the_limits_is_refused_whole(cluster: LocalCluster, tenant: str) -> None:
    async with cluster.aio_channel(cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        too_many = [
            pb.BatchWriteItem(tenant_id=tenant, key=f"k{i}", value=b"v") for i in range(MAX_BATCH_ITEMS + 1)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.BatchWrite(pb.BatchWriteRequest(items=too_many), metadata=credentials(cluster))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_BATCH_ITEMS} items" in (refused.value.details() or "")
        chunk = b"x" * MAX_VALUE_BYTES
        too_big = [
            pb.BatchWriteItem(tenant_id=tenant, key=f"big{i}", value=chunk)
            for i in range(MAX_BATCH_VALUE_BYTES // MAX_VALUE_BYTES + 1)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.BatchWrite(pb.BatchWriteRequest(items=too_big), metadata=credentials(cluster))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bytes of values" in (refused.value.details() or "")
        reads = [pb.BatchReadItem(tenant_id=tenant, key=f"k{i}") for i in range(MAX_BATCH_ITEMS + 1)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.BatchRead(pb.BatchReadRequest(items=reads), metadata=credentials(cluster))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with cluster.connect(cluster.coordinator_address) as client:
        # Nothing of a refused batch was written.
        assert values(await client.get_many([(tenant, "k0"), (tenant, "big0")])) == [None, None]


async def test_a_batch_read_of_more_values_than_one_reply_carries_returns_every_value(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    # 60 MiB of values: more than a coordinator's reply to a batch carries, and more than a
    # storage node's reply to one call. Each is cut short and asked again for the rest.
    values_written = [bytes([i]) * MAX_VALUE_BYTES for i in range(60)]
    items = [(tenant, f"large-{i}", v) for i, v in enumerate(values_written)]
    written = await client.put_many(items)
    assert all(isinstance(v, tuple) for v in written), [
        (i, v) for i, v in enumerate(written) if not isinstance(v, tuple)
    ]
    try:
        served_before = await _read_bytes_served(cluster)
        read = await client.get_many([(tenant, f"large-{i}") for i in range(60)])
        served = await _read_bytes_served(cluster) - served_before
        # Which keys came back wrong, and as what (an error, or a value's size).
        wrong = [
            (i, r if isinstance(r, ClientError) else len(r.value or b""))
            for i, r in enumerate(read)
            if values([r]) != [values_written[i]]
        ]
        assert not wrong, wrong
        # The coordinator asks the replicas for about what each of its replies carries and leaves
        # the rest unread: each value from at most every replica (3 x 60 MiB), not re-read for every
        # round the client asks again (a quorum of 2 x (60 + 44 + 28 + 12) MiB, 288 MiB).
        assert served <= 3 * 60 * MAX_VALUE_BYTES, f"the nodes served {served / MAX_VALUE_BYTES:.0f} MiB"
    finally:
        # The cluster is the session's: 60 MiB left behind would ride along every later
        # whole-ring scan (tests/integration/test_fuzz.py measures a node's memory across them).
        await client.put_many([(tenant, f"large-{i}", None) for i in range(60)])


async def test_with_a_node_down_a_quorum_batch_succeeds_and_an_all_batch_names_it(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    await cluster.kill_storage_node("node-2")
    try:
        items = [(tenant, f"down-{i}", b"v") for i in range(100)]
        assert all(isinstance(v, tuple) for v in await client.put_many(items))
        assert values(await client.get_many([(t, k) for t, k, _ in items])) == [b"v"] * 100
        refused = await client.put_many(items[:5], consistency="ALL")
        assert all(isinstance(r, Unavailable) and "node-2" in r.message for r in refused)
    finally:
        await cluster.restart_storage_node("node-2")
        await hints_replayed(cluster, "node-2")


async def _read_bytes_served(cluster: LocalCluster) -> float:
    samples = [await scrape(node.metrics_port) for node in cluster.nodes.values()]
    return sum(s.get("pairdb_storage_read_bytes_total", 0.0) for s in samples)
