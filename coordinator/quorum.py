"""How many replicas must answer, and when a write counts as acknowledged.

During a ring change a write has two replica sets, `old` (current ring) and
`new` (future ring). It is acknowledged only when its consistency level is met
in each set separately (docs/architecture.md, section 5): a quorum of the union could be made of
old replicas alone and leave the future owners without the write.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


class Consistency(enum.IntEnum):
    # Values match proto pairdb.v1.Consistency.
    ONE = 1
    QUORUM = 2
    ALL = 3


def required(level: Consistency, replicas: int) -> int:
    """Answers needed from a replica set of the given size."""
    if level is Consistency.ONE:
        return min(1, replicas)
    if level is Consistency.QUORUM:
        return replicas // 2 + 1
    return replicas


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """The nodes one request must reach and the sets whose level it must meet."""

    level: Consistency
    old: tuple[str, ...]
    # The future ring's set while a ring change is in flight, else None.
    new: tuple[str, ...] | None = None
    # Plans key the caches below, looked up several times per record: hashed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.level, self.old, self.new)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def targets(self) -> tuple[str, ...]:
        """Every node the request goes to: old ∪ new, old's order first."""
        if self.new is None:
            return self.old
        return self.old + tuple(n for n in self.new if n not in self.old)

    @property
    def sets(self) -> tuple[tuple[str, ...], ...]:
        return (self.old,) if self.new is None else (self.old, self.new)

    def satisfied(self, acknowledged: Collection[str]) -> bool:
        return all(sum(1 for n in s if n in acknowledged) >= required(self.level, len(s)) for s in self.sets)

    def still_possible(self, acknowledged: Collection[str], failed: Iterable[str]) -> bool:
        """Whether the replies still outstanding could yet satisfy every set."""
        failed_set = set(failed)
        return all(
            sum(1 for n in s if n not in failed_set) >= required(self.level, len(s)) for s in self.sets
        )

    def describe_shortfall(self, acknowledged: Collection[str]) -> str:
        parts = []
        for name, s in zip(("replicas", "future replicas"), self.sets, strict=False):
            got = [n for n in s if n in acknowledged]
            parts.append(
                f"{self.level.name} needs {required(self.level, len(s))} of {len(s)} {name}, "
                f"{len(got)} answered ({', '.join(got) or 'none'})"
            )
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a Tally needs of a plan: per set, answers needed and size; per node, the sets it is in."""

    need: tuple[int, ...]
    sizes: tuple[int, ...]
    member_of: dict[str, tuple[int, ...]]
    # Sets short of their level with no answer yet, and sets out of reach before any miss.
    short: int
    out_of_reach: int


@functools.lru_cache(maxsize=4096)
def _shape(plan: ReplicaPlan) -> _Shape:
    """The plan's shape for counting answers. Plans repeat: cached."""
    need = tuple(required(plan.level, len(s)) for s in plan.sets)
    sizes = tuple(len(s) for s in plan.sets)
    member_of = {n: tuple(i for i, s in enumerate(plan.sets) if n in s) for n in plan.targets}
    short = sum(1 for n in need if n > 0)
    out_of_reach = sum(1 for size, n in zip(sizes, need, strict=True) if size < n)
    return _Shape(need, sizes, member_of, short, out_of_reach)


class Tally:
    """Answers counted against a plan as they arrive: satisfied() and still_possible(), incrementally.

    met and possible are asked after every answer of every record (three per record of a batch):
    counts of the sets still short and of those out of reach keep them O(1).
    """

    __slots__ = ("_acks", "_member_of", "_misses", "_need", "_out_of_reach", "_short", "_sizes")

    def __init__(self, plan: ReplicaPlan, holding: Iterable[str] = ()) -> None:
        shape = _shape(plan)
        self._need, self._sizes, self._member_of = shape.need, shape.sizes, shape.member_of
        self._acks = [0] * len(self._need)
        self._misses = [0] * len(self._need)
        self._short, self._out_of_reach = shape.short, shape.out_of_reach
        for node in holding:
            self.ack(node)

    def ack(self, node: str) -> None:
        for i in self._member_of.get(node, ()):
            self._acks[i] += 1
            if self._acks[i] == self._need[i]:
                self._short -= 1

    def miss(self, node: str) -> None:
        """node failed, or holds something newer: it will not acknowledge."""
        for i in self._member_of.get(node, ()):
            self._misses[i] += 1
            if self._sizes[i] - self._misses[i] == self._need[i] - 1:
                self._out_of_reach += 1

    @property
    def met(self) -> bool:
        return self._short == 0

    @property
    def possible(self) -> bool:
        return self._out_of_reach == 0


def unfenced_quorum(sets: Iterable[tuple[str, ...]], fenced: Collection[str]) -> tuple[str, ...] | None:
    """A replica set in which the nodes not yet fenced could still form a QUORUM, if any.

    A request routed by an old epoch that reaches only unfenced nodes would be
    acknowledged; so a fence counts once, in every set, fewer than a quorum
    are unfenced. (ONE gives that up: one unfenced replica is enough for it.)
    """
    for members in sets:
        unfenced = sum(1 for n in members if n not in fenced)
        if members and unfenced >= required(Consistency.QUORUM, len(members)):
            return members
    return None
