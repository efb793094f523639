"""TLS on every hop: who may reach a coordinator and a storage node, and who may join the ring.

The cluster runs TLS as every LocalCluster does by default: a CA under its data
directory, a certificate per storage node (issued for its id), one for the
coordinators and one for the worker.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pairdb.client import Client, ClientError, Unavailable
from pairdb.local.cluster import LocalCluster
from pairdb.local.processes import free_port
from pairdb.proto import storage_pb2, storage_pb2_grpc
from pairdb.security import certs
from pairdb.security.roles import Role
from pairdb.security.tls import ChannelTls, TlsFiles, secure_channel
from pairdb.storage_node.client import NodeClient, StorageError
from tests.conftest import local_cluster
from tests.support import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
async def secured() -> AsyncIterator[LocalCluster]:
    async with local_cluster("tls", storage_nodes=3, log_level="WARNING", temporal=False) as local:
        yield local


def _issue(cluster: LocalCluster, name: str, role: Role) -> ChannelTls:
    """A certificate of the cluster's own CA with role, as an operator would make one."""
    issued = certs.cert_paths(cluster.certs_dir, name)
    if not issued.cert.exists():
        certs.create_cert(cluster.certs_dir, name, role, hosts=("127.0.0.1",))
    return ChannelTls(TlsFiles(cluster.certs_dir / certs.CA_CERT, issued.cert, issued.key))


def _foreign_ca(tmp: Path) -> Path:
    """Another cluster's CA, with a worker certificate: right role, wrong authority."""
    certs.create_ca(tmp)
    certs.create_cert(tmp, "worker", Role.WORKER, hosts=("127.0.0.1",))
    return tmp


def _node_stub(cluster: LocalCluster, node_id: str, tls: ChannelTls) -> storage_pb2_grpc.StorageServiceStub:
    channel = secure_channel(cluster.nodes[node_id].address, tls, [], server_name=node_id)
    return storage_pb2_grpc.StorageServiceStub(channel)


