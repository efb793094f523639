"""The copy's pace: the operator's throttle as a ceiling, and less while the nodes' clients are busy.

Unit tests of activities/pace.py; the nodes are real NodeClients (never
connected) whose last reported load the tests set, as replies would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pairdb.activities.pace import (
    ADJUST_SECONDS,
    BUSY_DELAY_MS,
    FIRST_ADJUST_SECONDS,
    FLOOR_KEYS_PER_SECOND,
    FRESH_SECONDS,
    INCREASE_KEYS_PER_SECOND,
    QUIET_CLIENT_OPS,
    YIELD_START_KEYS_PER_SECOND,
    YIELDING_BATCH,
    YIELDING_RANGES,
    Pace,
    PaceState,
    Throttle,
)
from pairdb.storage_node.client import NodeClient, NodeLoad

BUSY = QUIET_CLIENT_OPS * 10
LATE = BUSY_DELAY_MS * 4
ON_TIME = BUSY_DELAY_MS / 4


@pytest.fixture
async def nodes() -> AsyncIterator[list[NodeClient]]:
    clients = [NodeClient(f"node-{i}", "127.0.0.1:9") for i in range(3)]
    yield clients
    for client in clients:
        await client.close()


def yielding(rate: float, *, halved: bool = False) -> PaceState:
    """The state a previous step left a yielding pace in."""
    return PaceState(rate, yielding=True, halved=halved)


def report(node: NodeClient, ops: float, delay_ms: float, at: float) -> None:
    node.load = NodeLoad(ops, delay_ms, at)


def steps(pace: Pace, start: float, n: int) -> list[float]:
    """The rate after each of n adjustments, one ADJUST_SECONDS apart (reports refreshed each time)."""
    rates = []
    for i in range(n):
        now = start + (i + 1) * ADJUST_SECONDS
        for node in pace_nodes(pace):
            if node.load is not None:
                node.load = NodeLoad(node.load.client_ops_per_second, node.load.scheduling_delay_ms, now)
        pace.follow(now)
        rates.append(pace.rate)
    return rates


def pace_nodes(pace: Pace) -> list[NodeClient]:
    return list(pace._nodes)  # the test refreshes what the nodes reported


async def test_a_new_throttle_starts_empty_so_a_copy_step_gets_no_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("pairdb.activities.pace.asyncio.sleep", sleep)
    monkeypatch.setattr("pairdb.activities.pace.activity.heartbeat", lambda *a: None)
    await Throttle(500).take(500)
    assert sum(slept) == pytest.approx(1.0, abs=0.05)


async def test_without_client_traffic_the_copy_runs_at_the_ceiling(nodes: list[NodeClient]) -> None:
    for node in nodes:
        report(node, QUIET_CLIENT_OPS / 2, LATE, 0.0)  # a busy loop alone is the copy's own doing
    unlimited, throttled = Pace(0, nodes, clock=lambda: 0.0), Pace(7000, nodes, clock=lambda: 0.0)
    assert steps(unlimited, 0.0, 3) == [0, 0, 0]
    assert steps(throttled, 0.0, 3) == [7000, 7000, 7000]


async def test_busy_clients_on_a_late_node_halve_the_rate_down_to_the_floor(nodes: list[NodeClient]) -> None:
    report(nodes[0], BUSY, ON_TIME, 0.0)
    report(nodes[1], BUSY, LATE, 0.0)
    rates = steps(Pace(0, nodes, start=yielding(8 * FLOOR_KEYS_PER_SECOND), clock=lambda: 0.0), 0.0, 6)
    assert rates[:3] == [4 * FLOOR_KEYS_PER_SECOND, 2 * FLOOR_KEYS_PER_SECOND, FLOOR_KEYS_PER_SECOND]
    assert rates[3:] == [FLOOR_KEYS_PER_SECOND] * 3


async def test_a_copy_that_finds_the_clients_busy_starts_yielding_from_a_modest_rate(
    nodes: list[NodeClient],
) -> None:
    pace = Pace(0, nodes, clock=lambda: 0.0)
    await pace.take(60_000)  # unlimited: no wait, however fast it goes alone
    report(nodes[0], BUSY, ON_TIME, 1.0)
    pace.follow(1.0)
    assert pace.rate == YIELD_START_KEYS_PER_SECOND * 1.25


async def test_busy_clients_on_nodes_that_keep_up_let_the_rate_grow_by_a_quarter_to_the_ceiling(
    nodes: list[NodeClient],
) -> None:
    ceiling = 5000
    for node in nodes:
        report(node, BUSY, ON_TIME, 0.0)
    pace = Pace(ceiling, nodes, start=yielding(FLOOR_KEYS_PER_SECOND), clock=lambda: 0.0)
    rates = steps(pace, 0.0, 12)
    expected = [FLOOR_KEYS_PER_SECOND]
    while len(expected) <= 12:
        expected.append(min(ceiling, expected[-1] * 1.25))
    assert rates == expected[1:]
    assert rates[-1] == ceiling


async def test_once_the_rate_had_to_halve_it_grows_by_a_fixed_step(nodes: list[NodeClient]) -> None:
    report(nodes[0], BUSY, LATE, 0.0)
    pace = Pace(0, nodes, start=yielding(8000), clock=lambda: 0.0)
    assert steps(pace, 0.0, 1) == [4000]
    report(nodes[0], BUSY, ON_TIME, 0.0)
    assert steps(pace, 1.0, 3) == [4000 + i * INCREASE_KEYS_PER_SECOND for i in (1, 2, 3)]


async def test_a_copy_step_goes_on_from_where_the_last_one_left_its_pace(nodes: list[NodeClient]) -> None:
    report(nodes[0], BUSY, LATE, 0.0)
    first = Pace(0, nodes, start=yielding(8000), clock=lambda: 0.0)
    steps(first, 0.0, 1)
    second = Pace(0, nodes, start=first.state, clock=lambda: 0.0)
    assert second.rate == 4000 and second.batch(10_000) < 10_000  # still yielding, small batches
    report(nodes[0], BUSY, ON_TIME, 0.0)
    assert steps(second, 1.0, 1) == [4000 + INCREASE_KEYS_PER_SECOND]  # still past its first halving
    # A step after one that had nobody to yield to starts at the ceiling; a lowered ceiling holds.
    assert Pace(7000, nodes, start=PaceState(7000, yielding=False, halved=False)).rate == 7000
    assert Pace(3000, nodes, start=yielding(4000)).rate == 3000


async def test_when_the_clients_leave_the_copy_goes_back_to_full_speed(nodes: list[NodeClient]) -> None:
    for node in nodes:
        report(node, BUSY, LATE, 0.0)
    pace = Pace(0, nodes, clock=lambda: 0.0)
    assert steps(pace, 0.0, 2)[-1] > 0
    for node in nodes:
        report(node, 0.0, ON_TIME, 0.0)
    assert steps(pace, 10.0, 1) == [0]


async def test_old_or_missing_reports_change_nothing(nodes: list[NodeClient]) -> None:
    pace = Pace(0, nodes, start=yielding(FLOOR_KEYS_PER_SECOND), clock=lambda: 0.0)
    pace.follow(ADJUST_SECONDS)  # nothing heard yet
    assert pace.rate == FLOOR_KEYS_PER_SECOND
    report(nodes[0], 0.0, ON_TIME, 0.0)  # quiet, but long ago
    pace.follow(FRESH_SECONDS + 1)
    assert pace.rate == FLOOR_KEYS_PER_SECOND


async def test_the_rate_changes_at_most_once_per_adjustment_period(nodes: list[NodeClient]) -> None:
    for node in nodes:
        report(node, BUSY, LATE, 1.0)
    pace = Pace(0, nodes, clock=lambda: 0.0)
    pace.follow(1.0)
    first = pace.rate
    pace.follow(1.0 + ADJUST_SECONDS / 2)
    assert pace.rate == first


async def test_a_copy_step_yields_soon_after_it_starts_not_a_whole_period_later(
    nodes: list[NodeClient],
) -> None:
    pace = Pace(0, nodes, clock=lambda: 0.0)
    await pace.take(1000)
    report(nodes[0], BUSY, LATE, FIRST_ADJUST_SECONDS)
    pace.follow(FIRST_ADJUST_SECONDS / 2)
    assert pace.rate == 0
    pace.follow(FIRST_ADJUST_SECONDS)
    assert pace.rate == YIELD_START_KEYS_PER_SECOND / 2


async def test_while_the_copy_yields_only_a_few_ranges_go_at_once(nodes: list[NodeClient]) -> None:
    running, most = 0, 0

    async def copy_one(pace: Pace) -> None:
        nonlocal running, most
        async with pace.turn():
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    alone = Pace(0, nodes, parallel=16)
    await asyncio.gather(*(copy_one(alone) for _ in range(40)))
    assert most == 16  # nobody to yield to: every range the step allows
    most = 0
    yielding_pace = Pace(0, nodes, start=yielding(FLOOR_KEYS_PER_SECOND), parallel=16)
    await asyncio.gather(*(copy_one(yielding_pace) for _ in range(40)))
    assert most == YIELDING_RANGES


async def test_a_turn_takes_on_about_a_second_of_keys_at_the_rate_in_force(nodes: list[NodeClient]) -> None:
    # Nothing to heed: a turn takes as much as asked.
    assert Pace(0, nodes, parallel=16).turn_keys(2000) == 2000
    # Throttled to 320 keys/s over 16 turns at once: 20 keys each, one checkpoint a second per turn.
    assert Pace(320, nodes, parallel=16).turn_keys(2000) == 20
    # Yielding at the floor: YIELDING_RANGES turns at once share it.
    pace = Pace(0, nodes, start=yielding(FLOOR_KEYS_PER_SECOND), parallel=16)
    assert pace.turn_keys(2000) == min(YIELDING_BATCH, int(FLOOR_KEYS_PER_SECOND / YIELDING_RANGES))
    # Never none.
    assert Pace(1, nodes, parallel=16).turn_keys(2000) == 1
