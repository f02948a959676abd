"""Stream a series through a model and print predictions next to the actual values as they
arrive; `run_demo` (the `make demo` main job) also starts and stops a local server."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnserve_client import _series
from rnnserve_client._local import LocalServer
from rnnserve_client.client import Client

Echo = Callable[[str], None]
DEMO_MODELS = ("sunspots_gru", "sunspots_lstm", "sunspots_elman")


@dataclass(frozen=True)
class StreamResult:
    model: str
    predicted: _series.F64  # predicted[i] is the prediction of actual[i + 1]
    actual: _series.F64
    model_rmse: float
    persistence_rmse: float
    seconds: float

    def summary(self) -> str:
        n = len(self.actual) - 1
        better = self.persistence_rmse / self.model_rmse if self.model_rmse > 0 else math.inf
        return (
            f"{self.model}: {n} one-step-ahead predictions in {self.seconds:.2f} s, RMSE "
            f"{self.model_rmse:.2f} vs persistence {self.persistence_rmse:.2f} "
            f"({better:.2f}x {'better' if better >= 1 else 'worse'})"
        )


def stream_series(
    client: Client,
    model: str,
    labels: list[str],
    values: _series.F64,
    *,
    chunk: int = 1,
    echo: Echo = print,
    delay: float = 0.0,
) -> StreamResult:
    """Send `values` in chunks of `chunk` steps through one session, printing each prediction
    as soon as its chunk's reply arrives."""
    if chunk < 1:
        raise ValueError("--chunk must be at least 1")
    predicted = np.full(len(values), np.nan)
    echo(f"{'t':>8}  {'actual':>10}  {'predicted next':>14}  {'actual next':>11}  {'error':>8}")
    t0 = time.perf_counter()
    with client.session(model) as session:
        chunks = (values[i : i + chunk] for i in range(0, len(values), chunk))
        start = 0
        for y in session.stream(chunks, on_lost="nan"):
            n = y.shape[0]
            predicted[start : start + n] = y[:, 0]
            for i in range(start, start + n):
                nxt = f"{values[i + 1]:11.2f}" if i + 1 < len(values) else f"{'':11}"
                err = f"{predicted[i] - values[i + 1]:8.2f}" if i + 1 < len(values) else ""
                echo(f"{labels[i]:>8}  {values[i]:10.2f}  {predicted[i]:14.2f}  {nxt}  {err}")
            start += n
            if delay:
                time.sleep(delay)
    seconds = time.perf_counter() - t0
    return StreamResult(
        model=model,
        predicted=predicted,
        actual=values,
        model_rmse=_series.rmse(predicted[:-1], values[1:]),
        persistence_rmse=_series.rmse(values[:-1], values[1:]),
        seconds=seconds,
    )


def default_repository() -> Path:
    """./model_repository, else the one beside this source tree (an editable install)."""
    here = Path("model_repository")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "model_repository"


def pick_model(client: Client, wanted: str | None) -> str:
    models = {m.name: m for m in client.list_models()}
    if wanted:
        return wanted
    for name in DEMO_MODELS:
        if name in models and models[name].streaming:
            return name
    for m in models.values():
        meta = client.model_metadata(m.name)
        if m.streaming and meta.input_features == 1 and meta.training.dataset == "sunspots":
            return m.name
    raise RuntimeError(f"no streaming sunspots model among {sorted(models)}")


def run_demo(
    *,
    model_repository: Path | None = None,
    model: str | None = None,
    chunk: int = 1,
    delay: float = 0.0,
    horizon: int = 11,
    echo: Echo = print,
) -> StreamResult:
    repo = model_repository or default_repository()
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} not found")
    labels, values = _series.sunspots()
    echo(f"starting rnnserve on {repo} ...")
    server = LocalServer(repo)
    with server:
        echo(f"server SERVING on {server.target} (metrics on {server.metrics_url})")
        with Client(server.target) as client:
            name = pick_model(client, model)
            meta = client.model_metadata(name)
            echo(
                f"streaming {len(values)} yearly sunspot numbers (1700-2008) through {name} "
                f"({meta.variant}), {chunk} step(s) per chunk"
            )
            result = stream_series(
                client, name, labels, values, chunk=chunk, echo=echo, delay=delay
            )
            if meta.autoregressive and horizon > 0:
                with client.session(name) as session:
                    session.step(values)
                    future = session.forecast(horizon)[:, 0]
                first = int(labels[-1]) + 1 if labels[-1].isdigit() else len(values)
                echo(
                    f"forecast {first}-{first + horizon - 1}: "
                    + " ".join(f"{v:.0f}" for v in future)
                )
            if meta.training.trained:
                echo(
                    f"(training run: validation RMSE {meta.training.val_rmse:.2f} vs "
                    f"persistence {meta.training.baseline_rmse:.2f})"
                )
        status = server.stop()
    echo(result.summary())
    note = "" if status == 0 else " -- expected 0: see the server log"
    echo(f"server stopped with SIGTERM (exit status {status}){note}")
    return result
