"""Hinted handoff's replay: stored hints go to their node once it answers, by the current ring.

Every coordinator runs it, about once a second. For each node with hints:
those older than the window are deleted, and so is a hint whose record is older
than its tenant's tombstone grace period (a repair may have purged the delete
that superseded it); a node the current ring no longer has
loses its hints (the ring change that took it out copied and verified what it
held, and read repair covers the rest); a node that answers a probe gets its
hints in batches (ApplyBatch), each hint only while the node still replicates
its key by the current view — one that no longer does is dropped. A node that
does not answer is left alone for a while (backoff).

Several coordinators replay at once without sending a hint twice: each claims
hints with SKIP LOCKED, and deletes them in the claiming transaction only once
the node acknowledged them. A failure, or a crash mid-replay, leaves them for a
later replay: at least once, and last-write-wins makes a repeat harmless. A
replay is pinned like a request, so barriers wait for it and a fence refuses it
once its view is stale.
"""

from __future__ import annotations

import asyncio
import functools
import time

import grpc
import structlog

from pairdb.coordinator import routing
from pairdb.coordinator.hints import DropReason, HintStore, Settlement, StoredHint, hintable
from pairdb.coordinator.quorum import Consistency
from pairdb.coordinator.topology import LeaseLapsed, Topology, TopologyCache
from pairdb.kernel.keyspace import StoredRecord
from pairdb.serving.loops import stop_task
from pairdb.storage_node.client import StaleEpoch, StorageError, StoragePool, describe_failure

log = structlog.get_logger()

PROBE_TIMEOUT = 1.0
# Refusals of a record itself: the node would refuse it again.
_REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