async def test_clients_reach_the_coordinator_only_over_tls(secured: LocalCluster) -> None:
    async with secured.client() as client:
        await client.put("default", "tls-k", b"v")
        assert (await client.get("default", "tls-k")).value == b"v"
    async with Client(secured.coordinator_address, timeout=3) as plaintext:
        with pytest.raises(ClientError) as refused:
            await plaintext.get("default", "tls-k")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_storage_node_lets_in_only_the_cluster_processes(
    secured: LocalCluster, scratch_dir: Path
) -> None:
    node = secured.nodes["node-1"]
    # No certificate at all: plaintext, or TLS without a client certificate.
    async with grpc.aio.insecure_channel(node.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await storage_pb2_grpc.StorageServiceStub(channel).Stats(storage_pb2.StatsRequest(), timeout=3)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    anonymous = ChannelTls(TlsFiles(secured.certs_dir / certs.CA_CERT))
    with pytest.raises(grpc.aio.AioRpcError) as no_cert:
        await _node_stub(secured, "node-1", anonymous).Stats(storage_pb2.StatsRequest(), timeout=3)
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    # A worker certificate of another CA.
    other = _foreign_ca(scratch_dir / "foreign-ca")
    foreign = ChannelTls(TlsFiles(other / certs.CA_CERT, other / "worker.crt", other / "worker.key"))
    with pytest.raises(grpc.aio.AioRpcError) as wrong_ca:
        await _node_stub(secured, "node-1", foreign).Stats(storage_pb2.StatsRequest(), timeout=3)
    assert wrong_ca.value.code() == grpc.StatusCode.UNAVAILABLE
    # The cluster's CA, but a client's role (an admin's certificate is not a cluster process's).
    admin = _issue(secured, "alice", Role.ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as as_admin:
        await _node_stub(secured, "node-1", admin).Stats(storage_pb2.StatsRequest(), timeout=3)
    assert as_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "coordinator or worker" in (as_admin.value.details() or "")
    # Meanwhile the cluster serves.
    async with secured.client() as client:
        await client.put("default", "still-serving", b"v")


async def test_only_the_worker_may_scan_or_delete_ranges_or_move_the_fence(secured: LocalCluster) -> None:
    coordinator = _node_stub(secured, "node-1", _issue(secured, "coordinator", Role.COORDINATOR))
    everything = storage_pb2.TokenRange(start=0, end=0)
    with pytest.raises(grpc.aio.AioRpcError) as delete:
        await coordinator.DeleteRange(storage_pb2.DeleteRangeRequest(range=everything), timeout=3)
    assert delete.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "DeleteRange needs a cluster certificate with role worker" in (delete.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as scan:
        async for _ in coordinator.ScanRange(storage_pb2.ScanRangeRequest(range=everything), timeout=3):
            pass
    assert scan.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as fence:
        await coordinator.SetFence(storage_pb2.SetFenceRequest(epoch=1 << 60), timeout=3)
    assert fence.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A coordinator still reads and writes records.
    assert (await coordinator.Stats(storage_pb2.StatsRequest(), timeout=3)).keys >= 0
    # Even the worker must name the range it scans.
    worker = _node_stub(secured, "node-1", _issue(secured, "worker", Role.WORKER))
    with pytest.raises(grpc.aio.AioRpcError) as unnamed:
        async for _ in worker.ScanRange(storage_pb2.ScanRangeRequest(), timeout=3):
            pass
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_storage_node_s_certificate_may_only_scan_ranges_as_a_copy_s_target(
    secured: LocalCluster,
) -> None:
    """A copy's target pulls its ranges from the source itself; it may not write, delete or fence."""
    node = _node_stub(secured, "node-1", _issue(secured, "node-9", Role.STORAGE_NODE))
    with pytest.raises(grpc.aio.AioRpcError) as unnamed:  # past the role check: only the request is wrong
        async for _ in node.ScanRange(storage_pb2.ScanRangeRequest(), timeout=3):
            pass
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    everything = storage_pb2.TokenRange(start=0, end=0)
    refused = [
        node.DeleteRange(storage_pb2.DeleteRangeRequest(range=everything), timeout=3),
        node.SetFence(storage_pb2.SetFenceRequest(epoch=1 << 60), timeout=3),
        node.PullRanges(storage_pb2.PullRangesRequest(ranges=[everything]), timeout=3),
        node.ApplyMany(storage_pb2.ApplyManyRequest(), timeout=3),
        node.Get(storage_pb2.GetRequest(tenant_id="default", key="k"), timeout=3),
    ]
    for call in refused:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    coordinator = _node_stub(secured, "node-1", _issue(secured, "coordinator", Role.COORDINATOR))
    with pytest.raises(grpc.aio.AioRpcError) as pull:
        await coordinator.PullRanges(storage_pb2.PullRangesRequest(ranges=[everything]), timeout=3)
    assert pull.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "PullRanges needs a cluster certificate with role worker" in (pull.value.details() or "")


async def test_a_node_without_a_certificate_of_the_cluster_cannot_join(
    secured: LocalCluster, scratch_dir: Path
) -> None:
    """The rogue-node join: `pairdb node add n9 ATTACKER:PORT` is refused, nothing moves to it."""
    rogue_dir = scratch_dir
    other = _foreign_ca(rogue_dir / "certs")
    certs.create_cert(other, "n9", Role.STORAGE_NODE, hosts=("127.0.0.1",))
    async with secured.client() as client:
        before = await client.nodes()
        # Its own CA's certificate for n9; and, for n8, the cluster CA's certificate of another node.
        for node_id, files in (
            ("n9", ["--tls-ca", str(other / "ca.crt"), "--tls-cert", str(other / "n9.crt"),
                    "--tls-key", str(other / "n9.key")]),
            ("n8", ["--tls-ca", str(secured.certs_dir / "ca.crt"),
                    "--tls-cert", str(secured.certs_dir / "node-1.crt"),
                    "--tls-key", str(secured.certs_dir / "node-1.key")]),
        ):  # fmt: skip
            port = free_port()
            rogue = await asyncio.create_subprocess_exec(
                *_storage_node_argv(node_id, port, rogue_dir / node_id, files),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await _listening(port)
                with pytest.raises(ClientError) as refused:
                    await client.add_node(node_id, "127.0.0.1", port, 1024)
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                assert f"certificate of the cluster CA issued for {node_id}" in refused.value.message
            finally:
                rogue.terminate()
                await rogue.wait()
        assert await client.nodes() == before
        await client.put("default", "after-rogue", b"v")


async def test_a_rotated_certificate_is_served_without_a_restart(secured: LocalCluster) -> None:
    host, port = secured.coordinator_address.split(":")
    context = ssl.create_default_context(cafile=str(secured.certs_dir / certs.CA_CERT))

    def serial() -> int:
        import socket

        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        from cryptography import x509

        return int(x509.load_der_x509_certificate(der or b"").serial_number)

    before = await asyncio.to_thread(serial)
    certs.create_cert(
        secured.certs_dir, "coordinator", Role.COORDINATOR, hosts=("127.0.0.1", "localhost"), overwrite=True
    )
    after = await asyncio.to_thread(serial)
    assert after != before
    async with secured.client() as client:  # and clients still get in
        await client.put("default", "after-rotation", b"v")


async def test_storage_clients_of_the_cluster_get_in(secured: LocalCluster) -> None:
    client: NodeClient = secured.nodes["node-2"].client()
    try:
        assert (await client.stats()).node_id == "node-2"
    finally:
        await client.close()
    # Reached under another node's name, a node's certificate does not match: refused.
    impostor = NodeClient("node-3", secured.nodes["node-2"].address, timeout=3, tls=secured.worker_tls())
    try:
        with pytest.raises(StorageError) as wrong_name:
            await impostor.stats()
        assert wrong_name.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await impostor.close()


def _storage_node_argv(node_id: str, port: int, data_dir: Path, tls: list[str]) -> list[str]:
    from pairdb.local.processes import pairdb_command

    return pairdb_command(
        "storage-node", "--node-id", node_id, "--port", str(port), "--data-dir", str(data_dir), *tls
    )


async def _listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_an_admin_client_certificate_is_an_admin_without_a_key(secured: LocalCluster) -> None:
    """With --tls-require-client-cert, only holders of the CA's certificates connect at all."""
    mutual = await secured.start_coordinator(
        free_port(), coordinator_id="mutual", wait=False, extra_args=("--tls-require-client-cert",)
    )
    _issue(secured, "alice", Role.ADMIN)
    ca = secured.certs_dir / certs.CA_CERT
    alice = TlsFiles(ca, secured.certs_dir / "alice.crt", secured.certs_dir / "alice.key")
    try:
        async with Client(mutual.address, timeout=5, tls=alice) as client:

            async def serving() -> bool:
                try:
                    return {n.node_id for n in await client.nodes()} >= {"node-1", "node-2", "node-3"}
                except Unavailable:
                    return False  # still starting

            await wait_for(serving, 60, "the coordinator to serve an admin certificate")
        # A cluster process's certificate names no client role: no credentials at the coordinator.
        worker = TlsFiles(ca, secured.certs_dir / "worker.crt", secured.certs_dir / "worker.key")
        async with Client(mutual.address, timeout=5, tls=worker) as client:
            with pytest.raises(ClientError) as no_role:
                await client.nodes()
        assert no_role.value.code == grpc.StatusCode.UNAUTHENTICATED
        # Without a certificate, even the admin key does not get in.
        async with Client(
            mutual.address, timeout=5, tls=secured.client_tls(), api_key=secured.admin_key
        ) as c:
            with pytest.raises(ClientError) as no_cert:
                await c.nodes()
        assert no_cert.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await mutual.process.stop()
        secured.coordinator_procs.remove(mutual)
