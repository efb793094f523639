"""What every migration activity works with: metadata, registry, the copy plan, storage clients.

Every registry step ends in settle(): the barrier (every coordinator with a
live lease routes by the new epoch, with no older request still running on
it), then the fence (the storage nodes refuse requests routed by an older
epoch, from coordinators whose lease lapsed mid-request). Only then may the
next phase start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pairdb.coordinator.metadata import Metadata, MigrationRow
from pairdb.coordinator.migration_store import MigrationStore
from pairdb.coordinator.quorum import unfenced_quorum
from pairdb.coordinator.registry import Lagging, Registry
from pairdb.coordinator.repair_store import RepairStore
from pairdb.coordinator.topology import Topology
from pairdb.kernel.migration import NodeState
from pairdb.security.tls import ChannelTls
from pairdb.serving import request_ids
from pairdb.storage_node.client import NodeClient, StorageError, StoragePool, describe_failure

log = structlog.get_logger()

FENCE_ATTEMPTS = 3
FENCE_BACKOFF_SECONDS = 0.5


def heartbeat(*details: Any) -> None:
    """Heartbeat when running as an activity; the reconciler runs the same steps outside one."""
    if activity.in_activity():
        activity.heartbeat(*details)


@dataclass
class StepContext:
    metadata: Metadata
    registry: Registry
    store: MigrationStore
    pool: StoragePool
    repairs: RepairStore

    @classmethod
    def create(
        cls, metadata: Metadata, storage_timeout: float = 5.0, tls: ChannelTls | None = None
    ) -> StepContext:
        return cls(
            metadata,
            Registry(metadata),
            MigrationStore(metadata),
            StoragePool(storage_timeout, tls),
            RepairStore(metadata),
        )

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
        """The node an addition or replacement brings in (known by its row before it is in the ring)."""
        return self.pool.node(row.node_id, f"{row.host}:{row.port}")

    def target(self, topology: Topology, row: MigrationRow, node_id: str) -> NodeClient:
        """A node a range is copied to: the joining node, or one already in the ring."""
        return (
            self.joining(row)
            if node_id == row.node_id and row.change.adds_node
            else self.node(topology, node_id)
        )

    async def settle(self, epoch: int, row: MigrationRow) -> None:
        """The end of every registry step: barrier, then fence (the migration's node included)."""
        await self.barrier(epoch)
        await self.fence(epoch, {row.node_id: f"{row.host}:{row.port}"} if row.node_id else None)

    async def barrier(self, epoch: int) -> None:
        """Wait for every live coordinator to apply epoch, heartbeating who holds it up."""

        def beat(behind: list[Lagging]) -> None:
            heartbeat({"barrier_epoch": epoch, "waiting_for": [b.coordinator_id for b in behind]})

        await self.registry.barrier(epoch, heartbeat=beat)

    async def fence(self, epoch: int, extra: Mapping[str, str] | None = None) -> None:
        """Raise the fence of every storage node to epoch.

        A node that is down learns it at a later step; what counts is that in no
        replica set of the current or future ring could the unfenced nodes still
        form a quorum. Otherwise the step fails and is retried.
        """
        topology = await self.topology()
        targets = {n: info.address for n, info in topology.nodes.items() if info.status != NodeState.REMOVED}
        targets.update(extra or {})
        rfs = set(topology.replication_factors.values()) | set(topology.future_rf.values())
        sets = [
            ring.replicas(v.token, rf)
            for ring in (topology.ring, topology.future)
            if ring is not None
            for rf in rfs
            for v in ring.vnodes
        ]
        fenced: set[str] = set()
        failures: dict[str, str] = {}
        for attempt in range(FENCE_ATTEMPTS):
            todo = [n for n in targets if n not in fenced]
            results = await asyncio.gather(
                *(self.pool.node(n, targets[n]).set_fence(epoch) for n in todo), return_exceptions=True
            )
            for node_id, result in zip(todo, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, StorageError):
                        raise result
                    failures[node_id] = describe_failure(result)
                else:
                    fenced.add(node_id)
                    failures.pop(node_id, None)
            exposed = unfenced_quorum(sets, fenced)
            if exposed is None:
                break  # a node that is down learns the fence at a later step
            heartbeat({"fence_epoch": epoch, "unreachable": sorted(failures)})
            await asyncio.sleep(FENCE_BACKOFF_SECONDS * (attempt + 1))  # a node restarting comes back
        if failures:
            log.warning("Fence not raised on every node", epoch=epoch, unreachable=failures)
        if exposed is not None:
            raise ApplicationError(
                f"fence at epoch {epoch} reached too few replicas of {list(exposed)}: "
                + ", ".join(f"{n} ({why})" for n, why in sorted(failures.items()))
            )
