"""Merging token-ordered record streams of one range, in bounded memory.

Every storage node scans a range in the same order (clockwise from the
range's start, then by tenant and key: the engine's key order), so the
streams of several replicas merge like sorted files (k-way, with a heap): at
each position the newest version wins. Each stream is read ahead by its own
task into a small queue, so the network and the merge overlap; memory holds a
few batches per stream, whatever the size of the range.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from typing import TypeAlias

from pairdb.kernel.keyspace import StoredRecord
from pairdb.storage_node.engine import DIGEST_BYTES, digest_entry, range_hash
from pairdb.storage_node.layout import clockwise, encode_key

# Batches read ahead per stream.
READ_AHEAD = 4
# Records per merged batch.
OUT_BATCH = 1000

Stream: TypeAlias = AsyncIterator[list[StoredRecord]]
Position: TypeAlias = tuple[bool, bytes]


def position_in(start: int, end: int) -> Callable[[StoredRecord], Position]:
    """Where a record comes in a scan of (start, end]: the key streams are ordered by."""

    def position(record: StoredRecord) -> Position:
        # The token is read back from the key, which leads with it: hashed once, not twice.
        return clockwise(encode_key(record.tenant_id, record.key), start, end)

    return position


class _ReadAhead:
    """One stream, read by a task into a bounded queue; its failure surfaces where it is read."""

    _END = None

    def __init__(self, stream: Stream) -> None:
        self._queue: asyncio.Queue[list[StoredRecord] | BaseException | None] = asyncio.Queue(READ_AHEAD)
        self._task = asyncio.create_task(self._fill(stream))

    async def _fill(self, stream: Stream) -> None:
        try:
            async for batch in stream:
                if batch:
                    await self._queue.put(batch)
            await self._queue.put(self._END)
        except Exception as exc:
            await self._queue.put(exc)

    async def next_batch(self) -> list[StoredRecord] | None:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass


async def merged(
    streams: list[Stream], start: int, end: int, keep: Collection[str] | None = None
) -> AsyncGenerator[list[StoredRecord], None]:
    """The streams' records merged in scan order, newest version per key, in batches.

    keep: only records of these tenants (None: all).
    """
    position = position_in(start, end)
    readers = [_ReadAhead(s) for s in streams]
    try:
        batches: list[list[StoredRecord]] = [[] for _ in readers]
        offsets = [0] * len(readers)
        heap: list[tuple[Position, int]] = []

        async def advance(i: int) -> None:
            """Push stream i's next record onto the heap, reading its next batch when needed."""
            while offsets[i] >= len(batches[i]):
                batch = await readers[i].next_batch()
                if batch is None:
                    return
                batches[i], offsets[i] = batch, 0
            heapq.heappush(heap, (position(batches[i][offsets[i]]), i))

        for i in range(len(readers)):
            await advance(i)
        out: list[StoredRecord] = []
        while heap:
            at, i = heapq.heappop(heap)
            best = batches[i][offsets[i]]
            offsets[i] += 1
            await advance(i)
            while heap and heap[0][0] == at:  # the same key from other streams
                _, j = heapq.heappop(heap)
                other = batches[j][offsets[j]]
                offsets[j] += 1
                await advance(j)
                if other.newer_than(best):
                    best = other
            if keep is None or best.tenant_id in keep:
                out.append(best)
                if len(out) >= OUT_BATCH:
                    yield out
                    out = []
        if out:
            yield out
    finally:
        for reader in readers:
            await reader.close()


async def behind(
    source: AsyncIterator[list[StoredRecord]], target: Stream, start: int, end: int
) -> AsyncIterator[list[StoredRecord]]:
    """Records of source that target lacks or holds in an older form, both in scan order."""
    position = position_in(start, end)
    reader = _ReadAhead(target)
    try:
        have: list[StoredRecord] = []
        at = 0
        done = False
        async for batch in source:
            out = []
            for record in batch:
                mine = position(record)
                while not done:
                    if at >= len(have):
                        nxt = await reader.next_batch()
                        if nxt is None:
                            done = True
                            break
                        have, at = nxt, 0
                        continue
                    if position(have[at]) >= mine:
                        break
                    at += 1
                held = have[at] if not done and at < len(have) and position(have[at]) == mine else None
                if record.newer_than(held):
                    out.append(record)
            if out:
                yield out
    finally:
        await reader.close()


class RunningDigest:
    """Engine.digest computed over records fed in scan order, batch by batch."""

    def __init__(self) -> None:
        self._hash = range_hash()
        self.count = 0

    def add(self, records: list[StoredRecord]) -> None:
        for record in records:
            self._hash.update(digest_entry(record))
        self.count += len(records)

    def result(self) -> tuple[bytes, int]:
        return self._hash.digest()[:DIGEST_BYTES], self.count
