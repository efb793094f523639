"""Joining storage nodes to the ring.

A node joins a cluster that has no tenant yet directly: with no tenant there
is no data and no request to route, so it becomes active at once (how a new
cluster's first nodes start); a tenant created later is never routed by a view
older than itself (routing.py). Once a tenant exists, a node joins online
through NodeAdditionWorkflow, even while the tenants are still empty: a write
may be on its way to them.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog

from pairdb.coordinator.metadata import Metadata, NodeInfo
from pairdb.coordinator.migrations import Migrations
from pairdb.coordinator.ring import DEFAULT_VIRTUAL_NODES, allocate_tokens
from pairdb.coordinator.topology import Topology, TopologyCache
from pairdb.kernel import migration as m
from pairdb.kernel.errors import AlreadyExists, InvalidArgument, Unavailable
from pairdb.kernel.migration import NodeState
from pairdb.storage_node.client import NodeClient, NodeStats, StorageError, StoragePool

log = structlog.get_logger()

MAX_VIRTUAL_NODES = 1024


@dataclass(frozen=True, slots=True)
class AddOutcome:
    migration_id: str
    message: str
    estimated_completion: datetime | None


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
    ) -> AddOutcome:
        vnodes = virtual_nodes or DEFAULT_VIRTUAL_NODES
        if not 1 <= vnodes <= MAX_VIRTUAL_NODES:
            raise InvalidArgument(f"virtual_nodes must be 1..{MAX_VIRTUAL_NODES}")
        async with self._lock:
            topology = await self._cache.refresh()
            known = topology.nodes.get(node_id)
            if known is not None and known.status != NodeState.REMOVED:
                raise AlreadyExists(f"node {node_id!r} is already in the cluster ({known.status})")
            joining = NodeClient(node_id, f"{host}:{port}")
            try:
                new_stats = await self._stats(joining)
            finally:
                await joining.close()
            if not topology.tenants and topology.future is None and not new_stats.keys + new_stats.tombstones:
                if await self._join_empty_ring(topology, node_id, host, port, vnodes):
                    return AddOutcome(
                        "", f"node {node_id} joined the ring directly: the cluster has no tenant yet", None
                    )
            held = 0
            for member in sorted(topology.ring.node_ids):
                stats = await self._stats(self._pool.node(member, topology.address(member)))
                held += stats.keys + stats.tombstones
        if new_stats.keys or new_stats.tombstones:
            log.warning(
                "Joining node is not empty; the copy overwrites only older versions",
                node_id=node_id,
                keys=new_stats.keys,
            )
        started = await self._migrations.start_node_addition(
            m.NodeAdditionInput(
                str(uuid.uuid4()), node_id, host, port, vnodes, throttle, started_by, hold_at_cutover
            ),
            keys_to_move=held // max(len(topology.ring.node_ids), 1),
        )
        return AddOutcome(
            started.migration_id,
            f"node addition started: dual writes, data copy, cutover and cleanup run in workflow "
            f"{started.workflow_id}; track it with GetMigrationStatus or the Temporal UI",
            started.estimated_completion,
        )

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

    async def _stats(self, client: NodeClient) -> NodeStats:
        try:
            return await client.stats()
        except StorageError as exc:
            raise Unavailable(
                f"storage node {client.node_id} at {client.address} is unreachable: "
                f"{exc.code.name} {exc.details}"
            ) from None
