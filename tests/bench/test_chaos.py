"""A short, fixed-seed chaos schedule, and proof that its checker catches a broken system."""

from __future__ import annotations

from bench.chaos import Schedule
from pairdb.cluster import LocalCluster


async def test_a_fixed_seed_schedule_loses_nothing() -> None:
    result = await Schedule(0, seed=7, keys=200, minutes=4, kinds=["kill_worker", "net_unreachable"]).run()
    verdict = result.verdict
    assert result.acknowledged > 500
    assert result.migrations == ["completed"]
    assert (verdict.lost, verdict.resurrected, verdict.phantom, verdict.stuck) == ([], [], [], [])


async def wipe_two_replicas(cluster: LocalCluster) -> None:
    """A broken cleanup: it drops everything from node-4 and node-1, as if it got its ranges wrong."""
    for node_id in ("node-4", "node-1"):
        storage = cluster.nodes[node_id].client()
        try:
            await storage.delete_range(0, 0)
        finally:
            await storage.close()


async def test_the_checker_reports_lost_writes_when_the_system_loses_data() -> None:
    result = await Schedule(
        0, seed=7, keys=200, minutes=4, kinds=["net_latency"], sabotage=wipe_two_replicas
    ).run()
    assert result.migrations == ["completed"]
    assert len(result.verdict.lost) > 50
    assert any("of its replicas hold" in line for line in result.verdict.lost)
