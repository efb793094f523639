"""Merging replicas' range streams: newest version per key, in scan order, in bounded memory.

Unit tests of activities/merge.py over in-memory streams shaped like a storage
node's ScanRange (batches in the engine's order), checked against the engine.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from pairdb.activities.merge import READ_AHEAD, RunningDigest, behind, merged
from pairdb.kernel.keyspace import TOKEN_MAX, Version, in_range
from pairdb.storage_node.client import StorageError
from pairdb.storage_node.engine import Engine, StoredRecord

# A range that wraps past the top of the token space: the harder order.
START, END = TOKEN_MAX - TOKEN_MAX // 3, TOKEN_MAX // 3


def records(n: int, seed: int, tenants: Sequence[str] = ("a", "b")) -> list[StoredRecord]:
    rng = random.Random(seed)
    return [
        StoredRecord(rng.choice(tenants), f"k{i}", f"v{i}-{seed}".encode(), Version(rng.randint(1, 5), seed))
        for i in range(n)
    ]


def node_scan(engine: Engine, batch: int = 37) -> list[list[StoredRecord]]:
    """What ScanRange of (START, END] streams from a node holding engine's records."""
    out, after = [], None
    while True:
        got, after = engine.scan(START, END, limit=batch, after=after)
        if got:
            out.append(got)
        if after is None:
            return out


async def stream(
    batches: list[list[StoredRecord]], fail_after: int | None = None
) -> AsyncIterator[list[StoredRecord]]:
    for i, batch in enumerate(batches):
        if fail_after is not None and i == fail_after:
            raise StorageError("node-2", grpc.StatusCode.UNAVAILABLE, "connection reset")
        yield batch


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Engine]]:
    """Three nodes holding overlapping, partly diverged copies of 600 keys."""
    engines = []
    for seed in range(3):
        engine = Engine(tmp_path / f"node-{seed}")
        held = [r for r in records(600, seed) if random.Random(seed * 7 + hash(r.key) % 5).random() < 0.8]
        engine.apply_records(held)
        engines.append(engine)
    yield engines
    for engine in engines:
        engine.close()


async def test_the_merge_is_the_newest_version_of_every_key_in_scan_order(
    replicas: list[Engine], tmp_path: Path
) -> None:
    union = Engine(tmp_path / "union")  # last-write-wins of everything: what the merge must give
    for engine in replicas:
        union.apply_records([r for batch in node_scan(engine) for r in batch])
    try:
        out = [b async for b in merged([stream(node_scan(e)) for e in replicas], START, END)]
        got = [r for b in out for r in b]
        assert got == [r for batch in node_scan(union, batch=10_000) for r in batch]
        assert all(in_range(r.token, START, END) for r in got)
        running = RunningDigest()
        for batch in out:
            running.add(batch)
        assert running.result() == union.digest(START, END)
    finally:
        union.close()


async def test_only_the_tenants_asked_for_are_kept(replicas: list[Engine]) -> None:
    out = [r async for b in merged([stream(node_scan(e)) for e in replicas], START, END, {"b"}) for r in b]
    assert out and {r.tenant_id for r in out} == {"b"}


async def test_a_source_failing_midway_fails_the_merge_with_its_error(replicas: list[Engine]) -> None:
    streams = [stream(node_scan(replicas[0])), stream(node_scan(replicas[1]), fail_after=2)]
    with pytest.raises(StorageError) as failed:
        async for _ in merged(streams, START, END):
            pass
    assert failed.value.node_id == "node-2"


async def test_the_merge_reads_only_a_few_batches_ahead_of_its_consumer() -> None:
    produced = 0

    async def endless() -> AsyncIterator[list[StoredRecord]]:
        nonlocal produced
        i = 0
        while True:
            produced += 1
            yield [StoredRecord("a", f"k{i + j}", b"v", Version(1, 1)) for j in range(10)]
            i += 10

    # Tokens of these keys are not ordered by i, so only the structure matters here: read-ahead.
    consumer = merged([endless()], 0, 0)
    await anext(consumer)
    await consumer.aclose()
    assert produced <= 100 + READ_AHEAD + 2  # 1,000 records out = 100 batches in, plus the read-ahead


async def test_behind_lists_what_the_target_lacks_or_holds_older(
    replicas: list[Engine], tmp_path: Path
) -> None:
    source = node_scan(replicas[0])
    flat = [r for b in source for r in b]
    target = Engine(tmp_path / "target")
    try:
        kept = flat[::2]  # every other record, some of them older
        target.apply_records(
            [
                StoredRecord(r.tenant_id, r.key, b"old", Version(0, 0)) if i % 4 else r
                for i, r in enumerate(kept)
            ]
        )
        lagging = [r async for b in behind(stream(source), stream(node_scan(target)), START, END) for r in b]
        expected = [r for i, r in enumerate(flat) if i % 2 or (i // 2) % 4]
        assert lagging == expected
    finally:
        target.close()
