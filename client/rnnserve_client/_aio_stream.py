"""One bidirectional Stream per AsyncClient, shared by all its sessions (asyncio flavour).

A reader task routes replies to futures by request_id; writes are serialised by a lock (grpc.aio
allows one outstanding write). When the stream fails, pending futures fail with the mapped error
and the next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from rnnserve_client._errors import RnnServeError, Unavailable, error_from_rpc
from rnnserve_proto import rnnserve_pb2 as pb


class _OneStream:
    def __init__(self, stub: Any) -> None:
        self.call: Any = stub.Stream()
        self.pending: dict[str, asyncio.Future[pb.StreamResponse]] = {}
        self.dead = False
        self.reader: asyncio.Task[None] | None = None


def _stream_error(cause: BaseException | None) -> RnnServeError:
    if cause is None:
        return Unavailable("the server ended the stream")
    error = (
        error_from_rpc(cause)
        if isinstance(cause, grpc.RpcError)
        else Unavailable(f"stream failed: {cause!r}")
    )
    error.__cause__ = cause
    return error


class AsyncStreamMux:
    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._write_lock = asyncio.Lock()
        self._current: _OneStream | None = None
        self._closed = False

    async def submit(
        self, request: pb.StreamRequest, request_id: str
    ) -> asyncio.Future[pb.StreamResponse]:
        if self._closed:
            raise RuntimeError("the client is closed")
        future: asyncio.Future[pb.StreamResponse] = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            stream = self._current
            if stream is None or stream.dead:
                stream = self._current = _OneStream(self._stub)
                stream.reader = asyncio.create_task(self._read(stream))
            stream.pending[request_id] = future
            try:
                await stream.call.write(request)
            except (grpc.RpcError, asyncio.InvalidStateError, RuntimeError) as exc:
                # The stream died under us; the reader (if alive) fails the rest.
                stream.pending.pop(request_id, None)
                self._kill(stream, exc)
                raise _stream_error(exc) from exc
        return future

    def forget(self, request_id: str) -> None:
        if self._current is not None:
            self._current.pending.pop(request_id, None)

    async def _read(self, stream: _OneStream) -> None:
        cause: BaseException | None = None
        try:
            while True:
                reply = await stream.call.read()
                if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                kind = reply.WhichOneof("kind")
                rid = reply.step.request_id if kind == "step" else reply.frame.request_id
                future = stream.pending.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            cause = Unavailable("the client is closed")
        except Exception as exc:  # grpc.aio.AioRpcError and anything unexpected
            cause = exc
        self._kill(stream, cause)

    def _kill(self, stream: _OneStream, cause: BaseException | None) -> None:
        stream.dead = True
        if self._current is stream:
            self._current = None
        pending = list(stream.pending.values())
        stream.pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(_stream_error(cause))
        stream.call.cancel()

    async def close(self) -> None:
        self._closed = True
        stream, self._current = self._current, None
        if stream is not None:
            stream.call.cancel()
            if stream.reader is not None:
                stream.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.reader
