"""A step's range checkpoints: queued without waiting, written in batches, all written before it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pairdb.activities.checkpoints import Checkpoints


class Store:
    """Records each write; a write waits until the test lets it finish, or fails when told to."""

    def __init__(self) -> None:
        self.writes: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: Exception | None = None

    async def write(self, batch: Sequence[int]) -> None:
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        self.writes.append(list(batch))


async def test_checkpoints_queued_during_a_write_go_together_in_the_next_one() -> None:
    store = Store()
    store.gate.clear()
    async with Checkpoints(store.write) as checkpoints:
        checkpoints.add(1)  # the first write starts at once, and waits at the gate
        await asyncio.sleep(0)
        for index in (2, 3, 4):
            checkpoints.add(index)  # add never waits for the store
        store.gate.set()
    assert store.writes == [[1], [2, 3, 4]]


async def test_what_follows_a_write_runs_after_each_write_not_only_at_the_end() -> None:
    store = Store()
    store.gate.clear()
    seen: list[int] = []

    async def report() -> None:
        seen.append(sum(len(batch) for batch in store.writes))  # what is written when it runs

    async with Checkpoints(store.write, then=report) as checkpoints:
        checkpoints.add(1)
        await asyncio.sleep(0)
        checkpoints.add(2)
        checkpoints.add(3)
        store.gate.set()
        await asyncio.sleep(0.01)
        assert seen == [1, 3]  # the operator saw the first range before the block ended
    assert seen == [1, 3]


async def test_leaving_the_block_writes_every_checkpoint_first() -> None:
    store = Store()
    async with Checkpoints(store.write) as checkpoints:
        for index in range(5):
            checkpoints.add(index)
    assert sorted(i for batch in store.writes for i in batch) == [0, 1, 2, 3, 4]


async def test_a_failed_write_stops_the_step_at_its_next_checkpoint() -> None:
    store = Store()
    store.failure = ConnectionError("PostgreSQL is unreachable")
    with pytest.raises(ConnectionError, match="unreachable"):
        async with Checkpoints(store.write) as checkpoints:
            checkpoints.add(1)
            await asyncio.sleep(0.01)
            checkpoints.add(2)


async def test_a_failed_write_fails_the_step_that_otherwise_succeeded() -> None:
    store = Store()
    store.failure = ConnectionError("PostgreSQL is unreachable")
    with pytest.raises(ConnectionError):
        async with Checkpoints(store.write) as checkpoints:
            checkpoints.add(1)


async def test_a_failing_step_still_records_the_ranges_it_finished_and_raises_its_own_error() -> None:
    store = Store()
    with pytest.raises(ValueError, match="range 7"):
        async with Checkpoints(store.write) as checkpoints:
            checkpoints.add(6)
            raise ValueError("range 7 failed")
    assert store.writes == [[6]]


async def test_a_cancelled_step_stops_its_writer() -> None:
    store = Store()
    store.gate.clear()

    async def step() -> None:
        async with Checkpoints(store.write) as checkpoints:
            checkpoints.add(1)
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(step())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.gate.set()
    await asyncio.sleep(0.01)
    assert store.writes == []
