"""Which sends of a write nobody waits for: the joining node's, while the other replicas suffice.

Unit tests of coordinator/replication.py against recording nodes (no gRPC):
the flag they check is what lets a node's coalescer hold those sends for
company (storage_node/coalescing.py), so a dual write costs the joining node
a few large calls instead of one per moment.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pairdb.coordinator.metadata import NodeInfo
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.replication import Replicator
from pairdb.coordinator.ring import Ring
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import Applied, StoredRecord, Version
from pairdb.kernel.migration import NodeState

NODES = ("a", "b", "c", "d", "e")
TOPOLOGY = Topology(
    3,
    Ring.from_tokens((i, n) for i, n in enumerate(NODES)),
    {n: NodeInfo(n, "127.0.0.1", 1, NodeState.ACTIVE, 1) for n in NODES},
    {},
)
RECORD = StoredRecord("t", "k", b"v", Version(2 << 16, 1))
APPLIED = Applied(True, Version(1 << 16, 1))


class Node:
    """Answers every write at once; remembers whether each was sent as patient."""

    def __init__(self) -> None:
        self.patient: list[bool] = []

    def submit_apply(self, record: StoredRecord, *, epoch: int, patient: bool = False) -> asyncio.Future[Any]:
        self.patient.append(patient)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.set_result(APPLIED)
        return answer


class Pool:
    def __init__(self) -> None:
        self.nodes = {n: Node() for n in NODES}

    def node(self, node_id: str, address: str) -> Node:
        return self.nodes[node_id]


class Cache:
    def track(self, epoch: int, work: asyncio.Future[Any]) -> None:
        pass


async def patient_sends(plan: ReplicaPlan) -> set[str]:
    pool = Pool()
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
