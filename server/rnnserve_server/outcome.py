"""Where the batcher delivers a result: `Outcome`, and `Promise`, its loop-free implementation.

An `asyncio.Future` is the outcome when a coroutine awaits the result (unary calls, admin work).
A stream answers a step from a callback instead, and there a future costs a loop round trip per
step: `set_result` only *schedules* its callbacks. `Promise` runs them at once, inside the batch
that produced the result, which on the ping-pong path is one event-loop hop less per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("rnnserve.outcome")


class Outcome(Protocol):
    """What the batcher and the session lanes need of a result slot (asyncio.Future fits)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Promise:
    """A result slot whose callbacks run synchronously, in the order they were added, when it is
    resolved (or at once when added to a resolved one). A callback that raises is logged and does
    not stop the others: the batch resolving many promises must go on."""

    __slots__ = ("_callbacks", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Promise], None]] | None = None
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The result; raises the exception it was resolved with. Only once `done()`."""
        if not self._done:
            raise RuntimeError("the promise is not resolved yet")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self) -> BaseException | None:
        return self._error

    def set_result(self, result: Any, /) -> None:
        self._resolve(result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self._resolve(None, exception)

    def add_done_callback(self, fn: Callable[[Promise], None]) -> None:
        if self._done:
            _call(fn, self)
        elif self._callbacks is None:
            self._callbacks = [fn]
        else:
            self._callbacks.append(fn)

    def _resolve(self, result: Any, error: BaseException | None) -> None:
        if self._done:
            raise RuntimeError("the promise is already resolved")
        self._done = True
        self._result = result
        self._error = error
        callbacks = self._callbacks
        if callbacks is not None:
            self._callbacks = None
            for fn in callbacks:
                _call(fn, self)


def _call(fn: Callable[[Promise], None], promise: Promise) -> None:
    try:
        fn(promise)
    except Exception:
        log.exception("a result callback failed")
