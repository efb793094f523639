"""NodeAdditionWorkflow end to end.

Real Temporal dev server, PostgreSQL, storage nodes, two coordinators and a worker.

Each test runs its own cluster, adds node-4 while clients write, and checks
outcomes: phases, ring membership, data on every replica, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client as TemporalClient

from pairdb.client import Client, ClientError
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.movement import Movement
from pairdb.kernel import migration as m
from pairdb.kernel.migration import Phase, Status
from pairdb.local.cluster import LocalCluster
from pairdb.local.temporal import temporal_binary
from pairdb.storage_node.engine import StoredRecord, digest_of
from tests.support import Writer, load, read_all, rings, wait_ended, wait_for, wait_phase

HISTORIES = Path(__file__).parent / "histories"
TENANTS = ["alpha", "beta"]


async def setup_tenants(cluster: LocalCluster, keys_per_tenant: int) -> dict[tuple[str, str], bytes]:
    async with cluster.client() as client:
        for tenant in [*TENANTS, "load"]:
            await client.create_tenant(tenant, 3)
        return await load(client, TENANTS, keys_per_tenant)


async def record_history(cluster: LocalCluster, name: str) -> None:
    """With PAIRDB_RECORD_HISTORIES=1, save the workflow's history as a replay fixture."""
    if not os.environ.get("PAIRDB_RECORD_HISTORIES"):
        return
    temporal = await TemporalClient.connect(cluster.temporal_server.address)
    history = await temporal.get_workflow_handle(m.workflow_id("node-4")).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")


async def node_is_empty(cluster: LocalCluster, node_id: str) -> bool:
    storage = cluster.nodes[node_id].client()
    try:
        stats = await storage.stats()
    finally:
        await storage.close()
    return stats.keys == 0 and stats.tombstones == 0


