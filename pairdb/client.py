"""The Python client of CoordinatorService: async Client and blocking SyncClient.

Used by the CLI, the demo, the dev cluster, the benchmarks and tests. One
channel per client, reused by every call; every call has a deadline; calls
that are safe to repeat are retried on UNAVAILABLE with backoff and jitter;
refusals surface as ClientError subclasses named after their status.

    async with Client("127.0.0.1:50051", api_key=os.environ["PAIRDB_API_KEY"]) as client:
        await client.put("default", "greeting", b"hello")
        print((await client.get("default", "greeting")).value)

    with SyncClient("127.0.0.1:50051", api_key=...) as client:
        client.put("default", "greeting", b"hello")
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from pairdb.kernel import errors
from pairdb.kernel.keyspace import MAX_BATCH_ITEMS, MAX_BATCH_VALUE_BYTES
from pairdb.proto import coordinator_pb2 as pb
from pairdb.proto import coordinator_pb2_grpc
from pairdb.security.tls import ChannelTls, TlsFiles, secure_channel

DEFAULT_ADDRESS = "127.0.0.1:50051"
T = TypeVar("T")
Item = TypeVar("Item")
CONSISTENCY = {"ONE": pb.ONE, "QUORUM": pb.QUORUM, "ALL": pb.ALL}
_CHANNEL_OPTIONS = [
    # A BatchRead reply carries up to a batch's worth of values (MAX_BATCH_VALUE_BYTES), as
    # the coordinator takes a BatchWrite request of up to twice that.
    ("grpc.max_receive_message_length", 2 * MAX_BATCH_VALUE_BYTES),
    # A restarted coordinator should be found again quickly, not after gRPC's
    # default reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Ping during a long call so a coordinator host that vanished without closing
    # the connection fails the call instead of holding it to its deadline. Never
    # while idle: the coordinator keeps gRPC's default server ping policy, which
    # answers idle pings with GOAWAY too_many_pings.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


class ClientError(errors.PairdbError):
    """A refused or failed call: the gRPC status code and the coordinator's message.

    Raised as the subclass for its status when there is one (NotFound, ...),
    which is also the kernel's error of that name; other statuses (INTERNAL,
    UNIMPLEMENTED, ...) raise ClientError itself.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.args = (f"{code.name}: {message}",)
        self.code = code


def _client_error(kind: type[errors.PairdbError]) -> type[ClientError]:
    """The client's face of a kernel error: both, so either catches it."""
    return type(kind.__name__, (ClientError, kind), {"__doc__": kind.__doc__, "__module__": __name__})


InvalidArgument = _client_error(errors.InvalidArgument)
NotFound = _client_error(errors.NotFound)
AlreadyExists = _client_error(errors.AlreadyExists)
FailedPrecondition = _client_error(errors.FailedPrecondition)
Unavailable = _client_error(errors.Unavailable)
DeadlineExceeded = _client_error(errors.DeadlineExceeded)
ResourceExhausted = _client_error(errors.ResourceExhausted)
Unauthenticated = _client_error(errors.Unauthenticated)
PermissionDenied = _client_error(errors.PermissionDenied)

# Every face above, by its status.
_ERRORS: dict[str, type[ClientError]] = {face.status: face for face in ClientError.__subclasses__()}


def error_for(code: grpc.StatusCode, message: str) -> ClientError:
    return _ERRORS.get(code.name, ClientError)(code, message)


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _item_error(code: int, message: str) -> ClientError:
    return error_for(_STATUS_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN), message)


def _chunks(items: Sequence[Item], value_bytes: Callable[[Item], int]) -> Iterator[Sequence[Item]]:
    """items cut into runs that fit one batch call (MAX_BATCH_ITEMS, MAX_BATCH_VALUE_BYTES)."""
    start, size = 0, 0
    for i, item in enumerate(items):
        n = value_bytes(item)
        if i - start == MAX_BATCH_ITEMS or (i > start and size + n > MAX_BATCH_VALUE_BYTES):
            yield items[start:i]
            start, size = i, 0
        size += n
    if start < len(items):
        yield items[start:]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call that is safe to repeat is retried on UNAVAILABLE.

    attempts counts the first call too (1 means never retry). Before retry n
    (from 0) the client sleeps a random time in [0, min(max_backoff,
    initial_backoff * multiplier**n)] ("full jitter"), so clients that failed
    together do not come back together. The client's timeout bounds all
    attempts and sleeps together.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    multiplier: float = 2.0
    max_backoff: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def backoff(self, retry: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier**retry))


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class Value:
    found: bool
    value: bytes
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    replication_factor: int
    created_at: int  # unix seconds
    # Limits (0: unlimited), and the live bytes the coordinator estimates it stores (None: not polled).
    max_ops_per_second: int = 0
    max_bytes: int = 0
    stored_bytes: int | None = None


