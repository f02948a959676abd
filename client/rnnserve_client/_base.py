"""What `Client` and `AsyncClient` share: their set-up and the pure parts of their calls.

The I/O (blocking or awaited) stays in each client; everything that does not wait lives here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from rnnserve_client import _builders as b
from rnnserve_client import _health
from rnnserve_client._errors import DeadlineExceeded, Unavailable, error_from_rpc
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:8001"
# Reconnect quickly after a cut (gRPC's default first backoff is 1 s); messages as large as the
# server's default limit.
DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The client's defaults followed by the caller's own options (later ones win)."""
    return [*DEFAULT_OPTIONS, *options]


def health_poll_timeout(seconds_left: float) -> float:
    """How long one health probe of `wait_until_ready` may wait: 0.1 to 1 s."""
    return max(0.1, min(1.0, seconds_left))


def unary_step_reply(req: pb.StepRequest, exc: grpc.RpcError) -> pb.StepResponse:
    """The reply the unary Step path stands in for a failed call (step count unknown); a broken
    connection is raised instead, so that the session resends."""
    err = error_from_rpc(exc)
    if isinstance(err, Unavailable):
        raise err from exc
    status = pb.Status(code=err.code.value[0], message=err.details)
    return pb.StepResponse(
        session_id=req.session_id,
        request_id=req.request_id,
        step=b.STEP_UNKNOWN,
        status=status,
    )


def frame_timeout(request_id: str, timeout: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"no reply to frame {request_id} in {timeout} s")


def chunk_timeout(request_id: str, timeout: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"no reply to chunk {request_id} within {timeout} s")


class ClientBase(Generic[ChannelT]):
    """Settings, stubs, the health callable and request ids of one client channel."""

    def __init__(
        self,
        channel: ChannelT,
        *,
        target: str,
        timeout: float,
        max_retries: int,
        retry_backoff: float,
        use_stream: bool,
        id_prefix: str,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.use_stream = use_stream
        self._channel: ChannelT = channel
        self._inference: Any = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        self._sessions: Any = pb_grpc.SessionsStub(channel)  # type: ignore[no-untyped-call]
        self._models: Any = pb_grpc.ModelsStub(channel)  # type: ignore[no-untyped-call]
        self._health: Any = channel.unary_unary(
            _health.HEALTH_CHECK,
            request_serializer=_health.identity,
            response_deserializer=_health.identity,
        )
        self._ids = itertools.count()
        self._id_prefix = f"{id_prefix}{os.getpid()}-{id(self):x}"
        self._closed = False

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")
