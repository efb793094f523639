"""Group commit: many concurrent applies share one durable LMDB transaction.

Writes queue up while a commit (and its fsync) runs on the single writer
thread; the next commit takes everything queued. Throughput follows the
number of concurrent writers instead of the fsync rate, and the event loop
never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from pairdb.storage_node.engine import Applied, Engine
from pairdb.storage_node.layout import Entry

MAX_GROUP = 2048
# Records a range deletion visits per commit.
DELETE_SLICE = 1000


class GroupCommitter:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # One thread: LMDB allows one write transaction at a time anyway.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-writer")
        self._pending: list[tuple[Sequence[Entry], asyncio.Future[list[Applied]]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, future in self._pending:
            if not future.done():
                future.set_exception(RuntimeError("storage node is shutting down"))
        self._writer.shutdown(wait=True)

    async def apply(self, entries: Sequence[Entry]) -> list[Applied]:
        """Engine.apply_entries, durably; returns once they are committed to disk."""
        future: asyncio.Future[list[Applied]] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, future))
        self._wakeup.set()
        return await future

    async def raise_fence(self, epoch: int) -> int:
        """Engine.raise_fence, after every apply queued before this call has committed.

        The caller refuses stale requests from the moment it calls this; what it
        let in before must be on disk before the fence is reported raised.
        """
        await self.apply([])
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._engine.raise_fence, epoch)

    async def delete_range(self, start: int, end: int, tenants: frozenset[str] = frozenset()) -> int:
        """Engine.delete_range on the writer thread, after every apply queued before it.

        In slices of DELETE_SLICE records, a commit each: the client writes that
        arrive meanwhile commit between two slices instead of waiting for a whole
        range (a cleanup deletes a quarter of a node's data). Only ranges no replica
        set holds the node to are deleted, so nobody reads one half done.
        """
        await self.apply([])
        loop = asyncio.get_running_loop()
        deleted, after = 0, None
        while True:
            slice_ = functools.partial(
                self._engine.delete_slice, start, end, tenants, limit=DELETE_SLICE, after=after
            )
            # The writer runs jobs in turn: a group of client writes queued meanwhile goes first.
            count, after = await loop.run_in_executor(self._writer, slice_)
            deleted += count
            if after is None:
                return deleted

    async def purge_tombstones(
        self, start: int, end: int, cutoffs: Mapping[str, int], repaired_at: int = 0
    ) -> int:
        """Engine.purge_tombstones on the writer thread, after every apply queued before it."""
        await self.apply([])
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self._engine.purge_tombstones, start, end, cutoffs, repaired_at
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group, size = [], 0
                while self._pending and size < MAX_GROUP:
                    item = self._pending.pop(0)
                    group.append(item)
                    size += len(item[0])
                flat = [e for entries, _ in group for e in entries]
                try:
                    results = await loop.run_in_executor(self._writer, self._engine.apply_entries, flat)
                except Exception as exc:  # a failed commit fails every write in it
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                offset = 0
                for entries, future in group:
                    if not future.done():
                        future.set_result(results[offset : offset + len(entries)])
                    offset += len(entries)
