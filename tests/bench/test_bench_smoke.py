"""Smoke test of the serving benchmark harness: it runs end to end against the echo and naive
servers (real processes, real gRPC, real ONNX Runtime) and produces a table with positive
throughput. Correctness of the harness only; no speed assertions (numbers live in docs/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_harness_measures_echo_and_naive(tmp_path: Path) -> None:
    out = tmp_path / "serving.md"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.serving",
            "--systems", "echo,naive",
            "--sessions", "1,4",
            "--duration", "0.5",
            "--warmup", "0.3",
            "--model-source", "fallback",
            "--output", str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".md.json").read_text())
    rows = {(r["system"], r["sessions"]): r for r in data["rows"]}
    assert set(rows) == {("echo", 1), ("echo", 4), ("naive", 1), ("naive", 4)}
    for key, row in rows.items():
        assert row["errors"] == 0, (key, row["note"])
        assert row["steps_per_s"] > 0, key
        assert row["p99_ms"] >= row["p50_ms"] > 0, key
        assert row["streams"] == key[1]
    table = out.read_text()
    assert "| echo | ping-pong | 4 |" in table
    assert "| naive | ping-pong | 4 |" in table
    # Floors needing rnnserve are reported as not measured rather than guessed.
    assert "| rnnserve / naive steps/s, 256 sessions | –× | ≥ 1.2× | n/a |" in table
