"""A coalesced call carries many requests' records; each record has its own outcome.

A real StorageService over gRPC on loopback, in this process, on its own LMDB directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.storage_node import service
from pairdb.storage_node.client import NodeClient, StaleEpoch, StorageError
from pairdb.storage_node.coalescing import Caps
from pairdb.storage_node.engine import Applied, StoredRecord
from pairdb.storage_node.layout import decode, encode_entry, encode_key, pack_entry
from pairdb.storage_node.wire import to_proto
from tests.support import MAX_OFFSET_MS, now_version, start_node


@pytest.fixture
async def address(tmp_path: Path) -> AsyncIterator[str]:
    server, committer, engine, port = await start_node(tmp_path / "db", "coalesced")
    yield f"127.0.0.1:{port}"
    await server.stop(None)
    await committer.stop()
    engine.close()


def rec(key: str, value: bytes = b"v", ahead_ms: int = 0) -> StoredRecord:
    return StoredRecord("t", key, value, now_version(ahead_ms=ahead_ms))


async def test_apply_many_refuses_a_bad_record_alone_and_applies_the_rest(address: str) -> None:
    records = [rec("a"), rec("b", ahead_ms=10 * MAX_OFFSET_MS), rec("c")]
    bad = storage_pb2.Record(tenant_id="t", key="", value=b"x", version=storage_pb2.Version(hlc=5))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        reply = await stub.ApplyMany(
            storage_pb2.ApplyManyRequest(records=[*map(to_proto, records), bad], epoch=1)
        )
    a, ahead, c, malformed = reply.outcomes
    assert a.result.applied and c.result.applied
    assert ahead.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "ahead of this node's clock" in ahead.error.message
    assert malformed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    client = NodeClient("coalesced", address)
    try:
        assert [await client.get("t", k) for k in "abc"] == [records[0], None, records[2]]
    finally:
        await client.close()


def forged(entry: tuple[bytes, bytes], *, key: bytes | None = None, value: bytes | None = None) -> bytes:
    """An entry packed as a caller might forge it: its key or value bytes replaced as they are."""
    return pack_entry((entry[0] if key is None else key, entry[1] if value is None else value))


async def test_entries_are_checked_one_by_one_and_a_bad_one_fails_alone(address: str) -> None:
    good = [encode_entry(rec(k)) for k in ("e1", "e2")]
    wrong_token = encode_entry(rec("e3"))
    token_of_another = encode_key("t", "e4")[:8] + wrong_token[0][8:]
    ahead = encode_entry(rec("e5", ahead_ms=10 * MAX_OFFSET_MS))
    not_utf8 = encode_key("t", "e6")[:10] + b"\xff\xfe"
    flags = encode_entry(rec("e7"))
    unknown_flags = flags[1][:12] + b"\x80" + flags[1][13:]
    packed = [
        pack_entry(good[0]),
        forged(wrong_token, key=token_of_another),
        pack_entry(ahead),
        forged(good[1], key=not_utf8),
        forged(flags, value=unknown_flags),
        pack_entry(good[1]),
    ]
    client = NodeClient("coalesced", address)
    try:
        outcomes = await client.apply_entries(b"".join(packed), len(packed), epoch=1)
        first, token, future, utf8, flag, last = outcomes
        assert isinstance(first, Applied) and first.applied and isinstance(last, Applied) and last.applied
        for refused, why in ((token, "token"), (utf8, "UTF-8"), (flag, "flags")):
            assert isinstance(refused, StorageError) and refused.code == grpc.StatusCode.INVALID_ARGUMENT
            assert why in refused.details
        assert isinstance(future, StorageError) and future.code == grpc.StatusCode.FAILED_PRECONDITION
        assert [await client.get("t", k) for k in ("e1", "e2", "e3", "e5", "e7")] == [
            rec_of(good[0]),
            rec_of(good[1]),
            None,
            None,
            None,
        ]
    finally:
        await client.close()


def rec_of(entry: tuple[bytes, bytes]) -> StoredRecord:
    return decode(*entry)


async def test_entries_that_do_not_parse_or_come_with_records_refuse_the_call(address: str) -> None:
    entry = pack_entry(encode_entry(rec("p")))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        for request in (
            storage_pb2.ApplyManyRequest(entries=entry[:-1], epoch=1),  # cut short
            storage_pb2.ApplyManyRequest(entries=entry, records=[to_proto(rec("q"))], epoch=1),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ApplyMany(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = NodeClient("coalesced", address)
    try:
        assert await client.get("t", "p") is None and await client.get("t", "q") is None
    finally:
        await client.close()


async def test_a_call_whose_records_were_all_applied_is_answered_by_one_flag(address: str) -> None:
    first = [rec(f"all-{i}") for i in range(3)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        reply = await stub.ApplyMany(storage_pb2.ApplyManyRequest(records=[*map(to_proto, first)], epoch=1))
        assert reply.all_applied and not reply.outcomes
        # One of them again: not every record applied, so each gets its own outcome.
        again = await stub.ApplyMany(
            storage_pb2.ApplyManyRequest(records=[to_proto(first[0]), to_proto(rec("all-new"))], epoch=1)
        )
    assert not again.all_applied
    repeat, new = again.outcomes
    assert (repeat.result.applied, repeat.result.same) == (False, True)
    assert (repeat.result.current.hlc, repeat.result.current.origin) == (
        first[0].version.hlc,
        first[0].version.origin,
    )
    assert new.result.applied
    client = NodeClient("coalesced", address)
    try:
        outcomes = await client.apply_many([rec("all-x"), rec("all-y")])
        assert [(o.applied, o.current) for o in outcomes if not isinstance(o, StorageError)] == [
            (True, None)
        ] * 2
    finally:
        await client.close()


async def test_concurrent_writes_through_one_client_share_calls_yet_fail_alone(address: str) -> None:
    client = NodeClient("coalesced", address, caps=Caps(in_flight=1))
    try:
        good = [rec(f"k{i}") for i in range(50)]
        outcomes = await asyncio.gather(
            *(client.apply(r) for r in good),
            client.apply(rec("future", ahead_ms=10 * MAX_OFFSET_MS)),
            return_exceptions=True,
        )
        *applied, refused = outcomes
        assert all(not isinstance(a, BaseException) and a.applied for a in applied)
        assert isinstance(refused, StorageError)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        reads = await asyncio.gather(*(client.get("t", r.key) for r in good), client.get("t", "future"))
        assert reads == [*good, None]
    finally:
        await client.close()


async def test_a_fenced_call_refuses_every_record_in_it_as_stale(address: str) -> None:
    client = NodeClient("coalesced", address)
    try:
        await client.set_fence(5)
        outcomes = await asyncio.gather(
            *(client.apply(rec(f"k{i}"), epoch=4) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(o, StaleEpoch) and o.fence == 5 for o in outcomes)
        reads = await asyncio.gather(
            *(client.get("t", f"k{i}", epoch=4) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, StaleEpoch) for r in reads)
        assert await client.get("t", "k0", epoch=5) is None
    finally:
        await client.close()


async def test_a_get_many_reply_stops_at_its_size_and_the_client_asks_again_for_the_rest(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_GET_MANY_REPLY_BYTES", 250)  # two 100-byte values and a third
    records = [rec(f"big-{i}", bytes([i]) * 100) for i in range(7)]
    client = NodeClient("coalesced", address)
    try:
        await client.apply_many(records, epoch=1)
        keys = [("t", r.key) for r in records] + [("t", "missing")]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            request = storage_pb2.GetManyRequest(
                keys=[storage_pb2.RecordKey(tenant_id=t, key=k) for t, k in keys], epoch=1
            )
            reply = await stub.GetMany(request)
        assert len(reply.outcomes) == 3  # its values passed 250 bytes: the rest is left out
        assert await client.get_many(keys, epoch=1) == [*records, None]  # in four calls
    finally:
        await client.close()


async def test_a_get_many_cut_into_replies_gives_each_reply_the_whole_timeout(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large values take one reply each: a read of many is as many calls as it needs, each of them
    # timed on its own (a deadline shared by all would fail a big read on a slow machine however
    # steadily it went; the caller's own deadline bounds the whole).
    monkeypatch.setattr(service, "MAX_GET_MANY_REPLY_BYTES", 100)
    records = [rec(f"big-{i}", bytes([i]) * 100) for i in range(4)]
    client = NodeClient("coalesced", address, timeout=0.5)
    slow = 0.3  # each reply comes well within the timeout; the four together do not
    call = client._call

    async def late_call(method: Any, request: object, timeout: float) -> Any:
        # A reply that takes `slow` seconds: what gRPC does with a shorter deadline.
        if timeout < slow:
            raise StorageError("coalesced", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        await asyncio.sleep(slow)
        return await call(method, request, timeout)

    try:
        await client.apply_many(records, epoch=1)
        monkeypatch.setattr(client, "_call", late_call)
        assert await client.get_many([("t", r.key) for r in records], epoch=1) == records
    finally:
        await client.close()
