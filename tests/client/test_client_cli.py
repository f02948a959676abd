"""`rnnserve-client` end to end: a CSV streamed through a real server, --plot, predict, models,
sessions; run as the installed console script with no TTY."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_support import Model
from typer.testing import CliRunner, Result

from rnnserve_client import Client
from rnnserve_client._local import LocalServer
from rnnserve_client.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLI = Path(sys.executable).with_name("rnnserve-client")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "true", "COLUMNS": "120"}
    env.pop("RNNSERVE_TARGET", None)
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=120,
        check=check,
    )


@pytest.fixture
def csv_file(tmp_path: Path, model: Model) -> tuple[Path, np.ndarray]:
    if model.input_features != 1:
        pytest.skip("the CLI streams one column")
    values = model.series(30, seed=7)[:, 0]
    path = tmp_path / "series.csv"
    lines = ["t,other,value"] + [f"{2000 + i},x,{v:.4f}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path, values


def test_stream_csv_with_plot(
    server: LocalServer, model: Model, csv_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, values = csv_file
    png = tmp_path / "out.png"
    out = _run(
        "stream",
        "--csv",
        str(path),
        "--column",
        "value",
        "--model",
        model.name,
        "--chunk",
        "4",
        "--plot",
        str(png),
        "--target",
        server.target,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:4].isdigit()]
    assert [r[0] for r in rows] == [str(2000 + i) for i in range(30)]
    # Each row: label, actual, predicted next, actual next, error.
    actual = np.array([float(r[1]) for r in rows])
    np.testing.assert_allclose(actual, values, atol=0.01)
    predicted = np.array([float(r[2]) for r in rows])
    with Client(server.target) as c:
        ref = c.predict(model.name, values.astype(np.float32))[:, 0]
    np.testing.assert_allclose(predicted, ref, atol=0.01, rtol=1e-3)
    assert float(rows[0][3]) == pytest.approx(values[1], abs=0.01)
    assert "RMSE" in out
    assert "persistence" in out
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 5000


def _invoke(*args: str) -> Result:
    """In-process run of the same typer app (the console script is covered above)."""
    return CliRunner().invoke(app, list(args), env={"CI": "true", "COLUMNS": "120"})


def test_stream_errors_are_readable(
    server: LocalServer, model: Model, csv_file: tuple[Path, np.ndarray]
) -> None:
    path, _ = csv_file
    common = ["--csv", str(path), "--target", server.target]
    res = _invoke("stream", *common, "--column", "nope", "--model", model.name)
    assert res.exit_code == 1
    assert "no column 'nope'" in res.stderr
    assert "value" in res.stderr
    res = _invoke("stream", *common, "--column", "other", "--model", model.name)
    assert res.exit_code == 1
    assert "is not a number" in res.stderr
    res = _invoke("stream", *common, "--column", "value", "--model", "no_such_model")
    assert res.exit_code == 1
    assert "NOT_FOUND" in res.stderr


def test_predict_models_sessions(server: LocalServer, model: Model) -> None:
    if model.input_features != 1:
        pytest.skip("--values is one feature")
    out = _invoke("predict", "--model", model.name, "--values", "10,20,30", "-t", server.target)
    assert out.exit_code == 0, out.output
    outputs = [float(line.split()[2]) for line in out.stdout.splitlines()[1:]]
    with Client(server.target) as c:
        ref = c.predict(model.name, [10.0, 20.0, 30.0])[:, 0]
        with c.session(model.name, session_id="cli-listed") as s:
            s.step([1.0, 2.0])
            sessions = _invoke("sessions", "--model", model.name, "-t", server.target).stdout
        names = [m.name for m in c.list_models()]
    np.testing.assert_allclose(outputs, ref, atol=0.01, rtol=1e-3)
    assert "cli-listed" in sessions
    models = _invoke("models", "--target", server.target).stdout
    for name in names:
        assert name in models
    res = _invoke("models", "--target", "127.0.0.1:1", "--timeout", "2")
    assert res.exit_code == 1
    assert "UNAVAILABLE" in res.stderr or "DEADLINE_EXCEEDED" in res.stderr
    res = _invoke("predict", "--model", model.name, "--values", "1,x", "-t", server.target)
    assert res.exit_code == 1
    assert "comma-separated numbers" in res.stderr
