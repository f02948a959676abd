"""Sessions: one stream of time steps through a model, with its recurrent state on the server.

Resume after a broken connection (exactly-once application, at-most-once replies):
every chunk after the first carries `expected_step` = the session's step index. When the
connection breaks before the reply arrives (UNAVAILABLE), the session re-sends the same chunk
with the same `expected_step` on a new stream (up to `max_retries` times):
- the server had not applied it: it is applied now and the predictions return as usual;
- the server had applied it (only the reply was lost): the server refuses the resend with
  FAILED_PRECONDITION at step `expected_step + T`, so the chunk is never applied twice; its
  predictions cannot be recomputed, so `step()` raises `ReplyLost` after advancing the step
  index (the next chunk continues normally), and `stream(on_lost="nan")` yields NaN rows instead.
The first chunk (start=True) resets the session, so resending it is harmless; the session id is
chosen by the client so that a lost first reply cannot leave an orphan session behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import grpc
import numpy as np
import numpy.typing as npt

from rnnserve_client import _builders as b
from rnnserve_client._errors import NotFound, ReplyLost, Unavailable
from rnnserve_client._types import SessionInfo
from rnnserve_proto import rnnserve_pb2 as pb

if TYPE_CHECKING:
    from rnnserve_client.aio import AsyncClient
    from rnnserve_client.client import Client

__all__ = ["AsyncSession", "Session"]

OnLost = Literal["raise", "nan"]


class _SessionBase:
    def __init__(
        self,
        *,
        model: str,
        version: int,
        session_id: str | None,
        started: bool,
        step: int,
    ) -> None:
        self._id = session_id or b.new_session_id()
        self._model = model
        self._version = version
        self._started = started
        self._step = step
        self._out_features: int | None = None

    @property
    def id(self) -> str:
        """The session id (chosen by the client unless attached)."""
        return self._id

    @property
    def model(self) -> str:
        return self._model

    @property
    def step_index(self) -> int:
        """Time steps the server has applied to this session (what the next chunk expects)."""
        return self._step

    @property
    def started(self) -> bool:
        """Whether the session exists on the server (after its first chunk)."""
        return self._started

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id!r}, model={self._model!r}, step={self._step})"

    def _request(self, chunk: b.FloatArray, request_id: str, end: bool) -> pb.StepRequest:
        start = not self._started
        return b.step_request(
            session_id=self._id,
            model=self._model,
            version=self._version,
            x=chunk,
            request_id=request_id,
            start=start,
            end=end,
            expected_step=None if start else self._step,
        )

    def _settle(
        self, outcome: b.StepOutcome, end: bool, rpc_error: grpc.RpcError | None
    ) -> b.FloatArray:
        """Apply a reply's outcome to the step index; return y or raise (chained to the failed
        call, where the unary path had one)."""
        if outcome.error is not None:
            if rpc_error is not None:
                outcome.error.__cause__ = rpc_error
            if outcome.step is not None:
                self._step = outcome.step
            if isinstance(outcome.error, NotFound) or (
                end and isinstance(outcome.error, ReplyLost)
            ):
                # The server has no such session (any more): the next chunk starts it afresh.
                self._started = False
                self._step = 0
            raise outcome.error
        assert outcome.y is not None
        assert outcome.step is not None
        self._step = outcome.step
        self._started = not end
        if end:
            self._step = 0
        self._out_features = int(outcome.y.shape[-1])
        return outcome.y

    def _nan_like(self, chunk: b.FloatArray) -> b.FloatArray:
        width = self._out_features or chunk.shape[-1]
        return np.full((chunk.shape[0], width), np.nan, dtype=np.float32)

    def _backoff(self, attempt: int, first: float) -> float:
        return float(min(2.0, first * 2 ** (attempt - 1)))


class Session(_SessionBase):
    """A stateful session over a sync `Client` (from `client.session(...)` or `client.attach`).

    One thread should drive a session (steps of one session are serialised by a lock); many
    sessions may run in parallel threads over the same client.
    """

    def __init__(
        self,
        client: Client,
        *,
        model: str,
        version: int = 0,
        session_id: str | None = None,
        started: bool = False,
        step: int = 0,
    ) -> None:
        super().__init__(
            model=model, version=version, session_id=session_id, started=started, step=step
        )
        self._client = client
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def step(self, x: npt.ArrayLike, *, end: bool = False) -> b.FloatArray:
        """Apply one chunk ([T, F], [T] or a scalar) and return its predictions [T, O].

        `end=True` frees the session on the server after this chunk. Raises `ReplyLost` if the
        connection broke after the server applied the chunk (see the module docstring).
        """
        chunk = b.as_chunk(x)
        with self._lock:
            return self._step_locked(chunk, end)

    def _step_locked(self, chunk: b.FloatArray, end: bool) -> b.FloatArray:
        client = self._client
        expected, start = self._step, not self._started
        req = self._request(chunk, client._next_id(), end)
        resent = False
        attempt = 0
        while True:
            try:
                reply, rpc_error = client._send_step(req)
            except Unavailable:
                attempt += 1
                if attempt > client.max_retries:
                    raise
                time.sleep(self._backoff(attempt, client.retry_backoff))
                resent = True
                req.request_id = client._next_id()
                continue
            break
        outcome = b.interpret_step(
            reply, expected_step=expected, steps=len(chunk), resent=resent, start=start, end=end
        )
        if outcome.need_step:  # unary path: the error carried no step count
            reply.step = self._server_step()
            outcome = b.interpret_step(
                reply, expected_step=expected, steps=len(chunk), resent=resent, start=start, end=end
            )
        return self._settle(outcome, end, rpc_error)

    def _server_step(self) -> int:
        try:
            return self._client.get_session(self._id).step
        except NotFound:
            return -1

    def stream(
        self, chunks: Iterable[npt.ArrayLike], *, on_lost: OnLost = "raise"
    ) -> Iterator[b.FloatArray]:
        """Apply chunks in order, yielding each chunk's predictions as it arrives.

        `on_lost="nan"` yields NaN predictions for a chunk whose reply was lost after a
        reconnect (keeping outputs aligned with inputs) instead of raising `ReplyLost`.
        """
        for x in chunks:
            chunk = b.as_chunk(x)
            try:
                yield self.step(chunk)
            except ReplyLost:
                if on_lost == "raise":
                    raise
                yield self._nan_like(chunk)

    def predict(self, x: npt.ArrayLike) -> b.FloatArray:
        """Stateless prediction with this session's model (the session is not touched)."""
        return self._client.predict(self._model, x, version=self._version)

    def forecast(self, horizon: int) -> b.FloatArray:
        """Roll the model forward `horizon` steps from the session's state ([H, O]); the session
        itself is not changed."""
        return self._client.forecast(self._id, horizon)

    def reset(self) -> None:
        """Back to the model's initial state (step 0)."""
        with self._lock:
            if self._started:
                self._step = self._client.reset_session(self._id).step

    def info(self) -> SessionInfo:
        return self._client.get_session(self._id)

    def close(self) -> None:
        """Free the session on the server (idempotent). Stepping again starts it afresh."""
        with self._lock:
            if self._started:
                self._started = False
                self._step = 0
                with contextlib.suppress(NotFound):
                    self._client.close_session(self._id)


