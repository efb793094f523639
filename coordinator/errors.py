"""Errors the coordinator's layers raise; service.py turns each into its gRPC status."""

from __future__ import annotations


class PairdbError(Exception):
    """Base: the message is what the client sees, so it says what to do."""


class InvalidArgument(PairdbError):
    pass


class NotFound(PairdbError):
    pass


class AlreadyExists(PairdbError):
    pass


class FailedPrecondition(PairdbError):
    pass


class Unavailable(PairdbError):
    pass
