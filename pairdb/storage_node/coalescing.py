"""Coalesced calls to one storage node: concurrent requests share one RPC.

Per node and per kind (writes, reads) there is one sender. A request that
finds a free call slot goes out at once, alone: no delay is added while the
node is idle. Requests arriving while calls are in flight queue up and leave
together in the next call, within caps on items and bytes (natural batching).
While most requests find a call already out (many callers at once) and the
calling process is short of CPU, a call waits a short linger before it
leaves, so that the requests of the next moments share it: a fast node
(reads) otherwise answers each call before a second request arrived, and
every request paid for a call of its own. With CPU to spare the linger would
only add latency. One caller at a time never finds a call out, so it never
waits.
Items nobody waits for (a dual write to a joining node when the old replicas'
acknowledgements suffice) wait longer, up to a patient linger, as long as no
item somebody waits for joins them: the node that only follows along gets a
few large calls instead of one per moment, for the same records. Once a
caller does wait for them after all (an acknowledgement it counted on is slow
or failed), it hurries them: they leave in the next call.
The node commits a call's writes in one group commit, so a burst of concurrent
writes costs one round trip and one fsync instead of one each; and the
per-call cost of gRPC in Python, which dominates a small request, is paid once.

Each item keeps its own outcome and deadline: an item the node refuses for its
content fails alone, a failed call fails only the items in it, and an item
whose deadline passes fails then, whatever its call is doing. Items routed by
different epochs never share a call: the epoch is the call's, for the node's
fence.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pairdb.serving.alarms import Alarms

Item = TypeVar("Item")
Result = TypeVar("Result")

# Sends one call: the epoch, the items, and the time left until the last item's deadline.
# Returns one result or exception per item; raises when the whole call failed.
Send = Callable[[int, list[Item], float], Awaitable[Sequence[Result | BaseException]]]


# Items in one call at most, by default: a GetMany reply of this many keys stays a few MiB.
COALESCED_CALL_ITEMS = 512


@dataclass(frozen=True, slots=True)
class Caps:
    items: int = COALESCED_CALL_ITEMS
    bytes: int = 4 * 1024 * 1024
    # Calls in flight at once. One measured fastest (bench/rpc.py): the next call fills while
    # the current one is out, so calls grow with the load and their fixed cost is paid less often.
    in_flight: int = 1
    # How long a call waits for company while most requests find a call out (0: never). Under
    # such load a call of a few items costs both sides mostly gRPC's per-call work, and every
    # node in the ring adds its own calls: 5 ms took a 4-node cluster's node CPU per operation
    # down by a fifth against 2 ms, and its p99 at 450 offered ops/s from 93-171 ms to 26-63 ms.
    linger: float = 0.005
    # How long a call of patient items only waits for company (0: no longer than linger).
    patient_linger: float = 0.05


# Weight of the newest submission in the moving share of submissions that found a call out.
_BUSY_WEIGHT = 0.125
# The share past which a node's calls are crowded: most requests find a call out already.
CROWDED = 0.5


@dataclass(slots=True)
class _Pending(Generic[Item, Result]):
    value: Item
    epoch: int
    size: int
    deadline: float
    future: asyncio.Future[Result]
    patient: bool


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        send: Send[Item, Result],
        expired: Callable[[], BaseException],
        caps: Caps = Caps(),
        short_of_cpu: Callable[[], bool] | None = None,
    ) -> None:
        """expired: the exception an item fails with when its deadline passes first.

        short_of_cpu: whether the calling process is short of CPU now (its loop has work nearly all
        the time, serving/loop_demand.py); a crowded call lingers only then (None: always), since
        the linger trades each request's latency for CPU.
        """
        self._send = send
        self._expired = expired
        self._caps = caps
        self._short_of_cpu = short_of_cpu
        self._queue: deque[_Pending[Item, Result]] = deque()
        self._in_flight = 0
        self._sending = 0  # calls out at the node (in flight but not waiting for company)
        # Moving share of submissions that found as many calls out at the node as allowed: many
        # callers at once. A call waiting for company does not count: what joins it is what the
        # wait is for, and counting it kept a node crowded, and its calls waiting, at a rate its
        # calls alone would rarely overlap.
        self._busy = 0.0
        self._calls: set[asyncio.Task[None]] = set()
        # Resolved to end the patient wait of a call: an item somebody waits for came, or a full call.
        self._wake: asyncio.Future[None] | None = None
        # Every item's deadline, behind one loop timer (a timer per item costs more than the call).
        self._deadlines = Alarms()

    def submit(
        self, value: Item, *, epoch: int, size: int, timeout: float, patient: bool = False
    ) -> asyncio.Future[Result]:
        """Queue one item; its future resolves with the node's answer for it, or fails.

        patient: nobody waits for this answer unless something else fails (see the module's doc).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        busy = 1.0 if self._sending >= self._caps.in_flight else 0.0
        self._busy += (busy - self._busy) * _BUSY_WEIGHT
        deadline = loop.time() + timeout
        self._queue.append(_Pending(value, epoch, size, deadline, future, patient))
        self._deadlines.at(deadline, self._expire, future)
        if self._wake is not None and (not patient or len(self._queue) >= self._caps.items):
            _resolve(self._wake)
        self._dispatch()
        return future

    @property
    def crowded(self) -> bool:
        """Most requests lately found calls out at the node: many callers at once (a busy coordinator)."""
        return self._busy > CROWDED

    def hurry(self) -> None:
        """Somebody now waits for the queued patient items (a replica it counted on is slow): send them."""
        for pending in self._queue:
            pending.patient = False
        if self._wake is not None:
            _resolve(self._wake)

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        while self._queue:  # not sent yet (a call lingering for company takes its items late)
            self._queue.popleft().future.cancel()

    def _expire(self, future: asyncio.Future[Result]) -> None:
        if not future.done():
            future.set_exception(self._expired())

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._caps.in_flight:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run())
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _wait_patiently(self) -> None:
        """Up to patient_linger, until an item somebody waits for arrives or the call is full."""
        loop = asyncio.get_running_loop()
        if self._wake is None:
            self._wake = loop.create_future()
        wake = self._wake
        timer = loop.call_later(self._caps.patient_linger, _resolve, wake)
        try:
            await asyncio.shield(wake)  # shared with any other waiting call: a cancel is ours alone
        finally:
            timer.cancel()
            if self._wake is wake:
                self._wake = None

    def _take(self) -> list[_Pending[Item, Result]]:
        """The next call: queued items of the oldest item's epoch, in order, within the caps."""
        call: list[_Pending[Item, Result]] = []
        other_epochs: list[_Pending[Item, Result]] = []
        size = 0
        while self._queue and len(call) < self._caps.items:
            pending = self._queue[0]
            if pending.future.done():  # expired, or its caller gave up on it
                self._queue.popleft()
                continue
            if call and pending.epoch != call[0].epoch:
                other_epochs.append(self._queue.popleft())
                continue
            if call and size + pending.size > self._caps.bytes:
                break
            call.append(self._queue.popleft())
            size += pending.size
        self._queue.extendleft(reversed(other_epochs))
        return call

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        caps = self._caps
        if len(self._queue) < caps.items:  # a full call never waits for company
            if caps.patient_linger and self._queue and all(p.patient for p in self._queue):
                await self._wait_patiently()
            elif caps.linger and self.crowded and (self._short_of_cpu is None or self._short_of_cpu()):
                await asyncio.sleep(caps.linger)
        # Taken now, not at dispatch: what arrived meanwhile leaves in this call.
        call = self._take()
        if not call:
            self._in_flight -= 1
            self._dispatch()
            return
        self._sending += 1
        try:
            timeout = max(p.deadline for p in call) - loop.time()
            results = await self._send(call[0].epoch, [p.value for p in call], timeout)
        except BaseException as exc:  # the whole call failed (or we are closing): each item with it
            for p in call:
                _settle(p, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for p, result in zip(call, results, strict=True):
                _settle(p, result)
        finally:
            self._sending -= 1
            self._in_flight -= 1
            self._dispatch()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(pending: _Pending[Item, Result], outcome: Result | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, asyncio.CancelledError):
        pending.future.cancel()
    elif isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
