"""Shared bits of the bench servers: bind, announce the port on stdout, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PORT_PREFIX = "BENCH_PORT="


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