def _tenant(t: pb.Tenant) -> Tenant:
    stored = t.stored_bytes if t.HasField("stored_bytes") else None
    return Tenant(t.tenant_id, t.replication_factor, t.created_at, t.max_ops_per_second, t.max_bytes, stored)


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    address: str
    status: str
    virtual_nodes: int


@dataclass(frozen=True, slots=True)
class AddedNode:
    migration_id: str  # empty when the node joined directly (a cluster with no tenant yet)
    message: str
    estimated_completion: int


@dataclass(frozen=True, slots=True)
class StartedChange:
    """A ring change started (removal, replacement or RF change; queued until its turn), or a repair."""

    migration_id: str
    workflow_id: str
    message: str


@dataclass(frozen=True, slots=True)
class MigrationSummary:
    migration_id: str
    type: str
    # The node added, removed or replaced; the tenant of an RF change.
    subject: str
    status: str
    phase: str
    started_at: int
    workflow_id: str
    detail: str


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


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its secret."""

    key_id: str
    name: str
    role: str
    tenant_id: str
    created_at: int
    created_by: str
    revoked_at: int  # 0 while active


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    # The key to present: shown once, stored nowhere.
    api_key: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at_ms: int
    principal: str
    role: str
    action: str
    target: str  # the request's fields as JSON
    outcome: str
    message: str
    coordinator_id: str


def _api_key(k: pb.ApiKey) -> ApiKey:
    return ApiKey(k.key_id, k.name, k.role, k.tenant_id, k.created_at, k.created_by, k.revoked_at)


class Client:
    """An async client of one coordinator.

    timeout is each call's overall deadline in seconds, retries included.
    Retried on UNAVAILABLE as the retry policy says: reads, get_tenant, nodes
    and migration, which change nothing, and put and delete. A put or delete whose attempt
    failed may still have been applied (by some replicas, or fully when only
    the reply was lost), and every attempt gets a new, newer version, so a
    retried write may apply twice: last-write-wins makes that harmless, the
    newest attempt's value stands. Its one visible effect: a retry can land after,
    and so replace, another client's write that was acknowledged between the
    attempts. Never retried: create_tenant, add_node and the migration controls
    (cancel, rollback, pause, throttle), which are not idempotent or whose
    repetition means something else; pass retry=NO_RETRY to retry nothing.

    api_key (`pdb_...`) goes with every call; without one a secure cluster
    answers UNAUTHENTICATED.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        *,
        tls: TlsFiles | None = None,
        api_key: str | None = None,
    ) -> None:
        """tls: the cluster CA to check the coordinator's certificate against (and a client certificate
        to present, when given); None talks plaintext, which a coordinator allows on loopback only."""
        self.address = address
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        # Built once: every call passes the same tuple.
        self._metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {api_key}"),) if api_key else None
        )
        # RPC attempts made, retries included: what a retry costs, for tests and benchmarks.
        self.attempts = 0
        self._channel = (
            secure_channel(address, ChannelTls(tls), _CHANNEL_OPTIONS)
            if tls is not None
            else grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        )
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(self, method: Callable[..., Awaitable[T]], request: object, *, retry: bool = False) -> T:
        """One call, retried on UNAVAILABLE only when retry says it is safe to repeat."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempts = self.retry.attempts if retry else 1
        for attempt in range(attempts):
            self.attempts += 1
            try:
                return await method(
                    request, timeout=max(deadline - loop.time(), 0.0), metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                error = error_for(exc.code(), exc.details() or "")
            if not isinstance(error, Unavailable) or attempt + 1 == attempts:
                raise error
            delay = self.retry.backoff(attempt)
            # Do not sleep past the deadline: the caller gets the real failure, not a timeout.
            if loop.time() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def put(
        self, tenant_id: str, key: str, value: bytes, consistency: str = "QUORUM"
    ) -> tuple[int, int]:
        reply = await self._call(
            self._stub.WriteKeyValue,
            pb.WriteKeyValueRequest(
                tenant_id=tenant_id, key=key, value=value, consistency=CONSISTENCY[consistency]
            ),
            retry=True,
        )
        return reply.version.hlc, reply.version.origin

    async def get(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> Value:
        reply = await self._call(
            self._stub.ReadKeyValue,
            pb.ReadKeyValueRequest(tenant_id=tenant_id, key=key, consistency=CONSISTENCY[consistency]),
            retry=True,
        )
        return Value(reply.found, reply.value, (reply.version.hlc, reply.version.origin))

    async def delete(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> tuple[int, int]:
        reply = await self._call(
            self._stub.DeleteKeyValue,
            pb.DeleteKeyValueRequest(tenant_id=tenant_id, key=key, consistency=CONSISTENCY[consistency]),
            retry=True,
        )
        return reply.version.hlc, reply.version.origin

    async def put_many(
        self, items: Sequence[tuple[str, str, bytes | None]], consistency: str = "QUORUM"
    ) -> list[tuple[int, int] | ClientError]:
        """Write many (tenant_id, key, value) items; a value of None deletes the key.

        Not a transaction: each item is acknowledged on its own, and its result
        is its version or the error it failed with (the others are unaffected).
        Sent in BatchWrite calls within the batch limits, one after the other;
        a call that fails as a whole (UNAVAILABLE) is retried like put.
        """
        results: list[tuple[int, int] | ClientError] = []
        for chunk in _chunks(items, lambda item: len(item[2] or b"")):
            request = pb.BatchWriteRequest(
                items=[
                    pb.BatchWriteItem(tenant_id=t, key=k, value=v or b"", delete=v is None)
                    for t, k, v in chunk
                ],
                consistency=CONSISTENCY[consistency],
            )
            reply = await self._call(self._stub.BatchWrite, request, retry=True)
            results.extend(
                _item_error(r.code, r.error) if r.code else (r.version.hlc, r.version.origin)
                for r in reply.results
            )
        return results

    async def get_many(
        self, keys: Sequence[tuple[str, str]], consistency: str = "QUORUM"
    ) -> list[Value | ClientError]:
        """Read many (tenant_id, key) pairs: each one's Value, or the error it failed with."""
        results: list[Value | ClientError | None] = [None] * len(keys)
        todo = list(range(len(keys)))
        while todo:
            deferred: list[int] = []  # left out of a full reply: read again in the next call
            for chunk in _chunks(todo, lambda _: 0):
                request = pb.BatchReadRequest(
                    items=[pb.BatchReadItem(tenant_id=keys[i][0], key=keys[i][1]) for i in chunk],
                    consistency=CONSISTENCY[consistency],
                )
                reply = await self._call(self._stub.BatchRead, request, retry=True)
                for i, r in zip(chunk, reply.results, strict=True):
                    if r.deferred:
                        deferred.append(i)
                    elif r.code:
                        results[i] = _item_error(r.code, r.error)
                    else:
                        results[i] = Value(r.found, r.value, (r.version.hlc, r.version.origin))
            if len(deferred) == len(todo):
                raise ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "a BatchRead returned no value")
            todo = deferred
        return [r for r in results if r is not None]

    async def create_tenant(
        self,
        tenant_id: str,
        replication_factor: int = 0,
        *,
        gc_grace_seconds: int | None = None,
        max_ops_per_second: int = 0,
        max_bytes: int = 0,
    ) -> int:
        """Create a tenant; its replication factor (0: the default, 3). gc_grace_seconds: how long
        its deletes' tombstones are kept at least (None: the default, 10 days). max_ops_per_second
        (per coordinator) and max_bytes (of live data): its limits, 0 for none."""
        request = pb.CreateTenantRequest(
            tenant_id=tenant_id,
            replication_factor=replication_factor,
            max_ops_per_second=max_ops_per_second,
            max_bytes=max_bytes,
        )
        if gc_grace_seconds is not None:
            request.gc_grace_seconds = gc_grace_seconds
        reply = await self._call(self._stub.CreateTenant, request)
        return int(reply.tenant.replication_factor)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        reply = await self._call(self._stub.GetTenant, pb.GetTenantRequest(tenant_id=tenant_id), retry=True)
        return _tenant(reply.tenant)

    async def set_tenant_limits(
        self, tenant_id: str, *, max_ops_per_second: int | None = None, max_bytes: int | None = None
    ) -> Tenant:
        """Change a tenant's limits (admin only): None keeps one, 0 removes it."""
        request = pb.SetTenantLimitsRequest(tenant_id=tenant_id)
        if max_ops_per_second is not None:
            request.max_ops_per_second = max_ops_per_second
        if max_bytes is not None:
            request.max_bytes = max_bytes
        reply = await self._call(self._stub.SetTenantLimits, request, retry=True)
        return _tenant(reply.tenant)

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

    async def remove_node(
        self,
        node_id: str,
        *,
        dead: bool = False,
        hold_at_cutover: bool = False,
        throttle_keys_per_second: int = 0,
    ) -> StartedChange:
        """Decommission a node; `dead`: it cannot answer, its ranges come from the survivors."""
        r = await self._call(
            self._stub.RemoveStorageNode,
            pb.RemoveStorageNodeRequest(
                node_id=node_id,
                dead=dead,
                hold_at_cutover=hold_at_cutover,
                throttle_keys_per_second=throttle_keys_per_second,
            ),
        )
        return StartedChange(r.migration_id, r.workflow_id, r.message)

    async def repair(self, tenant_id: str = "", *, throttle_keys_per_second: int = 0) -> StartedChange:
        """Start an anti-entropy repair of every tenant (or of one); follow it as a migration."""
        r = await self._call(
            self._stub.Repair,
            pb.RepairRequest(tenant_id=tenant_id, throttle_keys_per_second=throttle_keys_per_second),
        )
        return StartedChange(r.migration_id, r.workflow_id, r.message)

    async def schedule_repair(self, every_hours: int = 0) -> str:
        """Create (or re-time) the Temporal Schedule repairing every tenant every `every_hours` h."""
        r = await self._call(self._stub.ScheduleRepair, pb.ScheduleRepairRequest(every_hours=every_hours))
        return str(r.message)

    async def replace_node(
        self,
        dead_node_id: str,
        node_id: str,
        host: str,
        port: int,
        *,
        hold_at_cutover: bool = False,
        throttle_keys_per_second: int = 0,
    ) -> StartedChange:
        """A new node (already running at host:port, empty) takes a dead node's place."""
        r = await self._call(
            self._stub.ReplaceStorageNode,
            pb.ReplaceStorageNodeRequest(
                dead_node_id=dead_node_id,
                node_id=node_id,
                host=host,
                port=port,
                hold_at_cutover=hold_at_cutover,
                throttle_keys_per_second=throttle_keys_per_second,
            ),
        )
        return StartedChange(r.migration_id, r.workflow_id, r.message)

    async def set_replication_factor(
        self,
        tenant_id: str,
        replication_factor: int,
        *,
        hold_at_cutover: bool = False,
        throttle_keys_per_second: int = 0,
    ) -> StartedChange:
        r = await self._call(
            self._stub.UpdateTenant,
            pb.UpdateTenantRequest(
                tenant_id=tenant_id,
                replication_factor=replication_factor,
                hold_at_cutover=hold_at_cutover,
                throttle_keys_per_second=throttle_keys_per_second,
            ),
        )
        return StartedChange(r.migration_id, r.workflow_id, r.message)

    async def migrations(self, recent: int = 20) -> list[MigrationSummary]:
        """Every queued and running ring change, and the `recent` last ended ones, oldest first."""
        r = await self._call(self._stub.ListMigrations, pb.ListMigrationsRequest(recent=recent), retry=True)
        return [
            MigrationSummary(
                m.migration_id, m.type, m.subject, m.status, m.phase, m.started_at, m.workflow_id, m.detail
            )
            for m in r.migrations
        ]

    async def migration(self, migration_id: str) -> MigrationStatus:
        r = await self._call(
            self._stub.GetMigrationStatus,
            pb.GetMigrationStatusRequest(migration_id=migration_id),
            retry=True,
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
        reply = await self._call(self._stub.ListStorageNodes, pb.ListStorageNodesRequest(), retry=True)
        return [Node(n.node_id, f"{n.host}:{n.port}", n.status, n.virtual_nodes) for n in reply.nodes]

    async def create_api_key(self, role: str, tenant_id: str = "", name: str = "") -> CreatedKey:
        """A new key: role admin (no tenant), read-write or read-only (on tenant_id). Not retried."""
        r = await self._call(
            self._stub.CreateApiKey, pb.CreateApiKeyRequest(role=role, tenant_id=tenant_id, name=name)
        )
        return CreatedKey(_api_key(r.key), r.api_key)

    async def api_keys(self) -> list[ApiKey]:
        r = await self._call(self._stub.ListApiKeys, pb.ListApiKeysRequest(), retry=True)
        return [_api_key(k) for k in r.keys]

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoked at once on this coordinator, on the others within seconds. Safe to repeat."""
        r = await self._call(self._stub.RevokeApiKey, pb.RevokeApiKeyRequest(key_id=key_id), retry=True)
        return _api_key(r.key)

    async def audit_events(self, limit: int = 50) -> list[AuditEvent]:
        """The newest audit events, newest first."""
        r = await self._call(self._stub.ListAuditEvents, pb.ListAuditEventsRequest(limit=limit), retry=True)
        return [
            AuditEvent(
                e.id, e.at, e.principal, e.role, e.action, e.target, e.outcome, e.message, e.coordinator_id
            )
            for e in r.events
        ]


class SyncClient:
    """Client's calls, blocking, for scripts and other code without an event loop.

    The async Client lives on a private event loop in a background thread (a
    grpc.aio channel is bound to the loop it was made on, so one loop serves
    every call); each method submits its coroutine there and waits. Safe to call
    from several threads at once. close() it, or use it as a context manager.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        **credentials: Any,
    ) -> None:
        """credentials: as Client's (tls, ...)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pairdb-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> Client:
            return Client(address, timeout, retry, **credentials)

        self._client = self._run(make())

    @property
    def client(self) -> Client:
        """The async Client underneath (address, timeout, retry, attempts)."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("SyncClient is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: do not leave the call running
            raise

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def put(self, tenant_id: str, key: str, value: bytes, consistency: str = "QUORUM") -> tuple[int, int]:
        return self._run(self._client.put(tenant_id, key, value, consistency))

    def get(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> Value:
        return self._run(self._client.get(tenant_id, key, consistency))

    def delete(self, tenant_id: str, key: str, consistency: str = "QUORUM") -> tuple[int, int]:
        return self._run(self._client.delete(tenant_id, key, consistency))

    def put_many(
        self, items: Sequence[tuple[str, str, bytes | None]], consistency: str = "QUORUM"
    ) -> list[tuple[int, int] | ClientError]:
        return self._run(self._client.put_many(items, consistency))

    def get_many(
        self, keys: Sequence[tuple[str, str]], consistency: str = "QUORUM"
    ) -> list[Value | ClientError]:
        return self._run(self._client.get_many(keys, consistency))

    def create_tenant(
        self, tenant_id: str, replication_factor: int = 0, *, max_ops_per_second: int = 0, max_bytes: int = 0
    ) -> int:
        return self._run(
            self._client.create_tenant(
                tenant_id, replication_factor, max_ops_per_second=max_ops_per_second, max_bytes=max_bytes
            )
        )

    def get_tenant(self, tenant_id: str) -> Tenant:
        return self._run(self._client.get_tenant(tenant_id))

    def set_tenant_limits(
        self, tenant_id: str, *, max_ops_per_second: int | None = None, max_bytes: int | None = None
    ) -> Tenant:
        return self._run(
            self._client.set_tenant_limits(
                tenant_id, max_ops_per_second=max_ops_per_second, max_bytes=max_bytes
            )
        )

    def add_node(
        self,
        node_id: str,
        host: str,
        port: int,
        virtual_nodes: int = 0,
        *,
        hold_at_cutover: bool = False,
        throttle_keys_per_second: int = 0,
    ) -> AddedNode:
        return self._run(
            self._client.add_node(
                node_id,
                host,
                port,
                virtual_nodes,
                hold_at_cutover=hold_at_cutover,
                throttle_keys_per_second=throttle_keys_per_second,
            )
        )

    def migration(self, migration_id: str) -> MigrationStatus:
        return self._run(self._client.migration(migration_id))

    def cancel_migration(self, migration_id: str) -> str:
        return self._run(self._client.cancel_migration(migration_id))

    def rollback_migration(self, migration_id: str) -> str:
        return self._run(self._client.rollback_migration(migration_id))

    def pause_migration(self, migration_id: str, paused: bool = True) -> str:
        return self._run(self._client.pause_migration(migration_id, paused))

    def throttle_migration(self, migration_id: str, keys_per_second: int) -> str:
        return self._run(self._client.throttle_migration(migration_id, keys_per_second))

    def nodes(self) -> list[Node]:
        return self._run(self._client.nodes())

    def create_api_key(self, role: str, tenant_id: str = "", name: str = "") -> CreatedKey:
        return self._run(self._client.create_api_key(role, tenant_id, name))

    def api_keys(self) -> list[ApiKey]:
        return self._run(self._client.api_keys())

    def revoke_api_key(self, key_id: str) -> ApiKey:
        return self._run(self._client.revoke_api_key(key_id))

    def audit_events(self, limit: int = 50) -> list[AuditEvent]:
        return self._run(self._client.audit_events(limit))
