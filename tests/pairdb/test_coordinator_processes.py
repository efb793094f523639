"""`pairdb coordinator --processes N`: N coordinator processes share one port, each with its own id."""

from __future__ import annotations

import asyncio
import signal
import sys

import psutil

from pairdb.client import Client
from pairdb.coordinator.metadata import Metadata
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from tests.support import wait_for


async def test_two_processes_share_the_port_serve_and_stop_together(cluster: LocalCluster) -> None:
    port = free_port()
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pairdb.cli", "coordinator", "--processes", "2",
        "--port", str(port), "--postgres-dsn", cluster.dsn, "--coordinator-id", "shared",
        "--log-level", "WARNING",
    )  # fmt: skip
    metadata = await Metadata.connect(cluster.dsn)
    try:

        async def both_registered() -> bool:
            return all([await metadata.lease_holder(f"shared-{i}") is not None for i in (1, 2)])

        await wait_for(both_registered, 60, "both coordinator processes to take their leases")
        children = psutil.Process(supervisor.pid).children()
        assert len(children) == 2
        async with Client(f"127.0.0.1:{port}", api_key=cluster.admin_key) as client:
            for i in range(20):  # new connections land on either process
                await client.put("default", f"processes-{i}", b"v")
                assert (await client.get("default", f"processes-{i}")).value == b"v"
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), 30) == 0
        assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()
        await metadata.close()
