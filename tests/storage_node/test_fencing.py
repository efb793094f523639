"""A storage node refuses requests routed by an epoch older than its fence, and versions from the future.

A real StorageService over gRPC on loopback, in this process, on its own LMDB directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pairdb.kernel.keyspace import Version
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError
from pairdb.storage_node.engine import StoredRecord
from tests.support import MAX_OFFSET_MS, now_version, start_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeClient]:
    server, committer, engine, port = await start_node(tmp_path / "db")
    client = NodeClient("fenced", f"127.0.0.1:{port}")
    yield client
    await client.close()
    await server.stop(None)
    await committer.stop()
    engine.close()


def rec(key: str, version: Version, value: bytes = b"v") -> StoredRecord:
    return StoredRecord("t", key, value, version)


async def test_every_data_request_routed_by_an_older_epoch_than_the_fence_is_refused(
    node: NodeClient,
) -> None:
    assert await node.set_fence(5) == 5
    refusals = {
        "apply": node.apply(rec("k", now_version()), epoch=4),
        "apply_batch": node.apply_batch([rec("k", now_version())], epoch=4),
        "get": node.get("t", "k", epoch=4),
        "range_digest": node.range_digest(0, 0, epoch=4),
        "range_digests": node.range_digests([(0, 0)], epoch=4),
        "delete_range": node.delete_range(0, 0, epoch=4),
    }
    for name, call in refusals.items():
        with pytest.raises(StaleEpoch) as refused:
            await call
        assert refused.value.code == grpc.StatusCode.ABORTED, name
        assert refused.value.fence == 5, name
        assert "epoch 4" in refused.value.details and "fenced at epoch 5" in refused.value.details
    with pytest.raises(StaleEpoch):
        async for _ in node.scan_range(0, 0, epoch=4):
            pass
    assert (await node.stats()).keys == 0  # nothing half-written


async def test_requests_at_or_above_the_fence_are_served(node: NodeClient) -> None:
    await node.set_fence(5)
    assert (await node.apply(rec("k", now_version()), epoch=5)).applied
    assert await node.get("t", "k", epoch=6) is not None


async def test_the_fence_never_goes_back(node: NodeClient) -> None:
    assert await node.set_fence(9) == 9
    assert await node.set_fence(3) == 9
    with pytest.raises(StaleEpoch):
        await node.get("t", "k", epoch=8)


async def test_the_fence_survives_a_restart(tmp_path: Path) -> None:
    server, committer, engine, port = await start_node(tmp_path / "db")
    client = NodeClient("fenced", f"127.0.0.1:{port}")
    await client.set_fence(12)
    await client.close()
    await server.stop(None)
    await committer.stop()
    engine.close()

    server, committer, engine, port = await start_node(tmp_path / "db")
    client = NodeClient("fenced", f"127.0.0.1:{port}")
    try:
        with pytest.raises(StaleEpoch):
            await client.get("t", "k", epoch=11)
    finally:
        await client.close()
        await server.stop(None)
        await committer.stop()
        engine.close()


async def test_a_version_further_ahead_of_the_nodes_clock_than_the_maximum_offset_is_refused(
    node: NodeClient,
) -> None:
    with pytest.raises(StorageError) as refused:
        await node.apply(rec("k", now_version(ahead_ms=10 * MAX_OFFSET_MS)))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ahead of this node's clock" in refused.value.details
    with pytest.raises(StorageError):
        await node.apply_batch([rec("k", Version((1 << 64) - 1, 1))])
    # Within the offset is fine: clocks differ.
    assert (await node.apply(rec("k", now_version(ahead_ms=MAX_OFFSET_MS // 2)))).applied


async def test_an_apply_that_loses_reports_the_version_the_node_holds(node: NodeClient) -> None:
    newer, older = now_version(), now_version()
    newer, older = max(newer, older), Version(min(newer, older).hlc - 1, 1)
    assert (await node.apply(rec("k", newer, b"new"))).applied
    lost = await node.apply(rec("k", older, b"old"))
    assert (lost.applied, lost.current, lost.same) == (False, newer, False)
    again = await node.apply(rec("k", newer, b"new"))
    assert (again.applied, again.current, again.same) == (False, newer, True)
