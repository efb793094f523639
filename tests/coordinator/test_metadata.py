"""Metadata start-up against a real PostgreSQL that is not there yet."""

from __future__ import annotations

import asyncio
import shutil

from pairdb.coordinator.metadata import Metadata
from pairdb.local.postgres import EmbeddedPostgres
from tests.conftest import fresh_dir


async def test_regression_a_worker_started_while_postgresql_recovers_waits_instead_of_exiting() -> None:
    """Found by bench/chaos.py (kill_worker + kill_postgres): the restarted worker exited at start-up
    because PostgreSQL was still down, and the migration it owned stayed stuck."""
    path = fresh_dir("metadata")
    pg = EmbeddedPostgres(path / "pg")
    try:
        await pg.start()
        dsn = await pg.ensure_database("pairdb")
        await pg.stop()
        connecting = asyncio.ensure_future(Metadata.connect(dsn, wait=30))
        await asyncio.sleep(1.5)
        assert not connecting.done()
        await pg.start()
        metadata = await asyncio.wait_for(connecting, 30)
        try:
            assert await metadata.epoch() >= 1
        finally:
            await metadata.close()
    finally:
        await pg.stop()
        shutil.rmtree(path, ignore_errors=True)
