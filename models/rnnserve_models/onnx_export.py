"""Shared ONNX export helpers: export with the repository's names, name the dynamic axes, and a
guard that refuses a graph which silently truncates long chunks.

Every exported graph takes ``x[batch, time, I]`` plus ``<state>_in[batch, ...]`` and returns
``y[batch, time, O]`` plus ``<state>_out[batch, ...]`` (see model_repository.proto). The guard
(:func:`verify_export`) runs ONNX Runtime at a chunk *longer* than the export example, because an
exporter that unrolled a Python time loop still declares a dynamic time axis and then returns only
the first steps (see /work/shared/notes/onnx-export.md).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor
from torch.jit._trace import TracerWarning

from rnnserve_models.base import RecurrentModel

# Opset used by every variant: the legacy exporter supports up to 20, torch's dynamo exporter
# emits 18 natively (no version conversion), and ORT 1.31 runs both.
DEFAULT_OPSET = 18
BATCH_DIM = "batch"
TIME_DIM = "time"
INPUT_NAME = "x"
OUTPUT_NAME = "y"
# Example sizes: >= 2, because exporters specialise dimensions of size 1.
EXAMPLE_BATCH = 2
EXAMPLE_TIME = 3
# verify_export runs this many steps more than the example, and a different batch size.
VERIFY_EXTRA_TIME = 8
VERIFY_BATCH = 3
TOLERANCE = 1e-5


class ExportVerificationError(RuntimeError):
    """The exported graph breaks the repository contract or disagrees with torch."""


def input_names(model: RecurrentModel) -> list[str]:
    return [INPUT_NAME, *(s.input_name for s in model.state_specs())]


def output_names(model: RecurrentModel) -> list[str]:
    return [OUTPUT_NAME, *(s.output_name for s in model.state_specs())]


def example_inputs(
    model: RecurrentModel, batch: int, time: int, *, seed: int = 0
) -> tuple[Tensor, ...]:
    """``(x, *states)`` in float32: random x, random float states (so the state paths are
    exercised), integer states at their initial value (counters must stay in range)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, time, model.input_size, generator=gen)
    states: list[Tensor] = []
    for spec, init in zip(model.state_specs(), model.initial_state(batch), strict=True):
        if spec.dtype.is_floating_point:
            states.append(0.5 * torch.randn(init.shape, generator=gen, dtype=spec.dtype))
        else:
            states.append(init)
    return (x, *states)


def export_copy(model: RecurrentModel) -> RecurrentModel:
    """A float32, CPU, eval-mode copy, so exporting never changes the caller's model."""
    return copy.deepcopy(model).float().cpu().eval()


def dynamic_axes(model: RecurrentModel) -> dict[str, dict[int, str]]:
    """The legacy exporter's ``dynamic_axes`` for the contract's names."""
    axes: dict[str, dict[int, str]] = {
        INPUT_NAME: {0: BATCH_DIM, 1: TIME_DIM},
        OUTPUT_NAME: {0: BATCH_DIM, 1: TIME_DIM},
    }
    for spec in model.state_specs():
        axes[spec.input_name] = {0: BATCH_DIM}
        axes[spec.output_name] = {0: BATCH_DIM}
    return axes


