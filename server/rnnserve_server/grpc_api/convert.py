"""Pure protobuf <-> domain conversions for the native API. No I/O, no service calls.

Tensors travel as little-endian float32 bytes; reading one is a zero-copy `np.frombuffer` view
(read-only), writing one is a single `tobytes()`. Structural problems (wrong rank, byte count that
does not match the shape, mismatched per-session lists in a frame) raise InvalidArgument here;
checks that need the model (feature counts, chunk limits, finiteness) belong to the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from rnnserve_proto import model_repository_pb2 as repo_pb2
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.errors import ErrorCode, InvalidArgument
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

_F32 = np.dtype("<f4")
_STATE_DTYPES: dict[int, np.dtype[np.generic]] = {
    repo_pb2.FLOAT32: np.dtype("<f4"),
    repo_pb2.INT64: np.dtype("<i8"),
}
_DTYPE_ENUMS: dict[str, int] = {"float32": repo_pb2.FLOAT32, "int64": repo_pb2.INT64}


def version_or_latest(version: int) -> int | None:
    """Proto uses 0 for "latest"; the service uses None. A negative version is a client error,
    not another spelling of "latest"."""
    if version > 0:
        return version
    if version < 0:
        raise InvalidArgument(f"model_version must be >= 0 (0 = latest), got {version}")
    return None


# -- tensors -------------------------------------------------------------------------------------
def tensor_to_array(tensor: pb.Tensor, ranks: Sequence[int], what: str = "input") -> FloatArray:
    """A read-only float32 view of the tensor's bytes with its declared shape."""
    data = tensor.data
    dims = tensor.shape
    # Once per streamed step: a well-formed 2-D tensor takes the short way (no tuple, no loop);
    # anything else is checked below, where each problem gets its message.
    if len(dims) == 2 and 2 in ranks:
        rows = dims[0]
        cols = dims[1]
        if rows >= 0 and cols >= 0 and len(data) == rows * cols * 4:
            return np.ndarray((rows, cols), _F32, data)  # one call: frombuffer + reshape
    shape = tuple(dims)
    if len(shape) not in ranks:
        wanted = " or ".join(str(r) for r in ranks)
        raise InvalidArgument(
            f"{what} must have rank {wanted}, got shape {list(shape)} (rank {len(shape)})"
        )
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{what} shape {list(shape)} has a negative dimension")
        count *= dim
    if len(data) != count * 4:
        raise InvalidArgument(
            f"{what} shape {list(shape)} needs {count * 4} bytes of float32 data, "
            f"got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=_F32).reshape(shape)


def array_to_tensor(array: npt.NDArray[np.floating], out: pb.Tensor | None = None) -> pb.Tensor:
    """Fill `out` (or a new Tensor) with the array as little-endian float32 bytes."""
    tensor = pb.Tensor() if out is None else out
    tensor.shape[:] = array.shape
    tensor.data = np.ascontiguousarray(array, dtype=_F32).tobytes()
    return tensor


# -- steps ---------------------------------------------------------------------------------------
def step_input(request: pb.StepRequest) -> StepInput:
    return StepInput(
        request.session_id,
        request.model,
        version_or_latest(request.model_version),
        tensor_to_array(request.input, (2,)),
        request.start,
        request.end,
        request.expected_step if request.HasField("expected_step") else None,
    )


def step_response(
    out: StepOutput, request_id: str, response: pb.StepResponse | None = None
) -> pb.StepResponse:
    """Fill `response` (e.g. a fresh StreamResponse's `step`, avoiding a copy) or a new one."""
    r = pb.StepResponse() if response is None else response
    fill_step_response(r, out.session_id, request_id, out.model, out.version, out.y, out.step)
    return r


def fill_step_response(
    r: pb.StepResponse,
    session_id: str,
    request_id: str,
    model: str,
    version: int,
    y: FloatArray,
    step: int,
) -> None:
    """`step_response` from plain values, for the streamed-step hot path."""
    r.session_id = session_id
    r.request_id = request_id
    r.step = step
    r.model = model
    r.model_version = version
    output = r.output
    output.shape.extend(y.shape)
    output.data = y.tobytes() if y.dtype == _F32 else y.astype(_F32).tobytes()


def step_error_response(request: pb.StepRequest, status: pb.Status, step: int) -> pb.StepResponse:
    """The reply to a rejected stream step: no output, the session's unchanged step count."""
    return pb.StepResponse(
        session_id=request.session_id,
        request_id=request.request_id,
        step=step,
        status=status,
        model=request.model,
        model_version=request.model_version,
    )


# -- frames --------------------------------------------------------------------------------------
def _flags(values: Sequence[bool], n: int, name: str) -> npt.NDArray[np.bool_]:
    if not values:
        return np.zeros(n, dtype=np.bool_)
    if len(values) != n:
        raise InvalidArgument(f"frame has {n} session ids but {len(values)} {name} flags")
    return np.fromiter(values, dtype=np.bool_, count=n)


def frame_input(request: pb.FrameRequest) -> FrameInput:
    x = tensor_to_array(request.input, (3,))
    n = len(request.session_ids)
    if x.shape[0] != n:
        raise InvalidArgument(f"frame input has {x.shape[0]} rows (axis 0) but {n} session ids")
    expected = request.expected_step
    if expected and len(expected) != n:
        raise InvalidArgument(f"frame has {n} session ids but {len(expected)} expected_step values")
    return FrameInput(
        model=request.model,
        version=version_or_latest(request.model_version),
        session_ids=list(request.session_ids),
        x=x,
        start=_flags(request.start, n, "start"),
        end=_flags(request.end, n, "end"),
        expected_step=(
            np.fromiter(expected, dtype=np.int64, count=n)
            if expected
            else np.full(n, -1, dtype=np.int64)
        ),
    )


def frame_response(
    out: FrameOutput, request_id: str, response: pb.FrameResponse | None = None
) -> pb.FrameResponse:
    """Fill `response` (a fresh message, e.g. a StreamResponse's `frame`) or a new one."""
    r = pb.FrameResponse() if response is None else response
    r.request_id = request_id
    r.session_ids.extend(out.session_ids)
    r.step.extend(out.steps.tolist())
    errors = out.errors
    n = len(errors)
    if errors.count(None) == n:  # every session ran: no per-row Python
        r.code.extend([int(ErrorCode.OK)] * n)
        r.message.extend([""] * n)
    else:
        r.code.extend([int(ErrorCode.OK) if e is None else int(e.code) for e in errors])
        r.message.extend(["" if e is None else e.message for e in errors])
    r.model = out.model
    r.model_version = out.version
    array_to_tensor(out.y, r.output)
    return r


def frame_error_response(request: pb.FrameRequest, status: pb.Status) -> pb.FrameResponse:
    return pb.FrameResponse(
        request_id=request.request_id,
        model=request.model,
        model_version=request.model_version,
        status=status,
    )


# -- predict / forecast --------------------------------------------------------------------------
def predict_response(y: FloatArray, request: pb.PredictRequest, version: int) -> pb.PredictResponse:
    response = pb.PredictResponse(
        model=request.model, model_version=version, request_id=request.request_id
    )
    array_to_tensor(y, response.output)
    return response


def forecast_response(y: FloatArray, step: int, request: pb.ForecastRequest) -> pb.ForecastResponse:
    response = pb.ForecastResponse(
        session_id=request.session_id, step=step, request_id=request.request_id
    )
    array_to_tensor(y, response.output)
    return response


# -- sessions ------------------------------------------------------------------------------------
def session_info(info: SessionInfo) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=info.session_id,
        model=info.model,
        model_version=info.version,
        step=info.step,
        created_unix=info.created_unix,
        last_active_unix=info.last_active_unix,
    )


