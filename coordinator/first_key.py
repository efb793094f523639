"""The first admin key: made straight in PostgreSQL by `pairdb init` and local clusters, kept in a file.

No RPC can make the first key (every RPC needs one), so whoever holds the
PostgreSQL DSN makes it. The file is written once, mode 0600 in a 0700
directory it creates, and never overwritten.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pairdb.coordinator import schema
from pairdb.coordinator.auth_store import create_key, has_active_admin
from pairdb.kernel.errors import FailedPrecondition
from pairdb.security import api_keys
from pairdb.security.roles import Role


@dataclass(frozen=True, slots=True)
class AdminKey:
    token: str
    path: Path
    # Made now (else it was in the file already).
    created: bool


async def ensure_admin_key(dsn: str, path: Path, *, local: bool = False) -> AdminKey | None:
    """The admin key in `path`, made first when PostgreSQL holds no active admin key.

    A well-formed key already in `path` (made ahead, e.g. a Docker secret) becomes
    the first admin key. None when an active admin key exists but `path` does not
    hold one (the caller brings its own). local (a LocalCluster's own data dir): always end
    with a working key in `path`, replacing a stale file.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await schema.apply(conn)
        existing = await asyncio.to_thread(_read, path)
        if existing is not None:
            if await _active_admin(conn, existing):
                return AdminKey(existing, path, created=False)
            adoptable = _well_formed(existing)
            if adoptable is not None and not await has_active_admin(conn):
                # Made ahead of the cluster (deploy/make-secrets.sh): the first admin key.
                await create_key(conn, Role.ADMIN, None, "first admin key", "pairdb init", adopt=adoptable)
                return AdminKey(existing, path, created=False)
            if not local:
                raise FailedPrecondition(
                    f"{path} holds no active admin key of this cluster; it is never overwritten: "
                    "remove it or name another --admin-key-file"
                )
        elif not local and await has_active_admin(conn):
            return None
        _, token = await create_key(conn, Role.ADMIN, None, "first admin key", "pairdb init")
    finally:
        await conn.close()
    await asyncio.to_thread(_write, path, token, replace=local)
    return AdminKey(token, path, created=True)


def _well_formed(token: str) -> api_keys.KeyParts | None:
    try:
        return api_keys.parse(token)
    except api_keys.MalformedKey:
        return None


async def _active_admin(conn: asyncpg.Connection, token: str) -> bool:
    presented = _well_formed(token)
    if presented is None:
        return False
    row = await conn.fetchrow(
        "SELECT secret_sha256 FROM api_keys WHERE key_id = $1 AND role = 'admin' AND revoked_at IS NULL",
        presented.key_id,
    )
    return row is not None and api_keys.verify(presented, row["secret_sha256"])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write(path: Path, token: str, *, replace: bool) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
