"""The data copy: plan the ranges each node gains, copy them, verify them.

Every ring change plans the same way (coordinator/movement.py): each range
whose replicas change is copied to each node that gains it (its target): the
joining node of an addition, the replacement of a dead node, the nodes that
take over a removed node's ranges, the new replicas of a tenant whose RF rises.

The copy moves the bulk; verification makes it exact. A range the target
takes for every tenant the target pulls from one old replica itself, as the
engine's packed entries (storage_node/pull.py): no record is decoded on the
way, and the bytes never pass through this worker, as Cassandra's bootstrap
streams each range from one replica. A range it takes
only for some tenants (their replication factors differ) is streamed from a
quorum of old replicas, merged on the fly by version (merge.py), filtered and
applied in batches. Either way a few batches are in flight, and memory holds
batches, never a range. A dead node (removed or replaced) is never asked:
the quorum is of the survivors.

Verification then compares each range's digest on the target with the
merged view of a quorum of old replicas, and copies again whatever the target
lacks or holds older: a source that had missed writes costs a second
look, never a lost record. The storage node's last-write-wins makes a copy
that races a dual write harmless, and a range whose source failed midway is
simply streamed again from another. Each finished range is checkpointed in
PostgreSQL (the plan's `copied` flag), so a retried or resumed activity skips
it; heartbeats only say the activity is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pairdb.activities import merge
from pairdb.activities.checkpoints import Checkpoints
from pairdb.activities.context import StepContext
from pairdb.activities.pace import Pace, PaceState
from pairdb.coordinator.metadata import MigrationRow, PlannedRange
from pairdb.coordinator.migration_store import CopiedRange
from pairdb.coordinator.movement import RangeMove
from pairdb.coordinator.quorum import Consistency, required
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import StoredRecord
from pairdb.kernel.migration import CopyChunk, CopyPlan, MigrationRef, Progress, chunked
from pairdb.serving import metrics
from pairdb.serving.loops import gather_all
from pairdb.storage_node.client import NodeClient, StorageError, describe_failure

log = structlog.get_logger()

APPLY_BATCH = 500
# Apply batches in flight to a target while the merge prepares the next.
APPLY_IN_FLIGHT = 3
SCAN_BATCH = 1000
# Packed entries per batch a source streams to a pulling target (a commit each there), and per
# group of small ranges pulled together.
ENTRY_BATCH = 2000
# A group of ranges pulled together holds about these bytes (so that large values still spread over
# several groups at once). A pull call moves at most PULL_ENTRIES (fewer as the pace allows) or
# PULL_BYTES; the next call goes on from there.
GROUP_BYTES = 4 * 1024 * 1024
PULL_ENTRIES = 20_000
PULL_BYTES = 16 * 1024 * 1024
# A packed entry's bytes besides its value: lengths, token, tenant, key, version.
ENTRY_OVERHEAD = 64
SCAN_TIMEOUT = 300.0
VERIFY_ATTEMPTS = 3
# Ranges copied at once within a chunk: overlaps one range's streaming with another's apply.
PARALLEL_RANGES = 16
# Ranges per group, copied in one stream or digested in one call per node: a small range cost
# more per call than per key.
GROUP_RANGES = 64
# How a range reaches its target (see copy_ranges); also the copy metrics' label.
How = Literal["pulled", "merged"]
# Ranges one count call may ask a node for (a count reads no value).
ESTIMATE_RANGES = 1000

T = TypeVar("T")


def _target_id(row: MigrationRow, planned: PlannedRange) -> str:
    """The node a planned range is copied to (plans made before targets were recorded: the joining node)."""
    return planned.target or row.node_id


def _holders(topology: Topology, node_id: str, planned: PlannedRange) -> set[str]:
    """The tenants node_id replicates the range for once the change completes."""
    assert topology.future is not None
    return {
        t
        for t, rf in topology.replication_factors.items()
        if node_id in topology.future.replicas(planned.end, topology.rf_after(t, rf))
    }


class CopySteps:
    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        # Where each migration's last copy step left its pace, so the next goes on from there rather
        # than at full speed. Only a hint: a step on another worker starts afresh.
        self._paces: dict[str, PaceState] = {}

    async def _moving(self, migration_id: str) -> tuple[MigrationRow, Topology]:
        row = await self._ctx.migration(migration_id)
        topology = await self._ctx.topology()
        if topology.future is None or topology.migration_id != migration_id:
            raise ApplicationError(
                f"migration {migration_id} is not in flight (phase {row.phase}, status {row.status})",
                non_retryable=True,
            )
        return row, topology

    @activity.defn(name="plan_copy")
    async def plan_copy(self, ref: MigrationRef) -> CopyPlan:
        """The ranges each node gains, a planned range per (range, target), with key estimates."""
        migration_id = ref.migration_id
        row, topology = await self._moving(migration_id)
        movement = topology.movement()
        assert movement is not None
        moves = movement.moves()
        keys = await self._estimates(topology, row, moves)
        planned = [
            (move.start, move.end, list(move.sources), target, estimate)
            for move, estimate in zip(moves, keys, strict=True)
            for target in sorted(move.gained())
        ]
        if await self._ctx.store.save_plan(migration_id, planned):
            await self._ctx.store.save_progress(migration_id, {"copy_started_at": time.time()}, None)
        totals = await self._ctx.store.totals(migration_id)
        # Steps from the stored plan, so a retried planning step cuts the same ones.
        chunks = chunked([p.keys_estimate for p in await self._ctx.store.plan(migration_id)])
        log.info(
            "Copy planned",
            migration_id=migration_id,
            node_id=row.node_id,
            ranges=totals.ranges_total,
            keys=totals.keys_total,
            targets=sorted({target for *_, target, _ in planned}),
            steps=len(chunks),
        )
        return CopyPlan(totals.ranges_total, totals.keys_total, chunks)

    async def _estimates(self, topology: Topology, row: MigrationRow, moves: list[RangeMove]) -> list[int]:
        """Each move's key count on its first live source that answers (0 if none): a call per source."""
        counts: dict[int, int] = {}
        live = [[s for s in move.sources if s not in row.dead] for move in moves]
        tried = [0] * len(moves)  # sources of each move that failed to answer
        while len(counts) < len(moves):
            asks: dict[str, list[int]] = defaultdict(list)
            for i in range(len(moves)):
                if i not in counts and tried[i] >= len(live[i]):
                    counts[i] = 0
                elif i not in counts:
                    asks[live[i][tried[i]]].append(i)

            async def ask(source: str, indexes: list[int]) -> None:
                node = self._ctx.node(topology, source)
                try:
                    for at in range(0, len(indexes), ESTIMATE_RANGES):
                        part = indexes[at : at + ESTIMATE_RANGES]
                        ranges = [(moves[i].start, moves[i].end) for i in part]
                        counts.update(
                            zip(part, await node.count_ranges(ranges, epoch=topology.epoch), strict=True)
                        )
                except StorageError:
                    for i in indexes:
                        tried[i] += i not in counts

            await asyncio.gather(*(ask(source, indexes) for source, indexes in asks.items()))
        return [counts[i] for i in range(len(moves))]

    @activity.defn(name="copy_ranges")
    async def copy_ranges(self, chunk: CopyChunk) -> Progress:
        """Copy a chunk of planned ranges to their targets, skipping those already copied."""
        row, topology = await self._moving(chunk.migration_id)
        plan = await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes)
        todo = [p for p in plan if not p.copied]  # checkpointed ranges are never copied twice
        pace = self._pace(chunk, topology, row, todo)

        # A target that replicates a range for every tenant pulls its bytes as they are (pulled); one
        # that holds some tenants only gets the old replicas' merged records of those (merged).
        pulled: list[PlannedRange] = []
        merged: list[PlannedRange] = []
        for planned in todo:
            whole = _holders(topology, _target_id(row, planned), planned) == set(topology.tenants)
            (pulled if whole else merged).append(planned)

        async def copy_group(group: list[PlannedRange], how: How) -> None:
            """Ranges of one route (target and sources), pulled together; or one range, merged."""
            first = group[0]
            target = self._target(topology, row, first)
            async with pace.turn():

                async def pull(sources: list[str]) -> dict[int, tuple[int, int]]:
                    source = self._ctx.node(topology, sources[0])
                    return await self._pull(target, source, group, pace, topology.epoch)

                async def merge(sources: list[str]) -> dict[int, tuple[int, int]]:
                    old = self._old_view(topology, target.node_id, first, sources)
                    return {first.index: await self._apply(target, old, pace, topology.epoch)}

                moved = await self._from_quorum(
                    topology, row, target, first, pull if how == "pulled" else merge
                )
                metrics.COPY_RANGES.labels(how).inc(len(group))
                for planned in group:
                    copied.add(CopiedRange(planned.index, *moved[planned.index]))
                activity.heartbeat()

        routes: dict[tuple[str, tuple[str, ...]], list[PlannedRange]] = defaultdict(list)
        for planned in pulled:
            routes[_target_id(row, planned), tuple(planned.sources)].append(planned)
        # Small ranges go together (a pull call and a source's scan each cost more than a small range's
        # bytes), up to about GROUP_BYTES, so that large values still spread over parallel pulls.
        groups: list[tuple[list[PlannedRange], How]] = []
        if routes:
            entry_bytes = await self._entry_bytes(topology, {p.sources[0] for p in pulled} - row.dead)
            per_group = max(1, min(pace.turn_keys(ENTRY_BATCH), GROUP_BYTES // entry_bytes))
            groups = [(g, "pulled") for ranges in routes.values() for g in _groups(ranges, per_group)]
        groups += [([planned], "merged") for planned in merged]

        started = time.monotonic()
        try:
            async with Checkpoints(
                functools.partial(self._ctx.store.mark_copied, chunk.migration_id),
                then=functools.partial(self._report, chunk.migration_id),
            ) as copied:
                await gather_all(copy_group(g, how) for g, how in groups)
        finally:
            self._paces[chunk.migration_id] = pace.state
        log.info(
            "Copy step done",
            migration_id=chunk.migration_id,
            ranges=len(todo),
            keys_planned=sum(p.keys_estimate for p in todo),
            rate=round(pace.rate),
            yielding=pace.state.yielding,
            duration=round(time.monotonic() - started, 3),
        )
        return await self._report(chunk.migration_id)

    @activity.defn(name="verify_ranges")
    async def verify_ranges(self, chunk: CopyChunk) -> int:
        """Compare each range's digest on its target with the merged old view; copy again on mismatch.

        Returns how many ranges had to be copied again. Dual writes may make the
        target newer than the old view while writes run, so a range also
        passes when every old record is on the target at the same or a newer version.
        """
        row, topology = await self._moving(chunk.migration_id)
        plan = await self._ctx.store.plan(chunk.migration_id, chunk.range_indexes)
        todo = [p for p in plan if not p.verified]
        # Yields to clients as the copy does: a range's digests read it on the target and a quorum of
        # sources. (The operator's throttle is of keys copied: the workflow leaves it out here.)
        pace = self._pace(chunk, topology, row, todo)

        async def verify_group(group: list[PlannedRange]) -> int:
            async with pace.turn():
                await pace.take(max(sum(p.keys_estimate for p in group), 1))
                agreed = await self._digests_agree(topology, row, group)
                by_digest.update(agreed)
                for planned in group:
                    if planned.index in agreed:
                        verified.add(planned.index)
                activity.heartbeat()
            return sum(await gather_all(verify_one(p) for p in group if p.index not in agreed))

        async def verify_one(planned: PlannedRange) -> int:
            async with pace.turn():
                await pace.take(max(planned.keys_estimate, 1))
                recopied = await self._verify_range(topology, row, planned)
                verified.add(planned.index)
                activity.heartbeat()
                return recopied

        by_digest: set[int] = set()
        started = time.monotonic()
        try:
            async with Checkpoints(
                functools.partial(self._ctx.store.mark_verified, chunk.migration_id)
            ) as verified:
                groups = _groups(todo, pace.turn_keys(ENTRY_BATCH))
                recopied = sum(await gather_all(verify_group(g) for g in groups))
        finally:
            self._paces[chunk.migration_id] = pace.state
        log.info(
            "Verify step done",
            migration_id=chunk.migration_id,
            ranges=len(todo),
            by_digest=len(by_digest),
            compared_in_full=len(todo) - len(by_digest),
            recopied=recopied,
            duration=round(time.monotonic() - started, 3),
        )
        return recopied

    def _pace(
        self, chunk: CopyChunk, topology: Topology, row: MigrationRow, todo: list[PlannedRange]
    ) -> Pace:
        """The step's pace, heeding the nodes it reads and writes, from where the last step left it."""
        targets = {_target_id(row, p): self._target(topology, row, p) for p in todo}
        sources = sorted({s for p in todo for s in p.sources} - row.dead - set(targets))
        return Pace(
            chunk.throttle_keys_per_second,
            [*targets.values(), *(self._ctx.node(topology, s) for s in sources)],
            start=self._paces.get(chunk.migration_id),
            parallel=PARALLEL_RANGES,
        )

    def _target(self, topology: Topology, row: MigrationRow, planned: PlannedRange) -> NodeClient:
        return self._ctx.target(topology, row, _target_id(row, planned))

    async def _verify_range(self, topology: Topology, row: MigrationRow, planned: PlannedRange) -> int:
        """Check one range in full, copying what its target lacks again; how many times it had to."""
        target = self._target(topology, row, planned)
        for attempt in range(VERIFY_ATTEMPTS):
            if await self._matches(topology, row, target, planned):
                return attempt
            last = attempt == VERIFY_ATTEMPTS - 1
            # Copy what the target lacks again; on the last attempt only count it.
            behind = await self._catch_up(topology, row, target, planned, apply=not last)
            if not behind:
                return attempt
            if last:
                raise ApplicationError(
                    f"range {planned.index} ({planned.start}, {planned.end}] still differs on "
                    f"{target.node_id} after {VERIFY_ATTEMPTS} copies: {behind} records behind"
                )
            log.warning(
                "Range differs; copied the records behind again",
                migration_id=row.migration_id,
                node_id=target.node_id,
                range=planned.index,
                behind=behind,
            )
        return VERIFY_ATTEMPTS

    async def _matches(
        self, topology: Topology, row: MigrationRow, target: NodeClient, planned: PlannedRange
    ) -> bool:
        """Whether the target's digest of the range equals that of the merged old view."""

        async def digest(sources: list[str]) -> tuple[bytes, int]:
            running = merge.RunningDigest()
            async for batch in self._old_view(topology, target.node_id, planned, sources):
                running.add(batch)
                activity.heartbeat()
            return running.result()

        expected = await self._from_quorum(topology, row, target, planned, digest)
        actual = await target.range_digest(
            planned.start, planned.end, epoch=topology.epoch, timeout=SCAN_TIMEOUT
        )
        return actual == expected

    async def _catch_up(
        self, topology: Topology, row: MigrationRow, target: NodeClient, planned: PlannedRange, *, apply: bool
    ) -> int:
        """Old records the target lacks or holds older: applied to it (or only counted); how many."""

        async def run(sources: list[str]) -> int:
            old = self._old_view(topology, target.node_id, planned, sources)
            have = target.scan_range(
                planned.start, planned.end, batch_size=SCAN_BATCH, epoch=topology.epoch, timeout=SCAN_TIMEOUT
            )
            lagging = merge.behind(old, have, planned.start, planned.end)
            if apply:
                return (await self._apply(target, lagging, Pace(0, [], adaptive=False), topology.epoch))[0]
            return sum([len(batch) async for batch in lagging])

        return await self._from_quorum(topology, row, target, planned, run)

    async def _digests_agree(
        self, topology: Topology, row: MigrationRow, group: list[PlannedRange]
    ) -> set[int]:
        """The fast path: the ranges for which a quorum of old replicas and the target report one digest.

        Then the merged old view is that very set of (key, version), without
        streaming a record. Anything else (a lagging replica, writes in flight,
        tenants the target does not replicate, a node that failed to answer)
        takes the full comparison. Each node digests all of its ranges in one call.
        """
        asked: dict[int, list[str]] = {}
        ranges: dict[str, list[PlannedRange]] = defaultdict(list)
        for planned in group:
            target = _target_id(row, planned)
            survivors = [s for s in planned.sources if s not in row.dead and s != target]
            asked[planned.index] = [*survivors[: required(Consistency.QUORUM, len(survivors))], target]
            for node_id in asked[planned.index]:
                ranges[node_id].append(planned)
        digests: dict[tuple[str, int], tuple[bytes, int]] = {}

        async def ask(node_id: str, theirs: list[PlannedRange]) -> None:
            node = self._ctx.target(topology, row, node_id)
            with contextlib.suppress(StorageError):  # its ranges take the full comparison
                answers = await node.range_digests([(p.start, p.end) for p in theirs], epoch=topology.epoch)
                digests.update(((node_id, p.index), d) for p, d in zip(theirs, answers, strict=True))

        await asyncio.gather(*(ask(node_id, theirs) for node_id, theirs in ranges.items()))
        return {
            index
            for index, nodes in asked.items()
            if all((n, index) in digests for n in nodes) and len({digests[n, index] for n in nodes}) == 1
        }

    def _old_view(
        self, topology: Topology, target_id: str, planned: PlannedRange, sources: list[str]
    ) -> AsyncIterator[list[StoredRecord]]:
        """The range as these old replicas hold it, merged; only tenants the target will replicate."""
        wanted = _holders(topology, target_id, planned)
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
        row: MigrationRow,
        target: NodeClient,
        planned: PlannedRange,
        run: Callable[[list[str]], Awaitable[T]],
    ) -> T:
        """run(sources) with the first quorum of old replicas that answers throughout.

        Sources are taken in replica order until, for every RF of a tenant the
        target will hold, a quorum of the live members of that RF's old replica
        set is in (a dead node is never waited for); one that fails midway is left
        out and the whole range is run again (applying twice is harmless).
        """
        rfs = topology.replication_factors
        wanted = _holders(topology, target.node_id, planned)
        needs = [
            live
            for rf in {rfs[t] for t in wanted}
            if (live := [n for n in planned.sources[:rf] if n not in row.dead])
        ]
        failures: dict[str, str] = {n: "dead" for n in row.dead if n in planned.sources}
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
                if exc.node_id == target.node_id or exc.node_id not in sources:
                    raise
                failures[exc.node_id] = describe_failure(exc)
                log.warning(
                    "Copy source failed; streaming the range from another quorum",
                    node_id=exc.node_id,
                    range=planned.index,
                    error=failures[exc.node_id],
                )

    async def _entry_bytes(self, topology: Topology, sources: set[str]) -> int:
        """About how many bytes a record packs to on these nodes, from the first that answers."""
        for source in sorted(sources):
            with contextlib.suppress(StorageError):
                stats = await self._ctx.node(topology, source).stats()
                return stats.bytes // max(stats.keys, 1) + ENTRY_OVERHEAD
        return ENTRY_OVERHEAD

    async def _pull(
        self, target: NodeClient, source: NodeClient, group: list[PlannedRange], pace: Pace, epoch: int
    ) -> dict[int, tuple[int, int]]:
        """The target pulls the ranges from source itself, their packed entries untouched; a call per piece.

        Each call moves about what the pace allows in one (a turn's keys, at
        most PULL_BYTES), so the throttle and the yielding to clients hold as
        when the worker sent every batch. Returns each range's keys and bytes.
        One source may have missed writes the others hold: verification finds
        and copies them.
        """
        moved = {planned.index: (0, 0) for planned in group}
        ranges = [(p.start, p.end) for p in group]
        at, after = 0, b""
        while True:
            pulled = await target.pull_ranges(
                source,
                ranges,
                at=at,
                after=after,
                max_entries=pace.turn_keys(PULL_ENTRIES),
                max_bytes=PULL_BYTES,
                batch_size=pace.batch(ENTRY_BATCH),
                epoch=epoch,
                timeout=SCAN_TIMEOUT,
            )
            count = size = 0
            for position, (n, nbytes) in pulled.moved.items():
                done_keys, done_bytes = moved[group[position].index]
                moved[group[position].index] = (done_keys + n, done_bytes + nbytes)
                count, size = count + n, size + nbytes
            _count_moved(count, size)
            activity.heartbeat()
            # The keys are moved: the pace counts them after the call, so the next one waits its turn.
            await pace.take(count)
            if pulled.next is None:
                return moved
            at, after = pulled.next

    async def _apply(
        self,
        target: NodeClient,
        batches: AsyncIterator[list[StoredRecord]],
        pace: Pace,
        epoch: int,
    ) -> tuple[int, int]:
        """Apply the records to the target in batches at the pace, a few in flight; the keys and bytes sent.

        After a cancel, the node's fence refuses what this step still sends: a
        copy learns of its cancel only at its next heartbeat.
        """
        in_flight: deque[asyncio.Future[object]] = deque()
        keys = size = 0
        try:
            async for merged_batch in batches:
                step = pace.batch(APPLY_BATCH)
                for at in range(0, len(merged_batch), step):
                    part = merged_batch[at : at + step]
                    await pace.take(len(part))
                    if len(in_flight) >= APPLY_IN_FLIGHT:
                        await in_flight.popleft()
                    in_flight.append(asyncio.ensure_future(target.apply_batch(part, epoch=epoch, timeout=30)))
                    keys, size = keys + len(part), size + sum(len(r.value) for r in part)
                    activity.heartbeat()
            while in_flight:
                await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
        _count_moved(keys, size)
        return keys, size

    async def _report(self, migration_id: str) -> Progress:
        totals = await self._ctx.store.totals(migration_id)
        started = totals.started_at or time.time()
        elapsed = max(time.time() - started, 1e-3)
        rate = totals.keys_copied / elapsed
        remaining = max(totals.keys_total - totals.keys_copied, 0)
        eta = remaining / rate if rate > 0 else 0.0
        progress = Progress(
            keys_copied=totals.keys_copied,
            keys_total=max(totals.keys_total, totals.keys_copied),
            bytes_copied=totals.bytes_copied,
            ranges_done=totals.ranges_done,
            ranges_total=totals.ranges_total,
            keys_per_second=round(rate, 1),
            eta_seconds=round(eta, 1),
        )
        payload = {**progress.__dict__, "percent": round(progress.percent, 2), "copy_started_at": started}
        await self._ctx.store.save_progress(migration_id, payload, datetime.now(UTC) + timedelta(seconds=eta))
        return progress


def _count_moved(keys: int, size: int) -> None:
    metrics.COPY_KEYS.inc(keys)
    metrics.COPY_BYTES.inc(size)


def _groups(todo: list[PlannedRange], keys: int) -> list[list[PlannedRange]]:
    """The ranges in groups of about keys keys (a bigger range alone), for one call per node each."""
    groups: list[list[PlannedRange]] = []
    size = 0
    for planned in todo:
        if not groups or size + planned.keys_estimate > keys or len(groups[-1]) >= GROUP_RANGES:
            groups.append([])
            size = 0
        groups[-1].append(planned)
        size += planned.keys_estimate
    return groups


def _quorum_met(answered: list[str], members: list[str]) -> bool:
    return sum(1 for n in members if n in answered) >= required(Consistency.QUORUM, len(members))
