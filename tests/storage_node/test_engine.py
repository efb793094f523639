"""The engine keeps the newest version of each key, in token order, durably."""

from __future__ import annotations

import stat
from pathlib import Path

import lmdb
import pytest

from pairdb.kernel.keyspace import TOKEN_MAX, Version, in_range, token
from pairdb.storage_node.engine import Engine, StoredRecord, digest_of
from pairdb.storage_node.layout import MalformedEntries, decode, split_entries


def unpack_entries(blob: bytes) -> list[StoredRecord]:
    return [decode(*entry) for entry in split_entries(blob)]


def rec(key: str, hlc: int, value: bytes = b"v", tombstone: bool = False, tenant: str = "t") -> StoredRecord:
    return StoredRecord(tenant, key, value if not tombstone else b"", Version(hlc, 1), tombstone)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "db")


def test_newest_version_wins_whatever_the_arrival_order(engine: Engine) -> None:
    assert engine.apply_many([rec("k", 30, b"third")]) == [True]
    assert engine.apply_many([rec("k", 10, b"first"), rec("k", 20, b"second")]) == [False, False]
    stored = engine.get("t", "k")
    assert stored is not None and stored.value == b"third" and stored.version == Version(30, 1)


@pytest.mark.parametrize("order", [(10, 20, 15), (20, 10, 15), (15, 10, 20)])
def test_one_commit_with_several_versions_of_a_key_keeps_the_newest(
    engine: Engine, order: tuple[int, ...]
) -> None:
    """A group commit may hold a key twice (two calls that wrote it): each entry meets the one before."""
    engine.apply_many([rec("other", 1, b"o")])
    applied = engine.apply_many([rec("k", hlc, b"v%d" % hlc) for hlc in order])
    assert applied == [hlc == max(order[: i + 1]) for i, hlc in enumerate(order)]
    stored = engine.get("t", "k")
    assert stored is not None and stored.version == Version(20, 1) and stored.value == b"v20"
    assert (engine.stats().keys, engine.stats().bytes) == (2, 1 + 3)


def test_reapplying_the_same_version_is_a_no_op(engine: Engine) -> None:
    assert engine.apply_many([rec("k", 10, b"a")]) == [True]
    assert engine.apply_many([rec("k", 10, b"a")]) == [False]
    assert engine.stats().keys == 1


def test_origin_breaks_a_tie_on_hlc(engine: Engine) -> None:
    engine.apply_many([StoredRecord("t", "k", b"from-2", Version(10, 2))])
    assert engine.apply_many([StoredRecord("t", "k", b"from-1", Version(10, 1))]) == [False]
    stored = engine.get("t", "k")
    assert stored is not None and stored.value == b"from-2"


def test_a_tombstone_beats_older_values_and_loses_to_newer_ones(engine: Engine) -> None:
    engine.apply_many([rec("k", 10, b"old")])
    assert engine.apply_many([rec("k", 20, tombstone=True)]) == [True]
    assert engine.apply_many([rec("k", 15, b"late-but-older")]) == [False]
    stored = engine.get("t", "k")
    assert stored is not None and stored.tombstone
    assert engine.apply_many([rec("k", 25, b"newer")]) == [True]
    stored = engine.get("t", "k")
    assert stored is not None and not stored.tombstone and stored.value == b"newer"


def test_tenants_are_separate_keyspaces(engine: Engine) -> None:
    engine.apply_many([rec("k", 10, b"a", tenant="one"), rec("k", 10, b"b", tenant="two")])
    one, two = engine.get("one", "k"), engine.get("two", "k")
    assert one is not None and one.value == b"a"
    assert two is not None and two.value == b"b"


def test_stats_count_live_keys_bytes_and_tombstones(engine: Engine) -> None:
    engine.apply_many([rec("a", 1, b"xx"), rec("b", 1, b"yyy"), rec("c", 1, b"z")])
    engine.apply_many([rec("a", 2, b"xxxx"), rec("c", 2, tombstone=True)])
    stats = engine.stats()
    assert (stats.keys, stats.bytes, stats.tombstones) == (2, 7, 1)


def _fill(engine: Engine, n: int = 500) -> list[StoredRecord]:
    records = [rec(f"key-{i}", 5 + i % 3, f"value-{i}".encode(), tombstone=i % 10 == 0) for i in range(n)]
    engine.apply_many(records)
    return records


