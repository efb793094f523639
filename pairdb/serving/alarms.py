"""Many timed callbacks behind one event-loop timer.

Every replica call carries a deadline: a loop timer for each costs about as
much as the call itself. Alarms
keeps them in a heap and arms one timer for the earliest. An alarm cannot be
cancelled; its callback checks whether it still has something to do (a future
already answered, a read already decided), which is what it would check anyway.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any


class Alarms:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._sequence = 0

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Call callback(*args) once the running loop's clock reaches when."""
        self._sequence += 1
        heapq.heappush(self._heap, (when, self._sequence, callback, args))
        if self._timer is None or when < self._timer_at:
            self._arm()

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer_at = self._heap[0][0]
            self._timer = asyncio.get_running_loop().call_at(self._timer_at, self._ring)

    def _ring(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        while self._heap and self._heap[0][0] <= now:
            _, _, callback, args = heapq.heappop(self._heap)
            callback(*args)
        self._arm()
