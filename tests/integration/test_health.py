"""Health checking and reflection on a running coordinator and storage node; readiness follows PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster
from tests.support import wait_for

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def small_cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("health", storage_nodes=3, log_level="WARNING", temporal=False) as cluster:
        yield cluster


def dial(cluster: LocalCluster, node_id: str | None) -> grpc.aio.Channel:
    """A coordinator (node_id None) or that storage node, with the credentials it asks for."""
    address = cluster.nodes[node_id].address if node_id else cluster.coordinator_address
    return cluster.aio_channel(address, node_id)


async def check(cluster: LocalCluster, node_id: str | None = None, service: str = "") -> int:
    async with dial(cluster, node_id) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return int(reply.status)


async def services(cluster: LocalCluster, node_id: str | None = None) -> set[str]:
    async with dial(cluster, node_id) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            return {s.name for s in reply.list_services_response.service}
    return set()


async def test_health_and_reflection_on_coordinator_and_storage_node(small_cluster: LocalCluster) -> None:
    assert await check(small_cluster) == SERVING
    assert await check(small_cluster, None, "pairdb.v1.CoordinatorService") == SERVING
    assert await check(small_cluster, "node-1", "pairdb.v1.StorageService") == SERVING
    assert {"pairdb.v1.CoordinatorService", "grpc.health.v1.Health"} <= await services(small_cluster)
    assert {"pairdb.v1.StorageService", "grpc.health.v1.Health"} <= await services(small_cluster, "node-1")


async def test_coordinator_is_not_serving_without_postgresql_and_serving_again_after(
    small_cluster: LocalCluster,
) -> None:
    await small_cluster.postgres.stop()
    try:

        async def down() -> bool:
            return await check(small_cluster) == NOT_SERVING

        await wait_for(down, timeout=30, what="NOT_SERVING")
    finally:
        await small_cluster.postgres.start()

    async def up() -> bool:
        return await check(small_cluster) == SERVING

    await wait_for(up, timeout=30, what="SERVING again")
    async with small_cluster.client() as client:
        await client.put("default", "after-postgres", b"back")
