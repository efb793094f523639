"""pairdb: a multi-tenant replicated key-value store that grows its cluster online."""

from typing import TYPE_CHECKING

# The client, imported on first use so that the kernel and friends do not load grpc; importing
# pairdb changes nothing else (no environment, no logging).
if TYPE_CHECKING:
    from pairdb.client import (
        AlreadyExists,
        Client,
        ClientError,
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        RetryPolicy,
        SyncClient,
        Unauthenticated,
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
    "PermissionDenied",
    "RetryPolicy",
    "SyncClient",
    "Unauthenticated",
    "Unavailable",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from pairdb import client

        return getattr(client, name)
    raise AttributeError(f"module 'pairdb' has no attribute {name!r}")
