"""A record's bytes, and entries packed back to back: what a node stores is what the wire carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairdb.kernel.keyspace import StoredRecord, Version, token_of
from pairdb.storage_node.layout import (
    MalformedEntries,
    decode,
    encode_entry,
    order,
    pack_entries,
    read_entry,
    split_entries,
)

records = st.builds(
    StoredRecord,
    st.text(min_size=1, max_size=8),
    st.text(min_size=1, max_size=16),
    st.binary(max_size=32),
    st.builds(Version, st.integers(1, 2**63), st.integers(0, 2**31)),
    st.booleans(),
)


@given(st.lists(records, max_size=8))
def test_entries_packed_back_to_back_split_into_the_records_encoded(batch: list[StoredRecord]) -> None:
    entries = [encode_entry(r) for r in batch]
    assert split_entries(pack_entries(entries)) == entries
    assert [decode(*e) for e in entries] == batch


@given(records, records)
def test_the_order_read_from_bytes_is_the_records_order(a: StoredRecord, b: StoredRecord) -> None:
    assert (order(encode_entry(a)[1]) > order(encode_entry(b)[1])) == (a.order > b.order)


@given(records)
def test_an_entry_reads_back_as_its_sizes_and_version(record: StoredRecord) -> None:
    tenant_bytes, key_bytes, value_bytes, hlc, origin = read_entry(*encode_entry(record))
    assert (tenant_bytes, key_bytes) == (len(record.tenant_id.encode()), len(record.key.encode()))
    assert (value_bytes, Version(hlc, origin)) == (len(record.value), record.version)


def _keyed(tenant: bytes, key: bytes) -> bytes:
    """A stored key of these bytes, under their own token."""
    return token_of(tenant, key).to_bytes(8, "big") + bytes([len(tenant)]) + tenant + key


def test_an_entry_not_of_the_layout_is_refused() -> None:
    db_key, db_value = encode_entry(StoredRecord("t", "k", b"v", Version(1 << 16, 1)))
    other_key, _ = encode_entry(StoredRecord("t", "other", b"v", Version(1 << 16, 1)))
    for key, value, why in (
        (other_key[:8] + db_key[8:], db_value, "token"),
        (db_key[:10] + b"\xff", db_value, "UTF-8"),
        # "é" cut in two, its first byte ending the tenant_id: tenant and key are UTF-8 only as one.
        (_keyed(b"t\xc3", b"\xa9k"), db_value, "UTF-8"),
        (db_key[:8] + b"\x09" + db_key[9:], db_value, "malformed"),
        (db_key, db_value[:12] + b"\x02" + db_value[13:], "flags"),
    ):
        with pytest.raises(MalformedEntries, match=why):
            read_entry(key, value)
    for blob in (pack_entries([(db_key, db_value)])[:-1], b"\x00\x01"):
        with pytest.raises(MalformedEntries):
            split_entries(blob)
