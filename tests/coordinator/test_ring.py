"""The ring spreads keys evenly and gives every key RF distinct replicas."""

from __future__ import annotations

import random
from collections import Counter

from pairdb.coordinator.ring import DEFAULT_VIRTUAL_NODES, Ring, allocate_tokens
from pairdb.kernel.keyspace import token


def build(nodes: list[str], vnodes: int = DEFAULT_VIRTUAL_NODES) -> Ring:
    tokens: list[tuple[int, str]] = []
    for node in nodes:
        tokens += [(t, node) for t in allocate_tokens(tokens, node, vnodes)]
    return Ring.from_tokens(tokens)


def random_keys(n: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"tenant-{rng.randrange(5)}", f"key-{rng.getrandbits(64):x}") for _ in range(n)]


def test_ten_thousand_keys_spread_within_15_percent_over_three_nodes() -> None:
    ring = build(["node-1", "node-2", "node-3"])
    counts = Counter(ring.primary(token(t, k)) for t, k in random_keys(10_000))
    even = 10_000 / 3
    assert set(counts) == {"node-1", "node-2", "node-3"}
    for node, count in counts.items():
        assert abs(count - even) <= 0.15 * even, (node, count)


def test_balance_holds_for_other_cluster_names_and_sizes() -> None:
    for names in (["a", "b", "c"], ["db-7", "db-8", "db-9", "db-10"], [f"n{i}" for i in range(5)]):
        ring = build(names)
        counts = Counter(ring.primary(token(t, k)) for t, k in random_keys(10_000, seed=len(names)))
        even = 10_000 / len(names)
        assert all(abs(c - even) <= 0.15 * even for c in counts.values()), counts


def test_every_replica_set_holds_rf_distinct_nodes() -> None:
    ring = build([f"node-{i}" for i in range(1, 6)])
    for rf in (1, 2, 3, 5):
        for t, k in random_keys(2_000):
            replicas = ring.replicas(token(t, k), rf)
            assert len(replicas) == rf
            assert len(set(replicas)) == rf
            assert replicas[0] == ring.primary(token(t, k))


def test_replica_set_is_capped_by_the_node_count() -> None:
    ring = build(["node-1", "node-2"])
    assert sorted(ring.replicas(token("t", "k"), 3)) == ["node-1", "node-2"]


def test_allocation_is_deterministic_and_collision_free() -> None:
    first = build(["node-1", "node-2", "node-3"])
    again = build(["node-1", "node-2", "node-3"])
    assert [v.token for v in first.vnodes] == [v.token for v in again.vnodes]
    assert len({v.token for v in first.vnodes}) == 3 * DEFAULT_VIRTUAL_NODES


def test_a_joining_node_takes_about_its_share() -> None:
    ring = build(["node-1", "node-2", "node-3", "node-4"])
    counts = Counter(ring.primary(token(t, k)) for t, k in random_keys(10_000))
    assert abs(counts["node-4"] - 2_500) <= 0.15 * 2_500
