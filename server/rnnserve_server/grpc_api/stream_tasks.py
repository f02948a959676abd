"""The tasks a stream starts for requests it does not answer inline (the native Stream's frames,
KServe's general path), kept in arrival order with what the stream's reader submits itself.

A task submits its work to the service at its first step (the coroutine runs synchronously up to
its first real wait), one loop iteration after it was created. So before the reader submits a
later request inline, every task started so far takes that first step (`submitted`): a session's
work reaches the service in arrival order without relying on grpc.aio's read() always yielding
first. The check is one set's truthiness per message, so the ping-pong path pays nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class StreamTasks(Generic[R]):
    """One stream's tasks: referenced until done (the loop keeps only weak references), and
    `unstarted` while they have not submitted their work."""

    __slots__ = ("_running", "unstarted")

    def __init__(self) -> None:
        self._running: set[asyncio.Task[R]] = set()
        self.unstarted: set[asyncio.Future[Any]] = set()  # truthy: await `submitted` first

    def start(self, work: Callable[[], Awaitable[R]], done: Callable[[R | None], None]) -> None:
        """Run `work()` (it submits before it first waits) as a task; `done` gets its reply, or
        None when the task was cancelled."""

        async def run() -> R:
            self.unstarted.discard(asyncio.current_task())
            return await work()

        task = asyncio.get_running_loop().create_task(run())
        self._running.add(task)
        self.unstarted.add(task)
        task.add_done_callback(lambda t: self._finished(t, done))

    def _finished(self, task: asyncio.Task[R], done: Callable[[R | None], None]) -> None:
        self._running.discard(task)
        self.unstarted.discard(task)  # cancelled before it ran
        done(None if task.cancelled() else task.result())

    async def submitted(self) -> None:
        """Return once every task started so far has submitted its work."""
        while self.unstarted:
            await asyncio.sleep(0)
