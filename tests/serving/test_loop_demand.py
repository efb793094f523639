"""How much of the time the event loop has work (serving/loop_demand.py): a spinning loop nearly all
of it, an idle one hardly any; nothing where the kernel does not say."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pairdb.serving.loop_demand import BUSY_SHARE, SCHEDSTAT, WINDOW_SECONDS, LoopDemand

needs_schedstat = pytest.mark.skipif(not SCHEDSTAT.exists(), reason="the kernel keeps no schedstat here")


@needs_schedstat
async def test_a_loop_that_keeps_working_is_busy_and_an_idle_one_is_not() -> None:
    demand = LoopDemand()
    assert demand.available
    demand.start()
    try:
        await asyncio.sleep(2.2 * WINDOW_SECONDS)
        assert not demand.busy(), demand.share
        for _ in range(3):  # work on the loop, yielding to the sampler between pieces
            until = time.monotonic() + WINDOW_SECONDS
            while time.monotonic() < until:
                pass
            await asyncio.sleep(0)
        assert demand.busy(), demand.share
        assert demand.share >= BUSY_SHARE
    finally:
        await demand.stop()


async def test_where_the_kernel_does_not_say_nothing_is_known(tmp_path: Path) -> None:
    demand = LoopDemand(tmp_path / "absent")
    assert not demand.available
    demand.start()
    await asyncio.sleep(0.01)
    await demand.stop()
    assert not demand.busy()
