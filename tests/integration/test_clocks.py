"""Write order survives clock skew, restarts and a second process claiming a coordinator's id.

Real storage nodes and coordinators; one coordinator's wall clock is shifted with
PAIRDB_CLOCK_OFFSET_MS, within the cluster's maximum clock offset (500 ms).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from pairdb.client import Client, ClientError
from pairdb.coordinator.metadata import Metadata
from pairdb.kernel.clocks import CLOCK_OFFSET_ENV
from pairdb.kernel.keyspace import Version
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from pairdb.storage_node.client import StorageError
from pairdb.storage_node.engine import StoredRecord
from tests.conftest import local_cluster
from tests.support import wait_for

AHEAD_MS = 400
LEASE = 3.0


@pytest.fixture(scope="module")
async def skewed() -> AsyncIterator[LocalCluster]:
    """coordinator-1 on true time; coordinator-2 400 ms ahead of it."""
    async with local_cluster(
        "clocks", storage_nodes=3, temporal=False, log_level="WARNING", coordinator_lease_seconds=LEASE
    ) as cluster:
        await cluster.start_coordinator(free_port(), env={CLOCK_OFFSET_ENV: str(AHEAD_MS)})
        async with cluster.client() as client:
            await client.create_tenant("skew", 3)
        yield cluster


async def test_a_write_that_starts_after_an_acknowledged_write_wins_though_that_one_ran_ahead(
    skewed: LocalCluster,
) -> None:
    async with skewed.client(0) as on_time, skewed.client(1) as ahead:
        for i in range(20):
            key = f"k{i}"
            await ahead.put("skew", key, b"first")
            await on_time.put("skew", key, b"second")  # starts after "first" was acknowledged
            assert (await on_time.get("skew", key)).value == b"second", key
            assert (await ahead.get("skew", key)).value == b"second", key


async def test_a_batch_write_that_starts_after_acknowledged_writes_wins_though_they_ran_ahead(
    skewed: LocalCluster,
) -> None:
    keys = [f"batch-{i}" for i in range(50)]
    async with skewed.client(0) as on_time, skewed.client(1) as ahead:
        first = await ahead.put_many([("skew", k, b"first") for k in keys])
        assert all(isinstance(v, tuple) for v in first)
        second = await on_time.put_many([("skew", k, b"second") for k in keys])
        assert all(isinstance(v, tuple) for v in second), second
        read = await on_time.get_many([("skew", k) for k in keys])
        assert [getattr(v, "value", v) for v in read] == [b"second"] * len(keys)


async def test_a_version_beyond_the_maximum_clock_offset_is_refused_by_a_storage_node(
    skewed: LocalCluster,
) -> None:
    forged = StoredRecord("skew", "forged", b"forever", Version((1 << 64) - 1, 1))
    storage = skewed.nodes["node-1"].client()
    try:
        with pytest.raises(StorageError) as refused:
            await storage.apply(forged)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "ahead of this node's clock" in refused.value.details
    finally:
        await storage.close()
    async with skewed.client(0) as client:
        await client.put("skew", "forged", b"ordinary")
        assert (await client.get("skew", "forged")).value == b"ordinary"


async def test_a_restarted_coordinator_whose_clock_stepped_back_issues_newer_versions(
    skewed: LocalCluster,
) -> None:
    async with skewed.client(1) as client:
        before = await client.put("skew", "restart-a", b"x")
    await skewed.coordinator_procs[1].process.kill()
    # It comes back with its clock 2 s behind where it was: a clock step back across a restart.
    await skewed.restart_coordinator(1, env={CLOCK_OFFSET_ENV: str(AHEAD_MS - 2000)})
    async with skewed.client(1) as client:
        after = await client.put("skew", "restart-b", b"y")
    assert after > before, f"version went back across a restart: {before} then {after}"
    await skewed.coordinator_procs[1].process.stop()
    await skewed.restart_coordinator(1, env={CLOCK_OFFSET_ENV: str(AHEAD_MS)})


async def test_a_write_after_a_restart_with_the_clock_stepped_back_still_wins_over_what_was_read(
    skewed: LocalCluster,
) -> None:
    async with skewed.client(1) as ahead:
        await ahead.put("skew", "observed", b"from-the-future")
    async with skewed.client(0) as on_time:
        assert (await on_time.get("skew", "observed")).value == b"from-the-future"
    await skewed.coordinator_procs[0].process.kill()
    # Back with its clock 1.5 s behind: far below the version it read before the restart.
    await skewed.restart_coordinator(0, env={CLOCK_OFFSET_ENV: "-1500"})
    try:
        async with skewed.client(0) as on_time:
            await on_time.put("skew", "observed", b"later")
            assert (await on_time.get("skew", "observed")).value == b"later"
    finally:
        await skewed.coordinator_procs[0].process.stop()
        await skewed.restart_coordinator(0, env={})


async def test_a_second_process_with_a_live_coordinators_id_does_not_serve_until_that_one_is_gone(
    skewed: LocalCluster,
) -> None:
    first = skewed.coordinator_procs[0]
    twin = await skewed.start_coordinator(free_port(), coordinator_id=first.coordinator_id, wait=False)
    try:
        async with Client(twin.address, timeout=1, api_key=skewed.admin_key) as client:
            await asyncio.sleep(2 * LEASE)
            with pytest.raises(ClientError):
                await client.put("skew", "twin", b"must not be written by a twin")
            await first.process.stop()

            async def serving() -> bool:
                try:
                    await client.put("skew", "twin", b"the only one now")
                    return True
                except ClientError:
                    return False

            await wait_for(serving, timeout=4 * LEASE, what="the twin to take over once the first stopped")
        assert await _lease_holder(skewed, first.coordinator_id) == twin.address
    finally:
        await twin.process.stop()
        skewed.coordinator_procs.remove(twin)
        await skewed.restart_coordinator(0)


async def _lease_holder(cluster: LocalCluster, coordinator_id: str) -> str:
    """The address of the process holding coordinator_id's lease."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        address: str = await metadata.pool.fetchval(
            "SELECT address FROM coordinators WHERE coordinator_id = $1 AND lease_expires_at > now()",
            coordinator_id,
        )
    finally:
        await metadata.close()
    return address
