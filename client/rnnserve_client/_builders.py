"""Pure request builders and response parsers shared by `Client` and `AsyncClient`.

No I/O here: numpy <-> `Tensor`, requests from arguments, replies to results or exceptions, and
the decision a session takes after a resend (see `interpret_step`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rnnserve_client._errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ReplyLost,
    RnnServeError,
    error_from_code,
)
from rnnserve_client._types import FrameResult, ModelInfo, SessionInfo, SessionSnapshot
from rnnserve_proto import model_repository_pb2 as repo_pb
from rnnserve_proto import rnnserve_pb2 as pb

FloatArray = npt.NDArray[np.float32]
ArrayLike = npt.ArrayLike

# A StepResponse.step value the unary path uses when the server did not tell the step count.
STEP_UNKNOWN = -2

_LE_F32 = np.dtype("<f4")
_STATE_DTYPES: dict[int, np.dtype[np.generic]] = {
    repo_pb.FLOAT32: np.dtype("<f4"),
    repo_pb.INT64: np.dtype("<i8"),
}


def new_session_id() -> str:
    """A client-chosen session id (client-chosen ids make a lost first reply harmless)."""
    return f"s-{uuid.uuid4().hex}"


# -- tensors --------------------------------------------------------------------------------------
def to_tensor(x: ArrayLike) -> pb.Tensor:
    """Pack an array as a Tensor: float32 little-endian, row-major."""
    arr = np.ascontiguousarray(np.asarray(x, dtype=_LE_F32))
    return pb.Tensor(shape=list(arr.shape), data=arr.tobytes())


def from_tensor(t: pb.Tensor) -> FloatArray:
    """Unpack a Tensor to a float32 array (native byte order, writable)."""
    shape = tuple(int(d) for d in t.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * 4
    if len(t.data) != expected:
        raise InvalidArgument(
            f"tensor of shape {list(shape)} carries {len(t.data)} bytes, not {expected}"
        )
    return np.frombuffer(t.data, dtype=_LE_F32).reshape(shape).astype(np.float32)


def as_chunk(x: ArrayLike) -> FloatArray:
    """A chunk for one session as [T, F] float32.

    A scalar is one step of one feature; a 1-D array is T steps of one feature (a univariate
    series); a 2-D array is [T, F] already.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 0:
        return arr.reshape(1, 1)
    if arr.ndim == 1:
        return arr.reshape(-1, 1)
    if arr.ndim == 2:
        return arr
    raise InvalidArgument(
        f"a chunk must be a scalar, [T] or [T, F] array, got shape {list(arr.shape)}"
    )


def as_sequence(x: ArrayLike) -> FloatArray:
    """Input of Predict: [T, F] or [B, T, F] (scalars and 1-D arrays as in `as_chunk`)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 3:
        return arr
    return as_chunk(arr)


# -- requests -------------------------------------------------------------------------------------
def step_request(
    *,
    session_id: str,
    model: str,
    version: int,
    x: FloatArray,
    request_id: str,
    start: bool = False,
    end: bool = False,
    expected_step: int | None = None,
) -> pb.StepRequest:
    req = pb.StepRequest(
        session_id=session_id,
        model=model,
        model_version=version,
        input=to_tensor(x),
        start=start,
        end=end,
        request_id=request_id,
    )
    if expected_step is not None:
        req.expected_step = expected_step
    return req


def frame_request(
    *,
    model: str,
    version: int,
    session_ids: list[str],
    x: npt.ArrayLike,
    request_id: str,
    start: bool | list[bool] = False,
    end: bool | list[bool] = False,
    expected_step: list[int] | None = None,
) -> pb.FrameRequest:
    """x is [N, T, F] (or [N, T] for one feature); flags are one bool for all or N of them;
    expected_step holds N values, -1 = no check for that session."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    n = len(session_ids)
    if arr.ndim != 3 or arr.shape[0] != n:
        raise InvalidArgument(
            f"a frame of {n} sessions needs x of shape [{n}, T, F], got {list(arr.shape)}"
        )

    def flags(value: bool | list[bool], name: str) -> list[bool]:
        out = [value] * n if isinstance(value, bool) else list(value)
        if len(out) != n:
            raise InvalidArgument(f"{name} needs {n} flags, got {len(out)}")
        return out

    req = pb.FrameRequest(
        model=model,
        model_version=version,
        session_ids=session_ids,
        input=to_tensor(arr),
        start=flags(start, "start"),
        end=flags(end, "end"),
        request_id=request_id,
    )
    if expected_step is not None:
        if len(expected_step) != n:
            raise InvalidArgument(f"expected_step needs {n} values, got {len(expected_step)}")
        req.expected_step.extend(expected_step)
    return req


def frame_result(resp: pb.FrameResponse) -> FrameResult:
    """The per-session results of a frame; a frame-wide error status is raised."""
    if resp.status.code != 0:
        raise status_error(resp.status.code, resp.status.message)
    errors: list[RnnServeError | None] = [
        None if code == 0 else status_error(code, message, step)
        for code, message, step in zip(resp.code, resp.message, resp.step, strict=True)
    ]
    return FrameResult(
        session_ids=list(resp.session_ids),
        y=from_tensor(resp.output),
        steps=[int(s) for s in resp.step],
        errors=errors,
    )


