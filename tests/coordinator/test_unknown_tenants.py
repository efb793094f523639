"""Tenant ids found missing are remembered briefly, boundedly, and forgotten when the registry changes."""

from __future__ import annotations

from pairdb.coordinator.unknown_tenants import UnknownTenants


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_tenant_is_remembered_for_the_ttl_only() -> None:
    clock = FakeClock()
    unknown = UnknownTenants(ttl=1.5, clock=clock)
    unknown.add("ghost")
    assert "ghost" in unknown
    clock.now += 1.4
    assert "ghost" in unknown
    clock.now += 0.2
    assert "ghost" not in unknown
    assert len(unknown) == 0


def test_the_oldest_entries_go_first_when_full() -> None:
    unknown = UnknownTenants(max_entries=3, clock=FakeClock())
    for name in ("a", "b", "c", "d"):
        unknown.add(name)
    assert len(unknown) == 3
    assert "a" not in unknown and "d" in unknown


def test_a_created_tenant_is_forgotten() -> None:
    unknown = UnknownTenants(clock=FakeClock())
    unknown.add("a")
    unknown.add("b")
    unknown.discard("a")
    assert "a" not in unknown and "b" in unknown
    unknown.clear()
    assert len(unknown) == 0
