"""What crosses the wire between a storage node and its callers: records in their protobuf form,
and the trailing metadata that says more of a refusal."""

from __future__ import annotations

from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.proto import storage_pb2

# A fence refusal (ABORTED): the fence the request ran into.
FENCE_METADATA = "pairdb-fence"
# A PullRanges failure on the source's side: the source's node id (the call's status is its failure).
FAILED_NODE_METADATA = "pairdb-failed-node"

# Both run once per record per replica: positional arguments and the nested version set in
# place measured about half the time of keyword construction.


def to_proto(record: StoredRecord, with_token: bool = False) -> storage_pb2.Record:
    message = storage_pb2.Record(
        tenant_id=record.tenant_id,
        key=record.key,
        value=record.value,
        tombstone=record.tombstone,
        token=record.token if with_token else 0,
    )
    version = message.version
    version.hlc, version.origin = record.version.hlc, record.version.origin
    return message


def from_proto(message: storage_pb2.Record) -> StoredRecord:
    version = message.version
    return StoredRecord(
        message.tenant_id, message.key, message.value, Version(version.hlc, version.origin), message.tombstone
    )
