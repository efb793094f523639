"""The migration steps, each on its own: real PostgreSQL and storage nodes, no Temporal.

temporalio's ActivityEnvironment runs each activity as the worker would, one
call at a time, so a test can call a step twice (a retry), out of turn (one
that outlived its workflow), or check what it left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from pairdb.activities.cleanup import CleanupSteps
from pairdb.activities.context import StepContext
from pairdb.activities.copy import CopySteps
from pairdb.activities.registry_steps import RegistrySteps
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.migration_store import NewChange
from pairdb.kernel import migration as m
from pairdb.kernel.keyspace import token
from pairdb.kernel.migration import CopyChunk, EnterPhase, FinishMigration, MigrationRef, Phase, Status
from pairdb.local.cluster import LocalCluster
from pairdb.storage_node.engine import StoredRecord
from tests.conftest import local_cluster
from tests.support import load, now_version, registry_state


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("steps", storage_nodes=3, temporal=False, log_level="WARNING") as local:
        async with local.client() as client:
            await client.create_tenant("t", 3)
            await load(client, ["t"], 300)
        yield local


@pytest.fixture
async def ctx(cluster: LocalCluster) -> AsyncIterator[StepContext]:
    metadata = await Metadata.connect(cluster.dsn)
    context = StepContext.create(metadata, tls=cluster.worker_tls())
    yield context
    await context.pool.close()
    await metadata.close()


async def new_migration(cluster: LocalCluster, ctx: StepContext, node_id: str) -> str:
    node = await cluster.add_storage_node(node_id)
    migration_id = str(uuid.uuid4())
    request = m.NodeAdditionInput(migration_id, node_id, "127.0.0.1", node.port, 32)
    await ctx.store.create(NewChange.addition(request), m.workflow_id(node_id))
    return migration_id


async def node_keys(cluster: LocalCluster, node_id: str) -> int:
    storage = cluster.nodes[node_id].client()
    try:
        stats = await storage.stats()
    finally:
        await storage.close()
    return stats.keys + stats.tombstones


async def test_the_steps_of_an_addition_are_idempotent_and_refuse_to_run_out_of_turn(
    cluster: LocalCluster, ctx: StepContext
) -> None:
    env = ActivityEnvironment()
    registry, copy, cleanup = RegistrySteps(ctx), CopySteps(ctx), CleanupSteps(ctx)
    migration_id = await new_migration(cluster, ctx, "node-4")
    ref = MigrationRef(migration_id)

    assert await env.run(registry.claim_ring_change, ref)
    epoch = await env.run(registry.enable_dual_write, ref)
    assert await env.run(registry.enable_dual_write, ref) == epoch  # a retry finds its work done
    await env.run(registry.enter_phase, EnterPhase(migration_id, Phase.DATA_COPY))

    # A cleanup step that outlived its turn is refused for good, not applied.
    with pytest.raises(ApplicationError) as refused:
        await env.run(registry.enter_phase, EnterPhase(migration_id, Phase.CLEANUP))
    assert refused.value.non_retryable and "not cutover" in str(refused.value)

    plan = await env.run(copy.plan_copy, ref)
    everything = CopyChunk(migration_id, list(range(plan.ranges_total)))
    first = await env.run(copy.copy_ranges, everything)
    assert first.ranges_done == plan.ranges_total and first.keys_copied > 0
    second = await env.run(copy.copy_ranges, everything)  # a retried chunk copies nothing again
    assert second.keys_copied == first.keys_copied
    assert await env.run(copy.verify_ranges, everything) == 0

    # The joining node is in the ring (joining, with tokens): a wipe must leave it alone.
    held = await node_keys(cluster, "node-4")
    assert held > 0
    assert await env.run(cleanup.wipe_joining_node, ref) == 0
    assert await node_keys(cluster, "node-4") == held

    # Undo, twice over (a retried compensation), then the outcome.
    await env.run(registry.remove_joining_node, ref)
    await env.run(registry.remove_joining_node, ref)
    assert await env.run(cleanup.wipe_joining_node, ref) == held
    assert await node_keys(cluster, "node-4") == 0
    await env.run(registry.finish_migration, FinishMigration(migration_id, Status.CANCELLED))
    state = await registry_state(cluster, "node-4")
    assert (state.in_flight, state.node_status, state.tokens) == (None, "removed", 0)

    # Once ended, nothing moves it forward again; steps back are no-ops.
    with pytest.raises(ApplicationError, match="has ended"):
        await env.run(registry.enable_dual_write, ref)
    await env.run(registry.remove_joining_node, ref)


def copied_ranges(how: str) -> float:
    return REGISTRY.get_sample_value("pairdb_copy_ranges_total", {"how": how}) or 0.0


async def test_a_copy_forwards_whole_ranges_from_one_source_and_verification_brings_the_quorums_newest(
    cluster: LocalCluster, ctx: StepContext
) -> None:
    env = ActivityEnvironment()
    registry, copy, cleanup = RegistrySteps(ctx), CopySteps(ctx), CleanupSteps(ctx)
    async with cluster.client() as client:
        await client.create_tenant("one", 1)  # the joining node takes only some of its ranges
        await load(client, ["one"], 100)
    migration_id = await new_migration(cluster, ctx, "node-5")
    ref = MigrationRef(migration_id)
    assert await env.run(registry.claim_ring_change, ref)
    await env.run(registry.enable_dual_write, ref)
    await env.run(registry.enter_phase, EnterPhase(migration_id, Phase.DATA_COPY))

    # Newer versions of a few keys on a quorum of the old replicas only (as a write whose
    # third copy is still on its way): a range pulled from node-3 misses them.
    newer = {f"key-{i}": StoredRecord("t", f"key-{i}", b"newer", now_version()) for i in range(0, 300, 5)}
    for node_id in ("node-1", "node-2"):
        storage = cluster.nodes[node_id].client()
        try:
            await storage.apply_many(list(newer.values()))
        finally:
            await storage.close()

    pulled, merged = copied_ranges("pulled"), copied_ranges("merged")
    plan = await env.run(copy.plan_copy, ref)
    everything = CopyChunk(migration_id, list(range(plan.ranges_total)))
    await env.run(copy.copy_ranges, everything)
    assert await env.run(copy.verify_ranges, everything) > 0  # it copied what node-3 lacked
    topology = await ctx.topology()
    assert topology.future is not None
    joining = cluster.nodes["node-5"].client()
    try:
        held = {key: await joining.get("t", key) for key in newer}
        ones = [f"key-{i}" for i in range(100) if await joining.get("one", f"key-{i}") is not None]
    finally:
        await joining.close()
    gained = {key: record for key, record in held.items() if record is not None}
    assert gained and all(record == newer[key] for key, record in gained.items())
    # Of the replication-factor-1 tenant, only the keys the joining node now replicates.
    assert ones and all(topology.future.replicas(token("one", key), 1) == ("node-5",) for key in ones)
    assert copied_ranges("pulled") > pulled and copied_ranges("merged") > merged

    await env.run(registry.remove_joining_node, ref)
    await env.run(cleanup.wipe_joining_node, ref)
    await env.run(registry.finish_migration, FinishMigration(migration_id, Status.CANCELLED))
