"""The asyncio client: the twin of `Client` on a grpc.aio channel, sharing its request builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
import numpy.typing as npt

from rnnserve_client import _builders as b
from rnnserve_client import _health
from rnnserve_client._aio_stream import AsyncStreamMux
from rnnserve_client._base import (
    DEFAULT_TARGET,
    ClientBase,
    channel_options,
    chunk_timeout,
    frame_timeout,
    health_poll_timeout,
    unary_step_reply,
)
from rnnserve_client._errors import DeadlineExceeded, error_from_rpc
from rnnserve_client._types import FrameResult, ModelInfo, SessionInfo, SessionSnapshot
from rnnserve_client.session import AsyncSession
from rnnserve_proto import model_repository_pb2 as repo_pb
from rnnserve_proto import rnnserve_pb2 as pb


class AsyncClient(ClientBase[grpc.aio.Channel]):
    """asyncio client; same arguments and methods as `Client`, as coroutines.

    Create it inside a running event loop and use `async with`, or `await close()`.
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
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        super().__init__(
            channel,
            target=target,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            use_stream=use_stream,
            id_prefix="a",
        )
        self._mux = AsyncStreamMux(self._inference)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._mux.close()
            await self._channel.close(None)

    async def health(self, service: str = "") -> str:
        raw = await self._call(self._health, _health.encode_request(service))
        return _health.status_name(_health.decode_status(raw))

    async def wait_until_ready(self, timeout: float = 30.0, service: str = "") -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                raw = await self._health(
                    _health.encode_request(service),
                    timeout=health_poll_timeout(deadline - time.monotonic()),
                    wait_for_ready=True,
                )
                last = _health.status_name(_health.decode_status(raw))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = error_from_rpc(exc).code.name
            await asyncio.sleep(0.1)
        raise DeadlineExceeded(f"{self.target} not SERVING after {timeout} s (last: {last})")

    # -- sessions ---------------------------------------------------------------------------------
    def session(
        self, model: str, *, session_id: str | None = None, version: int = 0
    ) -> AsyncSession:
        return AsyncSession(self, model=model, version=version, session_id=session_id)

    async def attach(self, session_id: str) -> AsyncSession:
        info = await self.get_session(session_id)
        return AsyncSession(
            self,
            model=info.model,
            version=info.version,
            session_id=session_id,
            started=True,
            step=info.step,
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        msg = await self._call(self._sessions.GetSession, pb.SessionRef(session_id=session_id))
        return b.session_info(msg)

    async def list_sessions(self, model: str | None = None, limit: int = 0) -> list[SessionInfo]:
        msg = await self._call(self._sessions.ListSessions, b.list_sessions_request(model, limit))
        return [b.session_info(s) for s in msg.sessions]

    async def reset_session(self, session_id: str) -> SessionInfo:
        msg = await self._call(self._sessions.ResetSession, pb.SessionRef(session_id=session_id))
        return b.session_info(msg)

    async def close_session(self, session_id: str) -> SessionInfo:
        msg = await self._call(self._sessions.CloseSession, pb.SessionRef(session_id=session_id))
        return b.session_info(msg.session)

    async def export_session(self, session_id: str) -> SessionSnapshot:
        msg = await self._call(self._sessions.ExportSession, pb.SessionRef(session_id=session_id))
        return b.snapshot_from_pb(msg)

    async def import_session(
        self, snapshot: SessionSnapshot, *, overwrite: bool = False
    ) -> SessionInfo:
        req = pb.ImportSessionRequest(snapshot=b.snapshot_to_pb(snapshot), overwrite=overwrite)
        return b.session_info(await self._call(self._sessions.ImportSession, req))

    # -- inference --------------------------------------------------------------------------------
    async def predict(self, model: str, x: npt.ArrayLike, *, version: int = 0) -> b.FloatArray:
        req = b.predict_request(
            model=model, version=version, x=b.as_sequence(x), request_id=self._next_id()
        )
        return b.from_tensor((await self._call(self._inference.Predict, req)).output)

    async def forecast(self, session_id: str, horizon: int) -> b.FloatArray:
        req = b.forecast_request(session_id=session_id, horizon=horizon, request_id=self._next_id())
        return b.from_tensor((await self._call(self._inference.Forecast, req)).output)

    async def frame(
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
        """See `Client.frame`."""
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
        future = await self._mux.submit(pb.StreamRequest(frame=req), req.request_id)
        try:
            reply = await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self._mux.forget(req.request_id)
            raise frame_timeout(req.request_id, self.timeout) from None
        return b.frame_result(reply.frame)

    # -- models -----------------------------------------------------------------------------------
    async def list_models(self) -> list[ModelInfo]:
        msg = await self._call(self._models.ListModels, pb.ListModelsRequest())
        return [b.model_info(m) for m in msg.models]

    async def model_metadata(self, model: str, *, version: int = 0) -> repo_pb.ModelMetadata:
        msg = await self._call(
            self._models.GetModelMetadata, pb.ModelRef(model=model, model_version=version)
        )
        assert isinstance(msg, repo_pb.ModelMetadata)
        return msg

    # -- internals used by AsyncSession ---------------------------------------------------------
    async def _call(self, method: Any, request: Any) -> Any:
        self._check_open()
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    async def _send_step(self, req: pb.StepRequest) -> tuple[pb.StepResponse, grpc.RpcError | None]:
        """See `Client._send_step`."""
        self._check_open()
        if not self.use_stream:
            try:
                reply = await self._inference.Step(req, timeout=self.timeout)
            except grpc.RpcError as exc:
                return unary_step_reply(req, exc), exc
            assert isinstance(reply, pb.StepResponse)
            return reply, None
        future = await self._mux.submit(pb.StreamRequest(step=req), req.request_id)
        try:
            reply = await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self._mux.forget(req.request_id)
            raise chunk_timeout(req.request_id, self.timeout) from None
        return reply.step, None
