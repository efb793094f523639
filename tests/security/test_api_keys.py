"""API keys: made random, stored as a digest, parsed strictly, verified in constant time."""

from __future__ import annotations

import pytest

from pairdb.security import api_keys


def test_a_key_names_its_id_and_carries_a_long_random_secret() -> None:
    new = api_keys.generate()
    assert new.token == f"pdb_{new.key_id}_{new.secret}"
    assert len(new.secret) >= 43  # 32 random bytes, url-safe base64
    assert new.secret_sha256 != new.secret and len(new.secret_sha256) == 64
    assert api_keys.generate().token != new.token


def test_a_presented_key_parses_back_and_verifies_against_its_digest_only() -> None:
    new = api_keys.generate()
    presented = api_keys.parse(f"  {new.token}\n")
    assert presented == api_keys.KeyParts(new.key_id, new.secret)
    assert api_keys.verify(presented, new.secret_sha256)
    assert not api_keys.verify(presented, api_keys.generate().secret_sha256)
    # One character off (never the one it was: a random secret ends in "A" one time in 64).
    other = "B" if new.secret.endswith("A") else "A"
    assert not api_keys.verify(api_keys.KeyParts(new.key_id, new.secret[:-1] + other), new.secret_sha256)


def test_a_secret_with_underscores_still_parses() -> None:
    secret = "a_b-" * 11
    assert api_keys.parse(f"pdb_0123456789ab_{secret}").secret == secret


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "starts with pdb_"),
        ("Bearer pdb_x", "starts with pdb_"),
        ("pdb_", "12 hex digits"),
        ("pdb_XYZ_" + "s" * 43, "12 hex digits"),
        ("pdb_0123456789ab_short", "truncated"),
        ("pdb_0123456789ab_" + "s" * 500, "too long"),
    ],
)
def test_a_malformed_key_says_what_is_wrong(token: str, says: str) -> None:
    with pytest.raises(api_keys.MalformedKey, match=says):
        api_keys.parse(token)
