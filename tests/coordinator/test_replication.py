"""Which sends of a write nobody waits for (the joining node's, while the other replicas suffice), and
when a write hurries them after all.

Unit tests of coordinator/replication.py against recording nodes (no gRPC):
the flag they check is what lets a node's coalescer hold those sends for
company (storage_node/coalescing.py), so a dual write costs the joining node
a few large calls instead of one per moment; a hurry sends them at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from pairdb.coordinator.metadata import NodeInfo
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.replication import DIRECT_CALLS_FROM, Delivery, Outcome, Replicator
from pairdb.coordinator.ring import Ring
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import APPLIED, Applied, StoredRecord, Version
from pairdb.kernel.migration import NodeState
from pairdb.storage_node.client import StaleEpoch, StorageError
from pairdb.storage_node.layout import decode, split_entries

NODES = ("a", "b", "c", "d", "e")
TOPOLOGY = Topology(
    3,
    Ring.from_tokens((i, n) for i, n in enumerate(NODES)),
    {n: NodeInfo(n, "127.0.0.1", 1, NodeState.ACTIVE, 1) for n in NODES},
    {},
)
RECORD = StoredRecord("t", "k", b"v", Version(2 << 16, 1))


class Node:
    """Answers a write at once, or (patient) when hurried, or (silent) never, or (failing) with an error.

    Remembers whether each write was sent as patient, and whether it was hurried.
    """

    def __init__(self, behaviour: str = "") -> None:
        self.behaviour = behaviour
        # Most writes to it found a call out (a busy coordinator): what patience needs.
        self.writes_crowded = True
        self.patient: list[bool] = []
        self.hurried = False
        self._held: list[asyncio.Future[Any]] = []

    def submit_apply(self, record: StoredRecord, *, epoch: int, patient: bool = False) -> asyncio.Future[Any]:
        self.patient.append(patient)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.behaviour == "failing":
            answer.set_exception(ConnectionError("node down"))
        elif self.behaviour == "silent" or (patient and self.behaviour == "patient"):
            self._held.append(answer)
        else:
            answer.set_result(APPLIED)
        return answer

    def hurry_applies(self) -> None:
        self.hurried = True
        if self.behaviour == "patient":
            for answer in self._held:
                answer.set_result(APPLIED)
            self._held.clear()


class Pool:
    def __init__(self, **behaviours: str) -> None:
        self.nodes = {n: Node(behaviours.get(n, "")) for n in NODES}

    def node(self, node_id: str, address: str) -> Node:
        return self.nodes[node_id]


ADDITION = ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b", "d"))


class Cache:
    def track(self, epoch: int, work: asyncio.Future[Any]) -> None:
        pass


async def patient_sends(plan: ReplicaPlan, crowded: bool = True) -> set[str]:
    pool = Pool()
    for node in pool.nodes.values():
        node.writes_crowded = crowded
    outcome = await Replicator(Cache(), pool).send(TOPOLOGY, plan, RECORD, dual_write=True)  # type: ignore[arg-type]
    assert plan.satisfied(outcome.acked)
    return {n for n, node in pool.nodes.items() if any(node.patient)}


@pytest.mark.parametrize(
    ("plan", "patient"),
    [
        # An addition: the old replicas a and b meet QUORUM in both sets; d only follows along.
        (ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b", "d")), {"d"}),
        (ReplicaPlan(Consistency.ONE, ("a", "b", "c"), ("a", "b", "d")), {"d"}),
        # The future set's QUORUM needs one of d and e: the write waits for them.
        (ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "d", "e")), set()),
        # ALL needs every replica of both sets.
        (ReplicaPlan(Consistency.ALL, ("a", "b", "c"), ("a", "b", "d")), set()),
        # No ring change: every send is waited for.
        (ReplicaPlan(Consistency.QUORUM, ("a", "b", "c")), set()),
        # A removal: the old set's leaving node is waited for like any old replica.
        (ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b")), set()),
    ],
)
async def test_only_sends_to_joining_nodes_the_plan_can_do_without_are_patient(
    plan: ReplicaPlan, patient: set[str]
) -> None:
    assert await patient_sends(plan) == patient


async def test_under_a_load_with_headroom_a_joining_nodes_send_goes_at_once() -> None:
    # The old replicas' calls are not crowded: patience would save the joining node little, and a
    # write that counted on neither it nor c would wait for both a and b instead of the first two.
    assert await patient_sends(ADDITION, crowded=False) == set()


async def test_a_joining_nodes_send_waits_for_company_only_while_every_old_replica_is_crowded() -> None:
    pool = Pool()
    pool.nodes["c"].writes_crowded = False
    await Replicator(Cache(), pool).send(TOPOLOGY, ADDITION, RECORD, dual_write=True)  # type: ignore[arg-type]
    assert pool.nodes["d"].patient == [False]


async def test_a_read_write_back_sends_nothing_patient() -> None:
    # A client waits already, and a write-back means a replica lagged.
    pool = Pool()
    plan = ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b", "d"))
    await Replicator(Cache(), pool).send(TOPOLOGY, plan, RECORD, patient=False)  # type: ignore[arg-type]
    assert not any(any(node.patient) for node in pool.nodes.values())


async def test_a_write_whose_shared_replica_is_slow_hurries_the_joining_nodes_send() -> None:
    # b never answers: the future set's QUORUM needs d after all. d answers only when hurried, which
    # the write does once it took longer than most writes lately.
    pool = Pool(b="silent", d="patient")
    replicator = Replicator(Cache(), pool)  # type: ignore[arg-type]
    outcome = await asyncio.wait_for(replicator.send(TOPOLOGY, ADDITION, RECORD, dual_write=True), 10)
    assert pool.nodes["d"].hurried
    assert outcome.acked == {"a", "c", "d"}
    assert ADDITION.satisfied(outcome.acked)


async def test_a_write_whose_shared_replica_fails_hurries_at_once() -> None:
    pool = Pool(b="failing", d="patient")
    replicator = Replicator(Cache(), pool)  # type: ignore[arg-type]
    replicator._decided.delay = 3600.0  # only the failure can hurry it
    outcome = await asyncio.wait_for(replicator.send(TOPOLOGY, ADDITION, RECORD, dual_write=True), 10)
    assert pool.nodes["d"].hurried
    assert ADDITION.satisfied(outcome.acked)
    assert "b" in outcome.failed


async def test_a_write_its_old_replicas_decide_does_not_hurry() -> None:
    pool = Pool(d="patient")
    replicator = Replicator(Cache(), pool)  # type: ignore[arg-type]
    outcome = await replicator.send(TOPOLOGY, ADDITION, RECORD, dual_write=True)
    assert ADDITION.satisfied(outcome.acked) and "d" not in outcome.acked
    await asyncio.sleep(replicator._decided.delay * 2)  # past when it would have hurried
    assert not pool.nodes["d"].hurried


@pytest.mark.parametrize("failing", [(), ("a",), ("a", "b"), ("a", "b", "c")])
@pytest.mark.parametrize("level", list(Consistency))
async def test_an_outcome_says_whether_its_acknowledgements_meet_the_plan(
    failing: tuple[str, ...], level: Consistency
) -> None:
    """The write path trusts outcome.met (the tally's count) instead of counting acked again."""
    pool = Pool(**dict.fromkeys(failing, "failing"))
    plan = ReplicaPlan(level, ("a", "b", "c"))
    outcome = await Replicator(Cache(), pool).send(TOPOLOGY, plan, RECORD)  # type: ignore[arg-type]
    assert outcome.met == plan.satisfied(outcome.acked) == plan.satisfied({"a", "b", "c"} - set(failing))


# A batch's records go to each node in slices counted as one while their answers agree. Whatever
# each node answers each record, a record's outcome in a batch is the one it gets sent alone.

ANSWERS = ("applied", "same", "newer", "refused")
NEWER = Version(9 << 16, 1)
T = TypeVar("T")


class Scripted:
    """A node answering each record as the script says, one by one or in a direct call, once it is
    let (open); failing: every call fails; fenced: every call is refused by a newer epoch's fence."""

    def __init__(self, node: str, script: dict[tuple[str, str], str], behaviour: str) -> None:
        self.node, self.script, self.behaviour = node, script, behaviour
        self.opened = asyncio.Event()

    def _answer(self, record: StoredRecord) -> Applied | BaseException:
        answer = self.script.get((self.node, record.key), "applied")
        if answer == "refused":
            return StorageError(self.node, grpc.StatusCode.INVALID_ARGUMENT, f"{record.key} refused")
        if answer == "newer":
            return Applied(False, NEWER)
        return APPLIED if answer == "applied" else Applied(False, record.version, same=True)

    def _call(self) -> None:
        if self.behaviour == "failing":
            raise StorageError(self.node, grpc.StatusCode.UNAVAILABLE, "node down")
        if self.behaviour == "fenced":
            raise StaleEpoch(self.node, "fenced at epoch 4", 4)

    def submit_apply(self, record: StoredRecord, *, epoch: int, patient: bool = False) -> asyncio.Future[Any]:
        async def answer() -> Applied | BaseException:
            await self.opened.wait()
            self._call()
            return self._answer(record)

        return asyncio.ensure_future(answer())

    writes_crowded = False

    def hurry_applies(self) -> None:
        pass  # it answers when opened

    async def apply_entries(self, packed: bytes, count: int, *, epoch: int) -> list[Applied | BaseException]:
        await self.opened.wait()
        self._call()
        records = [decode(*entry) for entry in split_entries(packed)]
        assert len(records) == count
        return [self._answer(record) for record in records]


class ScriptedPool:
    def __init__(self, script: dict[tuple[str, str], str], behaviours: dict[str, str]) -> None:
        self.nodes = {n: Scripted(n, script, behaviours.get(n, "")) for n in NODES}

    def node(self, node_id: str, address: str) -> Scripted:
        return self.nodes[node_id]

    async def in_node_order(self, work: Awaitable[T]) -> T:
        """work's result, its nodes answering one after another (a first), each once the last one's
        answers were taken: which answers decide a record is then the same however it was sent."""
        task = asyncio.ensure_future(work)
        for node in self.nodes.values():
            node.opened.set()
            for _ in range(10):  # loop turns: a call's answer, its callback, the caller's wake-up
                await asyncio.sleep(0)
        return await task


PLANS = (
    ReplicaPlan(Consistency.QUORUM, ("a", "b", "c")),
    ReplicaPlan(Consistency.QUORUM, ("c", "a", "b")),  # the same sets, in another order
    ReplicaPlan(Consistency.QUORUM, ("b", "c", "d")),
    ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b", "d")),
    ReplicaPlan(Consistency.ALL, ("a", "b", "c")),
    ReplicaPlan(Consistency.ONE, ("c", "d", "e")),
)


def _seen(outcome: Outcome) -> tuple[object, ...]:
    return outcome.met, outcome.acked, outcome.failed, outcome.newer, outcome.stale is not None


@settings(max_examples=60, deadline=None)
@given(
    plans=st.lists(st.sampled_from(PLANS), min_size=DIRECT_CALLS_FROM, max_size=80),
    # Some records get an answer of each node chosen; the others are applied everywhere.
    answers=st.dictionaries(
        st.integers(0, 79), st.tuples(*[st.sampled_from(ANSWERS)] * len(NODES)), max_size=12
    ),
    behaviours=st.dictionaries(st.sampled_from(NODES), st.sampled_from(("failing", "fenced")), max_size=2),
    newer_counts=st.booleans(),
    holders=st.booleans(),
)
async def test_a_records_outcome_in_a_batch_is_the_one_it_gets_alone(
    plans: list[ReplicaPlan],
    answers: dict[int, tuple[str, ...]],
    behaviours: dict[str, str],
    newer_counts: bool,
    holders: bool,
) -> None:
    script = {
        (node, f"k{i}"): answer
        for i, chosen in answers.items()
        for node, answer in zip(NODES, chosen, strict=True)
    }
    deliveries = [
        # Every third record's first replica holds it already (a read's write-back).
        Delivery(
            plan,
            StoredRecord("t", f"k{i}", b"v", Version(2 << 16, 1)),
            plan.old[:1] if holders and i % 3 == 0 else (),
        )
        for i, plan in enumerate(plans)
    ]
    pool = ScriptedPool(script, behaviours)
    replicator = Replicator(Cache(), pool)  # type: ignore[arg-type]
    batch = await pool.in_node_order(replicator.send_many(TOPOLOGY, deliveries, newer_counts=newer_counts))
    pool = ScriptedPool(script, behaviours)
    replicator = Replicator(Cache(), pool)  # type: ignore[arg-type]
    alone = await pool.in_node_order(
        asyncio.gather(
            *(
                replicator.send_many(TOPOLOGY, [delivery], newer_counts=newer_counts)
                for delivery in deliveries
            )
        )
    )
    for delivery, outcome, [single] in zip(deliveries, batch, alone, strict=True):
        assert _seen(outcome) == _seen(single), delivery.record.key


async def test_a_batchs_failed_sends_are_logged_as_dual_writes_only_where_the_node_is_joining() -> None:
    """One call to a node carries records of several plans: the node may be joining in some only."""
    joining_in = ReplicaPlan(Consistency.QUORUM, ("a", "b", "c"), ("a", "b", "d"))  # d: a dual write
    member_of = ReplicaPlan(Consistency.QUORUM, ("b", "c", "d"))  # d: an ordinary replica
    plans = [joining_in if i % 2 else member_of for i in range(DIRECT_CALLS_FROM)]
    deliveries = [
        Delivery(plan, StoredRecord("t", f"k{i}", b"v", Version(2 << 16, 1))) for i, plan in enumerate(plans)
    ]
    pool = ScriptedPool({("d", f"k{i}"): "refused" for i in range(len(plans))}, {})
    with capture_logs() as logs:
        await pool.in_node_order(Replicator(Cache(), pool).send_many(TOPOLOGY, deliveries))  # type: ignore[arg-type]
    events = {entry["key"]: entry["event"] for entry in logs if entry.get("node_id") == "d"}
    assert events == {
        f"k{i}": "Dual-write failed to migration node" if plan is joining_in else "Replica write failed"
        for i, plan in enumerate(plans)
    }
