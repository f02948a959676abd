"""The ping-pong floors measured side by side: echo, a second echo (the A/A pair that shows the
method's own noise), naive and rnnserve run at once, and `bench.alternate` gives each its turns
of the same sessions' load (see that module for why this beats measuring them one after the
other on a shared VM). The load generator is a fresh process of its own."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.model import BenchModel
from bench.servers import ServerProcess, wait_model_ready

# The second echo's name: its ratio to echo is what identical servers differ by in this run.
ECHO_AGAIN = "echo (A/A)"


@dataclass(frozen=True)
class ServerSpec:
    cmd: list[str]
    env: dict[str, str] | None = None


@dataclass
class SideBySide:
    """`bench.alternate`'s figures per system (its JSON summary), or why there are none."""

    sessions: int
    cycles: int
    turn_s: float
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""

    def figure(self, system: str, key: str) -> float:
        s = self.systems.get(system)
        if s is None or s["errors"]:
            return math.nan
        return float(s[key])

    def ratio(self, num: str, den: str, key: str) -> float:
        return self.figure(num, key) / self.figure(den, key)

    def turn_range(self, num: str, den: str, key: str) -> tuple[float, float]:
        """Min and max of the ratio within single cycles (adjacent turns)."""
        a, b = self.systems.get(num), self.systems.get(den)
        if a is None or b is None:
            return math.nan, math.nan
        per = [x / y for x, y in zip(a[f"turn_{key}"], b[f"turn_{key}"], strict=True) if y]
        return (min(per), max(per)) if per else (math.nan, math.nan)


def measure(
    servers: dict[str, ServerSpec],
    model: BenchModel,
    work: Path,
    sessions: int,
    cycles: int,
    turn_s: float,
    settle_s: float = 0.25,
) -> SideBySide:
    """Start every server, take turns `cycles` times, stop them. Names are the systems'; an
    "rnnserve…" server is waited for until its model is ready."""
    out = SideBySide(sessions, cycles, turn_s)
    started: list[ServerProcess] = []
    try:
        targets: list[str] = []
        for name, spec in servers.items():
            slug = "".join(c if c.isalnum() else "-" for c in name)
            server = ServerProcess(name, spec.cmd, work / f"side-{slug}.log", spec.env)
            started.append(server)
            server.wait_port()
            if name.startswith("rnnserve"):
                wait_model_ready(server.target, model.name)
            targets += ["--target", f"{name}={server.target}@{server.pid}"]
        result = work / "side-by-side.json"
        proc = subprocess.run(
            [
                sys.executable, "-m", "bench.alternate", *targets,
                "--model", model.name,
                "--sessions", str(sessions),
                "--cycles", str(cycles),
                "--window", str(turn_s),
                "--settle", str(settle_s),
                "--json", str(result),
            ],
            capture_output=True,
            text=True,
            timeout=120 + cycles * len(servers) * (turn_s + settle_s) * 3,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            out.error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return out
        out.systems = json.loads(result.read_text())["systems"]
    except Exception as exc:  # reported in the table, as a failed round's rows are
        out.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        for server in started:
            server.stop()
    return out


def render(sbs: SideBySide, baseline: str = "echo") -> list[str]:
    """Markdown lines: each system's figures and its ratios to `baseline`."""
    lines = [
        f"Side by side: {sbs.sessions} ping-pong sessions per system, {sbs.cycles} cycles of "
        f"{sbs.turn_s:g} s turns, the servers running at once (steps/s and p50 over all of a "
        "system's turns, the range the ratio within single cycles; p99 the median over its turns "
        "of each turn's p99, and over all turns' latencies pooled)",
        "",
    ]
    if sbs.error:
        return [*lines, f"not measured: {sbs.error}"]
    lines += [
        f"| system | steps/s | p50 ms | p99 ms (median of turns) | p99 ms (all turns) "
        f"| steps/s ÷ {baseline} (single cycles) | p99 ÷ {baseline} (median of turns) "
        "| server CPU µs/step | client CPU µs/step | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in sbs.systems.items():
        lo, hi = sbs.turn_range(name, baseline, "steps_per_s")
        lines.append(
            f"| {name} | {s['steps_per_s']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['p99_all_turns_ms']:.2f} | "
            f"{sbs.ratio(name, baseline, 'steps_per_s'):.3f} ({lo:.2f}–{hi:.2f}) | "
            f"{sbs.ratio(name, baseline, 'p99_ms'):.3f} | {s['server_cpu_us_per_step']:.1f} | "
            f"{s['client_cpu_us_per_step']:.1f} | {s['errors']} |"
        )
    return lines
