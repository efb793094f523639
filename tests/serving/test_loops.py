"""The loop a server runs on: its own garbage-collection thresholds, uvloop when asked."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from pairdb.serving import loops


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


async def _thresholds_and_loop() -> tuple[tuple[int, ...], str]:
    return gc.get_threshold(), type(asyncio.get_running_loop()).__module__


@pytest.mark.usefixtures("restored_gc")
def test_a_server_collects_young_garbage_less_often_than_cpythons_default() -> None:
    thresholds, _ = loops.run(_thresholds_and_loop())
    assert thresholds == loops.SERVER_GC_THRESHOLDS
    assert thresholds[0] > 700


@pytest.mark.usefixtures("restored_gc")
@pytest.mark.parametrize(("uvloop", "module"), [(True, "uvloop"), (False, "asyncio")])
def test_the_loop_is_uvloop_only_when_asked_for(uvloop: bool, module: str) -> None:
    _, loop_module = loops.run(_thresholds_and_loop(), uvloop=uvloop)
    assert loop_module.startswith(module)


async def test_gather_all_returns_every_result_in_order() -> None:
    async def later(value: int) -> int:
        await asyncio.sleep(0.01 * (3 - value))
        return value

    assert await loops.gather_all(later(i) for i in range(3)) == [0, 1, 2]


async def test_gather_all_cancels_the_others_when_one_fails_and_raises_its_error() -> None:
    stopped: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("range 3 failed")

    with pytest.raises(ValueError, match="range 3 failed"):
        await loops.gather_all([forever(), fails(), forever()])
    # Both others were cancelled and had stopped before the error reached the caller.
    assert stopped == ["cancelled", "cancelled"]
