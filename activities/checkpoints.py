"""A step's range checkpoints, written in batches while the ranges go on.

A copy, a verification or a repair step records each range it finished so
that a retried step skips it. One write (and one PostgreSQL commit, one fsync)
per range cost a range ~25 ms, longer than copying a small range, and held its
turn while it waited. Here a range's checkpoint is queued and the step moves on;
one writer writes everything queued since its last write in one go (natural
batching, as the coordinator's replica calls: no delay while idle). A
checkpoint lost to a crash only means the range is done again, which every
step allows; the step ends only once all of its checkpoints are written.
What should follow each write (a step's progress for the operator) is `then`,
so progress moves as ranges finish, not only when a step ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class Checkpoints(Generic[T]):
    """Queue checkpoints with add(); `async with` writes what is left on the way out."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        then: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._write = write
        self._then = then
        self._queued: list[T] = []
        self._writer: asyncio.Task[None] | None = None

    def add(self, checkpoint: T) -> None:
        """Queue a checkpoint; raises what the last write raised, so a step stops at the first failure."""
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            if (failure := self._writer.exception()) is not None:
                raise failure
        self._queued.append(checkpoint)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())

    async def flush(self) -> None:
        """Wait until every queued checkpoint is written (or raise why one could not be)."""
        if self._writer is not None:
            await self._writer

    async def _drain(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            await self._write(batch)
            if self._then is not None:
                await self._then()

    async def __aenter__(self) -> Checkpoints[T]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            await self.flush()
            return
        if isinstance(error, asyncio.CancelledError) or self._writer is None:
            if self._writer is not None:
                self._writer.cancel()
            return
        # The step failed: still record the ranges it finished, but its own error is the one raised.
        with contextlib.suppress(Exception):
            await self.flush()
