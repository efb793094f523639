"""A ring change as range movement: the ranges whose replicas change, who gains and who loses them.

Adding, removing or replacing a node and changing a tenant's replication
factor are one operation: an old ring with each tenant's RF becomes a new
ring with each tenant's RF. Cut the token circle at every boundary of either
ring; within each piece both rings have one owner, so each tenant has one old
and one new replica set there. A piece where some tenant's sets differ moves:
the nodes in its new set but not its old one gain it (the copy fills them), the
nodes in its old set but not its new one lose it (cleanup empties them).

Tenants are grouped by (old RF, new RF): replica sets depend only on those,
so a range is described once per group, not once per tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pairdb.coordinator.ring import Ring


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a group of tenants lives in one range, before and after the change."""

    tenants: frozenset[str]
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RangeMove:
    """A range (start, end] whose replicas change for some tenant."""

    start: int
    end: int
    placements: tuple[Placement, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """The old replicas, preferred first: the widest old set (a smaller RF's is a prefix of it)."""
        return max((p.old for p in self.placements), key=len, default=())

    def gained(self) -> dict[str, frozenset[str]]:
        """Each node that gains the range, with the tenants it gains it for."""
        return self._nodes_in(lambda p: set(p.new) - set(p.old))

    def lost(self) -> dict[str, frozenset[str]]:
        """Each node that loses the range, with the tenants it loses it for."""
        return self._nodes_in(lambda p: set(p.old) - set(p.new))

    def _nodes_in(self, nodes: Callable[[Placement], set[str]]) -> dict[str, frozenset[str]]:
        found: dict[str, set[str]] = {}
        for p in self.placements:
            for node in nodes(p):
                found.setdefault(node, set()).update(p.tenants)
        return {node: frozenset(tenants) for node, tenants in found.items()}


@dataclass(frozen=True)
class Movement:
    """The old ring and RFs, the new ring and RFs (tenant id -> replication factor)."""

    old: Ring
    new: Ring
    rf_old: Mapping[str, int]
    rf_new: Mapping[str, int]

    def moves(self) -> list[RangeMove]:
        """Every range whose replica set changes for some tenant, adjacent equal ones joined."""
        groups: dict[tuple[int, int], set[str]] = {}
        for tenant, rf in self.rf_old.items():
            groups.setdefault((rf, self.rf_new.get(tenant, rf)), set()).add(tenant)
        if not groups:
            return []
        keyed = [(frozenset(tenants), rfs) for rfs, tenants in sorted(groups.items())]
        boundaries = sorted({v.token for v in self.old.vnodes} | {v.token for v in self.new.vnodes})
        moves: list[RangeMove] = []
        for i, end in enumerate(boundaries):
            start = boundaries[i - 1] if len(boundaries) > 1 else end
            placements = tuple(
                Placement(tenants, self.old.replicas(end, rf_old), self.new.replicas(end, rf_new))
                for tenants, (rf_old, rf_new) in keyed
            )
            if all(set(p.old) == set(p.new) for p in placements):
                continue
            last = moves[-1] if moves else None
            if last is not None and last.end == start and last.placements == placements:
                # Adjacent ranges with the same replicas move as one: fewer streams to open.
                moves[-1] = RangeMove(last.start, end, placements)
            else:
                moves.append(RangeMove(start, end, placements))
        return moves
