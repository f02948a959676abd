"""Model repository writer (and metadata reader): ``<repo>/<name>/<version>/model.onnx`` plus
``metadata.json``, a ModelMetadata message in protobuf JSON (see model_repository.proto)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from google.protobuf import json_format

from rnnserve_models.base import RecurrentModel
from rnnserve_models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_graph_contract
from rnnserve_proto.model_repository_pb2 import (
    FLOAT32,
    INT64,
    DataType,
    ModelMetadata,
    Normalization,
    StateTensor,
    TrainingMetrics,
)

ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
_DTYPES: dict[torch.dtype, DataType] = {torch.float32: FLOAT32, torch.int64: INT64}


def build_metadata(
    name: str,
    model: RecurrentModel,
    *,
    version: int,
    normalization: Normalization | None,
    training: TrainingMetrics | None,
    description: str,
    autoregressive: bool,
    opset: int,
) -> ModelMetadata:
    """The metadata message describing ``model`` (without touching the disk)."""
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    if autoregressive and model.input_size != model.output_size:
        raise ValueError(
            "an autoregressive model predicts its next input: input and output sizes must match "
            f"(got {model.input_size} and {model.output_size})"
        )
    normalization = normalization if normalization is not None else Normalization()
    for field, size in (
        ("input_mean", model.input_size),
        ("input_std", model.input_size),
        ("output_mean", model.output_size),
        ("output_std", model.output_size),
    ):
        values = list(getattr(normalization, field))
        if values and len(values) != size:
            raise ValueError(f"normalization.{field} has {len(values)} values, expected {size}")
        if field.endswith("std") and any(v <= 0 for v in values):
            raise ValueError(f"normalization.{field} must be positive")
    states = [
        StateTensor(
            name=spec.name,
            input_name=spec.input_name,
            output_name=spec.output_name,
            shape=list(spec.shape),
            dtype=_DTYPES[spec.dtype],
            initial_value=spec.initial_value,
        )
        for spec in model.state_specs()
    ]
    return ModelMetadata(
        name=name,
        version=version,
        variant=model.variant,
        description=description,
        onnx_file=ONNX_FILE,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_features=model.input_size,
        output_features=model.output_size,
        streaming=model.streaming,
        autoregressive=autoregressive,
        states=states,
        normalization=normalization,
        training=training if training is not None else TrainingMetrics(trained=False),
        opset=opset,
        hyperparameters=model.hyperparameters(),
    )


def write_model(
    repository: Path,
    name: str,
    model: RecurrentModel,
    *,
    version: int = 1,
    normalization: Normalization | None = None,
    training: TrainingMetrics | None = None,
    description: str = "",
    autoregressive: bool,
    opset: int,
) -> Path:
    """Export ``model`` into ``<repository>/<name>/<version>/`` and return that directory.

    ``model.export_onnx`` verifies the graph against torch at a chunk longer than its export
    example; the graph's inputs and outputs are checked against the metadata before the metadata
    is written, so a directory with a ``metadata.json`` always holds a consistent pair.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}")
    metadata = build_metadata(
        name,
        model,
        version=version,
        normalization=normalization,
        training=training,
        description=description,
        autoregressive=autoregressive,
        opset=opset,
    )
    directory = repository / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE).unlink(missing_ok=True)
    onnx_path = directory / ONNX_FILE
    model.export_onnx(onnx_path, opset)
    graph = onnx.load(str(onnx_path))
    check_graph_contract(graph, model)
    graph_opset = {o.domain: o.version for o in graph.opset_import}.get("", 0)
    if graph_opset != opset:
        raise ValueError(f"{onnx_path} uses opset {graph_opset}, metadata says {opset}")
    text = json_format.MessageToJson(
        metadata,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,  # every field visible to people reading it
        indent=2,
    )
    (directory / METADATA_FILE).write_text(text + "\n", encoding="utf-8")
    return directory


def read_metadata(path: Path) -> ModelMetadata:
    """Parse ``metadata.json`` (``path`` is the file or its version directory); unknown fields
    are rejected."""
    if path.is_dir():
        path = path / METADATA_FILE
    return json_format.Parse(path.read_text(encoding="utf-8"), ModelMetadata())
