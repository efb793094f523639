"""The migration steps, each on its own: real PostgreSQL and storage nodes, no Temporal.

temporalio's ActivityEnvironment runs each activity as the worker would, one
call at a time, so a test can call a step twice (a retry), out of turn (one
that outlived its workflow), or check what it left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from pairdb.activities.cleanup import CleanupSteps
from pairdb.activities.context import StepContext
from pairdb.activities.copy import CopySteps
from pairdb.activities.registry_steps import RegistrySteps
from pairdb.coordinator.metadata import Metadata
from pairdb.kernel import migration as m
from pairdb.kernel.migration import CopyChunk, EnterPhase, FinishMigration, MigrationRef, Phase, Status
from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster
from tests.support import load, registry_state


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
    context = StepContext.create(metadata)
    yield context
    await context.pool.close()
    await metadata.close()


async def new_migration(cluster: LocalCluster, ctx: StepContext, node_id: str) -> str:
    node = await cluster.add_storage_node(node_id)
    migration_id = str(uuid.uuid4())
    request = m.NodeAdditionInput(migration_id, node_id, "127.0.0.1", node.port, 32)
    await ctx.store.create(request, m.workflow_id(node_id))
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
