"""A copy's target pulls ranges from one old replica (its source) and applies them itself.

The worker once stood between the two: it read the source's packed entries
and sent them on, so every byte crossed gRPC and TLS twice more, and the
worker's CPU was about a quarter of what a copy of large values cost. Now the
worker asks the target for a bounded piece of the ranges (PullRanges), and the
target streams that piece from the source (ScanRange, packed entries), checks
every entry as ApplyMany does, and stores each batch's entries where newer, as
they came: a few commits in flight while the next batch arrives. The piece's bounds are the
worker's pace: it asks for about what its rate allows per call.

A failure on the source's side (unreachable, fenced, entries that do not
parse or that a check refuses) is a SourceFailed, which the service turns
into the call's status with the source named, so the worker pulls from
another old replica instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from pairdb.proto import storage_pb2
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError
from pairdb.storage_node.layout import Entry, MalformedEntries, split_entries

# Batches committing at once on the target while the next arrives.
COMMITS_IN_FLIGHT = 3

# Applies a batch of the source's entries where newer; how many were. Raises SourceFailed for
# entries its checks refuse, Fenced once the target is fenced past the pull's epoch.
Apply = Callable[[list[Entry]], Awaitable[int]]


class Fenced(Exception):
    """The target itself is fenced past the pull's epoch (the copy was cancelled or overtaken)."""

    def __init__(self, fence: int) -> None:
        super().__init__(f"fenced at epoch {fence}")
        self.fence = fence


class SourceFailed(Exception):
    """The source failed the pull: its status, why, and the fence it reported (if fenced)."""

    def __init__(self, code: grpc.StatusCode, why: str, fence: int | None = None) -> None:
        super().__init__(why)
        self.code = code
        self.why = why
        self.fence = fence


@dataclass
class _Progress:
    """A pull's running totals, range by range, and the last key applied."""

    pulled: dict[int, storage_pb2.RangePulled] = field(default_factory=dict)
    count: int = 0
    size: int = 0
    last: tuple[int, bytes] | None = None

    def add(self, at: int, count: int, size: int) -> storage_pb2.RangePulled:
        one = self.pulled.get(at)
        if one is None:
            one = self.pulled[at] = storage_pb2.RangePulled(range=at)
        one.entries += count
        one.bytes += size
        self.count += count
        self.size += size
        return one

    def full(self, max_entries: int, max_bytes: int) -> bool:
        return bool(max_entries and self.count >= max_entries) or bool(max_bytes and self.size >= max_bytes)


async def pull(
    source: NodeClient, request: storage_pb2.PullRangesRequest, apply: Apply, timeout: float | None
) -> storage_pb2.PullRangesResponse:
    """The request's piece of its ranges, streamed from source and applied; what moved, where to go on."""
    ranges = [(r.start, r.end) for r in request.ranges]
    progress = _Progress()
    # Commits in flight while the next batch arrives: the group committer makes one of those that
    # queue up meanwhile (and of other pulls' batches), so a big range is not one fsync per batch.
    committing: deque[tuple[storage_pb2.RangePulled, asyncio.Future[int]]] = deque()
    done = True
    scan = source.scan_entries_many(
        ranges,
        at=request.at,
        after=request.after,
        batch_size=request.batch_size,
        epoch=request.epoch,
        timeout=timeout,
    )

    async def settle_one() -> None:
        one, commit = committing[0]
        one.applied += await commit
        committing.popleft()

    try:
        async with contextlib.aclosing(scan):
            async for at, entries, count in scan:
                try:
                    batch = split_entries(entries)  # stored as they came: not decoded into records
                except MalformedEntries as exc:
                    raise SourceFailed(grpc.StatusCode.DATA_LOSS, f"entries: {exc}") from None
                if not batch:
                    continue
                if len(committing) >= COMMITS_IN_FLIGHT:
                    await settle_one()
                progress.last = (at, batch[-1][0])
                committing.append(
                    (progress.add(at, count, len(entries)), asyncio.ensure_future(apply(batch)))
                )
                if progress.full(request.max_entries, request.max_bytes):
                    done = False
                    break
            while committing:
                await settle_one()
    except StaleEpoch as exc:
        raise SourceFailed(exc.code, exc.details, exc.fence) from None
    except StorageError as exc:
        raise SourceFailed(exc.code, exc.details) from None
    finally:
        for _, commit in committing:  # the call failed: its commits still end before the reply
            with contextlib.suppress(Exception):
                await commit
    reply = storage_pb2.PullRangesResponse(pulled=progress.pulled.values(), done=done)
    if not done and progress.last is not None:
        reply.next_at, reply.next_after = progress.last
    if source.load is not None:
        reply.source_load.CopyFrom(source.load.to_proto())
    return reply
