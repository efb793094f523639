"""A value a read returned never disappears: reads repair every set the current phase writes to.

Storage nodes sit behind proxies so a test decides which replicas answer a read.
Values are planted on single replicas, as a write that failed part-way leaves them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from pairdb.coordinator.ring import Ring
from pairdb.kernel.keyspace import Version, token
from pairdb.kernel.migration import Phase, Status
from pairdb.local.cluster import LocalCluster
from pairdb.storage_node.engine import StoredRecord
from tests.conftest import local_cluster
from tests.support import load, rings, wait_ended, wait_for, wait_phase


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("repair", storage_nodes=3, proxies=True, log_level="INFO") as local:
        async with local.client() as client:
            await client.create_tenant("t", 3)
            await load(client, ["t"], 200)
        yield local


def fresh_version(origin: int = 999) -> Version:
    """A version newer than anything written so far (origin 999: no coordinator's)."""
    return Version((time.time_ns() // 1_000_000) << 16, origin)


async def plant(cluster: LocalCluster, node_id: str, key: str, value: bytes) -> Version:
    version = fresh_version()
    storage = cluster.nodes[node_id].client()
    try:
        await storage.apply(StoredRecord("t", key, value, version))
    finally:
        await storage.close()
    return version


async def holding(cluster: LocalCluster, nodes: tuple[str, ...], key: str, value: bytes) -> list[str]:
    found = []
    for node_id in nodes:
        storage = cluster.nodes[node_id].client()
        try:
            record = await storage.get("t", key)
        finally:
            await storage.close()
        if record is not None and record.value == value:
            found.append(node_id)
    return found


def key_moving(old: Ring, new: Ring) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A key whose replica set changes: (key, old replicas, new replicas)."""
    for i in range(10_000):
        key = f"moving-{i}"
        o, n = old.replicas(token("t", key), 3), new.replicas(token("t", key), 3)
        if "node-4" in n and o != n:
            return key, o, n
    raise AssertionError("no key moves to node-4")


async def test_a_value_read_in_cutover_survives_a_rollback(cluster: LocalCluster) -> None:
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client() as client:
        added = await client.add_node("node-4", "127.0.0.1", node4.advertised_port, hold_at_cutover=True)
        await wait_phase(client, added.migration_id, Phase.CUTOVER)
        old, new = await rings(cluster, "node-4")
        key, old_set, new_set = key_moving(old, new)
        shared = [n for n in new_set if n != "node-4"]
        # A write that reached only node-4 before failing; reads in cutover use the new replicas.
        await plant(cluster, "node-4", key, b"read-once")
        blocked = cluster.nodes[shared[0]].proxy
        assert blocked is not None
        blocked.block()  # the read's quorum is node-4 and the other shared node
        try:
            assert (await client.get("t", key)).value == b"read-once"
        finally:
            blocked.unblock()
        await client.rollback_migration(added.migration_id)
        assert (await wait_ended(client, added.migration_id)).status == Status.ROLLED_BACK
        # Reads are back on the old replicas: a quorum of them must hold what was read.
        assert len(await holding(cluster, old_set, key, b"read-once")) >= 2
        assert (await client.get("t", key)).value == b"read-once"


async def test_a_newer_answer_arriving_after_the_reply_repairs_the_replicas_that_answered_first(
    cluster: LocalCluster,
) -> None:
    async with cluster.client() as client:
        await client.put("t", "late-newer", b"old")
        slow = cluster.nodes["node-3"].proxy
        assert slow is not None
        # node-3 alone holds a newer value (a write that failed part-way) and answers late.
        await plant(cluster, "node-3", "late-newer", b"newer")
        slow.latency = 0.5
        try:
            await client.get("t", "late-newer")
        finally:
            slow.heal()

        async def repaired() -> bool:
            return len(await holding(cluster, ("node-1", "node-2", "node-3"), "late-newer", b"newer")) == 3

        await wait_for(
            repaired, timeout=10, what="the first answerers to be repaired to the late newer value"
        )
