"""A record's bytes as a storage node stores them, and *entries*: such records packed back to back.

    key   = token (8 bytes, big-endian) | len(tenant) (1 byte) | tenant | key
    value = hlc (8) | origin (4) | flags (1) | value

Keys sort by token, so a token range is one sequential cursor walk. An entry is
one (key, value) pair in this layout; entries travel packed back to back, each
behind its lengths (`>HI`). A copy's source scans them without decoding a
record, and a coordinator sends a batch to every replica as entries encoded
once (ApplyMany), which the node stores as they came once it has checked them.
No LMDB here: coordinators encode entries too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pairdb.kernel.keyspace import StoredRecord, Version, token, token_bytes

VERSION = struct.Struct(">QIB")
TOMBSTONE = 0x01
TOKEN = struct.Struct(">Q")
ENTRY = struct.Struct(">HI")
# The shortest key an entry may have: a token, a tenant length and a one-byte tenant and key.
MIN_KEY = TOKEN.size + 3
_FLAGS_AT = VERSION.size - 1
# UTF-8 continuation bytes, 0b10xxxxxx: never the first byte of a character.
_CONTINUATION_FIRST, _CONTINUATION_END = 0x80, 0xC0

# (key, value) in this layout.
Entry = tuple[bytes, bytes]


class MalformedEntries(ValueError):
    """Packed entries that do not parse: cut short, or a key or value that is not one of this layout."""


def encode_key(tenant_id: str, key: str, token_: int | None = None) -> bytes:
    """The record's key; token_: the key's token when the caller has it already (routing computed it)."""
    tenant = tenant_id.encode()
    t = token(tenant_id, key) if token_ is None else token_
    return TOKEN.pack(t) + bytes([len(tenant)]) + tenant + key.encode()


def encode_value(record: StoredRecord) -> bytes:
    flags = TOMBSTONE if record.tombstone else 0
    return VERSION.pack(record.version.hlc, record.version.origin, flags) + record.value


def encode_entry(record: StoredRecord, token_: int | None = None) -> Entry:
    return encode_key(record.tenant_id, record.key, token_), encode_value(record)


def pack_entry(entry: Entry) -> bytes:
    db_key, db_value = entry
    return ENTRY.pack(len(db_key), len(db_value)) + db_key + db_value


def clockwise(db_key: bytes, start: int, end: int) -> tuple[bool, bytes]:
    """Where a stored key comes in a walk of (start, end] as the engine scans it: by key, and when
    the range wraps past the ring's end, the tokens above start first."""
    return (start >= end and TOKEN.unpack_from(db_key)[0] <= start, db_key)


def tenant_of(db_key: bytes) -> bytes:
    return db_key[9 : 9 + db_key[8]]


def is_tombstone(db_value: bytes) -> bool:
    return bool(db_value[_FLAGS_AT] & TOMBSTONE)


def order(db_value: bytes) -> tuple[int, int, int, bytes]:
    """StoredRecord.order from a value's bytes: (hlc, origin), then the tombstone flag, then the value."""
    hlc, origin, flags = VERSION.unpack_from(db_value)
    return hlc, origin, flags & TOMBSTONE, db_value[VERSION.size :]


def decode(db_key: bytes, db_value: bytes | memoryview) -> StoredRecord:
    tenant_len = db_key[8]
    tenant_id = db_key[9 : 9 + tenant_len].decode()
    key = db_key[9 + tenant_len :].decode()
    hlc, origin, flags = VERSION.unpack_from(db_value)
    return StoredRecord(
        tenant_id, key, bytes(db_value[VERSION.size :]), Version(hlc, origin), bool(flags & TOMBSTONE)
    )


def split_entries(blob: bytes) -> list[Entry]:
    """The (key, value) pairs of packed entries, in their order; the framing checked, not the contents."""
    entries: list[Entry] = []
    at, size = 0, len(blob)
    unpack = ENTRY.unpack_from
    while at < size:
        if at + ENTRY.size > size:
            raise MalformedEntries(f"entry {len(entries)} is cut short")
        key_len, value_len = unpack(blob, at)
        at += ENTRY.size
        end = at + key_len + value_len
        if end > size or key_len < MIN_KEY or value_len < VERSION.size:
            raise MalformedEntries(f"entry {len(entries)} is malformed")
        entries.append((blob[at : at + key_len], blob[at + key_len : end]))
        at = end
    return entries


def read_entry(db_key: bytes, db_value: bytes) -> tuple[int, int, int, int, int]:
    """An entry's tenant_id, key and value sizes (bytes) and version (hlc, origin), once it proved
    one of this layout.

    Raises MalformedEntries for a key whose tenant length does not fit, that is
    not UTF-8, or whose token is not its key's (it would sit where no range scan
    of its key looks), and for flags this layout does not have.
    """
    tenant_len = db_key[TOKEN.size]
    key_at = TOKEN.size + 1 + tenant_len
    if tenant_len == 0 or key_at >= len(db_key):
        raise MalformedEntries("the entry's key is malformed")
    try:
        db_key[TOKEN.size + 1 :].decode()
    except UnicodeDecodeError:
        raise MalformedEntries("the entry's tenant_id or key is not UTF-8") from None
    if _CONTINUATION_FIRST <= db_key[key_at] < _CONTINUATION_END:
        # Both decoded as one, but the tenant's last character runs into the key.
        raise MalformedEntries("the entry's tenant_id or key is not UTF-8")
    # The hash takes the tenant's length in 2 bytes, the key holds it in 1: a zero byte ahead makes up.
    if token_bytes(b"\0" + db_key[TOKEN.size :]) != db_key[: TOKEN.size]:
        raise MalformedEntries("the entry's token is not its key's")
    hlc, origin, flags = VERSION.unpack_from(db_value)
    if flags & ~TOMBSTONE:
        raise MalformedEntries(f"the entry has unknown flags {flags:#x}")
    return tenant_len, len(db_key) - key_at, len(db_value) - VERSION.size, hlc, origin


def pack_entries(entries: Iterable[Entry]) -> bytes:
    return b"".join(pack_entry(entry) for entry in entries)
