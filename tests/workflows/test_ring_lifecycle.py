"""Removing, replacing and re-replicating online: the ring changes besides an addition, end to end.

Real Temporal dev server, PostgreSQL, four storage nodes, two coordinators and
a worker. Each test writes while the ring changes and checks what an addition
is held to: the phases in order, every key on exactly its replica set, every
acknowledged write readable at QUORUM, nothing changed by what is refused.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client as TemporalClient

from pairdb.client import Client, ClientError
from pairdb.kernel import migration as m
from pairdb.kernel.migration import ChangeType, Phase
from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster
from tests.support import Writer, load, misplaced, read_all, wait_ended, wait_phase

# Tenants of two replication factors, so ranges move per tenant, not only per range.
TENANTS = {"alpha": 3, "beta": 2}
KEYS = 300
FORWARD = [Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CUTOVER, Phase.CLEANUP]


@pytest.fixture
async def ring_cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("lifecycle", storage_nodes=4, coordinators=2) as cluster:
        yield cluster


async def setup(cluster: LocalCluster) -> dict[tuple[str, str], bytes]:
    async with cluster.client() as client:
        for tenant, rf in {**TENANTS, "load": 3}.items():
            await client.create_tenant(tenant, rf)
        return await load(client, list(TENANTS), KEYS)


def keys_of(written: dict[tuple[str, str], bytes]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for tenant, key in written:
        keys.setdefault(tenant, []).append(key)
    return keys


async def phases(cluster: LocalCluster, workflow_id: str) -> list[Phase]:
    temporal = await TemporalClient.connect(cluster.temporal_server.address)
    state: m.MigrationState = await temporal.get_workflow_handle(
        workflow_id, result_type=m.MigrationState
    ).result()
    return state.phase_history


async def statuses(client: Client) -> dict[str, str]:
    return {n.node_id: n.status for n in await client.nodes()}


async def refused(call: object, code: str, *words: str) -> None:
    with pytest.raises(ClientError) as info:
        await call  # type: ignore[misc]
    assert info.value.code.name == code, info.value
    for word in words:
        assert word in info.value.message, info.value.message


async def test_decommission_under_load_then_the_refusals(ring_cluster: LocalCluster) -> None:
    cluster = ring_cluster
    written = await setup(cluster)
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")
        writer.start()
        await asyncio.sleep(0.3)
        started = await c0.remove_node("node-2")
        assert started.workflow_id == m.workflow_id("node-2", ChangeType.NODE_REMOVAL) == "remove-node-node-2"
        status = await wait_ended(c1, started.migration_id)
        await writer.stop()
        assert (status.status, status.type) == ("completed", "node_removal"), status.error
        assert await phases(cluster, started.workflow_id) == FORWARD
        assert writer.errors == [] and writer.operations > 50
        assert await writer.lost(c1) == []
        assert await read_all([c0, c1], written) == []
        assert (await statuses(c0))["node-2"] == "removed"
        storage = cluster.nodes["node-2"].client()
        try:
            assert (await storage.stats()).keys == 0  # wiped
        finally:
            await storage.close()
        alive = {"node-1", "node-3", "node-4"}
        assert await misplaced(cluster, keys_of(written), alive) == []
        listed = await c0.migrations()
        assert [(r.type, r.subject, r.status) for r in listed] == [("node_removal", "node-2", "completed")]

        # Refused, each with a status that says why, and nothing changed.
        before = await statuses(c0)
        await refused(c0.remove_node("node-1"), "FAILED_PRECONDITION", "alpha", "replication factor 3")
        await refused(c0.remove_node("node-2"), "NOT_FOUND", "not in the cluster")
        await refused(c0.remove_node("node-9"), "NOT_FOUND")
        await refused(c0.set_replication_factor("beta", 4), "FAILED_PRECONDITION", "needs 4 active nodes")
        await refused(c0.set_replication_factor("beta", 2), "FAILED_PRECONDITION", "already")
        await refused(c0.set_replication_factor("beta", 9), "INVALID_ARGUMENT")
        await refused(c0.replace_node("node-1", "node-5", "127.0.0.1", 1), "FAILED_PRECONDITION", "answers")
        # Two operations on one node: the second waits for nothing, it is refused.
        raised = await c0.set_replication_factor("beta", 3, hold_at_cutover=True)
        await refused(c0.set_replication_factor("beta", 1), "ALREADY_EXISTS", "beta")
        await wait_phase(c0, raised.migration_id, "cutover")
        await c0.rollback_migration(raised.migration_id)
        assert (await wait_ended(c0, raised.migration_id)).status == "rolled_back"
        assert await statuses(c0) == before
        assert (await c0.get_tenant("beta")).replication_factor == 2
        assert await misplaced(cluster, keys_of(written), alive) == []


async def test_a_dead_node_is_replaced_from_the_survivors(ring_cluster: LocalCluster) -> None:
    cluster = ring_cluster
    written = await setup(cluster)
    await cluster.kill_storage_node("node-3")
    shutil.rmtree(cluster.data_dir / "nodes" / "node-3")  # the disk is gone too
    node5 = await cluster.add_storage_node("node-5")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")  # RF 3: one dead replica leaves a quorum
        writer.start()
        started = await c0.replace_node("node-3", "node-5", "127.0.0.1", node5.port)
        assert started.workflow_id == "replace-node-node-3"
        # A second operation on the same node is refused, whether the first still queues or runs.
        await refused(c1.remove_node("node-3", dead=True), "ALREADY_EXISTS", "node-3")
        status = await wait_ended(c0, started.migration_id)
        await writer.stop()
        assert status.status == "completed", status.error
        assert await phases(cluster, started.workflow_id) == FORWARD
        nodes = await statuses(c0)
        assert (nodes["node-3"], nodes["node-5"]) == ("removed", "active")
        alive = {"node-1", "node-2", "node-4", "node-5"}
        assert await misplaced(cluster, keys_of(written), alive) == []
        assert writer.errors == []
        assert await writer.lost(c1) == []
        # Every range is whole again: QUORUM reads never lack replicas, RF 2 ones included.
        assert await read_all([c0, c1], written) == []


async def test_a_dead_node_is_removed_and_its_ranges_re_replicated(ring_cluster: LocalCluster) -> None:
    cluster = ring_cluster
    written = await setup(cluster)
    await cluster.kill_storage_node("node-4")
    async with cluster.client() as client:
        await refused(client.remove_node("node-4"), "FAILED_PRECONDITION", "--dead")
        started = await client.remove_node("node-4", dead=True)
        status = await wait_ended(client, started.migration_id)
        assert status.status == "completed", status.error
        assert (await statuses(client))["node-4"] == "removed"
        assert await misplaced(cluster, keys_of(written), {"node-1", "node-2", "node-3"}) == []
        assert await read_all([client], written) == []


async def test_replication_factor_up_and_down_while_written(ring_cluster: LocalCluster) -> None:
    cluster = ring_cluster
    written = await setup(cluster)
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        untouched = await load(c0, ["load"], 100)
        for tenant, rf in (("beta", 3), ("alpha", 2)):
            writer = Writer([c0, c1], tenant, keys=40, workers=2)
            writer.start()
            started = await c0.set_replication_factor(tenant, rf)
            assert started.workflow_id == f"set-rf-{tenant}"
            status = await wait_ended(c0, started.migration_id)
            await writer.stop()
            assert (status.status, status.type) == ("completed", "rf_change"), status.error
            assert (await c0.get_tenant(tenant)).replication_factor == rf
            assert writer.errors == []
            assert await writer.lost(c1) == []
            everything = {**written, **untouched, **{(tenant, k): v for k, v in writer.acknowledged.items()}}
            assert await misplaced(cluster, keys_of(everything)) == []
            assert await read_all([c0, c1], everything) == []


async def test_cancel_and_rollback_of_a_removal_and_an_rf_change_leave_the_ring_as_it_was(
    ring_cluster: LocalCluster,
) -> None:
    cluster = ring_cluster
    written = await setup(cluster)
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        before = await statuses(c0)
        writer = Writer([c0, c1], "load")
        writer.start()
        # Cancel mid-copy: a removal, then a raise of beta's RF (the copy throttled so it is caught).
        for start in (
            c0.remove_node("node-1", throttle_keys_per_second=100),
            c0.set_replication_factor("beta", 3, throttle_keys_per_second=100),
        ):
            started = await start
            await wait_phase(c0, started.migration_id, "data_copy")
            await c0.cancel_migration(started.migration_id)
            assert (await wait_ended(c0, started.migration_id)).status == "cancelled"
        # Roll back in cutover (reads had moved): a removal, then a lowering of alpha's RF.
        for start in (
            c0.remove_node("node-1", hold_at_cutover=True),
            c0.set_replication_factor("alpha", 2, hold_at_cutover=True),
        ):
            started = await start
            await wait_phase(c0, started.migration_id, "cutover")
            await c0.rollback_migration(started.migration_id)
            assert (await wait_ended(c0, started.migration_id)).status == "rolled_back"
        await writer.stop()
        assert await statuses(c0) == before
        assert [(await c0.get_tenant(t)).replication_factor for t in TENANTS] == list(TENANTS.values())
        # The nodes that had gained ranges dropped them again: every key on exactly its replicas.
        assert await misplaced(cluster, keys_of(written)) == []
        assert writer.errors == []
        assert await writer.lost(c1) == []
        assert await read_all([c0, c1], written) == []
