"""`rnnserve-client`: stream a CSV column through a model, run predictions, list models and
sessions, and the end-to-end demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rnnserve_client import _series
from rnnserve_client._errors import RnnServeError
from rnnserve_client.client import Client
from rnnserve_client.demo import run_demo, stream_series

app = typer.Typer(
    help="Client for rnnserve, stateful streaming RNN inference over gRPC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Target = Annotated[
    str, typer.Option("--target", "-t", envvar="RNNSERVE_TARGET", help="Server host:port.")
]
Timeout = Annotated[float, typer.Option(help="Seconds each call may take.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command()
def stream(
    csv: Annotated[Path, typer.Option("--csv", exists=True, dir_okay=False, help="CSV file.")],
    column: Annotated[str, typer.Option(help="Column to stream (one feature).")],
    model: Annotated[str, typer.Option(help="Model name.")],
    chunk: Annotated[int, typer.Option(min=1, help="Steps per chunk.")] = 1,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of predictions against actuals.")
    ] = None,
    target: Target = "localhost:8001",
    timeout: Timeout = 30.0,
) -> None:
    """Stream a CSV column through a model, predictions next to actuals.

    Prints each one-step-ahead prediction as its chunk's reply arrives, then the RMSE against
    the persistence (last value) baseline.
    """
    try:
        labels, values = _series.read_column(csv, column)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        with Client(target, timeout=timeout) as client:
            result = stream_series(client, model, labels, values, chunk=chunk, echo=typer.echo)
    except RnnServeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(result.summary())
    if plot is not None:
        _series.plot(plot, labels, values, result.predicted, f"{model} on {csv.name}:{column}")
        typer.echo(f"plot written to {plot}")


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Model name.")],
    values: Annotated[
        str | None, typer.Option(help="Comma-separated values of one feature.")
    ] = None,
    csv: Annotated[Path | None, typer.Option("--csv", exists=True, dir_okay=False)] = None,
    column: Annotated[str | None, typer.Option(help="Column of --csv.")] = None,
    target: Target = "localhost:8001",
    timeout: Timeout = 30.0,
) -> None:
    """Stateless whole-sequence prediction (works for bidirectional models too)."""
    if csv is not None:
        if column is None:
            raise _fail("--csv needs --column")
        try:
            _, series = _series.read_column(csv, column)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    elif values is not None:
        try:
            series = np.asarray([float(v) for v in values.split(",")], dtype=np.float64)
        except ValueError:
            raise _fail(f"--values must be comma-separated numbers, got {values!r}") from None
    else:
        raise _fail("give --values or --csv/--column")
    try:
        with Client(target, timeout=timeout) as client:
            y = client.predict(model, series)
    except RnnServeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{'t':>6}  {'input':>10}  {'output':>10}")
    for i, (x, out) in enumerate(zip(series, y[:, 0], strict=True)):
        typer.echo(f"{i:>6}  {x:10.3f}  {out:10.3f}")


@app.command()
def models(target: Target = "localhost:8001", timeout: Timeout = 30.0) -> None:
    """List the loaded models."""
    try:
        with Client(target, timeout=timeout) as client:
            infos = client.list_models()
    except RnnServeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{'model':<28} {'variant':<14} {'versions':<10} {'streaming':<9} ready")
    for m in infos:
        versions = ",".join(str(v) for v in m.versions)
        typer.echo(f"{m.name:<28} {m.variant:<14} {versions:<10} {m.streaming!s:<9} {m.ready}")


@app.command()
def sessions(
    model: Annotated[str | None, typer.Option(help="Only sessions of this model.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many (0 = all).")] = 0,
    target: Target = "localhost:8001",
    timeout: Timeout = 30.0,
) -> None:
    """List live sessions."""
    try:
        with Client(target, timeout=timeout) as client:
            infos = client.list_sessions(model, limit)
    except RnnServeError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{'session':<40} {'model':<24} {'version':>7} {'step':>8}")
    for s in infos:
        typer.echo(f"{s.session_id:<40} {s.model:<24} {s.version:>7} {s.step:>8}")
    typer.echo(f"{len(infos)} session(s)")


@app.command()
def demo(
    model_repository: Annotated[
        Path | None, typer.Option(help="Repository to serve (default: ./model_repository).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: a sunspots model).")] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Steps per chunk.")] = 1,
    delay: Annotated[float, typer.Option(min=0, help="Pause after each chunk (s).")] = 0.0,
) -> None:
    """The main job: local server, sunspots streamed through a model, summary.

    Starts `rnnserve serve` on the shipped model repository (free ports), streams the yearly
    sunspot series printing predictions as they arrive, summarises, and stops the server with
    SIGTERM.
    """
    try:
        run_demo(
            model_repository=model_repository,
            model=model,
            chunk=chunk,
            delay=delay,
            echo=typer.echo,
        )
    except (RnnServeError, RuntimeError, FileNotFoundError, TimeoutError) as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    app()
