"""The benchmark model: a 2-layer GRU (hidden 128, 16 features in and out) in the repository format.

`ensure_model` asks the training module's export CLI first (the same path users take) and falls
back to building the graph here with onnx.helper, so the benchmark never needs torch. The fallback
follows the ONNX graph contract of model_repository.proto: input `x` [B, T, 16], batch-major state
`h_in`/`h_out` [B, 2, 128], output `y` [B, T, 16].
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from rnnserve_proto import model_repository_pb2

MODEL_NAME = "gru_bench"
INPUT_FEATURES = 16
OUTPUT_FEATURES = 16
HIDDEN_SIZE = 128
NUM_LAYERS = 2
OPSET = 17


@dataclass(frozen=True)
class BenchModel:
    repository: Path
    name: str
    onnx_path: Path
    metadata: model_repository_pb2.ModelMetadata
    source: str  # "rnnserve-train export" or "bench.model fallback"

    @property
    def state_bytes(self) -> int:
        """Raw bytes of one session's recurrent state (all state tensors)."""
        total = 0
        for s in self.metadata.states:
            itemsize = 8 if s.dtype == model_repository_pb2.INT64 else 4
            total += int(np.prod(list(s.shape))) * itemsize
        return total


def _export_cli() -> Path | None:
    exe = Path(sys.executable).with_name("rnnserve-train")
    if exe.exists():
        return exe
    found = shutil.which("rnnserve-train")
    return Path(found) if found else None


