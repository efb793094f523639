"""Read and write sets follow the in-flight ring change's phase (docs/architecture.md, section 5)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import cast

import pytest

from pairdb.coordinator.metadata import InFlight, NodeInfo, Snapshot, TenantInfo
from pairdb.coordinator.quorum import Consistency
from pairdb.coordinator.ring import Ring, allocate_tokens
from pairdb.coordinator.routing import StaleView, plan, route, route_many
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.errors import NotFound
from pairdb.kernel.keyspace import in_range, token
from pairdb.kernel.migration import ChangeType, NodeState, Phase


def snapshot(phase: str | None, node4_status: str = "joining") -> Snapshot:
    tokens: list[tuple[int, str]] = []
    for n in ("node-1", "node-2", "node-3", "node-4"):
        tokens += [(t, n) for t in allocate_tokens(tokens, n, 64)]
    nodes = {
        n: NodeInfo(n, "127.0.0.1", 7000 + i, NodeState.ACTIVE, 64)
        for i, n in enumerate(["node-1", "node-2", "node-3"])
    }
    nodes["node-4"] = NodeInfo("node-4", "127.0.0.1", 7004, NodeState(node4_status), 64)
    tenants = {"t": TenantInfo("t", 3, datetime.now(UTC))}
    in_flight = InFlight("mig", "node-4", Phase(phase)) if phase else None
    return Snapshot(1, nodes, tokens, tenants, in_flight)


def keys_moving_to_node4(topology: Topology) -> list[int]:
    assert topology.future is not None
    found = [token("t", f"k{i}") for i in range(2000)]
    return [t for t in found if "node-4" in topology.future.replicas(t, 3)]


@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE, Phase.DATA_COPY, Phase.ROLLING_BACK])
def test_before_cutover_writes_need_both_sets_and_reads_use_old(phase: str) -> None:
    topology = Topology.from_snapshot(snapshot(phase))
    for t in keys_moving_to_node4(topology)[:50]:
        write = plan(topology, t, 3, Consistency.QUORUM, write=True)
        assert "node-4" in write.targets and "node-4" not in write.old
        assert write.new is not None and "node-4" in write.new
        read = plan(topology, t, 3, Consistency.QUORUM, write=False)
        assert read.new is None and "node-4" not in read.old


def test_in_cutover_writes_need_both_sets_and_reads_use_new() -> None:
    topology = Topology.from_snapshot(snapshot(Phase.CUTOVER, node4_status="active"))
    for t in keys_moving_to_node4(topology)[:50]:
        assert plan(topology, t, 3, Consistency.QUORUM, write=True).new is not None
        read = plan(topology, t, 3, Consistency.QUORUM, write=False)
        assert "node-4" in read.old and read.new is None


def test_in_cleanup_everything_uses_new_only() -> None:
    topology = Topology.from_snapshot(snapshot(Phase.CLEANUP, node4_status="active"))
    for t in keys_moving_to_node4(topology)[:50]:
        for write in (True, False):
            p = plan(topology, t, 3, Consistency.QUORUM, write=write)
            assert p.new is None and "node-4" in p.old


@pytest.mark.parametrize("phase", [None, Phase.QUEUED, Phase.CANCELLING])
def test_without_a_routed_phase_the_joining_node_gets_nothing(phase: str | None) -> None:
    topology = Topology.from_snapshot(snapshot(phase))
    assert topology.future is None
    for i in range(200):
        p = plan(topology, token("t", f"k{i}"), 3, Consistency.QUORUM, write=True)
        assert "node-4" not in p.targets


def test_keys_not_moving_keep_a_single_replica_set() -> None:
    topology = Topology.from_snapshot(snapshot(Phase.DATA_COPY))
    assert topology.future is not None
    for i in range(500):
        t = token("t", f"k{i}")
        if "node-4" not in topology.future.replicas(t, 3):
            assert plan(topology, t, 3, Consistency.QUORUM, write=True).new is None


def test_copy_plan_covers_every_token_whose_future_set_gains_the_node() -> None:
    topology = Topology.from_snapshot(snapshot(Phase.DATA_COPY))
    assert topology.future is not None
    movement = topology.movement()
    assert movement is not None
    moves = movement.moves()
    assert all(set(mv.gained()) == {"node-4"} for mv in moves)
    rng = random.Random(3)
    for _ in range(5000):
        t = rng.getrandbits(64)
        gains = "node-4" in topology.future.replicas(t, 3)
        covered = any(in_range(t, mv.start, mv.end) for mv in moves)
        assert gains == covered


def test_ring_of_old_and_new_differ_only_by_the_joining_node() -> None:
    topology = Topology.from_snapshot(snapshot(Phase.DUAL_WRITE))
    assert topology.future is not None
    assert topology.ring.node_ids == {"node-1", "node-2", "node-3"}
    assert topology.future.node_ids == {"node-1", "node-2", "node-3", "node-4"}
    assert isinstance(topology.ring, Ring)


# -- the other ring changes: the same phases over a different old and new ring -------------------


def three_nodes_and(in_flight: InFlight, statuses: dict[str, NodeState]) -> Snapshot:
    """node-1..3 with their tokens (node-4 known but without tokens), tenants t (RF 3) and u (RF 2)."""
    tokens: list[tuple[int, str]] = []
    for n in ("node-1", "node-2", "node-3"):
        tokens += [(t, n) for t in allocate_tokens(tokens, n, 64)]
    nodes = {
        n: NodeInfo(n, "127.0.0.1", 7000 + i, statuses.get(n, NodeState.ACTIVE), 64)
        for i, n in enumerate(["node-1", "node-2", "node-3", "node-4"])
    }
    tenants = {"t": TenantInfo("t", 3, datetime.now(UTC)), "u": TenantInfo("u", 2, datetime.now(UTC))}
    return Snapshot(1, nodes, tokens, tenants, in_flight)


def test_a_removal_writes_to_both_rings_and_its_new_ring_lacks_the_node() -> None:
    snap = three_nodes_and(
        InFlight("m", "node-3", Phase.DATA_COPY, ChangeType.NODE_REMOVAL),
        {"node-3": NodeState.LEAVING, "node-4": NodeState.REMOVED},
    )
    topology = Topology.from_snapshot(snap)
    assert topology.future is not None
    assert topology.ring.node_ids == {"node-1", "node-2", "node-3"}
    assert topology.future.node_ids == {"node-1", "node-2"}
    for i in range(100):
        t = token("u", f"k{i}")
        write = plan(topology, t, 2, Consistency.QUORUM, write=True, tenant_id="u")
        # Keys node-3 replicates are written to both sets; the others to their one set.
        if "node-3" in write.old:
            assert write.new is not None and set(write.new) == {"node-1", "node-2"}
        else:
            assert write.new is None
        assert plan(topology, t, 2, Consistency.QUORUM, write=False, tenant_id="u").new is None


def test_a_replacement_gives_the_dead_nodes_place_to_the_new_one() -> None:
    snap = three_nodes_and(
        InFlight("m", "node-4", Phase.CUTOVER, ChangeType.NODE_REPLACEMENT, replaces="node-3"),
        {"node-3": NodeState.LEAVING, "node-4": NodeState.ACTIVE},
    )
    topology = Topology.from_snapshot(snap)
    assert topology.future is not None
    for i in range(200):
        t = token("t", f"k{i}")
        old, new = topology.ring.replicas(t, 3), topology.future.replicas(t, 3)
        assert new == tuple("node-4" if n == "node-3" else n for n in old)
        # Reads are on the new ring from cutover: the dead node is never asked again.
        assert plan(topology, t, 3, Consistency.QUORUM, write=False, tenant_id="t").old == new


@pytest.mark.parametrize("target", [1, 2, 3])
def test_an_rf_change_moves_only_its_tenant(target: int) -> None:
    snap = three_nodes_and(
        InFlight("m", "", Phase.DUAL_WRITE, ChangeType.RF_CHANGE, tenant_id="u", replication_factor=target),
        {},
    )
    topology = Topology.from_snapshot(snap)
    for i in range(100):
        tu, tt = token("u", f"k{i}"), token("t", f"k{i}")
        write = plan(topology, tu, 2, Consistency.QUORUM, write=True, tenant_id="u")
        assert write.old == topology.ring.replicas(tu, 2)
        assert (write.new or write.old) == topology.ring.replicas(tu, target)
        assert plan(topology, tt, 3, Consistency.QUORUM, write=True, tenant_id="t").new is None


class NoMoreTenants:
    """A topology cache that knows no tenant beyond the snapshot's."""

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        return None


@pytest.mark.parametrize("write", [True, False])
async def test_a_batch_is_routed_key_by_key_as_one_key_is_and_a_tenants_error_fails_only_its_keys(
    write: bool,
) -> None:
    snap = snapshot(Phase.DATA_COPY)
    snap.tenants["later"] = TenantInfo("later", 3, datetime.now(UTC), created_epoch=snap.epoch + 1)
    topology = Topology.from_snapshot(snap)
    cache = cast(TopologyCache, NoMoreTenants())
    keys = [("t", f"k{i}") for i in range(40)] + [("nobody", "k"), ("later", "k"), ("t", "last")]
    routes = await route_many(cache, topology, keys, Consistency.QUORUM, write=write)
    for (tenant_id, key), got in zip(keys[:40] + keys[-1:], routes[:40] + routes[-1:], strict=True):
        assert got == await route(cache, topology, tenant_id, key, Consistency.QUORUM, write=write)
    assert isinstance(routes[40], NotFound) and isinstance(routes[41], StaleView)
