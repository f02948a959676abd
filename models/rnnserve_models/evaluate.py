"""Validation metrics in raw units against the persistence baseline, a report (rich table, JSON,
Markdown) and a PNG plot of predictions against actuals."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from rnnserve_models.data import FloatArray, Split
from rnnserve_proto.model_repository_pb2 import INT64, ModelMetadata

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOT_PNG = "validation.png"


@dataclass(frozen=True)
class Metrics:
    """Validation errors in raw units, and the persistence (last-value) baseline's."""

    val_rmse: float
    val_mae: float
    baseline_rmse: float
    baseline_mae: float
    n_val: int

    @property
    def skill(self) -> float:
        """1 - RMSE / baseline RMSE: > 0 means better than persistence."""
        return 1.0 - self.val_rmse / self.baseline_rmse if self.baseline_rmse > 0 else 0.0


def compute_metrics(prediction: FloatArray, target: FloatArray, persistence: FloatArray) -> Metrics:
    if not prediction.shape == target.shape == persistence.shape:
        raise ValueError(
            f"shapes differ: prediction {prediction.shape}, target {target.shape}, "
            f"persistence {persistence.shape}"
        )
    error, base = prediction - target, persistence - target
    return Metrics(
        val_rmse=float(np.sqrt(np.mean(error**2))),
        val_mae=float(np.mean(np.abs(error))),
        baseline_rmse=float(np.sqrt(np.mean(base**2))),
        baseline_mae=float(np.mean(np.abs(base))),
        n_val=int(target.shape[0]),
    )


def metrics_for(split: Split, prediction_normalised: FloatArray) -> Metrics:
    """Metrics of normalised predictions of ``split``'s validation targets."""
    return compute_metrics(
        split.denormalise(prediction_normalised), split.val_targets, split.val_persistence
    )


@dataclass
class Report:
    model: str
    variant: str
    dataset: str
    metrics: Metrics
    trained: bool = True
    epochs: int = 0
    best_epoch: int = 0
    train_seconds: float = 0.0
    hyperparameters: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"]["skill"] = self.metrics.skill
        return data

    def rows(self) -> list[tuple[str, str]]:
        m = self.metrics
        return [
            ("model", self.model),
            ("variant", self.variant),
            ("dataset", self.dataset),
            ("validation points", str(m.n_val)),
            ("val RMSE", f"{m.val_rmse:.4g}"),
            ("persistence RMSE", f"{m.baseline_rmse:.4g}"),
            ("val MAE", f"{m.val_mae:.4g}"),
            ("persistence MAE", f"{m.baseline_mae:.4g}"),
            ("skill (1 - RMSE/baseline)", f"{m.skill:+.3f}"),
            (
                "epochs",
                f"{self.epochs} (best {self.best_epoch})" if self.best_epoch else str(self.epochs),
            ),
            ("train seconds", f"{self.train_seconds:.1f}"),
        ]


def print_report(report: Report, console: Console | None = None) -> None:
    table = Table(title=f"{report.model}: validation", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in report.rows():
        table.add_row(name, value)
    (console or Console()).print(table)


def markdown(report: Report) -> str:
    lines = [f"# {report.model}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in report.rows()]
    if report.hyperparameters:
        lines += ["", "Hyper-parameters: "]
        lines += [f"- {k}: {v}" for k, v in sorted(report.hyperparameters.items())]
    if report.training:
        lines += ["", "Training settings:"]
        lines += [f"- {k}: {v}" for k, v in report.training.items()]
    return "\n".join(lines) + "\n"


def save_report(report: Report, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / REPORT_JSON, directory / REPORT_MD
    json_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def save_plot(path: Path, split: Split, prediction_normalised: FloatArray, title: str) -> Path:
    """Actual series, the train/validation boundary and the model's validation predictions."""
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    figure = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = split.series.values[:, 0]
    steps = np.arange(len(values))
    prediction = split.denormalise(prediction_normalised)[:, 0]
    axes.plot(steps, values, color="0.6", linewidth=1.0, label="actual")
    axes.plot(steps[split.n_train :], prediction, color="tab:red", linewidth=1.2, label="predicted")
    axes.axvline(split.n_train - 0.5, color="0.3", linestyle="--", linewidth=0.8)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def onnx_predict_next(
    directory: Path, metadata: ModelMetadata, z: FloatArray, start: int, window: int
) -> FloatArray:
    """What :func:`rnnserve_models.train.predict_next` does, with the exported graph in ONNX
    Runtime: normalised predictions of ``z[start:]`` from the values before each one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no provider chatter on a CPU-only machine
    session = ort.InferenceSession(
        str(directory / metadata.onnx_file), options, providers=["CPUExecutionProvider"]
    )
    x = np.ascontiguousarray(z, dtype=np.float32)
    if metadata.streaming:
        feeds: dict[str, np.ndarray[Any, Any]] = {metadata.input_name: x[None, :-1]}
        for state in metadata.states:
            dtype = np.int64 if state.dtype == INT64 else np.float32
            feeds[state.input_name] = np.full((1, *state.shape), state.initial_value, dtype=dtype)
        y = session.run([metadata.output_name], feeds)[0]
        return np.asarray(y[0, start - 1 :], dtype=np.float64)
    if start < window:
        raise ValueError(f"window {window} is longer than the history before the first target")
    views = np.lib.stride_tricks.sliding_window_view(x[:-1], window, axis=0)
    batch = np.ascontiguousarray(views[start - window :].transpose(0, 2, 1))
    y = session.run([metadata.output_name], {metadata.input_name: batch})[0]
    return np.asarray(y[:, -1], dtype=np.float64)
