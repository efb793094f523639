"""A node's background reads (scans, digests, counts) in a child process: the same answers as the engine's
own, from a process that runs niced, survives its child's death, and goes away with the node.

The child is a real process over a real LMDB directory the test's engine writes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pairdb.kernel.keyspace import TOKEN_MAX, Version
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.serving.priority import BACKGROUND_NICE
from pairdb.serving.server import new_server
from pairdb.storage_node.background import BackgroundReadFailed, BackgroundReads, ReaderProcess, ReaderThread
from pairdb.storage_node.committer import GroupCommitter
from pairdb.storage_node.engine import Engine, StoredRecord
from pairdb.storage_node.service import StorageService

HALF = TOKEN_MAX // 2


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = Engine(tmp_path / "db")
    engine.apply_many([StoredRecord("t", f"k{i}", b"v" * (i % 7), Version(i + 1, 1)) for i in range(300)])
    return engine


@pytest.fixture
async def reader(engine: Engine) -> AsyncIterator[ReaderProcess]:
    reader = ReaderProcess(engine.path)
    await reader.start()
    yield reader
    await reader.close()


def _pid(reader: ReaderProcess) -> int:
    assert reader._child is not None
    return reader._child.pid


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def test_the_child_answers_as_the_engine_does(engine: Engine, reader: ReaderProcess) -> None:
    ranges = [(0, 0), (0, HALF), (HALF, 0)]
    assert await reader.digests(ranges, frozenset()) == [engine.digest(s, e) for s, e in ranges]
    assert await reader.counts(ranges) == [engine.count(s, e) for s, e in ranges]
    first = await reader.scan_entries_many(ranges, limit=50, max_bytes=1 << 20, at=0, after=None)
    assert first == engine.scan_entries_many(ranges, limit=50, max_bytes=1 << 20)
    assert first[1] is not None
    at, after = first[1]
    following = await reader.scan_entries_many(ranges, limit=50, max_bytes=1 << 20, at=at, after=after)
    assert following == engine.scan_entries_many(ranges, limit=50, max_bytes=1 << 20, at=at, after=after)
    for start, end in ranges:
        records = await reader.scan(start, end, limit=50, after=None, include_tombstones=False)
        assert records == engine.scan(start, end, limit=50, after=None, include_tombstones=False)
    assert await reader.digests([(0, 0)], frozenset({"other"})) == [engine.digest(0, 0, frozenset({"other"}))]


async def test_the_child_sees_writes_committed_after_it_started(
    engine: Engine, reader: ReaderProcess
) -> None:
    before = (await reader.counts([(0, 0)]))[0]
    engine.apply_many([StoredRecord("t", "new", b"x", Version(10_000, 1))])
    assert (await reader.counts([(0, 0)]))[0] == before + 1


async def test_the_child_runs_at_a_lower_cpu_priority(reader: ReaderProcess) -> None:
    await reader.counts([(0, 0)])  # it lowers its priority once started, before its first answer
    assert _nice(_pid(reader)) == _nice(os.getpid()) + BACKGROUND_NICE


async def test_a_child_that_died_is_replaced_on_the_next_read(engine: Engine, reader: ReaderProcess) -> None:
    first = _pid(reader)
    os.kill(first, signal.SIGKILL)
    assert (await reader.counts([(0, 0)]))[0] == engine.count(0, 0)
    assert _pid(reader) != first


async def test_a_read_cancelled_midway_does_not_hand_its_answer_to_the_next(
    engine: Engine, reader: ReaderProcess
) -> None:
    read = asyncio.ensure_future(reader.digests([(0, 0)], frozenset()))
    await asyncio.sleep(0)  # the request is on its way
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert (await reader.counts([(0, HALF)]))[0] == engine.count(0, HALF)


async def test_the_child_serves_reads_only(reader: ReaderProcess) -> None:
    with pytest.raises(BackgroundReadFailed, match="not a background read"):
        await reader._read("delete_range", 0, 0)
    # A read that fails in the child fails with its reason; the child goes on serving.
    with pytest.raises(BackgroundReadFailed, match="TypeError"):
        await reader._read("counts", [("not a token", 0)])
    assert (await reader.counts([(0, 0)]))[0] == 300


async def test_closing_ends_the_child(reader: ReaderProcess) -> None:
    child = reader._child
    assert child is not None
    await reader.close()
    assert child.returncode is not None


async def test_the_in_process_fallback_answers_the_same(engine: Engine) -> None:
    thread = ReaderThread(engine)
    try:
        assert await thread.digests([(0, HALF)], frozenset()) == [engine.digest(0, HALF)]
        assert await thread.counts([(0, 0)]) == [engine.count(0, 0)]
    finally:
        await thread.close()


class DeadReader(BackgroundReads):
    async def _read(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        raise BackgroundReadFailed("the background reader died twice in a row")


async def test_a_failed_background_read_is_unavailable_to_the_caller(engine: Engine) -> None:
    committer = GroupCommitter(engine)
    committer.start()
    server = new_server()
    service = StorageService("n1", engine, committer, background=DeadReader())
    storage_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            whole = storage_pb2.TokenRange(start=0, end=0)
            with pytest.raises(grpc.aio.AioRpcError) as digest:
                await stub.RangeDigest(storage_pb2.RangeDigestRequest(range=whole))
            with pytest.raises(grpc.aio.AioRpcError) as scan:
                async for _ in stub.ScanRange(storage_pb2.ScanRangeRequest(range=whole, entries=True)):
                    pass
        for failed in (digest.value, scan.value):
            assert failed.code() == grpc.StatusCode.UNAVAILABLE
            assert "died twice in a row; retry" in (failed.details() or "")
    finally:
        await server.stop(None)
        await committer.stop()
