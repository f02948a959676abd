"""Smoke test of the serving benchmark harness: it runs end to end against the echo and naive
servers (real processes, real gRPC, real ONNX Runtime) and produces a table with positive
throughput. Correctness of the harness only; no speed assertions (numbers live in docs/)."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m module args` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def table_rows(text: str, *starts: str) -> dict[str, list[str]]:
    """The Markdown table rows of `text` that begin with one of `starts`: first cell -> the
    other cells, stripped."""
    return {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith(starts)
    }


@pytest.mark.timeout(120)
def test_harness_measures_echo_and_naive(tmp_path: Path) -> None:
    out = tmp_path / "serving.md"
    proc = run_module(
        "bench.serving",
        "--systems", "echo,naive",
        "--sessions", "1,4",
        "--duration", "0.5",
        "--warmup", "0.3",
        "--model-source", "fallback",
        "--output", str(out),
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


@pytest.mark.timeout(120)
def test_harness_measures_rnnserve_over_the_kserve_stream(tmp_path: Path) -> None:
    """The kserve system: Triton-style ModelStreamInfer ping-pong against `rnnserve serve`,
    every reply checked (a wrong or missing output counts as an error)."""
    out = tmp_path / "kserve.md"
    proc = run_module(
        "bench.serving",
        "--systems", "kserve",
        "--sessions", "1,3",
        "--duration", "0.5",
        "--warmup", "0.3",
        "--model-source", "fallback",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.with_suffix(".md.json").read_text())["rows"]
    assert [(r["system"], r["load"], r["sessions"]) for r in rows] == [
        ("kserve", "ping-pong, KServe stream", 3)  # the largest --sessions up to 256
    ]
    assert rows[0]["errors"] == 0, rows[0]["note"]
    assert rows[0]["steps_per_s"] > 0
    assert rows[0]["streams"] == 3


@pytest.mark.timeout(120)
def test_side_by_side_gives_every_server_its_turns(tmp_path: Path) -> None:
    """The side-by-side run: echo, a second echo (the A/A pair) and rnnserve serving at once,
    the load taking turns; every turn of every server counted steps, every reply was checked,
    and the ping-pong floors are computed from it (no verdict at a session count the issue
    does not set)."""
    out = tmp_path / "side.md"
    cycles = 3
    proc = run_module(
        "bench.serving",
        "--systems", "side-by-side",
        "--side-sessions", "6",
        "--side-cycles", str(cycles),
        "--side-turn", "0.3",
        "--model-source", "fallback",
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".md.json").read_text())
    assert data["rows"] == []  # no rounds were asked for
    sbs = data["side_by_side"]
    assert sbs["error"] == "", sbs["error"]
    assert list(sbs["systems"]) == ["echo", "echo (A/A)", "rnnserve"]
    for name, s in sbs["systems"].items():
        assert s["errors"] == 0, (name, s["first_error"])
        assert len(s["turn_steps_per_s"]) == cycles, name
        assert min(s["turn_steps_per_s"]) > 0, name  # it stepped in each of its turns
        assert s["p99_all_turns_ms"] >= s["p50_ms"] > 0, name
        # the p99 floors compare: the median over turns of each turn's p99
        assert s["p99_ms"] == pytest.approx(statistics.median(s["turn_p99_ms"])), name
        assert s["server_cpu_us_per_step"] > 0, name
    floors = {f["name"]: f for f in data["side_floors"]}
    steps = floors["rnnserve / echo steps/s, 6 sessions"]
    expected = sbs["systems"]["rnnserve"]["steps_per_s"] / sbs["systems"]["echo"]["steps_per_s"]
    assert steps["measured"] == pytest.approx(expected)
    assert steps["passed"] is None  # 6 sessions: the floors are set at 256
    assert steps["per_round"][0] > 0  # the A/A pair's ratio
    assert math.isnan(floors["rnnserve / naive steps/s, 6 sessions"]["measured"])  # not asked
    table = out.read_text()
    assert "| ping-pong floor (issue 3), side by side |" in table
    assert "| echo (A/A) |" in table


@pytest.mark.timeout(120)
def test_ab_rounds_compare_variants_within_each_round() -> None:
    proc = run_module(
        "bench.ab",
        "--sessions", "2",
        "--rounds", "2",
        "--duration", "0.4",
        "--warmup", "0.2",
        "--model-source", "fallback",
        "echo",
        "workers:RNNSERVE_BATCHER__INLINE_MAX_STEPS=0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout, "| echo ", "| workers:")
    assert set(rows) == {"echo", "workers:RNNSERVE_BATCHER__INLINE_MAX_STEPS=0"}
    echo, workers = rows["echo"], rows["workers:RNNSERVE_BATCHER__INLINE_MAX_STEPS=0"]
    assert echo[5:8] == ["1.000", "1.000", "1.00, 1.00"]  # the baseline against itself
    assert float(workers[0].replace(",", "")) > 0
    assert float(workers[6]) > 0
    assert len(workers[7].split(", ")) == 2  # one ratio per round
    assert workers[-1] == "0"  # no errors
    # rounds alternate the order: each variant ran first once and second once
    order = [line.split(": ")[1] for line in proc.stderr.splitlines() if line.startswith("round")]
    variant = "workers:RNNSERVE_BATCHER__INLINE_MAX_STEPS=0"
    assert order == ["echo", variant, variant, "echo"]


@pytest.mark.timeout(120)
def test_ab_side_by_side_runs_the_variants_at_once() -> None:
    variant = "workers:RNNSERVE_BATCHER__INLINE_MAX_STEPS=0"
    proc = run_module(
        "bench.ab",
        "--side-by-side", "2",
        "--turn", "0.3",
        "--sessions", "3",
        "--model-source", "fallback",
        "echo",
        variant,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout, "| 1:", "| 2:")
    assert set(rows) == {"1:echo", "2:rnnserve"}
    assert rows["1:echo"][4].startswith("1.000")  # the baseline against itself
    assert float(rows["2:rnnserve"][0].replace(",", "")) > 0
    assert rows["2:rnnserve"][-1] == "0"  # no errors
    assert f"- 2:rnnserve: {variant}" in proc.stdout  # the legend names the variant


def test_ab_rejects_malformed_variants() -> None:
    from bench.ab import parse_variant

    assert parse_variant("x:A=1,B=2").env == {"A": "1", "B": "2"}
    for bad in ("x:A", ":A=1", "echo:A=1", "x@/nonexistent"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_variant(bad)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("echo", [False, True], ids=["rnnserve", "echo"])
def test_stream_path_answers_every_step_and_reports_cpu_per_step(echo: bool) -> None:
    proc = run_module(
        "bench.stream_path",
        "--sessions", "4",
        "--rounds", "3",
        "--model-source", "fallback",
        *(["--echo"] if echo else []),
    )  # fmt: skip
    # A step the service failed (or left unanswered) makes the harness exit non-zero.
    assert proc.returncode == 0, proc.stderr[-3000:]
    what = "echo" if echo else "rnnserve"
    found = re.fullmatch(
        rf"{what}: ([0-9.]+) µs of event-loop CPU per streamed step \(4 sessions, 3 rounds\)",
        proc.stdout.strip(),
    )
    assert found is not None, proc.stdout
    assert float(found.group(1)) > 0
