"""``rnnserve-train``: train, export (untrained), evaluate and ship repository models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from rnnserve_models.data import DATASETS, DataError, Split, split_series

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train recurrent models and write them into an rnnserve model repository.",
)
console = Console()
errors = Console(stderr=True)

Variant = Annotated[
    str,
    typer.Option(
        help="elman, lstm, gru, peephole_lstm, peephole_gru, clockwork, attention, bidirectional"
    ),
]
HiddenSize = Annotated[int, typer.Option(min=1, help="Hidden units per layer.")]
NumLayers = Annotated[int, typer.Option(min=1, help="Stacked recurrent layers.")]
Options = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="Variant option KEY=VALUE, e.g. num_modules=4 (repeatable)."
    ),
]
Repository = Annotated[Path, typer.Option(help="Model repository directory.")]
Version = Annotated[int, typer.Option(min=1, help="Model version (directory name).")]
Dataset = Annotated[str, typer.Option(help=f"Built-in series: {', '.join(DATASETS)}.")]
Csv = Annotated[Path | None, typer.Option("--csv", help="Your own CSV file (with a header row).")]
Column = Annotated[str | None, typer.Option(help="The CSV column to model.")]
ValFraction = Annotated[float, typer.Option(min=0.01, max=0.99, help="Last fraction validates.")]
Window = Annotated[int, typer.Option(min=1, help="BPTT window (context for bidirectional).")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_options(options: list[str] | None) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--option must look like KEY=VALUE, got {item!r}")
        parsed[key.strip()] = _parse_value(value.strip())
    return parsed


def _split(dataset: str, csv: Path | None, column: str | None, val_fraction: float) -> Split:
    from rnnserve_models.ship import series_for

    return split_series(series_for(dataset, csv, column), val_fraction)


@app.command()
def train(
    variant: Variant = "gru",
    hidden_size: HiddenSize = 16,
    num_layers: NumLayers = 1,
    option: Options = None,
    dataset: Dataset = "sunspots",
    csv: Csv = None,
    column: Column = None,
    val_fraction: ValFraction = 0.2,
    window: Window = 16,
    streams: Annotated[int, typer.Option(min=1, help="Parallel streams per step.")] = 4,
    batch_windows: Annotated[
        int, typer.Option(min=1, help="Windows per step (bidirectional).")
    ] = 32,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs to train.")] = 300,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-2,
    clip: Annotated[float, typer.Option(help="Max gradient norm.")] = 1.0,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without improvement.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed for weights, shuffling and offsets.")] = 0,
    repository: Repository = Path("model_repository"),
    name: Annotated[str | None, typer.Option(help="Model name (default DATASET_VARIANT).")] = None,
    version: Version = 1,
    progress: Annotated[bool | None, typer.Option(help="Progress bar (default: on a TTY).")] = None,
) -> None:
    """Train a model on next-step prediction and write it (plus report and plot) to a repository."""
    from rnnserve_models.ship import ModelSpec, save_trained, train_and_evaluate
    from rnnserve_models.train import TrainConfig

    try:
        split = _split(dataset, csv, column, val_fraction)
        spec = ModelSpec(variant, hidden_size, num_layers, parse_options(option))
        config = TrainConfig(window, streams, batch_windows, epochs, lr, clip, patience, seed)
        trained = train_and_evaluate(spec, split, config, progress=progress)
    except (DataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    stem = Path(csv).stem if csv is not None else dataset
    model_name = name or f"{stem}_{variant}"
    directory = save_trained(repository, model_name, trained, version=version, console=console)
    console.print(f"wrote {directory}")


@app.command()
def export(
    variant: Variant = "gru",
    hidden_size: HiddenSize = 32,
    num_layers: NumLayers = 1,
    input_features: Annotated[int, typer.Option(min=1)] = 1,
    output_features: Annotated[int, typer.Option(min=1)] = 1,
    option: Options = None,
    repository: Repository = Path("model_repository"),
    name: Annotated[
        str | None, typer.Option(help="Model name (default VARIANT_untrained).")
    ] = None,
    version: Version = 1,
    autoregressive: Annotated[
        bool | None, typer.Option(help="Default: when input and output features are equal.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write an UNTRAINED model (random weights) of any variant and size, for benchmarks/tests."""
    from rnnserve_models.onnx_export import DEFAULT_OPSET
    from rnnserve_models.repository import write_model
    from rnnserve_models.ship import ModelSpec
    from rnnserve_models.train import seed_everything
    from rnnserve_proto.model_repository_pb2 import TrainingMetrics

    seed_everything(seed)
    try:
        spec = ModelSpec(variant, hidden_size, num_layers, parse_options(option))
        from rnnserve_models.variants import build_model

        model = build_model(
            variant, input_features, output_features, hidden_size, num_layers, **spec.options
        )
        directory = write_model(
            repository,
            name or f"{variant}_untrained",
            model,
            version=version,
            training=TrainingMetrics(trained=False),
            description=f"untrained {variant} (random weights, seed {seed})",
            autoregressive=(
                input_features == output_features if autoregressive is None else autoregressive
            ),
            opset=DEFAULT_OPSET,
        )
    except (DataError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"wrote {directory}")


