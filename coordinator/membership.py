"""Ring changes as operators ask for them: add, remove or replace a node, change a tenant's RF.

Each is checked here (refused with a status that says why, nothing changed)
and then runs as a workflow (migrations.py).

A node joins a cluster that has no tenant yet directly: with no tenant there
is no data and no request to route, so it becomes active at once (how a new
cluster's first nodes start); a tenant created later is never routed by a view
older than itself (routing.py). Once a tenant exists, a node joins online
through NodeAdditionWorkflow, even while the tenants are still empty: a write
may be on its way to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog

from pairdb.coordinator.metadata import Metadata, NodeInfo
from pairdb.coordinator.migration_store import NewChange
from pairdb.coordinator.migrations import Migrations, Started
from pairdb.coordinator.ring import DEFAULT_VIRTUAL_NODES, allocate_tokens
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel import migration as m
from pairdb.kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pairdb.kernel.migration import ChangeType, NodeState
from pairdb.storage_node.client import NodeClient, NodeStats, StorageError, StoragePool

log = structlog.get_logger()

MAX_VIRTUAL_NODES = 1024


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    migration_id: str
    message: str
    estimated_completion: datetime | None
    workflow_id: str = ""


class Membership:
    def __init__(
        self, cache: TopologyCache, metadata: Metadata, pool: StoragePool, migrations: Migrations
    ) -> None:
        self._cache = cache
        self._metadata = metadata
        self._pool = pool
        self._migrations = migrations
        # One ring change at a time from this coordinator; the metadata
        # transaction serialises coordinators among themselves.
        self._lock = asyncio.Lock()

    async def add(
        self,
        node_id: str,
        host: str,
        port: int,
        virtual_nodes: int | None,
        started_by: str,
        hold_at_cutover: bool = False,
        throttle: int = 0,
    ) -> ChangeOutcome:
        vnodes = virtual_nodes or DEFAULT_VIRTUAL_NODES
        if not 1 <= vnodes <= MAX_VIRTUAL_NODES:
            raise InvalidArgument(f"virtual_nodes must be 1..{MAX_VIRTUAL_NODES}")
        async with self._lock:
            topology = await self._cache.refresh()
            known = topology.nodes.get(node_id)
            if known is not None and known.status != NodeState.REMOVED:
                raise AlreadyExists(f"node {node_id!r} is already in the cluster ({known.status})")
            empty = await self._new_node_is_empty(node_id, host, port)
            if not topology.tenants and topology.future is None and empty:
                if await self._join_empty_ring(topology, node_id, host, port, vnodes):
                    return ChangeOutcome(
                        "", f"node {node_id} joined the ring directly: the cluster has no tenant yet", None
                    )
            keys = await self._keys_per_node(topology, topology.ring.node_ids)
        started = await self._migrations.start_node_addition(
            m.NodeAdditionInput(
                str(uuid.uuid4()), node_id, host, port, vnodes, throttle, started_by, hold_at_cutover
            ),
            keys_to_move=keys,
        )
        return _started(ChangeType.NODE_ADDITION, started)

    async def remove(
        self, node_id: str, *, dead: bool, started_by: str, hold_at_cutover: bool = False, throttle: int = 0
    ) -> ChangeOutcome:
        """Decommission an active node (or take a dead one out: `dead`, never asked)."""
        async with self._lock:
            topology = await self._cache.refresh()
            node = self._member(topology, node_id, "removed")
            remaining = len(topology.ring.node_ids - {node_id})
            for tenant in sorted(topology.tenants.values(), key=lambda t: t.tenant_id):
                if tenant.replication_factor > remaining:
                    raise FailedPrecondition(
                        f"removing {node_id} would leave {remaining} active node(s), fewer than tenant "
                        f"{tenant.tenant_id!r}'s replication factor {tenant.replication_factor}; "
                        "add a node first, or lower that tenant's replication factor"
                    )
            held = 0
            if not dead:
                try:
                    stats = await self._pool.node(node_id, node.address).stats()
                except StorageError as exc:
                    raise FailedPrecondition(
                        f"node {node_id} at {node.address} does not answer ({exc.code.name}): if it is "
                        "dead, remove it with --dead (its ranges are re-replicated from the survivors) "
                        "or replace it"
                    ) from None
                held = stats.keys + stats.tombstones
        change = NewChange(
            ChangeType.NODE_REMOVAL,
            node_id,
            node.host,
            node.port,
            node.virtual_nodes,
            started_by,
            node_dead=dead,
        )
        how = (
            "dead: its ranges re-replicated from the survivors"
            if dead
            else "its ranges copied to the nodes that gain them"
        )
        summary = f"Remove storage node {node_id} at {node.address} ({how})"
        return await self._begin(change, node_id, summary, held, hold_at_cutover, throttle)

    async def replace(
        self,
        dead_id: str,
        node_id: str,
        host: str,
        port: int,
        *,
        started_by: str,
        hold_at_cutover: bool = False,
        throttle: int = 0,
    ) -> ChangeOutcome:
        """A new node takes a dead node's tokens, filled from the surviving replicas."""
        async with self._lock:
            topology = await self._cache.refresh()
            dead = self._member(topology, dead_id, "replaced")
            try:
                await self._pool.node(dead_id, dead.address).stats()
            except StorageError:
                pass  # dead, as it should be
            else:
                raise FailedPrecondition(
                    f"node {dead_id} at {dead.address} answers: only a dead node is replaced; to move a "
                    "live node's data elsewhere, add the new node and remove the old one"
                )
            await self._new_node_is_empty(node_id, host, port)
            keys = 0  # only the ETA's guess: another survivor may be down too, and that refuses nothing
            with contextlib.suppress(Unavailable):
                keys = await self._keys_per_node(topology, topology.ring.node_ids - {dead_id})
        change = NewChange(
            ChangeType.NODE_REPLACEMENT, node_id, host, port, dead.virtual_nodes, started_by, replaces=dead_id
        )
        summary = f"Replace dead storage node {dead_id} by {node_id} at {host}:{port}"
        return await self._begin(change, dead_id, summary, keys, hold_at_cutover, throttle)

    async def set_replication_factor(
        self, tenant_id: str, rf: int, *, started_by: str, hold_at_cutover: bool = False, throttle: int = 0
    ) -> ChangeOutcome:
        """Move a tenant to replication factor rf (checked in range by the caller) online."""
        async with self._lock:
            topology = await self._cache.refresh()
            tenant = topology.tenants.get(tenant_id)
            if tenant is None:
                raise NotFound(f"tenant {tenant_id!r} does not exist")
            if tenant.replication_factor == rf:
                raise FailedPrecondition(f"tenant {tenant_id!r} already has replication factor {rf}")
            active = len(topology.ring.node_ids)
            if rf > active:
                raise FailedPrecondition(
                    f"replication factor {rf} needs {rf} active nodes; the ring has {active}: add nodes first"
                )
        change = NewChange(
            ChangeType.RF_CHANGE, started_by=started_by, tenant_id=tenant_id, replication_factor=rf
        )
        summary = f"Change tenant {tenant_id}'s replication factor from {tenant.replication_factor} to {rf}"
        return await self._begin(change, tenant_id, summary, 0, hold_at_cutover, throttle)

    async def _begin(
        self, change: NewChange, subject: str, summary: str, keys: int, hold_at_cutover: bool, throttle: int
    ) -> ChangeOutcome:
        """Record a ring change other than an addition and start its workflow."""
        request = m.RingChangeInput(
            change.migration_id, change.change, subject, throttle, change.started_by, hold_at_cutover
        )
        started = await self._migrations.start(change, request, subject, summary, keys)
        return _started(change.change, started)

    def _member(self, topology: Topology, node_id: str, what: str) -> NodeInfo:
        node = topology.nodes.get(node_id)
        if node is None or node.status == NodeState.REMOVED:
            raise NotFound(f"node {node_id!r} is not in the cluster")
        if node.status in (NodeState.JOINING, NodeState.LEAVING):
            raise AlreadyExists(
                f"node {node_id!r} already has a ring change in progress (it is {node.status})"
            )
        if node_id not in topology.ring.node_ids:
            raise FailedPrecondition(
                f"node {node_id!r} is not in the ring: only an active node can be {what}"
            )
        return node

    async def _join_empty_ring(
        self, topology: Topology, node_id: str, host: str, port: int, vnodes: int
    ) -> bool:
        """Join directly; False when a tenant or a ring change appeared meanwhile (then: the workflow)."""
        tokens = allocate_tokens(((v.token, v.node_id) for v in topology.ring.vnodes), node_id, vnodes)
        node = NodeInfo(node_id, host, port, NodeState.ACTIVE, vnodes)
        if not await self._metadata.join_node_directly(node, tokens):
            return False
        await self._cache.refresh()
        log.info("Node joined the ring directly", node_id=node_id, host=host, port=port, virtual_nodes=vnodes)
        return True

    async def _new_node_is_empty(self, node_id: str, host: str, port: int) -> bool:
        """Whether the node a change brings in holds nothing (UNAVAILABLE if it does not answer)."""
        client = NodeClient(node_id, f"{host}:{port}", tls=self._pool.tls)
        try:
            stats = await self._stats(client)
        finally:
            await client.close()
        if stats.keys or stats.tombstones:
            log.warning(
                "New node is not empty; the copy overwrites only older versions",
                node_id=node_id,
                keys=stats.keys,
            )
        return not (stats.keys or stats.tombstones)

    async def _keys_per_node(self, topology: Topology, members: set[str]) -> int:
        """About how many keys a node holds: what a change moves to a node it fills (for its ETA)."""
        held = 0
        for member in sorted(members):
            stats = await self._stats(self._pool.node(member, topology.address(member)))
            held += stats.keys + stats.tombstones
        return held // max(len(members), 1)

    async def _stats(self, client: NodeClient) -> NodeStats:
        try:
            return await client.stats()
        except StorageError as exc:
            hint = ""
            if self._pool.tls is not None and any(w in exc.details.lower() for w in _TLS_FAILURES):
                # What a node without a certificate from the cluster's CA (a rogue node) looks like.
                hint = (
                    f"; a storage node must present a certificate of the cluster CA issued for "
                    f"{client.node_id} (pairdb cert create-node {client.node_id})"
                )
            raise Unavailable(
                f"storage node {client.node_id} at {client.address} is unreachable: "
                f"{exc.code.name} {exc.details}{hint}"
            ) from None


# Words of a failed TLS handshake in grpc's details: a bad certificate, or none.
_TLS_FAILURES = ("handshake", "verification", "certificate", "ssl")


def _started(change: ChangeType, started: Started) -> ChangeOutcome:
    return ChangeOutcome(
        started.migration_id,
        f"{change.label.lower()} started: dual writes, data copy, cutover and cleanup run in workflow "
        f"{started.workflow_id}; track it with GetMigrationStatus or the Temporal UI",
        started.estimated_completion,
        started.workflow_id,
    )
