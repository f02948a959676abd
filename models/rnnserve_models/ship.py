"""Train-evaluate-write pipeline shared by the CLI, the benchmark and ``ship``, and the plan of the
shipped model repository (one small trained model of every variant)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rnnserve_models.base import RecurrentModel
from rnnserve_models.data import Series, Split, load_dataset, split_series
from rnnserve_models.evaluate import (
    PLOT_PNG,
    Metrics,
    Report,
    metrics_for,
    print_report,
    save_plot,
    save_report,
)
from rnnserve_models.onnx_export import DEFAULT_OPSET
from rnnserve_models.repository import write_model
from rnnserve_models.train import TrainConfig, TrainResult, fit, predict_next, seed_everything
from rnnserve_models.variants import VARIANTS, build_model
from rnnserve_proto.model_repository_pb2 import Normalization, TrainingMetrics


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a variant and its sizes (plus variant-specific options)."""

    variant: str
    hidden_size: int = 16
    num_layers: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, features: int) -> RecurrentModel:
        return build_model(
            self.variant, features, features, self.hidden_size, self.num_layers, **self.options
        )


@dataclass
class Trained:
    """A trained model with everything needed to write and report it."""

    model: RecurrentModel
    split: Split
    config: TrainConfig
    result: TrainResult
    prediction: Any  # normalised validation predictions, [n_val, features]
    metrics: Metrics


def train_and_evaluate(
    spec: ModelSpec,
    split: Split,
    config: TrainConfig,
    *,
    progress: bool | None = None,
) -> Trained:
    seed_everything(config.seed)  # the initial weights depend on the seed too
    model = spec.build(split.series.features)
    result = fit(model, split, config, progress=progress, description=spec.variant)
    prediction = predict_next(model, split.normalised, split.n_train, config.window)
    return Trained(model, split, config, result, prediction, metrics_for(split, prediction))


def normalization_of(split: Split) -> Normalization:
    # Autoregressive: the output is the next input, so both sides use the same statistics.
    mean, std = [float(v) for v in split.mean], [float(v) for v in split.std]
    return Normalization(input_mean=mean, input_std=std, output_mean=mean, output_std=std)


def describe(trained: Trained) -> str:
    text = (
        f"next-step forecast of {trained.split.series.description}; trained on the first "
        f"{trained.split.n_train} points"
    )
    if not trained.model.streaming:
        # Every earlier output of a whole-sequence model has seen its own target.
        text += (
            f"; whole-sequence: send the last {trained.config.window} values, only the last "
            "output is a forecast"
        )
    return text


def report_of(name: str, trained: Trained) -> Report:
    return Report(
        model=name,
        variant=trained.model.variant,
        dataset=trained.split.series.name,
        metrics=trained.metrics,
        epochs=trained.result.epochs_run,
        best_epoch=trained.result.best_epoch,
        train_seconds=trained.result.seconds,
        hyperparameters=trained.model.hyperparameters(),
        training=trained.config.as_dict(),
    )


def save_trained(
    repository: Path,
    name: str,
    trained: Trained,
    *,
    version: int = 1,
    console: Console | None = None,
) -> Path:
    """Write model.onnx + metadata.json, then report.json, report.md and the PNG next to them."""
    m = trained.metrics
    directory = write_model(
        repository,
        name,
        trained.model,
        version=version,
        normalization=normalization_of(trained.split),
        training=TrainingMetrics(
            dataset=trained.split.series.name,
            val_rmse=m.val_rmse,
            val_mae=m.val_mae,
            baseline_rmse=m.baseline_rmse,
            baseline_mae=m.baseline_mae,
            epochs=trained.result.epochs_run,
            train_seconds=trained.result.seconds,
            trained=True,
        ),
        description=describe(trained),
        autoregressive=True,
        opset=DEFAULT_OPSET,
    )
    report = report_of(name, trained)
    save_report(report, directory)
    save_plot(
        directory / PLOT_PNG,
        trained.split,
        trained.prediction,
        f"{name} ({trained.model.variant}): RMSE {m.val_rmse:.3g} vs persistence "
        f"{m.baseline_rmse:.3g}",
    )
    print_report(report, console)
    return directory