def dynamic_shapes(model: RecurrentModel) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes`` for ``(x, *states)``, shaped like forward()'s
    signature: ``forward(x, *state)`` takes the states as one nested tuple, ``forward(x, h, c)``
    as separate arguments."""
    batch = torch.export.Dim(BATCH_DIM)
    time = torch.export.Dim(TIME_DIM)
    states = tuple({0: batch} for _ in model.state_specs())
    params = list(inspect.signature(model.forward).parameters.values())
    if len(params) == 2 and params[1].kind is inspect.Parameter.VAR_POSITIONAL:
        return ({0: batch, 1: time}, states)
    return ({0: batch, 1: time}, *states)


def export_with_torch(
    model: RecurrentModel,
    path: Path,
    opset: int,
    *,
    dynamo: bool,
    custom_translation_table: dict[Callable[..., Any], Callable[..., Any]] | None = None,
    verify: bool = True,
) -> None:
    """Export ``model`` to ``path`` with ``torch.onnx.export``, name the axes, then verify.

    ``dynamo=False`` uses the legacy TorchScript exporter with ``dynamic_axes`` (the route that
    keeps nn.RNN as one ``RNN`` node). ``dynamo=True`` first calls ``torch.export.export`` with
    ``Dim("batch")``/``Dim("time")`` itself, so a specialised time axis raises here instead of
    being quietly re-exported at the example length; the resulting program is what is converted.
    """
    m = export_copy(model)
    args = example_inputs(m, EXAMPLE_BATCH, EXAMPLE_TIME)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw")
    with torch.no_grad(), warnings.catch_warnings():
        # Both exporters are chatty about things that do not apply here (the legacy exporter's
        # own deprecation, batch-size advice for variable-length sequences).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
        # Tracing shape checks inside torch's modules; a graph that really did freeze a shape is
        # caught by verify_export below, which is the check that counts.
        warnings.filterwarnings("ignore", category=TracerWarning)
        if dynamo:
            program = torch.export.export(m, args, dynamic_shapes=dynamic_shapes(m), strict=False)
            torch.onnx.export(
                program,
                args,
                str(raw),
                input_names=input_names(m),
                output_names=output_names(m),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
                custom_translation_table=custom_translation_table,
            )
        else:
            torch.onnx.export(
                m,
                args,
                str(raw),
                input_names=input_names(m),
                output_names=output_names(m),
                opset_version=opset,
                dynamo=False,
                dynamic_axes=dynamic_axes(m),
            )
    try:
        proto = onnx.load(str(raw))
    finally:
        raw.unlink(missing_ok=True)
    save_verified(proto, m, path, verify=verify)


def save_verified(
    proto: onnx.ModelProto, model: RecurrentModel, path: Path, *, verify: bool = True
) -> None:
    """Name the dynamic axes, check, write to a temporary file, run :func:`verify_export`, and
    only then move the graph to ``path``: a graph that fails the guard is never left there."""
    name_dynamic_axes(proto, model)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save(proto, str(tmp))
        if verify:
            verify_export(model, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _dims(value: onnx.ValueInfoProto) -> Sequence[onnx.TensorShapeProto.Dimension]:
    return value.type.tensor_type.shape.dim


def _axes_of(name: str) -> dict[int, str]:
    if name in (INPUT_NAME, OUTPUT_NAME):
        return {0: BATCH_DIM, 1: TIME_DIM}
    return {0: BATCH_DIM}


def name_dynamic_axes(proto: onnx.ModelProto, model: RecurrentModel) -> None:
    """Rename the exporter's symbols for the batch/time axes to ``batch``/``time`` everywhere,
    and set output batch/time dims the exporter left as numbers to those names.

    An *input* batch/time axis fixed to a number is not fixed up: it means the exporter
    specialised the graph to the example, and the export is refused.
    """
    graph = proto.graph
    rename: dict[str, str] = {}
    for value in graph.input:
        if value.name not in input_names(model):
            continue
        dims = _dims(value)
        for axis, wanted in _axes_of(value.name).items():
            dim = dims[axis]
            if not dim.HasField("dim_param"):
                raise ExportVerificationError(
                    f"input {value.name!r} axis {axis} ({wanted}) was exported as the fixed size "
                    f"{dim.dim_value}: the graph is specialised to the example (a traced loop?)"
                )
            if rename.setdefault(dim.dim_param, wanted) != wanted:
                raise ExportVerificationError(
                    f"the exporter tied the {wanted} axis to {rename[dim.dim_param]!r}"
                )
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in _dims(value):
            if dim.HasField("dim_param") and dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    for value in graph.output:
        dims = _dims(value)
        for axis, wanted in _axes_of(value.name).items():
            if axis < len(dims):
                dims[axis].dim_param = wanted  # clears a dim_value (oneof)


_ONNX_DTYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.int64: onnx.TensorProto.INT64}


def check_graph_contract(proto: onnx.ModelProto, model: RecurrentModel) -> None:
    """Names, order, dtypes and shapes of the graph's inputs and outputs follow the contract,
    with the batch and time axes *named*."""
    graph = proto.graph
    actual_in = [v.name for v in graph.input]
    actual_out = [v.name for v in graph.output]
    if actual_in != input_names(model) or actual_out != output_names(model):
        raise ExportVerificationError(
            f"graph inputs {actual_in} / outputs {actual_out}; expected "
            f"{input_names(model)} / {output_names(model)}"
        )
    expected: dict[str, tuple[int, list[int | str]]] = {
        INPUT_NAME: (onnx.TensorProto.FLOAT, [BATCH_DIM, TIME_DIM, model.input_size]),
        OUTPUT_NAME: (onnx.TensorProto.FLOAT, [BATCH_DIM, TIME_DIM, model.output_size]),
    }
    for spec in model.state_specs():
        shape: list[int | str] = [BATCH_DIM, *spec.shape]
        expected[spec.input_name] = expected[spec.output_name] = (_ONNX_DTYPES[spec.dtype], shape)
    for value in [*graph.input, *graph.output]:
        dtype, shape = expected[value.name]
        got = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in _dims(value)]
        if value.type.tensor_type.elem_type != dtype or got != shape:
            raise ExportVerificationError(
                f"{value.name!r}: dtype {value.type.tensor_type.elem_type} shape {got}; "
                f"expected dtype {dtype} shape {shape}"
            )


def ort_session(path: Path) -> Any:
    import onnxruntime as ort  # imported here: only export checks need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the build machines are small and shared
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, model: RecurrentModel, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    feeds = {
        name: t.detach().cpu().numpy() for name, t in zip(input_names(model), inputs, strict=True)
    }
    outputs: list[np.ndarray] = session.run(output_names(model), feeds)
    return outputs


def verify_export(
    model: RecurrentModel,
    path: Path,
    *,
    batch: int = VERIFY_BATCH,
    time: int = EXAMPLE_TIME + VERIFY_EXTRA_TIME,
    tolerance: float = TOLERANCE,
) -> float:
    """Refuse a graph that breaks the contract or disagrees with torch at a longer chunk.

    Checks the named axes and I/O contract, then runs ONNX Runtime (CPU) on ``batch`` x ``time``
    random inputs and compares every output with the float32 torch model (absolute and relative
    tolerance ``tolerance``; integer states exactly). Returns the largest absolute difference.
    """
    m = export_copy(model)
    if time <= EXAMPLE_TIME:
        raise ValueError(f"verify at a chunk longer than the export example ({EXAMPLE_TIME})")
    check_graph_contract(onnx.load(str(path)), m)
    inputs = example_inputs(m, batch, time, seed=1)
    try:
        got = run_onnx(ort_session(path), m, inputs)
    except Exception as exc:  # ORT raises its own untyped errors
        raise ExportVerificationError(
            f"ONNX Runtime failed on a {batch}x{time} chunk: {exc}"
        ) from exc
    with torch.no_grad():
        want = [t.numpy() for t in m(*inputs)]
    worst = 0.0
    for name, g, w in zip(output_names(m), got, want, strict=True):
        if g.shape != w.shape:
            raise ExportVerificationError(
                f"{name!r} has shape {g.shape} from ONNX Runtime but {w.shape} from torch "
                f"(a graph unrolled to the export example truncates longer chunks)"
            )
        if not np.allclose(g, w, rtol=tolerance, atol=tolerance):
            raise ExportVerificationError(
                f"{name!r} differs from torch by up to {np.abs(g - w).max():.3g}"
            )
        if g.size:
            worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()))
    return worst
