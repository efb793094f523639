"""Coalescing: concurrent items share calls, and each keeps its own outcome and deadline.

Unit tests of coalescing.py against a scripted sender (no node): each call the
coalescer makes is recorded and answered when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pairdb.storage_node.coalescing import Caps, Coalescer


class Expired(Exception):
    pass


@dataclass
class Call:
    epoch: int
    items: list[str]
    timeout: float
    answer: asyncio.Future[Sequence[str | BaseException]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Node:
    """Records calls; each waits until the test answers it (or raises through it)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def send(self, epoch: int, items: list[str], timeout: float) -> Sequence[str | BaseException]:
        call = Call(epoch, items, timeout)
        self.calls.append(call)
        return await call.answer

    def echo(self, index: int) -> None:
        call = self.calls[index]
        call.answer.set_result([item.upper() for item in call.items])


def coalescer(node: Node, linger: float = 0.0, **caps: int) -> Coalescer[str, str]:
    """A coalescer sending to node; without a linger unless asked (the tests of it ask)."""
    return Coalescer(node.send, Expired, Caps(linger=linger, **caps))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def many_callers(c: Coalescer[str, str], behind: int = 20) -> list[asyncio.Future[str]]:
    """A call out, then `behind` requests that all find it out: the node is crowded."""
    futures = [c.submit("first", epoch=1, size=1, timeout=5)]
    await settle()
    return futures + [c.submit(f"a{i}", epoch=1, size=1, timeout=5) for i in range(behind)]


async def test_an_item_sent_to_an_idle_node_goes_out_at_once_alone() -> None:
    node = Node()
    c = coalescer(node)
    future = c.submit("a", epoch=1, size=1, timeout=5)
    await settle()
    assert [call.items for call in node.calls] == [["a"]]
    node.echo(0)
    assert await future == "A"


async def test_items_arriving_while_calls_are_in_flight_leave_together_in_the_next_call() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    first = c.submit("a", epoch=1, size=1, timeout=5)
    await settle()
    later = [c.submit(x, epoch=1, size=1, timeout=5) for x in "bcd"]
    await settle()
    assert len(node.calls) == 1  # the slot is busy: b, c, d wait
    node.echo(0)
    await settle()
    assert [call.items for call in node.calls] == [["a"], ["b", "c", "d"]]
    node.echo(1)
    assert [await f for f in (first, *later)] == ["A", "B", "C", "D"]


async def test_a_call_holds_at_most_the_capped_items_and_bytes() -> None:
    node = Node()
    c = coalescer(node, in_flight=1, items=3, bytes=10)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    for x in "abcde":
        c.submit(x, epoch=1, size=1, timeout=5)
    c.submit("big", epoch=1, size=9, timeout=5)
    c.submit("huge", epoch=1, size=50, timeout=5)  # over the byte cap alone: still sent, by itself
    for i in range(4):
        node.echo(i)
        await settle()
    assert [call.items for call in node.calls] == [["first"], ["a", "b", "c"], ["d", "e"], ["big"], ["huge"]]


async def test_items_routed_by_different_epochs_never_share_a_call() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    for x, epoch in [("a", 1), ("b", 2), ("c", 1), ("d", 2)]:
        c.submit(x, epoch=epoch, size=1, timeout=5)
    for i in range(3):
        node.echo(i)
        await settle()
    assert [(call.epoch, call.items) for call in node.calls] == [
        (1, ["first"]),
        (1, ["a", "c"]),
        (2, ["b", "d"]),
    ]


async def test_an_item_refused_by_the_node_fails_alone() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    good, bad, also_good = (c.submit(x, epoch=1, size=1, timeout=5) for x in "abc")
    node.echo(0)
    await settle()
    node.calls[1].answer.set_result(["A", ValueError("b is malformed"), "C"])
    assert await good == "A"
    with pytest.raises(ValueError, match="b is malformed"):
        await bad
    assert await also_good == "C"


async def test_a_failed_call_fails_only_its_own_items() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    doomed = c.submit("a", epoch=1, size=1, timeout=5)
    await settle()
    later = c.submit("b", epoch=1, size=1, timeout=5)
    node.calls[0].answer.set_exception(ConnectionError("node went away"))
    with pytest.raises(ConnectionError):
        await doomed
    await settle()
    node.echo(1)
    assert await later == "B"


