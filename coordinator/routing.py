"""Which storage nodes a request for a key goes to, and whose answers count."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.errors import NotFound, Unavailable
from coordinator.quorum import Consistency, ReplicaPlan
from coordinator.topology import Topology, TopologyCache
from pairdb.keyspace import token


@dataclass(frozen=True, slots=True)
class Route:
    topology: Topology
    token: int
    plan: ReplicaPlan


async def route(cache: TopologyCache, tenant_id: str, key: str, level: Consistency) -> Route:
    tenant = await cache.tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist; create it with CreateTenant")
    topology = cache.current
    t = token(tenant_id, key)
    replicas = topology.ring.replicas(t, tenant.replication_factor)
    if len(replicas) < tenant.replication_factor:
        raise Unavailable(
            f"tenant {tenant_id!r} has replication factor {tenant.replication_factor} but the ring "
            f"has {len(replicas)} active node(s); add storage nodes"
        )
    return Route(topology, t, ReplicaPlan(level, replicas))
