"""A running LocalCluster keeps its secrets: no password on any command line, no data readable by others."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from pairdb.local.cluster import LocalCluster
from tests.conftest import local_cluster


@pytest.fixture(scope="module")
async def secured() -> AsyncIterator[LocalCluster]:
    async with local_cluster("secrets", storage_nodes=3, log_level="WARNING") as local:
        yield local


def _children(cluster: LocalCluster) -> list[psutil.Process]:
    pids = [c.process.pid for c in cluster.coordinator_procs] + [
        n.process.pid for n in cluster.nodes.values()
    ]
    pids += [
        cluster.worker.pid if cluster.worker else None,
        cluster.postgres.pid,
        cluster.temporal_server.pid,
    ]
    assert None not in pids
    return [psutil.Process(pid) for pid in pids if pid is not None]


async def test_no_child_command_line_holds_the_postgres_password(secured: LocalCluster) -> None:
    password = secured.postgres.password_file.read_text().strip()
    assert password and password in secured.dsn
    children = _children(secured)
    assert len(children) == 7
    for child in children:
        assert password not in " ".join(child.cmdline()), child.name()
    # ... yet the coordinator and the worker have it: they are serving.
    async with secured.client() as client:
        assert [n.node_id for n in await client.nodes()] == ["node-1", "node-2", "node-3"]


def _open_to_others(path: Path, *, traversal_allowed: bool) -> bool:
    mode = stat.S_IMODE(path.lstat().st_mode)
    if traversal_allowed:
        mode &= ~stat.S_IXOTH
    return bool(mode & 0o077)


async def test_the_data_dir_tree_is_private_to_its_user(secured: LocalCluster) -> None:
    # As root, PostgreSQL runs as an unprivileged user, which must search (never list) the
    # directories above its data dir: o+x there is the one permission others get.
    root = os.geteuid() == 0
    above_postgres = {secured.data_dir, *secured.data_dir.parents}
    exposed = []
    for dirpath, dirnames, filenames in os.walk(secured.data_dir):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            if _open_to_others(path, traversal_allowed=root and path in above_postgres):
                exposed.append(f"{oct(stat.S_IMODE(path.lstat().st_mode))} {path}")
    if _open_to_others(secured.data_dir, traversal_allowed=root):
        exposed.append(f"{oct(stat.S_IMODE(secured.data_dir.stat().st_mode))} {secured.data_dir}")
    assert exposed == []
    for sub in ("logs", "nodes", "postgres", "temporal"):
        assert stat.S_IMODE((secured.data_dir / sub).stat().st_mode) == 0o700, sub
