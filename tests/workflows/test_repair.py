"""Anti-entropy repair and tombstone GC, end to end: replicas that heal without a single client read.

Real Temporal dev server, PostgreSQL, three storage nodes, a coordinator and a
worker. Replicas are made to diverge the way production makes them diverge (a
node killed while writes and deletes run, a data directory lost); then only a
repair runs, and the storage nodes are asked directly whether they agree.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pairdb.client import Client, ClientError
from pairdb.kernel.repair import SCHEDULE_ID
from pairdb.kernel.sabotage import PURGE_WITHOUT_EVERY_REPLICA, SABOTAGE_ENV
from pairdb.local.cluster import LocalCluster
from pairdb.serving.priority import BACKGROUND_NICE
from tests.conftest import local_cluster
from tests.support import divergent, node_stats, temporal_cli, wait_ended, wait_for, wait_phase

NODES = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
async def repair_cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("repair", storage_nodes=3, log_level="WARNING") as cluster:
        # No hinted handoff: it would bring a returning node what it missed before any repair ran,
        # and these tests show what repair alone does (tests/integration/test_hints.py shows hints).
        await cluster.coordinator_procs[0].process.stop()
        await cluster.restart_coordinator(0, env={"PAIRDB_MAX_HINTS_PER_NODE": "0"})
        yield cluster


async def repair(client: Client, tenant: str = "") -> tuple[str, str]:
    """Run a repair to its end: (status, error)."""
    started = await client.repair(tenant)
    ended = await wait_ended(client, started.migration_id, timeout=120)
    return ended.status, ended.error


async def held(cluster: LocalCluster, node_id: str, tenant: str, keys: list[str]) -> dict[str, str]:
    """What the node itself holds of each key: `value`, `tombstone` or `nothing`."""
    storage = cluster.nodes[node_id].client()
    try:
        out = {}
        for key in keys:
            record = await storage.get(tenant, key)
            out[key] = "nothing" if record is None else "tombstone" if record.tombstone else "value"
        return out
    finally:
        await storage.close()


async def test_a_replica_killed_under_writes_and_deletes_is_level_after_a_repair_without_any_read(
    repair_cluster: LocalCluster,
) -> None:
    cluster = repair_cluster
    async with cluster.client() as client:
        await client.create_tenant("killed", 3)
        await client.create_tenant("pair", 2)
        before = [(t, f"k{i}", b"before") for t in ("killed", "pair") for i in range(200)]
        assert all(isinstance(r, tuple) for r in await client.put_many(before, "ALL"))
        await cluster.kill_storage_node("node-3")
        try:
            # RF 2 keeps a quorum of a range only where node-3 is not a replica: ONE there.
            for i in range(0, 200, 2):
                await client.put("killed", f"k{i}", b"while-down")
                await client.put("pair", f"k{i}", b"while-down", consistency="ONE")
            for i in range(1, 200, 4):
                await client.delete("killed", f"k{i}")
                await client.delete("pair", f"k{i}", consistency="ONE")
        finally:
            await cluster.restart_storage_node("node-3")
        tenants = {"killed": 3, "pair": 2}
        assert await divergent(cluster, tenants), (
            "node-3 should have missed the writes made while it was down"
        )

        status, error = await repair(client)

        assert (status, error) == ("completed", "")
        assert await divergent(cluster, tenants) == []
        assert (await held(cluster, "node-3", "killed", ["k0", "k1"])) == {"k0": "value", "k1": "tombstone"}


async def test_a_node_that_lost_its_data_directory_gets_every_record_back_from_a_repair(
    repair_cluster: LocalCluster,
) -> None:
    cluster = repair_cluster
    async with cluster.client() as client:
        await client.create_tenant("lost", 3)
        written = {f"k{i}": f"v{i}".encode() for i in range(500)}
        assert all(
            isinstance(r, tuple)
            for r in await client.put_many([("lost", k, v) for k, v in written.items()], "ALL")
        )
        await cluster.kill_storage_node("node-3")
        shutil.rmtree(cluster.data_dir / "nodes" / "node-3")  # the disk is gone
        await cluster.restart_storage_node("node-3")
        assert (await node_stats(cluster, "node-3")).keys == 0

        status, error = await repair(client)

        assert (status, error) == ("completed", "")
        assert (await node_stats(cluster, "node-3")).keys >= len(written)
        assert await held(cluster, "node-3", "lost", list(written)) == dict.fromkeys(written, "value")
        assert await divergent(cluster, {"lost": 3}) == []


async def test_tombstones_go_only_after_their_grace_period_and_a_covering_repair(
    repair_cluster: LocalCluster,
) -> None:
    cluster = repair_cluster
    async with cluster.client() as client:
        await client.create_tenant("short", 3, gc_grace_seconds=1)
        await client.create_tenant("long", 3, gc_grace_seconds=3600)
        keys = [f"k{i}" for i in range(100)]
        for tenant in ("short", "long"):
            writes = [(tenant, key, b"v") for key in keys]
            deletes: list[tuple[str, str, bytes | None]] = [(tenant, key, None) for key in keys[:50]]
            for batch in (writes, deletes):
                assert all(isinstance(r, tuple) for r in await client.put_many(batch, "ALL"))
        await asyncio.sleep(
            1.5
        )  # past the short grace period (a duration under test, not a wait for an event)
        # Past its grace period, yet no repair has covered it: every tombstone is still there.
        for node in NODES:
            assert set((await held(cluster, node, "short", keys[:50])).values()) == {"tombstone"}

        assert await repair(client) == ("completed", "")

        for node in NODES:
            short = await held(cluster, node, "short", keys)
            assert set(short[k] for k in keys[:50]) == {"nothing"}, node
            assert set(short[k] for k in keys[50:]) == {"value"}, node
            # Within its grace period: kept, repair or not.
            long = await held(cluster, node, "long", keys[:50])
            assert set(long.values()) == {"tombstone"}, node
            assert (await node_stats(cluster, node)).tombstones_purged >= 50
            assert (await node_stats(cluster, node)).repairs, "the node records the repair that covered it"
        for key in keys[:50]:
            assert not (await client.get("short", key, consistency="ALL")).found


async def resurrection(cluster: LocalCluster, client: Client, tenant: str) -> bool:
    """The classic: a replica misses a delete and stays away past the grace period while repairs run.

    Returns whether the deleted key came back once the replica returned and a repair ran.
    """
    await client.create_tenant(tenant, 3, gc_grace_seconds=1)
    await client.put(tenant, "doomed", b"old value", consistency="ALL")
    await cluster.kill_storage_node("node-3")
    try:
        await client.delete(tenant, "doomed")  # QUORUM: node-1 and node-2 hold the tombstone
        await asyncio.sleep(1.5)  # past the grace period
        status, error = await repair(client, tenant)
        # node-3 did not answer: the repair cannot vouch for the delete there, so it fails.
        assert status == "failed" and "node-3" in error, (status, error)
    finally:
        await cluster.restart_storage_node("node-3")
    assert (await held(cluster, "node-3", tenant, ["doomed"])) == {"doomed": "value"}
    # Right after node-3's restart: the repair waits for the node to be reachable, it does not skip it.
    assert await repair(client, tenant) == ("completed", "")
    return (await client.get(tenant, "doomed", consistency="ALL")).found


async def test_a_replica_back_from_past_the_grace_period_does_not_bring_a_delete_back(
    repair_cluster: LocalCluster,
) -> None:
    async with repair_cluster.client() as client:
        assert not await resurrection(repair_cluster, client, "classic")
        for node in NODES:
            assert await held(repair_cluster, node, "classic", ["doomed"]) == {"doomed": "nothing"}


async def test_without_the_every_replica_rule_the_delete_comes_back(repair_cluster: LocalCluster) -> None:
    """Sabotage: purging where only some replicas answered is exactly the bug the rule prevents."""
    cluster = repair_cluster
    assert cluster.worker is not None
    await cluster.worker.stop()
    cluster.worker.env = {SABOTAGE_ENV: PURGE_WITHOUT_EVERY_REPLICA}
    await cluster.start_worker()
    try:
        async with cluster.client() as client:
            assert await resurrection(cluster, client, "sabotaged")
    finally:
        await cluster.worker.stop()
        cluster.worker.env = None
        await cluster.start_worker()


async def test_a_repair_shows_progress_as_its_ranges_finish_not_only_when_a_step_ends(
    repair_cluster: LocalCluster,
) -> None:
    """An operator watching a repair (`pairdb migrations`, the Temporal UI) sees it move.

    A small repair is one step; its progress used to be saved only when the step
    ended, so it jumped from none to all of its ranges.
    """
    async with repair_cluster.client() as client:
        await client.create_tenant("watched", 3)
        written = [("watched", f"k{i}", b"v") for i in range(1000)]
        assert all(isinstance(r, tuple) for r in await client.put_many(written, "ALL"))
        started = await client.repair("watched", throttle_keys_per_second=500)

        async def some_done() -> bool:
            status = await client.migration(started.migration_id)
            return 0 < status.ranges_done < status.ranges_total

        await wait_for(some_done, 60, "some of the repair's ranges done, not all")
        await client.throttle_migration(started.migration_id, 0)
        ended = await wait_ended(client, started.migration_id, timeout=120)
        assert (ended.status, ended.error, ended.ranges_done) == ("completed", "", ended.ranges_total)


async def test_the_repair_schedule_is_a_temporal_schedule_operators_can_see_and_retime(
    repair_cluster: LocalCluster,
) -> None:
    async with repair_cluster.client() as client:
        assert "created" in await client.schedule_repair(24)
        listed = await temporal_cli(repair_cluster, "schedule", "list")
        assert SCHEDULE_ID in listed
        assert "updated" in await client.schedule_repair(6)
        described = await temporal_cli(repair_cluster, "schedule", "describe", "--schedule-id", SCHEDULE_ID)
        assert "6h" in described.replace(" ", "") or "21600" in described
        with pytest.raises(ClientError) as bad:
            await client.schedule_repair(24 * 365)
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_repair_waits_while_the_ring_changes_then_finishes_on_the_new_ring(
    repair_cluster: LocalCluster,
) -> None:
    """Last in this module: the cluster has four nodes afterwards."""
    cluster = repair_cluster
    async with cluster.client() as client:
        await client.create_tenant("moving", 3)
        await client.put_many([("moving", f"k{i}", b"v") for i in range(300)])
        node = await cluster.add_storage_node("node-4")
        added = await client.add_node("node-4", "127.0.0.1", node.advertised_port, hold_at_cutover=True)
        await wait_phase(client, added.migration_id, "cutover")
        started = await client.repair()
        of_tenant = await client.repair("moving")

        async def waiting() -> bool:
            for repair_id in (started.migration_id, of_tenant.migration_id):
                status = await client.migration(repair_id)
                if status.phase != "queued" or "ring change" not in status.error:
                    return False
            return True

        await wait_for(waiting, 60, "the repairs to wait for the ring change")
        # While they wait: one repair per scope, no rollback, an unknown tenant, a cancel.
        with pytest.raises(ClientError) as twice:
            await client.repair()
        assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert started.migration_id in twice.value.message
        with pytest.raises(ClientError) as unknown:
            await client.repair("nobody")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ClientError) as rollback:
            await client.rollback_migration(started.migration_id)
        assert rollback.value.code == grpc.StatusCode.FAILED_PRECONDITION
        await client.cancel_migration(of_tenant.migration_id)
        cancelled = await wait_ended(client, of_tenant.migration_id)
        assert (cancelled.status, cancelled.type) == ("cancelled", "repair")
        listed = {m.migration_id: m.type for m in await client.migrations()}
        assert (listed[started.migration_id], listed[added.migration_id]) == ("repair", "node_addition")

        await client.pause_migration(added.migration_id, False)  # resume: cleanup, then done
        assert (await wait_ended(client, added.migration_id)).status == "completed"
        ended = await wait_ended(client, started.migration_id)
        assert (ended.status, ended.error) == ("completed", "")
        assert await divergent(cluster, {"moving": 3}) == []


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_background_work_runs_at_a_lower_cpu_priority_than_the_clients_requests(
    repair_cluster: LocalCluster,
) -> None:
    # The worker (copies, verifications, repairs), Temporal (here on the cluster's own CPUs) and each
    # storage node's background reader yield the CPU to the nodes and coordinators serving clients.
    async with repair_cluster.client() as client:
        assert await repair(client) == ("completed", "")  # every node's reader has answered a digest
    assert repair_cluster.worker is not None and repair_cluster.worker.pid is not None
    assert repair_cluster.temporal_server.pid is not None
    serving = _nice(os.getpid())
    assert _nice(repair_cluster.worker.pid) == serving + BACKGROUND_NICE
    assert _nice(repair_cluster.temporal_server.pid) == serving + BACKGROUND_NICE
    for node_id in NODES:
        pid = repair_cluster.nodes[node_id].process.pid
        assert pid is not None and _nice(pid) == serving
        readers = _children(pid)
        assert len(readers) == 1 and _nice(readers[0]) == serving + BACKGROUND_NICE
