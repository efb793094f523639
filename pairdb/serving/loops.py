"""The event loop a server process runs on: asyncio's own, or uvloop's (libuv) when asked for.

uvloop runs the loop's own work (callbacks, timers, sockets) in C; what it
saves shows in processes whose time goes to the loop rather than to gRPC's
own machinery. bench/rpc.py measures both; the servers' flag picks one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped (None: nothing to stop)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(main: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uvloop:
        import uvloop as uv  # imported only when asked for: not every install needs it

        factory = uv.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