def export_with_cli(repository: Path, name: str = MODEL_NAME) -> bool:
    """Run `rnnserve-train export`; False when the CLI is missing or fails."""
    exe = _export_cli()
    if exe is None:
        return False
    cmd = [
        str(exe),
        "export",
        "--variant",
        "gru",
        "--hidden-size",
        str(HIDDEN_SIZE),
        "--num-layers",
        str(NUM_LAYERS),
        "--input-features",
        str(INPUT_FEATURES),
        "--output-features",
        str(OUTPUT_FEATURES),
        "--name",
        name,
        "--repository",
        str(repository),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and _find_version_dir(repository / name) is not None


def build_fallback(repository: Path, name: str = MODEL_NAME, seed: int = 0) -> None:
    """Write an untrained 2-layer GRU with onnx.helper (native ONNX GRU ops, no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    H, F_in, F_out, L = HIDDEN_SIZE, INPUT_FEATURES, OUTPUT_FEATURES, NUM_LAYERS

    def init(name_: str, shape: tuple[int, ...], fan_in: int) -> onnx.TensorProto:
        bound = 1.0 / np.sqrt(fan_in)
        arr = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        return numpy_helper.from_array(arr, name_)

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = [
        # ORT's CPU RNN kernels want layout=0 (time-major, [dirs, B, H] states): transpose in/out.
        helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h_in"], ["h_lbh"], perm=[1, 0, 2]),
    ]
    layer_in = "x_tbf"
    h_finals = []
    for layer in range(L):
        in_size = F_in if layer == 0 else H
        inits += [
            init(f"W{layer}", (1, 3 * H, in_size), H),
            init(f"R{layer}", (1, 3 * H, H), H),
            init(f"B{layer}", (1, 6 * H), H),
            numpy_helper.from_array(np.array([layer], np.int64), f"idx{layer}"),
            numpy_helper.from_array(np.array([layer + 1], np.int64), f"idx{layer}_end"),
        ]
        nodes += [
            helper.make_node("Slice", ["h_lbh", f"idx{layer}", f"idx{layer}_end"], [f"h0_{layer}"]),
            helper.make_node(
                "GRU",
                [layer_in, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}"],
                [f"Y{layer}", f"Yh{layer}"],
                hidden_size=H,
                linear_before_reset=1,  # torch.nn.GRU's formulation
            ),
            helper.make_node("Squeeze", [f"Y{layer}", "axis1"], [f"out{layer}"]),
        ]
        layer_in = f"out{layer}"
        h_finals.append(f"Yh{layer}")
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        init("head_w", (H, F_out), H),
        init("head_b", (F_out,), H),
    ]
    nodes += [
        helper.make_node("MatMul", [layer_in, "head_w"], ["head_mm"]),
        helper.make_node("Add", ["head_mm", "head_b"], ["y_tbo"]),
        helper.make_node("Transpose", ["y_tbo"], ["y"], perm=[1, 0, 2]),
        helper.make_node("Concat", h_finals, ["h_lbh_out"], axis=0),
        helper.make_node("Transpose", ["h_lbh_out"], ["h_out"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", F_in]),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", L, H]),
        ],
        outputs=[
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", F_out]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", L, H]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)

    version_dir = repository / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    meta = model_repository_pb2.ModelMetadata(
        name=name,
        version=1,
        variant="gru",
        description="Untrained 2-layer GRU for benchmarks (bench.model fallback, no torch).",
        onnx_file="model.onnx",
        input_name="x",
        output_name="y",
        input_features=F_in,
        output_features=F_out,
        streaming=True,
        autoregressive=F_in == F_out,
        states=[
            model_repository_pb2.StateTensor(
                name="h",
                input_name="h_in",
                output_name="h_out",
                shape=[L, H],
                dtype=model_repository_pb2.FLOAT32,
                initial_value=0.0,
            )
        ],
        training=model_repository_pb2.TrainingMetrics(trained=False),
        opset=OPSET,
        hyperparameters={"hidden_size": str(H), "num_layers": str(L)},
    )
    (version_dir / "metadata.json").write_text(
        json_format.MessageToJson(meta, preserving_proto_field_name=True) + "\n"
    )


def _find_version_dir(model_dir: Path) -> Path | None:
    if not model_dir.is_dir():
        return None
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    for v in reversed(versions):
        if (v / "metadata.json").exists():
            return v
    return None


def load_model(repository: Path, name: str = MODEL_NAME, source: str = "existing") -> BenchModel:
    version_dir = _find_version_dir(repository / name)
    if version_dir is None:
        raise FileNotFoundError(f"no model {name!r} with a metadata.json under {repository}")
    meta = json_format.Parse(
        (version_dir / "metadata.json").read_text(), model_repository_pb2.ModelMetadata()
    )
    return BenchModel(repository, name, version_dir / meta.onnx_file, meta, source)


def ensure_model(repository: Path, how: str = "auto", name: str = MODEL_NAME) -> BenchModel:
    """Write the benchmark model into `repository`. how: auto | cli | fallback."""
    repository.mkdir(parents=True, exist_ok=True)
    if how in ("auto", "cli") and export_with_cli(repository, name):
        return load_model(repository, name, "rnnserve-train export")
    if how == "cli":
        raise RuntimeError("`rnnserve-train export` is missing or failed")
    shutil.rmtree(repository / name, ignore_errors=True)
    build_fallback(repository, name)
    return load_model(repository, name, "bench.model fallback (onnx.helper)")


def add_model_source_argument(parser: argparse.ArgumentParser) -> None:
    """--model-source, as every bench entry point takes it (see ensure_model)."""
    parser.add_argument(
        "--model-source",
        choices=["auto", "cli", "fallback"],
        default="auto",
        help="auto: `rnnserve-train export`, else the onnx.helper fallback (no torch)",
    )


def describe(model: BenchModel) -> str:
    meta = json.loads(json_format.MessageToJson(model.metadata, preserving_proto_field_name=True))
    states = ", ".join(f"{s['name']}{s.get('shape')}" for s in meta.get("states", []))
    return (
        f"{model.name}: {meta.get('variant')} in={model.metadata.input_features} "
        f"out={model.metadata.output_features} states=[{states}] "
        f"({model.state_bytes} raw state bytes/session; {model.source})"
    )
