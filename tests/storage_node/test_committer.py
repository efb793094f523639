"""The group committer: one writer thread, client writes and range deletions in turn.

Unit tests of committer.py over a real LMDB engine (no gRPC).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pairdb.kernel.keyspace import Version
from pairdb.storage_node.committer import DELETE_SLICE, GroupCommitter
from pairdb.storage_node.engine import Engine, StoredRecord
from pairdb.storage_node.layout import encode_entry


async def test_a_client_write_commits_between_the_slices_of_a_big_deletion(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "db")
    committer = GroupCommitter(engine)
    committer.start()
    try:
        doomed = [StoredRecord("old", f"k{i}", b"v", Version(10 << 16, 1)) for i in range(20 * DELETE_SLICE)]
        engine.apply_many(doomed)
        deleting = asyncio.ensure_future(committer.delete_range(0, 0, frozenset({"old"})))
        for _ in range(5000):  # until the first slice is committed (the engine's thread, not ours)
            if engine.stats().keys < len(doomed):
                break
            await asyncio.sleep(0.001)
        await committer.apply([encode_entry(StoredRecord("t", "k", b"v", Version(20 << 16, 1)))])
        assert not deleting.done(), "the write did not wait for the whole range"
        assert await deleting == len(doomed)
        assert engine.stats().keys == 1
    finally:
        await committer.stop()
        engine.close()
