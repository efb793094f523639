"""What a key is: its token on the ring, its version, and the documented size limits.

Shared by coordinators (routing), storage nodes (record order) and the migration
worker (range copy), so all three agree on where a key lives.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

TOKEN_BITS = 64
TOKEN_MAX = (1 << TOKEN_BITS) - 1

# Limits enforced by the coordinator with INVALID_ARGUMENT.
TENANT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TENANT_ID_BYTES = 64
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
# One BatchWrite or BatchRead: items, and value bytes of a BatchWrite.
MAX_BATCH_ITEMS = 1000
MAX_BATCH_VALUE_BYTES = 16 * 1024 * 1024
MAX_REPLICATION_FACTOR = 7
DEFAULT_REPLICATION_FACTOR = 3


def token(tenant_id: str, key: str) -> int:
    """The key's position on the ring: the first 8 bytes of blake2b, big-endian.

    The tenant id is length-prefixed so ("ab", "c") and ("a", "bc") differ.
    """
    return token_of(tenant_id.encode(), key.encode())


def token_of(tenant: bytes, key: bytes) -> int:
    """token() of a key already in bytes (UTF-8), as a storage node reads it from a stored key."""
    return int.from_bytes(token_bytes(len(tenant).to_bytes(2, "big") + tenant + key), "big")


def token_bytes(material: bytes) -> bytes:
    """The token's 8 bytes (big-endian) from what it hashes: len(tenant) (2 bytes) | tenant | key."""
    return hashlib.blake2b(material, digest_size=8).digest()


# Version and StoredRecord are NamedTuples, not frozen dataclasses: as immutable, but built at C
# speed (a frozen dataclass's __init__ sets each field through object.__setattr__, about 1 us
# more per object), and every key of every write and read builds both, on every replica.


class Version(NamedTuple):
    """A write's version; newer is larger. Compared as (hlc, origin): as a tuple."""

    hlc: int
    origin: int

    @property
    def wall_ms(self) -> int:
        return self.hlc >> 16

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.hlc & 0xFFFF}@{self.origin}"


ZERO_VERSION = Version(0, 0)


class StoredRecord(NamedTuple):
    """One version of a key: a value, or a tombstone when deleted."""

    tenant_id: str
    key: str
    value: bytes
    version: Version
    tombstone: bool = False

    @property
    def token(self) -> int:
        return token(self.tenant_id, self.key)

    @property
    def order(self) -> tuple[int, int, bool, bytes]:
        """What decides which of two records of one key wins: the version, then the content.

        Two writers that issued one version (a reused origin, a clock stepped
        back) must not leave replicas apart for good, so equal versions are
        ordered by content: every replica keeps the same one, whatever arrived first.
        The version's fields stand in it flat, as Version orders them (hlc, then origin):
        plain tuples compare without a Python call, and every write and read compares.
        """
        return (self.version.hlc, self.version.origin, self.tombstone, self.value)

    def newer_than(self, other: StoredRecord | None) -> bool:
        return other is None or self.order > other.order


def in_range(t: int, start: int, end: int) -> bool:
    """Whether token t lies in the ring range (start, end]; start >= end wraps."""
    if start < end:
        return start < t <= end
    return t > start or t <= end


@dataclass(frozen=True, slots=True)
class Applied:
    """What a storage node did with one record it was sent."""

    applied: bool
    # The version the node holds instead, when it did not apply the record (None when it did:
    # then it holds the record's own, which the sender knows).
    current: Version | None
    # Not applied because the node holds this very record already (a repeat, not a loss).
    same: bool = False


# What a node answers for a record it applied: one object for all of them (a batch has thousands).
APPLIED = Applied(True, None)
