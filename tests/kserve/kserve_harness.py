"""A real rnnserve server with the KServe front end, on loopback port 0, in this process.

The server runs on its own event loop thread, so a test can drive it with the stock tritonclient
and with the native stubs at once.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc
from rnnserve_server import app as app_module
from rnnserve_server.config import ServerSettings
from rnnserve_server.grpc_api import kserve
from rnnserve_server.repository import read_metadata

ROOT = Path(__file__).resolve().parents[2]
# The tiny repository builder and the offline reference live with the server tests
# (tests/server/fixtures.py), which import each other by module name the same way.
sys.path.insert(0, str(ROOT / "tests" / "server"))

SHIPPED = ROOT / "model_repository"
MAX_BATCH = 16  # the server's batcher.max_batch_size, reported as ModelConfig.max_batch_size


def models_in(root: Path) -> dict[str, mr.ModelMetadata]:
    """Latest version of every model in the repository."""
    latest: dict[str, mr.ModelMetadata] = {}
    for path in sorted(root.glob("*/*/metadata.json")):
        meta = read_metadata(path)
        if meta.name not in latest or meta.version > latest[meta.name].version:
            latest[meta.name] = meta
    return latest


def server_settings(repository: Path) -> ServerSettings:
    """Loopback, any free ports, CPU, quiet logs, a small max batch size."""
    return ServerSettings(
        model_repository=repository,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        log_format="text",
        log_level="WARNING",
        runtime={"providers": ["cpu"], "run_workers": 1},  # type: ignore[arg-type]
        batcher={"max_batch_size": MAX_BATCH},  # type: ignore[arg-type]
        shutdown_grace_s=1.0,
    )


@dataclass
class Server:
    url: str
    repository: Path
    models: dict[str, mr.ModelMetadata]
    channel: grpc.Channel

    @property
    def streaming(self) -> list[str]:
        return sorted(name for name, meta in self.models.items() if meta.streaming)

    @property
    def whole(self) -> list[str]:
        return sorted(name for name, meta in self.models.items() if not meta.streaming)

    def native_inference(self) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel)

    def native_sessions(self) -> pb_grpc.SessionsStub:
        return pb_grpc.SessionsStub(self.channel)


class ServerThread:
    """The app on an event loop in a daemon thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop: Any = None
        self.kserve: kserve.KServeServicer | None = None

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=120)

    async def _start(self) -> int:
        app = app_module.App(self.settings)
        ports = await app.start()
        self._stop = app.shutdown
        self.kserve = next(
            spec.servicer for spec in app.specs if spec.service_name == kserve.SERVICE_NAME
        )
        return ports.grpc

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the server's event loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def stop(self) -> None:
        if self._stop is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
