"""The data copy: plan the ranges the joining node gains, copy them, verify them.

The copy moves the bulk; verification makes it exact. A range the joining node
takes for every tenant is scanned on one old replica as the engine's packed
entries and forwarded untouched (no record is decoded on the way), as
Cassandra's bootstrap streams each range from one replica. A range it takes
only for some tenants (their replication factors differ) is streamed from a
quorum of old replicas, merged on the fly by version (merge.py), filtered and
applied in batches. Either way a few batches are in flight, and memory holds
batches, never a range.

Verification then compares each range's digest on the joining node with the
merged view of a quorum of old replicas, and copies again whatever the joining
node lacks or holds older: a source that had missed writes costs a second
look, never a lost record. The storage node's last-write-wins makes a copy
that races a dual write harmless, and a range whose source failed midway is
simply streamed again from another. Each finished range is checkpointed in
PostgreSQL (the plan's `copied` flag), so a retried or resumed activity skips
it; heartbeats only say the activity is alive.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pairdb.activities import merge
from pairdb.activities.context import StepContext
from pairdb.activities.pace import Pace
from pairdb.coordinator.metadata import MigrationRow, PlannedRange
from pairdb.coordinator.quorum import Consistency, required
from pairdb.coordinator.ring import RangeMove, ranges_gained
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import DEFAULT_REPLICATION_FACTOR, StoredRecord
from pairdb.kernel.migration import CopyChunk, CopyPlan, MigrationRef, Progress, chunked
from pairdb.serving import metrics
from pairdb.storage_node.client import NodeClient, StorageError, describe_failure

log = structlog.get_logger()

APPLY_BATCH = 500
# Apply batches in flight to the joining node while the merge prepares the next.
APPLY_IN_FLIGHT = 3
SCAN_BATCH = 1000
# Packed entries per forwarded batch (a scan message and an ApplyEntries call each).
ENTRY_BATCH = 2000
SCAN_TIMEOUT = 300.0
VERIFY_ATTEMPTS = 3
# Ranges copied at once within a chunk: overlaps one range's streaming with another's apply.
PARALLEL_RANGES = 16

T = TypeVar("T")


def _rfs(topology: Topology) -> dict[str, int]:
    return {t: info.replication_factor for t, info in topology.tenants.items()}


class CopySteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        # The rate each migration's last copy step ended at, so the next starts there rather than
        # at full speed. Only a hint: a step on another worker starts afresh.
        self._rates: dict[str, float] = {}

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
        slots = asyncio.Semaphore(PARALLEL_RANGES)

        async def estimate(move: RangeMove) -> tuple[int, int, list[str], int]:
            async with slots:
                for source in move.old:
                    try:
                        keys = await self._ctx.node(topology, source).count_range(
                            move.start, move.end, epoch=topology.epoch
                        )
                        return move.start, move.end, list(move.old), keys
                    except StorageError:
                        continue
                return move.start, move.end, list(move.old), 0

        planned = list(await asyncio.gather(*(estimate(move) for move in moves)))
        if await self._ctx.store.save_plan(migration_id, planned):
            await self._ctx.store.save_progress(migration_id, {"copy_started_at": time.time()}, None)
        totals = await self._ctx.store.totals(migration_id)
        # Steps from the stored plan, so a retried planning step cuts the same ones.
        chunks = chunked([p.keys_estimate for p in await self._ctx.store.plan(migration_id)])
        log.info(
            "Copy planned",
            migration_id=migration_id,
            node_id=row.node_id,
            ranges=totals["ranges_total"],
            keys=totals["keys_total"],
            steps=len(chunks),
        )
        return CopyPlan(totals["ranges_total"], totals["keys_total"], chunks)

    @activity.defn(name="copy_ranges")
    async def copy_ranges(self, chunk: CopyChunk) -> Progress:
        """Copy a chunk of planned ranges to the joining node, skipping those already copied."""
        row, topology = await self._moving(chunk.migration_id)
        joining = self._ctx.joining(row)
        plan = await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes)
        todo = [p for p in plan if not p.copied]  # checkpointed ranges are never copied twice
        sources = sorted({s for p in todo for s in p.sources})
        pace = Pace(
            chunk.throttle_keys_per_second,
            [joining, *(self._ctx.node(topology, s) for s in sources)],
            start=self._rates.get(chunk.migration_id),
        )
        slots = asyncio.Semaphore(PARALLEL_RANGES)

        async def copy_one(planned: PlannedRange) -> None:
            async with slots:

                async def stream(sources: list[str]) -> tuple[int, int]:
                    if self._takes_every_tenant(topology, row.node_id, planned):
                        source = self._ctx.node(topology, sources[0])
                        moved = await self._forward(joining, source, planned, pace, topology.epoch)
                        metrics.COPY_RANGES.labels("forwarded").inc()
                        return moved
                    old = self._old_view(topology, row.node_id, planned, sources)
                    moved = await self._apply(joining, old, pace, topology.epoch)
                    metrics.COPY_RANGES.labels("merged").inc()
                    return moved

                keys, size = await self._from_quorum(topology, joining, planned, stream)
                await self._ctx.store.mark_copied(chunk.migration_id, planned.index, keys, size)
                activity.heartbeat()

        try:
            await asyncio.gather(*(copy_one(p) for p in todo))
        finally:
            self._rates[chunk.migration_id] = pace.rate
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
        slots = asyncio.Semaphore(PARALLEL_RANGES)

        async def verify_one(planned: PlannedRange) -> int:
            async with slots:
                recopied = await self._verify_range(
                    topology, row.node_id, joining, planned, chunk.migration_id
                )
                await self._ctx.store.mark_verified(chunk.migration_id, planned.index)
                activity.heartbeat()
                return recopied

        plan = await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes)
        return sum(await asyncio.gather(*(verify_one(p) for p in plan if not p.verified)))

    async def _verify_range(
        self, topology: Topology, node_id: str, joining: NodeClient, planned: PlannedRange, migration_id: str
    ) -> int:
        """Check one range, copying what the joining node lacks again; how many times it had to."""
        if await self._digests_agree(topology, joining, planned):
            return 0
        for attempt in range(VERIFY_ATTEMPTS):
            if await self._matches(topology, node_id, joining, planned):
                return attempt
            last = attempt == VERIFY_ATTEMPTS - 1
            # Copy what the joining node lacks again; on the last attempt only count it.
            behind = await self._catch_up(topology, node_id, joining, planned, apply=not last)
            if not behind:
                return attempt
            if last:
                raise ApplicationError(
                    f"range {planned.index} ({planned.start}, {planned.end}] still differs on "
                    f"{node_id} after {VERIFY_ATTEMPTS} copies: {behind} records behind"
                )
            log.warning(
                "Range differs; copied the records behind again",
                migration_id=migration_id,
                node_id=node_id,
                range=planned.index,
                behind=behind,
            )
        return VERIFY_ATTEMPTS

    async def _matches(
        self, topology: Topology, node_id: str, joining: NodeClient, planned: PlannedRange
    ) -> bool:
        """Whether the joining node's digest of the range equals that of the merged old view."""

        async def digest(sources: list[str]) -> tuple[bytes, int]:
            running = merge.RunningDigest()
            async for batch in self._old_view(topology, node_id, planned, sources):
                running.add(batch)
                activity.heartbeat()
            return running.result()

        expected = await self._from_quorum(topology, joining, planned, digest)
        actual = await joining.range_digest(
            planned.start, planned.end, epoch=topology.epoch, timeout=SCAN_TIMEOUT
        )
        return actual == expected

    async def _catch_up(
        self, topology: Topology, node_id: str, joining: NodeClient, planned: PlannedRange, *, apply: bool
    ) -> int:
        """Old records the joining node lacks or holds older: applied to it (or only counted); how many."""

        async def run(sources: list[str]) -> int:
            old = self._old_view(topology, node_id, planned, sources)
            have = joining.scan_range(
                planned.start, planned.end, batch_size=SCAN_BATCH, epoch=topology.epoch, timeout=SCAN_TIMEOUT
            )
            lagging = merge.behind(old, have, planned.start, planned.end)
            if apply:
                return (await self._apply(joining, lagging, Pace(0, [], adaptive=False), topology.epoch))[0]
            return sum([len(batch) async for batch in lagging])

        return await self._from_quorum(topology, joining, planned, run)

    async def _digests_agree(self, topology: Topology, joining: NodeClient, planned: PlannedRange) -> bool:
        """Fast path: a quorum of old replicas and the joining node report one and the same digest.

        Then the merged old view is that very set of (key, version), without
        streaming a record. Anything else (a lagging replica, writes in flight,
        tenants the node does not replicate) takes the full comparison.
        """
        quorum = planned.sources[: required(Consistency.QUORUM, len(planned.sources))]
        epoch = topology.epoch
        nodes = [*(self._ctx.node(topology, s) for s in quorum), joining]
        try:
            digests = await asyncio.gather(
                *(node.range_digest(planned.start, planned.end, epoch=epoch) for node in nodes)
            )
        except StorageError:
            return False
        return len(set(digests)) == 1

    def _old_view(
        self, topology: Topology, node_id: str, planned: PlannedRange, sources: list[str]
    ) -> AsyncIterator[list[StoredRecord]]:
        """The range as these old replicas hold it, merged; only tenants the joining node will replicate."""
        assert topology.future is not None
        rfs = _rfs(topology)
        wanted = {t for t, rf in rfs.items() if node_id in topology.future.replicas(planned.end, rf)}
        streams = [
            self._ctx.node(topology, source).scan_range(
                planned.start, planned.end, batch_size=SCAN_BATCH, epoch=topology.epoch, timeout=SCAN_TIMEOUT
            )
            for source in sources
        ]
        return merge.merged(streams, planned.start, planned.end, wanted)

    async def _from_quorum(
        self,
        topology: Topology,
        joining: NodeClient,
        planned: PlannedRange,
        run: Callable[[list[str]], Awaitable[T]],
    ) -> T:
        """run(sources) with the first quorum of old replicas that answers throughout.

        Sources are taken in replica order until, for every tenant RF, a quorum
        of that RF's replica set is in; one that fails midway is left out and
        the whole range is run again (applying twice is harmless).
        """
        rfs = _rfs(topology)
        needs = [planned.sources[:rf] for rf in set(rfs.values())]
        failures: dict[str, str] = {}
        while True:
            sources: list[str] = []
            for source in planned.sources:
                if sources and all(_quorum_met(sources, members) for members in needs):
                    break
                if source not in failures:
                    sources.append(source)
            if not sources or not all(_quorum_met(sources, members) for members in needs):
                raise ApplicationError(
                    f"range {planned.index}: no quorum of old replicas {planned.sources} answered "
                    f"(failed: {'; '.join(f'{n}: {why}' for n, why in failures.items()) or 'none'})"
                )
            try:
                return await run(sources)
            except StorageError as exc:
                if exc.node_id == joining.node_id or exc.node_id not in sources:
                    raise
                failures[exc.node_id] = describe_failure(exc)
                log.warning(
                    "Copy source failed; streaming the range from another quorum",
                    node_id=exc.node_id,
                    range=planned.index,
                    error=failures[exc.node_id],
                )

    def _takes_every_tenant(self, topology: Topology, node_id: str, planned: PlannedRange) -> bool:
        """Whether the joining node replicates this range for every tenant: nothing to leave out."""
        assert topology.future is not None
        return all(node_id in topology.future.replicas(planned.end, rf) for rf in _rfs(topology).values())

    async def _forward(
        self, joining: NodeClient, source: NodeClient, planned: PlannedRange, pace: Pace, epoch: int
    ) -> tuple[int, int]:
        """The range's packed entries, scanned on source, passed on to the joining node untouched.

        One source may have missed writes the others hold: verification finds and copies them.
        """
        scan = source.scan_entries(
            planned.start, planned.end, batch_size=pace.batch(ENTRY_BATCH), epoch=epoch, timeout=SCAN_TIMEOUT
        )
        return await self._pipelined(
            (
                (
                    count,
                    len(entries),
                    functools.partial(joining.apply_entries, entries, epoch=epoch, timeout=30),
                )
                async for entries, count in scan
            ),
            pace,
        )

    async def _apply(
        self,
        joining: NodeClient,
        batches: AsyncIterator[list[StoredRecord]],
        pace: Pace,
        epoch: int,
    ) -> tuple[int, int]:
        """Apply the records to the joining node in batches of APPLY_BATCH, routed by epoch."""

        async def sends() -> AsyncIterator[tuple[int, int, Callable[[], Awaitable[object]]]]:
            async for merged_batch in batches:
                step = pace.batch(APPLY_BATCH)
                for at in range(0, len(merged_batch), step):
                    part = merged_batch[at : at + step]
                    send = functools.partial(joining.apply_batch, part, epoch=epoch, timeout=30)
                    yield len(part), sum(len(r.value) for r in part), send

        return await self._pipelined(sends(), pace)

    async def _pipelined(
        self, sends: AsyncIterator[tuple[int, int, Callable[[], Awaitable[object]]]], pace: Pace
    ) -> tuple[int, int]:
        """Make each (keys, bytes, send) call at the pace, a few in flight; the keys and bytes sent.

        After a cancel, the node's fence refuses what this step still sends: a
        copy learns of its cancel only at its next heartbeat.
        """
        in_flight: deque[asyncio.Future[object]] = deque()
        keys = size = 0
        try:
            async for count, nbytes, send in sends:
                await pace.take(count)
                if len(in_flight) >= APPLY_IN_FLIGHT:
                    await in_flight.popleft()
                in_flight.append(asyncio.ensure_future(send()))
                keys, size = keys + count, size + nbytes
                activity.heartbeat()
            while in_flight:
                await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
        metrics.COPY_KEYS.inc(keys)
        metrics.COPY_BYTES.inc(size)
        return keys, size

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
