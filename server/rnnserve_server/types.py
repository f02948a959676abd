"""Domain types of the service layer: plain dataclasses and numpy arrays, no protobuf or grpc."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rnnserve_server.errors import RnnServeError

FloatArray = npt.NDArray[np.float32]


# StepInput and StepOutput are made once per streamed step: NamedTuples, built about 5x faster
# than frozen dataclasses, and just as immutable.
class StepInput(NamedTuple):
    """One chunk for one session. `x` holds raw (un-normalised) float32 values, shape [T, F]."""

    session_id: str  # "" with start=True: the server assigns one
    model: str
    version: int | None  # None = latest
    x: FloatArray
    start: bool = False
    end: bool = False
    expected_step: int | None = None


class StepOutput(NamedTuple):
    session_id: str
    model: str
    version: int
    y: FloatArray  # [T, O], raw units
    step: int  # steps consumed by the session after this chunk


@dataclass(frozen=True, slots=True)
class FrameInput:
    """Steps for N sessions of one model; all carry the same T. x: [N, T, F]."""

    model: str
    version: int | None
    session_ids: list[str]
    x: FloatArray
    start: npt.NDArray[np.bool_]  # [N]
    end: npt.NDArray[np.bool_]  # [N]
    expected_step: npt.NDArray[np.int64]  # [N], -1 = no check


@dataclass(frozen=True, slots=True)
class FrameOutput:
    model: str
    version: int
    session_ids: list[str]
    y: FloatArray  # [N, T, O]; NaN rows where errors[i] is not None
    steps: npt.NDArray[np.int64]  # [N]; -1 where the session does not exist
    errors: list[RnnServeError | None]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    model: str
    version: int
    step: int
    created_unix: float
    last_active_unix: float


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's complete state: enough to continue it on another server (or after a restart)."""

    info: SessionInfo
    states: dict[str, np.ndarray] = field(default_factory=dict)  # StateTensor.name -> [*shape]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    versions: list[int]
    latest_version: int
    variant: str
    streaming: bool
    ready: bool
