"""A tenant's limits: a request rate per coordinator, and a storage quota over its estimated live bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from pairdb.coordinator.metadata import TenantInfo
from pairdb.coordinator.quotas import Quotas, TokenBucket, estimate, size
from pairdb.kernel.errors import ResourceExhausted


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeTopology:
    tenants: dict[str, TenantInfo] = field(default_factory=dict)


@dataclass
class FakeCache:
    current: FakeTopology = field(default_factory=FakeTopology)


def tenant(name: str, rf: int = 3, ops: int = 0, max_bytes: int = 0) -> TenantInfo:
    return TenantInfo(name, rf, datetime.now(UTC), max_ops_per_second=ops, max_bytes=max_bytes)


def quotas_for(*tenants: TenantInfo, clock: FakeClock | None = None) -> Quotas:
    cache = FakeCache(FakeTopology({t.tenant_id: t for t in tenants}))
    return Quotas(cache, pool=None, clock=clock or FakeClock())  # type: ignore[arg-type]


def test_a_bucket_holds_one_seconds_worth_and_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock)
    assert all(bucket.take(1) for _ in range(10))
    assert not bucket.take(1)
    clock.now += 0.5
    assert sum(bucket.take(1) for _ in range(10)) == 5
    clock.now += 60
    assert sum(bucket.take(1) for _ in range(20)) == 10  # never more than a second's worth


def test_a_batch_larger_than_the_bucket_passes_when_full_and_leaves_it_in_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock)
    assert bucket.take(25)
    clock.now += 1.0
    assert not bucket.take(1)  # still paying the batch off
    clock.now += 2.0
    assert bucket.take(1)


def test_requests_beyond_the_rate_are_refused_with_the_limit_and_other_tenants_are_not() -> None:
    quotas = quotas_for(tenant("slow", ops=5), tenant("free"))
    for _ in range(5):
        quotas.admit("slow")
    with pytest.raises(ResourceExhausted, match="tenant slow is limited to 5 requests/s per coordinator"):
        quotas.admit("slow")
    for _ in range(1000):
        quotas.admit("free")
    quotas.admit("unknown")  # refused NOT_FOUND later, by routing


def test_a_changed_rate_takes_effect_with_a_fresh_bucket() -> None:
    quotas = quotas_for(tenant("t", ops=1))
    quotas.admit("t")
    with pytest.raises(ResourceExhausted):
        quotas.admit("t")
    quotas._cache.current.tenants["t"] = tenant("t", ops=100)
    for _ in range(100):
        quotas.admit("t")


def test_the_size_of_a_tenant_is_its_bytes_over_all_nodes_divided_by_its_replication_factor() -> None:
    by_node = {"n1": {"a": 300, "b": 10}, "n2": {"a": 300}, "n3": {"a": 300, "b": 10, "gone": 5}}
    assert estimate(by_node, {"a": tenant("a", rf=3), "b": tenant("b", rf=2)}) == {"a": 300, "b": 10}


def test_writes_are_refused_at_the_quota_with_what_is_stored_and_the_quota() -> None:
    quotas = quotas_for(tenant("t", max_bytes=1_000_000), tenant("u"))
    quotas._stored = {"t": 999_999, "u": 10**12}
    quotas.check_storage("t")
    quotas.check_storage("u")  # no quota
    quotas._stored["t"] = 1_200_000
    with pytest.raises(
        ResourceExhausted,
        match=re.escape("tenant t stores 1.2 MB, its quota is 1 MB: delete data or raise the quota"),
    ):
        quotas.check_storage("t")


def test_sizes_read_as_a_person_writes_them() -> None:
    assert [size(n) for n in (512, 1000, 1_200_000, 3 * 10**9)] == ["512 B", "1 kB", "1.2 MB", "3 GB"]
