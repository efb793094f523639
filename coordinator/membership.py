"""Joining storage nodes to the ring.

A node joins an empty cluster directly: with no data anywhere there is nothing
to move, so it becomes active at once (how a new cluster's first nodes start).
Once the cluster holds data, a node joins online through NodeAdditionWorkflow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from coordinator.errors import AlreadyExists, FailedPrecondition, Unavailable
from coordinator.metadata import Metadata, NodeInfo
from coordinator.ring import DEFAULT_VIRTUAL_NODES, allocate_tokens
from coordinator.topology import TopologyCache
from storage_node.client import NodeClient, NodeStats, StorageError, StoragePool

log = structlog.get_logger()

MAX_VIRTUAL_NODES = 1024


@dataclass(frozen=True, slots=True)
class AddOutcome:
    migration_id: str
    message: str


class Membership:
    def __init__(self, cache: TopologyCache, metadata: Metadata, pool: StoragePool) -> None:
        self._cache = cache
        self._metadata = metadata
        self._pool = pool
        # One ring change at a time from this coordinator; the metadata
        # transaction serialises coordinators among themselves.
        self._lock = asyncio.Lock()

    async def add(self, node_id: str, host: str, port: int, virtual_nodes: int | None) -> AddOutcome:
        vnodes = virtual_nodes or DEFAULT_VIRTUAL_NODES
        if not 1 <= vnodes <= MAX_VIRTUAL_NODES:
            raise FailedPrecondition(f"virtual_nodes must be 1..{MAX_VIRTUAL_NODES}")
        async with self._lock:
            topology = await self._cache.refresh()
            if node_id in topology.nodes:
                raise AlreadyExists(
                    f"node {node_id!r} is already in the cluster ({topology.nodes[node_id].status})"
                )
            joining = NodeClient(node_id, f"{host}:{port}")
            try:
                new_stats = await self._stats(joining)
                if new_stats.keys or new_stats.tombstones:
                    raise FailedPrecondition(
                        f"node {node_id} at {host}:{port} already holds {new_stats.keys} keys; "
                        "a joining node must start empty"
                    )
                held = 0
                for member in sorted(topology.ring.node_ids):
                    stats = await self._stats(self._pool.node(member, topology.address(member)))
                    held += stats.keys + stats.tombstones
            finally:
                await joining.close()
            if held:
                raise FailedPrecondition(
                    f"the cluster holds {held} records, so {node_id} must join online through "
                    "NodeAdditionWorkflow, which is not available in this build"
                )
            tokens = allocate_tokens(((v.token, v.node_id) for v in topology.ring.vnodes), node_id, vnodes)
            node = NodeInfo(node_id, host, port, "active", vnodes)
            await self._metadata.join_node_directly(node, tokens)
            await self._cache.refresh()
        log.info("Node joined the empty ring", node_id=node_id, host=host, port=port, virtual_nodes=vnodes)
        return AddOutcome("", f"node {node_id} joined the empty ring directly; nothing to copy")

    async def _stats(self, client: NodeClient) -> NodeStats:
        try:
            return await client.stats()
        except StorageError as exc:
            raise Unavailable(
                f"storage node {client.node_id} at {client.address} is unreachable: "
                f"{exc.code.name} {exc.details}"
            ) from None
