"""The coordinator's topology cache keeps its lease through failures it can recover from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from coordinator.metadata import NodeInfo, Snapshot, TenantInfo
from coordinator.topology import LeaseLapsed, TopologyCache


class FlakyMetadata:
    """Metadata that fails in odd ways on demand (unit test of TopologyCache alone)."""

    dsn = "postgresql://nobody@127.0.0.1:1/none"  # LISTEN fails: the cache must poll instead

    def __init__(self) -> None:
        self.epoch_value = 1
        self.fail_next: BaseException | None = None
        self.down = False
        self.renewals: list[int] = []

    async def epoch(self) -> int:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.down:
            raise OSError("connection refused")
        return self.epoch_value

    async def snapshot(self) -> Snapshot:
        nodes = {"n1": NodeInfo("n1", "127.0.0.1", 1, "active", 1)}
        tenants = {"t": TenantInfo("t", 1, datetime.now(UTC))}
        return Snapshot(self.epoch_value, nodes, [(5, "n1")], tenants)

    async def register_coordinator(self, *args: Any) -> int:
        return 1

    async def renew_lease(self, coordinator_id: str, applied_epoch: int, lease_seconds: float) -> None:
        if self.down:
            raise OSError("connection refused")
        self.renewals.append(applied_epoch)

    async def release_lease(self, coordinator_id: str) -> None:
        pass


async def started(metadata: FlakyMetadata, lease: float = 1.0) -> TopologyCache:
    cache = TopologyCache(metadata, "c1", "127.0.0.1:1", lease_seconds=lease, poll_interval=0.05)  # type: ignore[arg-type]
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
