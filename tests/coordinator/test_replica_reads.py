"""Which replicas a read asks, and when it asks the others.

Unit tests of replica_reads.py against scripted nodes (no storage node): every
get a read submits is recorded and answered when the test says so.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc

from pairdb.coordinator.answer_times import AnswerTimes
from pairdb.coordinator.replica_reads import DirectGets, KeyRead, first_asks
from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.storage_node.client import StorageError, StoragePool

RECORD = StoredRecord("t", "k", b"v", Version(1 << 16, 1))


class Node:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.asks: list[asyncio.Future[StoredRecord | None]] = []
        # Direct calls (GetMany): the keys of each, and what the node answers them with.
        self.calls: list[list[tuple[str, str]]] = []
        self.answer: list[StoredRecord | StorageError | None] | StorageError = []

    def submit_get(self, tenant_id: str, key: str, *, epoch: int) -> asyncio.Future[StoredRecord | None]:
        ask: asyncio.Future[StoredRecord | None] = asyncio.get_running_loop().create_future()
        self.asks.append(ask)
        return ask

    async def get_many(
        self, keys: list[tuple[str, str]], *, epoch: int
    ) -> list[StoredRecord | StorageError | None]:
        self.calls.append(keys)
        if isinstance(self.answer, StorageError):
            raise self.answer
        return self.answer or [RECORD] * len(keys)


class Pool:
    def __init__(self, *node_ids: str) -> None:
        self.nodes = {n: Node(n) for n in node_ids}

    def node(self, node_id: str, address: str) -> Node:
        return self.nodes[node_id]

    def asked(self) -> list[str]:
        return sorted(n for n, node in self.nodes.items() if node.asks)


def times() -> AnswerTimes:
    return AnswerTimes(0.05, floor=0.005, ceiling=1.0)


def read(pool: Pool, order: tuple[str, ...], need: int) -> KeyRead:
    addresses = {n: f"{n}:1" for n in order}
    return KeyRead(cast(StoragePool, cast(Any, pool)), addresses, 7, "t", "k", order, need, times())


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_replicas_take_turns_being_asked_first() -> None:
    replicas = ("a", "b", "c")
    assert [first_asks(replicas, turn)[:2] for turn in range(3)] == [("a", "b"), ("b", "c"), ("c", "a")]


def test_during_a_ring_change_replicas_in_both_sets_are_asked_first_whatever_the_turn() -> None:
    for turn in range(3):
        assert set(first_asks(("a", "b", "c"), turn, preferred={"a", "c"})[:2]) == {"a", "c"}


async def test_a_quorum_read_asks_two_of_three_and_is_decided_by_their_answers() -> None:
    pool = Pool("a", "b", "c")
    r = read(pool, ("a", "b", "c"), need=2)
    assert pool.asked() == ["a", "b"]
    pool.nodes["a"].asks[0].set_result(RECORD)
    pool.nodes["b"].asks[0].set_result(None)
    await settle()
    assert r.decision.done()
    assert r.answers == {"a": RECORD, "b": None}
    assert pool.asked() == ["a", "b"]  # the third replica was never needed


async def test_a_replica_that_fails_is_replaced_by_a_spare_at_once() -> None:
    pool = Pool("a", "b", "c")
    r = read(pool, ("a", "b", "c"), need=2)
    pool.nodes["a"].asks[0].set_exception(StorageError("a", grpc.StatusCode.UNAVAILABLE, "down"))
    await settle()
    assert pool.asked() == ["a", "b", "c"]
    assert not r.decision.done()
    pool.nodes["b"].asks[0].set_result(RECORD)
    pool.nodes["c"].asks[0].set_result(RECORD)
    await settle()
    assert r.decision.done() and set(r.answers) == {"b", "c"}
    assert "UNAVAILABLE" in r.failed["a"]


async def test_a_read_whose_first_asks_are_slow_asks_the_spares_when_its_wait_runs_out() -> None:
    pool = Pool("a", "b", "c")
    r = read(pool, ("a", "b", "c"), need=2)
    pool.nodes["a"].asks[0].set_result(RECORD)
    await settle()
    r.speculate()  # what the read path's alarm does after the p99 of recent answers
    assert pool.asked() == ["a", "b", "c"]
    pool.nodes["c"].asks[0].set_result(RECORD)
    await settle()
    assert r.decision.done() and set(r.answers) == {"a", "c"}
    assert set(r.late.values()) == {"b"}  # its answer, when it comes, is drained after the reply


async def test_a_read_fails_once_too_few_replicas_are_left_to_answer() -> None:
    pool = Pool("a", "b", "c")
    r = read(pool, ("a", "b", "c"), need=2)
    for node in ("a", "b"):
        pool.nodes[node].asks[0].set_exception(StorageError(node, grpc.StatusCode.UNAVAILABLE, "down"))
    await settle()
    assert r.decision.done() and len(r.answers) < r.need


async def test_an_all_read_asks_every_replica_at_once() -> None:
    pool = Pool("a", "b", "c")
    read(pool, ("a", "b", "c"), need=3)
    assert pool.asked() == ["a", "b", "c"]


def test_the_wait_before_asking_spares_follows_the_p99_of_recent_answers_within_its_bounds() -> None:
    t = AnswerTimes(0.05, floor=0.005, ceiling=1.0, window=100, every=100)
    for i in range(100):
        t.add(0.010 if i < 98 else 0.200)
    assert t.delay == 0.200
    for _ in range(100):
        t.add(0.001)
    assert t.delay == 0.005  # never below the floor
    for _ in range(100):
        t.add(5.0)
    assert t.delay == 1.0  # nor above the ceiling


def batch_reads(pool: Pool, keys: int, call_items: int = 1000) -> tuple[DirectGets, list[KeyRead]]:
    direct = DirectGets(cast(StoragePool, cast(Any, pool)), 7, call_items, asyncio.get_running_loop())
    addresses = {n: f"{n}:1" for n in ("a", "b", "c")}
    reads = [KeyRead(direct, addresses, 7, "t", f"k{i}", ("a", "b", "c"), 2, None) for i in range(keys)]
    return direct, reads


async def test_a_batch_asks_each_node_for_its_keys_in_direct_calls_not_one_by_one() -> None:
    pool = Pool("a", "b", "c")
    direct, reads = batch_reads(pool, 250, call_items=100)
    assert pool.asked() == []  # nothing leaves before every read of the batch is made
    await asyncio.gather(*direct.send())
    await settle()
    assert [len(c) for c in pool.nodes["a"].calls] == [100, 100, 50]
    assert [len(c) for c in pool.nodes["b"].calls] == [100, 100, 50]
    assert pool.nodes["c"].calls == []  # the spare replica is not asked
    assert all(r.decision.done() and r.answers == {"a": RECORD, "b": RECORD} for r in reads)


async def test_a_direct_call_that_fails_fails_its_asks_and_each_read_asks_a_spare_the_usual_way() -> None:
    pool = Pool("a", "b", "c")
    pool.nodes["a"].answer = StorageError("a", grpc.StatusCode.UNAVAILABLE, "down")
    direct, reads = batch_reads(pool, 40)
    await asyncio.gather(*direct.send())
    await settle()
    assert all("UNAVAILABLE" in r.failed["a"] for r in reads)
    assert len(pool.nodes["c"].asks) == 40 and pool.nodes["c"].calls == []  # spares: one by one
    for ask in pool.nodes["c"].asks:
        ask.set_result(RECORD)
    await settle()
    assert all(r.decision.done() and set(r.answers) == {"b", "c"} for r in reads)


async def test_an_error_for_one_key_of_a_direct_call_fails_only_that_keys_ask() -> None:
    pool = Pool("a", "b", "c")
    refused = StorageError("a", grpc.StatusCode.INVALID_ARGUMENT, "key too long")
    pool.nodes["a"].answer = [RECORD, refused, RECORD]
    direct, reads = batch_reads(pool, 3)
    await asyncio.gather(*direct.send())
    await settle()
    assert [set(r.answers) for r in reads] == [{"a", "b"}, {"b"}, {"a", "b"}]
    assert "key too long" in reads[1].failed["a"] and len(pool.nodes["c"].asks) == 1
