"""Anti-entropy repair: every replica of every range ends holding what the others hold.

Read repair fixes only keys someone reads; a replica that missed writes (it was
down, a send timed out) stays behind on every other key. A repair walks the
ring range by range. For each range and each group of tenants sharing a
replication factor (their replica sets differ), it asks every replica for the
range's digest. Equal digests end it: nothing is streamed. Otherwise it
narrows down, as a Merkle tree would but without keeping one: the range is cut
into FANOUT pieces and each piece's digests compared, recursively, until a
differing piece holds at most LEAF_KEYS records. Only such pieces are
streamed: the replicas' scans merged (newest version wins, merge.py), and each
replica sent what it lacks or holds older. Storage nodes apply last-write-wins,
so a repair never overwrites newer data, and racing client writes are harmless.

Tombstone GC rides on it (ScyllaDB's repair mode): once every replica of a
range answered and was brought level, a delete written before this range's
repair started is on all of them, so no replica can bring the old value back;
the range's tombstones older than that start and than the tenant's grace
period are purged on every replica. A range some replica did not answer is
synced among the others but keeps its tombstones. A repair yields to ring
changes: it repairs nothing while one is in flight, and a fence raised by one
mid-step stops it (the workflow waits, then goes on from its checkpoints).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from temporalio import activity

from pairdb.activities import merge
from pairdb.activities.checkpoints import Checkpoints
from pairdb.activities.context import StepContext
from pairdb.activities.pace import Pace
from pairdb.coordinator.repair_store import RepairedRange, RepairRange
from pairdb.coordinator.topology import Topology
from pairdb.kernel.keyspace import TOKEN_MAX
from pairdb.kernel.migration import Progress, Status, chunked
from pairdb.kernel.repair import (
    DEFAULT_GC_GRACE_SECONDS,
    BeginRepair,
    FinishRepair,
    RepairChunk,
    RepairPlan,
    RepairRef,
    RepairStep,
)
from pairdb.kernel.sabotage import PURGE_WITHOUT_EVERY_REPLICA
from pairdb.serving import metrics
from pairdb.serving.loops import gather_all, stop_task
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError, describe_failure

log = structlog.get_logger()

# A differing piece with at most this many records is streamed rather than cut again.
LEAF_KEYS = 1000
# Pieces a differing range is cut into at each level.
FANOUT = 16
SCAN_BATCH = 1000
APPLY_BATCH = 500
# A node that does not answer a digest or scan in this long is left out of the range (unreachable).
SCAN_TIMEOUT = 60.0
# How long a step waits for the nodes' channels to be up before asking them (a node just restarted).
CONNECT_SECONDS = 3.0
HEARTBEAT_SECONDS = 5.0
# Ranges repaired at once within a step.
PARALLEL_RANGES = 4
RING_SIZE = TOKEN_MAX + 1


async def _heartbeat_every(seconds: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(seconds)


def _now_hlc() -> int:
    """This moment as a version's hlc (wall milliseconds, logical counter 0)."""
    return time.time_ns() // 1_000_000 << 16


def _width(start: int, end: int) -> int:
    """How many tokens (start, end] holds; start == end is the whole ring."""
    return (end - start) % RING_SIZE or RING_SIZE


