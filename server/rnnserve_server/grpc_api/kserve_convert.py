"""Pure conversions between KServe v2 / Triton messages and the service layer's domain types.

No I/O and no service calls: everything here takes messages, metadata and arrays and returns
messages, arrays or small dataclasses; client mistakes raise InvalidArgument with a message that
names the tensor, the model and what was expected.

Tensor semantics (documented in docs/kserve.md):
- Input `x` is FP32 [batch, time, features]; FP64 is accepted and rounded to float32 (relative
  error at most 2**-24 ≈ 6e-8 per value; values beyond float32's range become inf and are
  rejected as non-finite by the service).
- A sequence request (one carrying a sequence id) has batch 1, as in Triton; time is free, so one
  request may carry a chunk of steps.
- Outputs go back as raw little-endian contents, the only form tritonclient reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from rnnserve_proto import kserve_pb2 as kpb
from rnnserve_proto import model_repository_pb2 as repo_pb2
from rnnserve_server.errors import InvalidArgument
from rnnserve_server.types import FloatArray, ModelInfo, SessionSnapshot, StepInput

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's extension names, only for what is fully served: `sequence` is the sequence_id/start/
# end parameters. Not `model_repository`: RepositoryIndex works, load/unload do not.
EXTENSIONS = ("model_configuration", "parameters", "sequence", "statistics")

_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
_I64 = np.dtype("<i8")
_INPUT_DTYPES: dict[str, np.dtype[np.generic]] = {"FP32": _F32, "FP64": _F64}
_STATE_DATATYPES: dict[int, tuple[str, np.dtype[np.generic], int]] = {
    repo_pb2.FLOAT32: ("FP32", _F32, kpb.TYPE_FP32),
    repo_pb2.INT64: ("INT64", _I64, kpb.TYPE_INT64),
}

SEQUENCE_ID = "sequence_id"
SEQUENCE_START = "sequence_start"
SEQUENCE_END = "sequence_end"


# -- versions ------------------------------------------------------------------------------------
def parse_version(version: str) -> int | None:
    """KServe versions are strings; "" (or "0"/"-1") means the latest loaded version."""
    text = version.strip()
    if text in ("", "0", "-1"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(
            f"model version {version!r} is not a number; use a version such as '1' or '' for "
            "the latest"
        ) from None
    if value < 1:
        raise InvalidArgument(f"model version {version!r} must be 1 or more ('' = latest)")
    return value


# -- sequence parameters -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SequenceControl:
    """The sequence extension's parameters of one request, mapped to the native session id.

    `session_id` is None for a request outside any sequence (stateless), "" for a start that asks
    the server to assign an id. `id_kind` says how to echo the id back.
    """

    session_id: str | None
    id_kind: Literal["int", "string", "none"]
    start: bool
    end: bool

    @property
    def is_sequence(self) -> bool:
        return self.session_id is not None


def _bool_param(params: Mapping[str, kpb.InferParameter], key: str) -> bool:
    if key not in params:
        return False
    param = params[key]
    kind = param.WhichOneof("parameter_choice")
    if kind == "bool_param":
        return param.bool_param
    if kind in ("int64_param", "uint64_param"):  # lenient: 0/1 as some hand-written clients send
        value = param.int64_param if kind == "int64_param" else param.uint64_param
        if value in (0, 1):
            return bool(value)
    raise InvalidArgument(f"parameter {key!r} must be a bool_param (got {kind or 'nothing'})")


def parse_sequence(params: Mapping[str, kpb.InferParameter]) -> SequenceControl:
    """sequence_id as int64_param/uint64_param (→ str(int)) or string_param (as given); 0 or ""
    means "no sequence", except together with sequence_start, which asks for a server-assigned
    id (Triton would reject it; rnnserve mirrors its native API)."""
    start = _bool_param(params, SEQUENCE_START)
    end = _bool_param(params, SEQUENCE_END)
    id_kind: Literal["int", "string", "none"] = "none"
    session_id: str | None = None
    if SEQUENCE_ID in params:
        param = params[SEQUENCE_ID]
        kind = param.WhichOneof("parameter_choice")
        if kind == "int64_param":
            id_kind = "int"
            session_id = str(param.int64_param) if param.int64_param != 0 else None
        elif kind == "uint64_param":
            id_kind = "int"
            session_id = str(param.uint64_param) if param.uint64_param != 0 else None
        elif kind == "string_param":
            id_kind = "string"
            session_id = param.string_param or None
        else:
            raise InvalidArgument(
                "parameter 'sequence_id' must be an int64_param, uint64_param or string_param "
                f"(got {kind or 'nothing'})"
            )
    if session_id is None:
        if start:
            return SequenceControl(session_id="", id_kind="string", start=True, end=end)
        if end:
            raise InvalidArgument(
                "sequence_end is set but the request has no sequence_id (0 and '' mean none)"
            )
        return SequenceControl(session_id=None, id_kind="none", start=False, end=False)
    return SequenceControl(session_id=session_id, id_kind=id_kind, start=start, end=end)


def sequence_id_param(
    session_id: str, id_kind: Literal["int", "string", "none"]
) -> kpb.InferParameter:
    """Echo the id in the kind the client used; server-assigned ids are strings."""
    if id_kind == "int":
        try:
            return kpb.InferParameter(int64_param=int(session_id))
        except ValueError:  # pragma: no cover - int ids are produced by str(int)
            pass
    return kpb.InferParameter(string_param=session_id)


# -- inputs --------------------------------------------------------------------------------------
def decode_input(request: kpb.ModelInferRequest, meta: repo_pb2.ModelMetadata) -> FloatArray:
    """The model input `x` as float32 [batch, time, features] (raw values, not yet normalised)."""
    model = meta.name
    names = [t.name for t in request.inputs]
    if len(names) != 1 or names[0] != meta.input_name:
        raise InvalidArgument(
            f"model {model!r} takes exactly one input, {meta.input_name!r} (FP32 [batch, time, "
            f"{meta.input_features}]); got {names or 'none'}. Recurrent state is kept by the "
            "server and never sent."
        )
    tensor = request.inputs[0]
    dtype = _INPUT_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input {tensor.name!r} of model {model!r} has datatype {tensor.datatype or '(none)'};"
            " expected FP32 (FP64 is accepted and rounded to float32)"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 3 or any(d < 0 for d in shape) or shape[2] != meta.input_features:
        raise InvalidArgument(
            f"input {tensor.name!r} of model {model!r} has shape {list(shape)}; expected "
            f"[batch, time, {meta.input_features}]"
        )
    count = shape[0] * shape[1] * shape[2]
    if count == 0:
        raise InvalidArgument(
            f"input {tensor.name!r} of model {model!r} is empty (shape {list(shape)}); batch and "
            "time must be at least 1"
        )
    has_typed = tensor.HasField("contents") and _typed_len(tensor.contents) > 0
    if request.raw_input_contents:
        if has_typed:
            raise InvalidArgument(
                f"input {tensor.name!r} has both raw_input_contents and typed contents; use one"
            )
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input {tensor.name!r}: {len(raw)} bytes of raw contents do not match shape "
                f"{list(shape)} of {tensor.datatype} ({count * dtype.itemsize} bytes expected)"
            )
        values: npt.NDArray[np.generic] = np.frombuffer(raw, dtype=dtype)
    else:
        values = _typed_values(tensor, dtype, count)
    x: FloatArray = values.astype(np.float32, copy=False).reshape(shape)
    return x


def _typed_len(contents: kpb.InferTensorContents) -> int:
    return sum(len(getattr(contents, f.name)) for f in kpb.InferTensorContents.DESCRIPTOR.fields)


def _typed_values(
    tensor: kpb.ModelInferRequest.InferInputTensor, dtype: np.dtype[np.generic], count: int
) -> npt.NDArray[np.generic]:
    field = "fp32_contents" if dtype == _F32 else "fp64_contents"
    values = getattr(tensor.contents, field)
    others = _typed_len(tensor.contents) - len(values)
    if others:
        raise InvalidArgument(
            f"input {tensor.name!r} is {tensor.datatype} but its contents are not in {field}"
        )
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: {len(values)} values in contents.{field} do not match shape "
            f"{list(tensor.shape)} ({count} values expected)"
        )
    return np.asarray(values, dtype=dtype)


def sequence_chunk(x: FloatArray, model: str) -> FloatArray:
    """A sequence request's [1, T, F] input as the service's [T, F] chunk."""
    if x.shape[0] != 1:
        raise InvalidArgument(
            f"a sequence request to model {model!r} must have batch size 1 (shape [1, time, "
            f"features]); got batch {x.shape[0]}. Send one request per sequence."
        )
    chunk: FloatArray = x[0]
    return chunk


def sequence_step(
    request: kpb.ModelInferRequest,
    meta: repo_pb2.ModelMetadata,
    sequence: SequenceControl,
    x: FloatArray,
    *,
    end: bool,
) -> StepInput:
    """A sequence request as the service's step. Its version "" (latest) follows the sequence to
    the version it lives on, as the native API's version 0 does."""
    return StepInput(
        session_id=sequence.session_id or "",
        model=meta.name,
        version=parse_version(request.model_version),
        x=sequence_chunk(x, meta.name),
        start=sequence.start,
        end=end,
    )


