"""Tombstone GC in the engine: only tombstones, only below their tenant's cutoff, only in the range."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairdb.kernel.keyspace import TOKEN_MAX, Version, token
from pairdb.storage_node.engine import Engine, StoredRecord, digest_of


def rec(key: str, hlc: int, *, tombstone: bool = False, tenant: str = "t") -> StoredRecord:
    return StoredRecord(tenant, key, b"" if tombstone else b"v", Version(hlc, 1), tombstone)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "db")


def test_purge_removes_only_tombstones_older_than_the_cutoff(engine: Engine) -> None:
    engine.apply_many([rec("old-delete", 10, tombstone=True), rec("new-delete", 30, tombstone=True)])
    engine.apply_many([rec("old-value", 10)])
    assert engine.purge_tombstones(0, 0, {"t": 20}) == 1
    assert engine.get("t", "old-delete") is None
    new = engine.get("t", "new-delete")
    assert new is not None and new.tombstone
    assert engine.get("t", "old-value") is not None
    stats = engine.stats()
    assert (stats.keys, stats.tombstones, stats.purged) == (1, 1, 1)


def test_purge_touches_only_the_listed_tenants(engine: Engine) -> None:
    engine.apply_many([rec("k", 10, tombstone=True, tenant="a"), rec("k", 10, tombstone=True, tenant="b")])
    assert engine.purge_tombstones(0, 0, {"a": 100}) == 1
    assert engine.get("a", "k") is None
    assert engine.get("b", "k") is not None
    assert engine.purge_tombstones(0, 0, {}) == 0


def test_purge_stays_inside_its_range(engine: Engine) -> None:
    keys = [f"k{i}" for i in range(200)]
    engine.apply_many([rec(k, 10, tombstone=True) for k in keys])
    start, end = TOKEN_MAX // 4, TOKEN_MAX // 2
    inside = {k for k in keys if start < token("t", k) <= end}
    assert engine.purge_tombstones(start, end, {"t": 100}) == len(inside)
    assert all((engine.get("t", k) is None) == (k in inside) for k in keys)


def test_purge_over_a_wrapping_range(engine: Engine) -> None:
    keys = [f"k{i}" for i in range(200)]
    engine.apply_many([rec(k, 10, tombstone=True) for k in keys])
    start, end = TOKEN_MAX // 2, TOKEN_MAX // 4  # wraps past the top
    inside = {k for k in keys if token("t", k) > start or token("t", k) <= end}
    assert engine.purge_tombstones(start, end, {"t": 100}) == len(inside)
    assert engine.stats().tombstones == len(keys) - len(inside)


def test_a_repair_is_recorded_per_range_and_replaces_the_overlapping_ones(engine: Engine) -> None:
    third = TOKEN_MAX // 3
    engine.purge_tombstones(0, third, {}, repaired_at=5 << 16)
    engine.purge_tombstones(third, 2 * third, {}, repaired_at=6 << 16)
    assert [(r.start, r.end, r.repaired_at) for r in engine.repairs()] == [
        (0, third, 5 << 16),
        (third, 2 * third, 6 << 16),
    ]
    # A later repair of a range spanning both supersedes them.
    engine.purge_tombstones(0, 2 * third, {}, repaired_at=7 << 16)
    assert [(r.start, r.end, r.repaired_at) for r in engine.repairs()] == [(0, 2 * third, 7 << 16)]


def test_a_digest_can_be_limited_to_some_tenants(engine: Engine) -> None:
    a = [rec(f"k{i}", 10, tenant="a") for i in range(20)]
    b = [rec(f"k{i}", 10, tenant="b") for i in range(20)]
    engine.apply_many([*a, *b])
    assert engine.digest(0, 0, frozenset({"a"})) == digest_of(a, 0, 0)
    assert engine.digest(0, 0) == digest_of([*a, *b], 0, 0)
    assert engine.digest(0, 0, frozenset({"a"})) != engine.digest(0, 0, frozenset({"b"}))
