"""What every migration activity works with: metadata, registry, the copy plan, storage clients."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from temporalio import activity

from coordinator.metadata import Metadata, MigrationRow
from coordinator.migration_store import MigrationStore
from coordinator.registry import Lagging, Registry
from coordinator.topology import Topology
from pairdb import request_ids
from storage_node.client import NodeClient, StoragePool


@dataclass
class Context:
    metadata: Metadata
    registry: Registry
    store: MigrationStore
    pool: StoragePool

    @classmethod
    def create(cls, metadata: Metadata, storage_timeout: float = 5.0) -> Context:
        return cls(metadata, Registry(metadata), MigrationStore(metadata), StoragePool(storage_timeout))

    async def migration(self, migration_id: str) -> MigrationRow:
        row = await self.store.get(migration_id)
        if row is None:
            raise LookupError(f"migration {migration_id} does not exist")
        # Every log line of this activity names the migration, its node and the request that started it.
        structlog.contextvars.bind_contextvars(migration_id=migration_id, node_id=row.node_id)
        if row.request_id:
            request_ids.bind(row.request_id)  # and on to the storage nodes this activity calls
        return row

    async def topology(self) -> Topology:
        return Topology.from_snapshot(await self.metadata.snapshot())

    def node(self, topology: Topology, node_id: str) -> NodeClient:
        return self.pool.node(node_id, topology.address(node_id))

    def joining(self, row: MigrationRow) -> NodeClient:
        return self.pool.node(row.node_id, f"{row.host}:{row.port}")

    async def barrier(self, epoch: int) -> None:
        """Wait for every live coordinator to apply epoch, heartbeating who holds it up."""

        def beat(behind: list[Lagging]) -> None:
            activity.heartbeat({"barrier_epoch": epoch, "waiting_for": [b.coordinator_id for b in behind]})

        await self.registry.barrier(epoch, heartbeat=beat)
