"""API keys: `pdb_<key_id>_<secret>`, of which the cluster keeps only the secret's SHA-256.

The key id names the key in listings, logs and the audit log; the secret is
32 random bytes, so a fast hash is enough (as for GitHub tokens): there is no
password to guess, and a slow hash would cost every uncached request.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "pdb"
_KEY_ID_BYTES = 6  # 12 hex characters: unique enough to name keys, short enough to read
_SECRET_BYTES = 32
HOW_TO_PASS = (
    "pass an API key: `authorization: Bearer pdb_...` metadata (the CLI reads PAIRDB_API_KEY, "
    "or the file named by --api-key-file / PAIRDB_API_KEY_FILE)"
)


class MalformedKey(ValueError):
    """Not something `generate` made."""


@dataclass(frozen=True, slots=True)
class KeyParts:
    """A key split into its id and its secret: as generate() made it, or as a caller presents it."""

    key_id: str
    secret: str

    @property
    def token(self) -> str:
        """What the caller keeps and presents; shown once."""
        return f"{PREFIX}_{self.key_id}_{self.secret}"

    @property
    def secret_sha256(self) -> str:
        return digest(self.secret)


def generate() -> KeyParts:
    return KeyParts(secrets.token_hex(_KEY_ID_BYTES), secrets.token_urlsafe(_SECRET_BYTES))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> KeyParts:
    """The key's id and secret; MalformedKey saying what is wrong otherwise."""
    token = token.strip()
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX:
        raise MalformedKey(f"an API key starts with {PREFIX}_")
    if len(key_id) != 2 * _KEY_ID_BYTES or not all(c in "0123456789abcdef" for c in key_id):
        raise MalformedKey(f"an API key is {PREFIX}_<12 hex digits>_<secret>")
    # token_urlsafe(32) is 43 characters; anything much shorter was cut off.
    if len(secret) < 43 or len(secret) > 128:
        raise MalformedKey("the API key's secret is truncated or too long")
    return KeyParts(key_id, secret)


def verify(presented: KeyParts, secret_sha256: str) -> bool:
    """True when presented's secret hashes to the stored digest (constant-time compare)."""
    return hmac.compare_digest(digest(presented.secret).encode(), secret_sha256.encode())
