"""Which event loop the server runs on: uvloop when installed (the default), else asyncio's own.

On the streamed-step path the loop runs several callbacks, future wake-ups and task steps per
message; uvloop (libuv, in C) does each for less CPU than the standard loop's Python code. Measured
on the 2-core VM: about a fifth less main-thread CPU per ping-pong step (docs/benchmarks.md).
grpc.aio works on either: it wakes the loop through a socket, not loop internals.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]

log = logging.getLogger("rnnserve")


def resolve(name: LoopName) -> Literal["asyncio", "uvloop"]:
    """'auto' is uvloop when importable, else asyncio; 'uvloop' without it is a RuntimeError."""
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    if name == "uvloop" and not have_uvloop:
        raise RuntimeError("event_loop is 'uvloop' but the uvloop package is not installed")
    if name == "auto":
        return "uvloop" if have_uvloop else "asyncio"
    return name


def run_on_event_loop(main: Coroutine[Any, Any, T], name: Literal["asyncio", "uvloop"]) -> T:
    """asyncio.run(main) on the loop `resolve` chose."""
    log.info("event loop: %s", name)
    if name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
