"""The repair steps: how a range is cut, and what a step sends (real PostgreSQL and storage nodes).

The steps run in temporalio's ActivityEnvironment, as the worker would run them,
without a workflow; divergence is made by writing to one storage node directly.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.testing import ActivityEnvironment

from pairdb.activities import repair
from pairdb.activities.context import StepContext
from pairdb.activities.repair import RING_SIZE, RepairSteps, pieces, split
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.repair_store import RepairTotals
from pairdb.coordinator.ring import Ring
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import TOKEN_MAX, in_range, token
from pairdb.kernel.migration import Status
from pairdb.kernel.repair import FinishRepair, RepairChunk, RepairRef
from pairdb.local.cluster import LocalCluster
from pairdb.storage_node.engine import StoredRecord
from tests.conftest import local_cluster
from tests.support import divergent, now_version

tokens = st.integers(min_value=0, max_value=TOKEN_MAX)


def covers_exactly(start: int, end: int, parts: list[tuple[int, int]]) -> bool:
    """The parts are consecutive, non-empty, and together (start, end]."""
    return (
        parts[0][0] == start
        and parts[-1][1] == end
        and all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        and all(s != e for s, e in parts)
    )


@given(tokens, tokens, st.integers(min_value=1, max_value=64))
def test_a_range_splits_into_consecutive_non_empty_parts_that_cover_it(start: int, end: int, n: int) -> None:
    parts = split(start, end, n)
    assert covers_exactly(start, end, parts) or (start == end and len(parts) == 1)
    width = (end - start) % RING_SIZE or RING_SIZE
    assert len(parts) == min(n, width)


@given(tokens, tokens, st.lists(tokens, min_size=1, max_size=20, unique=True), tokens)
def test_pieces_cut_a_range_where_the_current_ring_has_boundaries(
    start: int, end: int, ring_tokens: list[int], probe: int
) -> None:
    ring = Ring.from_tokens((t, f"n{i}") for i, t in enumerate(ring_tokens))
    topology = Topology(1, ring, {}, {})
    cut = pieces(topology, start, end)
    assert cut[0][0] == start and cut[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cut))
    # Within a piece every token has one owner: the piece's end's.
    for s, e in cut:
        if in_range(probe, s, e):
            assert ring.primary(probe) == ring.primary(e)


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[LocalCluster]:
    # One vnode per node: three big ranges, so narrowing down has something to narrow.
    async with local_cluster(
        "repair-steps", storage_nodes=3, temporal=False, log_level="WARNING", virtual_nodes=1
    ) as local:
        async with local.client() as client:
            await client.create_tenant("t", 3)
            results = await client.put_many([("t", f"k{i}", b"v") for i in range(3000)], "ALL")
            assert all(isinstance(r, tuple) for r in results)
        yield local


@pytest.fixture
async def steps(cluster: LocalCluster) -> AsyncIterator[RepairSteps]:
    metadata = await Metadata.connect(cluster.dsn)
    ctx = StepContext.create(metadata, tls=cluster.worker_tls())
    yield RepairSteps(ctx)
    await ctx.pool.close()
    await metadata.close()


async def run_repair(steps: RepairSteps, repair_id: str) -> RepairTotals:
    env = ActivityEnvironment()
    await steps._ctx.repairs.begin(repair_id, "", "test")
    plan = await env.run(steps.plan_repair, RepairRef(repair_id))
    for chunk in plan.chunks:
        step = await env.run(steps.repair_ranges, RepairChunk(repair_id, chunk))
        assert step.waiting_for == ""
    ended = await env.run(steps.finish_repair, FinishRepair(repair_id, Status.COMPLETED))
    assert ended.status == Status.COMPLETED, ended.error
    return await steps._ctx.repairs.totals(repair_id)


async def test_only_the_records_a_replica_lacks_are_read_and_sent(
    cluster: LocalCluster, steps: RepairSteps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repair, "LEAF_KEYS", 20)
    newer = [StoredRecord("t", f"k{i}", b"only on node-1", now_version()) for i in (7, 1500, 2999)]
    storage = cluster.nodes["node-1"].client()
    try:
        await storage.apply_batch(newer)
    finally:
        await storage.close()
    assert await divergent(cluster, {"t": 3})

    totals = await run_repair(steps, "repair-narrowing")

    assert await divergent(cluster, {"t": 3}) == []
    # Each newer record went to the two replicas that lacked it, and nothing else did.
    assert totals.streamed == 2 * len(newer)
    # Narrowed down to small pieces: far fewer records read than the ranges hold.
    assert 0 < totals.scanned < 3000 // 10, totals
    for node in ("node-2", "node-3"):
        client = cluster.nodes[node].client()
        try:
            held = await client.get("t", "k1500")
        finally:
            await client.close()
        assert held is not None and held.value == b"only on node-1"


async def test_a_repeated_step_finds_its_ranges_done_and_sends_nothing(
    cluster: LocalCluster, steps: RepairSteps
) -> None:
    totals = await run_repair(steps, "repair-twice")
    env = ActivityEnvironment()
    plan = await steps._ctx.repairs.plan("repair-twice")
    again = await env.run(steps.repair_ranges, RepairChunk("repair-twice", [p.index for p in plan]))
    assert again.progress.ranges_done == totals.ranges_total
    assert await steps._ctx.repairs.totals("repair-twice") == totals


def test_tokens_of_keys_spread_over_the_ring() -> None:
    """The narrowing assumes keys spread evenly over token space (blake2b)."""
    halves = sum(token("t", f"k{i}") <= TOKEN_MAX // 2 for i in range(3000))
    assert 1300 < halves < 1700