def session_info_from_proto(info: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=info.session_id,
        model=info.model,
        version=info.model_version,
        step=info.step,
        created_unix=info.created_unix,
        last_active_unix=info.last_active_unix,
    )


def snapshot_proto(snapshot: SessionSnapshot) -> pb.SessionSnapshot:
    states = []
    for name, value in snapshot.states.items():
        array = np.asarray(value)
        dtype_enum = _DTYPE_ENUMS.get(array.dtype.name)
        if dtype_enum is None:
            raise InvalidArgument(f"state {name!r} has unsupported dtype {array.dtype}")
        states.append(
            pb.StateValue(
                name=name,
                shape=array.shape,
                dtype=dtype_enum,  # type: ignore[arg-type]
                data=np.ascontiguousarray(array, dtype=_STATE_DTYPES[dtype_enum]).tobytes(),
            )
        )
    return pb.SessionSnapshot(session=session_info(snapshot.info), states=states)


def snapshot_from_proto(snapshot: pb.SessionSnapshot) -> SessionSnapshot:
    states: dict[str, np.ndarray] = {}
    for value in snapshot.states:
        dtype = _STATE_DTYPES.get(value.dtype)
        if dtype is None:
            raise InvalidArgument(f"state {value.name!r} has unsupported dtype {value.dtype}")
        if value.name in states:
            raise InvalidArgument(f"state {value.name!r} appears twice in the snapshot")
        shape = tuple(value.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(f"state {value.name!r} has a negative dimension: {list(shape)}")
        count = int(np.prod(shape, dtype=np.int64))
        if len(value.data) != count * dtype.itemsize:
            raise InvalidArgument(
                f"state {value.name!r} of shape {list(shape)} needs "
                f"{count * dtype.itemsize} bytes, got {len(value.data)}"
            )
        # A copy: the service keeps these arrays, and frombuffer views are read-only.
        states[value.name] = np.frombuffer(value.data, dtype=dtype).reshape(shape).copy()
    return SessionSnapshot(info=session_info_from_proto(snapshot.session), states=states)


# -- models --------------------------------------------------------------------------------------
def model_info(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info.name,
        versions=info.versions,
        latest_version=info.latest_version,
        variant=info.variant,
        streaming=info.streaming,
        ready=info.ready,
    )


def list_models_response(infos: Iterable[ModelInfo]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(i) for i in infos])
