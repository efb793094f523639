"""A flood of requests for made-up tenant ids cannot take a coordinator down.

Each unknown id used to cost a PostgreSQL query on the pool the lease renewal
shares: enough of them starved the renewal and lapsed the lease, for everyone.
Now the lease has a connection of its own, lookups of unknown tenants share
their reloads, and a tenant found missing is answered from memory for a moment.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pairdb.client import ClientError, NotFound
from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster
from tests.support import scrape

FLOOD_REQUESTS = 6000
IN_FLIGHT = 500  # below the coordinator's --max-concurrent-rpcs: the test is about PostgreSQL
MADE_UP_IDS = 1500
PG_LATENCY = 0.01  # some repeat: both the cached and the queried answers are exercised


@pytest.fixture
async def short_lease_cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster(
        "flood",
        storage_nodes=3,
        log_level="WARNING",
        temporal=False,
        coordinator_lease_seconds=3.0,
        postgres_proxies=True,
    ) as cluster:
        yield cluster


async def test_a_flood_of_unknown_tenants_leaves_the_lease_and_legitimate_traffic_alone(
    short_lease_cluster: LocalCluster,
) -> None:
    cluster = short_lease_cluster
    coordinator = cluster.coordinator_procs[0]
    async with cluster.client() as setup:
        await setup.create_tenant("legit", 3)
    # A PostgreSQL a few milliseconds away, as in production: a query holds its pool connection
    # that long, so a flood of one query per request queues for the pool.
    assert coordinator.pg_proxy is not None
    coordinator.pg_proxy.latency = PG_LATENCY
    flooding = asyncio.Event()
    legit_failures: list[str] = []
    legit_ok = 0
    health: list[int] = []

    async def legitimate() -> None:
        nonlocal legit_ok
        async with cluster.connect(coordinator.address) as client:
            i = 0
            while not flooding.is_set() or i < 20:
                try:
                    await client.put("legit", f"k{i % 50}", f"v{i}".encode())
                    value = await client.get("legit", f"k{i % 50}")
                    assert value.value == f"v{i}".encode()
                    legit_ok += 1
                except ClientError as exc:
                    legit_failures.append(repr(exc))
                i += 1

    async def watch_health() -> None:
        async with cluster.aio_channel(coordinator.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not flooding.is_set():
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                health.append(int(reply.status))
                await asyncio.sleep(0.1)

    async def flood() -> list[BaseException | None]:
        ids = [f"ghost-{random.getrandbits(64):x}" for _ in range(MADE_UP_IDS)]
        gate = asyncio.Semaphore(IN_FLIGHT)
        async with cluster.connect(coordinator.address, timeout=30) as client:

            async def one(i: int) -> BaseException | None:
                async with gate:
                    tenant = random.choice(ids)
                    try:
                        if i % 2:
                            await client.put(tenant, "k", b"v")
                        else:
                            await client.get(tenant, "k")
                    except ClientError as exc:
                        return exc
                    return None

            try:
                return await asyncio.gather(*(one(i) for i in range(FLOOD_REQUESTS)))
            finally:
                flooding.set()

    _, _, outcomes = await asyncio.gather(legitimate(), watch_health(), flood())

    assert not legit_failures, legit_failures[:5]
    assert legit_ok >= 20
    assert health and all(status == health_pb2.HealthCheckResponse.SERVING for status in health)
    assert all(isinstance(o, NotFound) and "does not exist" in str(o) for o in outcomes), {
        repr(o) for o in outcomes if not isinstance(o, NotFound)
    }
    log = (cluster.data_dir / "logs" / f"{coordinator.coordinator_id}.log").read_text()
    assert "lease has lapsed" not in log and "Metadata refresh failed" not in log
    metrics = await scrape(coordinator.metrics_port)
    assert metrics['pairdb_unknown_tenant_requests_total{how="cached"}'] > 0
    assert metrics['pairdb_unknown_tenant_requests_total{how="queried"}'] > 0
