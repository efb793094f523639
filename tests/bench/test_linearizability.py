"""The register linearizability checker accepts what an atomic register can produce, and only that.

Small histories are compared with a brute-force search over every order of the operations; larger
ones come from a simulated atomic register, where each operation takes effect at one instant inside
its interval, so they are linearizable by construction.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.linearizability import READ, WRITE, Operation, Verdict, check_register

# No example database: the tests leave no files behind.
FAST = settings(max_examples=200, deadline=None, database=None)
# Small histories are cheap to judge, and subtle search bugs need many of them to show.
MANY = settings(max_examples=1000, deadline=None, database=None)


def write(id: int, value: bytes | None, start: float, end: float | None) -> Operation:
    return Operation(id, WRITE, value, start, end)


def delete(id: int, start: float, end: float | None) -> Operation:
    return Operation(id, WRITE, None, start, end)


def read(id: int, value: bytes | None, start: float, end: float) -> Operation:
    return Operation(id, READ, value, start, end)


def assert_not_linearizable(verdict: Verdict, blamed_read: int) -> None:
    assert not verdict.linearizable
    assert not verdict.exhausted
    assert f"read #{blamed_read} " in verdict.explanation
    assert verdict.culprits[0] == blamed_read


# -- sequential histories -------------------------------------------------------------------------


def test_a_read_after_a_completed_write_sees_it() -> None:
    assert check_register([write(1, b"a", 0, 1), read(2, b"a", 2, 3)]) == Verdict(True)


def test_a_stale_read_after_a_completed_overwrite_is_not_linearizable() -> None:
    verdict = check_register([write(1, b"a", 0, 1), write(2, b"b", 2, 3), read(3, b"a", 4, 5)])
    assert_not_linearizable(verdict, 3)
    assert verdict.explanation == (
        "read #3 returned b'a' (write #1) but at that point only {b'b' (write #2)} were possible"
    )
    assert verdict.culprits == (3, 1, 2)


def test_a_read_of_a_value_never_written_is_not_linearizable() -> None:
    verdict = check_register([write(1, b"a", 0, 1), read(2, b"ghost", 2, 3)])
    assert_not_linearizable(verdict, 2)
    assert verdict.culprits == (2,)


def test_a_read_before_any_write_sees_the_initial_absence() -> None:
    assert check_register([read(1, None, 0, 1), write(2, b"a", 2, 3), read(3, b"a", 4, 5)]).linearizable


def test_a_read_before_any_write_may_see_a_given_initial_value() -> None:
    assert check_register([read(1, b"init", 0, 1)], initial=b"init").linearizable


def test_reading_absence_is_not_linearizable_when_the_key_started_present_and_nothing_deleted_it() -> None:
    assert_not_linearizable(check_register([read(1, None, 0, 1)], initial=b"init"), 1)


def test_a_read_cannot_see_a_write_that_started_after_it_ended() -> None:
    verdict = check_register([read(1, b"a", 0, 1), write(2, b"a", 2, 3)])
    assert_not_linearizable(verdict, 1)
    assert "after the read ended" in verdict.explanation


def test_an_empty_history_is_linearizable() -> None:
    assert check_register([]) == Verdict(True)


# -- concurrency and real-time order ----------------------------------------------------------------


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    before = [write(1, b"a", 0, 1)]
    for seen in (b"a", b"b"):
        assert check_register([*before, write(2, b"b", 2, 5), read(3, seen, 3, 4)]).linearizable


def test_intervals_that_touch_count_as_concurrent() -> None:
    assert check_register([write(1, b"a", 0, 1), read(2, None, 1, 2)]).linearizable
    assert not check_register([write(1, b"a", 0, 1), read(2, None, 1.5, 2)]).linearizable


def test_a_value_once_overwritten_cannot_reappear_even_from_concurrent_writes() -> None:
    # r3 saw b then r4 (strictly later) saw a: a must follow b, but then r5 (later still) cannot see b.
    ops = [
        write(1, b"a", 0, 10),
        write(2, b"b", 0, 10),
        read(3, b"b", 1, 2),
        read(4, b"a", 3, 4),
        read(5, b"b", 5, 6),
    ]
    assert_not_linearizable(check_register(ops), 5)


def test_real_time_order_beats_any_other_order_of_sequential_writes() -> None:
    # w1 finished before w2 started, so w2 is newer whatever versions the store gave them.
    verdict = check_register([write(1, b"w1", 0, 1), write(2, b"w2", 2, 3), read(3, b"w1", 4, 5)])
    assert_not_linearizable(verdict, 3)
    assert set(verdict.culprits) == {1, 2, 3}


# -- indeterminate writes ----------------------------------------------------------------------------


def test_an_indeterminate_write_may_be_seen_or_not() -> None:
    for seen in (None, b"x"):
        assert check_register([write(1, b"x", 0, None), read(2, seen, 1, 2)]).linearizable


def test_once_an_indeterminate_write_was_read_it_must_stay_visible() -> None:
    ops = [write(1, b"old", 0, 1), write(2, b"x", 2, None), read(3, b"x", 3, 4), read(4, b"old", 5, 6)]
    verdict = check_register(ops)
    assert_not_linearizable(verdict, 4)
    assert "only {b'x' (write #2)} were possible" in verdict.explanation
    assert set(verdict.culprits) == {1, 2, 4}


def test_an_indeterminate_write_cannot_take_effect_before_it_started() -> None:
    assert_not_linearizable(check_register([read(1, b"x", 0, 1), write(2, b"x", 2, None)]), 1)


def test_an_indeterminate_write_may_take_effect_long_after_it_started() -> None:
    ops = [write(1, b"x", 0, None), write(2, b"a", 1, 2), read(3, b"a", 3, 4), read(4, b"x", 5, 6)]
    assert check_register(ops).linearizable


# -- deletes -------------------------------------------------------------------------------------


def test_a_read_after_a_completed_delete_finds_nothing() -> None:
    assert check_register([write(1, b"a", 0, 1), delete(2, 2, 3), read(3, None, 4, 5)]).linearizable


def test_a_read_after_a_completed_delete_resurrecting_the_old_value_is_not_linearizable() -> None:
    verdict = check_register([write(1, b"a", 0, 1), delete(2, 2, 3), read(3, b"a", 4, 5)])
    assert_not_linearizable(verdict, 3)
    assert "only {None (delete #2)} were possible" in verdict.explanation
    assert set(verdict.culprits) == {1, 2, 3}


def test_an_indeterminate_delete_may_explain_a_read_of_nothing_but_only_once() -> None:
    ops = [
        write(1, b"a", 0, 1),
        delete(2, 2, None),
        read(3, None, 3, 4),
        write(4, b"b", 5, 6),
        read(5, None, 7, 8),
    ]
    assert_not_linearizable(check_register(ops), 5)
    # A second indeterminate delete, started before that read, explains it.
    assert check_register([*ops, delete(6, 6.5, None)]).linearizable


def test_a_resurrection_after_an_indeterminate_delete_was_seen_is_not_linearizable() -> None:
    ops = [write(1, b"a", 0, 1), delete(2, 2, None), read(3, None, 3, 4), read(4, b"a", 5, 6)]
    assert_not_linearizable(check_register(ops), 4)


# -- the search's limits and inputs ---------------------------------------------------------------


def test_a_search_cut_short_by_max_states_reports_an_unknown_result() -> None:
    verdict = check_register(simulated_history(random.Random(1), 300), max_states=50)
    assert verdict.linearizable
    assert verdict.exhausted
    assert "gave up" in verdict.explanation


def test_a_read_without_an_end_is_rejected() -> None:
    with pytest.raises(ValueError, match="read #1"):
        check_register([Operation(1, READ, None, 0, None)])


# -- a simulated atomic register ----------------------------------------------------------------------


@dataclasses.dataclass
class Planned:
    """An operation before its read result is known: effect is the instant it takes effect, if ever."""

    id: int
    kind: str
    value: bytes | None
    start: float
    end: float | None
    effect: float | None


def run_atomic_register(planned: list[Planned], initial: bytes | None = None) -> list[Operation]:
    """The history an atomic register produces: each op acts at its effect instant, in that order."""
    value = initial
    seen: dict[int, bytes | None] = {}
    acting = [p for p in planned if p.effect is not None]
    for p in sorted(acting, key=lambda p: (p.effect, p.id)):
        if p.kind == WRITE:
            value = p.value
        else:
            seen[p.id] = value
    return [Operation(p.id, p.kind, seen.get(p.id, p.value), p.start, p.end) for p in planned]


def simulated_history(
    rng: random.Random, n: int, concurrency: float = 8, indeterminate: int = 30
) -> list[Operation]:
    """n ops, about `concurrency` in flight at a time; half reads, a tenth of writes deletes.

    `indeterminate` writes time out: half never take effect, half do so up to 3 * concurrency later.
    """
    planned: list[Planned] = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(1.0)
        end = t + rng.expovariate(1.0 / concurrency)
        if rng.random() < 0.5:
            planned.append(Planned(i, READ, None, t, end, rng.uniform(t, end)))
        else:
            value = None if rng.random() < 0.1 else b"v%d" % i
            planned.append(Planned(i, WRITE, value, t, end, rng.uniform(t, end)))
    writes = [p for p in planned if p.kind == WRITE]
    for p in rng.sample(writes, min(indeterminate, len(writes))):
        p.end = None
        p.effect = p.start + rng.uniform(0, 3 * concurrency) if rng.random() < 0.5 else None
    return run_atomic_register(planned)


def test_a_long_concurrent_history_of_an_atomic_register_is_linearizable() -> None:
    # ~500 ops, ~8 in flight, 30 indeterminate writes: the size the chaos harness produces per key.
    # The search needs some 5,000-30,000 states here; a pruning regression shows up as exhaustion.
    for seed in range(3):
        ops = simulated_history(random.Random(seed), 500)
        verdict = check_register(ops, max_states=500_000)
        assert verdict == Verdict(True), (seed, verdict)


def test_a_stale_read_deep_in_a_long_concurrent_history_is_found_and_named() -> None:
    ops = simulated_history(random.Random(7), 200)
    # A read late in the history that returns a value overwritten long before it started.
    victim = next(op for op in reversed(ops) if op.kind == READ and op.value is not None)
    stale = next(
        op
        for op in ops
        if op.kind == WRITE and op.value not in (None, victim.value) and op.end and op.end < victim.start - 40
    )
    ops = [dataclasses.replace(op, value=stale.value) if op is victim else op for op in ops]
    verdict = check_register(ops)
    assert_not_linearizable(verdict, victim.id)
    assert stale.id in verdict.culprits


# -- properties ---------------------------------------------------------------------------------------


@st.composite
def atomic_histories(draw: st.DrawFn, max_ops: int) -> tuple[list[Operation], bytes | None]:
    """Histories of an atomic register on a coarse clock, so that timestamps often tie."""
    initial = draw(st.sampled_from([None, b"init"]))
    planned: list[Planned] = []
    for i in range(draw(st.integers(0, max_ops))):
        start = draw(st.integers(0, max_ops))
        end = start + draw(st.integers(0, 8))
        # Half-steps, so an effect can fall strictly inside the interval or on either end.
        effect: float | None = start + draw(st.integers(0, 2 * (end - start))) / 2
        if draw(st.booleans()):
            planned.append(Planned(i, READ, None, start, end, effect))
            continue
        value = None if draw(st.integers(0, 3)) == 0 else b"w%d" % i
        outcome: float | None = end
        if draw(st.booleans()):
            outcome = None
            effect = start + draw(st.integers(0, 30)) / 2 if draw(st.booleans()) else None
        planned.append(Planned(i, WRITE, value, start, outcome, effect))
    return run_atomic_register(planned, initial), initial


@st.composite
def any_histories(draw: st.DrawFn, max_ops: int) -> tuple[list[Operation], bytes | None]:
    """Atomic-register histories with some reads changed to other plausible values."""
    ops, initial = draw(atomic_histories(max_ops))
    values = [initial, None, b"never-written", *(op.value for op in ops if op.kind == WRITE)]
    changed = [
        dataclasses.replace(op, value=draw(st.sampled_from(values)))
        if op.kind == READ and draw(st.integers(0, 2)) == 0
        else op
        for op in ops
    ]
    return changed, initial


def brute_force_linearizable(ops: list[Operation], initial: bytes | None) -> bool:
    """Some order of all determinate ops and any subset of indeterminate writes respects real time
    (an op that ended before another started comes first) and explains every read."""

    def extend(placed: frozenset[int], value: bytes | None) -> bool:
        if all(op.end is None or op.id in placed for op in ops):
            return True  # the indeterminate writes left over never took effect
        for op in ops:
            if op.id in placed:
                continue
            if any(o.end is not None and o.end < op.start and o.id not in placed for o in ops):
                continue
            if op.kind == READ and op.value != value:
                continue
            if extend(placed | {op.id}, op.value if op.kind == WRITE else value):
                return True
        return False

    return extend(frozenset(), initial)


@FAST
@given(atomic_histories(max_ops=40))
def test_histories_of_an_atomic_register_are_linearizable(
    history: tuple[list[Operation], bytes | None],
) -> None:
    ops, initial = history
    assert check_register(ops, initial) == Verdict(True)


@MANY
@given(any_histories(max_ops=7))
def test_small_histories_are_judged_as_brute_force_judges_them(
    history: tuple[list[Operation], bytes | None],
) -> None:
    ops, initial = history
    verdict = check_register(ops, initial)
    assert verdict.linearizable == brute_force_linearizable(ops, initial)
    assert not verdict.exhausted
    if verdict.linearizable:
        assert verdict == Verdict(True)
    else:
        blamed = next(op for op in ops if op.id == verdict.culprits[0])
        assert blamed.kind == READ
        assert verdict.explanation.startswith(f"read #{blamed.id} returned {blamed.value!r}")
        assert set(verdict.culprits) <= {op.id for op in ops}
