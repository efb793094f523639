"""Which storage nodes a request for a key goes to, and whose answers count.

The read and write sets follow the in-flight ring change's phase (docs/architecture.md, section 5):

| phase                              | writes go to | acknowledged when        | reads use |
|------------------------------------|--------------|--------------------------|-----------|
| none                               | old          | level met in old         | old       |
| dual_write, data_copy, rolling_back| old ∪ new    | level met in old and new | old       |
| cutover                            | old ∪ new    | level met in old and new | new       |
| cleanup                            | new          | level met in new         | new       |
"""

from __future__ import annotations

from dataclasses import dataclass

from pairdb.coordinator.errors import NotFound, Unavailable
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel import migration as m
from pairdb.kernel.keyspace import token

_READS_ON_NEW = (m.CUTOVER, m.CLEANUP)
_WRITES_ON_NEW_ONLY = (m.CLEANUP,)


class StaleView(Exception):
    """The request's pinned view of the ring is older than what it needs: pin a fresh one and route again."""


@dataclass(frozen=True, slots=True)
class Route:
    topology: Topology
    token: int
    rf: int
    plan: ReplicaPlan

    def write_plan(self) -> ReplicaPlan:
        """Where a write of this key goes now: also where a read makes the value it returns durable."""
        return plan(self.topology, self.token, self.rf, self.plan.level, write=True)


def plan(topology: Topology, t: int, rf: int, level: Consistency, *, write: bool) -> ReplicaPlan:
    old = topology.ring.replicas(t, rf)
    if topology.future is None:
        return ReplicaPlan(level, old)
    new = topology.future.replicas(t, rf)
    if topology.phase in _WRITES_ON_NEW_ONLY or (not write and topology.phase in _READS_ON_NEW):
        return ReplicaPlan(level, new)
    if not write or old == new:
        return ReplicaPlan(level, old)
    return ReplicaPlan(level, old, new)


async def route(
    cache: TopologyCache, topology: Topology, tenant_id: str, key: str, level: Consistency, *, write: bool
) -> Route:
    tenant = topology.tenants.get(tenant_id) or await cache.tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist; create it with CreateTenant")
    if tenant.created_epoch > topology.epoch:
        # Created after the view this request pinned: that ring may lack nodes that
        # joined before the tenant existed (a direct join), so never route it by that.
        raise StaleView(f"tenant {tenant_id!r} is newer than epoch {topology.epoch}")
    t = token(tenant_id, key)
    p = plan(topology, t, tenant.replication_factor, level, write=write)
    if len(p.old) < tenant.replication_factor:
        raise Unavailable(
            f"tenant {tenant_id!r} has replication factor {tenant.replication_factor} but the ring "
            f"has {len(p.old)} active node(s); add storage nodes"
        )
    return Route(topology, t, tenant.replication_factor, p)
