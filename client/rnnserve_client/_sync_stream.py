"""One bidirectional Stream per Client, shared by all its sessions (sync flavour).

Requests go out through a queue that grpc drains in its own thread; a reader thread routes each
reply to the future registered under its request_id. When the stream fails (for example the
connection is cut), every pending future fails with the mapped error and the next request opens a
new stream on the same channel.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import grpc

from rnnserve_client._errors import RnnServeError, Unavailable, error_from_rpc
from rnnserve_proto import rnnserve_pb2 as pb

_CLOSE = object()


def _drain(q: queue.Queue[object]) -> Iterator[pb.StreamRequest]:
    while True:
        item = q.get()
        if item is _CLOSE:
            return
        assert isinstance(item, pb.StreamRequest)
        yield item


class _OneStream:
    """One open Stream call and the requests waiting for its replies."""

    def __init__(self, stub: Any) -> None:
        self.queue: queue.Queue[object] = queue.Queue()
        self.pending: dict[str, Future[pb.StreamResponse]] = {}
        self.call: Any = stub.Stream(_drain(self.queue), wait_for_ready=True)
        self.dead = False


class StreamMux:
    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._lock = threading.Lock()
        self._current: _OneStream | None = None
        self._closed = False

    def submit(self, request: pb.StreamRequest, request_id: str) -> Future[pb.StreamResponse]:
        """Send one request; the future resolves to its reply or fails with an RnnServeError."""
        future: Future[pb.StreamResponse] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            stream = self._current
            if stream is None or stream.dead:
                stream = self._current = _OneStream(self._stub)
                threading.Thread(
                    target=self._read, args=(stream,), name="rnnserve-stream", daemon=True
                ).start()
            stream.pending[request_id] = future
            stream.queue.put(request)
        return future

    def forget(self, request_id: str) -> None:
        """Stop waiting for a reply (after a client-side timeout)."""
        with self._lock:
            if self._current is not None:
                self._current.pending.pop(request_id, None)

    def _read(self, stream: _OneStream) -> None:
        cause: BaseException | None = None
        try:
            for reply in stream.call:
                kind = reply.WhichOneof("kind")
                rid = reply.step.request_id if kind == "step" else reply.frame.request_id
                with self._lock:
                    future = stream.pending.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.RpcError as exc:
            cause = exc
        except Exception as exc:  # never let the reader thread die silently
            cause = exc
        with self._lock:
            stream.dead = True
            if self._current is stream:
                self._current = None
            pending = list(stream.pending.values())
            stream.pending.clear()
        stream.queue.put(_CLOSE)  # let grpc's request thread finish
        for future in pending:
            if not future.done():
                future.set_exception(_stream_error(cause))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._current = self._current, None
        if stream is not None:
            stream.queue.put(_CLOSE)
            stream.call.cancel()


def _stream_error(cause: BaseException | None) -> RnnServeError:
    """A fresh exception per waiting request (one instance must not be raised in many threads)."""
    if cause is None:
        return Unavailable("the server ended the stream")
    if isinstance(cause, grpc.RpcError):
        error = error_from_rpc(cause)
    else:
        error = Unavailable(f"stream reader failed: {cause!r}")
    error.__cause__ = cause
    return error
