"""The coordinator's topology cache keeps its lease through failures it can recover from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from pairdb.coordinator.hlc import ClockCeiling
from pairdb.coordinator.metadata import NodeInfo, Registration, Snapshot, TenantInfo
from pairdb.coordinator.topology import LeaseLapsed, TopologyCache
from pairdb.kernel.clocks import WallClock
from pairdb.kernel.migration import NodeState


class FlakyMetadata:
    """Metadata that fails in odd ways on demand (unit test of TopologyCache alone)."""

    dsn = "postgresql://nobody@127.0.0.1:1/none"  # LISTEN fails: the cache must poll instead

    def __init__(self) -> None:
        self.epoch_value = 1
        self.fail_next: BaseException | None = None
        self.down = False
        self.renewals: list[int] = []
        self.ceilings: list[int] = []
        self.taken_over = False
        self.previous_ceiling_ms = 0
        self.epoch_queries = 0
        self.epoch_delay = 0.0
        self.tenants = {"t"}

    async def epoch(self) -> int:
        self.epoch_queries += 1
        if self.epoch_delay:
            await asyncio.sleep(self.epoch_delay)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.down:
            raise OSError("connection refused")
        return self.epoch_value

    async def snapshot(self) -> Snapshot:
        nodes = {"n1": NodeInfo("n1", "127.0.0.1", 1, NodeState.ACTIVE, 1)}
        tenants = {t: TenantInfo(t, 1, datetime.now(UTC)) for t in self.tenants}
        return Snapshot(self.epoch_value, nodes, [(5, "n1")], tenants)

    async def register_coordinator(self, *args: Any) -> Registration:
        if self.down:
            raise ConnectionError("unexpected connection_lost() call")
        return Registration(1, self.previous_ceiling_ms)

    async def renew_lease(
        self, coordinator_id: str, incarnation: str, applied_epoch: int, lease: float, ceiling_ms: int
    ) -> bool:
        if self.down:
            raise OSError("connection refused")
        self.renewals.append(applied_epoch)
        self.ceilings.append(ceiling_ms)
        return not self.taken_over

    async def release_lease(self, coordinator_id: str, incarnation: str, ceiling_ms: int) -> None:
        self.ceilings.append(ceiling_ms)


async def started(
    metadata: FlakyMetadata,
    lease: float = 1.0,
    wall: WallClock | None = None,
    lease_metadata: FlakyMetadata | None = None,
    poll_interval: float = 0.05,
) -> TopologyCache:
    cache = TopologyCache(
        metadata,  # type: ignore[arg-type]
        "c1",
        "127.0.0.1:1",
        lease_seconds=lease,
        poll_interval=poll_interval,
        wall=wall,
        lease_metadata=lease_metadata,  # type: ignore[arg-type]
    )
    await cache.start()
    return cache


async def test_an_unexpected_error_in_a_refresh_does_not_end_the_refresh_loop() -> None:
    """Regression: the demo saw a coordinator's lease lapse for good; the loop now outlives any error."""
    metadata = FlakyMetadata()
    cache = await started(metadata)
    try:
        metadata.fail_next = KeyError("something nobody expected")
        await asyncio.sleep(1.5)  # longer than the lease
        cache.check_lease()  # still renewed
        metadata.epoch_value = 2
        await asyncio.sleep(0.3)
        assert cache.current.epoch == 2 and metadata.renewals[-1] == 2
    finally:
        await cache.stop()


async def test_unreachable_metadata_lapses_the_lease_and_recovery_restores_it() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata, lease=0.5)
    try:
        metadata.down = True
        await asyncio.sleep(0.8)
        with pytest.raises(LeaseLapsed):
            cache.check_lease()
        metadata.down = False
        await asyncio.sleep(0.3)
        cache.check_lease()
    finally:
        await cache.stop()


async def test_an_epoch_counts_as_applied_only_when_older_requests_finish() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata)
    try:
        with cache.pin() as pinned:
            assert pinned.epoch == 1
            metadata.epoch_value = 2
            await asyncio.sleep(0.3)
            assert cache.current.epoch == 2
            assert cache.applied_epoch == 1  # a request routed by epoch 1 is still running
            assert metadata.renewals[-1] == 1
        await asyncio.sleep(0.3)
        assert cache.applied_epoch == 2 and metadata.renewals[-1] == 2
    finally:
        await cache.stop()


