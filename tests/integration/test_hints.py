"""Hinted handoff: a replica that missed writes gets them once it is back, without any read.

Real processes: PostgreSQL, three storage nodes, one coordinator (restarted
with smaller bounds where a test needs them). No test reads a key through the
coordinator before checking a replica, so read repair never brings the data.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable

import asyncpg
import pytest

from pairdb.client import NO_RETRY, Client
from pairdb.coordinator.hints import DropReason, HintStore
from pairdb.coordinator.metadata import Metadata
from pairdb.coordinator.replication import DIRECT_CALLS_FROM
from pairdb.kernel.keyspace import StoredRecord, token
from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster
from tests.support import current_ring, now_version, scrape, wait_for

# What a replica holds of a key: its version and whether it is a tombstone.
Held = tuple[tuple[int, int], bool]


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[LocalCluster]:
    async with local_cluster("hints", storage_nodes=3, temporal=False, log_level="INFO") as local:
        yield local


@contextlib.asynccontextmanager
async def node_down(cluster: LocalCluster, node_id: str) -> AsyncIterator[None]:
    """node_id killed (kill -9) for the block, running again after it."""
    await cluster.kill_storage_node(node_id)
    try:
        yield
    finally:
        await cluster.restart_storage_node(node_id)


def writer(cluster: LocalCluster) -> Client:
    """A client that never retries: each write is sent once, so each write a node misses is one hint."""
    return Client(cluster.coordinator_address, retry=NO_RETRY, api_key=cluster.admin_key)


@contextlib.asynccontextmanager
async def coordinator_with(cluster: LocalCluster, **env: str) -> AsyncIterator[None]:
    """The coordinator restarted with env (PAIRDB_* options) for the block, then as it was."""
    process = cluster.coordinator_procs[0].process
    await process.stop()
    await cluster.restart_coordinator(0, env=env)
    try:
        yield
    finally:
        await process.stop()
        await cluster.restart_coordinator(0, env={})


async def counters(cluster: LocalCluster) -> Counter[str]:
    """The coordinator's hint counters: stored, replayed, and dropped by reason (since it started)."""
    samples = await scrape(cluster.coordinator_procs[0].metrics_port)
    counts = Counter(
        stored=int(samples.get("pairdb_hints_stored_total", 0)),
        replayed=int(samples.get("pairdb_hints_replayed_total", 0)),
    )
    for reason in DropReason:
        counts[reason] = int(samples.get(f'pairdb_hints_dropped_total{{reason="{reason}"}}', 0))
    return counts


NO_DROPS = {reason.value: 0 for reason in DropReason}


async def moved_by(cluster: LocalCluster, before: Counter[str], what: str, **expected: int) -> None:
    """Wait until each named counter moved by exactly its amount since before.

    A counter moves just after the transaction it counts commits: what a test
    sees in PostgreSQL may be ahead of it for a moment.
    """
    moved: Counter[str] = Counter()

    async def reached() -> bool:
        nonlocal moved
        moved = await counters(cluster) - before
        return all(moved[name] == count for name, count in expected.items())

    try:
        await wait_for(reached, timeout=15, what=what)
    except TimeoutError:
        raise AssertionError(f"{what}: expected {expected}, counters moved by {dict(moved)}") from None


async def stored_hints(cluster: LocalCluster, node_id: str, tenant: str | None = None) -> int:
    """Hints in PostgreSQL for node_id (of one tenant); checks the node's count agrees."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        # One statement, one snapshot: a flush or a replay commits both tables at once.
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM hints WHERE node_id = $1) AS rows,"
            " (SELECT count(*) FROM hints WHERE node_id = $1 AND tenant_id = $2) AS of_tenant,"
            " (SELECT pending FROM hint_counts WHERE node_id = $1) AS counted",
            node_id,
            tenant or "",
        )
    finally:
        await conn.close()
    assert row is not None
    rows, counted = row["rows"], row["counted"] or 0
    assert counted == rows, f"hint_counts says {counted}, hints holds {rows}"
    return int(rows if tenant is None else row["of_tenant"])


async def hinted_keys(cluster: LocalCluster, node_id: str, tenant: str) -> set[str]:
    """The keys of tenant that node_id has hints for."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT key FROM hints WHERE node_id = $1 AND tenant_id = $2", node_id, tenant
        )
    finally:
        await conn.close()
    return {r["key"] for r in rows}


