"""The group committer: one writer thread, client writes and range deletions in turn.

Unit tests of committer.py over a real LMDB engine (no gRPC).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pairdb.kernel.keyspace import Version
from pairdb.storage_node.committer import BACKGROUND_GROUP_WHILE_BUSY, DELETE_SLICE, GroupCommitter
from pairdb.storage_node.engine import Engine, StoredRecord
from pairdb.storage_node.layout import encode_entry


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[tuple[Engine, GroupCommitter]]:
    engine = Engine(tmp_path / "db")
    committer = GroupCommitter(engine)
    committer.start()
    try:
        yield engine, committer
    finally:
        await committer.stop()
        engine.close()


async def test_a_client_write_commits_between_the_slices_of_a_big_deletion(
    started: tuple[Engine, GroupCommitter],
) -> None:
    engine, committer = started
    doomed = [StoredRecord("old", f"k{i}", b"v", Version(10 << 16, 1)) for i in range(20 * DELETE_SLICE)]
    engine.apply_many(doomed)
    deleting = asyncio.ensure_future(committer.delete_range(0, 0, frozenset({"old"})))
    for _ in range(5000):  # until the first slice is committed (the engine's thread, not ours)
        if engine.stats().keys < len(doomed):
            break
        await asyncio.sleep(0.001)
    await committer.apply([encode_entry(StoredRecord("t", "k", b"v", Version(20 << 16, 1)))])
    assert not deleting.done(), "the write did not wait for the whole range"
    assert await deleting == len(doomed)
    assert engine.stats().keys == 1


@pytest.mark.parametrize("clients_writing", [True, False])
async def test_while_clients_write_a_deletion_commits_slices_no_larger_than_a_copys(
    started: tuple[Engine, GroupCommitter], clients_writing: bool
) -> None:
    """A client write that arrives during a slice waits for its commit: keep it as short as a copy's."""
    engine, committer = started
    doomed = [StoredRecord("old", f"k{i}", b"v", Version(10 << 16, 1)) for i in range(2 * DELETE_SLICE)]
    engine.apply_many(doomed)
    slices: list[int] = []
    delete_slice = engine.delete_slice

    def recorded(*args: Any, **kwargs: Any) -> tuple[int, bytes | None]:
        count, after = delete_slice(*args, **kwargs)
        slices.append(count)
        return count, after

    engine.delete_slice = recorded  # type: ignore[method-assign]
    if clients_writing:
        await committer.apply([encode_entry(StoredRecord("t", "k", b"v", Version(20 << 16, 1)))])
    assert await committer.delete_range(0, 0, frozenset({"old"})) == len(doomed)
    assert slices[0] == (BACKGROUND_GROUP_WHILE_BUSY if clients_writing else DELETE_SLICE)


def _entries(tenant: str, count: int, hlc: int = 10) -> list[tuple[bytes, bytes]]:
    return [encode_entry(StoredRecord(tenant, f"k{i}", b"v", Version(hlc << 16, 1))) for i in range(count)]


async def test_a_client_write_commits_before_the_rest_of_a_copy_queued_ahead_of_it(
    started: tuple[Engine, GroupCommitter],
) -> None:
    """A copy's entries commit in small slices while clients write: a client write waits for one."""
    engine, committer = started
    await committer.apply(_entries("t", 1))  # clients are writing
    copying = asyncio.ensure_future(
        committer.apply_background(_entries("copy", 40 * BACKGROUND_GROUP_WHILE_BUSY))
    )
    await asyncio.sleep(0)  # the copy is queued first
    await committer.apply(_entries("t", 1, hlc=20))
    assert not copying.done(), "the client write waited for the whole copy"
    assert all(result.applied for result in await copying)
    assert engine.stats().keys == 1 + 40 * BACKGROUND_GROUP_WHILE_BUSY


async def test_a_copy_goes_on_while_clients_write_without_a_pause(
    started: tuple[Engine, GroupCommitter],
) -> None:
    """Client writes that never stop queueing do not hold a copy back for ever."""
    _, committer = started
    stop = False
    writes: list[asyncio.Future[object]] = []

    async def clients() -> None:
        i = 0
        while not stop:  # a new write at every turn of the loop, up to 50 in flight: always one queued
            if sum(not write.done() for write in writes[-50:]) < 50:
                writes.append(asyncio.ensure_future(committer.apply(_entries("t", 1, hlc=10 + i))))
                i += 1
            await asyncio.sleep(0)

    try:
        writing = asyncio.ensure_future(clients())
        await asyncio.sleep(0.05)
        copied = await asyncio.wait_for(
            committer.apply_background(_entries("copy", 10 * BACKGROUND_GROUP_WHILE_BUSY)), 10
        )
        assert len(copied) == 10 * BACKGROUND_GROUP_WHILE_BUSY
    finally:
        stop = True
        await writing
        await asyncio.gather(*writes)


async def test_a_fence_is_raised_after_every_copy_entry_queued_before_it(
    started: tuple[Engine, GroupCommitter],
) -> None:
    """What a node let in before the fence is on disk before the fence counts: copies too."""
    engine, committer = started
    await committer.apply(_entries("t", 1))
    copying = asyncio.ensure_future(
        committer.apply_background(_entries("copy", 20 * BACKGROUND_GROUP_WHILE_BUSY))
    )
    await asyncio.sleep(0)
    assert await committer.raise_fence(5) == 5
    assert copying.done() and engine.stats().keys == 1 + 20 * BACKGROUND_GROUP_WHILE_BUSY
