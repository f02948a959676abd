"""Standard gRPC health checking (grpc_health.v1) that also ends Watch streams on shutdown.

grpcio-health-checking's servicer keeps every Watch stream open forever; a client watching health
(as gRPC clients with health-checking config do) would then hold the server's graceful stop for
the whole grace period. Here a Watch that has delivered NOT_SERVING during shutdown ends (OK), so
the watcher learns the news and the drain is not delayed.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _WatchDone(Exception):
    pass


class _EndAfterNotServing:
    """A ServicerContext proxy whose write() ends the Watch once NOT_SERVING went out while the
    servicer shuts down."""

    def __init__(self, context: Any, servicer: HealthServicer) -> None:
        self._context = context
        self._servicer = servicer

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        if self._servicer.shutting_down and message.status == _NOT_SERVING:
            raise _WatchDone

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.shutting_down = False

    async def enter_graceful_shutdown(self) -> None:
        self.shutting_down = True
        await super().enter_graceful_shutdown()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:  # noqa: N802
        try:
            await super().Watch(request, _EndAfterNotServing(context, self))
        except _WatchDone:
            return
