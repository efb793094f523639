"""Acknowledgement rules: one replica set, and both sets during a ring change."""

from __future__ import annotations

import itertools

from pairdb.coordinator.quorum import Consistency, ReplicaPlan, Tally, required


def test_required_answers_per_level() -> None:
    assert [required(Consistency.ONE, 3), required(Consistency.QUORUM, 3), required(Consistency.ALL, 3)] == [
        1,
        2,
        3,
    ]
    assert required(Consistency.QUORUM, 5) == 3
    assert required(Consistency.QUORUM, 1) == 1


def test_single_set_quorum() -> None:
    plan = ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"))
    assert plan.targets == ("a", "b", "c")
    assert not plan.satisfied({"a"})
    assert plan.satisfied({"a", "c"})
    assert plan.still_possible({"a"}, {"b"})
    assert not plan.still_possible(set(), {"b", "c"})


def test_both_sets_rule_matches_brute_force() -> None:
    old, new = ("a", "b", "c"), ("b", "c", "d")
    plan = ReplicaPlan(Consistency.QUORUM, old, new)
    assert plan.targets == ("a", "b", "c", "d")
    nodes = plan.targets
    for size in range(len(nodes) + 1):
        for acked in itertools.combinations(nodes, size):
            expected = len(set(acked) & set(old)) >= 2 and len(set(acked) & set(new)) >= 2
            assert plan.satisfied(set(acked)) == expected, acked


def test_a_quorum_of_old_replicas_alone_does_not_acknowledge_during_a_ring_change() -> None:
    plan = ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "d", "e"))
    assert not plan.satisfied({"a", "b", "c"})
    assert plan.satisfied({"a", "b", "d"})


def test_shortfall_names_who_answered() -> None:
    plan = ReplicaPlan(Consistency.ALL, ("a", "b", "c"))
    assert "ALL needs 3 of 3 replicas, 2 answered (a, b)" in plan.describe_shortfall({"a", "b"})


def test_a_tally_counted_answer_by_answer_agrees_with_the_plan_rules() -> None:
    plans = [
        ReplicaPlan(level, old, new)
        for level in Consistency
        for old, new in [
            (("a", "b", "c"), None),
            (("a", "b", "c"), ("b", "c", "d")),
            (("a", "b"), ("c", "d")),
        ]
    ]
    for plan in plans:
        nodes = plan.targets
        for outcomes in itertools.product(("ack", "miss", "none"), repeat=len(nodes)):
            acked = {n for n, o in zip(nodes, outcomes, strict=True) if o == "ack"}
            missed = {n for n, o in zip(nodes, outcomes, strict=True) if o == "miss"}
            holding = set(sorted(acked)[:1])  # one acknowledgement given up front, as a read's holders are
            tally = Tally(plan, holding)
            for node in nodes:
                if node in acked - holding:
                    tally.ack(node)
                elif node in missed:
                    tally.miss(node)
            assert tally.met == plan.satisfied(acked), (plan, outcomes)
            assert tally.possible == plan.still_possible(acked, missed), (plan, outcomes)
