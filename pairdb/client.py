"""A small async client of CoordinatorService, used by the CLI, the dev cluster and tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc

from proto import coordinator_pb2 as pb
from proto import coordinator_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
T = TypeVar("T")
CONSISTENCY = {"ONE": pb.ONE, "QUORUM": pb.QUORUM, "ALL": pb.ALL}


class ClientError(Exception):
    """A refused or failed call: the gRPC status code and the coordinator's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Value:
    found: bool
    value: bytes
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    address: str
    status: str
    virtual_nodes: int


@dataclass(frozen=True, slots=True)
class AddedNode:
    migration_id: str  # empty when the node joined an empty ring directly
    message: str
    estimated_completion: int


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    migration_id: str
    node_id: str
    type: str
    status: str
    phase: str
    keys_copied: int
    keys_total: int
    percent: float
    ranges_done: int
    ranges_total: int
    keys_per_second: float
    started_at: int
    estimated_completion: int
    error: str
    workflow_id: str
    workflow_url: str
    paused: bool
    throttle_keys_per_second: int

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "rolled_back")


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None

    async def put(
        self, tenant_id: str, key: str, value: bytes, consistency: str = "QUORUM"
    ) -> tuple[int, int]:
        reply = await self._call(
            self._stub.WriteKeyValue,
            pb.WriteKeyValueRequest(
                tenant_id=tenant_id, key=key, value=value, consistency=CONSISTENCY[consistency]
            ),
        )
        return reply.version.hlc, reply.version.origin

    async def get(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> Value:
        reply = await self._call(
            self._stub.ReadKeyValue,
            pb.ReadKeyValueRequest(tenant_id=tenant_id, key=key, consistency=CONSISTENCY[consistency]),
        )
        return Value(reply.found, reply.value, (reply.version.hlc, reply.version.origin))

    async def delete(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> tuple[int, int]:
        reply = await self._call(
            self._stub.DeleteKeyValue,
            pb.DeleteKeyValueRequest(tenant_id=tenant_id, key=key, consistency=CONSISTENCY[consistency]),
        )
        return reply.version.hlc, reply.version.origin

    async def create_tenant(self, tenant_id: str, replication_factor: int = 0) -> int:
        reply = await self._call(
            self._stub.CreateTenant,
            pb.CreateTenantRequest(tenant_id=tenant_id, replication_factor=replication_factor),
        )
        return int(reply.tenant.replication_factor)

    async def add_node(
        self,
        node_id: str,
        host: str,
        port: int,
        virtual_nodes: int = 0,
        *,
        hold_at_cutover: bool = False,
        throttle_keys_per_second: int = 0,
    ) -> AddedNode:
        reply = await self._call(
            self._stub.AddStorageNode,
            pb.AddStorageNodeRequest(
                node_id=node_id,
                host=host,
                port=port,
                virtual_nodes=virtual_nodes,
                hold_at_cutover=hold_at_cutover,
                throttle_keys_per_second=throttle_keys_per_second,
            ),
        )
        return AddedNode(reply.migration_id, reply.message, reply.estimated_completion)

    async def migration(self, migration_id: str) -> MigrationStatus:
        r = await self._call(
            self._stub.GetMigrationStatus, pb.GetMigrationStatusRequest(migration_id=migration_id)
        )
        p = r.progress
        return MigrationStatus(
            migration_id=r.migration_id,
            node_id=r.node_id,
            type=r.type,
            status=r.status,
            phase=r.phase,
            keys_copied=p.keys_copied,
            keys_total=p.keys_total,
            percent=p.percent,
            ranges_done=p.ranges_done,
            ranges_total=p.ranges_total,
            keys_per_second=p.keys_per_second,
            started_at=r.started_at,
            estimated_completion=r.estimated_completion,
            error=r.error_message,
            workflow_id=r.workflow_id,
            workflow_url=r.workflow_url,
            paused=r.paused,
            throttle_keys_per_second=r.throttle_keys_per_second,
        )

    async def cancel_migration(self, migration_id: str) -> str:
        reply = await self._call(
            self._stub.CancelMigration, pb.CancelMigrationRequest(migration_id=migration_id)
        )
        return str(reply.message)

    async def rollback_migration(self, migration_id: str) -> str:
        reply = await self._call(
            self._stub.RollbackMigration, pb.RollbackMigrationRequest(migration_id=migration_id)
        )
        return str(reply.message)

    async def pause_migration(self, migration_id: str, paused: bool = True) -> str:
        reply = await self._call(
            self._stub.PauseMigration, pb.PauseMigrationRequest(migration_id=migration_id, paused=paused)
        )
        return str(reply.message)

    async def throttle_migration(self, migration_id: str, keys_per_second: int) -> str:
        reply = await self._call(
            self._stub.ThrottleMigration,
            pb.ThrottleMigrationRequest(migration_id=migration_id, keys_per_second=keys_per_second),
        )
        return str(reply.message)

    async def nodes(self) -> list[Node]:
        reply = await self._call(self._stub.ListStorageNodes, pb.ListStorageNodesRequest())
        return [Node(n.node_id, f"{n.host}:{n.port}", n.status, n.virtual_nodes) for n in reply.nodes]