async def registry_epoch(cluster: LocalCluster) -> int:
    """The epoch a coordinator routes by now (what a hint it left would carry)."""
    metadata = await Metadata.connect(cluster.dsn)
    try:
        return await metadata.epoch()
    finally:
        await metadata.close()


async def held(cluster: LocalCluster, node_id: str, tenant: str, keys: Iterable[str]) -> dict[str, Held]:
    """What node_id's storage holds of keys, asked directly."""
    storage = cluster.nodes[node_id].client()
    found: dict[str, Held] = {}
    try:
        for key in keys:
            record = await storage.get(tenant, key)
            if record is not None:
                found[key] = ((record.version.hlc, record.version.origin), record.tombstone)
    finally:
        await storage.close()
    return found


async def test_writes_and_deletes_a_node_missed_while_down_reach_it_from_hints_once_it_is_back(
    cluster: LocalCluster,
) -> None:
    tenant = "handoff"
    async with writer(cluster) as client:
        await client.create_tenant(tenant, 3)
        doomed = [f"doomed-{i}" for i in range(5)]
        for key in doomed:
            await client.put(tenant, key, b"deleted while node-3 is down", consistency="ALL")
        before = await counters(cluster)
        missed: dict[str, Held] = {}
        async with node_down(cluster, "node-3"):
            for i in range(20):
                missed[f"k{i}"] = (await client.put(tenant, f"k{i}", f"v{i}".encode()), False)
            # A batch goes to each replica in direct calls, not through the coalescer.
            batch = await client.put_many([(tenant, f"b{i}", b"batched") for i in range(100)])
            for i, version in enumerate(batch):
                assert isinstance(version, tuple), version
                missed[f"b{i}"] = (version, False)
            for key in doomed:
                missed[key] = (await client.delete(tenant, key), True)
            await moved_by(cluster, before, "a hint for each write node-3 missed", stored=len(missed))
            assert await hinted_keys(cluster, "node-3", tenant) == missed.keys()

        async def delivered() -> bool:
            return await held(cluster, "node-3", tenant, missed) == missed

        await wait_for(delivered, timeout=30, what="node-3 to hold every write it missed")
        await moved_by(cluster, before, "every hint replayed, none dropped", replayed=len(missed), **NO_DROPS)
        assert await stored_hints(cluster, "node-3") == 0


async def test_past_its_bound_a_nodes_hints_are_dropped_and_counted_and_writes_are_still_acknowledged(
    cluster: LocalCluster,
) -> None:
    tenant = "bounded"
    async with coordinator_with(cluster, PAIRDB_MAX_HINTS_PER_NODE="5"), writer(cluster) as client:
        await client.create_tenant(tenant, 3)
        before = await counters(cluster)
        keys = [f"k{i}" for i in range(30)]
        async with node_down(cluster, "node-3"):
            for key in keys:
                await client.put(tenant, key, b"v")  # raises unless acknowledged at QUORUM
            await moved_by(cluster, before, "five hints stored, the others dropped", stored=5, full=25)
            # Nothing deletes hints while node-3 is down (the window is hours): this is their peak.
            assert await stored_hints(cluster, "node-3") == 5
            kept = await hinted_keys(cluster, "node-3", tenant)
        await moved_by(cluster, before, "the five hints replayed", replayed=5)
        assert await stored_hints(cluster, "node-3") == 0
        assert set(await held(cluster, "node-3", tenant, keys)) == kept