# -- outputs -------------------------------------------------------------------------------------
def requested_outputs(request: kpb.ModelInferRequest, meta: repo_pb2.ModelMetadata) -> list[str]:
    """Names of the outputs to return, in request order; default: the prediction only."""
    if not request.outputs:
        return [meta.output_name]
    valid = [meta.output_name, *[s.output_name for s in meta.states]]
    names: list[str] = []
    for out in request.outputs:
        if out.name not in valid:
            raise InvalidArgument(
                f"model {meta.name!r} has no output {out.name!r}; outputs: {', '.join(valid)}"
            )
        if out.name not in names:
            names.append(out.name)
    return names


def state_outputs(
    snapshot: SessionSnapshot, meta: repo_pb2.ModelMetadata, names: Iterable[str]
) -> dict[str, tuple[str, npt.NDArray[np.generic]]]:
    """Requested state outputs (by ONNX output name) from a session snapshot: datatype and the
    value with a leading batch axis of 1."""
    wanted = set(names)
    result: dict[str, tuple[str, npt.NDArray[np.generic]]] = {}
    for state in meta.states:
        if state.output_name not in wanted:
            continue
        datatype, dtype, _ = _STATE_DATATYPES[state.dtype]
        value = np.asarray(snapshot.states[state.name], dtype=dtype)
        result[state.output_name] = (datatype, value.reshape((1, *value.shape)))
    return result