class AsyncSession(_SessionBase):
    """A stateful session over an `AsyncClient`; the asyncio twin of `Session`."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        model: str,
        version: int = 0,
        session_id: str | None = None,
        started: bool = False,
        step: int = 0,
    ) -> None:
        super().__init__(
            model=model, version=version, session_id=session_id, started=started, step=step
        )
        self._client = client
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def step(self, x: npt.ArrayLike, *, end: bool = False) -> b.FloatArray:
        """See `Session.step`."""
        chunk = b.as_chunk(x)
        async with self._lock:
            return await self._step_locked(chunk, end)

    async def _step_locked(self, chunk: b.FloatArray, end: bool) -> b.FloatArray:
        client = self._client
        expected, start = self._step, not self._started
        req = self._request(chunk, client._next_id(), end)
        resent = False
        attempt = 0
        while True:
            try:
                reply, rpc_error = await client._send_step(req)
            except Unavailable:
                attempt += 1
                if attempt > client.max_retries:
                    raise
                await asyncio.sleep(self._backoff(attempt, client.retry_backoff))
                resent = True
                req.request_id = client._next_id()
                continue
            break
        outcome = b.interpret_step(
            reply, expected_step=expected, steps=len(chunk), resent=resent, start=start, end=end
        )
        if outcome.need_step:
            try:
                reply.step = (await client.get_session(self._id)).step
            except NotFound:
                reply.step = -1
            outcome = b.interpret_step(
                reply, expected_step=expected, steps=len(chunk), resent=resent, start=start, end=end
            )
        return self._settle(outcome, end, rpc_error)

    async def stream(
        self,
        chunks: Iterable[npt.ArrayLike] | AsyncIterable[npt.ArrayLike],
        *,
        on_lost: OnLost = "raise",
    ) -> AsyncIterator[b.FloatArray]:
        """See `Session.stream`; accepts sync or async iterables."""
        if isinstance(chunks, AsyncIterable):
            async for x in chunks:
                yield await self._stream_one(x, on_lost)
        else:
            for x in chunks:
                yield await self._stream_one(x, on_lost)

    async def _stream_one(self, x: npt.ArrayLike, on_lost: OnLost) -> b.FloatArray:
        chunk = b.as_chunk(x)
        try:
            return await self.step(chunk)
        except ReplyLost:
            if on_lost == "raise":
                raise
            return self._nan_like(chunk)

    async def predict(self, x: npt.ArrayLike) -> b.FloatArray:
        return await self._client.predict(self._model, x, version=self._version)

    async def forecast(self, horizon: int) -> b.FloatArray:
        return await self._client.forecast(self._id, horizon)

    async def reset(self) -> None:
        async with self._lock:
            if self._started:
                self._step = (await self._client.reset_session(self._id)).step

    async def info(self) -> SessionInfo:
        return await self._client.get_session(self._id)

    async def close(self) -> None:
        async with self._lock:
            if self._started:
                self._started = False
                self._step = 0
                with contextlib.suppress(NotFound):
                    await self._client.close_session(self._id)
