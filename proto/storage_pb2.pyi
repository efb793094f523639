from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Version(_message.Message):
    __slots__ = ("hlc", "origin")
    HLC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    hlc: int
    origin: int
    def __init__(self, hlc: _Optional[int] = ..., origin: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("tenant_id", "key", "value", "version", "tombstone", "token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    value: bytes
    version: Version
    tombstone: bool
    token: int
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[_Union[Version, _Mapping]] = ..., tombstone: _Optional[bool] = ..., token: _Optional[int] = ...) -> None: ...

class TokenRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("record", "epoch")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    record: Record
    epoch: int
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ..., epoch: _Optional[int] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("applied", "current", "same")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    SAME_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    current: Version
    same: bool
    def __init__(self, applied: _Optional[bool] = ..., current: _Optional[_Union[Version, _Mapping]] = ..., same: _Optional[bool] = ...) -> None: ...

class ApplyBatchRequest(_message.Message):
    __slots__ = ("records", "epoch")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    epoch: int
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class ApplyBatchResponse(_message.Message):
    __slots__ = ("applied", "load")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[bool]
    load: NodeLoad
    def __init__(self, applied: _Optional[_Iterable[bool]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class NodeLoad(_message.Message):
    __slots__ = ("client_ops_per_second", "scheduling_delay_ms")
    CLIENT_OPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    client_ops_per_second: float
    scheduling_delay_ms: float
    def __init__(self, client_ops_per_second: _Optional[float] = ..., scheduling_delay_ms: _Optional[float] = ...) -> None: ...

class ApplyManyRequest(_message.Message):
    __slots__ = ("records", "epoch", "entries")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    epoch: int
    entries: bytes
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., epoch: _Optional[int] = ..., entries: _Optional[bytes] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ApplyOutcome(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: ApplyResponse
    error: ItemError
    def __init__(self, result: _Optional[_Union[ApplyResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ApplyManyResponse(_message.Message):
    __slots__ = ("outcomes", "all_applied")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    ALL_APPLIED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ApplyOutcome]
    all_applied: bool
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ApplyOutcome, _Mapping]]] = ..., all_applied: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("tenant_id", "key", "epoch")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    epoch: int
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "record")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    found: bool
    record: Record
    def __init__(self, found: _Optional[bool] = ..., record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class RecordKey(_message.Message):
    __slots__ = ("tenant_id", "key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key: str
    def __init__(self, tenant_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetManyRequest(_message.Message):
    __slots__ = ("keys", "epoch")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[RecordKey]
    epoch: int
    def __init__(self, keys: _Optional[_Iterable[_Union[RecordKey, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetOutcome(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: GetResponse
    error: ItemError
    def __init__(self, result: _Optional[_Union[GetResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class GetManyResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[GetOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[GetOutcome, _Mapping]]] = ...) -> None: ...

class ScanRangeRequest(_message.Message):
    __slots__ = ("range", "batch_size", "include_tombstones", "epoch", "entries", "ranges", "at", "after")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    range: TokenRange
    batch_size: int
    include_tombstones: bool
    epoch: int
    entries: bool
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    at: int
    after: bytes
    def __init__(self, range: _Optional[_Union[TokenRange, _Mapping]] = ..., batch_size: _Optional[int] = ..., include_tombstones: _Optional[bool] = ..., epoch: _Optional[int] = ..., entries: _Optional[bool] = ..., ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., at: _Optional[int] = ..., after: _Optional[bytes] = ...) -> None: ...

class ScanRangeBatch(_message.Message):
    __slots__ = ("records", "load", "entries", "entry_count", "range")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    load: NodeLoad
    entries: bytes
    entry_count: int
    range: int
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., entries: _Optional[bytes] = ..., entry_count: _Optional[int] = ..., range: _Optional[int] = ...) -> None: ...

class PullRangesRequest(_message.Message):
    __slots__ = ("source_id", "source_address", "ranges", "at", "after", "epoch", "max_entries", "max_bytes", "batch_size")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    source_address: str
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    at: int
    after: bytes
    epoch: int
    max_entries: int
    max_bytes: int
    batch_size: int
    def __init__(self, source_id: _Optional[str] = ..., source_address: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., at: _Optional[int] = ..., after: _Optional[bytes] = ..., epoch: _Optional[int] = ..., max_entries: _Optional[int] = ..., max_bytes: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class RangePulled(_message.Message):
    __slots__ = ("range", "entries", "bytes", "applied")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    range: int
    entries: int
    bytes: int
    applied: int
    def __init__(self, range: _Optional[int] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., applied: _Optional[int] = ...) -> None: ...

class PullRangesResponse(_message.Message):
    __slots__ = ("pulled", "done", "next_at", "next_after", "load", "source_load")
    PULLED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NEXT_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LOAD_FIELD_NUMBER: _ClassVar[int]
    pulled: _containers.RepeatedCompositeFieldContainer[RangePulled]
    done: bool
    next_at: int
    next_after: bytes
    load: NodeLoad
    source_load: NodeLoad
    def __init__(self, pulled: _Optional[_Iterable[_Union[RangePulled, _Mapping]]] = ..., done: _Optional[bool] = ..., next_at: _Optional[int] = ..., next_after: _Optional[bytes] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ..., source_load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class RangeDigestRequest(_message.Message):
    __slots__ = ("range", "epoch", "count_only", "tenants")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    range: TokenRange
    epoch: int
    count_only: bool
    tenants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, range: _Optional[_Union[TokenRange, _Mapping]] = ..., epoch: _Optional[int] = ..., count_only: _Optional[bool] = ..., tenants: _Optional[_Iterable[str]] = ...) -> None: ...

class RangeDigestResponse(_message.Message):
    __slots__ = ("digest", "count", "load")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    count: int
    load: NodeLoad
    def __init__(self, digest: _Optional[bytes] = ..., count: _Optional[int] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class RangeDigestsRequest(_message.Message):
    __slots__ = ("ranges", "epoch", "count_only", "tenants")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[TokenRange]
    epoch: int
    count_only: bool
    tenants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ranges: _Optional[_Iterable[_Union[TokenRange, _Mapping]]] = ..., epoch: _Optional[int] = ..., count_only: _Optional[bool] = ..., tenants: _Optional[_Iterable[str]] = ...) -> None: ...

class RangeDigestsResponse(_message.Message):
    __slots__ = ("ranges", "load")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[RangeDigestResponse]
    load: NodeLoad
    def __init__(self, ranges: _Optional[_Iterable[_Union[RangeDigestResponse, _Mapping]]] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class DeleteRangeRequest(_message.Message):
    __slots__ = ("range", "epoch", "tenants")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    range: TokenRange
    epoch: int
    tenants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, range: _Optional[_Union[TokenRange, _Mapping]] = ..., epoch: _Optional[int] = ..., tenants: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRangeResponse(_message.Message):
    __slots__ = ("deleted", "load")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    load: NodeLoad
    def __init__(self, deleted: _Optional[int] = ..., load: _Optional[_Union[NodeLoad, _Mapping]] = ...) -> None: ...

class PurgeTombstonesRequest(_message.Message):
    __slots__ = ("range", "epoch", "cutoffs", "repaired_at")
    class CutoffsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CUTOFFS_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_AT_FIELD_NUMBER: _ClassVar[int]
    range: TokenRange
    epoch: int
    cutoffs: _containers.ScalarMap[str, int]
    repaired_at: int
    def __init__(self, range: _Optional[_Union[TokenRange, _Mapping]] = ..., epoch: _Optional[int] = ..., cutoffs: _Optional[_Mapping[str, int]] = ..., repaired_at: _Optional[int] = ...) -> None: ...

class PurgeTombstonesResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class SetFenceRequest(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class SetFenceResponse(_message.Message):
    __slots__ = ("fence",)
    FENCE_FIELD_NUMBER: _ClassVar[int]
    fence: int
    def __init__(self, fence: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("node_id", "keys", "bytes", "tombstones", "fence", "tombstones_purged", "repairs", "tenants")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_PURGED_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    keys: int
    bytes: int
    tombstones: int
    fence: int
    tombstones_purged: int
    repairs: _containers.RepeatedCompositeFieldContainer[RangeRepair]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantUsage]
    def __init__(self, node_id: _Optional[str] = ..., keys: _Optional[int] = ..., bytes: _Optional[int] = ..., tombstones: _Optional[int] = ..., fence: _Optional[int] = ..., tombstones_purged: _Optional[int] = ..., repairs: _Optional[_Iterable[_Union[RangeRepair, _Mapping]]] = ..., tenants: _Optional[_Iterable[_Union[TenantUsage, _Mapping]]] = ...) -> None: ...

class TenantUsage(_message.Message):
    __slots__ = ("tenant_id", "keys", "bytes")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    keys: int
    bytes: int
    def __init__(self, tenant_id: _Optional[str] = ..., keys: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class RangeRepair(_message.Message):
    __slots__ = ("range", "repaired_at_ms")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    range: TokenRange
    repaired_at_ms: int
    def __init__(self, range: _Optional[_Union[TokenRange, _Mapping]] = ..., repaired_at_ms: _Optional[int] = ...) -> None: ...