async def test_an_item_fails_at_its_own_deadline_while_its_call_hangs() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    short = c.submit("a", epoch=1, size=1, timeout=0.05)
    await settle()
    with pytest.raises(Expired):
        await short
    assert not node.calls[0].answer.done()  # the call itself is still out there
    queued = c.submit("b", epoch=1, size=1, timeout=5)
    node.echo(0)
    await settle()
    node.echo(1)
    assert await queued == "B"


async def test_an_expired_or_abandoned_item_is_never_sent() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    expired = c.submit("stale", epoch=1, size=1, timeout=0.01)
    abandoned = c.submit("dropped", epoch=1, size=1, timeout=5)
    kept = c.submit("kept", epoch=1, size=1, timeout=5)
    abandoned.cancel()
    with pytest.raises(Expired):
        await expired
    node.echo(0)
    await settle()
    assert node.calls[1].items == ["kept"]
    node.echo(1)
    assert await kept == "KEPT"


async def test_the_call_deadline_covers_its_longest_waiting_item() -> None:
    node = Node()
    c = coalescer(node, in_flight=1)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    c.submit("a", epoch=1, size=1, timeout=1)
    c.submit("b", epoch=1, size=1, timeout=3)
    node.echo(0)
    await settle()
    assert 2.5 < node.calls[1].timeout <= 3


async def test_closing_cancels_the_items_of_calls_in_flight() -> None:
    node = Node()
    c = coalescer(node)
    future = c.submit("a", epoch=1, size=1, timeout=5)
    await settle()
    await c.close()
    assert future.cancelled()


async def test_one_caller_at_a_time_never_waits_for_company() -> None:
    node = Node()
    c = coalescer(node, linger=10.0)
    for i in range(30):
        future = c.submit(f"k{i}", epoch=1, size=1, timeout=5)
        await settle()
        assert len(node.calls) == i + 1, "each request went out at once"
        node.echo(i)
        assert await future == f"K{i}"


async def test_a_node_is_crowded_while_most_requests_find_a_call_out_and_not_one_caller_at_a_time() -> None:
    node = Node()
    c = coalescer(node)
    for i in range(30):  # one caller at a time
        future = c.submit(f"k{i}", epoch=1, size=1, timeout=5)
        await settle()
        node.echo(i)
        await future
    assert not c.crowded
    # Many callers at once: all but the first find its call out.
    futures = await many_callers(c, 19)
    assert c.crowded
    node.echo(30)
    await settle()
    node.echo(31)  # the other 19, together
    await asyncio.gather(*futures)


async def test_while_most_requests_find_a_call_out_the_next_call_waits_for_the_linger() -> None:
    node = Node()
    c = coalescer(node, linger=0.05)
    futures = await many_callers(c)
    node.echo(0)
    await settle()
    assert len(node.calls) == 1  # the next call lingers: many callers at once
    futures += [c.submit(f"b{i}", epoch=1, size=1, timeout=5) for i in range(5)]
    await asyncio.sleep(0.1)
    assert len(node.calls) == 2 and len(node.calls[1].items) == 25  # those that came meanwhile joined
    node.echo(1)
    assert len(await asyncio.gather(*futures)) == 26


async def test_requests_that_join_a_lingering_call_do_not_keep_the_node_crowded() -> None:
    # The linger holds the call slot while nothing is out: counting what arrives meanwhile as
    # "found a call out" kept a node crowded, and its calls lingering, at a rate its calls alone
    # would rarely overlap (seen: 150 writes/s, a 2 ms call, and every write 5 ms later for minutes).
    node = Node()
    c = coalescer(node, linger=0.02)
    futures = await many_callers(c)
    assert c.crowded

    async def answered(futures: list[asyncio.Future[str]]) -> None:
        while not all(f.done() for f in futures):
            await asyncio.sleep(0.005)
            for i, call in enumerate(node.calls):
                if not call.answer.done():
                    node.echo(i)

    await answered(futures)
    for round_ in range(4):  # a few requests at a time, each call answered at once
        await answered([c.submit(f"r{round_}-{i}", epoch=1, size=1, timeout=5) for i in range(4)])
    assert not c.crowded


