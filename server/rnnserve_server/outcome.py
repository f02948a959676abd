"""Where the batcher delivers a result: anything with the `Outcome` methods.

An `asyncio.Future` is the outcome when a coroutine awaits the result (unary calls, admin work).
A stream answers a step directly instead (`grpc_api.stream_steps.StreamStep`): a future would
cost a loop round trip per step, since its `set_result` only *schedules* its callbacks.
"""

from __future__ import annotations

from typing import Any, Protocol


class Outcome(Protocol):
    """What the batcher and the session lanes need of a result slot (asyncio.Future fits)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...