class HintReplayer:
    def __init__(
        self,
        store: HintStore,
        cache: TopologyCache,
        pool: StoragePool,
        *,
        interval: float = 1.0,
        max_backoff: float = 5.0,
        batch: int = 500,
    ) -> None:
        self._store = store
        self._cache = cache
        self._pool = pool
        self._interval = interval
        self._max_backoff = max_backoff
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        # Nodes that failed a replay: (seconds to wait, monotonic time of the next try).
        self._backoff: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hint-replay")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.replay_once()
            except Exception as exc:  # PostgreSQL away, most likely: the next round tries again
                log.warning("Hint replay failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._interval)

    async def replay_once(self) -> None:
        """One round: every node with hints, at once (a slow node does not hold the others up)."""
        nodes = sorted(n for n, count in (await self._store.pending()).items() if count > 0)
        results = await asyncio.gather(*(self._node(n) for n in nodes), return_exceptions=True)
        for node_id, result in zip(nodes, results, strict=True):
            if isinstance(result, Exception):
                log.warning("Hint replay failed", node_id=node_id, error=f"{type(result).__name__}: {result}")
            elif isinstance(result, BaseException):
                raise result

    async def _node(self, node_id: str) -> None:
        await self._store.expire(node_id)
        topology = self._cache.current
        if not _member(topology, node_id):
            await self._store.forget(node_id, topology.epoch)
            return
        if time.monotonic() < self._backoff.get(node_id, (0.0, 0.0))[1]:
            return
        started = time.monotonic()
        replayed = 0
        deliver = functools.partial(self._deliver, node_id)
        try:
            await self._pool.node(node_id, topology.address(node_id)).stats(timeout=PROBE_TIMEOUT)
            while True:
                settled = await self._store.replay(node_id, deliver, limit=self._batch)
                if settled is None or not settled.done:
                    break
                replayed += len(settled.replayed)
        except (StaleEpoch, LeaseLapsed):
            return  # this coordinator's view is behind, or its lease lapsed: it catches up by itself
        except StorageError as exc:
            if hintable(exc):
                self._store.failed(node_id)
            self._back_off(node_id, exc)
            return
        finally:
            if replayed:
                log.info(
                    "Hints replayed",
                    node_id=node_id,
                    hints=replayed,
                    duration=round(time.monotonic() - started, 3),
                )
        self._store.heard(node_id)
        if self._backoff.pop(node_id, None) is not None:
            log.info("Hint replay resumed", node_id=node_id)

    def _back_off(self, node_id: str, exc: StorageError) -> None:
        delay, _ = self._backoff.get(node_id, (self._interval / 2, 0.0))
        delay = min(2 * delay, self._max_backoff)
        if node_id not in self._backoff:
            log.info("Hint replay waits for the node", node_id=node_id, error=describe_failure(exc))
        self._backoff[node_id] = (delay, time.monotonic() + delay)

    async def _deliver(self, node_id: str, claimed: list[StoredHint]) -> Settlement:
        """Settle one claimed batch of the node's hints by the current view, pinned while it is sent."""
        settlement = Settlement()
        with self._cache.pin() as topology:
            due: list[StoredHint] = []
            now_ms = time.time_ns() // 1_000_000
            for stored in claimed:
                if stored.expired:
                    settlement.drop(DropReason.EXPIRED, stored.id)
                elif _past_grace(topology, stored.hint.record, now_ms):
                    settlement.drop(DropReason.PAST_GRACE, stored.id)
                elif stored.hint.epoch > topology.epoch:
                    continue  # routed by a newer view than this one: left for later (or another coordinator)
                elif node_id not in _write_targets(topology, stored.hint.record):
                    settlement.drop(DropReason.NOT_REPLICA, stored.id)
                else:
                    due.append(stored)
            if due:
                await self._send(node_id, topology, due, settlement)
        return settlement

    async def _send(
        self, node_id: str, topology: Topology, due: list[StoredHint], settlement: Settlement
    ) -> None:
        client = self._pool.node(node_id, topology.address(node_id))
        try:
            await client.apply_batch([s.hint.record for s in due], epoch=topology.epoch)
            settlement.replayed += [s.id for s in due]
            return
        except StorageError as exc:
            if not _refused(exc):
                raise
        # A record the node refuses refuses its whole batch: find it, send the others.
        for stored in due:
            try:
                await client.apply_batch([stored.hint.record], epoch=topology.epoch)
            except StorageError as exc:
                if not _refused(exc):
                    raise
                record = stored.hint.record
                log.warning(
                    "Hint refused by its node",
                    node_id=node_id,
                    tenant_id=record.tenant_id,
                    key=record.key,
                    error=describe_failure(exc),
                )
                settlement.drop(DropReason.REFUSED, stored.id)
            else:
                settlement.replayed.append(stored.id)


def _past_grace(topology: Topology, record: StoredRecord, now_ms: int) -> bool:
    """Whether the record is older than its tenant's tombstone grace period.

    A repair purges only tombstones older than the grace period; a record younger
    than it can only be superseded by a younger delete, which no repair has purged.
    """
    tenant = topology.tenants.get(record.tenant_id)
    return tenant is not None and record.version.wall_ms < now_ms - tenant.gc_grace_seconds * 1000


def _refused(exc: StorageError) -> bool:
    """The node refuses the record itself (its content, a version from its future): it would again."""
    return exc.code in _REFUSED


def _member(topology: Topology, node_id: str) -> bool:
    """Whether the node is in the ring, or in the ring the in-flight change makes."""
    return node_id in topology.ring.node_ids or (
        topology.future is not None and node_id in topology.future.node_ids
    )


def _write_targets(topology: Topology, record: StoredRecord) -> tuple[str, ...]:
    """Where a write of the record's key goes by this view (nowhere, for a tenant it does not know)."""
    tenant = topology.tenants.get(record.tenant_id)
    if tenant is None:
        return ()
    plan = routing.plan(
        topology,
        record.token,
        tenant.replication_factor,
        Consistency.ONE,
        write=True,
        tenant_id=record.tenant_id,
    )
    return plan.targets