async def test_hints_older_than_the_window_are_deleted_unplayed_and_a_node_down_longer_gets_none(
    cluster: LocalCluster,
) -> None:
    tenant = "windowed"
    async with coordinator_with(cluster, PAIRDB_MAX_HINT_WINDOW="1"), writer(cluster) as client:
        await client.create_tenant(tenant, 3)
        before = await counters(cluster)
        keys = [f"k{i}" for i in range(DIRECT_CALLS_FROM)]
        async with node_down(cluster, "node-3"):
            # A batch this large is one call per replica: node-3's failures all come at once.
            results = await client.put_many([(tenant, key, b"v") for key in keys])
            assert all(isinstance(r, tuple) for r in results), results
            await moved_by(
                cluster,
                before,
                "the hints to expire while node-3 is down",
                stored=len(keys),
                expired=len(keys),
            )
            assert await stored_hints(cluster, "node-3") == 0
            # node-3 has been failing for longer than the window: it is not hinted any more.
            await client.put(tenant, "late", b"v")
            await moved_by(cluster, before, "the late write's hint refused", stored=len(keys), node_down=1)
        # Nothing is left to replay: node-3 never gets these writes.
        assert await held(cluster, "node-3", tenant, [*keys, "late"]) == {}
        assert (await counters(cluster) - before)["replayed"] == 0


async def test_a_hint_is_dropped_when_its_node_no_longer_replicates_the_key_or_refuses_the_record(
    cluster: LocalCluster,
) -> None:
    tenant = "narrow"
    async with cluster.client() as client:
        await client.create_tenant(tenant, 2)
    ring = await current_ring(cluster)
    keys = [f"k{i}" for i in range(100)]
    elsewhere = next(k for k in keys if "node-3" not in ring.replicas(token(tenant, k), 2))
    mine, also_mine = [k for k in keys if "node-3" in ring.replicas(token(tenant, k), 2)][:2]
    epoch = await registry_epoch(cluster)
    before = await counters(cluster)
    # Hints as a coordinator leaves them, written by the store itself.
    store = await HintStore.connect(cluster.dsn)
    try:
        store.record("node-3", StoredRecord(tenant, elsewhere, b"left", now_version(999)), epoch)
        store.record("node-3", StoredRecord(tenant, mine, b"replayed", now_version(999)), epoch)
        future = now_version(999, ahead_ms=3_600_000)  # beyond every node's maximum clock offset
        store.record("node-3", StoredRecord(tenant, also_mine, b"refused", future), epoch)
        store.record("node-9", StoredRecord(tenant, mine, b"no such node", now_version(999)), epoch)
        await store.flush()
    finally:
        await store.stop()

    async def drained() -> bool:
        return await stored_hints(cluster, "node-3") == 0 and await stored_hints(cluster, "node-9") == 0

    await wait_for(drained, timeout=15, what="every planted hint to be settled")
    await moved_by(cluster, before, "one replayed, three dropped", replayed=1, not_replica=2, refused=1)
    assert set(await held(cluster, "node-3", tenant, [elsewhere, mine, also_mine])) == {mine}


async def test_a_hint_older_than_its_tenants_tombstone_grace_period_is_dropped_not_replayed(
    cluster: LocalCluster,
) -> None:
    """A repair may have purged a delete younger than the hinted record: replaying it could resurrect."""
    async with cluster.client() as client:
        await client.create_tenant("brief", 3, gc_grace_seconds=1)
        await client.create_tenant("lasting", 3)
    epoch = await registry_epoch(cluster)
    before = await counters(cluster)
    store = await HintStore.connect(cluster.dsn)
    try:
        old = now_version(999, ahead_ms=-5_000)  # five seconds old: past "brief"'s grace period
        store.record("node-3", StoredRecord("brief", "k", b"from before a purged delete", old), epoch)
        store.record("node-3", StoredRecord("lasting", "k", b"replayed", old), epoch)
        await store.flush()
    finally:
        await store.stop()
    await moved_by(cluster, before, "one replayed, one past the grace period", replayed=1, past_grace=1)
    assert await held(cluster, "node-3", "brief", ["k"]) == {}
    assert set(await held(cluster, "node-3", "lasting", ["k"])) == {"k"}
