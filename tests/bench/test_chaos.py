"""A short fixed-seed chaos schedule, and proof that each of its checks catches a system broken on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.chaos import Result, Schedule
from pairdb.kernel.migration import Phase, Status
from pairdb.kernel.sabotage import SKIP_REVERSION
from pairdb.local.cluster import LocalCluster


async def test_a_fixed_seed_schedule_with_a_pause_and_a_terminated_workflow_loses_nothing() -> None:
    result = await Schedule(
        0,
        seed=7,
        keys=200,
        minutes=5,
        kinds=["pause_coordinator", "terminate_workflow"],
        phases=[Phase.DATA_COPY, Phase.DATA_COPY],
    ).run()
    verdict = result.verdict
    assert result.acknowledged > 500
    # The terminated addition was undone by the reconciler; the next one completed.
    assert (
        result.migrations[0] in (Status.FAILED, Status.CANCELLED)
        and result.migrations[-1] == Status.COMPLETED
    )
    assert verdict.ok, verdict.lines[:10]


async def test_a_replacement_of_a_dead_node_while_a_survivor_is_killed_loses_nothing() -> None:
    """node-4 is kill -9ed and its data deleted; node-5 replaces it while another replica dies a while."""
    result = await Schedule(
        1,
        seed=7,
        keys=200,
        minutes=5,
        kinds=["kill_old_replica"],
        phases=[Phase.DATA_COPY],
        operation="replace",
    ).run()
    assert result.migrations[-1] == Status.COMPLETED
    assert result.acknowledged > 300
    assert result.verdict.ok, result.verdict.lines[:10]


def discard_kept_logs(result: Result) -> None:
    """A schedule with violations keeps its directory for a post-mortem; these violations were wanted."""
    shutil.rmtree(Path(result.log_dir).parent, ignore_errors=True)


async def wipe_two_replicas(cluster: LocalCluster) -> None:
    """A broken cleanup: it drops everything from node-4 and node-1, as if it got its ranges wrong."""
    for node_id in ("node-4", "node-1"):
        storage = cluster.nodes[node_id].client()
        try:
            await storage.delete_range(0, 0)
        finally:
            await storage.close()


async def test_the_checker_reports_writes_lost_from_their_replicas_before_any_read_repairs_them() -> None:
    result = await Schedule(
        0,
        seed=7,
        keys=200,
        minutes=4,
        kinds=["net_latency"],
        phases=[Phase.DATA_COPY],
        write_only=True,
        sabotage=wipe_two_replicas,
        repair=False,  # what it checks does not need one (and write-only schedules run none)
    ).run()
    assert result.migrations == [Status.COMPLETED]
    assert len(result.verdict.lost) > 50
    assert any("before any read repaired it" in line for line in result.verdict.lost)
    discard_kept_logs(result)


async def test_the_checker_reports_writes_lost_to_clock_skew_when_they_are_not_versioned_again() -> None:
    """Coordinator 2 runs 250-450 ms ahead; coordinators that ignore a replica's newer version lose writes."""
    result = await Schedule(
        0,
        seed=7,
        keys=20,
        minutes=4,
        kinds=["clock_skew"],
        phases=[Phase.CLEANUP],
        sabotage_env=SKIP_REVERSION,
        repair=False,
    ).run()
    verdict = result.verdict
    assert verdict.lost or verdict.stale_reads or verdict.nonlinearizable, verdict.lines[:5]
    discard_kept_logs(result)
