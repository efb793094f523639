"""What becomes a hint: a write a replica could not take then, on time or late; never a change of outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from pairdb.coordinator.hints import MAX_HINT_WINDOW, HintLimits, HintStore, hintable
from pairdb.coordinator.metadata import NodeInfo
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.replication import DIRECT_CALLS_FROM, Delivery, Outcome, Replicator
from pairdb.coordinator.ring import Ring
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import Applied, StoredRecord, Version
from pairdb.kernel.migration import NodeState
from pairdb.storage_node.client import StaleEpoch, StorageError

EPOCH = 7
NODES = ("n1", "n2", "n3")
PLAN = ReplicaPlan(Consistency.QUORUM, NODES)
TOPOLOGY = Topology(
    EPOCH,
    Ring.from_tokens((i, n) for i, n in enumerate(NODES)),
    {n: NodeInfo(n, "127.0.0.1", 1, NodeState.ACTIVE, 1) for n in NODES},
    {},
)
APPLIED = Applied(True, Version(1 << 16, 1))


def failure(code: grpc.StatusCode) -> StorageError:
    return StorageError("n3", code, "as the node or the network said")


@pytest.mark.parametrize(
    "exc",
    [
        failure(grpc.StatusCode.UNAVAILABLE),
        failure(grpc.StatusCode.DEADLINE_EXCEEDED),
        failure(grpc.StatusCode.CANCELLED),
        asyncio.CancelledError("the replica call was cancelled"),
        ConnectionRefusedError(),
        TimeoutError(),
    ],
)
def test_a_replica_that_could_not_take_the_write_then_is_hinted(exc: BaseException) -> None:
    assert hintable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        StaleEpoch("n3", "fenced at a newer epoch", 9),  # routed again by a newer view instead
        failure(grpc.StatusCode.INVALID_ARGUMENT),  # the record itself: refused again
        failure(grpc.StatusCode.FAILED_PRECONDITION),  # a version from the node's future
        failure(grpc.StatusCode.RESOURCE_EXHAUSTED),
        ValueError("a bug, not a replica's state"),
    ],
)
def test_a_fence_a_refused_record_or_a_bug_is_not_hinted(exc: BaseException) -> None:
    assert not hintable(exc)


def test_the_window_must_stay_far_below_the_tombstone_grace_period() -> None:
    assert HintLimits(max_hint_window=MAX_HINT_WINDOW).max_hint_window == MAX_HINT_WINDOW
    with pytest.raises(ValueError, match="tombstone grace"):
        HintLimits(max_hint_window=10 * 24 * 3600)
    with pytest.raises(ValueError):
        HintLimits(max_hint_window=0)
    with pytest.raises(ValueError):
        HintLimits(max_hints_per_node=-1)


class Hints(HintStore):
    """Remembers what the replicator leaves with it; no PostgreSQL (nothing is flushed)."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.hinted: list[tuple[str, str, int]] = []
        self.heard_from: set[str] = set()

    def record(self, node_id: str, record: StoredRecord, epoch: int) -> None:
        self.hinted.append((node_id, record.key, epoch))

    def heard(self, node_id: str) -> None:
        self.heard_from.add(node_id)


class Node:
    """A storage node whose answers the test gives, when it chooses: one future per call."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[Any]] = []

    def _call(self) -> asyncio.Future[Any]:
        call: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append(call)
        return call

    def submit_apply(self, record: StoredRecord, *, epoch: int, patient: bool = False) -> asyncio.Future[Any]:
        return self._call()

    def apply_entries(self, packed: bytes, count: int, *, epoch: int) -> asyncio.Future[Any]:
        return self._call()

    def answer(self, result: Any) -> None:
        """Answer every call: with result, or failing with it."""
        for call in self.calls:
            if isinstance(result, BaseException):
                call.set_exception(result)
            else:
                call.set_result(result)


class Pool:
    def __init__(self) -> None:
        self.nodes = {n: Node() for n in NODES}

    def node(self, node_id: str, address: str) -> Node:
        return self.nodes[node_id]


class Cache:
    def track(self, epoch: int, work: asyncio.Future[Any]) -> None:
        pass


def replicator(pool: Pool, hints: Hints | None) -> Replicator:
    return Replicator(Cache(), pool, hints)  # type: ignore[arg-type]


def record(key: str) -> StoredRecord:
    return StoredRecord("t", key, b"v", Version(2 << 16, 1))


async def send_answered(hints: Hints | None, answers: dict[str, Any]) -> Outcome:
    pool = Pool()
    sending = asyncio.ensure_future(replicator(pool, hints).send(TOPOLOGY, PLAN, record("k")))
    await asyncio.sleep(0)  # the sends are out
    for node, result in answers.items():
        pool.nodes[node].answer(result)
    return await sending


async def test_a_transient_failure_leaves_a_hint_and_the_same_outcome_as_without_hints() -> None:
    answers = {"n1": APPLIED, "n2": failure(grpc.StatusCode.UNAVAILABLE), "n3": APPLIED}
    hints = Hints()
    with_hints = await send_answered(hints, answers)
    assert with_hints == await send_answered(None, answers)
    assert with_hints.acked == {"n1", "n3"} and set(with_hints.failed) == {"n2"}
    assert hints.hinted == [("n2", "k", EPOCH)]
    assert hints.heard_from == {"n1", "n3"}


async def test_a_fence_or_a_refused_record_leaves_no_hint() -> None:
    answers = {
        "n1": APPLIED,
        "n2": StaleEpoch("n2", "fenced", EPOCH + 1),
        "n3": failure(grpc.StatusCode.INVALID_ARGUMENT),
    }
    hints = Hints()
    outcome = await send_answered(hints, answers)
    assert outcome == await send_answered(None, answers)
    assert outcome.stale is not None
    assert hints.hinted == []


async def test_a_send_that_fails_after_the_level_was_met_leaves_a_hint_and_changes_nothing() -> None:
    pool = Pool()
    hints = Hints()
    sending = asyncio.ensure_future(replicator(pool, hints).send(TOPOLOGY, PLAN, record("k")))
    await asyncio.sleep(0)
    pool.nodes["n1"].answer(APPLIED)
    pool.nodes["n2"].answer(APPLIED)
    outcome = await sending  # QUORUM met: n3's send is still out
    assert hints.hinted == []
    pool.nodes["n3"].answer(failure(grpc.StatusCode.DEADLINE_EXCEEDED))
    await asyncio.sleep(0)  # its answer is taken
    assert hints.hinted == [("n3", "k", EPOCH)]
    assert outcome.acked == {"n1", "n2"} and outcome.failed == {}


async def test_a_failed_batch_call_leaves_a_hint_for_each_of_its_records() -> None:
    pool = Pool()
    hints = Hints()
    deliveries = [Delivery(PLAN, record(f"k{i}")) for i in range(DIRECT_CALLS_FROM + 8)]
    sending = asyncio.ensure_future(replicator(pool, hints).send_many(TOPOLOGY, deliveries))
    await asyncio.sleep(0)
    for node in ("n1", "n2"):
        pool.nodes[node].answer([APPLIED] * len(deliveries))
    pool.nodes["n3"].answer(failure(grpc.StatusCode.UNAVAILABLE))
    outcomes = await sending
    assert all(o.acked == {"n1", "n2"} for o in outcomes)
    assert hints.hinted == [("n3", d.record.key, EPOCH) for d in deliveries]
