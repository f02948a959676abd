"""What the servicers with bidirectional streams (Stream, ModelStreamInfer) share: the write side
of a stream (`StreamDrain.serve` over `StreamReplies`) and the shutdown stage.

`app.py` calls each servicer's `begin_drain()`: it stops every open stream from reading further
requests; each stream then answers what it took and ends with UNAVAILABLE, and new streams are
refused, so clients reconnect to another replica.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
# What context.read() returns after the client's last message (missing from grpc-stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class StreamReplies(Generic[R]):
    """One stream's replies, written in the order they finish. The reader calls `expect()` for
    every request it takes; exactly one `put()` follows for each, with the reply or None (nothing
    to send, e.g. a request cancelled at loop teardown); `close()` when it stops reading.
    `finished()` waits until every expected reply is written.

    Writes start from `put` itself, usually inside the batch that computed the reply: the write
    coroutine (`context.write(reply)`) is stepped by hand up to the gRPC operation it waits on,
    and resumed from that operation's done callback. That is what a writer task would do, minus
    a task wake-up and a future per message, which on the ping-pong path is a measurable share
    of the server's CPU. One write is in flight at a time (gRPC allows no more); later replies
    queue behind it."""

    def __init__(self, write: Callable[[R], Coroutine[Any, Any, None]]) -> None:
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._queue: deque[R] = deque()
        self._writing: Coroutine[Any, Any, None] | None = None
        self._expected = 0
        self._answered = 0
        self._reading = True
        self._error: BaseException | None = None
        self._finished: asyncio.Future[None] = self._loop.create_future()

    def expect(self) -> None:
        self._expected += 1

    def put(self, reply: R | None) -> None:
        self._answered += 1
        if reply is None or self._error is not None:  # nothing to send, or nobody to send to
            self._check_finished()
        elif self._writing is None:
            self._start(reply)
        else:
            self._queue.append(reply)

    def close(self) -> None:
        self._reading = False
        self._check_finished()

    async def finished(self) -> None:
        """Return when the reader closed and every reply is written; raise a write's error."""
        await self._finished
        if self._error is not None:
            raise self._error

    def _start(self, reply: R) -> None:
        self._writing = self._write(reply)
        self._advance()

    def _advance(self, _: object = None) -> None:
        coro = self._writing
        assert coro is not None
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            self._writing = None
            if self._queue:
                self._start(self._queue.popleft())
            else:
                self._check_finished()
            return
        except BaseException as exc:  # the call is over (client gone, cancelled): stop writing
            self._writing = None
            self._error = exc
            self._queue.clear()
            self._check_finished()
            return
        if waiting_on is None:  # a bare yield: resume on the next loop iteration
            self._loop.call_soon(self._advance)
        else:  # an asyncio future, which the awaiting code marked as blocking
            waiting_on._asyncio_future_blocking = False
            waiting_on.add_done_callback(self._advance)

    def _check_finished(self) -> None:
        if self._finished.done() or self._writing is not None:
            return
        if self._error is not None or (not self._reading and self._answered >= self._expected):
            self._finished.set_result(None)


class StreamDrain:
    """The open streams' reader tasks of one servicer, and whether the server is draining."""

    def __init__(self) -> None:
        self._readers: set[asyncio.Task[None]] = set()
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def begin(self) -> None:
        self._draining = True
        for reader in list(self._readers):
            reader.cancel()

    async def refuse_if_draining(self, context: Context) -> None:
        """End a new stream at once while draining."""
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")

    async def serve(
        self, context: Context, read: Callable[[], Awaitable[None]], replies: StreamReplies[R]
    ) -> None:
        """A bidirectional stream with gRPC's reader/writer API (cheaper per message than an
        async generator): run `read` (which takes requests and arranges their replies, written
        by `replies`) as a task, wait until all are written, then end the call as `finish`
        says."""
        await self.refuse_if_draining(context)

        async def reader_body() -> None:
            try:
                await read()
            finally:
                replies.close()

        reader = asyncio.get_running_loop().create_task(reader_body())
        self._readers.add(reader)
        try:
            await replies.finished()
            self.finish(reader, context)
        finally:
            self.discard(reader)

    def finish(self, reader: asyncio.Task[None], context: Context) -> None:
        """After a stream answered all it took: a drain ends it with UNAVAILABLE; a failed read
        side (e.g. an oversized message) ends the call with that failure."""
        if reader.cancelled():
            if self._draining:
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("server is shutting down; reconnect to continue")
        else:
            failure = reader.exception()
            if failure is not None:
                raise failure

    def discard(self, reader: asyncio.Task[None]) -> None:
        """The stream is over (however it ended): forget its reader and stop it."""
        self._readers.discard(reader)
        reader.cancel()
