"""What the servicers with bidirectional streams (Stream, ModelStreamInfer) share: the write side
of a stream (`StreamDrain.serve` over `StreamReplies`) and the shutdown stage.

`app.py` calls each servicer's `begin_drain()`: it stops every open stream from reading further
requests; each stream then answers what it took and ends with UNAVAILABLE, and new streams are
refused, so clients reconnect to another replica.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
_END: Any = object()  # the reader has stopped taking requests
# What context.read() returns after the client's last message (missing from grpc-stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class StreamReplies(Generic[R]):
    """One stream's replies in the order they finish. The reader calls `expect()` for every
    request it takes; exactly one `put()` follows for each, with the reply or None (nothing to
    send, e.g. a request cancelled at loop teardown), so the writer knows when it is done.

    A deque and one waiter future rather than an asyncio.Queue: `put` runs once per step, from
    callbacks, and the writer only needs waking when it ran dry."""

    def __init__(self) -> None:
        self._ready: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._expected = 0

    def expect(self) -> None:
        self._expected += 1

    def put(self, reply: R | None) -> None:
        self._ready.append(reply)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        self.put(_END)

    async def send_all(self, write: Callable[[R], Awaitable[None]]) -> None:
        """Write every reply as it comes, until the reader stopped and each request it took was
        answered."""
        ready = self._ready
        loop = asyncio.get_running_loop()
        sent = 0
        reading = True
        while reading or sent < self._expected:
            if not ready:
                waiter = self._waiter = loop.create_future()
                await waiter
                continue
            reply = ready.popleft()
            if reply is _END:
                reading = False
                continue
            sent += 1
            if reply is not None:
                await write(reply)


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
        async generator): run `read` (which takes requests and arranges their replies) as a task,
        write the replies as they come, then end the call as `finish` says."""
        await self.refuse_if_draining(context)

        async def reader_body() -> None:
            try:
                await read()
            finally:
                replies.close()

        reader = asyncio.get_running_loop().create_task(reader_body())
        self._readers.add(reader)
        try:
            await replies.send_all(context.write)
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