@dataclass(frozen=True)
class ShipEntry:
    name: str
    dataset: str
    spec: ModelSpec
    config: TrainConfig


_SUNSPOTS = TrainConfig(window=16, epochs=300, lr=1e-2, patience=30)
_MULTISCALE = TrainConfig(window=32, epochs=120, lr=1e-2, patience=15)

# One small model of every variant. The Clockwork RNN trains on the multi-scale series (periods
# 10, 40, 120, 400), with six modules of periods 1..32; a GRU on the same series is shipped next
# to it for comparison.
SHIP_PLAN: tuple[ShipEntry, ...] = (
    ShipEntry("sunspots_elman", "sunspots", ModelSpec("elman"), _SUNSPOTS),
    ShipEntry("sunspots_lstm", "sunspots", ModelSpec("lstm"), _SUNSPOTS),
    ShipEntry("sunspots_gru", "sunspots", ModelSpec("gru"), _SUNSPOTS),
    ShipEntry("sunspots_peephole_lstm", "sunspots", ModelSpec("peephole_lstm"), _SUNSPOTS),
    ShipEntry("sunspots_peephole_gru", "sunspots", ModelSpec("peephole_gru"), _SUNSPOTS),
    ShipEntry(
        "sunspots_attention", "sunspots", ModelSpec("attention", options={"window": 8}), _SUNSPOTS
    ),
    ShipEntry("sunspots_bidirectional", "sunspots", ModelSpec("bidirectional"), _SUNSPOTS),
    ShipEntry(
        "multiscale_clockwork",
        "multiscale",
        ModelSpec("clockwork", hidden_size=24, options={"num_modules": 6}),
        _MULTISCALE,
    ),
    ShipEntry("multiscale_gru", "multiscale", ModelSpec("gru"), _MULTISCALE),
)
assert {e.spec.variant for e in SHIP_PLAN} == set(VARIANTS), "ship every variant"


@dataclass(frozen=True)
class Shipped:
    entry: ShipEntry
    directory: Path
    metrics: Metrics
    epochs: int
    seconds: float


def ship(
    repository: Path,
    *,
    only: set[str] | None = None,
    console: Console | None = None,
    progress: bool | None = None,
) -> list[Shipped]:
    """Train every entry of :data:`SHIP_PLAN` (or those named in ``only``) into ``repository``."""
    splits: dict[str, Split] = {}
    shipped: list[Shipped] = []
    for entry in SHIP_PLAN:
        if only is not None and entry.name not in only:
            continue
        if entry.dataset not in splits:
            splits[entry.dataset] = split_series(load_dataset(entry.dataset))
        started = time.perf_counter()
        trained = train_and_evaluate(
            entry.spec, splits[entry.dataset], entry.config, progress=progress
        )
        directory = save_trained(repository, entry.name, trained, console=console)
        shipped.append(
            Shipped(
                entry,
                directory,
                trained.metrics,
                trained.result.epochs_run,
                time.perf_counter() - started,
            )
        )
    return shipped


def shipped_markdown(shipped: list[Shipped]) -> str:
    lines = [
        "| model | variant | dataset | hidden | epochs | val RMSE | persistence RMSE | val MAE "
        "| persistence MAE | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in shipped:
        m = s.metrics
        lines.append(
            f"| {s.entry.name} | {s.entry.spec.variant} | {s.entry.dataset} | "
            f"{s.entry.spec.hidden_size} | {s.epochs} | {m.val_rmse:.4g} | {m.baseline_rmse:.4g} | "
            f"{m.val_mae:.4g} | {m.baseline_mae:.4g} | {s.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def series_for(dataset: str | None, csv: Path | None, column: str | None) -> Series:
    """The CLI's data choice: a CSV column, or a built-in dataset."""
    from rnnserve_models.data import DataError, load_csv

    if csv is not None:
        if not column:
            raise DataError("--csv needs --column NAME")
        return load_csv(csv, column)
    if column:
        raise DataError("--column is only meaningful with --csv")
    return load_dataset(dataset or "sunspots")
