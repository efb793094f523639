"""pairdb: a multi-tenant replicated key-value store that grows its cluster online."""

import os
from typing import TYPE_CHECKING

# gRPC core logs an INFO line whenever a process with live channels forks (as a
# supervisor starting children does); keep its default output to errors.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# The client, imported on first use so that `pairdb.keyspace` and friends do not load grpc.
if TYPE_CHECKING:
    from pairdb.client import (
        AlreadyExists,
        Client,
        ClientError,
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        RetryPolicy,
        SyncClient,
        Unavailable,
    )

__all__ = [
    "AlreadyExists",
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "RetryPolicy",
    "SyncClient",
    "Unavailable",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from pairdb import client

        return getattr(client, name)
    raise AttributeError(f"module 'pairdb' has no attribute {name!r}")
