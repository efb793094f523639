"""The barrier: the copy waits for every coordinator with a live lease to apply the dual-write epoch.

A third coordinator reaches PostgreSQL through a proxy the test can cut, so
its registry refresh is held back while the others' goes on.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import grpc
import pytest

from pairdb.client import ClientError
from pairdb.kernel.migration import Phase
from pairdb.local.cluster import LocalCluster
from pairdb.local.faults import TcpProxy
from pairdb.local.processes import free_port
from tests.support import load, wait_ended, wait_for


async def test_copy_waits_for_a_held_back_coordinator_until_it_applies_or_its_lease_lapses(
    migration_cluster: LocalCluster,
) -> None:
    cluster = migration_cluster
    dsn = urlsplit(cluster.dsn)
    assert dsn.port is not None
    proxy = TcpProxy("127.0.0.1", dsn.port)
    await proxy.start()
    held = await cluster.start_coordinator(
        free_port(), dsn=cluster.dsn.replace(f":{dsn.port}/", f":{proxy.port}/")
    )
    try:
        async with cluster.client() as client, cluster.connect(held.address) as held_client:
            await client.create_tenant("t", 3)
            await load(client, ["t"], 200)

            # It knows the client's key before PostgreSQL goes away (keys it never saw it cannot check).
            await held_client.get("t", "warm")

            # 1. Held back briefly: the copy starts only once it has applied the epoch.
            node4 = await cluster.add_storage_node("node-4")
            proxy.block()
            added = await client.add_node("node-4", "127.0.0.1", node4.port)
            await asyncio.sleep(3)  # well inside the 10 s lease
            status = await client.migration(added.migration_id)
            assert status.phase == Phase.DUAL_WRITE and status.ranges_total == 0, status
            await held_client.put("t", "while-held", b"ok")  # its lease still holds: it serves
            proxy.unblock()
            assert (await wait_ended(client, added.migration_id)).status == "completed"

            # 2. Held back for good: the barrier gives up on it once its lease lapses,
            #    and from then on it refuses requests.
            node5 = await cluster.add_storage_node("node-5")
            proxy.block()
            started = asyncio.get_running_loop().time()
            added = await client.add_node("node-5", "127.0.0.1", node5.port)

            async def copying() -> bool:
                return (await client.migration(added.migration_id)).phase in (
                    Phase.DATA_COPY,
                    Phase.CUTOVER,
                    Phase.CLEANUP,
                    Phase.DONE,
                )

            await wait_for(copying, timeout=60, what="the copy to start")
            assert asyncio.get_running_loop().time() - started >= 8.0  # not before the lease ran out
            with pytest.raises(ClientError) as refused:
                await held_client.put("t", "k", b"v")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "lease has lapsed" in refused.value.message
            assert (await wait_ended(client, added.migration_id)).status == "completed"

            # 3. Reconnected: it refreshes, takes its lease again and serves.
            proxy.unblock()

            async def serving() -> bool:
                try:
                    await held_client.put("t", "after", b"back")
                    return True
                except ClientError:
                    return False

            await wait_for(serving, timeout=30, what="the coordinator to serve again")
            assert (await client.get("t", "after")).value == b"back"
    finally:
        proxy.unblock()
        await proxy.stop()
