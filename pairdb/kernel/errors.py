"""The errors pairdb reports, each named after the gRPC status it travels as.

Defined once for both sides: servers raise them and map `status` onto the
wire; the client raises them again (as ClientError subclasses that carry the
gRPC code). The message always says what to do.
"""

from __future__ import annotations

from typing import ClassVar


class PairdbError(Exception):
    status: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PairdbError):
    """A bad tenant id, key, value, consistency level, replication factor or node address."""

    status = "INVALID_ARGUMENT"


class NotFound(PairdbError):
    """An unknown tenant or migration."""

    status = "NOT_FOUND"


class AlreadyExists(PairdbError):
    """A tenant or node that exists already."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(PairdbError):
    """Not possible in the current state (say, rollback outside cutover)."""

    status = "FAILED_PRECONDITION"


class Unavailable(PairdbError):
    """Too few replicas answered, a server is unreachable, or a coordinator's lease lapsed."""

    status = "UNAVAILABLE"


class ResourceExhausted(PairdbError):
    """Over a limit: a tenant's request rate or storage quota, or a server's concurrent RPCs."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(PairdbError):
    """The caller's deadline passed before an answer."""

    status = "DEADLINE_EXCEEDED"


class Unauthenticated(PairdbError):
    """No credentials, or an unknown, revoked or malformed API key."""

    status = "UNAUTHENTICATED"


class PermissionDenied(PairdbError):
    """Credentials that do not allow this call (another tenant's, read-only, not admin)."""

    status = "PERMISSION_DENIED"