def _version_dir(repository: Path, name: str, version: int | None) -> Path:
    model_dir = repository / name
    if version is not None:
        directory = model_dir / str(version)
    else:
        versions = sorted(int(p.name) for p in model_dir.glob("*") if p.name.isdigit())
        if not versions:
            raise DataError(f"no versions of model {name!r} in {repository}")
        directory = model_dir / str(versions[-1])
    if not (directory / "metadata.json").is_file():
        raise DataError(f"{directory} holds no metadata.json")
    return directory


@app.command()
def evaluate(
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    repository: Repository = Path("model_repository"),
    version: Annotated[int | None, typer.Option(help="Default: the newest.")] = None,
    dataset: Dataset = "sunspots",
    csv: Csv = None,
    column: Column = None,
    val_fraction: ValFraction = 0.2,
    window: Window = 16,
    report_dir: Annotated[
        Path | None, typer.Option(help="Also write report.json/report.md/PNG here.")
    ] = None,
) -> None:
    """Evaluate an ONNX model of a repository (ONNX Runtime) against the persistence baseline."""
    from rnnserve_models.evaluate import (
        PLOT_PNG,
        Report,
        compute_metrics,
        onnx_predict_next,
        print_report,
        save_plot,
        save_report,
    )
    from rnnserve_models.repository import read_metadata

    try:
        directory = _version_dir(repository, name, version)
        metadata = read_metadata(directory)
        split = _split(dataset, csv, column, val_fraction)
        if metadata.input_features != split.series.features or not metadata.autoregressive:
            raise DataError(
                f"{name} is not an autoregressive model of {split.series.features} feature(s)"
            )
        norm = metadata.normalization
        mean = np.array(norm.input_mean or [0.0] * metadata.input_features)
        std = np.array(norm.input_std or [1.0] * metadata.input_features)
        z = (split.series.values - mean) / std
        prediction = onnx_predict_next(directory, metadata, z, split.n_train, window)
    except (DataError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    raw = prediction * std + mean
    metrics = compute_metrics(raw, split.val_targets, split.val_persistence)
    report = Report(
        model=f"{name}/{directory.name}",
        variant=metadata.variant,
        dataset=split.series.name,
        metrics=metrics,
        trained=metadata.training.trained,
        epochs=metadata.training.epochs,
        train_seconds=metadata.training.train_seconds,
        hyperparameters=dict(metadata.hyperparameters),
    )
    print_report(report, console)
    if report_dir is not None:
        save_report(report, report_dir)
        save_plot(report_dir / PLOT_PNG, split, (raw - split.mean) / split.std, report.model)


@app.command()
def ship(
    repository: Repository = Path("model_repository"),
    only: Annotated[
        list[str] | None, typer.Option(help="Ship only these model names (repeatable).")
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Write the Markdown table of what was shipped here.")
    ] = None,
    progress: Annotated[bool | None, typer.Option(help="Progress bar (default: on a TTY).")] = None,
) -> None:
    """Train one small model of every variant into the repository (the shipped models)."""
    from rnnserve_models import ship as shipping

    known = {entry.name for entry in shipping.SHIP_PLAN}
    unknown = set(only or []) - known
    if unknown:
        raise _fail(f"unknown model(s) {sorted(unknown)}; the plan has {sorted(known)}")
    shipped = shipping.ship(
        repository, only=set(only) if only else None, console=console, progress=progress
    )
    table = shipping.shipped_markdown(shipped)
    console.print(table, markup=False, highlight=False)
    if summary is not None:
        summary.write_text(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
