"""Every coordinator call needs a key that allows it: a real cluster, keys made through the API."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from pairdb.client import (
    NO_RETRY,
    Client,
    PermissionDenied,
    Unauthenticated,
)
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from tests.support import wait_for


@contextlib.asynccontextmanager
async def keyed(cluster: LocalCluster, api_key: str | None, index: int = 0) -> AsyncIterator[Client]:
    async with Client(
        cluster.coordinator_procs[index].address, retry=NO_RETRY, api_key=api_key, tls=cluster.client_tls()
    ) as c:
        yield c


async def new_key(client: Client, role: str, tenant: str = "") -> str:
    return (await client.create_api_key(role, tenant, name=f"test {role}")).api_key


async def test_a_call_without_a_key_is_unauthenticated_and_says_what_to_pass(
    cluster: LocalCluster, tenant: str
) -> None:
    async with keyed(cluster, None) as anonymous:
        for call in (anonymous.get(tenant, "k"), anonymous.put(tenant, "k", b"v"), anonymous.nodes()):
            with pytest.raises(Unauthenticated) as refused:
                await call
            assert "PAIRDB_API_KEY" in refused.value.message
            assert "--api-key-file" in refused.value.message


@pytest.mark.parametrize(
    "garbage",
    [
        "not-a-key",
        "pdb_0123456789ab_" + "x" * 43,  # well formed, unknown
        "pdb_zz_short",
    ],
)
async def test_a_garbage_key_is_unauthenticated(cluster: LocalCluster, tenant: str, garbage: str) -> None:
    async with keyed(cluster, garbage) as client:
        with pytest.raises(Unauthenticated):
            await client.get(tenant, "k")


async def test_a_known_key_id_with_a_wrong_secret_is_unauthenticated(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    real = await new_key(client, "read-write", tenant)
    forged = real[: -len("abcd")] + ("abcd" if not real.endswith("abcd") else "dcba")
    async with keyed(cluster, forged) as forger:
        with pytest.raises(Unauthenticated):
            await forger.put(tenant, "k", b"forged")


async def test_a_tenant_key_works_on_its_tenant_only(cluster: LocalCluster, client: Client) -> None:
    await client.create_tenant("auth-mine", 3)
    await client.create_tenant("auth-theirs", 3)
    created = await client.create_api_key("read-write", "auth-mine", "app")
    async with keyed(cluster, created.api_key) as app:
        await app.put("auth-mine", "k", b"mine")
        assert (await app.get("auth-mine", "k")).value == b"mine"
        assert (await app.get_tenant("auth-mine")).tenant_id == "auth-mine"
        for call in (app.put("auth-theirs", "k", b"v"), app.get("auth-theirs", "k")):
            with pytest.raises(PermissionDenied) as refused:
                await call
            assert (
                refused.value.message == f"key {created.key.key_id} is for tenant auth-mine, not auth-theirs"
            )
        with pytest.raises(PermissionDenied):
            await app.get_tenant("auth-theirs")


async def test_a_read_only_key_reads_but_cannot_write(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    await client.put(tenant, "k", b"v")
    created = await client.create_api_key("read-only", tenant)
    async with keyed(cluster, created.api_key) as reader:
        assert (await reader.get(tenant, "k")).value == b"v"
        assert [r.value for r in await reader.get_many([(tenant, "k")])] == [b"v"]  # type: ignore[union-attr]
        for call in (reader.put(tenant, "k", b"w"), reader.delete(tenant, "k")):
            with pytest.raises(PermissionDenied) as refused:
                await call
            assert refused.value.message == (
                f"key {created.key.key_id} is read-only on tenant {tenant}: writes need a read-write key"
            )
        with pytest.raises(PermissionDenied):
            await reader.put_many([(tenant, "k", b"w")])
    assert (await client.get(tenant, "k")).value == b"v"


async def test_a_tenant_key_cannot_administer(cluster: LocalCluster, client: Client, tenant: str) -> None:
    key = await new_key(client, "read-write", tenant)
    async with keyed(cluster, key) as app:
        with pytest.raises(PermissionDenied) as refused:
            await app.create_tenant("auth-not-allowed")
        assert refused.value.message.startswith("CreateTenant needs the admin role")
        with pytest.raises(PermissionDenied) as refused:
            await app.add_node("node-x", "127.0.0.1", free_port())
        assert refused.value.message.startswith("AddStorageNode needs the admin role")
        for call in (app.nodes(), app.create_api_key("admin"), app.audit_events(), app.api_keys()):
            with pytest.raises(PermissionDenied):
                await call
    with pytest.raises(Exception, match="NOT_FOUND"):
        await client.get_tenant("auth-not-allowed")


async def test_a_batch_touching_a_foreign_tenant_is_refused_whole(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    await client.create_tenant(f"{tenant}-other", 3)
    key = await new_key(client, "read-write", tenant)
    async with keyed(cluster, key) as app:
        with pytest.raises(PermissionDenied):
            await app.put_many([(tenant, "allowed", b"v"), (f"{tenant}-other", "foreign", b"v")])
        with pytest.raises(PermissionDenied):
            await app.get_many([(tenant, "allowed"), (f"{tenant}-other", "foreign")])
        assert not (await app.get(tenant, "allowed")).found
    assert not (await client.get(f"{tenant}-other", "foreign")).found


async def test_a_revoked_key_is_refused_at_once_where_revoked(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    created = await client.create_api_key("read-write", tenant)
    async with keyed(cluster, created.api_key) as app:
        await app.put(tenant, "k", b"v")  # cached now
        revoked = await client.revoke_api_key(created.key.key_id)
        assert revoked.revoked_at > 0
        with pytest.raises(Unauthenticated) as refused:
            await app.get(tenant, "k")
        assert "revoked" in refused.value.message
    listed = {k.key_id: k for k in await client.api_keys()}
    assert listed[created.key.key_id].revoked_at > 0
    with pytest.raises(Exception, match="NOT_FOUND"):
        await client.revoke_api_key("0123456789ab")


async def test_a_key_revoked_elsewhere_is_refused_by_every_coordinator_soon(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    other = await cluster.start_coordinator(free_port(), coordinator_id="auth-second")
    try:
        created = await client.create_api_key("read-write", tenant)
        async with Client(
            other.address, retry=NO_RETRY, api_key=created.api_key, tls=cluster.client_tls()
        ) as there:
            await there.put(tenant, "k", b"v")  # the second coordinator caches the key
            await client.revoke_api_key(created.key.key_id)  # on the first

            async def refused() -> bool:
                try:
                    await there.get(tenant, "k")
                except Unauthenticated:
                    return True
                return False

            # Within authentication.KEY_TTL; the bound here only keeps a broken cache from hanging.
            await wait_for(refused, 30, "the second coordinator to refuse the revoked key")
    finally:
        await other.process.stop()
        cluster.coordinator_procs.remove(other)


async def test_admin_calls_are_audited_refused_ones_too(
    cluster: LocalCluster, client: Client, tenant: str
) -> None:
    created = await client.create_api_key("read-only", tenant, "auditee")
    async with keyed(cluster, created.api_key) as reader:
        with pytest.raises(PermissionDenied):
            await reader.create_tenant(f"{tenant}-audited")
    await client.create_tenant(f"{tenant}-made", 1)
    events = await client.audit_events(20)
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)  # newest first
    refused = next(e for e in events if e.action == "CreateTenant" and e.principal == created.key.key_id)
    assert refused.outcome == "PERMISSION_DENIED" and refused.role == "read-only"
    assert json.loads(refused.target) == {"tenant_id": f"{tenant}-audited"}
    assert "needs the admin role" in refused.message
    made = next(e for e in events if e.action == "CreateTenant" and e.outcome == "OK")
    assert json.loads(made.target)["tenant_id"] == f"{tenant}-made"
    assert made.role == "admin" and made.coordinator_id
    key_made = next(e for e in events if e.action == "CreateApiKey" and e.outcome == "OK")
    secret = created.api_key.split("_", 2)[2]  # the whole secret: token_urlsafe may contain "_" itself
    assert created.api_key not in key_made.target and secret not in key_made.target
    # Data calls are not audited: they are the cluster's traffic, not its administration.
    assert not any(e.action in ("ReadKeyValue", "WriteKeyValue") for e in events)


async def test_a_new_key_needs_a_role_and_an_existing_tenant(client: Client) -> None:
    with pytest.raises(Exception, match="NOT_FOUND"):
        await client.create_api_key("read-write", "auth-no-such-tenant")
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        await client.create_api_key("superuser")
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        await client.create_api_key("read-only")  # no tenant
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        await client.create_api_key("admin", "default")
    listed = await client.api_keys()
    assert listed and all(not hasattr(k, "secret_sha256") for k in listed)


async def test_health_stays_open_without_credentials(cluster: LocalCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with cluster.aio_channel(cluster.coordinator_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