def _scan_all(engine: Engine, start: int, end: int, limit: int) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    after: bytes | None = None
    while True:
        batch, after = engine.scan(start, end, limit=limit, after=after)
        out += batch
        if after is None:
            return out


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_scan_returns_exactly_the_range_in_token_order(engine: Engine, limit: int) -> None:
    records = _fill(engine)
    tokens = sorted(r.token for r in records)
    for start, end in [
        (tokens[100], tokens[300]),
        (tokens[400], tokens[50]),
        (0, TOKEN_MAX // 2),
        (tokens[10], tokens[10]),
    ]:
        got = _scan_all(engine, start, end, limit)
        # Clockwise from start: a wrapping range lists the tokens above start first.
        expected = sorted(
            (r for r in records if in_range(r.token, start, end)), key=lambda r: (r.token <= start, r.token)
        )
        assert [(r.tenant_id, r.key) for r in got] == [(r.tenant_id, r.key) for r in expected]


def test_scan_can_skip_tombstones(engine: Engine) -> None:
    records = _fill(engine)
    live, _ = engine.scan(0, 0, limit=10_000, include_tombstones=False)
    assert len(live) == sum(1 for r in records if not r.tombstone)


def test_digest_depends_on_keys_and_versions_only(engine: Engine, tmp_path: Path) -> None:
    records = _fill(engine)
    other = Engine(tmp_path / "other")
    other.apply_many(list(reversed(records)))
    start, end = 0, TOKEN_MAX // 3
    assert engine.digest(start, end) == other.digest(start, end)
    inside = next(r for r in records if in_range(r.token, start, end) and not r.tombstone)
    other.apply_many([StoredRecord(inside.tenant_id, inside.key, b"changed", Version(99, 1))])
    assert engine.digest(start, end)[0] != other.digest(start, end)[0]
    assert engine.digest(start, end)[1] == other.digest(start, end)[1]


def test_delete_range_removes_only_that_range(engine: Engine) -> None:
    records = _fill(engine)
    start, end = TOKEN_MAX // 2, TOKEN_MAX // 4  # wraps
    deleted = engine.delete_range(start, end)
    expected_gone = [r for r in records if in_range(r.token, start, end)]
    assert deleted == len(expected_gone)
    for r in records:
        assert (engine.get(r.tenant_id, r.key) is None) == in_range(r.token, start, end)
    remaining = [r for r in records if not in_range(r.token, start, end)]
    stats = engine.stats()
    assert stats.keys + stats.tombstones == len(remaining)


def test_delete_range_of_some_tenants_keeps_the_others(engine: Engine) -> None:
    records = [rec(f"k{i}", 10, tenant=t) for i in range(200) for t in ("a", "b", "c")]
    engine.apply_many(records)
    start, end = TOKEN_MAX // 2, TOKEN_MAX // 4  # wraps
    deleted = engine.delete_range(start, end, frozenset({"a", "c"}))
    gone = [r for r in records if in_range(r.token, start, end) and r.tenant_id in ("a", "c")]
    assert deleted == len(gone) > 0
    for r in records:
        assert (engine.get(r.tenant_id, r.key) is None) == (r in gone)
    stats = engine.stats()
    assert stats.keys + stats.tombstones == len(records) - len(gone)


def test_a_range_deleted_in_slices_ends_as_one_deletion_would(engine: Engine, tmp_path: Path) -> None:
    records = [rec(f"k{i}", 10, tenant=t, tombstone=i % 7 == 0) for i in range(200) for t in ("a", "b")]
    whole = Engine(tmp_path / "whole")
    for e in (engine, whole):
        e.apply_many(records)
    start, end = TOKEN_MAX // 2, TOKEN_MAX // 4  # wraps
    expected = whole.delete_range(start, end, frozenset({"a"}))
    deleted, after, slices = 0, None, 0
    while True:
        count, after = engine.delete_slice(start, end, frozenset({"a"}), limit=7, after=after)
        deleted, slices = deleted + count, slices + 1
        if after is None:
            break
    assert deleted == expected > 0 and slices > 10
    assert engine.stats() == whole.stats()
    assert engine.digest(0, 0) == whole.digest(0, 0)  # the whole ring: the same records are left


def test_data_survives_reopen(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "db")
    engine.apply_many([rec("k", 10, b"kept")])
    engine.close()
    reopened = Engine(tmp_path / "db")
    stored = reopened.get("t", "k")
    assert stored is not None and stored.value == b"kept"
    assert stored.token == token("t", "k")


def test_digest_of_records_matches_the_engine_digest(engine: Engine) -> None:
    records = _fill(engine)
    tokens = sorted(r.token for r in records)
    for start, end in [(tokens[20], tokens[200]), (tokens[300], tokens[30]), (0, 0)]:
        inside = [r for r in records if in_range(r.token, start, end)]
        assert digest_of(reversed(inside), start, end) == engine.digest(start, end)


def test_one_version_with_two_values_converges_whichever_arrives_first(tmp_path: Path) -> None:
    """Two writers that issued one version (a reused origin) must not leave replicas apart for good."""
    first, second = Engine(tmp_path / "first"), Engine(tmp_path / "second")
    x = StoredRecord("t", "k", b"x", Version(10, 1))
    y = StoredRecord("t", "k", b"y", Version(10, 1))
    first.apply_many([x])
    first.apply_many([y])
    second.apply_many([y])
    second.apply_many([x])
    assert first.get("t", "k") == second.get("t", "k")
    assert first.digest(0, 0) == second.digest(0, 0)


def test_the_digest_tells_apart_one_version_holding_two_values(tmp_path: Path) -> None:
    first, second = Engine(tmp_path / "first"), Engine(tmp_path / "second")
    first.apply_many([StoredRecord("t", "k", b"x", Version(10, 1))])
    second.apply_many([StoredRecord("t", "k", b"y", Version(10, 1))])
    assert first.digest(0, 0) != second.digest(0, 0)
    assert digest_of([StoredRecord("t", "k", b"x", Version(10, 1))], 0, 0) == first.digest(0, 0)


def test_the_fence_is_kept_across_a_reopen_and_only_rises(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "db")
    assert engine.fence() == 0
    assert engine.raise_fence(7) == 7
    assert engine.raise_fence(3) == 7
    engine.close()
    assert Engine(tmp_path / "db").fence() == 7


@pytest.mark.parametrize(("limit", "max_bytes"), [(1, 1 << 20), (7, 1 << 20), (1000, 1 << 20), (1000, 100)])
def test_scan_entries_packs_exactly_what_scan_returns(engine: Engine, limit: int, max_bytes: int) -> None:
    records = _fill(engine)
    engine.apply_records([rec("gone", 10**6, tombstone=True)])
    tokens = sorted(r.token for r in records)
    for start, end in [(tokens[100], tokens[300]), (tokens[400], tokens[50]), (0, 0)]:
        unpacked: list[StoredRecord] = []
        after: bytes | None = None
        while True:
            entries, count, after = engine.scan_entries(
                start, end, limit=limit, max_bytes=max_bytes, after=after
            )
            batch = unpack_entries(entries)
            assert len(batch) == count <= limit
            unpacked += batch
            if after is None:
                break
        assert unpacked == _scan_all(engine, start, end, 1000)


@pytest.mark.parametrize(("limit", "max_bytes"), [(1, 1 << 20), (7, 1 << 20), (1000, 1 << 20), (1000, 100)])
def test_many_ranges_scan_as_each_range_would_one_after_the_other(
    engine: Engine, limit: int, max_bytes: int
) -> None:
    records = _fill(engine)
    tokens = sorted(r.token for r in records)
    ranges = [
        (tokens[100], tokens[300]),
        (tokens[300], tokens[301]),
        (tokens[5], tokens[5] + 1),
        (tokens[400], tokens[50]),
    ]
    scanned: list[list[StoredRecord]] = [[] for _ in ranges]
    position: tuple[int, bytes | None] | None = (0, None)
    while position is not None:
        pieces, position = engine.scan_entries_many(
            ranges, limit=limit, max_bytes=max_bytes, at=position[0], after=position[1]
        )
        assert sum(count for _, _, count in pieces) <= limit
        for at, entries, count in pieces:
            assert len(unpack_entries(entries)) == count > 0
            scanned[at] += unpack_entries(entries)
    assert scanned == [_scan_all(engine, start, end, 1000) for start, end in ranges]
    assert scanned[2] == []  # no record in it: no piece


def test_splitting_refuses_entries_cut_short_or_malformed(engine: Engine) -> None:
    engine.apply_records([rec("k", 10)])
    entries, _, _ = engine.scan_entries(0, 0, limit=10, max_bytes=1 << 20)
    assert unpack_entries(entries) == [rec("k", 10)]
    for bad in (entries[:-1], entries + b"\x00\x00", b"\x00\x02\x00\x00\x00\x0dxx" + bytes(13)):
        with pytest.raises(MalformedEntries):
            split_entries(bad)


def test_count_counts_the_records_of_a_range_tombstones_included(engine: Engine) -> None:
    records = _fill(engine)
    engine.apply_records([rec("gone", 10**6, tombstone=True)])
    tokens = sorted(r.token for r in records)
    for start, end in [(tokens[100], tokens[300]), (tokens[400], tokens[50]), (0, 0)]:
        assert engine.count(start, end) == len(_scan_all(engine, start, end, 1000))


def test_the_engine_files_are_its_users_only(tmp_path: Path) -> None:
    fresh = Engine(tmp_path / "fresh")
    fresh.close()
    older = tmp_path / "older"  # as an older pairdb left it: readable by everyone
    lmdb.open(str(older), max_dbs=2, mode=0o644).close()
    Engine(older).close()
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    for path in (tmp_path / "fresh", older):
        for name in ("data.mdb", "lock.mdb"):
            assert stat.S_IMODE((path / name).stat().st_mode) == 0o600, path / name
