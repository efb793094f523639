"""Background reads, out of the way of the clients: scans for copies, digests for verification, counts.

Such a read walks thousands of records in Python. In the node's own process
it holds the GIL from record to record, and each time the event loop serving
the clients wants it back it waits up to the interpreter's switch interval
(5 ms): a few such waits per request, on every node a copy reads from.
LMDB lets another process read the same environment (each read transaction is
a snapshot), so a storage node runs these reads in a child process of its own
(ReaderProcess), started with the node, at a lower CPU priority: the clients'
work comes first on the node's CPUs and the copy gets what is left, as
autovacuum does beside PostgreSQL's backends. ReaderThread is the in-process
fallback (one thread) for a node embedded in another program, as in unit tests.

The child takes requests on its stdin and answers on its stdout, one at a time
and in order (length-prefixed pickles between a process and the child it
started); it exits when its stdin closes: when the node stops or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pickle
import struct
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from pairdb.serving import priority
from pairdb.storage_node.engine import Engine, StoredRecord

log = structlog.get_logger()

# The reads a child serves (the engine's methods of those names).
_READS = frozenset({"scan", "scan_entries_many", "digests", "counts"})
_LENGTH = struct.Struct(">Q")


class BackgroundReadFailed(Exception):
    """The read failed in the child (its message says why), or the child died twice in a row."""


class BackgroundReads:
    """The reads, typed; a subclass says where they run (_read: an engine method, by name)."""

    async def _read(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def scan(
        self, start: int, end: int, *, limit: int, after: bytes | None, include_tombstones: bool
    ) -> tuple[list[StoredRecord], bytes | None]:
        result: tuple[list[StoredRecord], bytes | None] = await self._read(
            "scan", start, end, limit=limit, after=after, include_tombstones=include_tombstones
        )
        return result

    async def scan_entries_many(
        self,
        ranges: Sequence[tuple[int, int]],
        *,
        limit: int,
        max_bytes: int,
        at: int,
        after: bytes | None,
    ) -> tuple[list[tuple[int, bytes, int]], tuple[int, bytes | None] | None]:
        result: tuple[list[tuple[int, bytes, int]], tuple[int, bytes | None] | None] = await self._read(
            "scan_entries_many", list(ranges), limit=limit, max_bytes=max_bytes, at=at, after=after
        )
        return result

    async def digests(
        self, ranges: Sequence[tuple[int, int]], tenants: frozenset[str]
    ) -> list[tuple[bytes, int]]:
        result: list[tuple[bytes, int]] = await self._read("digests", list(ranges), tenants)
        return result

    async def counts(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        result: list[int] = await self._read("counts", list(ranges))
        return result

    async def close(self) -> None:
        pass


class ReaderThread(BackgroundReads):
    """Background reads on one thread of this process: several at once would starve its loop."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-reads")

    async def _read(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        work = functools.partial(getattr(self._engine, method), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


class ReaderProcess(BackgroundReads):
    """Background reads in a child process over the node's LMDB directory, at a lower CPU priority."""

    def __init__(self, data_dir: Path, nice: int = priority.BACKGROUND_NICE) -> None:
        self._data_dir = data_dir
        self._nice = nice
        self._child: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()  # one request at a time: answers come back in order

    async def start(self) -> None:
        """Start the child now: its start-up (an interpreter, ~0.15 s of CPU) is not the first copy's."""
        async with self._turn:
            await self._started()

    async def close(self) -> None:
        async with self._turn:
            await self._stop()

    async def _read(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        request = pickle.dumps((method, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._turn:
            for attempt in (1, 2):
                child = await self._started()
                try:
                    assert child.stdin is not None and child.stdout is not None
                    child.stdin.write(_LENGTH.pack(len(request)) + request)
                    await child.stdin.drain()
                    (size,) = _LENGTH.unpack(await child.stdout.readexactly(_LENGTH.size))
                    ok, result = pickle.loads(await child.stdout.readexactly(size))
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    # The child died (killed, out of memory): start another, once.
                    await self._stop()
                    log.warning("Background reader died", attempt=attempt, error=repr(exc))
                    continue
                except BaseException:
                    # Cancelled mid-request: its answer would be taken as the next one's.
                    await self._stop()
                    raise
                if not ok:
                    raise BackgroundReadFailed(result)
                return result
        raise BackgroundReadFailed(f"the background reader for {self._data_dir} died twice in a row")

    async def _started(self) -> asyncio.subprocess.Process:
        if self._child is None or self._child.returncode is not None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pairdb.storage_node.background",
                str(self._data_dir),
                str(self._nice),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        return self._child

    async def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None or child.returncode is not None:
            return
        assert child.stdin is not None
        child.stdin.close()  # it exits at the end of its input
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            child.kill()
            await child.wait()


def serve(data_dir: Path, nice: int) -> None:
    """The child: answer read requests from stdin on stdout until stdin closes."""
    priority.lower(nice)
    engine = Engine(data_dir, readonly=True)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = requests.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return  # the node closed the pipe: stopped or gone
        method, args, kwargs = pickle.loads(requests.read(_LENGTH.unpack(head)[0]))
        try:
            if method not in _READS:
                raise ValueError(f"{method!r} is not a background read")
            answer = (True, getattr(engine, method)(*args, **kwargs))
        except Exception as exc:
            answer = (False, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_LENGTH.pack(len(data)) + data)
        answers.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve(Path(sys.argv[1]), int(sys.argv[2]))
