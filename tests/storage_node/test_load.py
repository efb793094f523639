"""What a node tells a copy of its client traffic (storage_node/load.py, NodeLoad in proto/storage.proto).

The meter alone, then a real StorageService over gRPC on loopback: client
reads and writes are counted, a copy's own calls are not, and every reply to
a copy carries the count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairdb.kernel.keyspace import TOKEN_MAX
from pairdb.storage_node.client import NodeClient
from pairdb.storage_node.engine import StoredRecord
from pairdb.storage_node.load import WINDOW_SECONDS, LoadMeter
from tests.support import now_version, start_node


async def test_the_meter_sees_a_loop_kept_late_on_average() -> None:
    meter = LoadMeter()
    meter.start()
    try:
        await asyncio.sleep(0.1)
        assert meter.report().scheduling_delay_ms < 10  # an idle loop runs its timers on time
        for _ in range(8):
            time.sleep(0.05)  # noqa: ASYNC251 - the loop is blocked on purpose: as if the CPU were taken
            await asyncio.sleep(0)
        assert meter.report().scheduling_delay_ms >= 20
    finally:
        await meter.stop()


async def test_the_meter_counts_client_ops_per_window_and_forgets_them() -> None:
    meter = LoadMeter()
    meter.served(300)
    assert meter.report().client_ops_per_second >= 300 / WINDOW_SECONDS
    await asyncio.sleep(2.2 * WINDOW_SECONDS)
    assert meter.report().client_ops_per_second == 0


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[NodeClient]:
    server, committer, engine, port = await start_node(tmp_path / "db", "loaded")
    node = NodeClient("loaded", f"127.0.0.1:{port}")
    yield node
    await node.close()
    await server.stop(None)
    await committer.stop()
    engine.close()


async def test_a_copys_calls_carry_the_client_traffic_and_are_not_counted_in_it(client: NodeClient) -> None:
    copied = [StoredRecord("t", f"c{i}", b"v", now_version()) for i in range(200)]
    await client.apply_batch(copied)  # the copy's own write
    assert client.load is not None and client.load.client_ops_per_second == 0
    written = [StoredRecord("t", f"k{i}", b"v", now_version()) for i in range(40)]
    await asyncio.gather(*(client.apply(r) for r in written))
    await asyncio.gather(*(client.get("t", r.key) for r in written))
    batches = [b async for b in client.scan_range(0, TOKEN_MAX, batch_size=100)]
    assert sum(len(b) for b in batches) == 240
    assert client.load.client_ops_per_second >= 80 / WINDOW_SECONDS
    heard = client.load.at
    await client.apply_batch(copied[:1])
    assert client.load.at > heard


async def test_a_cleanups_deletes_carry_the_client_traffic_too(client: NodeClient) -> None:
    await client.apply(StoredRecord("t", "k", b"v", now_version()))
    assert client.load is None  # a client write's reply carries nothing
    assert await client.delete_range(0, 0) == 1
    assert client.load is not None and client.load.client_ops_per_second > 0
