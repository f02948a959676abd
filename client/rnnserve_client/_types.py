"""Plain result types returned by the client (no protobuf in the public surface except
`ModelMetadata`, which is the repository contract itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from rnnserve_client._errors import RnnServeError

__all__ = ["FrameResult", "ModelInfo", "SessionInfo", "SessionSnapshot"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the server sees it."""

    session_id: str
    model: str
    version: int
    step: int  # time steps consumed so far
    created_unix: float
    last_active_unix: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A loaded model."""

    name: str
    versions: list[int]
    latest_version: int
    variant: str
    streaming: bool
    ready: bool


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's whole state (from `export_session`), to move it to another server."""

    info: SessionInfo
    states: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The reply to one frame (`Client.frame`): one row per session, in request order.

    `y[i]` is NaN where `errors[i]` is not None; `steps[i]` is the session's step count after
    the frame (its unchanged count for an error, -1 if it does not exist).
    """

    session_ids: list[str]
    y: npt.NDArray[np.float32]  # [N, T, O]
    steps: list[int]
    errors: list[RnnServeError | None]

    @property
    def ok(self) -> bool:
        return all(e is None for e in self.errors)
