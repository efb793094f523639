"""Which storage nodes a request for a key goes to, and whose answers count.

The read and write sets follow the in-flight ring change's phase, as the
kernel's ROUTING table says (docs/architecture.md, section 5): writes to old,
old ∪ new (acknowledged when the level is met in each) or new; reads from old
or new.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

from pairdb.coordinator.metadata import TenantInfo
from pairdb.coordinator.quorum import Consistency, ReplicaPlan
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel.errors import NotFound, PairdbError, Unavailable
from pairdb.kernel.keyspace import token
from pairdb.kernel.migration import ROUTING, Writes


class StaleView(Exception):
    """The request's pinned view of the ring is older than what it needs: pin a fresh one and route again."""


class Route(NamedTuple):  # one per key of a batch: a tuple builds at C speed
    topology: Topology
    token: int
    rf: int
    plan: ReplicaPlan
    # Where a write of this key goes now: also where a read makes the value it returns durable.
    # The plan itself for a write, and for a read while no ring change is in flight.
    writes: ReplicaPlan
    tenant_id: str = ""


def plan(
    topology: Topology, t: int, rf: int, level: Consistency, *, write: bool, tenant_id: str = ""
) -> ReplicaPlan:
    old = topology.ring.replicas(t, rf)
    if topology.future is None or topology.phase is None:
        return _steady_plan(level, old)
    new = topology.future.replicas(t, topology.rf_after(tenant_id, rf))
    routing = ROUTING[topology.phase]
    if not write:
        return ReplicaPlan(level, new if routing.reads_new else old)
    if routing.writes is Writes.NEW:
        return ReplicaPlan(level, new)
    if routing.writes is Writes.OLD or old == new:
        return ReplicaPlan(level, old)
    return ReplicaPlan(level, old, new)


@functools.lru_cache(maxsize=4096)
def _steady_plan(level: Consistency, replicas: tuple[str, ...]) -> ReplicaPlan:
    """A plan with no ring change in flight. A ring has a few hundred replica sets and every request
    asks for one: one plan object each, and the caches keyed by plans (quorum.py) find it at once."""
    return ReplicaPlan(level, replicas)


async def route(
    cache: TopologyCache, topology: Topology, tenant_id: str, key: str, level: Consistency, *, write: bool
) -> Route:
    return _route(topology, await _tenant(cache, topology, tenant_id), key, level, write=write)


async def route_many(
    cache: TopologyCache,
    topology: Topology,
    keys: Sequence[tuple[str, str]],
    level: Consistency,
    *,
    write: bool,
) -> list[Route | PairdbError | StaleView]:
    """route() of each (tenant_id, key), or what it raised; a batch's tenants are looked up once each."""
    tenants: dict[str, TenantInfo | PairdbError | StaleView] = {}
    routes: list[Route | PairdbError | StaleView] = []
    for tenant_id, key in keys:
        tenant = tenants.get(tenant_id)
        if tenant is None:
            try:
                tenant = await _tenant(cache, topology, tenant_id)
            except (PairdbError, StaleView) as exc:
                tenant = exc
            tenants[tenant_id] = tenant
        if isinstance(tenant, PairdbError | StaleView):
            routes.append(tenant)
            continue
        try:
            routes.append(_route(topology, tenant, key, level, write=write))
        except PairdbError as exc:
            routes.append(exc)
    return routes


async def _tenant(cache: TopologyCache, topology: Topology, tenant_id: str) -> TenantInfo:
    tenant = topology.tenants.get(tenant_id) or await cache.tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist; create it with CreateTenant")
    if tenant.created_epoch > topology.epoch:
        # Created after the view this request pinned: that ring may lack nodes that
        # joined before the tenant existed (a direct join), so never route it by that.
        raise StaleView(f"tenant {tenant_id!r} is newer than epoch {topology.epoch}")
    return tenant


def _route(topology: Topology, tenant: TenantInfo, key: str, level: Consistency, *, write: bool) -> Route:
    tenant_id, rf = tenant.tenant_id, tenant.replication_factor
    t = token(tenant_id, key)
    p = plan(topology, t, rf, level, write=write, tenant_id=tenant_id)
    # Once reads (or writes) moved to a lowered RF's smaller sets, those are what must be whole.
    if len(p.old) < min(rf, topology.rf_after(tenant_id, rf)):
        raise Unavailable(
            f"tenant {tenant_id!r} has replication factor {rf} but the ring "
            f"has {len(p.old)} active node(s); add storage nodes"
        )
    writes = p
    if not write and topology.future is not None:
        writes = plan(topology, t, rf, level, write=True, tenant_id=tenant_id)
    return Route(topology, t, rf, p, writes, tenant_id)
