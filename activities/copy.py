"""The data copy: plan the ranges the joining node gains, copy them, verify them.

A range is streamed from a quorum of its old replicas (in each tenant's
replica set, whatever its RF), merged by version, and applied to the joining
node in batches; the storage node's last-write-wins makes a copy that races a
dual write harmless. Each finished range is checkpointed in PostgreSQL (the
plan's `copied` flag), so a retried or resumed activity skips it; heartbeats
only say the activity is alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pairdb.activities.context import StepContext
from pairdb.coordinator.metadata import MigrationRow, PlannedRange
from pairdb.coordinator.quorum import Consistency, required
from pairdb.coordinator.ring import ranges_gained
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import DEFAULT_REPLICATION_FACTOR, StoredRecord
from pairdb.kernel.migration import CopyChunk, CopyPlan, MigrationRef, Progress
from pairdb.serving import metrics
from pairdb.storage_node.client import NodeClient, StorageError, describe_failure
from pairdb.storage_node.engine import digest_of

log = structlog.get_logger()

APPLY_BATCH = 500
SCAN_BATCH = 1000
SCAN_TIMEOUT = 300.0
VERIFY_ATTEMPTS = 3
# Ranges copied at once within a chunk: overlaps one range's streaming with another's apply.
PARALLEL_RANGES = 4

_Merged = dict[tuple[str, str], StoredRecord]


class Throttle:
    """A token bucket in keys per second; 0 means no limit."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._allowance = float(rate)
        self._last = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self._allowance = min(float(self.rate), self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= n
        wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        while wait > 0:
            # Sleep in slices so a slow throttle never misses a heartbeat.
            step = min(wait, 1.0)
            await asyncio.sleep(step)
            activity.heartbeat()
            wait -= step


def _rfs(topology: Topology) -> dict[str, int]:
    return {t: info.replication_factor for t, info in topology.tenants.items()}


class CopySteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    async def _moving(self, migration_id: str) -> tuple[MigrationRow, Topology]:
        row = await self._ctx.migration(migration_id)
        topology = await self._ctx.topology()
        if topology.future is None or topology.moving_node != row.node_id:
            raise ApplicationError(
                f"migration {migration_id} is not in flight (phase {row.phase}, status {row.status})",
                non_retryable=True,
            )
        return row, topology

    @activity.defn(name="plan_copy")
    async def plan_copy(self, ref: MigrationRef) -> CopyPlan:
        """The ranges the joining node gains (for the largest RF of any tenant), with key estimates."""
        migration_id = ref.migration_id
        row, topology = await self._moving(migration_id)
        assert topology.future is not None
        rf = max(_rfs(topology).values(), default=DEFAULT_REPLICATION_FACTOR)
        moves = ranges_gained(topology.ring, topology.future, row.node_id, rf)
        planned = []
        for move in moves:
            estimate = 0
            for source in move.old:
                try:
                    _, estimate = await self._ctx.node(topology, source).range_digest(
                        move.start, move.end, epoch=topology.epoch
                    )
                    break
                except StorageError:
                    continue
            planned.append((move.start, move.end, list(move.old), estimate))
        if await self._ctx.store.save_plan(migration_id, planned):
            await self._ctx.store.save_progress(migration_id, {"copy_started_at": time.time()}, None)
        totals = await self._ctx.store.totals(migration_id)
        log.info(
            "Copy planned",
            migration_id=migration_id,
            node_id=row.node_id,
            ranges=totals["ranges_total"],
            keys=totals["keys_total"],
        )
        return CopyPlan(totals["ranges_total"], totals["keys_total"])

    @activity.defn(name="copy_ranges")
    async def copy_ranges(self, chunk: CopyChunk) -> Progress:
        """Copy a chunk of planned ranges to the joining node, skipping those already copied."""
        row, topology = await self._moving(chunk.migration_id)
        joining = self._ctx.joining(row)
        throttle = Throttle(chunk.throttle_keys_per_second)
        plan = await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes)
        todo = [p for p in plan if not p.copied]  # checkpointed ranges are never copied twice
        slots = asyncio.Semaphore(PARALLEL_RANGES)

        async def copy_one(planned: PlannedRange) -> None:
            async with slots:
                merged = await self._pull(topology, row.node_id, planned)
                keys, size = await self._apply(joining, merged.values(), throttle, topology.epoch)
                await self._ctx.store.mark_copied(chunk.migration_id, planned.index, keys, size)
                activity.heartbeat()

        await asyncio.gather(*(copy_one(p) for p in todo))
        return await self._report(chunk.migration_id)

    @activity.defn(name="verify_ranges")
    async def verify_ranges(self, chunk: CopyChunk) -> int:
        """Compare each range's digest on the joining node with the merged old view; copy again on mismatch.

        Returns how many ranges had to be copied again. Dual writes may make the
        joining node newer than the old view while writes run, so a range also
        passes when every old record is on the joining node at the same or a newer version.
        """
        row, topology = await self._moving(chunk.migration_id)
        joining = self._ctx.joining(row)
        recopied = 0
        for planned in await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes):
            if planned.verified:
                continue
            if await self._digests_agree(topology, joining, planned):
                await self._ctx.store.mark_verified(chunk.migration_id, planned.index)
                continue
            for attempt in range(VERIFY_ATTEMPTS):
                merged = await self._pull(topology, row.node_id, planned)
                # Hashes every value of the range: off the event loop, so heartbeats go on.
                expected = await asyncio.to_thread(
                    digest_of, list(merged.values()), planned.start, planned.end
                )
                actual = await joining.range_digest(
                    planned.start, planned.end, epoch=topology.epoch, timeout=SCAN_TIMEOUT
                )
                if actual == expected:
                    break
                behind = await self._behind(joining, planned, merged, topology.epoch)
                if not behind:
                    break
                if attempt == VERIFY_ATTEMPTS - 1:
                    raise ApplicationError(
                        f"range {planned.index} ({planned.start}, {planned.end}] still differs on "
                        f"{row.node_id} after {VERIFY_ATTEMPTS} copies: {len(behind)} records behind"
                    )
                log.warning(
                    "Range differs; copying again",
                    migration_id=chunk.migration_id,
                    node_id=row.node_id,
                    range=planned.index,
                    behind=len(behind),
                )
                recopied += 1
                await self._apply(joining, behind, Throttle(0), topology.epoch)
            await self._ctx.store.mark_verified(chunk.migration_id, planned.index)
            activity.heartbeat()
        return recopied

    async def _digests_agree(self, topology: Topology, joining: NodeClient, planned: PlannedRange) -> bool:
        """Fast path: a quorum of old replicas and the joining node report one and the same digest.

        Then the merged old view is that very set of (key, version), without
        streaming a record. Anything else (a lagging replica, writes in flight,
        tenants the node does not replicate) takes the full comparison.
        """
        quorum = planned.sources[: required(Consistency.QUORUM, len(planned.sources))]
        epoch = topology.epoch
        try:
            digests = [
                await self._ctx.node(topology, s).range_digest(planned.start, planned.end, epoch=epoch)
                for s in quorum
            ]
            digests.append(await joining.range_digest(planned.start, planned.end, epoch=epoch))
        except StorageError:
            return False
        return len(set(digests)) == 1

    async def _pull(self, topology: Topology, node_id: str, planned: PlannedRange) -> _Merged:
        """Stream the range from a quorum of its old replicas and merge by version.

        Only records of tenants whose future replica set includes the joining
        node are kept. Sources are tried in replica order until, for every
        tenant RF, a quorum of that RF's replica set has answered.
        """
        assert topology.future is not None
        rfs = _rfs(topology)
        wanted = {t for t, rf in rfs.items() if node_id in topology.future.replicas(planned.end, rf)}
        needs = {rf: planned.sources[:rf] for rf in set(rfs.values())}
        merged: _Merged = {}
        answered: list[str] = []
        failures: list[str] = []
        for source in planned.sources:
            if all(_quorum_met(answered, members) for members in needs.values()) and answered:
                break
            partial: _Merged = {}
            try:
                async for batch in self._ctx.node(topology, source).scan_range(
                    planned.start,
                    planned.end,
                    batch_size=SCAN_BATCH,
                    epoch=topology.epoch,
                    timeout=SCAN_TIMEOUT,
                ):
                    for record in batch:
                        if record.tenant_id in wanted:
                            partial[(record.tenant_id, record.key)] = record
                    activity.heartbeat()
            except StorageError as exc:
                failures.append(describe_failure(exc))
                continue
            for k, record in partial.items():
                if record.newer_than(merged.get(k)):
                    merged[k] = record
            answered.append(source)
        if not all(_quorum_met(answered, members) for members in needs.values()):
            raise ApplicationError(
                f"range {planned.index}: no quorum of old replicas {planned.sources} answered "
                f"(answered: {answered}; failed: {failures})"
            )
        return merged

    async def _apply(
        self, joining: NodeClient, records: Iterable[StoredRecord], throttle: Throttle, epoch: int
    ) -> tuple[int, int]:
        """Apply records to the joining node in batches, routed by epoch.

        After a cancel, the node's fence refuses what this step still sends: a
        copy learns of its cancel only at its next heartbeat.
        """
        batch: list[StoredRecord] = []
        keys = size = 0
        for record in records:
            batch.append(record)
            if len(batch) >= APPLY_BATCH:
                await throttle.take(len(batch))
                await joining.apply_batch(batch, epoch=epoch, timeout=30)
                keys, size = keys + len(batch), size + sum(len(r.value) for r in batch)
                batch = []
                activity.heartbeat()
        if batch:
            await throttle.take(len(batch))
            await joining.apply_batch(batch, epoch=epoch, timeout=30)
            keys, size = keys + len(batch), size + sum(len(r.value) for r in batch)
        metrics.COPY_KEYS.inc(keys)
        metrics.COPY_BYTES.inc(size)
        return keys, size

    async def _behind(
        self, joining: NodeClient, planned: PlannedRange, merged: _Merged, epoch: int
    ) -> list[StoredRecord]:
        """Old records the joining node lacks or holds in an older form."""
        have: dict[tuple[str, str], StoredRecord] = {}
        async for batch in joining.scan_range(
            planned.start, planned.end, batch_size=SCAN_BATCH, epoch=epoch, timeout=SCAN_TIMEOUT
        ):
            for record in batch:
                have[(record.tenant_id, record.key)] = record
        return [r for k, r in merged.items() if r.newer_than(have.get(k))]

    async def _report(self, migration_id: str) -> Progress:
        totals = await self._ctx.store.totals(migration_id)
        row = await self._ctx.migration(migration_id)
        started = row.progress.get("copy_started_at") or time.time()
        elapsed = max(time.time() - float(started), 1e-3)
        rate = totals["keys_copied"] / elapsed
        remaining = max(totals["keys_total"] - totals["keys_copied"], 0)
        eta = remaining / rate if rate > 0 else 0.0
        progress = Progress(
            keys_copied=totals["keys_copied"],
            keys_total=max(totals["keys_total"], totals["keys_copied"]),
            bytes_copied=totals["bytes_copied"],
            ranges_done=totals["ranges_done"],
            ranges_total=totals["ranges_total"],
            keys_per_second=round(rate, 1),
            eta_seconds=round(eta, 1),
        )
        payload = {**progress.__dict__, "percent": round(progress.percent, 2), "copy_started_at": started}
        await self._ctx.store.save_progress(migration_id, payload, datetime.now(UTC) + timedelta(seconds=eta))
        return progress


def _quorum_met(answered: list[str], members: list[str]) -> bool:
    return sum(1 for n in members if n in answered) >= required(Consistency.QUORUM, len(members))
