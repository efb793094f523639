"""Bad requests get a clear status and write nothing (real coordinator over gRPC)."""

from __future__ import annotations

import grpc
import pytest

from pairdb.client import Client, ClientError
from pairdb.kernel.keyspace import MAX_KEY_BYTES, MAX_VALUE_BYTES
from pairdb.local.cluster import LocalCluster
from pairdb.proto import coordinator_pb2 as pb
from pairdb.proto import coordinator_pb2_grpc
from tests.support import credentials


async def total_records(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.nodes.values():
        client = node.client()
        try:
            stats = await client.stats()
        finally:
            await client.close()
        total += stats.keys + stats.tombstones
    return total


async def expect(code: grpc.StatusCode, call: object, *words: str) -> None:
    with pytest.raises(ClientError) as err:
        await call  # type: ignore[misc]
    assert err.value.code == code, err.value
    for word in words:
        assert word in err.value.message, err.value.message


async def test_bad_writes_are_refused_and_write_nothing(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    before = await total_records(cluster)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(invalid, client.put(tenant, "", b"v"), "key must not be empty")
    await expect(invalid, client.put(tenant, "k" * (MAX_KEY_BYTES + 1), b"v"), f"limit is {MAX_KEY_BYTES}")
    await expect(
        invalid, client.put(tenant, "big", b"x" * (MAX_VALUE_BYTES + 1)), f"limit is {MAX_VALUE_BYTES}"
    )
    await expect(invalid, client.put("bad tenant!", "k", b"v"), "invalid tenant_id")
    await expect(invalid, client.put("", "k", b"v"), "invalid tenant_id")
    await expect(grpc.StatusCode.NOT_FOUND, client.put("no-such-tenant", "k", b"v"), "does not exist")
    await expect(grpc.StatusCode.NOT_FOUND, client.get("no-such-tenant", "k"), "does not exist")
    await expect(invalid, client.delete(tenant, ""), "key must not be empty")
    assert await total_records(cluster) == before


async def test_unknown_consistency_level_is_refused(cluster: LocalCluster, tenant: str) -> None:
    before = await total_records(cluster)
    async with cluster.aio_channel(cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.WriteKeyValue(
                pb.WriteKeyValueRequest(tenant_id=tenant, key="k", value=b"v", consistency=9),  # type: ignore[arg-type]
                metadata=credentials(cluster),
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown consistency level 9" in (err.value.details() or "")
    assert await total_records(cluster) == before


async def test_tenant_creation_checks_its_replication_factor(client: Client) -> None:
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        client.create_tenant("rf-four", 4),
        "needs at least 4 active storage nodes",
        "has 3",
    )
    await expect(grpc.StatusCode.INVALID_ARGUMENT, client.create_tenant("rf-huge", 50), "out of range")
    await expect(grpc.StatusCode.NOT_FOUND, client.put("rf-four", "k", b"v"))
    await client.create_tenant("rf-dup", 2)
    await expect(grpc.StatusCode.ALREADY_EXISTS, client.create_tenant("rf-dup", 2), "already exists")


async def test_a_tenant_with_rf_one_writes_one_copy(cluster: LocalCluster, client: Client) -> None:
    await client.create_tenant("rf-one", 1)
    before = await total_records(cluster)
    await client.put("rf-one", "k", b"v")
    assert await total_records(cluster) == before + 1


async def test_adding_a_node_with_bad_input(client: Client) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(invalid, client.add_node("bad id", "127.0.0.1", 7000), "invalid node_id")
    await expect(invalid, client.add_node("n9", "127.0.0.1", 0), "port 0")
    await expect(
        invalid, client.add_node("n9", "127.0.0.1", 7000, virtual_nodes=5000), "virtual_nodes must be"
    )
    await expect(grpc.StatusCode.ALREADY_EXISTS, client.add_node("node-1", "127.0.0.1", 7000), "already")


async def test_list_storage_nodes_shows_the_active_ring(client: Client) -> None:
    nodes = await client.nodes()
    assert [(n.node_id, n.status) for n in nodes] == [
        ("node-1", "active"),
        ("node-2", "active"),
        ("node-3", "active"),
    ]