def predict_request(
    *, model: str, version: int, x: FloatArray, request_id: str
) -> pb.PredictRequest:
    return pb.PredictRequest(
        model=model, model_version=version, input=to_tensor(x), request_id=request_id
    )


def forecast_request(*, session_id: str, horizon: int, request_id: str) -> pb.ForecastRequest:
    return pb.ForecastRequest(session_id=session_id, horizon=horizon, request_id=request_id)


def list_sessions_request(model: str | None, limit: int) -> pb.ListSessionsRequest:
    return pb.ListSessionsRequest(model=model or "", limit=limit)


# -- replies --------------------------------------------------------------------------------------
def session_info(msg: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=msg.session_id,
        model=msg.model,
        version=int(msg.model_version),
        step=int(msg.step),
        created_unix=float(msg.created_unix),
        last_active_unix=float(msg.last_active_unix),
    )


def model_info(msg: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=msg.name,
        versions=[int(v) for v in msg.versions],
        latest_version=int(msg.latest_version),
        variant=msg.variant,
        streaming=bool(msg.streaming),
        ready=bool(msg.ready),
    )


def snapshot_from_pb(msg: pb.SessionSnapshot) -> SessionSnapshot:
    states: dict[str, npt.NDArray[np.generic]] = {}
    for value in msg.states:
        dtype = _STATE_DTYPES.get(value.dtype)
        if dtype is None:
            raise InvalidArgument(f"state {value.name!r} has an unsupported dtype {value.dtype}")
        shape = tuple(int(d) for d in value.shape)
        states[value.name] = np.frombuffer(value.data, dtype=dtype).reshape(shape).copy()
    return SessionSnapshot(info=session_info(msg.session), states=states)


def snapshot_to_pb(snapshot: SessionSnapshot) -> pb.SessionSnapshot:
    info = snapshot.info
    msg = pb.SessionSnapshot(
        session=pb.SessionInfo(
            session_id=info.session_id,
            model=info.model,
            model_version=info.version,
            step=info.step,
            created_unix=info.created_unix,
            last_active_unix=info.last_active_unix,
        )
    )
    for name, arr in snapshot.states.items():
        if np.issubdtype(arr.dtype, np.integer):
            dtype, data = repo_pb.INT64, np.ascontiguousarray(arr, dtype="<i8").tobytes()
        else:
            dtype, data = repo_pb.FLOAT32, np.ascontiguousarray(arr, dtype="<f4").tobytes()
        msg.states.add(name=name, shape=list(arr.shape), dtype=dtype, data=data)
    return msg


def status_error(code: int, message: str, step: int | None = None) -> RnnServeError:
    """The exception for a per-message status inside a Stream reply."""
    err = error_from_code(code, message)
    if isinstance(err, FailedPrecondition):
        err.step = step
    return err


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a session does with a step reply: take `y` and `step`, or raise `error` (after setting
    its step index to `step` when that is not None), or ask the server for its step count."""

    y: FloatArray | None = None
    step: int | None = None
    error: RnnServeError | None = None
    need_step: bool = False


def interpret_step(
    resp: pb.StepResponse,
    *,
    expected_step: int,
    steps: int,
    resent: bool,
    start: bool,
    end: bool = False,
) -> StepOutcome:
    """Decide what a step reply means for the session that sent it.

    `expected_step` is the session's step index before the chunk, `steps` the chunk's length and
    `resent` whether this reply answers a resend after a broken connection. A resend that the
    server rejects with FAILED_PRECONDITION at exactly `expected_step + steps` proves the first
    send was applied and only its reply was lost: that becomes `ReplyLost`.
    """
    code = int(resp.status.code)
    if code == 0:
        return StepOutcome(y=from_tensor(resp.output), step=int(resp.step))
    if resent and end and not start and code == NotFound.code.value[0]:
        # The first send carried end=True: it was (most likely) applied and freed the session.
        lost = ReplyLost(
            f"the connection broke after the final chunk (end=True) of the session; the server "
            f"no longer has the session, so the chunk was applied and its {steps} predictions "
            "are lost",
            step=0,
            lost_steps=steps,
        )
        return StepOutcome(step=0, error=lost)
    if resent and not start and code == FailedPrecondition.code.value[0]:
        if resp.step == STEP_UNKNOWN:
            return StepOutcome(need_step=True)
        if resp.step == expected_step + steps:
            lost = ReplyLost(
                f"the connection broke after the server applied steps {expected_step}.."
                f"{expected_step + steps - 1}; their predictions are lost (the chunk was not "
                "applied twice)",
                step=int(resp.step),
                lost_steps=steps,
            )
            return StepOutcome(step=int(resp.step), error=lost)
    error = status_error(code, resp.status.message, int(resp.step))
    if isinstance(error, FailedPrecondition) and resp.step >= 0:
        # The session moved elsewhere (another client): follow the server's count so the next
        # chunk is accepted; the caller learns of it from this error.
        return StepOutcome(step=int(resp.step), error=error)
    return StepOutcome(error=error)
