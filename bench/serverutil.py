"""Shared bits of the bench servers: bind, announce the port on stdout, stop on SIGTERM/SIGINT,
and run on the chosen asyncio event loop (the same choice as `rnnserve serve --event-loop`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, get_args

import grpc

from rnnserve_server.event_loop import LoopName, resolve, run_on_event_loop

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PORT_PREFIX = "BENCH_PORT="
LOOP_CHOICES: tuple[LoopName, ...] = get_args(LoopName)


def resolve_loop(name: str) -> Literal["asyncio", "uvloop"]:
    """The loop `name` means, as `rnnserve serve --event-loop` resolves it ('auto' is uvloop
    when installed; 'uvloop' without it is a RuntimeError)."""
    for choice in LOOP_CHOICES:
        if name == choice:
            return resolve(choice)
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
    run_on_event_loop(coro_factory(), chosen)


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
