"""The coordinator's cached view of the cluster, kept current from PostgreSQL.

Reloaded when the registry epoch moves: on NOTIFY, and by polling in case a
notification is lost. The coordinator's lease is renewed on the same beat with
the epoch it has applied; while the lease is lapsed (PostgreSQL unreachable),
the coordinator refuses requests rather than route by a view it cannot vouch for.

The lease is counted on CLOCK_BOOTTIME from just before the renewal is sent,
PostgreSQL counts the same duration from when it runs the renewal: the
coordinator's lease always runs out first, even across a suspend. One process
at a time holds a coordinator id's lease (its incarnation), and the lease also
persists the hybrid logical clock's ceiling (coordinator/hlc.py).

The refresh-and-renew beat runs on a PostgreSQL connection of its own (lease_metadata),
not the pool requests use: a flood of requests queueing for the pool cannot lapse
the lease. A request for a tenant the view lacks reloads it first (the tenant may be
new); those reloads are shared by every request waiting at once, and a tenant found
missing is remembered briefly (unknown_tenants.py), so made-up tenant ids cost
PostgreSQL next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from pairdb.coordinator.hlc import HybridLogicalClock
from pairdb.coordinator.metadata import (
    NOTIFY_CHANNEL,
    InFlight,
    Metadata,
    NodeInfo,
    Registration,
    Snapshot,
    TenantInfo,
)
from pairdb.coordinator.movement import Movement
from pairdb.coordinator.ring import Ring
from pairdb.coordinator.unknown_tenants import DEFAULT_TTL_SECONDS, UnknownTenants
from pairdb.kernel.clocks import DEFAULT_MAX_OFFSET_MS, WallClock, boottime
from pairdb.kernel.errors import Unavailable
from pairdb.kernel.migration import ROUTING, ChangeType, NodeState, Phase
from pairdb.serving import metrics
from pairdb.serving.loops import stop_task

log = structlog.get_logger()

# A restarted coordinator whose clock is this far behind its previous incarnation's
# versions refuses to start rather than wait: someone must look at that clock.
MAX_CLOCK_WAIT_MS = 60_000
# How long start-up keeps trying while PostgreSQL is unreachable.
STARTUP_WAIT_SECONDS = 60.0


class LeaseLapsed(Exception):
    pass


@dataclass(frozen=True)
class Topology:
    epoch: int
    # The ring as it is before the in-flight ring change (without a node being added, with one
    # being removed or replaced): what requests use when no change is in flight, and the `old`
    # side of one that is.
    ring: Ring
    nodes: dict[str, NodeInfo]
    tenants: dict[str, TenantInfo]
    # While a ring change is in flight: the ring after it, its phase, the node it adds or removes
    # (or that replaces a dead one), and the RF a tenant moves to.
    future: Ring | None = None
    phase: Phase | None = None
    moving_node: str | None = None
    future_rf: Mapping[str, int] = field(default_factory=dict)
    change: ChangeType | None = None
    migration_id: str | None = None

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Topology:
        f = snap.in_flight
        joining = f.node_id if f is not None and f.change.adds_node else None
        # A leaving node (removed, or dead and being replaced) serves until the change completes.
        members = {
            n
            for n, info in snap.nodes.items()
            if info.status in (NodeState.ACTIVE, NodeState.LEAVING) and n != joining
        }
        ring = Ring.from_tokens((t, n) for t, n in snap.tokens if n in members)
        if f is None or f.phase not in ROUTING:
            return cls(snap.epoch, ring, snap.nodes, snap.tenants)
        future, future_rf = _after(f, ring, [(t, n) for t, n in snap.tokens if n == joining])
        moving = f.node_id or None
        return cls(
            snap.epoch,
            ring,
            snap.nodes,
            snap.tenants,
            future,
            f.phase,
            moving,
            future_rf,
            f.change,
            f.migration_id,
        )

    def address(self, node_id: str) -> str:
        return self.addresses[node_id]

    @functools.cached_property
    def addresses(self) -> Mapping[str, str]:
        """Each node's address, worked out once per view: every replica call looks one up."""
        return {node_id: info.address for node_id, info in self.nodes.items()}

    def rf_after(self, tenant_id: str, rf: int) -> int:
        """The tenant's replication factor once the in-flight change completes."""
        return self.future_rf.get(tenant_id, rf)

    @property
    def replication_factors(self) -> dict[str, int]:
        """Each tenant's replication factor as it is (before the in-flight change): where its data is."""
        return {t: info.replication_factor for t, info in self.tenants.items()}

    def movement(self) -> Movement | None:
        """The in-flight change as range movement: old ring and RFs to new ring and RFs."""
        if self.future is None:
            return None
        return self._movement(self.future, self.future_rf)

    def undone(self, change: InFlight) -> Movement:
        """The movement a cancelled removal or RF change had begun, from the old ring it left behind
        (their new ring follows from it; an addition's would need the tokens it deleted)."""
        assert not change.change.adds_node, "an undone addition or replacement is wiped, not recomputed"
        return self._movement(*_after(change, self.ring, []))

    def _movement(self, future: Ring, future_rf: Mapping[str, int]) -> Movement:
        rfs = self.replication_factors
        return Movement(self.ring, future, rfs, {t: future_rf.get(t, rf) for t, rf in rfs.items()})


