"""The client's exception tree, keyed on the gRPC status code.

Every error the library raises is an `RnnServeError` carrying `.code` (a `grpc.StatusCode`) and
`.details` (the server's message). Errors from a failed call chain the original `grpc.RpcError`
(`raise ... from rpc_error`); errors reported inside a Stream reply (per-message status) have no
RpcError to chain.

    RnnServeError
    ├── Cancelled                 CANCELLED
    ├── Unknown                   UNKNOWN (and any code without its own class)
    ├── InvalidArgument           INVALID_ARGUMENT
    ├── DeadlineExceeded          DEADLINE_EXCEEDED
    ├── NotFound                  NOT_FOUND
    ├── AlreadyExists             ALREADY_EXISTS
    ├── PermissionDenied          PERMISSION_DENIED
    ├── ResourceExhausted         RESOURCE_EXHAUSTED
    ├── FailedPrecondition        FAILED_PRECONDITION
    ├── Aborted                   ABORTED
    ├── OutOfRange                OUT_OF_RANGE
    ├── Unimplemented             UNIMPLEMENTED
    ├── Internal                  INTERNAL
    ├── Unavailable               UNAVAILABLE
    │   └── ReplyLost             (client-side) a chunk was applied but its reply was lost
    ├── DataLoss                  DATA_LOSS
    └── Unauthenticated           UNAUTHENTICATED
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ReplyLost",
    "ResourceExhausted",
    "RnnServeError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_from_code",
    "error_from_rpc",
]


class RnnServeError(Exception):
    """Base of every error raised by rnnserve_client."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class Cancelled(RnnServeError):
    code = grpc.StatusCode.CANCELLED


class Unknown(RnnServeError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RnnServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RnnServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RnnServeError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RnnServeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RnnServeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RnnServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RnnServeError):
    """Also raised when a chunk's `expected_step` does not match the session: `.step` then holds
    the step count the server reported (-1 if the session does not exist)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, details: str, *, code: grpc.StatusCode | None = None, step: int | None = None
    ) -> None:
        super().__init__(details, code=code)
        self.step = step


class Aborted(RnnServeError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(RnnServeError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RnnServeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RnnServeError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(RnnServeError):
    code = grpc.StatusCode.UNAVAILABLE


class ReplyLost(Unavailable):
    """The connection broke after the server applied a chunk but before its reply arrived.

    The server's step count proves the chunk was applied exactly once; its predictions cannot be
    recomputed without re-applying it, so they are lost. The session's step index has already
    been advanced to `step` (the server's count): the caller may carry on with the next chunk.
    """

    def __init__(self, details: str, *, step: int, lost_steps: int) -> None:
        super().__init__(details)
        self.step = step
        self.lost_steps = lost_steps


class DataLoss(RnnServeError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RnnServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[RnnServeError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_from_code(code: grpc.StatusCode | int, details: str) -> RnnServeError:
    """The exception for a status: a `grpc.StatusCode` or its numeric (google.rpc.Code) value."""
    status = code if isinstance(code, grpc.StatusCode) else _BY_VALUE.get(code)
    if status is None:
        return Unknown(f"{details} (status code {code})")
    cls = _BY_CODE.get(status, RnnServeError)
    return cls(details, code=status)


def error_from_rpc(error: grpc.RpcError) -> RnnServeError:
    """The exception for a failed call; the caller raises it `from error`."""
    # grpc.Call (sync) and grpc.aio.AioRpcError both offer code() and details().
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = details_of() if callable(details_of) else str(error)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_from_code(code, str(details or code.name))
