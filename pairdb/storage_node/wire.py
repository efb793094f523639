"""Conversions between engine records and their protobuf form."""

from __future__ import annotations

from pairdb.kernel.keyspace import StoredRecord, Version
from pairdb.proto import storage_pb2


def to_proto(record: StoredRecord, with_token: bool = False) -> storage_pb2.Record:
    return storage_pb2.Record(
        tenant_id=record.tenant_id,
        key=record.key,
        value=record.value,
        version=storage_pb2.Version(hlc=record.version.hlc, origin=record.version.origin),
        tombstone=record.tombstone,
        token=record.token if with_token else 0,
    )


def from_proto(message: storage_pb2.Record) -> StoredRecord:
    return StoredRecord(
        tenant_id=message.tenant_id,
        key=message.key,
        value=message.value,
        version=Version(message.version.hlc, message.version.origin),
        tombstone=message.tombstone,
    )
