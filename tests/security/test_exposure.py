"""Secure by default: a server refuses to be reachable beyond loopback without TLS unless told
--insecure; a remote PostgreSQL needs a verifying sslmode. Checked through the real `pairdb` command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pairdb.local.processes import free_port, pairdb_command
from pairdb.security.exposure import Exposed, check_listen, is_loopback, postgres_warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses_may_listen_in_plaintext(host: str) -> None:
    assert is_loopback(host)
    assert check_listen("x", host, tls=False, insecure=False, fix="") is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "db.example.com", ""])
def test_anything_else_needs_tls_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(Exposed, match="--insecure"):
        check_listen("the coordinator", host, tls=False, insecure=False, fix="Give it --tls-ca")
    assert check_listen("the coordinator", host, tls=True, insecure=False, fix="") is None
    warning = check_listen("the coordinator", host, tls=False, insecure=True, fix="")
    assert warning is not None and warning.startswith("INSECURE")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@db.example.com:5432/pairdb",
        "postgresql://u:p@db.example.com/pairdb?sslmode=require",
        "host=db.example.com dbname=pairdb sslmode=prefer",
    ],
)
def test_a_remote_postgresql_needs_a_verifying_sslmode(dsn: str) -> None:
    with pytest.raises(Exposed, match="sslmode=verify-full"):
        postgres_warning(dsn, insecure=False)
    assert (postgres_warning(dsn, insecure=True) or "").startswith("INSECURE")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@127.0.0.1:5432/pairdb",
        "postgresql://u:p@localhost/pairdb",
        "postgresql://u:p@db.example.com/pairdb?sslmode=verify-full&sslrootcert=/ca.pem",
        "postgresql:///pairdb?host=/var/run/postgresql",
        "host=db.example.com dbname=pairdb sslmode=verify-ca",
    ],
)
def test_local_or_verified_postgresql_is_fine(dsn: str) -> None:
    assert postgres_warning(dsn, insecure=False) is None


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pairdb_command(*args), capture_output=True, text=True, timeout=timeout)


def test_a_storage_node_refuses_a_public_address_without_tls(scratch_dir: Path) -> None:
    refused = _run(
        "storage-node", "--node-id", "n1", "--port", str(free_port()), "--data-dir", str(scratch_dir / "n1"),
        "--host", "0.0.0.0",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "refuses to listen on 0.0.0.0 without TLS" in refused.stderr
    assert "--tls-ca" in refused.stderr and "--insecure" in refused.stderr


def test_a_coordinator_refuses_a_public_address_or_a_remote_plaintext_postgresql() -> None:
    public = _run("coordinator", "--host", "0.0.0.0", "--postgres-dsn", "postgresql://u@127.0.0.1:1/x")
    assert public.returncode == 2 and "refuses to listen on 0.0.0.0 without TLS" in public.stderr
    remote = _run("coordinator", "--postgres-dsn", "postgresql://u@db.example.com/x")
    assert remote.returncode == 2 and "sslmode=verify-full" in remote.stderr
    worker = _run("worker", "--postgres-dsn", "postgresql://u@db.example.com/x")
    assert worker.returncode == 2 and "sslmode=verify-full" in worker.stderr


def test_insecure_lets_a_storage_node_listen_anywhere_and_says_so(scratch_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        pairdb_command(
            "storage-node", "--node-id", "n1", "--port", str(port), "--data-dir", str(scratch_dir / "n1"),
            "--host", "0.0.0.0", "--insecure",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "INSECURE" in line:
                assert "without TLS" in line
                break
        else:
            raise AssertionError("the node never warned that it runs insecure")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
