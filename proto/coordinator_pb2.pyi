from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    ONE: _ClassVar[Consistency]
    QUORUM: _ClassVar[Consistency]
    ALL: _ClassVar[Consistency]
CONSISTENCY_UNSPECIFIED: Consistency
ONE: Consistency
QUORUM: Consistency
ALL: Consistency

class WriteVersion(_message.Message):
    __slots__ = ("hlc", "origin")
    HLC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    hlc: int
    origin: int
    def __init__(self, hlc: _Optional[int] = ..., origin: _Optional[int] = ...) -> None: ...

class WriteKeyValueRequest(_message.Message):
    __slots__ = ("tenant_id", "key", "value", "consistency")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    value: bytes
    consistency: Consistency
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class WriteKeyValueResponse(_message.Message):
    __slots__ = ("version", "acknowledged")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    version: WriteVersion
    acknowledged: int
    def __init__(self, version: _Optional[_Union[WriteVersion, _Mapping]] = ..., acknowledged: _Optional[int] = ...) -> None: ...

class ReadKeyValueRequest(_message.Message):
    __slots__ = ("tenant_id", "key", "consistency")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    consistency: Consistency
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class ReadKeyValueResponse(_message.Message):
    __slots__ = ("found", "value", "version")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    version: WriteVersion
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[_Union[WriteVersion, _Mapping]] = ...) -> None: ...

class DeleteKeyValueRequest(_message.Message):
    __slots__ = ("tenant_id", "key", "consistency")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    consistency: Consistency
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class DeleteKeyValueResponse(_message.Message):
    __slots__ = ("version", "acknowledged")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    version: WriteVersion
    acknowledged: int
    def __init__(self, version: _Optional[_Union[WriteVersion, _Mapping]] = ..., acknowledged: _Optional[int] = ...) -> None: ...

class BatchWriteItem(_message.Message):
    __slots__ = ("tenant_id", "key", "value", "delete")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    value: bytes
    delete: bool
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ...) -> None: ...

class BatchWriteRequest(_message.Message):
    __slots__ = ("items", "consistency")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchWriteItem]
    consistency: Consistency
    def __init__(self, items: _Optional[_Iterable[_Union[BatchWriteItem, _Mapping]]] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class BatchWriteResult(_message.Message):
    __slots__ = ("code", "error", "version", "acknowledged")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    code: int
    error: str
    version: WriteVersion
    acknowledged: int
    def __init__(self, code: _Optional[int] = ..., error: _Optional[str] = ..., version: _Optional[_Union[WriteVersion, _Mapping]] = ..., acknowledged: _Optional[int] = ...) -> None: ...

class BatchWriteResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchWriteResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchWriteResult, _Mapping]]] = ...) -> None: ...

class BatchReadItem(_message.Message):
    __slots__ = ("tenant_id", "key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class BatchReadRequest(_message.Message):
    __slots__ = ("items", "consistency")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchReadItem]
    consistency: Consistency
    def __init__(self, items: _Optional[_Iterable[_Union[BatchReadItem, _Mapping]]] = ..., consistency: _Optional[_Union[Consistency, str]] = ...) -> None: ...

class BatchReadResult(_message.Message):
    __slots__ = ("code", "error", "found", "value", "version", "deferred")
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    code: int
    error: str
    found: bool
    value: bytes
    version: WriteVersion
    deferred: bool
    def __init__(self, code: _Optional[int] = ..., error: _Optional[str] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[_Union[WriteVersion, _Mapping]] = ..., deferred: _Optional[bool] = ...) -> None: ...

class BatchReadResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchReadResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchReadResult, _Mapping]]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "replication_factor", "gc_grace_seconds", "max_ops_per_second", "max_bytes")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    GC_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    replication_factor: int
    gc_grace_seconds: int
    max_ops_per_second: int
    max_bytes: int
    def __init__(self, tenant_id: _Optional[str] = ..., replication_factor: _Optional[int] = ..., gc_grace_seconds: _Optional[int] = ..., max_ops_per_second: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "replication_factor", "created_at", "gc_grace_seconds", "max_ops_per_second", "max_bytes", "stored_bytes")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    GC_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    replication_factor: int
    created_at: int
    gc_grace_seconds: int
    max_ops_per_second: int
    max_bytes: int
    stored_bytes: int
    def __init__(self, tenant_id: _Optional[str] = ..., replication_factor: _Optional[int] = ..., created_at: _Optional[int] = ..., gc_grace_seconds: _Optional[int] = ..., max_ops_per_second: _Optional[int] = ..., max_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class SetTenantLimitsRequest(_message.Message):
    __slots__ = ("tenant_id", "max_ops_per_second", "max_bytes")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    max_ops_per_second: int
    max_bytes: int
    def __init__(self, tenant_id: _Optional[str] = ..., max_ops_per_second: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class SetTenantLimitsResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class AddStorageNodeRequest(_message.Message):
    __slots__ = ("node_id", "host", "port", "virtual_nodes", "hold_at_cutover", "throttle_keys_per_second")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_NODES_FIELD_NUMBER: _ClassVar[int]
    HOLD_AT_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host: str
    port: int
    virtual_nodes: int
    hold_at_cutover: bool
    throttle_keys_per_second: int
    def __init__(self, node_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., virtual_nodes: _Optional[int] = ..., hold_at_cutover: _Optional[bool] = ..., throttle_keys_per_second: _Optional[int] = ...) -> None: ...

class AddStorageNodeResponse(_message.Message):
    __slots__ = ("success", "node_id", "migration_id", "message", "estimated_completion", "error_message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    node_id: str
    migration_id: str
    message: str
    estimated_completion: int
    error_message: str
    def __init__(self, success: _Optional[bool] = ..., node_id: _Optional[str] = ..., migration_id: _Optional[str] = ..., message: _Optional[str] = ..., estimated_completion: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class RemoveStorageNodeRequest(_message.Message):
    __slots__ = ("node_id", "dead", "hold_at_cutover", "throttle_keys_per_second")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    HOLD_AT_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    dead: bool
    hold_at_cutover: bool
    throttle_keys_per_second: int
    def __init__(self, node_id: _Optional[str] = ..., dead: _Optional[bool] = ..., hold_at_cutover: _Optional[bool] = ..., throttle_keys_per_second: _Optional[int] = ...) -> None: ...

class RingChangeResponse(_message.Message):
    __slots__ = ("success", "migration_id", "message", "workflow_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    migration_id: str
    message: str
    workflow_id: str
    def __init__(self, success: _Optional[bool] = ..., migration_id: _Optional[str] = ..., message: _Optional[str] = ..., workflow_id: _Optional[str] = ...) -> None: ...

class ReplaceStorageNodeRequest(_message.Message):
    __slots__ = ("dead_node_id", "node_id", "host", "port", "hold_at_cutover", "throttle_keys_per_second")
    DEAD_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOLD_AT_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    dead_node_id: str
    node_id: str
    host: str
    port: int
    hold_at_cutover: bool
    throttle_keys_per_second: int
    def __init__(self, dead_node_id: _Optional[str] = ..., node_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., hold_at_cutover: _Optional[bool] = ..., throttle_keys_per_second: _Optional[int] = ...) -> None: ...

class UpdateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "replication_factor", "hold_at_cutover", "throttle_keys_per_second")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    HOLD_AT_CUTOVER_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    replication_factor: int
    hold_at_cutover: bool
    throttle_keys_per_second: int
    def __init__(self, tenant_id: _Optional[str] = ..., replication_factor: _Optional[int] = ..., hold_at_cutover: _Optional[bool] = ..., throttle_keys_per_second: _Optional[int] = ...) -> None: ...

class RepairRequest(_message.Message):
    __slots__ = ("tenant_id", "throttle_keys_per_second")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    throttle_keys_per_second: int
    def __init__(self, tenant_id: _Optional[str] = ..., throttle_keys_per_second: _Optional[int] = ...) -> None: ...

class ScheduleRepairRequest(_message.Message):
    __slots__ = ("every_hours",)
    EVERY_HOURS_FIELD_NUMBER: _ClassVar[int]
    every_hours: int
    def __init__(self, every_hours: _Optional[int] = ...) -> None: ...

class ScheduleRepairResponse(_message.Message):
    __slots__ = ("schedule_id", "message")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    message: str
    def __init__(self, schedule_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("recent",)
    RECENT_FIELD_NUMBER: _ClassVar[int]
    recent: int
    def __init__(self, recent: _Optional[int] = ...) -> None: ...

class MigrationSummary(_message.Message):
    __slots__ = ("migration_id", "type", "subject", "status", "phase", "started_at", "workflow_id", "detail")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    type: str
    subject: str
    status: str
    phase: str
    started_at: int
    workflow_id: str
    detail: str
    def __init__(self, migration_id: _Optional[str] = ..., type: _Optional[str] = ..., subject: _Optional[str] = ..., status: _Optional[str] = ..., phase: _Optional[str] = ..., started_at: _Optional[int] = ..., workflow_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[MigrationSummary]
    def __init__(self, migrations: _Optional[_Iterable[_Union[MigrationSummary, _Mapping]]] = ...) -> None: ...

class StorageNode(_message.Message):
    __slots__ = ("node_id", "host", "port", "status", "virtual_nodes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_NODES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host: str
    port: int
    status: str
    virtual_nodes: int
    def __init__(self, node_id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., status: _Optional[str] = ..., virtual_nodes: _Optional[int] = ...) -> None: ...

class ListStorageNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStorageNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[StorageNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[StorageNode, _Mapping]]] = ...) -> None: ...

class MigrationProgress(_message.Message):
    __slots__ = ("keys_copied", "keys_total", "percent", "bytes_copied", "ranges_done", "ranges_total", "keys_per_second")
    KEYS_COPIED_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    RANGES_DONE_FIELD_NUMBER: _ClassVar[int]
    RANGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    keys_copied: int
    keys_total: int
    percent: float
    bytes_copied: int
    ranges_done: int
    ranges_total: int
    keys_per_second: float
    def __init__(self, keys_copied: _Optional[int] = ..., keys_total: _Optional[int] = ..., percent: _Optional[float] = ..., bytes_copied: _Optional[int] = ..., ranges_done: _Optional[int] = ..., ranges_total: _Optional[int] = ..., keys_per_second: _Optional[float] = ...) -> None: ...

class GetMigrationStatusRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class GetMigrationStatusResponse(_message.Message):
    __slots__ = ("workflow_id", "workflow_url", "paused", "throttle_keys_per_second", "success", "migration_id", "type", "node_id", "status", "started_at", "phase", "progress", "estimated_completion", "error_message")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_URL_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    workflow_url: str
    paused: bool
    throttle_keys_per_second: int
    success: bool
    migration_id: str
    type: str
    node_id: str
    status: str
    started_at: int
    phase: str
    progress: MigrationProgress
    estimated_completion: int
    error_message: str
    def __init__(self, workflow_id: _Optional[str] = ..., workflow_url: _Optional[str] = ..., paused: _Optional[bool] = ..., throttle_keys_per_second: _Optional[int] = ..., success: _Optional[bool] = ..., migration_id: _Optional[str] = ..., type: _Optional[str] = ..., node_id: _Optional[str] = ..., status: _Optional[str] = ..., started_at: _Optional[int] = ..., phase: _Optional[str] = ..., progress: _Optional[_Union[MigrationProgress, _Mapping]] = ..., estimated_completion: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class CancelMigrationRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class CancelMigrationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class RollbackMigrationRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class RollbackMigrationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class PauseMigrationRequest(_message.Message):
    __slots__ = ("migration_id", "paused")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    paused: bool
    def __init__(self, migration_id: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class PauseMigrationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ThrottleMigrationRequest(_message.Message):
    __slots__ = ("migration_id", "keys_per_second")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    keys_per_second: int
    def __init__(self, migration_id: _Optional[str] = ..., keys_per_second: _Optional[int] = ...) -> None: ...

class ThrottleMigrationResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "name", "role", "tenant_id", "created_at", "created_by", "revoked_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    role: str
    tenant_id: str
    created_at: int
    created_by: str
    revoked_at: int
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., tenant_id: _Optional[str] = ..., created_at: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_at: _Optional[int] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("role", "tenant_id", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    tenant_id: str
    name: str
    def __init__(self, role: _Optional[str] = ..., tenant_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key", "api_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    api_key: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "at", "principal", "role", "action", "target", "outcome", "message", "coordinator_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: int
    principal: str
    role: str
    action: str
    target: str
    outcome: str
    message: str
    coordinator_id: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[int] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., message: _Optional[str] = ..., coordinator_id: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...
