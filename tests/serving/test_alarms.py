"""Alarms: many timed callbacks, in time order, behind one loop timer."""

from __future__ import annotations

import asyncio

from pairdb.serving.alarms import Alarms


async def test_alarms_ring_in_time_order_whatever_the_order_they_were_set_in() -> None:
    alarms, rung = Alarms(), list[float]()
    now = asyncio.get_running_loop().time()
    for delay in (0.03, 0.01, 0.02):
        alarms.at(now + delay, rung.append, delay)
    await asyncio.sleep(0.01)
    alarms.at(now, rung.append, 0.0)  # already due: rings at once, before the later ones
    await asyncio.sleep(0.06)
    assert rung == [0.01, 0.0, 0.02, 0.03]
    assert len(alarms) == 0


async def test_an_alarm_earlier_than_all_others_rearms_the_one_timer() -> None:
    alarms, rung = Alarms(), list[str]()
    now = asyncio.get_running_loop().time()
    alarms.at(now + 5, rung.append, "late")
    alarms.at(now + 0.01, rung.append, "early")
    await asyncio.sleep(0.05)
    assert rung == ["early"] and len(alarms) == 1
