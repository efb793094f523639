"""The consistent-hash ring: virtual-node tokens, replica sets, token allocation.

A vnode at token t owns the range (previous token, t]. A key's replica set is
the owners of the next RF distinct nodes clockwise from its token.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pairdb.kernel.keyspace import TOKEN_MAX

RING_SIZE = TOKEN_MAX + 1
DEFAULT_VIRTUAL_NODES = 128


@dataclass(frozen=True, slots=True)
class VNode:
    token: int
    node_id: str


@dataclass
class Ring:
    """An immutable view of vnode tokens; build a new Ring to change it."""

    vnodes: Sequence[VNode]
    _tokens: list[int] = field(init=False, repr=False)
    _owners: list[str] = field(init=False, repr=False)
    _replicas_by_rf: dict[int, list[tuple[str, ...]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ordered = sorted(self.vnodes, key=lambda v: v.token)
        self.vnodes = ordered
        self._tokens = [v.token for v in ordered]
        self._owners = [v.node_id for v in ordered]
        self._replicas_by_rf = {}

    @classmethod
    def from_tokens(cls, tokens: Iterable[tuple[int, str]]) -> Ring:
        return cls([VNode(t, n) for t, n in tokens])

    @property
    def node_ids(self) -> set[str]:
        return set(self._owners)

    def __len__(self) -> int:
        return len(self._tokens)

    def _index(self, token: int) -> int:
        """Index of the vnode owning token: the first vnode at or after it, wrapping."""
        i = bisect.bisect_left(self._tokens, token)
        return 0 if i == len(self._tokens) else i

    def primary(self, token: int) -> str:
        if not self._tokens:
            raise LookupError("the ring has no nodes")
        return self._owners[self._index(token)]

    def replicas(self, token: int, rf: int) -> tuple[str, ...]:
        """The replica set of a token: up to rf distinct nodes clockwise from it."""
        if not self._tokens:
            return ()
        table = self._replicas_by_rf.get(rf)
        if table is None:
            # Precomputed per vnode: the write path asks for every request.
            table = [self._walk(i, rf) for i in range(len(self._tokens))]
            self._replicas_by_rf[rf] = table
        return table[self._index(token)]

    def _walk(self, start: int, rf: int) -> tuple[str, ...]:
        found: list[str] = []
        n = len(self._owners)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in found:
                found.append(owner)
                if len(found) == rf:
                    break
        return tuple(found)

    def ranges(self) -> list[tuple[int, int, str]]:
        """Every vnode range as (start exclusive, end inclusive, owner)."""
        n = len(self._tokens)
        return [
            (self._tokens[i - 1] if n > 1 else self._tokens[i], self._tokens[i], self._owners[i])
            for i in range(n)
        ]


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def allocate_tokens(
    existing: Iterable[tuple[int, str]], node_id: str, count: int, choices: int = 8
) -> list[int]:
    """Choose count tokens for a joining node so ownership stays even.

    Purely random tokens leave nodes up to ±18% apart at 128 vnodes. Each
    token here is the best of `choices` hash-derived candidates: the one whose
    range split leaves the per-node ownership with the smallest sum of squares.
    Deterministic for a given ring and node id.
    """
    if count <= 0:
        raise ValueError("a node needs at least one virtual node")
    tokens = sorted(existing)
    positions = [t for t, _ in tokens]
    owners = [o for _, o in tokens]
    load: dict[str, int] = {node_id: 0}
    for i, (end, owner) in enumerate(tokens):
        load[owner] = load.get(owner, 0) + ((end - positions[i - 1]) % RING_SIZE or RING_SIZE)

    taken: list[int] = []
    for i in range(count):
        best: tuple[int, int, str, int] | None = None  # (score, token, donor, piece)
        for k in range(choices):
            candidate = _hash64(f"{node_id}#{i}#{k}")
            if not positions:
                best = (0, candidate, node_id, 0)
                break
            j = bisect.bisect_left(positions, candidate)
            if j < len(positions) and positions[j] == candidate:
                continue
            donor = owners[j % len(owners)]
            piece = (candidate - positions[j - 1]) % RING_SIZE or RING_SIZE
            if donor == node_id:
                score = 0  # splitting our own range moves nothing
            else:
                score = (
                    (load[donor] - piece) ** 2
                    + (load[node_id] + piece) ** 2
                    - load[donor] ** 2
                    - load[node_id] ** 2
                )
            if best is None or score < best[0]:
                best = (score, candidate, donor, piece)
        if best is None:
            continue  # every candidate collided: vanishingly rare, one vnode fewer
        _, chosen, donor, piece = best
        j = bisect.bisect_left(positions, chosen)
        positions.insert(j, chosen)
        owners.insert(j, node_id)
        if not taken and len(positions) == 1:
            load[node_id] = RING_SIZE
        else:
            load[donor] -= piece
            load[node_id] += piece
        taken.append(chosen)
    return sorted(taken)