async def test_background_work_of_a_request_holds_its_epoch_as_applied_until_it_finishes() -> None:
    """Late replica sends still write by their request's view: a barrier must wait for them too."""
    metadata = FlakyMetadata()
    cache = await started(metadata)
    try:
        late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with cache.pin() as pinned:
            cache.track(pinned.epoch, late)
        metadata.epoch_value = 2
        await asyncio.sleep(0.3)
        assert cache.applied_epoch == 1
        late.set_result(None)
        await asyncio.sleep(0.3)
        assert cache.applied_epoch == 2 and metadata.renewals[-1] == 2
    finally:
        await cache.stop()


async def test_a_coordinator_whose_id_another_process_took_over_serves_no_more() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata)
    try:
        metadata.taken_over = True
        await asyncio.sleep(0.3)
        with pytest.raises(LeaseLapsed, match="took over"):
            cache.check_lease()
        metadata.taken_over = False
        await asyncio.sleep(0.3)
        with pytest.raises(LeaseLapsed):
            cache.check_lease()  # for good: two processes must never serve as one id
    finally:
        await cache.stop()


async def test_the_clock_ceiling_is_persisted_with_the_lease_and_versions_stay_below_it() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata, lease=1.0)
    try:
        assert metadata.ceilings and cache.clock.ceiling_ms == metadata.ceilings[-1]
        assert cache.clock.now().wall_ms <= metadata.ceilings[-1]
        metadata.down = True
        await asyncio.sleep(1.3)  # no renewal: the wall clock passes the last ceiling
        with pytest.raises(ClockCeiling):
            cache.clock.now()
    finally:
        await cache.stop()
    assert metadata.ceilings[-1] >= cache.clock.high_water_ms  # left behind at a clean stop


async def test_a_restart_waits_for_its_clock_to_pass_the_previous_incarnations_ceiling() -> None:
    metadata = FlakyMetadata()
    wall = WallClock()
    metadata.previous_ceiling_ms = wall.now_ms() + 400  # its clock stepped back 400 ms
    cache = await started(metadata, wall=wall)
    try:
        assert cache.clock.now().wall_ms > metadata.previous_ceiling_ms
    finally:
        await cache.stop()


async def test_a_coordinator_starting_while_postgresql_is_down_waits_for_it() -> None:
    """Regression (chaos): a coordinator restarted while PostgreSQL restarted exited for good."""
    metadata = FlakyMetadata()
    metadata.down = True
    starting = asyncio.ensure_future(started(metadata))
    await asyncio.sleep(0.5)
    assert not starting.done()
    metadata.down = False
    cache = await asyncio.wait_for(starting, 10)
    try:
        cache.check_lease()
    finally:
        await cache.stop()


async def test_concurrent_lookups_of_unknown_tenants_share_one_query_and_are_then_remembered() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata, lease=5.0, poll_interval=60)
    try:
        metadata.epoch_delay = 0.05
        before = metadata.epoch_queries
        found = await asyncio.gather(*(cache.tenant(f"ghost{i % 10}") for i in range(500)))
        assert found == [None] * 500
        # Requests arriving while one reload runs share the next: two rounds at most.
        assert metadata.epoch_queries - before <= 2
        before = metadata.epoch_queries
        assert await cache.tenant("ghost3") is None  # remembered: no query
        assert metadata.epoch_queries == before
        assert await cache.tenant("t") is not None
    finally:
        await cache.stop()


async def test_a_tenant_created_after_it_was_found_missing_is_found_once_the_epoch_moves() -> None:
    metadata = FlakyMetadata()
    cache = await started(metadata, lease=5.0, poll_interval=60)
    try:
        assert await cache.tenant("late") is None
        metadata.tenants.add("late")
        metadata.epoch_value = 2
        await cache.refresh()  # what the registry's NOTIFY triggers
        assert await cache.tenant("late") is not None
    finally:
        await cache.stop()


async def test_the_lease_is_renewed_on_its_own_connection_while_the_shared_one_is_down() -> None:
    """Pool starvation (here: the shared metadata failing outright) cannot lapse the lease."""
    shared, dedicated = FlakyMetadata(), FlakyMetadata()
    cache = await started(shared, lease=0.5, lease_metadata=dedicated)
    try:
        shared.down = True
        renewals = len(dedicated.renewals)
        await asyncio.sleep(1.0)  # twice the lease
        cache.check_lease()
        assert cache.serving()
        assert len(dedicated.renewals) > renewals and not shared.renewals
    finally:
        await cache.stop()
