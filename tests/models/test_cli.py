"""``rnnserve-train`` through typer's runner: export an untrained model, train on a CSV, evaluate
with ONNX Runtime, and reject bad input with a clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from rnnserve_models.cli import app
from rnnserve_models.repository import read_metadata

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_an_untrained_repository_entry(tmp_path: Path) -> None:
    args = ["export", "--variant", "gru", "--hidden-size", "24", "--num-layers", "2"]
    args += ["--input-features", "5", "--output-features", "5", "--name", "gru_bench"]
    result = runner.invoke(app, [*args, "--repository", str(tmp_path)])
    assert result.exit_code == 0, result.output
    directory = tmp_path / "gru_bench" / "1"
    meta = read_metadata(directory)
    assert (meta.name, meta.variant, meta.version) == ("gru_bench", "gru", 1)
    assert (meta.input_features, meta.output_features) == (5, 5)
    assert meta.training.trained is False
    assert meta.autoregressive is True
    assert meta.streaming is True
    assert meta.hyperparameters["hidden_size"] == "24"
    assert [s.name for s in meta.states] == ["h"]
    assert list(meta.states[0].shape) == [2, 24]
    # The graph runs as the metadata describes, and a second chunk continues from the state.
    session = _session(directory / meta.onnx_file)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    h0 = np.zeros((3, 2, 24), dtype=np.float32)
    names = [meta.output_name, meta.states[0].output_name]
    y, h = session.run(names, {meta.input_name: x, meta.states[0].input_name: h0})
    assert y.shape == (3, 7, 5)
    assert h.shape == (3, 2, 24)
    y1, h1 = session.run(names, {meta.input_name: x[:, :3], meta.states[0].input_name: h0})
    y2, _ = session.run(names, {meta.input_name: x[:, 3:], meta.states[0].input_name: h1})
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), y, rtol=1e-5, atol=1e-5)


def test_export_rejects_a_bad_option(tmp_path: Path) -> None:
    args = ["export", "--variant", "clockwork", "--hidden-size", "10", "-o", "num_modules=3"]
    result = runner.invoke(app, [*args, "--repository", str(tmp_path)])
    assert result.exit_code == 2
    assert "multiple of num_modules" in result.output
    assert not (tmp_path / "clockwork_untrained").exists()


def _csv(tmp_path: Path) -> Path:
    t = np.arange(120)
    level = 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.01 * t
    path = tmp_path / "load.csv"
    path.write_text(
        "t,level\n" + "\n".join(f"{i},{v:.5f}" for i, v in zip(t, level, strict=True)) + "\n"
    )
    return path


def test_train_on_csv_writes_model_report_and_plot(tmp_path: Path) -> None:
    csv = _csv(tmp_path)
    repo = tmp_path / "repo"
    args = ["train", "--variant", "lstm", "--hidden-size", "8", "--csv", str(csv)]
    args += ["--column", "level", "--epochs", "2", "--window", "8", "--name", "load_lstm"]
    result = runner.invoke(app, [*args, "--repository", str(repo)])
    assert result.exit_code == 0, result.output
    directory = repo / "load_lstm" / "1"
    meta = read_metadata(directory)
    assert meta.training.trained is True
    assert meta.training.epochs == 2
    assert meta.training.dataset == "load:level"
    assert meta.autoregressive is True
    assert math.isfinite(meta.training.val_rmse)
    assert meta.training.baseline_rmse > 0
    # Normalisation from the first 80 % of the column only.
    values = np.loadtxt(csv, delimiter=",", skiprows=1)[:, 1]
    assert list(meta.normalization.input_mean) == pytest.approx([values[:96].mean()])
    assert list(meta.normalization.output_std) == pytest.approx([values[:96].std()])
    report = json.loads((directory / "report.json").read_text())
    assert report["metrics"]["val_rmse"] == pytest.approx(meta.training.val_rmse)
    assert "val RMSE" in (directory / "report.md").read_text()
    png = (directory / "validation.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 1000
    assert (directory / "model.onnx").is_file()

    # evaluate runs the ONNX graph and reproduces the torch metrics.
    args = ["evaluate", "--name", "load_lstm", "--csv", str(csv), "--column", "level"]
    result = runner.invoke(app, [*args, "--repository", str(repo), "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    onnx_report = json.loads((tmp_path / "report.json").read_text())
    assert onnx_report["metrics"]["val_rmse"] == pytest.approx(meta.training.val_rmse, rel=1e-4)
    assert onnx_report["metrics"]["baseline_rmse"] == pytest.approx(meta.training.baseline_rmse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--csv", "{dir}/missing.csv", "--column", "level"], "CSV file not found"),
        (["--csv", "{csv}", "--column", "price"], "column 'price' not in"),
        (["--csv", "{csv}"], "--csv needs --column"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--variant", "transformer"], "unknown variant 'transformer'"),
    ],
)
def test_train_rejects_bad_input(tmp_path: Path, extra: list[str], message: str) -> None:
    csv = _csv(tmp_path)
    args = [a.format(dir=tmp_path, csv=csv) for a in extra]
    repo = tmp_path / "repo"
    result = runner.invoke(app, ["train", "--epochs", "1", *args, "--repository", str(repo)])
    assert result.exit_code == 2
    assert message in result.output
    assert not repo.exists()


def test_ship_trains_a_planned_model_and_summarises(tmp_path: Path) -> None:
    summary = tmp_path / "shipped.md"
    args = ["ship", "--only", "sunspots_lstm", "--summary", str(summary)]
    result = runner.invoke(app, [*args, "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "repo" / "sunspots_lstm" / "1")
    assert meta.variant == "lstm"
    assert meta.training.trained is True
    assert meta.training.val_rmse < meta.training.baseline_rmse
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["sunspots_lstm"]
    row = next(line for line in summary.read_text().splitlines() if "sunspots_lstm" in line)
    assert f"{meta.training.val_rmse:.4g}" in row
    result = runner.invoke(app, ["ship", "--only", "nope", "--repository", str(tmp_path / "r2")])
    assert result.exit_code == 2
    assert "unknown model(s) ['nope']" in result.output
