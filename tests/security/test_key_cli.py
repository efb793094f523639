"""`pairdb key`, `pairdb audit` and `pairdb init --admin-key-file` as an operator types them."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pairdb.coordinator.first_key import ensure_admin_key
from pairdb.kernel.errors import FailedPrecondition
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from pairdb.security import api_keys
from tests.support import wait_for


async def pairdb(
    cluster: LocalCluster, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """`pairdb ARGS` as an operator runs it, trusting the cluster's CA; no key unless env gives one."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PAIRDB_API_KEY")}
    environment |= {k: v for k, v in cluster.cli_env().items() if not k.startswith("PAIRDB_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pairdb.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, **(env or {})},
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_key_create_list_revoke_and_audit_round_trip(cluster: LocalCluster, tenant: str) -> None:
    admin = {"PAIRDB_COORDINATOR": cluster.coordinator_address, "PAIRDB_API_KEY": cluster.admin_key}
    code, out, err = await pairdb(
        cluster, "key", "create", "--tenant", tenant, "--read-only", "--name", "dashboard", env=admin
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("pdb_") and "shown only this once" in err
    key_id = token.split("_")[1]

    reader = {"PAIRDB_COORDINATOR": cluster.coordinator_address, "PAIRDB_API_KEY": token}
    code, _, err = await pairdb(cluster, "get", tenant, "absent", env=reader)
    assert code == 1 and "not found" in err
    code, _, err = await pairdb(cluster, "put", tenant, "k", "v", env=reader)
    assert code == 1 and err.startswith("error: PERMISSION_DENIED: key ") and "read-only" in err

    code, out, _ = await pairdb(cluster, "key", "list", env=admin)
    line = next(row for row in out.splitlines() if row.startswith(key_id))
    assert f"read-only\t{tenant}\tactive\tdashboard" in line
    assert token.split("_", 2)[2] not in out

    code, out, _ = await pairdb(cluster, "key", "revoke", key_id, env=admin)
    assert code == 0 and f"key {key_id} revoked" in out
    code, _, err = await pairdb(cluster, "get", tenant, "k", env=reader)
    assert code == 1 and err.startswith("error: UNAUTHENTICATED:") and "revoked" in err

    code, out, _ = await pairdb(cluster, "audit", "--limit", "5", env=admin)
    assert code == 0
    assert "RevokeApiKey\tOK" in out.splitlines()[0]


async def test_the_cli_finds_its_key_in_a_file_never_on_the_command_line(
    cluster: LocalCluster, tenant: str, scratch_dir: Path
) -> None:
    where = {"PAIRDB_COORDINATOR": cluster.coordinator_address}
    code, _, err = await pairdb(cluster, "nodes", env=where, cwd=scratch_dir)
    assert code == 1 and "UNAUTHENTICATED" in err and "PAIRDB_API_KEY" in err
    code, out, _ = await pairdb(
        cluster, "nodes", "--api-key-file", str(cluster.admin_key_file), env=where, cwd=scratch_dir
    )
    assert code == 0 and "active" in out
    code, out, _ = await pairdb(
        cluster, "nodes", env={**where, "PAIRDB_API_KEY_FILE": str(cluster.admin_key_file)}
    )
    assert code == 0 and "active" in out
    # `pairdb dev`'s default data dir, found from the directory it ran in.
    (scratch_dir / ".pairdb").mkdir()
    (scratch_dir / ".pairdb" / "admin.key").write_text(cluster.admin_key + "\n")
    code, out, _ = await pairdb(cluster, "nodes", env=where, cwd=scratch_dir)
    assert code == 0 and "active" in out


async def test_the_first_admin_key_is_made_once_written_0600_and_never_overwritten(
    cluster: LocalCluster, scratch_dir: Path
) -> None:
    dsn = await cluster.postgres.ensure_database("auth_first_key")
    path = scratch_dir / "secrets" / "admin.key"
    made = await ensure_admin_key(dsn, path)
    assert made is not None and made.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = await ensure_admin_key(dsn, path)
    assert again is not None and not again.created and again.token == made.token
    # An active admin key exists: another file gets none (its caller brings its own key).
    assert await ensure_admin_key(dsn, scratch_dir / "second.key") is None
    assert not (scratch_dir / "second.key").exists()
    stale = scratch_dir / "stale.key"
    stale.write_text("pdb_0123456789ab_" + "s" * 43)
    with pytest.raises(FailedPrecondition, match="never overwritten"):
        await ensure_admin_key(dsn, stale)
    assert stale.read_text().startswith("pdb_0123456789ab_")


async def test_a_key_made_ahead_becomes_the_first_admin_key(cluster: LocalCluster, scratch_dir: Path) -> None:
    """deploy/make-secrets.sh makes the admin key before the cluster exists (a Docker secret)."""
    dsn = await cluster.postgres.ensure_database("auth_adopted_key")
    ahead = scratch_dir / "admin.key"
    ahead.write_text(api_keys.generate().token + "\n")
    adopted = await ensure_admin_key(dsn, ahead)
    assert adopted is not None and not adopted.created and adopted.token == ahead.read_text().strip()
    assert (await ensure_admin_key(dsn, ahead)) == adopted  # known now
    # Once the cluster has an admin, another key made ahead is not adopted.
    other = scratch_dir / "other.key"
    other.write_text(api_keys.generate().token + "\n")
    with pytest.raises(FailedPrecondition):
        await ensure_admin_key(dsn, other)


async def test_init_makes_the_first_admin_key_and_uses_it(cluster: LocalCluster, scratch_dir: Path) -> None:
    dsn = await cluster.postgres.ensure_database("auth_init")
    fresh = await cluster.start_coordinator(free_port(), dsn, coordinator_id="auth-init", wait=False)
    try:

        async def serving() -> bool:
            try:
                async with cluster.aio_channel(fresh.address) as channel:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                return False

        await wait_for(serving, 60, "the fresh cluster's coordinator")
        key_file = scratch_dir / "ops" / "admin.key"
        args = [
            "init",
            "--repair-every",
            "0",
            "--coordinator",
            fresh.address,
            "--admin-key-file",
            str(key_file),
        ]
        code, out, err = await pairdb(cluster, *args, env={"PAIRDB_POSTGRES_DSN": dsn}, cwd=scratch_dir)
        assert code == 0, err
        assert f"admin key written to {key_file} (mode 0600)" in out
        code, out, err = await pairdb(cluster, *args, env={"PAIRDB_POSTGRES_DSN": dsn}, cwd=scratch_dir)
        assert code == 0 and "written" not in out, err  # idempotent: the file's key is used again
        code, _, err = await pairdb(
            cluster,
            "key",
            "list",
            "--coordinator",
            fresh.address,
            "--api-key-file",
            str(key_file),
            cwd=scratch_dir,
        )
        assert code == 0, err
    finally:
        await fresh.process.stop()
        cluster.coordinator_procs.remove(fresh)


def test_no_flag_carries_a_key_itself() -> None:
    from pairdb.cli import build_parser
    from pairdb.config import _options

    flags = {flag for action in _options(build_parser()) for flag in action.option_strings}
    assert "--api-key-file" in flags
    assert not {f for f in flags if "api-key" in f or "admin-key" in f} - {
        "--api-key-file",
        "--admin-key-file",
    }
