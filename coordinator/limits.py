"""Input checks at the coordinator's edge: a refused request writes nothing."""

from __future__ import annotations

import functools

from pairdb.coordinator.quorum import Consistency
from pairdb.kernel.errors import InvalidArgument
from pairdb.kernel.keyspace import (
    MAX_BATCH_ITEMS,
    MAX_BATCH_VALUE_BYTES,
    MAX_KEY_BYTES,
    MAX_REPLICATION_FACTOR,
    MAX_VALUE_BYTES,
    TENANT_ID_PATTERN,
)

NODE_ID_PATTERN = TENANT_ID_PATTERN
MAX_MIGRATION_ID_CHARS = 128


def tenant_id(value: str) -> str:
    if not _well_formed_tenant_id(value):
        raise InvalidArgument(
            f"invalid tenant_id {value[:80]!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return value


@functools.lru_cache(maxsize=4096)
def _well_formed_tenant_id(value: str) -> bool:
    # Asked for every key of every request, of a few tenants: a lookup instead of the pattern.
    return TENANT_ID_PATTERN.fullmatch(value) is not None


def key(value: str) -> str:
    size = len(value.encode())
    if size == 0:
        raise InvalidArgument("key must not be empty")
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return value


def value(data: bytes) -> bytes:
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidArgument(f"value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES}")
    return data


def batch(items: int, value_bytes: int = 0) -> None:
    """A batch within the limits, or INVALID_ARGUMENT for the whole batch."""
    if items > MAX_BATCH_ITEMS:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_ITEMS} items; this one has {items}: split it"
        )
    if value_bytes > MAX_BATCH_VALUE_BYTES:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_VALUE_BYTES} bytes of values; "
            f"this one has {value_bytes}: split it"
        )


def consistency(raw: int) -> Consistency:
    if raw == 0:
        return Consistency.QUORUM
    try:
        return Consistency(raw)
    except ValueError:
        raise InvalidArgument(
            f"unknown consistency level {raw}: use ONE (1), QUORUM (2) or ALL (3)"
        ) from None


def replication_factor(raw: int) -> int:
    if not 1 <= raw <= MAX_REPLICATION_FACTOR:
        raise InvalidArgument(f"replication_factor {raw} is out of range 1..{MAX_REPLICATION_FACTOR}")
    return raw


MAX_THROTTLE = 10_000_000


# A year: a longer grace keeps every delete's tombstone for good in practice.
MAX_GC_GRACE_SECONDS = 365 * 24 * 3600


def gc_grace(seconds: int) -> int:
    if not 0 <= seconds <= MAX_GC_GRACE_SECONDS:
        raise InvalidArgument(f"gc_grace_seconds must be 0..{MAX_GC_GRACE_SECONDS}, got {seconds}")
    return seconds


def throttle(keys_per_second: int) -> int:
    if keys_per_second > MAX_THROTTLE:
        raise InvalidArgument(f"keys_per_second must be at most {MAX_THROTTLE:,} (0 removes the limit)")
    return keys_per_second


def node_id(value: str) -> str:
    if not NODE_ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"invalid node_id {value[:80]!r}: use 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return value


def host_port(host: str, port: int) -> tuple[str, int]:
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        raise InvalidArgument(f"invalid host {host[:80]!r}")
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"port {port} is out of range 1..65535")
    return host, port


def migration_id(value: str) -> str:
    # Checked before the lookup: PostgreSQL text cannot hold NUL, so the query itself would fail.
    if not value or len(value) > MAX_MIGRATION_ID_CHARS or "\x00" in value:
        raise InvalidArgument(
            f"invalid migration_id {value[:80]!r}: use the id AddStorageNode returned (a UUID)"
        )
    return value


MAX_OPS_PER_SECOND = 10_000_000
MAX_TENANT_BYTES = 1 << 60


def max_ops_per_second(value: int) -> int:
    if value > MAX_OPS_PER_SECOND:
        raise InvalidArgument(
            f"max_ops_per_second must be at most {MAX_OPS_PER_SECOND:,} (0 removes the limit), got {value}"
        )
    return value


def max_bytes(value: int) -> int:
    if value > MAX_TENANT_BYTES:
        raise InvalidArgument(
            f"max_bytes must be at most {MAX_TENANT_BYTES} (0 removes the limit), got {value}"
        )
    return value
