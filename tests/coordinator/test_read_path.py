"""When a batch read asks spare replicas: only when the batch is slower than recent batches were.

Unit test of read_path.py: a real TopologyCache over scripted metadata, scripted
storage nodes whose answers the test gives, and the event loop's clock in the
test's hands (no wall-clock waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from pairdb.coordinator.metadata import NodeInfo, Snapshot, TenantInfo
from pairdb.coordinator.quorum import Consistency
from pairdb.coordinator.read_path import ReadPath
from pairdb.kernel.keyspace import StoredRecord
from pairdb.kernel.migration import NodeState
from tests.coordinator.test_topology import FlakyMetadata, started

NODES = ("n1", "n2", "n3")
BATCH_KEYS = 1000  # a full batch: its answers outnumber the window of single answers


class ThreeNodes(FlakyMetadata):
    async def snapshot(self) -> Snapshot:
        nodes = {n: NodeInfo(n, "127.0.0.1", i + 1, NodeState.ACTIVE, 1) for i, n in enumerate(NODES)}
        tokens = [(100 * (i + 1), n) for i, n in enumerate(NODES)]
        return Snapshot(self.epoch_value, nodes, tokens, {"t": TenantInfo("t", 3, datetime.now(UTC))})


class Node:
    def __init__(self) -> None:
        self.asks: list[asyncio.Future[StoredRecord | None]] = []

    def submit_get(self, tenant_id: str, key: str, *, epoch: int) -> asyncio.Future[StoredRecord | None]:
        ask: asyncio.Future[StoredRecord | None] = asyncio.get_running_loop().create_future()
        self.asks.append(ask)
        return ask

    async def get_many(self, keys: list[tuple[str, str]], *, epoch: int) -> list[StoredRecord | None]:
        """A batch's direct call: answered, key by key, when the test answers."""
        return list(await asyncio.gather(*(self.submit_get(t, k, epoch=epoch) for t, k in keys)))


class Pool:
    timeout = 10.0

    def __init__(self) -> None:
        self.nodes = {n: Node() for n in NODES}

    def node(self, node_id: str, address: str) -> Node:
        return self.nodes[node_id]

    def asks(self) -> int:
        return sum(len(node.asks) for node in self.nodes.values())

    def answer_all(self) -> None:
        for node in self.nodes.values():
            for ask in node.asks:
                if not ask.done():
                    ask.set_result(None)


class Clock:
    """The running loop's clock, moved only by the test."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = loop.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Clock]:
    loop = asyncio.get_running_loop()  # the test's own loop
    c = Clock(loop)
    monkeypatch.setattr(loop, "time", c)
    yield c


async def yield_to_the_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def batch(reads: ReadPath, pool: Pool, clock: Clock, seconds: float) -> int:
    """One batch read whose replicas all answer after `seconds`; how many spare asks it made."""
    before = pool.asks()
    keys = [("t", f"k{i}") for i in range(BATCH_KEYS)]
    task = asyncio.ensure_future(reads.get_many(keys, Consistency.QUORUM))
    await yield_to_the_loop()
    first = pool.asks() - before
    clock.now += seconds
    await yield_to_the_loop()  # an alarm due by now rings before the answers come
    spares = pool.asks() - before - first
    pool.answer_all()
    results = await task
    assert len(results) == BATCH_KEYS
    return spares


async def test_a_batch_as_slow_as_recent_batches_asks_no_spare_replicas(clock: Clock) -> None:
    metadata = ThreeNodes()
    cache = await started(metadata, lease=3600.0, poll_interval=3600.0)
    pool = Pool()
    reads = ReadPath(cache, cast(Any, pool), cast(Any, None), cast(Any, None))
    try:
        # Batches come back in 10 ms or in 40 ms, as a busy coordinator's do.
        for seconds in (0.010, 0.040) * 4:
            await batch(reads, pool, clock, seconds)
        # A batch answered in 30 ms was faster than recent batches: no reason to ask spares. (Timed
        # answer by answer, the wait followed the last batch alone: 10 ms, and 30 ms outlasted it.)
        assert await batch(reads, pool, clock, 0.010) == 0
        assert await batch(reads, pool, clock, 0.030) == 0
        # One far slower than any lately: each of its keys asks its third replica.
        assert await batch(reads, pool, clock, 5.0) == BATCH_KEYS
    finally:
        await cache.stop()
