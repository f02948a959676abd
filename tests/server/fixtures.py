"""Tiny model repositories built with onnx.helper, and an offline ONNX Runtime reference.

The graphs follow the repository contract (batch-major state tensors named `<state>_in` /
`<state>_out`, input `x` [B, T, F], output `y` [B, T, O]):
- `gru` (versions 1 and 2): one native ONNX GRU layer, state `h` [1, H], autoregressive (O == F),
  with a non-identity normalisation.
- `counter`: an int64 scalar state counting steps; y[b, t] = x[b, t] + (count[b] + t).
- `whole`: a whole-sequence (non-streaming) model, y = x - mean over time of x.
- `accumulator`: a float32 state `s` [F] that sums its inputs; y[b, t] = s[b] + x[b, 0..t] summed.
  Finite inputs can overflow it (two steps of 3e38 make inf), unlike the saturating GRU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import json_format
from onnx import TensorProto, helper, numpy_helper

from rnnserve_proto import model_repository_pb2 as mr

F = 3  # input features of every fixture model
H = 8  # GRU hidden size
OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    # IR version 10 keeps the files loadable by every onnxruntime 1.2x+ (onnx writes newer).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def _gru_graph(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.5, (1, 3 * H, F)).astype(np.float32)
    R = rng.normal(0, 0.5, (1, 3 * H, H)).astype(np.float32)
    Bias = rng.normal(0, 0.1, (1, 6 * H)).astype(np.float32)
    Wo = rng.normal(0, 0.5, (H, F)).astype(np.float32)
    bo = rng.normal(0, 0.1, (F,)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h_in"], ["h0"], perm=[1, 0, 2]),
        helper.make_node("GRU", ["x_t", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=H),
        helper.make_node("Squeeze", ["Y", "axis1"], ["Y_s"]),
        helper.make_node("Transpose", ["Y_s"], ["Y_b"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["Y_b", "Wo"], ["y_lin"]),
        helper.make_node("Add", ["y_lin", "bo"], ["y"]),
        helper.make_node("Transpose", ["Y_h"], ["h_out"], perm=[1, 0, 2]),
    ]
    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(R, "R"),
        numpy_helper.from_array(Bias, "B"),
        numpy_helper.from_array(Wo, "Wo"),
        numpy_helper.from_array(bo, "bo"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    graph = helper.make_graph(
        nodes,
        "gru",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["B", 1, H]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", 1, H]),
        ],
        inits,
    )
    return _model(graph)


def _counter_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["T"], axis=0),
        helper.make_node("Range", ["zero", "T", "one"], ["ts"]),
        helper.make_node("Unsqueeze", ["count_in", "one_1d"], ["c2"]),  # [B, 1]
        helper.make_node("Add", ["c2", "ts"], ["pos"]),  # [B, T]
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pos_f", "minus1"], ["pos3"]),  # [B, T, 1]
        helper.make_node("Add", ["x", "pos3"], ["y"]),
        helper.make_node("Add", ["count_in", "T"], ["count_out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one_1d"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    graph = helper.make_graph(
        nodes,
        "counter",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("count_in", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", F]),
            helper.make_tensor_value_info("count_out", TensorProto.INT64, ["B"]),
        ],
        inits,
    )
    return _model(graph)


def _accumulator_graph(features: int = F) -> onnx.ModelProto:
    nodes = [
        helper.make_node("CumSum", ["x", "time_axis"], ["sums"]),  # [B, T, F]
        helper.make_node("Unsqueeze", ["s_in", "one_1d"], ["s3"]),  # [B, 1, F]
        helper.make_node("Add", ["sums", "s3"], ["y"]),
        helper.make_node("Gather", ["y", "last"], ["s_out"], axis=1),  # [B, F]
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "time_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "one_1d"),
        numpy_helper.from_array(np.array(-1, np.int64), "last"),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", features]),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["B", features]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", features]),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["B", features]),
        ],
        inits,
    )
    return _model(graph)


def _whole_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "whole",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", F])],
        [],
    )
    return _model(graph)


def _write(root: Path, graph: onnx.ModelProto, meta: mr.ModelMetadata) -> None:
    vdir = root / meta.name / str(meta.version)
    vdir.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(vdir / "model.onnx"))
    (vdir / "metadata.json").write_text(
        json_format.MessageToJson(meta, preserving_proto_field_name=True)
    )


def _meta(name: str, version: int, variant: str, **kw: object) -> mr.ModelMetadata:
    meta = mr.ModelMetadata(
        name=name,
        version=version,
        variant=variant,
        description=f"test fixture {name}",
        onnx_file="model.onnx",
        input_name="x",
        output_name="y",
        input_features=F,
        output_features=F,
        opset=OPSET,
    )
    for key, value in kw.items():
        if key == "states":
            meta.states.extend(value)  # type: ignore[arg-type]
        elif key == "normalization":
            meta.normalization.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(meta, key, value)
    return meta


GRU_NORM = mr.Normalization(
    input_mean=[0.5, -1.0, 2.0],
    input_std=[2.0, 0.5, 1.5],
    output_mean=[0.1, 0.2, -0.3],
    output_std=[1.5, 2.0, 0.8],
)


def build_repository(root: Path) -> Path:
    """Write the fixture repository under `root` and return it."""
    for version in (1, 2):
        _write(
            root,
            _gru_graph(seed=version),
            _meta(
                "gru",
                version,
                "gru",
                streaming=True,
                autoregressive=True,
                states=[
                    mr.StateTensor(
                        name="h",
                        input_name="h_in",
                        output_name="h_out",
                        shape=[1, H],
                        dtype=mr.FLOAT32,
                        initial_value=0.0,
                    )
                ],
                normalization=GRU_NORM,
            ),
        )
    _write(
        root,
        _counter_graph(),
        _meta(
            "counter",
            1,
            "clockwork",
            streaming=True,
            states=[
                mr.StateTensor(
                    name="count",
                    input_name="count_in",
                    output_name="count_out",
                    shape=[],
                    dtype=mr.INT64,
                    initial_value=0,
                )
            ],
        ),
    )
    write_accumulator(root, "accumulator", 1)
    _write(root, _whole_graph(), _meta("whole", 1, "bidirectional", streaming=False))
    return root


def write_accumulator(
    root: Path, name: str, version: int, features: int = F, autoregressive: bool = False
) -> None:
    """An `accumulator` model version of `features` inputs (and outputs, and state); as an
    autoregressive model its forecast doubles the sum every step."""
    _write(
        root,
        _accumulator_graph(features),
        _meta(
            name,
            version,
            "rnn",
            streaming=True,
            autoregressive=autoregressive,
            input_features=features,
            output_features=features,
            states=[
                mr.StateTensor(
                    name="s",
                    input_name="s_in",
                    output_name="s_out",
                    shape=[features],
                    dtype=mr.FLOAT32,
                    initial_value=0.0,
                )
            ],
        ),
    )


def load_metadata(root: Path, name: str, version: int) -> mr.ModelMetadata:
    text = (root / name / str(version) / "metadata.json").read_text()
    return json_format.Parse(text, mr.ModelMetadata())


def offline(root: Path, name: str, version: int, x: np.ndarray) -> np.ndarray:
    """Run the whole raw sequence x [T, F] (or [B, T, F]) through ONNX Runtime directly from the
    initial state, applying the metadata's normalisation: the reference for the service."""
    meta = load_metadata(root, name, version)
    sess = ort.InferenceSession(
        str(root / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    xb = x[None] if x.ndim == 2 else x
    norm = meta.normalization
    xn = xb.astype(np.float64)
    if norm.input_mean:
        xn = (xn - np.array(norm.input_mean)) / np.array(norm.input_std)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as the server feeds it
        feeds: dict[str, np.ndarray] = {meta.input_name: xn.astype(np.float32)}
    for st in meta.states:
        dtype = np.float32 if st.dtype == mr.FLOAT32 else np.int64
        feeds[st.input_name] = np.full((xb.shape[0], *st.shape), st.initial_value, dtype)
    y = sess.run([meta.output_name], feeds)[0].astype(np.float64)
    if norm.output_mean:
        y = y * np.array(norm.output_std) + np.array(norm.output_mean)
    y32: np.ndarray = y.astype(np.float32)
    return y32[0] if x.ndim == 2 else y32


RECURRENT_OPS = ("RNN", "GRU", "LSTM")  # the ONNX ops a step graph writes out


def forward_cells_only(graph: onnx.GraphProto) -> bool:
    """The graph has recurrent ops and all of them run forward (no `direction` attribute): the
    kind of model the step graph can rewrite (tests decide this independently of the rewrite)."""
    cells = [n for n in graph.node if n.op_type in RECURRENT_OPS]
    return bool(cells) and all(all(a.name != "direction" for a in n.attribute) for n in cells)


def service_settings(root: Path, **overrides: Any) -> Any:
    """ServerSettings for an in-process service on `root`: CPU, one ORT thread, fast checks."""
    from rnnserve_server.config import ServerSettings

    values: dict[str, Any] = {
        "model_repository": root,
        # step_graph on, not "auto": whether a timing at load favours it must not decide what
        # the tests run (and the metric label they read).
        "runtime": {
            "providers": ["cpu"],
            "intra_op_threads": 1,
            "run_workers": 2,
            "step_graph": True,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return ServerSettings(**values)


def rollout(root: Path, name: str, version: int, history: np.ndarray, horizon: int) -> np.ndarray:
    """Reference forecast: the last prediction after `history`, then each prediction appended to
    the history as the next input, recomputed offline from the start."""
    seq = history
    preds = [offline(root, name, version, seq)[-1]]
    for _ in range(horizon - 1):
        seq = np.concatenate([seq, preds[-1][None]])
        preds.append(offline(root, name, version, seq)[-1])
    return np.stack(preds)
