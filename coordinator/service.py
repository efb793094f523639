"""CoordinatorService: the client and admin gRPC API. Thin: check input, call the layer, map errors."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from pairdb.coordinator import access, limits
from pairdb.coordinator.auth_store import CLIENT_ROLES, AuditEvent, AuthStore, KeyRecord
from pairdb.coordinator.authentication import Authenticator
from pairdb.coordinator.membership import ChangeOutcome, Membership
from pairdb.coordinator.metadata import Metadata, TenantInfo
from pairdb.coordinator.migrations import Migrations
from pairdb.coordinator.quotas import Quotas
from pairdb.coordinator.read_path import ReadPath, ReadResult
from pairdb.coordinator.repairs import Repairs
from pairdb.coordinator.topology import LeaseLapsed, TopologyCache
from pairdb.coordinator.write_path import Write, WritePath
from pairdb.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PairdbError,
    ResourceExhausted,
)
from pairdb.kernel.keyspace import DEFAULT_REPLICATION_FACTOR, MAX_BATCH_VALUE_BYTES, MAX_VALUE_BYTES, Version
from pairdb.kernel.migration import TERMINAL, Status
from pairdb.kernel.repair import DEFAULT_GC_GRACE_SECONDS, DEFAULT_INTERVAL_HOURS, SCHEDULE_ID
from pairdb.proto import coordinator_pb2 as pb
from pairdb.proto import coordinator_pb2_grpc
from pairdb.security.roles import Role
from pairdb.serving.interception import ServicerContext

log = structlog.get_logger()

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, ServicerContext], Awaitable[Resp]]

# Keys a batch read asks the replicas for before it knows its values' size: as many as
# fit one reply even at the largest value, so a batch of large values reads little more
# than its replies carry. Later rounds ask for as many as the mean size read so far fills.
FIRST_READ_KEYS = MAX_BATCH_VALUE_BYTES // MAX_VALUE_BYTES


def rpc(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn pairdb errors into gRPC statuses with their messages."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except PairdbError as exc:
            await context.abort(grpc.StatusCode[exc.status], exc.message)
        except LeaseLapsed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def _version(v: Version | None) -> pb.WriteVersion:
    return pb.WriteVersion() if v is None else pb.WriteVersion(hlc=v.hlc, origin=v.origin)


def _found(result: pb.BatchReadResult, outcome: ReadResult) -> None:
    result.found, result.value = outcome.found, outcome.value
    version = result.version
    version.SetInParent()  # present even when empty, as a single read's is
    if outcome.version is not None:
        version.hlc, version.origin = outcome.version.hlc, outcome.version.origin


def _defer(result: pb.BatchReadResult) -> None:
    # A reply carries a batch's worth of values, as a BatchWrite request does.
    full = f"this reply is full ({MAX_BATCH_VALUE_BYTES // (1024 * 1024)} MiB of values)"
    _fail(result, ResourceExhausted(f"{full}: read the key again"))
    result.deferred = True


def _write(item: pb.BatchWriteItem) -> Write:
    tenant_id, key = limits.tenant_id(item.tenant_id), limits.key(item.key)
    if item.delete and item.value:
        raise InvalidArgument("a delete carries no value: leave value empty")
    return Write(tenant_id, key, limits.value(item.value), item.delete)


def _fail(result: pb.BatchWriteResult | pb.BatchReadResult, exc: PairdbError) -> None:
    result.code, result.error = grpc.StatusCode[exc.status].value[0], exc.message


def _tenant(info: TenantInfo, stored_bytes: int | None = None) -> pb.Tenant:
    tenant = pb.Tenant(
        tenant_id=info.tenant_id,
        replication_factor=info.replication_factor,
        created_at=int(info.created_at.timestamp()),
        gc_grace_seconds=info.gc_grace_seconds,
        max_ops_per_second=info.max_ops_per_second,
        max_bytes=info.max_bytes,
    )
    if stored_bytes is not None:
        tenant.stored_bytes = stored_bytes
    return tenant


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        cache: TopologyCache,
        metadata: Metadata,
        writes: WritePath,
        reads: ReadPath,
        membership: Membership,
        migrations: Migrations,
        repairs: Repairs,
        quotas: Quotas,
        auth: AuthStore,
        authenticator: Authenticator,
    ) -> None:
        self._quotas = quotas
        self._auth = auth
        self._authenticator = authenticator
        self._migrations = migrations
        self._repairs = repairs
        self._cache = cache
        self._metadata = metadata
        self._writes = writes
        self._reads = reads
        self._membership = membership

    # -- data --------------------------------------------------------------------

    @rpc
    async def WriteKeyValue(
        self, request: pb.WriteKeyValueRequest, context: ServicerContext
    ) -> pb.WriteKeyValueResponse:
        tenant_id, key = limits.tenant_id(request.tenant_id), limits.key(request.key)
        value, level = limits.value(request.value), limits.consistency(request.consistency)
        self._quotas.admit(tenant_id)
        self._quotas.check_storage(tenant_id)
        result = await self._writes.put(
            tenant_id, key, value, level
        )  # pinned: the lease is checked then, and before replying
        return pb.WriteKeyValueResponse(version=_version(result.version), acknowledged=result.acknowledged)

    @rpc
    async def ReadKeyValue(
        self, request: pb.ReadKeyValueRequest, context: ServicerContext
    ) -> pb.ReadKeyValueResponse:
        tenant_id, key = limits.tenant_id(request.tenant_id), limits.key(request.key)
        level = limits.consistency(request.consistency)
        self._quotas.admit(tenant_id)
        result = await self._reads.get(
            tenant_id, key, level
        )  # pinned: the lease is checked then, and before replying
        return pb.ReadKeyValueResponse(
            found=result.found, value=result.value, version=_version(result.version)
        )

    @rpc
    async def DeleteKeyValue(
        self, request: pb.DeleteKeyValueRequest, context: ServicerContext
    ) -> pb.DeleteKeyValueResponse:
        tenant_id, key = limits.tenant_id(request.tenant_id), limits.key(request.key)
        level = limits.consistency(request.consistency)
        self._quotas.admit(tenant_id)  # rate only: a delete is how a tenant gets back under its quota
        result = await self._writes.delete(
            tenant_id, key, level
        )  # pinned: the lease is checked then, and before replying
        return pb.DeleteKeyValueResponse(version=_version(result.version), acknowledged=result.acknowledged)

    @rpc
    async def BatchWrite(
        self, request: pb.BatchWriteRequest, context: ServicerContext
    ) -> pb.BatchWriteResponse:
        limits.batch(len(request.items), sum(len(item.value) for item in request.items))
        level = limits.consistency(request.consistency)
        # Results added in place: built apart, the response copied every one of them in.
        response = pb.BatchWriteResponse()
        results = [response.results.add() for _ in request.items]
        writes: list[Write] = []
        valid: list[int] = []
        for i, item in enumerate(request.items):
            try:
                writes.append(_write(item))
                valid.append(i)
            except PairdbError as exc:
                _fail(results[i], exc)
        writes, valid = self._within_limits(writes, valid, results)
        for i, outcome in zip(valid, await self._writes.put_many(writes, level), strict=True):
            result = results[i]
            if isinstance(outcome, PairdbError):
                _fail(result, outcome)
            else:
                version = result.version
                version.hlc, version.origin = outcome.version.hlc, outcome.version.origin
                result.acknowledged = outcome.acknowledged
        return response

    @rpc
    async def BatchRead(self, request: pb.BatchReadRequest, context: ServicerContext) -> pb.BatchReadResponse:
        limits.batch(len(request.items))
        level = limits.consistency(request.consistency)
        response = pb.BatchReadResponse()
        results = [response.results.add() for _ in request.items]
        keys: list[tuple[str, str]] = []
        valid: list[int] = []
        for i, item in enumerate(request.items):
            try:
                keys.append((limits.tenant_id(item.tenant_id), limits.key(item.key)))
                valid.append(i)
            except PairdbError as exc:
                _fail(results[i], exc)
        admitted = self._admitted([tenant for tenant, _ in keys], valid, results)
        kept = [(k, i) for k, i in zip(keys, valid, strict=True) if k[0] in admitted]
        keys, valid = [k for k, _ in kept], [i for _, i in kept]
        size = read = 0  # bytes in the reply; value bytes read
        start, count = 0, FIRST_READ_KEYS
        while start < len(keys) and size < MAX_BATCH_VALUE_BYTES:
            chunk = slice(start, start + count)
            full = False
            for i, outcome in zip(valid[chunk], await self._reads.get_many(keys[chunk], level), strict=True):
                if isinstance(outcome, PairdbError):
                    _fail(results[i], outcome)
                    continue
                read += len(outcome.value)
                if size and size + len(outcome.value) > MAX_BATCH_VALUE_BYTES:
                    _defer(results[i])
                    full = True
                else:
                    size += len(outcome.value)
                    _found(results[i], outcome)
            start = min(start + count, len(keys))
            if full:
                break
            # Enough keys, at the mean size read so far, to fill what is left of the reply.
            mean = read / start
            count = int((MAX_BATCH_VALUE_BYTES - size) / mean) + 1 if mean else len(keys)
        for i in valid[start:]:
            _defer(results[i])  # left unread: the client asks again
        return response

    def _admitted(
        self,
        tenant_ids: list[str],
        positions: list[int],
        results: list[pb.BatchWriteResult] | list[pb.BatchReadResult],
    ) -> set[str]:
        """The tenants whose items (tenant_ids[j] at results[positions[j]]) fit their rate; the
        others' items fail RESOURCE_EXHAUSTED."""
        refused: dict[str, PairdbError] = {}
        for tenant_id, n in Counter(tenant_ids).items():
            try:
                self._quotas.admit(tenant_id, n)
            except PairdbError as exc:
                refused[tenant_id] = exc
        for tenant_id, i in zip(tenant_ids, positions, strict=True):
            if tenant_id in refused:
                _fail(results[i], refused[tenant_id])
        return set(tenant_ids) - refused.keys()

    def _within_limits(
        self, writes: list[Write], positions: list[int], results: list[pb.BatchWriteResult]
    ) -> tuple[list[Write], list[int]]:
        """A batch's writes that fit their tenants' rate and storage quota; the others fail."""
        admitted = self._admitted([w.tenant_id for w in writes], positions, results)
        over: dict[str, PairdbError] = {}
        for tenant_id, n in Counter(w.tenant_id for w in writes if not w.tombstone).items():
            if tenant_id in admitted:
                try:
                    self._quotas.check_storage(tenant_id, n)
                except PairdbError as exc:
                    over[tenant_id] = exc
        kept: tuple[list[Write], list[int]] = ([], [])
        for write, i in zip(writes, positions, strict=True):
            if write.tenant_id not in admitted:
                continue
            if not write.tombstone and write.tenant_id in over:
                _fail(results[i], over[write.tenant_id])
                continue
            kept[0].append(write)
            kept[1].append(i)
        return kept

    # -- tenants -----------------------------------------------------------------

    @rpc
    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: ServicerContext
    ) -> pb.CreateTenantResponse:
        tenant_id = limits.tenant_id(request.tenant_id)
        rf = limits.replication_factor(request.replication_factor or DEFAULT_REPLICATION_FACTOR)
        self._cache.check_lease()
        active = len((await self._cache.refresh()).ring.node_ids)
        if rf > active:
            raise FailedPrecondition(
                f"replication_factor {rf} needs at least {rf} active storage nodes; the cluster has {active}"
            )
        grace = limits.gc_grace(
            request.gc_grace_seconds if request.HasField("gc_grace_seconds") else DEFAULT_GC_GRACE_SECONDS
        )
        ops = limits.max_ops_per_second(request.max_ops_per_second)
        quota = limits.max_bytes(request.max_bytes)
        info = await self._metadata.create_tenant(tenant_id, rf, grace, ops, quota)
        self._cache.tenant_created(tenant_id)
        log.info(
            "Tenant created",
            tenant_id=tenant_id,
            replication_factor=rf,
            gc_grace_seconds=grace,
            max_ops_per_second=ops,
            max_bytes=quota,
        )
        return pb.CreateTenantResponse(tenant=_tenant(info))

    @rpc
    async def GetTenant(self, request: pb.GetTenantRequest, context: ServicerContext) -> pb.GetTenantResponse:
        tenant_id = limits.tenant_id(request.tenant_id)
        info = await self._cache.tenant(tenant_id)
        if info is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        return pb.GetTenantResponse(tenant=_tenant(info, self._quotas.stored_bytes(tenant_id)))

    @rpc
    async def SetTenantLimits(
        self, request: pb.SetTenantLimitsRequest, context: ServicerContext
    ) -> pb.SetTenantLimitsResponse:
        """Admin only: change a tenant's rate and storage limits (unset: unchanged; 0: unlimited)."""
        tenant_id = limits.tenant_id(request.tenant_id)
        ops = (
            limits.max_ops_per_second(request.max_ops_per_second)
            if request.HasField("max_ops_per_second")
            else None
        )
        quota = limits.max_bytes(request.max_bytes) if request.HasField("max_bytes") else None
        self._cache.check_lease()
        info = await self._metadata.set_tenant_limits(tenant_id, ops, quota)
        if info is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        await self._cache.refresh()  # in force here at once; elsewhere on the registry's NOTIFY
        log.info(
            "Tenant limits set",
            tenant_id=tenant_id,
            max_ops_per_second=info.max_ops_per_second,
            max_bytes=info.max_bytes,
            by=_peer(context),
        )
        return pb.SetTenantLimitsResponse(tenant=_tenant(info, self._quotas.stored_bytes(tenant_id)))

    # -- nodes and migrations --------------------------------------------------------

    @rpc
    async def AddStorageNode(
        self, request: pb.AddStorageNodeRequest, context: ServicerContext
    ) -> pb.AddStorageNodeResponse:
        node_id = limits.node_id(request.node_id)
        host, port = limits.host_port(request.host, request.port)
        self._cache.check_lease()
        outcome = await self._membership.add(
            node_id,
            host,
            port,
            request.virtual_nodes or None,
            _peer(context),
            hold_at_cutover=request.hold_at_cutover,
            throttle=limits.throttle(request.throttle_keys_per_second),
        )
        eta = int(outcome.estimated_completion.timestamp()) if outcome.estimated_completion else 0
        return pb.AddStorageNodeResponse(
            success=True,
            node_id=node_id,
            migration_id=outcome.migration_id,
            message=outcome.message,
            estimated_completion=eta,
        )

    @rpc
    async def ListStorageNodes(
        self, request: pb.ListStorageNodesRequest, context: ServicerContext
    ) -> pb.ListStorageNodesResponse:
        nodes = await self._metadata.list_nodes()
        return pb.ListStorageNodesResponse(
            nodes=[
                pb.StorageNode(
                    node_id=n.node_id,
                    host=n.host,
                    port=n.port,
                    status=n.status,
                    virtual_nodes=n.virtual_nodes,
                )
                for n in nodes
            ]
        )

    @rpc
    async def RemoveStorageNode(
        self, request: pb.RemoveStorageNodeRequest, context: ServicerContext
    ) -> pb.RingChangeResponse:
        node_id = limits.node_id(request.node_id)
        self._cache.check_lease()
        outcome = await self._membership.remove(
            node_id,
            dead=request.dead,
            started_by=_peer(context),
            hold_at_cutover=request.hold_at_cutover,
            throttle=limits.throttle(request.throttle_keys_per_second),
        )
        return _ring_change(outcome)

    @rpc
    async def ReplaceStorageNode(
        self, request: pb.ReplaceStorageNodeRequest, context: ServicerContext
    ) -> pb.RingChangeResponse:
        dead_id = limits.node_id(request.dead_node_id)
        node_id = limits.node_id(request.node_id)
        if dead_id == node_id:
            raise InvalidArgument("the replacement needs a new node id, not the dead node's")
        host, port = limits.host_port(request.host, request.port)
        self._cache.check_lease()
        outcome = await self._membership.replace(
            dead_id,
            node_id,
            host,
            port,
            started_by=_peer(context),
            hold_at_cutover=request.hold_at_cutover,
            throttle=limits.throttle(request.throttle_keys_per_second),
        )
        return _ring_change(outcome)

    @rpc
    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, context: ServicerContext
    ) -> pb.RingChangeResponse:
        tenant_id = limits.tenant_id(request.tenant_id)
        rf = limits.replication_factor(request.replication_factor)
        self._cache.check_lease()
        outcome = await self._membership.set_replication_factor(
            tenant_id,
            rf,
            started_by=_peer(context),
            hold_at_cutover=request.hold_at_cutover,
            throttle=limits.throttle(request.throttle_keys_per_second),
        )
        return _ring_change(outcome)

    @rpc
    async def Repair(self, request: pb.RepairRequest, context: ServicerContext) -> pb.RingChangeResponse:
        tenant_id = limits.tenant_id(request.tenant_id) if request.tenant_id else ""
        if tenant_id and await self._cache.tenant(tenant_id) is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        repair_id = await self._repairs.start(
            tenant_id, limits.throttle(request.throttle_keys_per_second), _peer(context)
        )
        scope = f"tenant {tenant_id}" if tenant_id else "every tenant"
        return pb.RingChangeResponse(
            success=True,
            migration_id=repair_id,
            workflow_id=repair_id,
            message=f"repairing {scope}: `pairdb migration status {repair_id}` shows its progress",
        )

    @rpc
    async def ScheduleRepair(
        self, request: pb.ScheduleRepairRequest, context: ServicerContext
    ) -> pb.ScheduleRepairResponse:
        message = await self._repairs.schedule(request.every_hours or DEFAULT_INTERVAL_HOURS)
        return pb.ScheduleRepairResponse(schedule_id=SCHEDULE_ID, message=message)

    @rpc
    async def ListMigrations(
        self, request: pb.ListMigrationsRequest, context: ServicerContext
    ) -> pb.ListMigrationsResponse:
        rows = await self._migrations.listing(request.recent or 20)
        return pb.ListMigrationsResponse(
            migrations=[
                pb.MigrationSummary(
                    migration_id=r.migration_id,
                    type=r.type,
                    subject=r.subject,
                    status=r.status,
                    phase=r.phase,
                    started_at=int(r.started_at.timestamp()),
                    workflow_id=r.workflow_id,
                    detail=r.detail,
                )
                for r in rows
            ]
        )

    @rpc
    async def GetMigrationStatus(
        self, request: pb.GetMigrationStatusRequest, context: ServicerContext
    ) -> pb.GetMigrationStatusResponse:
        row = await self._migrations.get(limits.migration_id(request.migration_id))
        control = await self._migrations.control(row)
        p = row.progress
        ended = row.status in TERMINAL
        return pb.GetMigrationStatusResponse(
            success=True,
            migration_id=row.migration_id,
            type=row.type,
            node_id=row.node_id,
            status=row.status,
            phase=row.phase,
            started_at=int(row.started_at.timestamp()),
            progress=pb.MigrationProgress(
                keys_copied=int(p.get("keys_copied", 0)),
                keys_total=int(p.get("keys_total", 0)),
                percent=100.0 if row.status == Status.COMPLETED else float(p.get("percent", 0.0)),
                bytes_copied=int(p.get("bytes_copied", 0)),
                ranges_done=int(p.get("ranges_done", 0)),
                ranges_total=int(p.get("ranges_total", 0)),
                # An ended migration copies nothing: no rate left over from its last checkpoint.
                keys_per_second=0.0 if ended else float(p.get("keys_per_second", 0.0)),
            ),
            estimated_completion=(
                int(row.estimated_completion.timestamp()) if row.estimated_completion and not ended else 0
            ),
            error_message=row.error,
            workflow_id=row.workflow_id,
            workflow_url=self._migrations.workflow_url(row.workflow_id),
            paused=control.paused,
            throttle_keys_per_second=control.throttle_keys_per_second,
        )

    @rpc
    async def CancelMigration(
        self, request: pb.CancelMigrationRequest, context: ServicerContext
    ) -> pb.CancelMigrationResponse:
        message = await self._migrations.cancel(limits.migration_id(request.migration_id))
        return pb.CancelMigrationResponse(success=True, message=message)

    @rpc
    async def RollbackMigration(
        self, request: pb.RollbackMigrationRequest, context: ServicerContext
    ) -> pb.RollbackMigrationResponse:
        message = await self._migrations.rollback(limits.migration_id(request.migration_id))
        return pb.RollbackMigrationResponse(success=True, message=message)

    @rpc
    async def PauseMigration(
        self, request: pb.PauseMigrationRequest, context: ServicerContext
    ) -> pb.PauseMigrationResponse:
        message = await self._migrations.pause(limits.migration_id(request.migration_id), request.paused)
        return pb.PauseMigrationResponse(success=True, message=message)

    @rpc
    async def ThrottleMigration(
        self, request: pb.ThrottleMigrationRequest, context: ServicerContext
    ) -> pb.ThrottleMigrationResponse:
        message = await self._migrations.throttle(
            limits.migration_id(request.migration_id), limits.throttle(request.keys_per_second)
        )
        return pb.ThrottleMigrationResponse(success=True, message=message)

    # -- API keys and the audit log ----------------------------------------------------

    @rpc
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: ServicerContext
    ) -> pb.CreateApiKeyResponse:
        roles = ", ".join(r.value for r in CLIENT_ROLES)
        try:
            role = Role(request.role)
        except ValueError:
            raise InvalidArgument(f"role must be one of {roles}, not {request.role!r}") from None
        if role not in CLIENT_ROLES:
            raise InvalidArgument(f"role must be one of {roles}, not {request.role!r}")
        tenant_id: str | None = None
        if role.tenant_scoped:
            if not request.tenant_id:
                raise InvalidArgument(f"a {role} key is for one tenant: name it")
            tenant_id = limits.tenant_id(request.tenant_id)
            if await self._cache.tenant(tenant_id) is None:
                raise NotFound(f"tenant {tenant_id!r} does not exist: create it first")
        elif request.tenant_id:
            raise InvalidArgument("an admin key is for the whole cluster: leave the tenant out")
        if len(request.name) > 200:
            raise InvalidArgument("a key's name is at most 200 characters")
        creator = access.current()
        record, token = await self._auth.create_key(
            role, tenant_id, request.name, creator.name if creator else ""
        )
        log.info("API key created", key_id=record.key_id, role=role.value, tenant_id=tenant_id or "")
        return pb.CreateApiKeyResponse(key=_api_key(record), api_key=token)

    @rpc
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: ServicerContext
    ) -> pb.ListApiKeysResponse:
        return pb.ListApiKeysResponse(keys=[_api_key(k) for k in await self._auth.keys()])

    @rpc
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        if not request.key_id:
            raise InvalidArgument("name the key to revoke (its id, as `pairdb key list` shows)")
        record = await self._auth.revoke(request.key_id)
        # At once here; other coordinators drop it within authentication.KEY_TTL.
        self._authenticator.forget(record.key_id)
        log.info("API key revoked", key_id=record.key_id)
        return pb.RevokeApiKeyResponse(key=_api_key(record))

    @rpc
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: ServicerContext
    ) -> pb.ListAuditEventsResponse:
        limit = request.limit or 50
        if limit > 1000:
            raise InvalidArgument("limit is at most 1000")
        return pb.ListAuditEventsResponse(events=[_audit_event(e) for e in await self._auth.events(limit)])


def _api_key(record: KeyRecord) -> pb.ApiKey:
    return pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        role=record.role.value,
        tenant_id=record.tenant_id or "",
        created_at=int(record.created_at.timestamp()),
        created_by=record.created_by,
        revoked_at=int(record.revoked_at.timestamp()) if record.revoked_at else 0,
    )


def _audit_event(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=event.id,
        at=int(event.at.timestamp() * 1000) if event.at else 0,
        principal=event.principal,
        role=event.role,
        action=event.action,
        target=json.dumps(event.target, sort_keys=True),
        outcome=event.outcome,
        message=event.message,
        coordinator_id=event.coordinator_id,
    )


def _ring_change(outcome: ChangeOutcome) -> pb.RingChangeResponse:
    return pb.RingChangeResponse(
        success=True,
        migration_id=outcome.migration_id,
        message=outcome.message,
        workflow_id=outcome.workflow_id,
    )


def _peer(context: ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:
        return ""
