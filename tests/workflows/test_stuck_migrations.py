"""Every way a migration's workflow can end leaves a consistent ring and a terminal migration.

Operators terminate workflows, cancel them twice through different channels,
cancel them while they undo or clean up; coordinators die between recording a
migration and starting its workflow. None of that may leave a migration
`in_progress`, dual writes on, or the next ring change waiting for ever.

Coordinator 2 reaches PostgreSQL through a proxy the tests hold, which keeps
registry barriers waiting (until its lease lapses) so a stop lands mid-step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from temporalio.client import Client as TemporalClient

from pairdb.client import Client
from pairdb.coordinator.metadata import Metadata
from pairdb.kernel import migration as m
from pairdb.kernel.keyspace import Version
from pairdb.kernel.migration import Phase, Status
from pairdb.local.cluster import LocalCluster
from pairdb.local.faults import TcpProxy
from pairdb.storage_node.client import StorageError
from pairdb.storage_node.engine import StoredRecord
from tests.conftest import local_cluster
from tests.support import load, registry_state, temporal_cli, wait_ended, wait_phase

THROTTLE = 200


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster(
        "stuck", storage_nodes=3, coordinators=2, postgres_proxies=True, log_level="INFO"
    ) as local:
        async with local.client() as client:
            await client.create_tenant("t", 3)
            await load(client, ["t"], 1000)
        yield local


def held_proxy(cluster: LocalCluster) -> TcpProxy:
    proxy = cluster.coordinator_procs[1].pg_proxy
    assert proxy is not None
    return proxy


async def assert_undone(cluster: LocalCluster, node_id: str) -> None:
    state = await registry_state(cluster, node_id)
    assert (state.in_flight, state.node_status, state.tokens) == (None, "removed", 0), state


async def add(cluster: LocalCluster, client: Client, node_id: str, **options: object) -> str:
    node = await cluster.add_storage_node(node_id)
    added = await client.add_node(node_id, "127.0.0.1", node.port, **options)  # type: ignore[arg-type]
    return added.migration_id


async def test_a_terminated_addition_is_undone_and_the_next_one_completes(cluster: LocalCluster) -> None:
    async with cluster.client() as client:
        migration_id = await add(cluster, client, "node-4", throttle_keys_per_second=THROTTLE)
        await wait_phase(client, migration_id, Phase.DATA_COPY)
        await temporal_cli(
            cluster, "workflow", "terminate", "--workflow-id", m.workflow_id("node-4"), "--reason", "test"
        )
        status = await wait_ended(client, migration_id, timeout=60)
        assert status.status in (Status.FAILED, Status.CANCELLED), status
        assert "terminated" in status.error
        await assert_undone(cluster, "node-4")

        following = await add(cluster, client, "node-5")
        assert (await wait_ended(client, following)).status == Status.COMPLETED


async def test_a_temporal_cancel_during_a_rollback_does_not_interrupt_it(cluster: LocalCluster) -> None:
    async with cluster.client() as client:
        migration_id = await add(cluster, client, "node-6", hold_at_cutover=True)
        await wait_phase(client, migration_id, Phase.CUTOVER)
        held_proxy(cluster).hold()  # the rollback's first barrier now waits
        try:
            await client.rollback_migration(migration_id)
            await wait_phase(client, migration_id, Phase.ROLLING_BACK)
            temporal = await TemporalClient.connect(cluster.temporal_server.address)
            await temporal.get_workflow_handle(m.workflow_id("node-6")).cancel()
            # And once more through the signal an operator might also send.
            await temporal_cli(
                cluster, "workflow", "signal", "--name", "cancel", "--workflow-id", m.workflow_id("node-6")
            )
        finally:
            held_proxy(cluster).release()
        status = await wait_ended(client, migration_id)
        assert status.status == Status.ROLLED_BACK, status
        await assert_undone(cluster, "node-6")


async def test_a_temporal_cancel_during_cleanup_finishes_the_addition(cluster: LocalCluster) -> None:
    async with cluster.client() as client:
        migration_id = await add(cluster, client, "node-7", hold_at_cutover=True)
        await wait_phase(client, migration_id, Phase.CUTOVER)
        held_proxy(cluster).hold()  # cleanup's barrier now waits
        try:
            await client.pause_migration(migration_id, False)
            await wait_phase(client, migration_id, Phase.CLEANUP)
            temporal = await TemporalClient.connect(cluster.temporal_server.address)
            await temporal.get_workflow_handle(m.workflow_id("node-7")).cancel()
        finally:
            held_proxy(cluster).release()
        status = await wait_ended(client, migration_id)
        assert status.status == Status.COMPLETED, status
        state = await registry_state(cluster, "node-7")
        assert (state.in_flight, state.node_status) == (None, "active")


async def test_a_migration_recorded_without_a_workflow_does_not_block_the_queue(
    cluster: LocalCluster,
) -> None:
    """A coordinator that died between recording a migration and starting its workflow."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        await metadata.pool.execute(
            "INSERT INTO migrations (migration_id, type, node_id, host, port, virtual_nodes, workflow_id,"
            " phase, status, started_at) VALUES ('orphan', 'node_addition', 'ghost', '127.0.0.1', 1, 8,"
            " $1, 'queued', 'queued', now() - interval '5 minutes')",
            m.workflow_id("ghost"),
        )
    finally:
        await metadata.close()
    async with cluster.client() as client:
        migration_id = await add(cluster, client, "node-8")
        assert (await wait_ended(client, migration_id)).status == Status.COMPLETED
        orphan = await client.migration("orphan")
        assert orphan.status == Status.FAILED and "never started" in orphan.error, orphan


async def test_a_copy_batch_arriving_after_a_cancel_is_refused_by_the_wiped_node(
    cluster: LocalCluster,
) -> None:
    async with cluster.client() as client:
        migration_id = await add(cluster, client, "node-9", throttle_keys_per_second=THROTTLE)
        await wait_phase(client, migration_id, Phase.DATA_COPY)
        copy_epoch = await _epoch(cluster)
        await client.cancel_migration(migration_id)
        assert (await wait_ended(client, migration_id)).status == Status.CANCELLED
    await assert_undone(cluster, "node-9")
    # What a copy activity still running after the cancel would send (it learns of the
    # cancel only at its next heartbeat).
    late = StoredRecord("t", "late-copy", b"copied", Version(1 << 40, 1))
    storage = cluster.nodes["node-9"].client()
    try:
        with pytest.raises(StorageError) as refused:
            await storage.apply_batch([late], epoch=copy_epoch)
        assert refused.value.code == grpc.StatusCode.ABORTED
        stats = await storage.stats()
        assert (stats.keys, stats.tombstones) == (0, 0)
    finally:
        await storage.close()


async def _epoch(cluster: LocalCluster) -> int:
    metadata = await Metadata.connect(cluster.dsn)
    try:
        return await metadata.epoch()
    finally:
        await metadata.close()
