"""The event loop a server process runs on: asyncio's own, or uvloop's (libuv) when asked for.

uvloop runs the loop's own work (callbacks, timers, sockets) in C; what it
saves shows in processes whose time goes to the loop rather than to gRPC's
own machinery. bench/rpc.py measures both; the servers' flag picks one.

A server also collects garbage less often than CPython's default: every
request allocates futures, records and protobuf messages that die young and
almost never form cycles, and with a collection every 700 allocations the
collector took a third of a coordinator's time on batch reads. Not much less
often, though: grpc.aio's server leaves a small reference cycle behind every
call it answers (its method lookup's closure and the call details it holds,
~6 objects), so a young collection always has garbage to free, and its pause
grows with the threshold: at 50,000 a coordinator under 440 requests/s
stopped for 74-86 ms every ~18 s, a stall every request in flight waited
out (storage nodes for 57-115 ms every ~40 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# Allocations between young collections, then young collections per older one, per oldest one.
# CPython's default is (700, 10, 10). Measured on this machine (batches of 1,000 keys, RF 3), against
# it: reads 6,500 -> 10,100 keys/s, writes 16,000 -> 18,800 keys/s, single-key writes and reads +10 %.
# 10,000 rather than 50,000: young pauses of 11-17 ms instead of 57-115 ms, at the same throughput
# (bench/rpc.py, alternating runs).
SERVER_GC_THRESHOLDS = (10_000, 50, 100)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped (None: nothing to stop)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await them together; the first to fail cancels the others, waits for them, and is raised.

    (asyncio.gather leaves the others running on; a TaskGroup raises an ExceptionGroup.)
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run(main: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    """Run a server's main coroutine to its end, on the loop asked for, collecting garbage as a server."""
    gc.set_threshold(*SERVER_GC_THRESHOLDS)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uvloop:
        import uvloop as uv  # imported only when asked for: not every install needs it

        factory = uv.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
