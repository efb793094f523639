"""`pairdb node add` and `pairdb migration ...` as an operator types them, against a real cluster."""

from __future__ import annotations

import asyncio
import os
import sys

from pairdb.local.cluster import LocalCluster
from tests.support import load, wait_for


async def pairdb(cluster: LocalCluster, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pairdb.cli",
        *args,
        "--coordinator",
        cluster.coordinator_address,
        "--api-key-file",
        str(cluster.admin_key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **cluster.cli_env()},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_node_add_with_pause_throttle_resume_and_wait(migration_cluster: LocalCluster) -> None:
    cluster = migration_cluster
    async with cluster.client() as client:
        await load(client, ["default"], 1500)
    node4 = await cluster.add_storage_node("node-4")
    code, out = await pairdb(cluster, "node", "add", "node-4", f"127.0.0.1:{node4.port}", "--throttle", "200")
    assert code == 0, out
    migration_id = out.strip().splitlines()[-1].removeprefix("migration ").strip()

    async def copying() -> bool:
        _, status = await pairdb(cluster, "migration", "status", migration_id)
        return "phase      data_copy" in status

    await wait_for(copying, timeout=60, what="the copy to start")
    code, out = await pairdb(cluster, "migration", "pause", migration_id)
    assert (code, out.strip()) == (0, "paused")
    code, out = await pairdb(cluster, "migration", "status", migration_id)
    assert "paused     yes" in out and "throttle   200 keys/s" in out
    code, out = await pairdb(cluster, "migration", "throttle", migration_id, "0")
    assert (code, out.strip()) == (0, "throttle removed")
    code, out = await pairdb(cluster, "migration", "resume", migration_id)
    assert (code, out.strip()) == (0, "resumed")
    code, out = await pairdb(cluster, "migration", "wait", migration_id)
    assert code == 0, out
    assert "status     completed" in out and "phase      done" in out
    code, out = await pairdb(cluster, "nodes")
    assert "node-4" in out and out.count("active") == 4

    code, out = await pairdb(cluster, "migration", "cancel", migration_id)
    assert code == 1 and out.startswith("error: FAILED_PRECONDITION") and "has ended" in out
    code, out = await pairdb(cluster, "migration", "status", "nope")
    assert code == 1 and out.startswith("error: NOT_FOUND")

    # The other ring changes, as an operator types them: remove the node again, lower an RF.
    code, out = await pairdb(cluster, "node", "remove", "node-4", "--wait")
    assert code == 0, out
    assert "node removal started" in out and "remove-node-node-4" in out
    code, out = await pairdb(cluster, "tenant", "set-rf", "default", "2", "--wait")
    assert code == 0, out
    code, out = await pairdb(cluster, "migration", "list")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:5] == ["STARTED", "TYPE", "SUBJECT", "STATUS", "PHASE"]
    assert [line.split()[2:6] for line in lines[1:]] == [
        ["node_addition", "node-4", "completed", "done"],
        ["node_removal", "node-4", "completed", "done"],
        ["rf_change", "default", "completed", "done"],
    ]
    code, out = await pairdb(cluster, "node", "replace", "node-1", "node-9", "no-port")
    assert (code, out.strip()) == (2, "error: address must be HOST:PORT, got 'no-port'")
    code, out = await pairdb(cluster, "tenant", "set-rf", "default", "9")
    assert code == 1 and out.startswith("error: INVALID_ARGUMENT") and "1..7" in out

    # Healing: a tenant with its own tombstone grace period, a repair followed to its end.
    code, out = await pairdb(cluster, "tenant", "create", "graceful", "--gc-grace", "60")
    assert code == 0, out
    code, out = await pairdb(cluster, "repair", "--tenant", "graceful", "--wait")
    assert code == 0, out
    assert "repairing tenant graceful" in out and "status     completed" in out and "(repair)" in out
    code, out = await pairdb(cluster, "migration", "list")
    assert ["repair", "graceful", "completed", "done"] in [line.split()[2:6] for line in out.splitlines()]
    code, out = await pairdb(cluster, "tenant", "create", "forever", "--gc-grace", str(10**9))
    assert code == 1 and out.startswith("error: INVALID_ARGUMENT") and "gc_grace_seconds" in out
