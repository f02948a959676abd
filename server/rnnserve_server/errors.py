"""Protocol-neutral errors. The service layer raises these; each front end maps ErrorCode to its
own status in exactly one place (grpc_api/status.py for gRPC)."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Same numbering as google.rpc.Code, so the mapping to gRPC is the identity on values."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class RnnServeError(Exception):
    """Base of every error a client may see. `message` is written for a person."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(RnnServeError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(RnnServeError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(RnnServeError):
    code = ErrorCode.ALREADY_EXISTS


class ResourceExhausted(RnnServeError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RnnServeError):
    code = ErrorCode.FAILED_PRECONDITION


class Unavailable(RnnServeError):
    code = ErrorCode.UNAVAILABLE


class Internal(RnnServeError):
    code = ErrorCode.INTERNAL
