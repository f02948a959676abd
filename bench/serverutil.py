"""Shared bits of the bench servers: bind, announce the port on stdout, stop on SIGTERM/SIGINT,
and run on the chosen asyncio event loop (the same choice as `rnnserve serve --event-loop`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PORT_PREFIX = "BENCH_PORT="
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
LoopName = Literal["asyncio", "uvloop"]


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve_loop(name: str) -> LoopName:
    """'auto' is uvloop when it is importable, else asyncio (rnnserve's own default);
    'uvloop' without the package installed is an error."""
    if name == "auto":
        return "uvloop" if have_uvloop() else "asyncio"
    if name == "uvloop":
        if not have_uvloop():
            raise RuntimeError("event loop 'uvloop' asked for, but uvloop is not installed")
        return "uvloop"
    if name == "asyncio":
        return "asyncio"
    raise ValueError(f"unknown event loop {name!r}; choose from {LOOP_CHOICES}")


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default="auto",
        help="event loop: auto (uvloop when installed, as rnnserve), asyncio or uvloop",
    )


def run_server(coro_factory: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run `coro_factory()` to completion on the event loop `loop` names (see resolve_loop)."""
    try:
        chosen = resolve_loop(loop)
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"event loop: {chosen}", file=sys.stderr, flush=True)
    if chosen == "uvloop":
        import uvloop  # optional: only imported when chosen

        uvloop.run(coro_factory())
    else:
        asyncio.run(coro_factory())


async def serve_until_signal(server: grpc.aio.Server, host: str, port: int) -> None:
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    # The harness reads this line to learn the port (the server was started with --port 0).
    print(f"{PORT_PREFIX}{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)
    sys.stdout.flush()