def split(start: int, end: int, parts: int = FANOUT) -> list[tuple[int, int]]:
    """(start, end] cut into `parts` consecutive non-empty ranges (fewer if it holds fewer tokens)."""
    width = _width(start, end)
    parts = min(parts, width)
    bounds = [(start + width * i // parts) % RING_SIZE for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def pieces(topology: Topology, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end] cut at the current ring's boundaries: each piece has one replica set per RF.

    A plan is made on the ring its repair started on; the ring may have changed since.
    """
    inside = sorted(
        {
            v.token
            for v in topology.ring.vnodes
            if v.token != end and _width(start, v.token) < _width(start, end)
        },
        key=lambda t: _width(start, t),
    )
    bounds = [start, *inside, end]
    return list(itertools.pairwise(bounds))


@dataclass
class _Outcome:
    """What repairing one planned range did."""

    streamed: int = 0
    # Records read (merged) from differing pieces: what narrowing down saves is the rest of the range.
    scanned: int = 0
    purged: int = 0
    differed: bool = False
    unreachable: dict[str, str] = field(default_factory=dict)


class RepairSteps:
    def __init__(self, ctx: StepContext, sabotage: frozenset[str] = frozenset()) -> None:
        self._ctx = ctx
        self._purge_anyway = PURGE_WITHOUT_EVERY_REPLICA in sabotage

    @activity.defn(name="begin_repair")
    async def begin_repair(self, begin: BeginRepair) -> None:
        await self._ctx.repairs.begin(begin.repair_id, begin.tenant_id, begin.started_by)
        log.info("Repair started", repair_id=begin.repair_id, tenant_id=begin.tenant_id or None)

    @activity.defn(name="plan_repair")
    async def plan_repair(self, ref: RepairRef) -> RepairPlan:
        """The ring's ranges as they are now, with key estimates; steps of about CHUNK_KEYS keys."""
        topology = await self._ctx.topology()
        slots = asyncio.Semaphore(16)

        async def estimate(start: int, end: int) -> int:
            async with slots:
                for node_id in topology.ring.replicas(end, len(topology.ring.node_ids)):
                    try:
                        return await self._ctx.node(topology, node_id).count_range(start, end)
                    except StorageError:
                        continue
                return 0

        ranges = [(s, e) for s, e, _ in topology.ring.ranges()]
        estimates = await asyncio.gather(*(estimate(s, e) for s, e in ranges))
        await self._ctx.repairs.save_plan(
            ref.repair_id, [(s, e, n) for (s, e), n in zip(ranges, estimates, strict=True)]
        )
        plan = await self._ctx.repairs.plan(ref.repair_id)
        totals = await self._ctx.repairs.totals(ref.repair_id)
        await self._ctx.repairs.save_progress(ref.repair_id, {"repair_started_at": time.time()}, None)
        return RepairPlan(totals.ranges_total, totals.keys_total, chunked([p.keys_estimate for p in plan]))

    @activity.defn(name="repair_ranges")
    async def repair_ranges(self, chunk: RepairChunk) -> RepairStep:
        """Repair a step's ranges not repaired yet; nothing while a ring change is in flight."""
        topology = await self._ctx.topology()
        if topology.future is not None:
            return await self._waiting(chunk.repair_id, topology)
        row = await self._ctx.repairs.get(chunk.repair_id)
        assert row is not None, f"repair {chunk.repair_id} was never begun"
        rfs = topology.replication_factors
        tenants = {t: rf for t, rf in rfs.items() if not row.tenant_id or t == row.tenant_id}
        graces = await self._ctx.repairs.graces()
        todo = [
            r for r in await self._ctx.repairs.plan(chunk.repair_id, chunk.range_indexes) if not r.repaired
        ]
        nodes = [self._ctx.node(topology, n) for n in sorted(topology.ring.node_ids)]
        # A node that is down stays unreachable, found by the calls; one that just came back answers.
        await asyncio.gather(*(node.connected(CONNECT_SECONDS) for node in nodes))
        pace = Pace(chunk.throttle_keys_per_second, nodes)
        slots = asyncio.Semaphore(PARALLEL_RANGES)

        async def repair_one(planned: RepairRange) -> None:
            async with slots:
                outcome = await self._repair_range(topology, planned, tenants, graces, pace)
                repaired.add(
                    RepairedRange(
                        planned.index,
                        streamed=outcome.streamed,
                        scanned=outcome.scanned,
                        purged=outcome.purged,
                        unreachable=sorted(outcome.unreachable),
                    )
                )
                kind = "incomplete" if outcome.unreachable else "repaired" if outcome.differed else "in_sync"
                metrics.REPAIR_RANGES.labels(kind).inc()

        # A digest of a big range, or a node slow to answer, takes longer than the heartbeat timeout.
        beating = asyncio.ensure_future(_heartbeat_every(HEARTBEAT_SECONDS))
        try:
            async with Checkpoints(
                functools.partial(self._ctx.repairs.mark_repaired, chunk.repair_id),
                then=functools.partial(self._report, chunk.repair_id),
            ) as repaired:
                await gather_all(repair_one(r) for r in todo)
        except StaleEpoch:
            # A ring change began under this step: what finished is checkpointed, the rest waits.
            return await self._waiting(chunk.repair_id, await self._ctx.topology())
        finally:
            await stop_task(beating)
        return RepairStep(await self._report(chunk.repair_id))

    @activity.defn(name="finish_repair")
    async def finish_repair(self, finish: FinishRepair) -> FinishRepair:
        """Record how the repair ended; a completed one with ranges some replica missed ends failed."""
        status, error = finish.status, finish.error
        if status == Status.COMPLETED:
            totals = await self._ctx.repairs.totals(finish.repair_id)
            if totals.ranges_incomplete:
                missing = ", ".join(await self._ctx.repairs.unreachable(finish.repair_id))
                status = Status.FAILED
                error = (
                    f"{totals.ranges_incomplete} of {totals.ranges_total} ranges could not reach every "
                    f"replica ({missing}): they were synced among the others and keep their tombstones; "
                    "repair again once every node answers"
                )
        await self._ctx.repairs.finish(finish.repair_id, status, error)
        log.info("Repair ended", repair_id=finish.repair_id, status=status, error=error or None)
        return FinishRepair(finish.repair_id, status, error)

    # -- one range ---------------------------------------------------------------------

    async def _repair_range(
        self,
        topology: Topology,
        planned: RepairRange,
        tenants: dict[str, int],
        graces: dict[str, int],
        pace: Pace,
    ) -> _Outcome:
        started = _now_hlc()
        outcome = _Outcome()
        groups: dict[int, frozenset[str]] = {}
        for tenant, rf in tenants.items():
            groups[rf] = groups.get(rf, frozenset()) | {tenant}
        cuts = pieces(topology, planned.start, planned.end)
        share = planned.keys_estimate // len(cuts)
        for start, end in cuts:
            for rf, group in groups.items():
                replicas = [self._ctx.node(topology, n) for n in topology.ring.replicas(end, rf)]
                await self._sync(topology, start, end, replicas, group, pace, outcome, share)
        if outcome.unreachable and not self._purge_anyway:
            return outcome
        now_ms = started >> 16
        for start, end in cuts:
            for rf, group in groups.items():
                cutoffs = {
                    t: min(started, max(now_ms - graces.get(t, DEFAULT_GC_GRACE_SECONDS) * 1000, 0) << 16)
                    for t in group
                }
                for node_id in topology.ring.replicas(end, rf):
                    if node_id in outcome.unreachable:
                        continue
                    try:
                        outcome.purged += await self._ctx.node(topology, node_id).purge_tombstones(
                            start, end, cutoffs, repaired_at=started, epoch=topology.epoch
                        )
                    except StaleEpoch:
                        raise
                    except StorageError as exc:
                        outcome.unreachable[node_id] = describe_failure(exc)
        metrics.TOMBSTONES_PURGED.inc(outcome.purged)
        return outcome

    async def _sync(
        self,
        topology: Topology,
        start: int,
        end: int,
        replicas: list[NodeClient],
        tenants: frozenset[str],
        pace: Pace,
        outcome: _Outcome,
        expected: int,
    ) -> None:
        """Bring the replicas of (start, end] level for these tenants, narrowing down where they differ.

        expected: about how many records the piece holds; digesting them is paced like streaming them.
        """
        live = [r for r in replicas if r.node_id not in outcome.unreachable]
        await pace.take(max(expected, 1))
        results = await asyncio.gather(
            *(
                r.range_digest(start, end, tenants=tenants, epoch=topology.epoch, timeout=SCAN_TIMEOUT)
                for r in live
            ),
            return_exceptions=True,
        )
        answered: list[NodeClient] = []
        digests: set[bytes] = set()
        most = 0
        for replica, result in zip(live, results, strict=True):
            if isinstance(result, StaleEpoch):
                raise result
            if isinstance(result, StorageError):
                outcome.unreachable[replica.node_id] = describe_failure(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answered.append(replica)
                digests.add(result[0])
                most = max(most, result[1])
        if len(answered) < 2 or len(digests) == 1:
            return
        outcome.differed = True
        if most > LEAF_KEYS and _width(start, end) >= FANOUT:
            for sub_start, sub_end in split(start, end):
                await self._sync(
                    topology, sub_start, sub_end, answered, tenants, pace, outcome, most // FANOUT
                )
            return
        for target in answered:
            try:
                outcome.streamed += await self._level(
                    topology, start, end, answered, target, tenants, pace, outcome
                )
            except StaleEpoch:
                raise
            except StorageError as exc:
                outcome.unreachable[exc.node_id] = describe_failure(exc)
                return

    async def _level(
        self,
        topology: Topology,
        start: int,
        end: int,
        replicas: list[NodeClient],
        target: NodeClient,
        tenants: frozenset[str],
        pace: Pace,
        outcome: _Outcome,
    ) -> int:
        """Send target what the replicas' merged view of (start, end] has newer than it; how many."""
        epoch = topology.epoch

        def scan(node: NodeClient) -> merge.Stream:
            return node.scan_range(start, end, batch_size=SCAN_BATCH, epoch=epoch, timeout=SCAN_TIMEOUT)

        async def counted(stream: merge.Stream) -> merge.Stream:
            async for batch in stream:
                outcome.scanned += len(batch)
                yield batch

        newest = counted(merge.merged([scan(r) for r in replicas], start, end, tenants))
        sent = 0
        async for batch in merge.behind(newest, scan(target), start, end):
            for at in range(0, len(batch), APPLY_BATCH):
                part = batch[at : at + APPLY_BATCH]
                await pace.take(len(part))
                await target.apply_batch(part, epoch=epoch, timeout=30)
                sent += len(part)
        if sent:
            metrics.REPAIR_RECORDS.inc(sent)
            log.info(
                "Replica repaired",
                node_id=target.node_id,
                start=start,
                end=end,
                records=sent,
            )
        return sent

    # -- progress ----------------------------------------------------------------------

    async def _waiting(self, repair_id: str, topology: Topology) -> RepairStep:
        why = f"ring change {topology.migration_id or ''} in flight ({topology.phase or 'starting'})"
        return RepairStep(await self._report(repair_id, why), waiting_for=why)

    async def _report(self, repair_id: str, waiting_for: str = "") -> Progress:
        totals = await self._ctx.repairs.totals(repair_id)
        started = totals.started_at or time.time()
        elapsed = max(time.time() - started, 1e-3)
        rate = totals.keys_done / elapsed
        remaining = max(totals.keys_total - totals.keys_done, 0)
        eta = remaining / rate if rate > 0 else 0.0
        progress = Progress(
            keys_copied=totals.keys_done,
            keys_total=totals.keys_total,
            bytes_copied=0,
            ranges_done=totals.ranges_done,
            ranges_total=totals.ranges_total,
            keys_per_second=round(rate, 1),
            eta_seconds=round(eta, 1),
        )
        payload = {
            **progress.__dict__,
            "percent": round(progress.percent, 2),
            "repair_started_at": started,
            "streamed": totals.streamed,
            "scanned": totals.scanned,
            "purged": totals.purged,
            "ranges_incomplete": totals.ranges_incomplete,
            "waiting_for": waiting_for,
        }
        await self._ctx.repairs.save_progress(repair_id, payload, datetime.now(UTC) + timedelta(seconds=eta))
        return progress
