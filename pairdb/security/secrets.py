"""Passwords in connection strings, hidden wherever a connection string can be shown.

Pure functions, no I/O. Two forms of PostgreSQL connection string exist, and both are handled:

- URL:  `postgresql://user:password@host:5432/db?sslpassword=x&application_name=y`
  The password is everything between the user's `:` and the `@` before the host; a raw `@`,
  `:` or `/` in it is tolerated (the last `@` before the query ends it). Query keys
  `password` and `sslpassword`, in any case, are masked too, however many there are.
- libpq key=value:  `host=h password='x y' dbname=d` (single quotes, backslash escapes).

`mask_dsn` takes a whole connection string; `mask_secrets` takes free text (an error
message, a log line) and masks every connection string found in it.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_dsn", "mask_secrets", "reveals_secret"]

MASK = "***"

_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside free text ends at whitespace or a closing quote/bracket that is not part of it.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
_QUERY_SECRET = re.compile(r"(?i)(?<![A-Za-z0-9_])((?:ssl)?password)=[^&#]*")
# libpq keyword form: key = value, the value single-quoted (with \' and \\) or a run of
# non-blanks with backslash escapes. An unterminated quote runs to the end, as libpq reads it.
_KEYWORD_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9_])((?:ssl)?password)(\s*=\s*)(?:'(?:[^'\\]|\\.|\\$)*(?:'|$)|(?:[^\s\\]|\\.|\\$)*)"
)


def mask_dsn(dsn: str) -> str:
    """The connection string with every password replaced by `***`; the rest is kept."""
    if _URL_START.match(dsn.lstrip()):
        return _mask_url(dsn)
    return mask_secrets(dsn)


def mask_secrets(text: str) -> str:
    """Free text with the password of every connection string in it masked."""
    out: list[str] = []
    pos = 0
    for m in _URL_IN_TEXT.finditer(text):
        out.append(_KEYWORD_SECRET.sub(lambda k: f"{k.group(1)}{k.group(2)}{MASK}", text[pos : m.start()]))
        out.append(_mask_url(m.group(0)))
        pos = m.end()
    out.append(_KEYWORD_SECRET.sub(lambda k: f"{k.group(1)}{k.group(2)}{MASK}", text[pos:]))
    return "".join(out)


def reveals_secret(text: str) -> bool:
    """Whether text holds a connection string with a password (one that masking would change)."""
    return mask_secrets(text) != text


def _mask_url(url: str) -> str:
    start = _URL_START.search(url)
    assert start is not None
    head, rest = url[: start.end()], url[start.end() :]
    at = _userinfo_end(rest)
    userinfo, hosts = (rest[: at + 1], rest[at + 1 :]) if at >= 0 else ("", rest)
    user, colon, _ = userinfo[:-1].partition(":")
    if colon:
        userinfo = f"{user}:{MASK}@"
    query = hosts.find("?")
    if query >= 0:
        hosts = hosts[:query] + _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", hosts[query:])
    rest = userinfo + hosts
    return head + rest


def _userinfo_end(rest: str) -> int:
    """Index of the `@` that ends user:password in the part after `scheme://`, or -1."""
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if at >= 0:
        return at
    # No `@` before the first `?`: a raw `?` in a password (`u:a?b@host`), unless what
    # precedes the last `@` is a query (it has key=value pairs).
    at = rest.rfind("@")
    if at >= 0 and "=" not in rest[:at]:
        return at
    return -1
