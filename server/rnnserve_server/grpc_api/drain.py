"""The shutdown stage shared by the servicers with bidirectional streams (Stream, ModelStreamInfer).

`app.py` calls each servicer's `begin_drain()`: it stops every open stream from reading further
requests; each stream then answers what it took and ends with UNAVAILABLE, and new streams are
refused, so clients reconnect to another replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

Context = grpc.aio.ServicerContext[Any, Any]


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

    def add(self, reader: asyncio.Task[None]) -> None:
        self._readers.add(reader)

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
