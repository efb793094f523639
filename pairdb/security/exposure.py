"""Secure by default: what a server may expose without TLS, and a PostgreSQL link without verification.

On a loopback address only this machine's users can connect, so a server may
listen there in plaintext (`pairdb dev` and tests still use TLS). Anywhere else a
server without TLS (and, for a coordinator, without authentication) refuses to
start unless the operator says `--insecure`; then it warns in its log and
reports it in its metrics (`pairdb_insecure`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
# libpq's sslmodes that check who the server is.
VERIFYING_SSLMODES = {"verify-ca", "verify-full"}


class Exposed(Exception):
    """A server would be reachable from the network without protection; the message says how to fix it."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or "" / 0.0.0.0-like wildcards) may resolve to any interface


def check_listen(what: str, host: str, *, tls: bool, insecure: bool, fix: str) -> str | None:
    """Refuse (Exposed) a non-loopback listener without TLS; a warning to log when --insecure allows it."""
    if tls or is_loopback(host):
        return None
    if not insecure:
        raise Exposed(
            f"{what} refuses to listen on {host} without TLS: anyone who reaches it could read and change "
            f"every tenant's data. {fix}, or pass --insecure to accept that (never in production)"
        )
    return f"INSECURE: {what} listens on {host} without TLS; anyone who reaches it can read and change data"


def postgres_warning(dsn: str, *, insecure: bool) -> str | None:
    """Refuse a non-loopback PostgreSQL without a verifying sslmode; a warning under --insecure."""
    host, sslmode = _dsn_host_and_sslmode(dsn)
    if not host or host.startswith("/") or is_loopback(host) or sslmode in VERIFYING_SSLMODES:
        return None
    message = (
        f"PostgreSQL at {host} is reached with sslmode={sslmode or 'prefer'}: the DSN, its password and "
        "every key can be read or changed on the way. Add sslmode=verify-full (and sslrootcert=...) "
        "to the DSN"
    )
    if not insecure:
        raise Exposed(message + ", or pass --insecure to accept that")
    return "INSECURE: " + message


def _dsn_host_and_sslmode(dsn: str) -> tuple[str, str]:
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = (query.get("host") or [parts.hostname or ""])[0]
        return host, (query.get("sslmode") or [""])[0]
    fields = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
    return fields.get("host", "").strip("'"), fields.get("sslmode", "").strip("'")
