"""Which event loop the server runs on: the standard asyncio loop (default) or uvloop.

uvloop (libuv, in C) is cheaper per callback, but on rnnserve's streams it measured no faster:
most of a message's cost is gRPC's own, and grpc.aio wakes the loop through a socket either way
(docs/benchmarks.md). It is offered for people who want to measure on their machines.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["asyncio", "uvloop"]

log = logging.getLogger("rnnserve")


def check_available(name: LoopName) -> None:
    """Raise RuntimeError when the loop asked for is not installed."""
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise RuntimeError("event_loop is 'uvloop' but the uvloop package is not installed")


def run_on_event_loop(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    """asyncio.run(main) on the chosen loop (call `check_available` first)."""
    log.info("event loop: %s", name)
    if name == "uvloop":
        import uvloop  # optional, not a dependency

        return uvloop.run(main)
    return asyncio.run(main)
