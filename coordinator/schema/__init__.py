"""Versioned schema files for pairdb's PostgreSQL metadata, applied in order at start-up.

A file NNNN_name.sql is version NNNN; the applied versions are recorded in
schema_migrations. Every process that opens the metadata calls apply(); an
advisory lock makes concurrent start-ups apply each file exactly once.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

SCHEMA_DIR = Path(__file__).parent
_LOCK_ID = 0x70616972  # "pair"


def schema_files() -> list[tuple[int, Path]]:
    files = sorted(SCHEMA_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [(int(f.name[:4]), f) for f in files]


async def apply(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> list[int]:
    """Apply every schema file not yet applied; returns the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in schema_files():
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, path.name
            )
            applied_now.append(version)
    return applied_now
