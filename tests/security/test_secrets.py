"""Connection strings are shown with every password masked, in every form PostgreSQL accepts."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairdb.security.secrets import mask_dsn, mask_secrets, reveals_secret


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://pairdb:s3cret@db:5432/pairdb", "postgresql://pairdb:***@db:5432/pairdb"),
        ("postgres://u:p@ss@db/pairdb", "postgres://u:***@db/pairdb"),
        ("postgresql://u:a:b/c@db/pairdb", "postgresql://u:***@db/pairdb"),
        ("postgresql://u:a%40b%2Fc@db/pairdb", "postgresql://u:***@db/pairdb"),
        ("postgresql://u:a?b@db/pairdb?sslmode=require", "postgresql://u:***@db/pairdb?sslmode=require"),
        ("postgresql://:only@db/pairdb", "postgresql://:***@db/pairdb"),
        ("postgresql://u:p@h1:5432,h2:5433/pairdb", "postgresql://u:***@h1:5432,h2:5433/pairdb"),
        (
            "postgresql://db/pairdb?user=u&password=s3cret&sslmode=verify-full",
            "postgresql://db/pairdb?user=u&password=***&sslmode=verify-full",
        ),
        (
            "postgresql://db/pairdb?PassWord=a&sslpassword=b&SSLPASSWORD=c&password=d",
            "postgresql://db/pairdb?PassWord=***&sslpassword=***&SSLPASSWORD=***&password=***",
        ),
        ("host=h password='x y' dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = s3cret dbname=d", "host=h password = *** dbname=d"),
        (r"host=h password='it\'s' dbname=d", "host=h password=*** dbname=d"),
        (r"host=h password=a\ b dbname=d sslpassword=k", "host=h password=*** dbname=d sslpassword=***"),
        ("host=h PASSWORD='unterminated dbname=d", "host=h PASSWORD=***"),
    ],
)
def test_every_form_of_password_is_masked(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert reveals_secret(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/pairdb",
        "postgresql://db:5432/pairdb?application_name=a@b&sslmode=disable",
        "host=h user=u dbname=d",
        "postgresql://db/pairdb?passwordless=1",
    ],
)
def test_a_connection_string_without_password_is_unchanged(dsn: str) -> None:
    assert mask_dsn(dsn) == dsn
    assert not reveals_secret(dsn)


def test_connection_strings_inside_free_text_are_masked() -> None:
    text = 'cannot connect to "postgresql://u:pw1@db/x" (refused); also tried host=db password=pw2 user=u'
    assert mask_secrets(text) == (
        'cannot connect to "postgresql://u:***@db/x" (refused); also tried host=db password=*** user=u'
    )


# Every other part of a connection string is lowercase, so the sentinel can appear in the
# output only if (part of) the password leaked.
_SENTINEL = "S3CR"
_plain = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_any_password = st.text(min_size=0, max_size=20).map(lambda s: _SENTINEL + s + _SENTINEL)
# A raw password in a URL may hold `@`, `:` and `/` but no `?`, `#` or blank (they end it for every parser).
_raw_url_password = st.text(
    st.characters(blacklist_characters="?#", blacklist_categories=("Zs", "Cc", "Cs")), max_size=20
).map(lambda s: _SENTINEL + s + _SENTINEL)


def _leaks(out: str, password: str) -> bool:
    return _SENTINEL in out or password in out or urllib.parse.quote(password, safe="") in out


@given(user=_plain, password=_raw_url_password, host=_plain, db=_plain)
def test_a_raw_url_password_never_shows(user: str, password: str, host: str, db: str) -> None:
    dsn = f"postgresql://{user}:{password}@{host}:5432/{db}?sslmode=require"
    assert not _leaks(mask_dsn(dsn), password)
    assert mask_dsn(dsn) == f"postgresql://{user}:***@{host}:5432/{db}?sslmode=require"


@given(
    user=_plain,
    password=_any_password,
    host=_plain,
    db=_plain,
    key=st.sampled_from(["password", "sslPassword"]),
)
def test_a_percent_encoded_password_never_shows(
    user: str, password: str, host: str, db: str, key: str
) -> None:
    quoted = urllib.parse.quote(password, safe="")
    for dsn in (
        f"postgresql://{user}:{quoted}@{host}/{db}",
        f"postgresql://{host}/{db}?user={user}&{key}={quoted}&application_name={db}",
    ):
        assert not _leaks(mask_dsn(dsn), password), dsn
        assert not _leaks(mask_secrets(f"error: {dsn} failed"), password), dsn


@given(user=_plain, password=_any_password, host=_plain)
def test_a_quoted_keyword_password_never_shows(user: str, password: str, host: str) -> None:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    dsn = f"host={host} user={user} password='{escaped}' dbname=pairdb"
    assert mask_dsn(dsn) == f"host={host} user={user} password=*** dbname=pairdb"
    assert not _leaks(mask_dsn(dsn), password)
