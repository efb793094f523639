"""Activities that remove data: ranges old replicas gave up, and a cancelled node's copy."""

from __future__ import annotations

import asyncio

import structlog
from temporalio import activity

from pairdb.activities.context import StepContext, heartbeat
from pairdb.coordinator.ring import ranges_gained
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import DEFAULT_REPLICATION_FACTOR
from pairdb.kernel.migration import MigrationRef, NodeState

log = structlog.get_logger()


class CleanupSteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    @activity.defn(name="drop_moved_ranges")
    async def drop_moved_ranges(self, ref: MigrationRef) -> int:
        """After cleanup's barrier: delete, on each old replica, the ranges it no longer replicates.

        Ranges are judged at the largest RF of any tenant, so nothing a tenant
        still needs is deleted; a node may keep a few keys of smaller-RF tenants
        it no longer serves (never read, harmless). Deleting an absent range is
        a no-op, so a retry is safe.
        """
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        topology = await self._ctx.topology()
        assert topology.future is not None, "drop_moved_ranges runs during cleanup"
        rf = max(
            (t.replication_factor for t in topology.tenants.values()), default=DEFAULT_REPLICATION_FACTOR
        )
        lost: dict[str, list[tuple[int, int]]] = {}
        for move in ranges_gained(topology.ring, topology.future, row.node_id, rf):
            for loser in set(move.old) - set(move.new):
                lost.setdefault(loser, []).append((move.start, move.end))

        async def drop(node_id: str, ranges: list[tuple[int, int]]) -> int:
            # One node's deletes run one after another (its writer takes one at a time anyway).
            node, count = self._ctx.node(topology, node_id), 0
            for start, end in ranges:
                count += await node.delete_range(start, end, epoch=topology.epoch, timeout=60)
                heartbeat()
            return count

        deleted = sum(
            await asyncio.gather(*(drop(n, adjoined(ranges)) for n, ranges in sorted(lost.items())))
        )
        log.info("Moved ranges dropped from old replicas", migration_id=migration_id, deleted=deleted)
        return deleted

    @activity.defn(name="wipe_joining_node")
    async def wipe_joining_node(self, ref: MigrationRef) -> int:
        """Cancel and rollback, after the node left the ring: delete everything copied to it.

        Only a node that is out of the ring: a step that outlived its turn (a workflow
        reset past a completed addition) must never wipe an active node.
        """
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        snapshot = await self._ctx.metadata.snapshot()
        node = snapshot.nodes.get(row.node_id)
        if (node is not None and node.status != NodeState.REMOVED) or any(
            n == row.node_id for _, n in snapshot.tokens
        ):
            log.warning(
                "Not wiping a node that is in the ring", migration_id=migration_id, node_id=row.node_id
            )
            return 0
        topology = Topology.from_snapshot(snapshot)
        # start == end: the whole ring. Routed by the epoch that took the node out, which its fence
        # reached: copy batches still on their way are refused, so nothing lands after the wipe.
        joining = self._ctx.joining(row)
        await joining.set_fence(topology.epoch)  # in case it was down when the step that removed it fenced
        deleted = await joining.delete_range(0, 0, epoch=topology.epoch, timeout=120)
        log.info("Joining node wiped", migration_id=migration_id, node_id=row.node_id, deleted=deleted)
        return deleted


def adjoined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges (start, end], those that touch joined into one: fewer deletes, each its own commit.

    Never joined into a full circle: (t, t] would mean the whole ring, which
    only wipe_joining_node may delete.
    """
    joined: list[tuple[int, int]] = []
    for start, end in sorted(ranges, key=lambda r: r[0]):
        if joined and joined[-1][1] == start and joined[-1][0] != end:
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined
