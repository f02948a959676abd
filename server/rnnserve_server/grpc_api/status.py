"""The one place where service errors become gRPC statuses.

`ErrorCode` shares google.rpc.Code's numbering, but the table is spelled out so that a renumbered
or added code fails loudly (test_grpc_status checks it covers every ErrorCode).
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.errors import ErrorCode, Internal, RnnServeError

log = logging.getLogger(__name__)

GRPC_CODES: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.OK: grpc.StatusCode.OK,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.UNKNOWN: grpc.StatusCode.UNKNOWN,
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
    ErrorCode.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    return GRPC_CODES[code]


def code_name(code: ErrorCode) -> str:
    """The gRPC status name used as the `code` label of request metrics ("OK", "NOT_FOUND")."""
    return GRPC_CODES[code].name


def as_service_error(exc: BaseException) -> RnnServeError:
    """Service errors pass through; anything else is a bug on our side: logged with its traceback
    and reported to the client as INTERNAL without internals."""
    if isinstance(exc, RnnServeError):
        return exc
    log.error("unexpected error while handling a request", exc_info=exc)
    return Internal(f"internal server error ({type(exc).__name__}); see the server log")


def status_proto(error: RnnServeError) -> pb.Status:
    """A per-request status inside Stream replies."""
    return pb.Status(code=int(error.code), message=error.message)


async def abort(
    context: grpc.aio.ServicerContext[object, object], error: RnnServeError
) -> NoReturn:
    """End a unary call with the error's mapped status and its message."""
    await context.abort(grpc_code(error.code), error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
