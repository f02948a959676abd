"""The synchronous client: one channel, one multiplexed Stream, and the admin calls."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, Self

import grpc
import numpy.typing as npt

from rnnserve_client import _builders as b
from rnnserve_client import _health
from rnnserve_client._base import (
    DEFAULT_OPTIONS,
    DEFAULT_TARGET,
    ClientBase,
    channel_options,
    chunk_timeout,
    frame_timeout,
    health_poll_timeout,
    unary_step_reply,
)
from rnnserve_client._errors import DeadlineExceeded, error_from_rpc
from rnnserve_client._sync_stream import StreamMux
from rnnserve_client._types import FrameResult, ModelInfo, SessionInfo, SessionSnapshot
from rnnserve_client.session import Session
from rnnserve_proto import model_repository_pb2 as repo_pb
from rnnserve_proto import rnnserve_pb2 as pb

__all__ = ["DEFAULT_OPTIONS", "DEFAULT_TARGET", "Client"]


class Client(ClientBase[grpc.Channel]):
    """A connection to an rnnserve server.

    All sessions created from one client share its channel and one bidirectional Stream (replies
    are routed by request_id). Use as a context manager, or call `close()`.

    Args:
        target: "host:port" of the gRPC server.
        timeout: seconds each call (and each chunk's reply) may take.
        max_retries: how often a session re-sends a chunk after the connection broke
            (UNAVAILABLE); the step index makes each resend safe.
        retry_backoff: first pause between retries in seconds (doubles, at most 2 s).
        use_stream: send chunks over the shared Stream (default) or as unary Step calls.
        options: extra gRPC channel options (added to DEFAULT_OPTIONS).
        credentials: channel credentials for TLS; None for a plaintext channel.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry_backoff: float = 0.1,
        use_stream: bool = True,
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        opts = channel_options(options)
        channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        super().__init__(
            channel,
            target=target,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            use_stream=use_stream,
            id_prefix="c",
        )
        self._mux = StreamMux(self._inference)

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the stream and the channel (server-side sessions stay alive)."""
        if not self._closed:
            self._closed = True
            self._mux.close()
            self._channel.close()

    def health(self, service: str = "") -> str:
        """The server's grpc.health.v1 status name: "SERVING", "NOT_SERVING", ..."""
        raw = self._call(self._health, _health.encode_request(service))
        return _health.status_name(_health.decode_status(raw))

    def wait_until_ready(self, timeout: float = 30.0, service: str = "") -> None:
        """Block until the server reports SERVING; DeadlineExceeded after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = _health.status_name(
                    _health.decode_status(
                        self._health(
                            _health.encode_request(service),
                            timeout=health_poll_timeout(deadline - time.monotonic()),
                            wait_for_ready=True,
                        )
                    )
                )
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = error_from_rpc(exc).code.name
            time.sleep(0.1)
        raise DeadlineExceeded(f"{self.target} not SERVING after {timeout} s (last: {last})")

    # -- sessions ---------------------------------------------------------------------------------
    def session(self, model: str, *, session_id: str | None = None, version: int = 0) -> Session:
        """A new session of `model` (created on the server by its first chunk, which resets any
        live session with the same id). `session_id` defaults to a random one."""
        return Session(self, model=model, version=version, session_id=session_id)

    def attach(self, session_id: str) -> Session:
        """A Session object for a session that already lives on the server."""
        info = self.get_session(session_id)
        return Session(
            self,
            model=info.model,
            version=info.version,
            session_id=session_id,
            started=True,
            step=info.step,
        )

    def get_session(self, session_id: str) -> SessionInfo:
        msg = self._call(self._sessions.GetSession, pb.SessionRef(session_id=session_id))
        return b.session_info(msg)

    def list_sessions(self, model: str | None = None, limit: int = 0) -> list[SessionInfo]:
        """Live sessions (of one model, or all), at most `limit` (0 = all)."""
        msg = self._call(self._sessions.ListSessions, b.list_sessions_request(model, limit))
        return [b.session_info(s) for s in msg.sessions]

    def reset_session(self, session_id: str) -> SessionInfo:
        return b.session_info(
            self._call(self._sessions.ResetSession, pb.SessionRef(session_id=session_id))
        )

    def close_session(self, session_id: str) -> SessionInfo:
        """Free a session; returns it as it was when closed."""
        msg = self._call(self._sessions.CloseSession, pb.SessionRef(session_id=session_id))
        return b.session_info(msg.session)

    def export_session(self, session_id: str) -> SessionSnapshot:
        msg = self._call(self._sessions.ExportSession, pb.SessionRef(session_id=session_id))
        return b.snapshot_from_pb(msg)

    def import_session(self, snapshot: SessionSnapshot, *, overwrite: bool = False) -> SessionInfo:
        req = pb.ImportSessionRequest(snapshot=b.snapshot_to_pb(snapshot), overwrite=overwrite)
        return b.session_info(self._call(self._sessions.ImportSession, req))

    # -- inference --------------------------------------------------------------------------------
    def predict(self, model: str, x: npt.ArrayLike, *, version: int = 0) -> b.FloatArray:
        """Stateless whole-sequence prediction: x is [T], [T, F] or [B, T, F]; the output has the
        input's rank ([T] is sent as [T, 1])."""
        req = b.predict_request(
            model=model, version=version, x=b.as_sequence(x), request_id=self._next_id()
        )
        return b.from_tensor(self._call(self._inference.Predict, req).output)

    def forecast(self, session_id: str, horizon: int) -> b.FloatArray:
        """Autoregressive rollout [H, O] from a session's state (the session is not changed)."""
        req = b.forecast_request(session_id=session_id, horizon=horizon, request_id=self._next_id())
        return b.from_tensor(self._call(self._inference.Forecast, req).output)

    def frame(
        self,
        model: str,
        session_ids: Sequence[str],
        x: npt.ArrayLike,
        *,
        start: bool | list[bool] = False,
        end: bool | list[bool] = False,
        expected_step: list[int] | None = None,
        version: int = 0,
    ) -> FrameResult:
        """One chunk for each of N sessions of one model in one message (x: [N, T, F]), for
        gateways that aggregate many sensors. Per-session failures are in `FrameResult.errors`;
        only frame-wide problems raise. Frames are not resent after a broken connection (pass
        `expected_step` to make your own retries safe)."""
        req = b.frame_request(
            model=model,
            version=version,
            session_ids=list(session_ids),
            x=x,
            request_id=self._next_id(),
            start=start,
            end=end,
            expected_step=expected_step,
        )
        self._check_open()
        future = self._mux.submit(pb.StreamRequest(frame=req), req.request_id)
        try:
            reply = future.result(timeout=self.timeout)
        except FutureTimeout:
            self._mux.forget(req.request_id)
            raise frame_timeout(req.request_id, self.timeout) from None
        return b.frame_result(reply.frame)

    # -- models -----------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        msg = self._call(self._models.ListModels, pb.ListModelsRequest())
        return [b.model_info(m) for m in msg.models]

    def model_metadata(self, model: str, *, version: int = 0) -> repo_pb.ModelMetadata:
        """The model's metadata.json as a message (features, states, normalisation, training)."""
        msg = self._call(
            self._models.GetModelMetadata, pb.ModelRef(model=model, model_version=version)
        )
        assert isinstance(msg, repo_pb.ModelMetadata)
        return msg

    # -- internals used by Session ----------------------------------------------------------------
    def _call(self, method: Any, request: Any, **kwargs: Any) -> Any:
        self._check_open()
        try:
            return method(request, timeout=self.timeout, **kwargs)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def _send_step(self, req: pb.StepRequest) -> tuple[pb.StepResponse, grpc.RpcError | None]:
        """Send one chunk; the reply carries its status (the unary path synthesises one, with
        the step count unknown). Raises Unavailable (or DeadlineExceeded) when no reply came."""
        self._check_open()
        if not self.use_stream:
            try:
                reply = self._inference.Step(req, timeout=self.timeout)
            except grpc.RpcError as exc:
                return unary_step_reply(req, exc), exc
            assert isinstance(reply, pb.StepResponse)
            return reply, None
        future = self._mux.submit(pb.StreamRequest(step=req), req.request_id)
        try:
            return future.result(timeout=self.timeout).step, None
        except FutureTimeout:
            self._mux.forget(req.request_id)
            raise chunk_timeout(req.request_id, self.timeout) from None