def infer_response(
    *,
    model: str,
    version: int,
    request_id: str,
    outputs: Sequence[tuple[str, str, npt.NDArray[np.generic]]],
    sequence: SequenceControl | None = None,
    session_id: str | None = None,
) -> kpb.ModelInferResponse:
    """outputs: (name, datatype, array) in the order to return them; `session_id` (of a
    sequence request) is echoed as the sequence_id parameter."""
    response = kpb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
    for name, datatype, array in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    if sequence is not None and session_id is not None:
        response.parameters[SEQUENCE_ID].CopyFrom(sequence_id_param(session_id, sequence.id_kind))
    return response


def y_output(y: FloatArray, meta: repo_pb2.ModelMetadata) -> tuple[str, str, FloatArray]:
    return (meta.output_name, "FP32", np.asarray(y, dtype=_F32))


def describe_request(request_id: str, session_id: str | None) -> str:
    """Prefix for stream error messages, so a client can tell which request failed (stream
    errors carry only a message)."""
    parts = []
    if request_id:
        parts.append(f"request {request_id!r}")
    if session_id:
        parts.append(f"sequence {session_id!r}")
    return (", ".join(parts) + ": ") if parts else ""


# -- metadata ------------------------------------------------------------------------------------
def model_metadata_response(
    meta: repo_pb2.ModelMetadata, info: ModelInfo
) -> kpb.ModelMetadataResponse:
    """Inputs and outputs as a client sends and receives them: [batch, time, features], with -1
    for the dynamic batch and time axes. State tensors are not listed (the server keeps them);
    they appear in ModelConfig's sequence_batching.state and can be requested by name."""
    tensor = kpb.ModelMetadataResponse.TensorMetadata
    return kpb.ModelMetadataResponse(
        name=meta.name,
        versions=[str(v) for v in info.versions],
        platform=PLATFORM,
        inputs=[tensor(name=meta.input_name, datatype="FP32", shape=[-1, -1, meta.input_features])],
        outputs=[
            tensor(name=meta.output_name, datatype="FP32", shape=[-1, -1, meta.output_features])
        ],
    )


