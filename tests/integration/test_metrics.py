"""Every process serves Prometheus /metrics, and the migration metrics move during a node addition."""

from __future__ import annotations

import asyncio

from pairdb.local.cluster import LocalCluster
from tests.support import Writer, load, scrape, wait_ended, wait_for


async def test_migration_metrics_move_during_a_node_addition(migration_cluster: LocalCluster) -> None:
    cluster = migration_cluster
    coordinator = cluster.coordinator_procs[0].metrics_port
    async with cluster.client(0) as c0, cluster.client(1) as c1:
        await c0.create_tenant("m", 3)
        await load(c0, ["m"], 1000)
        assert (await scrape(coordinator))["pairdb_active_migrations"] == 0
        writer = Writer([c0, c1], "m")
        writer.start()
        node4 = await cluster.add_storage_node("node-4")
        added = await c0.add_node("node-4", "127.0.0.1", node4.advertised_port, throttle_keys_per_second=500)

        async def copying() -> bool:
            return (await scrape(cluster.worker_metrics_port)).get("pairdb_copy_keys_total", 0) > 0

        await wait_for(copying, timeout=60, what="copied keys to show")
        during = await scrape(coordinator)
        first_copied = (await scrape(cluster.worker_metrics_port))["pairdb_copy_keys_total"]
        assert during["pairdb_active_migrations"] == 1
        await asyncio.sleep(2)
        assert (await scrape(cluster.worker_metrics_port))["pairdb_copy_keys_total"] > first_copied
        await c0.throttle_migration(added.migration_id, 0)
        assert (await wait_ended(c0, added.migration_id)).status == "completed"
        await writer.stop()

    await asyncio.sleep(1.5)  # one refresh beat
    after = await scrape(coordinator)
    assert after["pairdb_active_migrations"] == 0
    dual = sum(await _dual_writes(cluster))
    assert dual > 0
    assert (
        after['pairdb_rpc_requests_total{code="OK",method="WriteKeyValue",service="CoordinatorService"}'] > 0
    )
    assert after["pairdb_registry_epoch"] == after["pairdb_applied_epoch"] > 1
    assert any(k.startswith("pairdb_write_latency_seconds_count") and 'migrating="true"' in k for k in after)
    worker = await scrape(cluster.worker_metrics_port)
    assert worker['pairdb_migration_duration_seconds_count{status="completed"}'] == 1
    sdk = await scrape(cluster.worker_sdk_metrics_port)
    assert any(name.startswith("temporal_") for name in sdk), "the Temporal SDK's runtime metrics"


async def _dual_writes(cluster: LocalCluster) -> list[float]:
    counts = []
    for c in cluster.coordinator_procs:
        samples = await scrape(c.metrics_port)
        counts.append(samples.get('pairdb_dual_writes_total{outcome="success"}', 0.0))
    return counts
