"""The service layer: everything the front ends (native gRPC, KServe v2) need, with no protobuf or
grpc in sight. Front ends convert messages to the domain types in `types.py`, call these methods
and map `RnnServeError.code` to their status codes.

Contract for implementers and callers:
- Every method raises RnnServeError subclasses (never bare exceptions) for anything a client did.
- A rejected request leaves every session's state, step count and timestamps exactly as before.
- Steps for one session are applied strictly in the order `step`/`frame` were called for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rnnserve_proto import model_repository_pb2
from rnnserve_server.config import ServerSettings
from rnnserve_server.types import (
    FloatArray,
    FrameInput,
    FrameOutput,
    ModelInfo,
    SessionInfo,
    SessionSnapshot,
    StepInput,
    StepOutput,
)


class InferenceService:
    """Facade over the model registry, the session stores, the batchers and the sweeper."""

    @classmethod
    async def create(cls, settings: ServerSettings) -> InferenceService:
        """Load the repository, create ORT sessions and start background tasks (batchers, TTL
        sweeper) on the running event loop."""
        raise NotImplementedError

    async def close(self, grace_s: float) -> None:
        """Stop accepting work, finish what is queued or in flight within `grace_s`, stop tasks."""
        raise NotImplementedError

    # -- inference -------------------------------------------------------------------------------
    async def step(self, request: StepInput) -> StepOutput:
        raise NotImplementedError

    async def frame(self, request: FrameInput) -> FrameOutput:
        """Per-session failures are reported in FrameOutput.errors; only frame-wide problems
        (unknown model, bad tensor shape) raise."""
        raise NotImplementedError

    async def predict(self, model: str, version: int | None, x: FloatArray) -> FloatArray:
        """Stateless run from the initial state; x is [T, F] or [B, T, F], same rank returned."""
        raise NotImplementedError

    async def forecast(self, session_id: str, horizon: int) -> tuple[FloatArray, int]:
        """Autoregressive rollout [H, O] from the session's state; returns it and the session's
        (unchanged) step count. FAILED_PRECONDITION for non-autoregressive models."""
        raise NotImplementedError

    # -- sessions --------------------------------------------------------------------------------
    def get_session(self, session_id: str) -> SessionInfo:
        raise NotImplementedError

    def list_sessions(
        self, model: str | None = None, limit: int = 0
    ) -> tuple[list[SessionInfo], int]:
        """Sessions (optionally of one model), at most `limit` (0 = all), and the total count."""
        raise NotImplementedError

    async def reset_session(self, session_id: str) -> SessionInfo:
        raise NotImplementedError

    async def close_session(self, session_id: str) -> SessionInfo:
        raise NotImplementedError

    async def export_session(self, session_id: str) -> SessionSnapshot:
        raise NotImplementedError

    async def import_session(
        self, snapshot: SessionSnapshot, overwrite: bool = False
    ) -> SessionInfo:
        raise NotImplementedError

    # -- models ----------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        raise NotImplementedError

    def model_metadata(
        self, model: str, version: int | None = None
    ) -> model_repository_pb2.ModelMetadata:
        raise NotImplementedError

    def model_names(self) -> Sequence[str]:
        raise NotImplementedError
