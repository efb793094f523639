"""How long replicas took to answer lately: when waiting longer means something is slow.

A read waits that long for its first replicas before it asks spare ones
(speculative retry); a write, before it hurries the dual writes it let wait
for company (replication.py).
"""

from __future__ import annotations


class AnswerTimes:
    """How long replicas took to answer lately; a high percentile of it (p99 unless told) is `delay`.

    A read waits that long before asking spare replicas; a write, before it hurries dual writes.
    """

    __slots__ = ("_ceiling", "_count", "_every", "_floor", "_quantile", "_samples", "_window", "delay")

    def __init__(
        self,
        initial: float,
        *,
        floor: float,
        ceiling: float,
        window: int = 1024,
        every: int = 128,
        quantile: float = 0.99,
    ) -> None:
        self.delay = initial
        self._floor, self._ceiling = floor, ceiling
        self._quantile = quantile
        self._window, self._every = window, every
        self._samples: list[float] = []
        self._count = 0

    def add(self, seconds: float) -> None:
        if len(self._samples) < self._window:
            self._samples.append(seconds)
        else:
            self._samples[self._count % self._window] = seconds
        self._count += 1
        if self._count % self._every == 0:
            ordered = sorted(self._samples)
            high = ordered[min(len(ordered) - 1, int(len(ordered) * self._quantile))]
            self.delay = min(self._ceiling, max(self._floor, high))