async def registry_state(cluster: LocalCluster) -> tuple[object, str | None, int]:
    """(in-flight migration, node-4's status, node-4's token count) as PostgreSQL holds them."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        snap = await metadata.snapshot()
    finally:
        await metadata.close()
    node = snap.nodes.get("node-4")
    return snap.in_flight, node.status if node else None, sum(1 for _, n in snap.tokens if n == "node-4")


async def test_happy_path_four_phases_then_node_active_and_ranges_moved(
    migration_cluster: LocalCluster,
) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 600)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client() as client:
        added = await client.add_node("node-4", "127.0.0.1", node4.port)
        assert added.migration_id and "workflow add-node-node-4" in added.message
        status = await wait_ended(client, added.migration_id)
        assert (status.status, status.phase, status.percent) == ("completed", "done", 100.0)
        assert status.keys_copied > 0 and status.ranges_done == status.ranges_total > 0
        assert {n.node_id: n.status for n in await client.nodes()}["node-4"] == "active"

    temporal = await TemporalClient.connect(cluster.temporal_server.address)
    handle = temporal.get_workflow_handle(m.workflow_id("node-4"), result_type=m.MigrationState)
    result = await handle.result()
    assert result.phase_history == [Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.CUTOVER, Phase.CLEANUP]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    steps = [s for i, s in enumerate(scheduled) if i == 0 or scheduled[i - 1] != s]
    assert steps == [
        "claim_ring_change",
        "enable_dual_write",
        "enter_phase",
        "plan_copy",
        "copy_ranges",
        "verify_ranges",
        "enter_phase",
        "drop_moved_ranges",
        "finish_migration",
    ]
    await record_history(cluster, "happy_path")
    described = await handle.describe()
    attributes = {k.name: v for k, v in described.typed_search_attributes if k.name.startswith("Migration")}
    assert attributes == {
        m.SA_PHASE: Phase.DONE,
        m.SA_NODE: "node-4",
        m.SA_STATUS: Status.COMPLETED,
        m.SA_TYPE: "node_addition",
    }

    # Every range node-4 gained: same count and digest as the merged view of its other replicas;
    # the replicas that gave the range up no longer hold it.
    old, new = await rings(cluster, "node-4")
    clients = {n: cluster.nodes[n].client() for n in cluster.nodes}
    try:
        moves = Movement(old, new, {"t": 3}, {"t": 3}).moves()
        assert moves and all(set(move.gained()) == {"node-4"} for move in moves)
        for move in moves:
            (placement,) = move.placements
            merged: dict[tuple[str, str], StoredRecord] = {}
            for peer in (n for n in placement.new if n != "node-4"):
                async for batch in clients[peer].scan_range(move.start, move.end):
                    for r in batch:
                        if r.tenant_id in TENANTS and (
                            (r.tenant_id, r.key) not in merged
                            or r.version > merged[(r.tenant_id, r.key)].version
                        ):
                            merged[(r.tenant_id, r.key)] = r
            assert await clients["node-4"].range_digest(move.start, move.end) == digest_of(
                merged.values(), move.start, move.end
            )
            for loser in move.lost():
                assert (await clients[loser].range_digest(move.start, move.end))[1] == 0
    finally:
        for c in clients.values():
            await c.close()
    async with cluster.client(1) as other:
        assert await read_all([other], written) == []
    await _request_id_reaches_activity_and_storage_logs(cluster)


async def _request_id_reaches_activity_and_storage_logs(cluster: LocalCluster) -> None:
    """The AddStorageNode request's id is on the worker's activity logs and the nodes' cleanup logs."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        request_id = await metadata.pool.fetchval("SELECT request_id FROM migrations")
    finally:
        await metadata.close()
    assert request_id
    logs = cluster.data_dir / "logs"
    worker = [
        json.loads(line) for line in (logs / "worker.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(e.get("request_id") == request_id and e.get("migration_id") for e in worker)
    assert any(e["event"] == "Node addition migration completed successfully" for e in worker)
    nodes = [
        json.loads(line)
        for n in ("node-1", "node-2", "node-3")
        for line in (logs / f"{n}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(e["event"] == "Range deleted" and e.get("request_id") == request_id for e in nodes)


async def test_no_acknowledged_write_is_lost_through_two_coordinators(
    migration_cluster: LocalCluster,
) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 400)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")
        writer.start()
        await asyncio.sleep(0.5)
        added = await c0.add_node("node-4", "127.0.0.1", node4.port)
        status = await wait_ended(c0, added.migration_id)
        await asyncio.sleep(0.5)
        await writer.stop()
        assert status.status == "completed"
        assert writer.errors == []
        assert writer.operations > 100
        assert await writer.lost(c1) == []
        assert await read_all([c0, c1], written) == []


async def test_joining_node_killed_during_copy_then_restarted(migration_cluster: LocalCluster) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 1000)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")
        writer.start()
        added = await c0.add_node("node-4", "127.0.0.1", node4.port, throttle_keys_per_second=300)
        await wait_for(lambda: _copied_some(c0, added.migration_id), what="copy to start")
        await cluster.kill_storage_node("node-4")
        await asyncio.sleep(3)  # writes go on while the joining node is down
        assert writer.errors == []
        await cluster.restart_storage_node("node-4")
        await c0.throttle_migration(added.migration_id, 0)
        status = await wait_ended(c0, added.migration_id)
        await writer.stop()
        assert status.status == "completed", status.error
        assert writer.errors == []
        assert await writer.lost(c1) == []
        assert await read_all([c0, c1], written) == []


async def _copied_some(client: Client, migration_id: str) -> bool:
    """Mid-copy, as the operator sees it: some ranges done, not all (progress moves during a step)."""
    status = await client.migration(migration_id)
    return status.phase == Phase.DATA_COPY and 0 < status.ranges_done < status.ranges_total


async def test_worker_killed_mid_copy_resumes_from_its_checkpoint(migration_cluster: LocalCluster) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 1000)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client() as client:
        added = await client.add_node("node-4", "127.0.0.1", node4.port, throttle_keys_per_second=400)
        await wait_for(lambda: _copied_some(client, added.migration_id), what="copy to start")
        assert cluster.worker is not None
        await cluster.worker.kill()
        done_before = await _copied_ranges(cluster, added.migration_id)
        assert done_before
        await asyncio.sleep(1)
        await cluster.start_worker()
        await _unthrottle(client, added.migration_id)
        status = await wait_ended(client, added.migration_id)
        assert status.status == "completed", status.error
        copies = await _copies(cluster, added.migration_id)
        assert all(copies[i] == 1 for i in done_before), "a finished range was copied again"
        assert set(copies.values()) == {1}
        assert await read_all([client], written) == []


async def _unthrottle(client: Client, migration_id: str) -> None:
    """Lift the throttle; right after a worker restart the workflow may take a few seconds to answer."""
    for _ in range(10):
        try:
            await client.throttle_migration(migration_id, 0)
            return
        except ClientError as exc:
            if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
    raise AssertionError("the workflow never took the new throttle")


async def _copied_ranges(cluster: LocalCluster, migration_id: str) -> set[int]:
    return {i for i, n in (await _copies(cluster, migration_id)).items() if n > 0}


async def _copies(cluster: LocalCluster, migration_id: str) -> dict[int, int]:
    metadata = await Metadata.connect(cluster.dsn)
    try:
        rows = await metadata.pool.fetch(
            "SELECT range_index, copies FROM copy_ranges WHERE migration_id = $1", migration_id
        )
    finally:
        await metadata.close()
    return {r["range_index"]: r["copies"] for r in rows}


@pytest.mark.parametrize("how", ["temporal-cli-signal", "temporal-cli-cancel", "CancelMigration"])
async def test_cancel_mid_copy(migration_cluster: LocalCluster, how: str) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 800)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")
        writer.start()
        added = await c0.add_node("node-4", "127.0.0.1", node4.port, throttle_keys_per_second=300)
        await wait_for(lambda: _copied_some(c0, added.migration_id), what="copy to start")
        assert not await node_is_empty(cluster, "node-4")
        if how == "CancelMigration":
            assert "cancelling" in await c1.cancel_migration(added.migration_id)
        else:
            # The real CLI, as an operator would type it: a signal, or Temporal's own cancel.
            verb = ["signal", "--name", "cancel"] if how == "temporal-cli-signal" else ["cancel"]
            proc = await asyncio.create_subprocess_exec(
                str(temporal_binary()),
                "workflow",
                *verb,
                "--address",
                cluster.temporal_server.address,
                "--workflow-id",
                m.workflow_id("node-4"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out
        status = await wait_ended(c0, added.migration_id)
        await asyncio.sleep(0.3)
        await writer.stop()
        assert status.status == "cancelled"
        in_flight, node_status, tokens = await registry_state(cluster)
        assert in_flight is None and node_status == "removed" and tokens == 0
        assert "node-4" not in {n.node_id for n in await c0.nodes() if n.status == "active"}
        assert await node_is_empty(cluster, "node-4")
        assert writer.errors == []
        assert await writer.lost(c1) == []
        assert await read_all([c0], written) == []
        if how == "CancelMigration":
            await record_history(cluster, "cancel")


async def test_rollback_during_cutover(migration_cluster: LocalCluster) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 300)
    node4 = await cluster.add_storage_node("node-4")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        writer = Writer([c0, c1], "load")
        writer.start()
        added = await c0.add_node("node-4", "127.0.0.1", node4.port, hold_at_cutover=True)
        await wait_phase(c0, added.migration_id, Phase.CUTOVER)
        with pytest.raises(ClientError) as refused:
            await c0.cancel_migration(added.migration_id)
        assert (
            refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            and "roll it back" in refused.value.message
        )
        assert "rolling back" in await c1.rollback_migration(added.migration_id)
        status = await wait_ended(c0, added.migration_id)
        await writer.stop()
        assert status.status == "rolled_back"
        in_flight, node_status, _ = await registry_state(cluster)
        assert in_flight is None and node_status == "removed"
        assert await node_is_empty(cluster, "node-4")
        assert writer.errors == []
        assert await writer.lost(c1) == []
        assert await read_all([c0, c1], written) == []
        await record_history(cluster, "rollback")


async def test_same_node_twice_is_refused_and_two_nodes_join_one_after_the_other(
    migration_cluster: LocalCluster,
) -> None:
    cluster = migration_cluster
    written = await setup_tenants(cluster, 300)
    node4 = await cluster.add_storage_node("node-4")
    node5 = await cluster.add_storage_node("node-5")
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        first = await c0.add_node("node-4", "127.0.0.1", node4.port, throttle_keys_per_second=500)
        with pytest.raises(ClientError) as twice:
            await c1.add_node("node-4", "127.0.0.1", node4.port)
        assert twice.value.code == grpc.StatusCode.ALREADY_EXISTS
        second = await c1.add_node("node-5", "127.0.0.1", node5.port)
        queued = await c1.migration(second.migration_id)
        assert (queued.status, queued.phase) == ("queued", "queued")
        await c0.throttle_migration(first.migration_id, 0)
        done_first = await wait_ended(c0, first.migration_id)
        done_second = await wait_ended(c0, second.migration_id)
        assert (done_first.status, done_second.status) == ("completed", "completed")
        active = {n.node_id for n in await c0.nodes() if n.status == "active"}
        assert active == {"node-1", "node-2", "node-3", "node-4", "node-5"}
        assert await read_all([c0, c1], written) == []


async def test_bad_migration_requests(migration_cluster: LocalCluster) -> None:
    async with migration_cluster.client() as client:
        with pytest.raises(ClientError) as missing:
            await client.migration("no-such-migration")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ClientError) as cancel_missing:
            await client.cancel_migration("no-such-migration")
        assert cancel_missing.value.code == grpc.StatusCode.NOT_FOUND
        await client.create_tenant("t", 3)
        await client.put("t", "k", b"v")
        from pairdb.local.processes import free_port

        with pytest.raises(ClientError) as unreachable:
            await client.add_node("node-9", "127.0.0.1", free_port())
        assert unreachable.value.code == grpc.StatusCode.UNAVAILABLE and "node-9" in unreachable.value.message
