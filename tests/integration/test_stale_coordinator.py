"""A coordinator that stalls mid-request never acknowledges by a view the cluster has moved past.

Coordinators reach PostgreSQL through proxies the tests can hold (bytes stay on
the wire, as on a partitioned connection, and arrive late), and storage nodes
sit behind proxies too. Real PostgreSQL, Temporal, storage nodes, coordinators
and worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from pairdb.client import NO_RETRY, ClientError
from pairdb.coordinator.quorum import Consistency, required
from pairdb.coordinator.ring import Ring
from pairdb.kernel.keyspace import token
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from tests.conftest import local_cluster
from tests.support import current_ring, load, wait_ended


@pytest.fixture(scope="module")
async def stale() -> AsyncIterator[LocalCluster]:
    async with local_cluster(
        "stale", storage_nodes=3, coordinators=2, proxies=True, postgres_proxies=True, log_level="INFO"
    ) as cluster:
        async with cluster.client() as client:
            await client.create_tenant("t", 3)
            await load(client, ["t"], 300)
        yield cluster


async def holders(cluster: LocalCluster, ring: Ring, tenant: str, key: str, value: bytes, rf: int) -> int:
    """How many of the key's replicas in `ring` hold value."""
    count = 0
    for node_id in ring.replicas(token(tenant, key), rf):
        storage = cluster.nodes[node_id].client()
        try:
            record = await storage.get(tenant, key)
        finally:
            await storage.close()
        count += record is not None and record.value == value
    return count


async def test_writes_stalled_in_routing_while_a_node_joined_are_durable_in_the_new_ring(
    stale: LocalCluster,
) -> None:
    c2 = stale.coordinator_procs[1]
    assert c2.pg_proxy is not None
    async with stale.client(0) as client, stale.connect(c2.address, timeout=180, retry=NO_RETRY) as stalled:
        # c2 is cut off from PostgreSQL with its queries still on the wire; a tenant it has not seen
        # sends each of its writes to PostgreSQL from inside routing, pinned to c2's current view.
        c2.pg_proxy.hold()
        await client.create_tenant("late", 3)
        writes = {f"k{i}": asyncio.ensure_future(stalled.put("late", f"k{i}", b"stalled")) for i in range(40)}
        await asyncio.sleep(1)
        # Meanwhile the ring changes: the barrier waits for c2 until its lease lapses, then moves on.
        node4 = await stale.add_storage_node("node-4")
        added = await client.add_node("node-4", "127.0.0.1", node4.advertised_port)
        assert (await wait_ended(client, added.migration_id)).status == "completed"
        # With node-1 unreachable, a write sent to the old replicas is acknowledged by node-2 and
        # node-3 alone; keys whose new replicas are node-4, node-1 and one of those would then
        # hold it on one new replica only.
        proxy1 = stale.nodes["node-1"].proxy
        assert proxy1 is not None
        proxy1.block()
        try:
            c2.pg_proxy.release()
            outcomes = await asyncio.gather(*writes.values(), return_exceptions=True)
        finally:
            proxy1.unblock()
    acknowledged = [k for k, o in zip(writes, outcomes, strict=True) if not isinstance(o, BaseException)]
    ring = await current_ring(stale)
    short = {
        k: n
        for k in acknowledged
        if (n := await holders(stale, ring, "late", k, b"stalled", 3)) < required(Consistency.QUORUM, 3)
    }
    assert not short, f"acknowledged writes held by fewer than a quorum of their replicas: {short}"


async def test_a_request_never_replies_after_its_coordinators_lease_ran_out(stale: LocalCluster) -> None:
    # A coordinator with a 2 s lease whose storage calls may take 10 s.
    c3 = await stale.start_coordinator(
        free_port(), extra_args=("--lease-seconds", "2", "--storage-timeout", "10")
    )
    proxies = [n.proxy for n in stale.nodes.values() if n.proxy is not None]
    try:
        async with stale.connect(c3.address, timeout=30, retry=NO_RETRY) as client:
            await client.put("t", "lease", b"before")
            assert c3.pg_proxy is not None
            c3.pg_proxy.hold()  # from now on the lease cannot be renewed
            for proxy in proxies:
                proxy.latency = 1.5  # each way: the write takes longer than what is left of the lease
            with pytest.raises(ClientError) as refused:
                await client.put("t", "lease", b"after the lease")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "lease" in refused.value.message
    finally:
        for proxy in proxies:
            proxy.heal()
        if c3.pg_proxy is not None:
            c3.pg_proxy.release()
        await c3.process.stop()
        stale.coordinator_procs.remove(c3)


async def test_writes_stalled_in_routing_while_a_node_joined_an_empty_ring_are_durable() -> None:
    """The direct join of a node to a ring that holds no data races nothing."""
    async with local_cluster(
        "join", storage_nodes=2, coordinators=2, temporal=False, default_tenant=None, postgres_proxies=True
    ) as cluster:
        c2 = cluster.coordinator_procs[1]
        assert c2.pg_proxy is not None
        async with (
            cluster.client(0) as client,
            cluster.connect(c2.address, timeout=60, retry=NO_RETRY) as stalled,
        ):
            c2.pg_proxy.hold()
            writes = {f"k{i}": asyncio.ensure_future(stalled.put("t", f"k{i}", b"early")) for i in range(40)}
            await asyncio.sleep(1)
            node3 = await cluster.add_storage_node("node-3")
            await client.add_node("node-3", "127.0.0.1", node3.advertised_port)
            await client.create_tenant("t", 2)
            c2.pg_proxy.release()
            outcomes = await asyncio.gather(*writes.values(), return_exceptions=True)
        acknowledged = [k for k, o in zip(writes, outcomes, strict=True) if not isinstance(o, BaseException)]
        assert acknowledged, outcomes
        ring = await current_ring(cluster)
        assert ring.node_ids == {"node-1", "node-2", "node-3"}
        short = {k: n for k in acknowledged if (n := await holders(cluster, ring, "t", k, b"early", 2)) < 2}
        assert not short, f"acknowledged writes missing from their replicas: {short}"
