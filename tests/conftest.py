"""Shared fixtures: a real local cluster (PostgreSQL, storage nodes, coordinator) per test session."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairdb.client import Client
from pairdb.cluster import LocalCluster

_tenant_numbers = itertools.count(1)


@pytest.fixture(scope="session")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    """Three storage nodes and one coordinator over gRPC on loopback, metadata in real PostgreSQL."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), storage_nodes=3, log_level="WARNING")
    try:
        await local.start()
        yield local
    finally:
        await local.stop()


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
