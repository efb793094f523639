"""pull(): a target's side of a copy, over a scripted source (the gRPC path is in test_entries.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import cast

import grpc
import pytest

from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.proto import storage_pb2
from pairdb.storage_node.client import NodeClient
from pairdb.storage_node.engine import Engine
from pairdb.storage_node.layout import Entry, decode, encode_key
from pairdb.storage_node.pull import COMMITS_IN_FLIGHT, Fenced, SourceFailed, pull


class ScriptedSource:
    """Streams the given batches of packed entries, each for range 0."""

    node_id = "source"
    load = None

    def __init__(self, batches: Sequence[bytes]) -> None:
        self.batches = batches
        self.closed = False

    async def scan_entries_many(
        self, ranges: Sequence[tuple[int, int]], **_: object
    ) -> AsyncGenerator[tuple[int, bytes, int]]:
        try:
            for entries in self.batches:
                yield 0, entries, 1
        finally:
            self.closed = True


def packed(tmp_path: Path, keys: int) -> tuple[list[bytes], list[StoredRecord]]:
    """One batch of packed entries per key, in the engine's own order."""
    engine = Engine(tmp_path / "packer")
    records = [StoredRecord("t", f"k{i}", b"v", Version(1 << 16, 1)) for i in range(keys)]
    engine.apply_records(records)
    batches: list[bytes] = []
    after = None
    while True:
        entries, _, after = engine.scan_entries(0, 0, limit=1, max_bytes=1 << 20, after=after)
        if entries:
            batches.append(entries)
        if after is None:
            break
    engine.close()
    return batches, sorted(records, key=lambda r: encode_key(r.tenant_id, r.key))


def request(max_entries: int = 0, epoch: int = 0) -> storage_pb2.PullRangesRequest:
    everything = [storage_pb2.TokenRange(start=0, end=0)]
    return storage_pb2.PullRangesRequest(ranges=everything, max_entries=max_entries, epoch=epoch)


async def test_a_few_commits_are_in_flight_while_the_next_batches_arrive(tmp_path: Path) -> None:
    batches, records = packed(tmp_path, 6)
    in_flight, most = 0, 0
    applied: list[str] = []

    async def apply(batch: list[Entry]) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        applied.extend(decode(*entry).key for entry in batch)
        in_flight -= 1
        return len(batch)

    source = ScriptedSource(batches)
    reply = await pull(cast(NodeClient, source), request(), apply, None)
    assert reply.done and [(p.range, p.entries, p.applied) for p in reply.pulled] == [(0, 6, 6)]
    assert sorted(applied) == sorted(r.key for r in records) and most == COMMITS_IN_FLIGHT


async def test_a_pull_at_its_limit_says_where_the_next_goes_on(tmp_path: Path) -> None:
    batches, records = packed(tmp_path, 5)

    async def apply(batch: list[Entry]) -> int:
        return len(batch)

    source = ScriptedSource(batches)
    reply = await pull(cast(NodeClient, source), request(max_entries=2), apply, None)
    assert not reply.done and reply.pulled[0].entries == 2
    assert (reply.next_at, reply.next_after) == (0, encode_key("t", records[1].key))
    assert source.closed  # the source's stream is cancelled, not left running


async def test_entries_that_do_not_parse_are_the_source_s_failure_and_nothing_is_applied(
    tmp_path: Path,
) -> None:
    batches, _ = packed(tmp_path, 1)
    applied: list[Entry] = []

    async def apply(batch: list[Entry]) -> int:
        applied.extend(batch)
        return len(batch)

    for bad in (b"\x00\x01garbage", batches[0][:-3], batches[0] + b"\x00"):
        with pytest.raises(SourceFailed) as failed:
            await pull(cast(NodeClient, ScriptedSource([bad])), request(), apply, None)
        assert failed.value.code == grpc.StatusCode.DATA_LOSS and "entr" in failed.value.why
    assert applied == []


async def test_a_fence_raised_mid_pull_stops_it_before_the_next_commit(tmp_path: Path) -> None:
    batches, _ = packed(tmp_path, 4)
    commits = 0

    async def apply(batch: list[Entry]) -> int:
        nonlocal commits
        if commits == 2:  # the node was fenced past the pull's epoch meanwhile
            raise Fenced(7)
        commits += 1
        return len(batch)

    source = ScriptedSource(batches * 3)
    with pytest.raises(Fenced):
        await pull(cast(NodeClient, source), request(epoch=6), apply, None)
    assert commits == 2 and source.closed
