"""Properties of the ring, the hybrid logical clock, the both-sets rule and per-phase routing.

Each expectation is computed here by brute force (or from the documented
table), not with the helper under test.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from pairdb.coordinator.hlc import HybridLogicalClock
from pairdb.coordinator.metadata import InFlight, NodeInfo, Snapshot, TenantInfo
from pairdb.coordinator.movement import Movement, RangeMove
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.ring import RING_SIZE, Ring, allocate_tokens
from pairdb.coordinator.routing import plan
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import TOKEN_MAX, Version, in_range
from pairdb.kernel.migration import NodeState, Phase

FAST = settings(max_examples=60, deadline=None)

# -- clusters -------------------------------------------------------------------------------

node_names = st.text(alphabet="abcdefghijklmnop-0123456789", min_size=1, max_size=8)


@st.composite
def clusters(draw: st.DrawFn, min_nodes: int = 3, max_nodes: int = 7) -> tuple[list[tuple[str, int]], int]:
    """Node ids with their vnode counts, in joining order, and an RF the cluster can serve."""
    names = draw(st.lists(node_names, min_size=min_nodes, max_size=max_nodes, unique=True))
    vnodes = draw(st.lists(st.integers(8, 64), min_size=len(names), max_size=len(names)))
    rf = draw(st.integers(1, min(len(names), 5)))
    return list(zip(names, vnodes, strict=True)), rf


def allocate(nodes: list[tuple[str, int]]) -> list[tuple[int, str]]:
    """Tokens for the nodes, allocated one node at a time as nodes join."""
    tokens: list[tuple[int, str]] = []
    for name, count in nodes:
        tokens += [(t, name) for t in allocate_tokens(tokens, name, count)]
    return tokens


class BruteRing:
    """Replica sets by walking the sorted vnodes: the next rf distinct owners clockwise."""

    def __init__(self, tokens: list[tuple[int, str]]) -> None:
        self.ordered = sorted(tokens)
        self.positions = [t for t, _ in self.ordered]

    def replicas(self, t: int, rf: int) -> tuple[str, ...]:
        # The vnode at t owns t; past the last vnode, the first one does.
        first = bisect.bisect_left(self.positions, t) % len(self.ordered)
        found: list[str] = []
        for step in range(len(self.ordered)):
            owner = self.ordered[(first + step) % len(self.ordered)][1]
            if owner not in found:
                found.append(owner)
                if len(found) == rf:
                    break
        return tuple(found)


def probes(tokens: list[tuple[int, str]], extra: list[int]) -> list[int]:
    """Every vnode boundary, its neighbours, the ring's ends, and some arbitrary tokens.

    Replica sets are constant between two boundaries, so the first and last token of
    every range (t + 1 and the next t) already probe every case.
    """
    found = {0, TOKEN_MAX, *extra}
    for t, _ in tokens:
        found |= {t, (t + 1) % RING_SIZE, (t - 1) % RING_SIZE}
    return sorted(found)


random_tokens = st.lists(st.integers(0, TOKEN_MAX), max_size=20)


def containing(moves: list[RangeMove], t: int) -> list[RangeMove]:
    return [mv for mv in moves if in_range(t, mv.start, mv.end)]


def assert_disjoint(moves: list[RangeMove]) -> None:
    # Two ring ranges overlap iff one contains the other's first token, start + 1.
    for mv in moves:
        first = (mv.start + 1) % RING_SIZE
        assert len(containing(moves, first)) == 1, (mv, moves)


def check_movement(
    old: list[tuple[int, str]],
    new: list[tuple[int, str]],
    rf_old: dict[str, int],
    rf_new: dict[str, int],
    points: list[int],
) -> None:
    """Every token's move says each tenant's old and new replica sets, as brute force finds them."""
    moves = Movement(Ring.from_tokens(old), Ring.from_tokens(new), rf_old, rf_new).moves()
    assert_disjoint(moves)
    before, after = BruteRing(old), BruteRing(new)
    for t in points:
        sets = {
            tenant: (before.replicas(t, rf), after.replicas(t, rf_new.get(tenant, rf)))
            for tenant, rf in rf_old.items()
        }
        inside = containing(moves, t)
        # A token moves exactly when some tenant's replica set changes there.
        assert bool(inside) == any(set(o) != set(n) for o, n in sets.values()), t
        if not inside:
            continue
        (mv,) = inside
        for tenant, (o, n) in sets.items():
            (placement,) = [p for p in mv.placements if tenant in p.tenants]
            assert (placement.old, placement.new) == (o, n), (t, tenant, mv)
        for node, tenants in mv.gained().items():
            assert tenants == {x for x, (o, n) in sets.items() if node in n and node not in o}
        for node, tenants in mv.lost().items():
            assert tenants == {x for x, (o, n) in sets.items() if node in o and node not in n}


def tenant_rfs(rf: int, nodes: int) -> dict[str, int]:
    """Tenants of several RFs, the largest rf (as the cluster can serve)."""
    return {f"t{r}": r for r in range(1, min(rf, nodes) + 1)}


@FAST
@given(clusters(), random_tokens)
def test_movement_of_a_joining_node(cluster: tuple[list[tuple[str, int]], int], extra: list[int]) -> None:
    nodes, rf = cluster
    tokens = allocate(nodes)
    joining = nodes[-1][0]
    old = [(t, n) for t, n in tokens if n != joining]
    rfs = tenant_rfs(rf, len(nodes) - 1)
    check_movement(old, tokens, rfs, rfs, probes(tokens, extra))


@FAST
@given(clusters(), st.data(), random_tokens)
def test_movement_of_a_leaving_node(
    cluster: tuple[list[tuple[str, int]], int], data: st.DataObject, extra: list[int]
) -> None:
    nodes, rf = cluster
    tokens = allocate(nodes)
    leaving = data.draw(st.sampled_from([n for n, _ in nodes]))
    rfs = tenant_rfs(rf, len(nodes) - 1)
    check_movement(tokens, [(t, n) for t, n in tokens if n != leaving], rfs, rfs, probes(tokens, extra))


@FAST
@given(clusters(), st.data(), random_tokens)
def test_movement_of_a_replaced_node(
    cluster: tuple[list[tuple[str, int]], int], data: st.DataObject, extra: list[int]
) -> None:
    nodes, rf = cluster
    tokens = allocate(nodes)
    dead = data.draw(st.sampled_from([n for n, _ in nodes]))
    new = [(t, "new" if n == dead else n) for t, n in tokens]
    rfs = tenant_rfs(rf, len(nodes))
    check_movement(tokens, new, rfs, rfs, probes(tokens, extra))
    # Only the new node gains, only the dead one loses, and only where the dead one was.
    for mv in Movement(Ring.from_tokens(tokens), Ring.from_tokens(new), rfs, rfs).moves():
        assert set(mv.gained()) == {"new"} and set(mv.lost()) == {dead}


@FAST
@given(clusters(), st.data(), random_tokens)
def test_movement_of_a_replication_factor_change(
    cluster: tuple[list[tuple[str, int]], int], data: st.DataObject, extra: list[int]
) -> None:
    nodes, rf = cluster
    tokens = allocate(nodes)
    rfs = tenant_rfs(rf, len(nodes))
    changed = data.draw(st.sampled_from(sorted(rfs)))
    target = data.draw(st.integers(1, len(nodes)))
    check_movement(tokens, tokens, rfs, {**rfs, changed: target}, probes(tokens, extra))
    # Other tenants never move.
    for mv in Movement(
        Ring.from_tokens(tokens), Ring.from_tokens(tokens), rfs, {**rfs, changed: target}
    ).moves():
        for tenants in (*mv.gained().values(), *mv.lost().values()):
            assert tenants == {changed}


# -- hybrid logical clock ---------------------------------------------------------------------

WALL_MAX = (1 << 47) - 1  # hlc = wall ms << 16 must fit the engine's 64-bit field

clock_steps = st.lists(
    st.one_of(
        st.tuples(st.just("jump"), st.integers(-(10**12), 10**12)),
        st.tuples(st.just("jump"), st.integers(-3, 3)),
        st.tuples(st.just("set"), st.integers(0, WALL_MAX)),
        st.tuples(st.just("observe"), st.integers(0, (WALL_MAX << 16) | 0xFFFF)),
        st.tuples(st.just("observe_near"), st.integers(-3, 3)),
        st.tuples(st.just("now"), st.integers(1, 5)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, WALL_MAX), st.integers(0, 2**32 - 1), clock_steps)
def test_hlc_versions_always_increase_and_pass_what_was_observed(
    start: int, origin: int, steps: list[tuple[str, int]]
) -> None:
    wall = [start]
    clock = HybridLogicalClock(origin=origin, wall_ms=lambda: wall[0])
    issued: list[Version] = []
    observed: list[Version] = []

    def tick() -> None:
        v = clock.now()
        assert v.origin == origin
        if issued:
            assert v > issued[-1], (issued[-1], v)
        assert all(v > o for o in observed)
        assert v.hlc >= wall[0] << 16  # never behind wall time
        issued.append(v)

    for op, arg in steps:
        if op == "jump":
            wall[0] = min(WALL_MAX, max(0, wall[0] + arg))
        elif op == "set":
            wall[0] = arg
        elif op in ("observe", "observe_near"):
            # observe_near: a version at or next to this clock's last hlc, wall time or its own.
            base = issued[-1].hlc if issued else wall[0] << 16
            hlc = arg if op == "observe" else max(0, base + arg)
            v = Version(hlc, origin ^ 1)
            if clock.observe(v):
                observed.append(v)
            else:  # refused only when further ahead of wall time than the maximum offset
                assert (hlc >> 16) - wall[0] > clock.max_offset_ms
        else:
            for _ in range(arg):
                tick()
    tick()


# -- both-sets acknowledgement rule -------------------------------------------------------------

POOL = ("a", "b", "c", "d", "e", "f", "g")
replica_sets = st.lists(st.sampled_from(POOL), min_size=1, max_size=5, unique=True).map(tuple)
NEEDED: dict[Consistency, Callable[[int], int]] = {  # answers needed from a set of n replicas, written out
    Consistency.ONE: lambda n: 1,
    Consistency.QUORUM: lambda n: n // 2 + 1,
    Consistency.ALL: lambda n: n,
}


def brute_satisfied(level: Consistency, sets: list[tuple[str, ...]], acked: set[str]) -> bool:
    return all(len([n for n in s if n in acked]) >= NEEDED[level](len(s)) for s in sets)


@settings(max_examples=300, deadline=None)
@given(replica_sets, st.none() | replica_sets, st.sampled_from(list(Consistency)), st.data())
def test_both_sets_rule_matches_brute_force(
    old: tuple[str, ...], new: tuple[str, ...] | None, level: Consistency, data: st.DataObject
) -> None:
    p = ReplicaPlan(level, old, new)
    sets = [old] if new is None else [old, new]
    union = list(dict.fromkeys(old + (new or ())))

    assert p.targets == tuple(union)
    assert len(set(p.targets)) == len(p.targets)

    # Every subset of acknowledged nodes.
    for size in range(len(union) + 1):
        for subset in itertools.combinations(union, size):
            assert p.satisfied(set(subset)) == brute_satisfied(level, sets, set(subset)), subset

    # Each node has answered yes, failed, or not answered yet.
    answers = data.draw(
        st.lists(st.sampled_from(["ack", "failed", "pending"]), min_size=len(union), max_size=len(union))
    )
    acked = {n for n, a in zip(union, answers, strict=True) if a == "ack"}
    failed = {n for n, a in zip(union, answers, strict=True) if a == "failed"}
    pending = [n for n in union if n not in acked | failed]
    could = any(
        brute_satisfied(level, sets, acked | set(more))
        for k in range(len(pending) + 1)
        for more in itertools.combinations(pending, k)
    )
    assert p.still_possible(acked, failed) == could, (acked, failed)


# -- routing per migration phase ----------------------------------------------------------------

BEFORE_CUTOVER = (Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.ROLLING_BACK)
NOT_ROUTED = (None, Phase.QUEUED, Phase.CANCELLING)
ALL_PHASES = (*NOT_ROUTED, *BEFORE_CUTOVER, Phase.CUTOVER, Phase.CLEANUP, Phase.DONE)


@settings(max_examples=80, deadline=None)
@given(
    clusters(min_nodes=3, max_nodes=6),
    st.sampled_from(ALL_PHASES),
    st.sampled_from(["joining", "active"]),
    st.sampled_from(list(Consistency)),
    random_tokens,
)
def test_read_and_write_sets_follow_the_phase_table(
    cluster: tuple[list[tuple[str, int]], int],
    phase: str | None,
    moving_status: str,
    level: Consistency,
    extra: list[int],
) -> None:
    nodes, rf = cluster
    rf = min(rf, len(nodes) - 1)  # the current ring can serve it
    tokens = allocate(nodes)
    moving = nodes[-1][0]
    infos = {n: NodeInfo(n, "127.0.0.1", 7000 + i, NodeState.ACTIVE, c) for i, (n, c) in enumerate(nodes)}
    in_flight = None
    if phase is None:
        # No ring change in flight: a node that holds tokens but is not active gets nothing.
        infos[moving] = NodeInfo(moving, "127.0.0.1", 7999, NodeState.JOINING, nodes[-1][1])
    elif phase != Phase.DONE:  # done: the migration has finished, the node is simply in the ring
        infos[moving] = NodeInfo(moving, "127.0.0.1", 7999, NodeState(moving_status), nodes[-1][1])
        in_flight = InFlight("mig", moving, Phase(phase))
    tenants = {"t": TenantInfo("t", rf, datetime.now(UTC))}
    topology = Topology.from_snapshot(Snapshot(7, infos, tokens, tenants, in_flight))

    current = BruteRing([(t, n) for t, n in tokens if n != moving])
    future = BruteRing(tokens)
    for t in probes(tokens, extra):
        old, new = current.replicas(t, rf), future.replicas(t, rf)
        write = plan(topology, t, rf, level, write=True)
        read = plan(topology, t, rf, level, write=False)
        assert write.level == read.level == level
        want_write: tuple[tuple[str, ...], ...]
        want_read: tuple[tuple[str, ...], ...]
        if phase in NOT_ROUTED:
            want_write, want_read = (old,), (old,)
        elif phase in BEFORE_CUTOVER:
            want_write, want_read = tuple(dict.fromkeys([old, new])), (old,)
        elif phase == Phase.CUTOVER:
            want_write, want_read = tuple(dict.fromkeys([old, new])), (new,)
        else:  # cleanup, done
            want_write, want_read = (new,), (new,)
        # (old, new) with old == new is the same rule as (old,): compare without repeats.
        assert tuple(dict.fromkeys(write.sets)) == want_write, (phase, t)
        assert tuple(dict.fromkeys(read.sets)) == want_read, (phase, t)
        assert write.targets == tuple(dict.fromkeys(itertools.chain(*want_write)))
        assert read.targets == want_read[0]
