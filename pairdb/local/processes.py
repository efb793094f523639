"""Child processes of a local cluster: start, wait until ready, stop gently, or kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import structlog

log = structlog.get_logger()

_PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "PAIRDB_PARENT_PID"
# gRPC core logs a line whenever a process with live channels forks (as a supervisor starting
# children does); pairdb's own processes keep its output to errors unless told otherwise.
GRPC_QUIET = {"GRPC_VERBOSITY": "ERROR", "GRPC_ENABLE_FORK_SUPPORT": "false"}


def die_with_parent() -> None:
    """In a child we started: get SIGTERM when the supervisor dies, so no process is orphaned.

    Called by the child itself (not as a preexec_fn, which would make the
    parent fork while gRPC threads run) and a no-op for processes run by hand.
    """
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# Where free_port looks when the kernel's ephemeral range cannot be read.
_EPHEMERAL_DEFAULT = (32768, 60999)
_LOWEST_PORT = 10_000
# Ports free_port returned in this process: a server may not have bound its port yet.
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_port(exclude: int | None = None) -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now (other than `exclude`).

    Picked outside the kernel's ephemeral range: any process that connects
    or binds port 0 may be handed an ephemeral port at any moment, so a server
    killed and restarted on its port (as fault injection does) could find it
    taken. Outside that range, only another caller of free_port could pick
    it; this process never hands the same port out twice.
    """
    low, high = _ephemeral_range()
    candidates: list[int] = [*range(_LOWEST_PORT, low), *range(high + 1, 65536)]
    for _ in range(1000):
        port: int = random.choice(candidates)
        if port == exclude or port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 outside the ephemeral range {low}-{high}")


def pairdb_command(*args: str) -> list[str]:
    """argv running a pairdb CLI subcommand with this interpreter."""
    return [sys.executable, "-m", "pairdb.cli", *args]


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, readable by this user only (logs name tenants and keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # also one an older pairdb created readable
    return os.fdopen(fd, "ab")


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        # Secrets (a DSN with its password) go to the child through its environment, never argv,
        # which `ps` shows to every user; kept apart from env, which callers replace freely.
        self.secret_env = secret_env or {}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {
            **GRPC_QUIET,
            **os.environ,
            **(self.env or {}),
            **self.secret_env,
            PARENT_PID_ENV: str(os.getpid()),
        }
        out = await asyncio.to_thread(open_private_log, self.log_path)
        with out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )

    async def wait_ready(self, probe: Callable[[], Awaitable[object]], timeout: float = 30.0) -> None:
        """Call probe until it succeeds; fail early, with the log's tail, if the process exits."""
        deadline = asyncio.get_running_loop().time() + timeout
        last_error: BaseException | None = None
        while asyncio.get_running_loop().time() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with code "
                    f"{self.proc.returncode if self.proc else '?'}\n{self.log_tail()}"
                )
            try:
                await probe()
                return
            except Exception as exc:
                last_error = exc
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {last_error}\n{self.log_tail()}")

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within timeout."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            log.warning("Process ignored SIGTERM; killing it", process=self.name, pid=self.proc.pid)
            self.proc.kill()
            await self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes mid-flight (a GC pause, a frozen VM) until resume()."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """kill -9: no chance to flush or clean up, as in a crash."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
