"""The `pairdb` command as a user runs it: `pairdb dev` in one shell, put/get in another."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import structlog

from pairdb import cli, config
from pairdb.cli import build_parser
from pairdb.local.processes import free_port

PAIRDB = [sys.executable, "-m", "pairdb.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PAIRDB, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_dev_cluster_then_put_and_get_from_another_shell(scratch_dir: Path) -> None:
    port, storage, pg, temporal, ui = free_port(), free_port(), free_port(), free_port(), free_port()
    # Three consecutive storage ports from a free one: good enough on loopback.
    dev = subprocess.Popen(
        [
            *PAIRDB,
            "dev",
            "--data-dir",
            str(scratch_dir / "data"),
            "--port",
            str(port),
            "--storage-port",
            str(storage),
            "--postgres-port",
            str(pg),
            "--temporal-port",
            str(temporal),
            "--temporal-ui-port",
            str(ui),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("try:"):
                break
        banner = "".join(lines)
        assert f"coordinator   127.0.0.1:{port}" in banner, banner
        assert "storage node  node-3" in banner
        assert f"temporal UI   http://127.0.0.1:{ui}" in banner
        password = (scratch_dir / "data" / "postgres" / "pairdb-superuser-password").read_text().strip()
        assert f"postgresql    postgresql://postgres:***@127.0.0.1:{pg}/pairdb" in banner
        assert password not in banner
        children = psutil.Process(dev.pid).children(recursive=True)

        key_file = scratch_dir / "data" / "admin.key"
        assert f"admin key     {key_file} (mode 0600)" in banner
        assert key_file.stat().st_mode & 0o777 == 0o600
        # Run elsewhere than the cluster's data directory, the CLI is told where its CA and key are.
        env = {
            "PAIRDB_COORDINATOR": f"127.0.0.1:{port}",
            "PAIRDB_TLS_CA": str(scratch_dir / "data/certs/ca.crt"),
            "PAIRDB_API_KEY_FILE": str(key_file),
        }
        put = run("put", "default", "k", "v", env=env)
        assert put.returncode == 0, put.stderr
        get = run("get", "default", "k", env=env)
        assert get.returncode == 0 and get.stdout == "v\n", get

        missing = run("get", "default", "nope", env=env)
        assert missing.returncode == 1 and "not found" in missing.stderr
        bad = run("put", "no-such-tenant", "k", "v", env=env)
        assert bad.returncode == 1
        assert (
            bad.stderr.strip().startswith("error: NOT_FOUND:") and len(bad.stderr.strip().splitlines()) == 1
        )

        created = run("tenant", "create", "other", "--rf", "2", "--coordinator", f"127.0.0.1:{port}", env=env)
        assert "replication factor 2" in created.stdout
        nodes = run("nodes", env=env)
        assert nodes.stdout.count("active") == 3
    finally:
        dev.send_signal(signal.SIGTERM)
        out, _ = dev.communicate(timeout=60)
    assert dev.returncode == 0, out
    assert "stopped" in out and password not in out
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)


def test_unreachable_coordinator_is_one_clear_line() -> None:
    result = run("get", "default", "k", "--coordinator", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE") and len(result.stderr.strip().splitlines()) == 1


def test_a_secret_given_as_a_flag_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    resolved = config.resolve(build_parser(), ["worker", "--postgres-dsn", "postgresql://u:pw@db/x"])
    try:
        cli._configure_logs(resolved, json=True, level="INFO")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers = []
    assert "Secret on the command line" in err and "PAIRDB_POSTGRES_DSN_FILE" in err
    assert "pw@" not in err


def test_a_crash_traceback_masks_passwords(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored afterwards
    cli._mask_tracebacks()
    try:
        raise ConnectionError("cannot reach postgresql://pairdb:pw123@db:5432/pairdb")
    except ConnectionError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "postgresql://pairdb:***@db:5432/pairdb" in err and "pw123" not in err
