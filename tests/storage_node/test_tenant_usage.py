"""The engine counts each tenant's live keys and bytes (key and value) in the write's own transaction."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from pairdb.kernel.keyspace import TOKEN_MAX, Version, token
from pairdb.storage_node.engine import Engine, StoredRecord, TenantUsage


def rec(key: str, hlc: int, value: bytes = b"", tombstone: bool = False, tenant: str = "t") -> StoredRecord:
    return StoredRecord(tenant, key, value, Version(hlc, 1), tombstone)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "db")


def test_a_write_counts_its_key_and_value_bytes_per_tenant(engine: Engine) -> None:
    engine.apply_many([rec("k1", 10, b"12345"), rec("k2", 10, b"123", tenant="other")])
    assert engine.tenant_usage() == {"t": TenantUsage(1, 2 + 5), "other": TenantUsage(1, 2 + 3)}


def test_an_overwrite_counts_the_new_value_only(engine: Engine) -> None:
    engine.apply_many([rec("k", 10, b"12345")])
    engine.apply_many([rec("k", 20, b"12")])
    engine.apply_many([rec("k", 15, b"older, ignored")])
    assert engine.tenant_usage() == {"t": TenantUsage(1, 1 + 2)}


def test_a_delete_removes_the_key_from_the_count_and_a_rewrite_brings_it_back(engine: Engine) -> None:
    engine.apply_many([rec("a", 10, b"xx"), rec("b", 10, b"yyy")])
    engine.apply_many([rec("a", 20, tombstone=True)])
    assert engine.tenant_usage() == {"t": TenantUsage(1, 1 + 3)}
    engine.apply_many([rec("b", 20, tombstone=True)])
    assert engine.tenant_usage() == {}  # tombstones are not live data
    engine.apply_many([rec("a", 30, b"z")])
    assert engine.tenant_usage() == {"t": TenantUsage(1, 2)}


def test_a_batch_of_many_tenants_counts_each(engine: Engine) -> None:
    """ApplyBatch and ApplyMany land in apply_records: one transaction, every tenant's counter in it."""
    engine.apply_records([rec(f"k{i}", 10, b"v" * i, tenant=f"t{i % 3}") for i in range(30)])
    usage = engine.tenant_usage()
    for n in range(3):
        keys = [i for i in range(30) if i % 3 == n]
        assert usage[f"t{n}"] == TenantUsage(len(keys), sum(len(f"k{i}") + i for i in keys))


def test_delete_range_removes_what_it_deletes_and_only_for_its_tenants(engine: Engine) -> None:
    engine.apply_many([rec(f"k{i}", 10, b"vv", tenant=t) for i in range(50) for t in ("a", "b")])
    engine.apply_many([rec("k0", 20, tombstone=True, tenant="a")])
    cut = token("a", "k7")
    engine.delete_range(cut, TOKEN_MAX, frozenset({"a"}))
    kept = [i for i in range(1, 50) if token("a", f"k{i}") <= cut]
    assert engine.tenant_usage()["a"] == TenantUsage(len(kept), sum(len(f"k{i}") + 2 for i in kept))
    assert engine.tenant_usage()["b"] == TenantUsage(50, sum(len(f"k{i}") + 2 for i in range(50)))
    engine.delete_range(0, 0)  # the whole ring
    assert engine.tenant_usage() == {}


def test_a_node_written_before_the_counters_is_counted_once_when_it_opens(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "db")
    engine.apply_many([rec("a", 10, b"123"), rec("b", 10, tombstone=True), rec("c", 10, b"1", tenant="u")])
    engine.close()
    # What an older pairdb left behind: the records, no usage counters.
    env = lmdb.open(str(tmp_path / "db"), max_dbs=2)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        for name in [bytes(k) for k, _ in txn.cursor(db=meta) if bytes(k).startswith(b"usage")]:
            txn.delete(name, db=meta)
    env.close()
    for _ in range(2):  # counted on the first open only
        engine = Engine(tmp_path / "db")
        assert engine.tenant_usage() == {"t": TenantUsage(1, 4), "u": TenantUsage(1, 2)}
        engine.close()