def model_config_response(
    meta: repo_pb2.ModelMetadata, *, max_batch_size: int, idle_ttl_s: float
) -> kpb.ModelConfigResponse:
    """Triton-style config: dims exclude the batch axis (max_batch_size > 0). Streaming models
    declare sequence batching with implicit state; whole-sequence models dynamic batching."""
    config = kpb.ModelConfig(
        name=meta.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=max_batch_size,
        input=[
            kpb.ModelInput(
                name=meta.input_name, data_type=kpb.TYPE_FP32, dims=[-1, meta.input_features]
            )
        ],
        output=[
            kpb.ModelOutput(
                name=meta.output_name, data_type=kpb.TYPE_FP32, dims=[-1, meta.output_features]
            )
        ],
    )
    if meta.streaming:
        config.sequence_batching.max_sequence_idle_microseconds = int(idle_ttl_s * 1e6)
        for state in meta.states:
            config.sequence_batching.state.add(
                input_name=state.input_name,
                output_name=state.output_name,
                data_type=_STATE_DATATYPES[state.dtype][2],
                dims=list(state.shape),
            )
    else:
        config.dynamic_batching.SetInParent()
    return kpb.ModelConfigResponse(config=config)


def repository_index(models: Iterable[ModelInfo], ready_only: bool) -> kpb.RepositoryIndexResponse:
    response = kpb.RepositoryIndexResponse()
    for info in models:
        if ready_only and not info.ready:
            continue
        state = "READY" if info.ready else "UNAVAILABLE"
        for version in info.versions:
            response.models.add(name=info.name, version=str(version), state=state)
    return response


# -- statistics ----------------------------------------------------------------------------------
@dataclass(slots=True)
class ModelCounters:
    """Per model version, counted by the KServe front end (requests it served)."""

    inference_count: int = 0  # batch items
    execution_count: int = 0  # successful requests
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0

    def record(self, *, ok: bool, batch: int, elapsed_ns: int) -> None:
        if ok:
            self.success_count += 1
            self.success_ns += elapsed_ns
            self.execution_count += 1
            self.inference_count += batch
            self.last_inference_ms = time.time_ns() // 1_000_000
        else:
            self.fail_count += 1
            self.fail_ns += elapsed_ns


def model_statistics(name: str, version: int, counters: ModelCounters) -> kpb.ModelStatistics:
    duration = kpb.StatisticDuration
    return kpb.ModelStatistics(
        name=name,
        version=str(version),
        last_inference=counters.last_inference_ms,
        inference_count=counters.inference_count,
        execution_count=counters.execution_count,
        inference_stats=kpb.InferStatistics(
            success=duration(count=counters.success_count, ns=counters.success_ns),
            fail=duration(count=counters.fail_count, ns=counters.fail_ns),
        ),
    )
