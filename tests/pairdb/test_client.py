"""pairdb.Client and pairdb.SyncClient against the real session cluster: typed errors, retries, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

import pairdb
from pairdb.client import NO_RETRY, Client, RetryPolicy, error_for
from pairdb.kernel import errors
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from tests.support import hints_replayed

FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)


@contextlib.asynccontextmanager
async def storage_node_down(
    cluster: LocalCluster, tenant: str, node_id: str = "node-3"
) -> AsyncIterator[None]:
    """node_id killed for the block; afterwards running again and reachable from the coordinator."""
    await cluster.kill_storage_node(node_id)
    try:
        yield
    finally:
        await cluster.restart_storage_node(node_id)  # a no-op if the test restarted it already
        # The coordinator's channel to the node may still be in reconnect backoff: the next
        # test file must not see a replica missing at ALL. A patient ALL read waits that out.
        async with cluster.connect(
            cluster.coordinator_address, timeout=15, retry=RetryPolicy(attempts=100)
        ) as c:
            await c.get(tenant, "any-key", consistency="ALL")  # RF 3 of 3 nodes: asks node_id
        await hints_replayed(cluster, node_id)


def test_every_kernel_error_has_a_client_face_for_its_status() -> None:
    for kind in errors.PairdbError.__subclasses__():
        face = error_for(grpc.StatusCode[kind.status], "m")
        assert isinstance(face, kind) and isinstance(face, pairdb.ClientError), kind
    assert type(error_for(grpc.StatusCode.INTERNAL, "m")) is pairdb.ClientError


async def test_refusals_raise_the_subclass_for_their_status(client: Client, tenant: str) -> None:
    with pytest.raises(pairdb.NotFound) as missing:
        await client.get("no-such-tenant", "k")
    assert isinstance(missing.value, pairdb.ClientError)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert "does not exist" in missing.value.message

    with pytest.raises(pairdb.InvalidArgument) as bad_key:
        await client.put(tenant, "", b"v")
    assert bad_key.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "key must not be empty" in bad_key.value.message

    with pytest.raises(pairdb.AlreadyExists):
        await client.create_tenant(tenant, 3)
    with pytest.raises(pairdb.FailedPrecondition):
        await client.create_tenant(f"{tenant}-wide", 7)  # more replicas than active nodes
    with pytest.raises(pairdb.NotFound):
        await client.migration("no-such-migration")

    # Only UNAVAILABLE is retried: a refusal costs one attempt.
    before = client.attempts
    with pytest.raises(pairdb.NotFound):
        await client.get_tenant("no-such-tenant")
    assert client.attempts == before + 1
    assert (await client.get_tenant(tenant)).replication_factor == 3


def test_sync_client_round_trip_from_plain_code(cluster: LocalCluster, tenant: str) -> None:
    with pairdb.SyncClient(cluster.coordinator_address, **cluster.credentials()) as client:
        version = client.put(tenant, "sync", b"blocking")
        got = client.get(tenant, "sync", consistency="ALL")
        assert got.found and got.value == b"blocking" and got.version == version
        assert client.delete(tenant, "sync") > version
        assert not client.get(tenant, "sync").found
        assert {n.node_id for n in client.nodes()} >= {"node-1", "node-2", "node-3"}
        with pytest.raises(pairdb.NotFound):
            client.get("no-such-tenant", "k")
    client.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        client.get(tenant, "sync")


async def test_a_read_at_all_with_a_replica_down_fails_unavailable_after_every_attempt(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    await client.put(tenant, "k", b"v", consistency="ALL")
    async with (
        storage_node_down(cluster, tenant),
        cluster.connect(cluster.coordinator_address, retry=FAST) as retrying,
    ):
        with pytest.raises(pairdb.Unavailable) as refused:
            await retrying.get(tenant, "k", consistency="ALL")
        assert "node-3" in refused.value.message
        assert retrying.attempts == FAST.attempts


async def test_a_read_at_all_succeeds_when_the_refusing_replica_recovers_within_the_retry_budget(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    await client.put(tenant, "k", b"survives", consistency="ALL")
    patient = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.25)
    async with (
        storage_node_down(cluster, tenant),
        cluster.connect(cluster.coordinator_address, 20, patient) as retrying,
    ):
        read = asyncio.create_task(retrying.get(tenant, "k", consistency="ALL"))
        await asyncio.sleep(0.3)
        assert not read.done()  # refused so far, and retrying
        await cluster.restart_storage_node("node-3")
        got = await asyncio.wait_for(read, timeout=20)
        assert got.value == b"survives"
        assert retrying.attempts > 1


# Against a port nobody listens on every call fails UNAVAILABLE (connection refused).
RETRIED: dict[str, Callable[[Client], Awaitable[object]]] = {
    "get": lambda c: c.get("t", "k"),
    "put": lambda c: c.put("t", "k", b"v"),
    "delete": lambda c: c.delete("t", "k"),
    "get_tenant": lambda c: c.get_tenant("t"),
    "nodes": lambda c: c.nodes(),
    "migration": lambda c: c.migration("m"),
}
NOT_RETRIED: dict[str, Callable[[Client], Awaitable[object]]] = {
    "create_tenant": lambda c: c.create_tenant("t"),
    "add_node": lambda c: c.add_node("n", "127.0.0.1", 1),
    "cancel_migration": lambda c: c.cancel_migration("m"),
    "rollback_migration": lambda c: c.rollback_migration("m"),
    "pause_migration": lambda c: c.pause_migration("m"),
    "throttle_migration": lambda c: c.throttle_migration("m", 10),
}


@pytest.mark.parametrize("name", [*RETRIED, *NOT_RETRIED])
async def test_only_calls_safe_to_repeat_are_retried(name: str) -> None:
    async with Client(f"127.0.0.1:{free_port()}", timeout=5, retry=FAST) as client:
        with pytest.raises(pairdb.Unavailable):
            await {**RETRIED, **NOT_RETRIED}[name](client)
        assert client.attempts == (FAST.attempts if name in RETRIED else 1)


async def test_no_retry_policy_attempts_once() -> None:
    async with Client(f"127.0.0.1:{free_port()}", timeout=5, retry=NO_RETRY) as client:
        with pytest.raises(pairdb.Unavailable):
            await client.get("t", "k")
        assert client.attempts == 1


async def test_the_timeout_bounds_all_attempts_together() -> None:
    endless = RetryPolicy(attempts=10_000, initial_backoff=0.05, max_backoff=0.1)
    async with Client(f"127.0.0.1:{free_port()}", timeout=0.5, retry=endless) as client:
        started = time.monotonic()
        with pytest.raises(pairdb.ClientError) as failed:
            await client.get("t", "k")
        elapsed = time.monotonic() - started
    assert isinstance(failed.value, pairdb.Unavailable | pairdb.DeadlineExceeded)
    assert elapsed < 1.0, elapsed
    assert 1 < client.attempts < 100


def test_backoff_is_full_jitter_capped_at_max_backoff() -> None:
    policy = RetryPolicy()
    for retry in range(10):
        cap = min(policy.max_backoff, policy.initial_backoff * policy.multiplier**retry)
        assert all(0 <= policy.backoff(retry) <= cap for _ in range(50))
    assert max(policy.backoff(20) for _ in range(200)) > policy.max_backoff / 2
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
