"""Shared fixtures: a real local cluster (PostgreSQL, storage nodes, coordinator) per test session."""

from __future__ import annotations

import os

# This process starts servers (fork, then exec) while its own gRPC channels run. gRPC's fork
# handlers then run in the child between fork and exec and can crash it (seen: initdb killed by
# SIGSEGV after an `epoll_wait error: Bad file descriptor`). Off before grpc is imported, as in
# every process pairdb starts (processes.GRPC_QUIET).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pairdb.client import Client
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import GRPC_QUIET

_tenant_numbers = itertools.count(1)

for _name, _value in GRPC_QUIET.items():
    os.environ.setdefault(_name, _value)  # the test process forks servers while its channels live


def fresh_dir(prefix: str) -> Path:
    """A new directory the embedded PostgreSQL's system user can reach.

    Not pytest's tmp_path: its root is mode 0700, reset by every pytest session.
    """
    path = Path(tempfile.mkdtemp(prefix=f"pairdb-{prefix}-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    path = fresh_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def local_cluster(prefix: str, **options: Any) -> AsyncIterator[LocalCluster]:
    """A started LocalCluster in a fresh directory, stopped and removed afterwards.

    PAIRDB_KEEP_TEST_DATA=1 keeps the cluster's data and logs for a post-mortem.
    """
    path = fresh_dir(prefix)
    local = LocalCluster(path, **options)
    try:
        await local.start()
        yield local
    finally:
        await local.stop()
        if not os.environ.get("PAIRDB_KEEP_TEST_DATA"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def cluster() -> AsyncIterator[LocalCluster]:
    """Three storage nodes and one coordinator over gRPC on loopback, metadata in real PostgreSQL."""
    async with local_cluster("cluster", storage_nodes=3, log_level="WARNING", temporal=False) as local:
        yield local


@pytest.fixture
async def client(cluster: LocalCluster) -> AsyncIterator[Client]:
    async with cluster.client() as c:
        yield c


@pytest.fixture
async def tenant(client: Client) -> str:
    """A fresh tenant (RF 3) per test, so tests never see each other's keys."""
    name = f"t{next(_tenant_numbers)}"
    await client.create_tenant(name, 3)
    return name


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def migration_cluster() -> AsyncIterator[LocalCluster]:
    """A cluster of its own for one migration test: PostgreSQL, Temporal dev server, three storage
    nodes, two coordinators and a migration worker, all real processes."""
    async with local_cluster("migration", storage_nodes=3, coordinators=2, log_level="INFO") as local:
        yield local