def _after(f: InFlight, ring: Ring, joining_tokens: list[tuple[int, str]]) -> tuple[Ring, dict[str, int]]:
    """The ring, and the tenant RF that changes, once f completes; from the ring before it."""
    old = [(v.token, v.node_id) for v in ring.vnodes]
    if f.change is ChangeType.NODE_ADDITION:
        return Ring.from_tokens([*old, *joining_tokens]), {}
    if f.change is ChangeType.NODE_REMOVAL:
        return Ring.from_tokens((t, n) for t, n in old if n != f.node_id), {}
    if f.change is ChangeType.NODE_REPLACEMENT:
        return Ring.from_tokens((t, f.node_id if n == f.replaces else n) for t, n in old), {}
    return ring, {f.tenant_id: f.replication_factor}


class TopologyCache:
    def __init__(
        self,
        metadata: Metadata,
        coordinator_id: str,
        address: str,
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        wall: WallClock | None = None,
        max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        lease_metadata: Metadata | None = None,
        unknown_tenant_seconds: float = DEFAULT_TTL_SECONDS,
    ) -> None:
        self._metadata = metadata
        # The lease's own connection (a pool of one); the shared pool when not given (tests).
        self._lease_metadata = lease_metadata or metadata
        self.coordinator_id = coordinator_id
        self._address = address
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._wall = wall or WallClock()
        self.incarnation = uuid.uuid4().hex
        self.clock = HybridLogicalClock(0, self._wall.now_ms, max_clock_offset_ms)
        self._superseded = False
        self._current: Topology | None = None
        self._lease_valid_until = 0.0
        self._changed = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._refresh_ok = True
        # Requests in flight per epoch: an epoch counts as applied only once no
        # request routed by an older epoch is still running (barrier safety).
        self._in_flight: Counter[int] = Counter()
        self._unknown = UnknownTenants(unknown_tenant_seconds)
        # Reloads for requests whose tenant the view lacks: the one running, and the one
        # queued behind it that every request arriving meanwhile shares.
        self._reloading: asyncio.Task[Topology] | None = None
        self._next_reload: asyncio.Task[Topology] | None = None

    @property
    def current(self) -> Topology:
        assert self._current is not None, "TopologyCache.start() not awaited"
        return self._current

    @property
    def origin(self) -> int:
        return self.clock.origin

    async def start(self) -> None:
        """Take the id's lease, load the view, renew once; PostgreSQL may come and go meanwhile.

        A coordinator restarted while PostgreSQL restarts too (found by chaos: it exited and
        never came back) keeps trying for STARTUP_WAIT_SECONDS, as Metadata.connect does.
        """
        deadline = boottime() + STARTUP_WAIT_SECONDS
        delay = 0.1
        while True:
            try:
                registration = await self._register()
                self.clock.origin = registration.origin
                await self._wait_for_clock(registration.hlc_ceiling_ms)
                self.clock.start_after(registration.hlc_ceiling_ms)
                await self.refresh(self._lease_metadata)
                await self._renew()  # a lease and a persisted clock ceiling before the first request
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if boottime() + delay > deadline:
                    raise
                log.warning(
                    "PostgreSQL not ready; retrying start-up",
                    coordinator_id=self.coordinator_id,
                    error=f"{type(exc).__name__}: {exc}",
                    delay=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._task = asyncio.create_task(self._run(), name="topology-refresh")

    async def _register(self) -> Registration:
        """Take this coordinator id's lease, waiting for a previous process's lease to lapse.

        A coordinator killed a moment ago left a live lease: its restart waits it
        out. A live twin renews its lease for ever: give up and say so.
        """
        deadline = boottime() + 2 * self._lease_seconds + 5
        while True:
            registration = await self._lease_metadata.register_coordinator(
                self.coordinator_id, self._address, self._lease_seconds, self.incarnation
            )
            if registration is not None:
                return registration
            holder = await self._lease_metadata.lease_holder(self.coordinator_id)
            where = f"the process at {holder[0]}" if holder else "another process"
            if boottime() > deadline:
                raise SystemExit(
                    f"coordinator id {self.coordinator_id!r} is in use: {where} holds its lease. "
                    "Each coordinator needs its own --coordinator-id."
                )
            log.warning(
                "Waiting for this coordinator id's previous lease to lapse",
                coordinator_id=self.coordinator_id,
                holder=holder[0] if holder else None,
                seconds_left=round(holder[1], 1) if holder else None,
            )
            await asyncio.sleep(max(0.1, min(1.0, holder[1] if holder else 0.5)))

    async def _wait_for_clock(self, ceiling_ms: int) -> None:
        """Wait until the wall clock is past every version a previous incarnation may have issued."""
        behind = ceiling_ms - self._wall.now_ms()
        if behind > MAX_CLOCK_WAIT_MS:
            raise SystemExit(
                f"this machine's clock is {behind} ms behind versions coordinator {self.coordinator_id} "
                "already issued; correct the clock (NTP) before starting it"
            )
        if behind > 0:
            log.warning(
                "Waiting for the clock to pass the previous incarnation's versions",
                coordinator_id=self.coordinator_id,
                wait_ms=behind,
            )
        while (behind := ceiling_ms - self._wall.now_ms()) >= 0:  # noqa: ASYNC110 - waiting for time itself
            await asyncio.sleep(behind / 1000 + 0.001)

    async def _renew(self) -> None:
        """Renew the lease with the applied epoch, and persist the clock's ceiling with it."""
        renewed_at = boottime()
        lease_ms = int(self._lease_seconds * 1000)
        ceiling = max(self._wall.now_ms() + lease_ms, self.clock.high_water_ms)
        renewed = await self._lease_metadata.renew_lease(
            self.coordinator_id, self.incarnation, self.applied_epoch, self._lease_seconds, ceiling
        )
        if not renewed:
            self._superseded = True
            raise LeaseLapsed(
                f"another process took over coordinator id {self.coordinator_id}; this one serves no more"
            )
        self._lease_valid_until = renewed_at + self._lease_seconds
        self.clock.ceiling_ms = ceiling
        metrics.APPLIED_EPOCH.set(self.applied_epoch)

    async def stop(self) -> None:
        await stop_task(self._task)
        for reload in (self._reloading, self._next_reload):
            if reload is not None:
                reload.cancel()
        await self._close_listener()
        with contextlib.suppress(Exception):
            # Versions issued so far stay below the ceiling left behind: a restart need not wait.
            await self._lease_metadata.release_lease(
                self.coordinator_id, self.incarnation, self.clock.high_water_ms + 1
            )

    @contextlib.contextmanager
    def pin(self) -> Iterator[Topology]:
        """The current topology, counted as in use until the request finishes."""
        self.check_lease()
        topology = self.current
        self._in_flight[topology.epoch] += 1
        try:
            yield topology
        finally:
            self._release(topology.epoch)

    def track(self, epoch: int, work: asyncio.Future[Any]) -> None:
        """Count work a request leaves running (late replica sends, repairs) as in flight under epoch.

        It still writes by that epoch's view, so a barrier must wait for it too.
        """
        self._in_flight[epoch] += 1
        work.add_done_callback(lambda _: self._release(epoch))

    def _release(self, epoch: int) -> None:
        self._in_flight[epoch] -= 1
        if not self._in_flight[epoch]:
            del self._in_flight[epoch]
            if epoch < self.current.epoch:
                self._changed.set()  # report the newer epoch now, not at the next poll

    @property
    def applied_epoch(self) -> int:
        """The epoch this coordinator vouches for: the oldest one a running request still uses."""
        current = self.current.epoch
        return min([current, *self._in_flight])

    def serving(self) -> bool:
        """Readiness: a live lease, and the last refresh reached PostgreSQL."""
        return self._refresh_ok and not self._superseded and boottime() <= self._lease_valid_until

    def check_lease(self) -> None:
        """Raise LeaseLapsed when this coordinator may not serve requests (or answer one it served)."""
        if self._superseded:
            raise LeaseLapsed(
                f"another process took over coordinator id {self.coordinator_id}; this one serves no more"
            )
        if boottime() > self._lease_valid_until:
            raise LeaseLapsed(
                f"coordinator {self.coordinator_id} cannot reach PostgreSQL and its lease has lapsed; "
                "it serves again once it has refreshed its view of the cluster"
            )

    async def refresh(self, via: Metadata | None = None) -> Topology:
        """Reload the view if the registry epoch moved; via: the metadata connection to use."""
        metadata = via or self._metadata
        if self._current is not None and await metadata.epoch() == self._current.epoch:
            return self._current  # one cheap query on the common path
        snap = await metadata.snapshot()
        metrics.REGISTRY_EPOCH.set(snap.epoch)
        metrics.ACTIVE_MIGRATIONS.set(1 if snap.in_flight is not None else 0)
        if self._current is None or snap.epoch != self._current.epoch:
            self._current = Topology.from_snapshot(snap)
            self._unknown.clear()  # a tenant may have been created
            log.info(
                "Topology applied",
                epoch=snap.epoch,
                nodes=len(self._current.ring.node_ids),
                tenants=len(snap.tenants),
            )
        return self._current

    async def catch_up(self, fence: int = 0) -> None:
        """After a request found its view out of date: refresh it, or say why it cannot be served.

        fence: the epoch a storage node refused the request at; the view must reach it.
        """
        try:
            async with asyncio.timeout(self._lease_seconds):
                topology = await self.refresh()
        except Exception as exc:
            raise Unavailable(
                f"coordinator {self.coordinator_id}'s view of the ring is out of date and it cannot "
                f"refresh it ({type(exc).__name__}: {exc}); retry"
            ) from None
        if topology.epoch < fence:
            raise Unavailable(
                f"a storage node is fenced at epoch {fence}, newer than coordinator "
                f"{self.coordinator_id}'s view of the ring (epoch {topology.epoch}); retry shortly"
            )

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        """A tenant from the cache; on a miss, reload first (it may have just been created).

        A tenant found missing is answered from memory for a moment (UnknownTenants), and
        requests missing at once share one reload: made-up ids cannot flood PostgreSQL.
        """
        info = self.current.tenants.get(tenant_id)
        if info is not None:
            return info
        if tenant_id in self._unknown:
            metrics.UNKNOWN_TENANT_REQUESTS.labels("cached").inc()
            return None
        try:
            # Bounded: a request must not hang on a partitioned PostgreSQL (it holds its epoch).
            async with asyncio.timeout(self._lease_seconds):
                info = (await self._reload()).tenants.get(tenant_id)
        except Exception as exc:
            raise Unavailable(
                f"coordinator {self.coordinator_id} cannot look tenant {tenant_id!r} up in PostgreSQL "
                f"({type(exc).__name__}: {exc}); retry"
            ) from None
        if info is None:
            metrics.UNKNOWN_TENANT_REQUESTS.labels("queried").inc()
            self._unknown.add(tenant_id)
        return info

    def tenant_created(self, tenant_id: str) -> None:
        """This coordinator just created tenant_id: never answer it from the unknown ones."""
        self._unknown.discard(tenant_id)

    async def _reload(self) -> Topology:
        """A refresh started after this call, shared by every call waiting for one to start."""
        if self._next_reload is None:
            self._next_reload = asyncio.create_task(self._reload_after(self._reloading), name="tenant-reload")
            # Every waiter may have given up (timed out): the outcome is still collected.
            self._next_reload.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._next_reload)

    async def _reload_after(self, previous: asyncio.Task[Topology] | None) -> Topology:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own waiters'
        # Started now: requests arriving from here on need a later reload.
        self._reloading, self._next_reload = self._next_reload, None
        return await self.refresh()

    async def _run(self) -> None:
        while True:
            try:
                # Bounded: a hung PostgreSQL call must end in a retry, not a silent stall.
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                started = boottime()
                async with asyncio.timeout(self._lease_seconds):
                    await self.refresh(self._lease_metadata)
                    await self._renew()
                self._refresh_ok = True
                took = boottime() - started
                if took > self._lease_seconds / 4:
                    log.warning(
                        "Slow metadata refresh", coordinator_id=self.coordinator_id, duration=round(took, 2)
                    )
            except Exception as exc:  # the loop must outlive any failure, or the lease lapses for good
                self._refresh_ok = False
                log.warning(
                    "Metadata refresh failed",
                    coordinator_id=self.coordinator_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self._close_listener()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._poll_interval)
            self._changed.clear()

    async def _listen(self) -> None:
        """LISTEN for epoch changes; without it the coordinator still refreshes by polling."""
        try:
            self._listener = await asyncpg.connect(self._metadata.dsn, timeout=2)
            await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except Exception as exc:
            log.warning(
                "LISTEN unavailable; polling only", coordinator_id=self.coordinator_id, error=str(exc)
            )
            await self._close_listener()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._changed.set()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=1)
            self._listener = None
