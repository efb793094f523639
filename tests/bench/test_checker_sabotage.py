"""The history checker sees what the fence and blocking read repair prevent, once they are broken on purpose.

A real cluster whose storage nodes skip the fence and whose coordinators make
what a read returns durable in the read set only (PAIRDB_SABOTAGE). Each test
plays one scenario those safeguards exist for, records it as a history and
asks the checker: it must report the violation. tests/integration/ plays the
same scenarios against the unbroken system, where they pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest

from bench.checker import GET, PUT, History, Verdict, check_key
from pairdb.client import Client
from pairdb.coordinator.metadata import Metadata
from pairdb.kernel.keyspace import StoredRecord, Version, token
from pairdb.kernel.migration import Phase, Status
from pairdb.kernel.sabotage import REPAIR_READ_SET_ONLY, SABOTAGE_ENV, SKIP_FENCE
from pairdb.local.cluster import LocalCluster
from pairdb.storage_node.client import StorageError
from tests.conftest import local_cluster
from tests.support import load, rings, wait_ended, wait_phase

TENANT = "t"


NO_HINTS_ENV = "PAIRDB_MAX_HINTS_PER_NODE"


@pytest.fixture(scope="module")
async def broken() -> AsyncIterator[LocalCluster]:
    os.environ[SABOTAGE_ENV] = f"{SKIP_FENCE},{REPAIR_READ_SET_ONLY}"
    # No hinted handoff: a hint for the write-back the sabotage aims at a blocked replica would heal
    # that replica behind the checker's back (it did, in about half the runs), hiding what is checked.
    os.environ[NO_HINTS_ENV] = "0"
    try:
        async with local_cluster("sabotage", storage_nodes=3, proxies=True, log_level="INFO") as cluster:
            os.environ.pop(SABOTAGE_ENV)
            os.environ.pop(NO_HINTS_ENV)
            async with cluster.client() as client:
                await client.create_tenant(TENANT, 3)
                await load(client, [TENANT], 200)
            yield cluster
    finally:
        os.environ.pop(SABOTAGE_ENV, None)
        os.environ.pop(NO_HINTS_ENV, None)


def fresh_version() -> Version:
    return Version((time.time_ns() // 1_000_000) << 16, 999)


def judge(history: History, key: str) -> Verdict:
    verdict = Verdict()
    check_key((TENANT, key), history.by_key()[(TENANT, key)], verdict)
    return verdict


async def test_the_checker_sees_a_value_vanish_when_reads_repair_only_the_read_set(
    broken: LocalCluster,
) -> None:
    history = History()
    node4 = await broken.add_storage_node("node-4")
    async with broken.client() as client:
        added = await client.add_node("node-4", "127.0.0.1", node4.advertised_port, hold_at_cutover=True)
        await wait_phase(client, added.migration_id, Phase.CUTOVER)
        old, new = await rings(broken, "node-4")
        key = next(
            f"vanish-{i}" for i in range(10_000) if "node-4" in new.replicas(token(TENANT, f"vanish-{i}"), 3)
        )
        old_set = old.replicas(token(TENANT, key), 3)
        new_set = new.replicas(token(TENANT, key), 3)
        shared = [n for n in new_set if n != "node-4"]
        first = history.begin(PUT, TENANT, key, 0, b"before")
        History.ok(first, await client.put(TENANT, key, b"before"))
        # A write that reached node-4 only, then failed: its outcome is unknown.
        partial = history.begin(PUT, TENANT, key, 0, b"partial")
        storage = broken.nodes["node-4"].client()
        try:
            await storage.apply(StoredRecord(TENANT, key, b"partial", fresh_version()))
        finally:
            await storage.close()
        History.failed(partial, "UNAVAILABLE: reached one replica only")
        # Reads in cutover use the new replicas: node-4 and one shared node answer.
        await _read(history, broken, client, key, blocked=shared[0])
        await client.rollback_migration(added.migration_id)
        assert (await wait_ended(client, added.migration_id)).status == Status.ROLLED_BACK
        # Back on the old replicas; the other shared node is slow to answer.
        await _read(history, broken, client, key, blocked=shared[1], final=True)
    assert set(old_set) >= set(shared)
    verdict = judge(history, key)
    assert not verdict.ok and (verdict.lost or verdict.stale_reads or verdict.nonlinearizable), verdict.lines


async def _read(
    history: History, cluster: LocalCluster, client: Client, key: str, *, blocked: str, final: bool = False
) -> None:
    """A QUORUM read while one replica is unreachable, recorded in history."""
    proxy = cluster.nodes[blocked].proxy
    assert proxy is not None
    proxy.block()
    op = history.begin(GET, TENANT, key, 0)
    op.final = final
    try:
        got = await client.get(TENANT, key)
        History.ok(op, got.version, found=got.found, value=got.value)
    finally:
        proxy.unblock()


async def test_the_checker_sees_a_write_lost_when_storage_nodes_skip_the_fence(broken: LocalCluster) -> None:
    """A coordinator frozen mid-write resumes after a node joined, and writes by the ring it knew."""
    history = History()
    metadata = await Metadata.connect(broken.dsn)
    try:
        before = await metadata.epoch()
    finally:
        await metadata.close()
    node5 = await broken.add_storage_node("node-5")
    async with broken.client() as client:
        added = await client.add_node("node-5", "127.0.0.1", node5.advertised_port)
        assert (await wait_ended(client, added.migration_id)).status == Status.COMPLETED
        old, new = await rings(broken, "node-5")
        key = next(
            f"stale-{i}" for i in range(10_000) if "node-5" in new.replicas(token(TENANT, f"stale-{i}"), 3)
        )
        old_set = old.replicas(token(TENANT, key), 3)
        new_set = new.replicas(token(TENANT, key), 3)
        # Acknowledged by a quorum of the old replicas: those new_set shares with them but one.
        quorum = [n for n in old_set if n not in new_set][:1] + [n for n in old_set if n in new_set][:1]
        op = history.begin(PUT, TENANT, key, 1, b"stale")
        record = StoredRecord(TENANT, key, b"stale", fresh_version())
        acked = 0
        for node_id in quorum:
            storage = broken.nodes[node_id].client()
            try:
                acked += (await storage.apply(record, epoch=before)).applied
            except StorageError:
                pass
            finally:
                await storage.close()
        if acked == len(quorum):
            History.ok(op, (record.version.hlc, record.version.origin))
        else:
            History.failed(op, "refused by the fence")
        # The replica both sets share is slow: the final read asks the other two.
        shared = next(n for n in quorum if n in new_set)
        await _read(history, broken, client, key, blocked=shared, final=True)
    verdict = judge(history, key)
    assert verdict.lost, verdict.lines