async def test_a_crowded_call_does_not_linger_while_the_process_has_cpu_to_spare() -> None:
    node = Node()
    c: Coalescer[str, str] = Coalescer(node.send, Expired, Caps(linger=10.0), short_of_cpu=lambda: False)
    futures = await many_callers(c)
    assert c.crowded
    node.echo(0)
    await settle()
    assert len(node.calls) == 2 and len(node.calls[1].items) == 20  # left at once, not 10 s later
    node.echo(1)
    assert len(await asyncio.gather(*futures)) == 21


async def test_closing_cancels_the_items_a_lingering_call_had_not_taken_yet() -> None:
    node = Node()
    c = coalescer(node, linger=10.0)
    c.submit("first", epoch=1, size=1, timeout=5)
    await settle()
    waiting = [c.submit(f"a{i}", epoch=1, size=1, timeout=5) for i in range(20)]
    node.echo(0)
    await settle()  # the next call lingers, holding nothing yet
    await c.close()
    assert all(f.cancelled() for f in waiting)


async def test_items_nobody_waits_for_wait_up_to_the_patient_linger_for_company() -> None:
    node = Node()
    c = Coalescer(node.send, Expired, Caps(linger=0.0, patient_linger=0.05))
    futures = [c.submit("p0", epoch=1, size=1, timeout=5, patient=True)]
    await settle()
    assert node.calls == [], "a patient item does not leave at once, even to an idle node"
    futures += [c.submit(f"p{i}", epoch=1, size=1, timeout=5, patient=True) for i in range(1, 10)]
    await asyncio.sleep(0.1)
    assert [len(call.items) for call in node.calls] == [10]  # one call for all of them
    node.echo(0)
    assert await asyncio.gather(*futures) == [f"P{i}" for i in range(10)]


async def test_an_item_somebody_waits_for_ends_the_patient_wait_at_once() -> None:
    node = Node()
    c = Coalescer(node.send, Expired, Caps(linger=0.0, patient_linger=10.0))
    c.submit("patient", epoch=1, size=1, timeout=5, patient=True)
    await settle()
    assert node.calls == []
    waited_for = c.submit("urgent", epoch=1, size=1, timeout=5)
    await settle()
    assert [call.items for call in node.calls] == [["patient", "urgent"]]
    node.echo(0)
    assert await waited_for == "URGENT"


async def test_hurried_patient_items_leave_at_once_and_do_not_wait_again() -> None:
    node = Node()
    c = Coalescer(node.send, Expired, Caps(linger=0.0, patient_linger=10.0, in_flight=1))
    first = c.submit("p0", epoch=1, size=1, timeout=5, patient=True)
    await settle()
    assert node.calls == []
    c.hurry()  # a write waits for it after all
    await settle()
    assert [call.items for call in node.calls] == [["p0"]]
    # Queued behind the call in flight when hurried: they leave as soon as it is answered.
    behind = c.submit("p1", epoch=1, size=1, timeout=5, patient=True)
    c.hurry()
    node.echo(0)
    await settle()
    assert [call.items for call in node.calls] == [["p0"], ["p1"]]
    node.echo(1)
    assert [await first, await behind] == ["P0", "P1"]


async def test_a_full_call_of_patient_items_leaves_without_waiting_longer() -> None:
    node = Node()
    c = Coalescer(node.send, Expired, Caps(linger=0.0, patient_linger=10.0, items=4))
    for i in range(4):
        c.submit(f"p{i}", epoch=1, size=1, timeout=5, patient=True)
    await settle()
    assert [len(call.items) for call in node.calls] == [4]


async def test_closing_cancels_patient_items_still_waiting_for_company() -> None:
    node = Node()
    c = Coalescer(node.send, Expired, Caps(linger=0.0, patient_linger=10.0))
    waiting = [c.submit(f"p{i}", epoch=1, size=1, timeout=5, patient=True) for i in range(3)]
    await settle()
    await c.close()
    assert all(f.cancelled() for f in waiting)
    assert node.calls == []
