"""Activities that remove data: ranges nodes gave up, and what a cancelled ring change sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from temporalio import activity

from pairdb.activities.context import StepContext, heartbeat
from pairdb.activities.pace import Pace
from pairdb.coordinator.movement import RangeMove
from pairdb.coordinator.topology import Topology
from pairdb.kernel.migration import ChangeType, MigrationRef, NodeState, Phase, Status
from pairdb.storage_node.client import StorageError, describe_failure

log = structlog.get_logger()

# What one node deletes: (start, end] ranges by the tenants they are deleted for (empty: every tenant).
Drops = dict[str, dict[frozenset[str], list[tuple[int, int]]]]


class CleanupSteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    @activity.defn(name="drop_moved_ranges")
    async def drop_moved_ranges(self, ref: MigrationRef) -> int:
        """After cleanup's barrier: delete, on each node, the ranges it no longer replicates.

        Per tenant: a node that keeps a range for one tenant and gives it up for
        another deletes only the other's records. A removed node is wiped whole if
        it answers (it is in no replica set any more: it must not hold the cleanup
        up); a dead one is never asked. Deleting an absent range is a no-op, so a
        retry is safe.
        """
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        topology = await self._ctx.topology()
        movement = topology.movement()
        assert movement is not None, "drop_moved_ranges runs during cleanup"
        drops = _drops(movement.moves(), RangeMove.lost, set(topology.tenants))
        for dead in row.dead:
            drops.pop(dead, None)
        deleted = await self._drop(topology, drops)
        if row.change is ChangeType.NODE_REMOVAL and not row.node_dead:
            try:
                deleted += await self._drop(
                    topology, {row.node_id: {frozenset(): [(0, 0)]}}
                )  # the whole ring
            except StorageError as exc:
                log.warning(
                    "Could not wipe the removed node; wipe its data directory before it serves again",
                    node_id=row.node_id,
                    error=describe_failure(exc),
                )
        log.info("Moved ranges dropped from old replicas", migration_id=migration_id, deleted=deleted)
        return deleted

    @activity.defn(name="drop_gained_ranges")
    async def drop_gained_ranges(self, ref: MigrationRef) -> int:
        """Cancel and rollback of a removal or RF change, once the old ring is back: every node
        that gained ranges deletes them (for the tenants it gained them for).

        Only then: a step that outlived its turn must never delete what a replica serves.
        """
        migration_id = ref.migration_id
        row = await self._ctx.migration(migration_id)
        if row.phase != Phase.CANCELLING or row.status == Status.COMPLETED or row.change.adds_node:
            log.warning("Not dropping gained ranges: the old ring is not back", phase=row.phase)
            return 0
        topology = await self._ctx.topology()
        drops = _drops(topology.undone(row.in_flight()).moves(), RangeMove.gained, set(topology.tenants))
        deleted = await self._drop(topology, drops)
        log.info("Gained ranges dropped", migration_id=migration_id, deleted=deleted)
        return deleted

    async def _drop(self, topology: Topology, drops: Drops) -> int:
        # Deleting is background work too: paced by the nodes' client traffic, as a copy is.
        pace = Pace(0, [self._ctx.node(topology, n) for n in sorted(drops)])

        async def drop(node_id: str, by_tenants: dict[frozenset[str], list[tuple[int, int]]]) -> int:
            # One node's deletes run one after another (its writer takes one at a time anyway).
            node, count = self._ctx.node(topology, node_id), 0
            for tenants, ranges in by_tenants.items():
                for start, end in ranges if ranges == [(0, 0)] else adjoined(ranges):
                    deleted = await node.delete_range(
                        start, end, tenants=tenants, epoch=topology.epoch, timeout=120
                    )
                    count += deleted
                    heartbeat()
                    await pace.take(deleted)  # the next delete waits for what this one cost
            return count

        return sum(await asyncio.gather(*(drop(n, by) for n, by in sorted(drops.items()))))

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


def _drops(
    moves: list[RangeMove], which: Callable[[RangeMove], dict[str, frozenset[str]]], every: set[str]
) -> Drops:
    """Each node's ranges from which(move) (RangeMove.lost or .gained), grouped by tenants."""
    drops: Drops = {}
    for move in moves:
        for node, tenants in which(move).items():
            key = frozenset() if tenants >= every else tenants
            drops.setdefault(node, {}).setdefault(key, []).append((move.start, move.end))
    return drops


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
