"""rnnserve's serving benchmark: every system and every floor of issue 3 in one run.

    python -m bench.serving [--sessions 1,64,256,1024] [--duration 5] [--warmup 2]
                            [--systems echo,naive,rnnserve,frames,kserve,compute,
                                       side-by-side,memory]
                            [--repeat 3] [--side-cycles 20] [--loop auto|asyncio|uvloop]
                            [--clients 1] [--sessions-per-stream 1] [--gpu] [--output FILE]

Systems, all on the same model (2-layer GRU, hidden 128, 16 features in and out):
  echo      bench/echo_server.py: same service and message sizes, no compute (transport floor)
  naive     bench/naive_server.py: one ORT run per request, state in a dict
  rnnserve  `rnnserve serve`, ping-pong steps
  frames    `rnnserve serve`, FrameRequests of --frame-size sessions (ping-pong per stream)
  kserve    `rnnserve serve`, ping-pong steps over the KServe v2 stream (ModelStreamInfer), 256
            sessions (or the largest --sessions below that), as a Triton client would send them
  compute   in-process ORT, batches of --frame-size (compute floor)
  side-by-side  echo, a second echo, naive and rnnserve running at once, 256 ping-pong sessions
            each, the load taking turns between them (bench/alternate.py): the ping-pong floors
  memory    RSS growth per idle session with --memory-sessions sessions open
Each server runs in its own process; the load generator in one or more other processes.

Throughput on a small shared machine swings between back-to-back runs, so the run is made of
--repeat rounds: each round runs echo, naive, rnnserve (and frames) and the compute floor once,
each server in a fresh process, so that the systems a floor compares are measured close together.
The table gives the median over rounds; each floor is a ratio taken within each round, and the
median of those ratios decides PASS/FAIL. On a shared VM that is not enough for the ping-pong
floors: rounds a minute apart still carry the machine's drift into their ratios (0.64× to 0.93×
for one build within one run). So after the rounds the side-by-side run measures those systems
in interleaved one-second turns, which decides the ping-pong floors; a second echo server in it
shows how far two identical servers differ in the same measurement. Memory is measured once,
after that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import compute_floor, memory, side_by_side
from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.model import BenchModel, add_model_source_argument, describe, ensure_model, load_model
from bench.procstat import loadavg
from bench.servers import (
    ServerProcess,
    python_module,
    rnnserve_command,
    wait_model_ready,
)
from bench.serverutil import LOOP_CHOICES, resolve_loop
from bench.side_by_side import ECHO_AGAIN, ServerSpec, SideBySide

ALL_SYSTEMS = (
    "echo", "naive", "rnnserve", "frames", "kserve", "compute", "side-by-side", "memory",
)  # fmt: skip
KSERVE_LOAD = "ping-pong, KServe stream"
FLOOR_N = 256


@dataclass
class Row:
    system: str
    load: str
    sessions: int
    streams: int | None = None
    clients: int | None = None
    steps_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    server_cpu_pct: float = math.nan
    client_cpu_pct: float = math.nan
    errors: int = 0
    note: str = ""


@dataclass
class Summary(Row):
    """A table row: one (system, load, sessions) point, the median of its rounds."""

    steps_per_s_min: float = math.nan  # over the rounds the medians use
    steps_per_s_max: float = math.nan
    rounds: int = 0  # rounds the medians use (those without errors, if any)


@dataclass
class Floor:
    name: str
    measured: float  # median of the per-round ratios
    required: str
    passed: bool | None  # None: not measured
    per_round: list[float] = field(default_factory=list)  # NaN: not measured in that round


def _fmt(v: float | int | None, spec: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def _cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: one line, no pipes, not too long (the JSON keeps it whole)."""
    one = " ".join(text.replace("|", "/").split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _row_from(system: str, load: str, r: LoadResult) -> Row:
    return Row(
        system=system,
        load=load,
        sessions=r.spec.frame_size * r.spec.frame_streams
        if r.spec.mode == "frame"
        else r.spec.sessions,
        streams=r.streams,
        clients=r.clients,
        steps_per_s=r.steps_per_s,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        server_cpu_pct=r.server_cpu_pct,
        client_cpu_pct=r.client_cpu_pct,
        errors=r.errors,
        note="; ".join(
            x
            for x in (
                f"{r.starved_sessions} sessions got no reply in the window"
                if r.starved_sessions
                else "",
                r.first_error,
            )
            if x
        ),
    )


def _find(rows: list[Row], system: str, sessions: int | None = None) -> Row | None:
    for r in rows:
        wanted = r.system == system and (sessions is None or r.sessions == sessions)
        if wanted and not math.isnan(r.steps_per_s) and r.errors == 0:
            return r
    return None


def _median(values: list[float]) -> float:
    """Median of the values that are not NaN; NaN when there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return float(statistics.median(vals)) if vals else math.nan


def _ratio(
    rows: list[Row], num: tuple[str, int | None], den: tuple[str, int | None], attr: str
) -> float:
    a, b = _find(rows, *num), _find(rows, *den)
    return math.nan if a is None or b is None else float(getattr(a, attr) / getattr(b, attr))


# name, numerator (system, sessions), denominator, attribute, required ratio, True if "at most"
_FLOORS: list[tuple[str, tuple[str, int | None], tuple[str, int | None], str, float, bool]] = [
    (
        f"rnnserve / echo steps/s, {FLOOR_N} sessions",
        ("rnnserve", FLOOR_N),
        ("echo", FLOOR_N),
        "steps_per_s",
        0.8,
        False,
    ),
    (
        f"rnnserve / echo p99, {FLOOR_N} sessions",
        ("rnnserve", FLOOR_N),
        ("echo", FLOOR_N),
        "p99_ms",
        1.25,
        True,
    ),
    (
        f"rnnserve / naive steps/s, {FLOOR_N} sessions",
        ("rnnserve", FLOOR_N),
        ("naive", FLOOR_N),
        "steps_per_s",
        1.2,
        False,
    ),
    (
        "frames / compute floor steps/s",
        ("frames", None),
        ("compute floor", None),
        "steps_per_s",
        0.5,
        False,
    ),
    (
        f"frames / naive steps/s ({FLOOR_N} sessions ping-pong)",
        ("frames", None),
        ("naive", FLOOR_N),
        "steps_per_s",
        10,
        False,
    ),
]


def floors(rounds: list[list[Row]]) -> list[Floor]:
    """The ratios issue 3 sets. Each is taken within a round (numerator and denominator measured
    minutes apart at most); the median over rounds is what counts."""
    out: list[Floor] = []
    for name, num, den, attr, need, le in _FLOORS:
        per_round = [_ratio(rows, num, den, attr) for rows in rounds]
        med = _median(per_round)
        passed = None if math.isnan(med) else (med <= need if le else med >= need)
        out.append(Floor(name, med, f"{'≤' if le else '≥'} {need}×", passed, per_round))
    return out


def summarize(rounds: list[list[Row]]) -> list[Summary]:
    """One row per (system, load, sessions): medians over the rounds that had no errors (over
    every round that measured something, when none was clean); errors add up over rounds."""
    groups: dict[tuple[str, str, int], list[tuple[int, Row]]] = {}
    for k, rows in enumerate(rounds, 1):
        for r in rows:
            groups.setdefault((r.system, r.load, r.sessions), []).append((k, r))
    out: list[Summary] = []
    for (system, load, sessions), members in groups.items():
        rows = [r for _, r in members]
        used = [r for r in rows if not math.isnan(r.steps_per_s) and r.errors == 0] or [
            r for r in rows if not math.isnan(r.steps_per_s)
        ]
        steps = [r.steps_per_s for r in used]
        notes = [(k, r.note) for k, r in members if r.note]
        if len({n for _, n in notes}) == 1 and len(notes) == len(members):
            note = notes[0][1]  # the same in every round (or only one round)
        else:
            note = "; ".join(f"round {k}: {n}" for k, n in notes)
        if len(rounds) > 1 and len(used) < len(rounds):
            note = "; ".join(x for x in (f"median of {len(used)}/{len(rounds)} rounds", note) if x)
        out.append(
            Summary(
                system=system,
                load=load,
                sessions=sessions,
                streams=next((r.streams for r in rows if r.streams is not None), None),
                clients=next((r.clients for r in rows if r.clients is not None), None),
                steps_per_s=_median(steps),
                p50_ms=_median([r.p50_ms for r in used]),
                p99_ms=_median([r.p99_ms for r in used]),
                server_cpu_pct=_median([r.server_cpu_pct for r in used]),
                client_cpu_pct=_median([r.client_cpu_pct for r in used]),
                errors=sum(r.errors for r in rows),
                note=note,
                steps_per_s_min=min(steps) if steps else math.nan,
                steps_per_s_max=max(steps) if steps else math.nan,
                rounds=len(used),
            )
        )
    return out


def _range(r: Summary) -> str:
    if r.rounds < 2:
        return "–"
    return f"{_fmt(r.steps_per_s_min)}–{_fmt(r.steps_per_s_max)}"


def render(
    rows: list[Summary],
    fl: list[Floor],
    mem: memory.MemoryResult | None,
    header: str,
    sbs: SideBySide | None = None,
    side_fl: list[Floor] | None = None,
) -> str:
    lines = [header, ""]
    if rows:
        decided = {f.name for f in side_fl or [] if f.passed is not None}
        lines += _rounds_tables(rows, fl, decided)
    if sbs is not None:
        lines += ["", *side_by_side.render(sbs), ""]
        lines += [
            "| ping-pong floor (issue 3), side by side | measured | required | result "
            f"| A/A: {ECHO_AGAIN} ÷ echo, same figure |",
            "|---|---:|---|---|---:|",
        ]
        for f in side_fl or []:
            noise = _fmt(f.per_round[0], ".2f") if f.per_round else "–"
            lines.append(
                f"| {f.name} | {_fmt(f.measured, '.2f')}× | {f.required} | {_verdict(f)} | "
                f"{noise if noise == '–' else noise + '×'} |"
            )
    if mem is not None:
        lines += [
            "",
            "| idle sessions | RSS before MiB | RSS after MiB | bytes/session | raw state bytes "
            "| ratio | errors | server lists |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {mem.sessions:,} | {mem.rss_before / 2**20:.1f} | {mem.rss_after / 2**20:.1f} | "
            f"{mem.bytes_per_session:,.0f} | {mem.raw_state_bytes:,} | {mem.overhead_ratio:.2f}× | "
            f"{mem.errors} | {mem.listed_total:,} |",
        ]
    return "\n".join(lines) + "\n"


def _verdict(f: Floor) -> str:
    return "n/a" if f.passed is None else ("PASS" if f.passed else "FAIL")


def _rounds_tables(rows: list[Summary], fl: list[Floor], decided: set[str]) -> list[str]:
    """The rounds' table (medians over rounds) and their floors; those in `decided` got their
    verdict from the side-by-side run, and the rounds' ratios are shown for comparison only."""
    lines = [
        "| system | load | sessions | streams | client procs | steps/s | steps/s range | p50 ms "
        "| p99 ms | server CPU % | client CPU % | errors | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.load} | {r.sessions} | {_fmt(r.streams, 'd')} | "
            f"{_fmt(r.clients, 'd')} | {_fmt(r.steps_per_s)} | {_range(r)} | "
            f"{_fmt(r.p50_ms, '.2f')} | {_fmt(r.p99_ms, '.2f')} | {_fmt(r.server_cpu_pct)} | "
            f"{_fmt(r.client_cpu_pct)} | {r.errors} | {_cell(r.note)} |"
        )
    lines += [
        "",
        "| floor (issue 3) | measured (median) | required | result | per round |",
        "|---|---:|---|---|---|",
    ]
    for f in fl:
        per_round = ", ".join(_fmt(x, ".2f") for x in f.per_round) or "–"
        verdict = "see side by side" if f.name in decided else _verdict(f)
        lines.append(
            f"| {f.name} | {_fmt(f.measured, '.2f')}× | {f.required} | {verdict} | {per_round} |"
        )
    return lines


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _failed(system: str, load: str, sessions: int, exc: BaseException) -> Row:
    _log(f"{system} {load} {sessions}: FAILED {type(exc).__name__}: {exc}")
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Row(system, load, sessions, errors=1, note=f"{type(exc).__name__}: {msg}")


def _failed_server(
    system: str, sessions: list[int], args: argparse.Namespace, exc: BaseException
) -> list[Row]:
    """Every row a server would have given, failed (it did not start)."""
    rows = [_failed(system, "ping-pong", n, exc) for n in sessions]
    if system == "rnnserve" and "frames" in args.systems:
        n = args.frame_size * args.frame_streams
        rows.append(_failed("frames", f"frames of {args.frame_size}", n, exc))
    if system == "rnnserve" and "kserve" in args.systems:
        rows.append(_failed("kserve", KSERVE_LOAD, _kserve_sessions(args), exc))
    return rows


def _kserve_sessions(args: argparse.Namespace) -> int:
    """The KServe row's session count: the floors' 256, or the largest --sessions below it."""
    below = [n for n in args.sessions if n <= FLOOR_N]
    return max(below) if below else FLOOR_N


def run_pingpong_system(
    system: str,
    server: ServerProcess,
    model: BenchModel,
    args: argparse.Namespace,
    run_id: str,
    sessions: list[int] | None = None,
) -> list[Row]:
    """Ping-pong at each of `sessions` (default args.sessions) and, for rnnserve when asked,
    the frames and KServe points; stops the server."""
    sessions = args.sessions if sessions is None else sessions
    frames = system == "rnnserve" and "frames" in args.systems
    frames_load = f"frames of {args.frame_size}"
    frames_n = args.frame_size * args.frame_streams
    rows: list[Row] = []
    try:
        server.wait_port()
        if system == "rnnserve":
            wait_model_ready(server.target, model.name)
    except Exception as exc:
        server.stop()
        return _failed_server(system, sessions, args, exc)

    def point(row_system: str, load: str, n: int, clients: int, **spec_args: Any) -> None:
        """Measure one load against the server: a row, or a failed row."""
        spec = LoadSpec(
            target=server.target,
            model=model.name,
            features=model.metadata.input_features,
            out_features=model.metadata.output_features,
            warmup_s=args.warmup,
            duration_s=args.duration,
            **spec_args,
        )
        try:
            r = run_load(spec, clients, server.pid)
        except Exception as exc:
            rows.append(_failed(row_system, load, n, exc))
            return
        rows.append(_row_from(row_system, load, r))
        _log(
            f"{row_system} N={n}: {r.steps_per_s:,.0f} steps/s p50 {r.p50_ms:.2f} ms "
            f"p99 {r.p99_ms:.2f} ms errors {r.errors} {r.first_error}"
        )

    try:
        for n in sessions:
            point(
                system,
                "ping-pong",
                n,
                min(args.clients, n),
                mode="step",
                sessions=n,
                sessions_per_stream=args.sessions_per_stream,
                prefix=f"{run_id}-{system}-n{n}",
            )
        if frames:
            point(
                "frames",
                frames_load,
                frames_n,
                min(args.clients, args.frame_streams),
                mode="frame",
                frame_size=args.frame_size,
                frame_streams=args.frame_streams,
                prefix=f"{run_id}-frames",
            )
        if system == "rnnserve" and "kserve" in args.systems:
            n = _kserve_sessions(args)
            point(
                "kserve",
                KSERVE_LOAD,
                n,
                min(args.clients, n),
                mode="kserve",
                sessions=n,
                prefix=f"{run_id}-kserve",
            )
    finally:
        server.stop()
    return rows


def _server_system(
    system: str,
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None,
    model: BenchModel,
    args: argparse.Namespace,
    run_id: str,
    sessions: list[int],
) -> list[Row]:
    """Start a fresh server process and measure it; a server that cannot start fails its rows."""
    try:
        server = ServerProcess(system, cmd, log_path, env)
    except Exception as exc:
        return _failed_server(system, sessions, args, exc)
    return run_pingpong_system(system, server, model, args, run_id, sessions)


def _compute_row(model: BenchModel, args: argparse.Namespace) -> Row:
    load = f"ORT in-process, batch {args.frame_size}"
    try:
        best: compute_floor.ComputeResult | None = None
        # rnnserve runs one-step batches through the step graph on CPU: the floor tries both.
        step = not args.gpu and compute_floor.has_step_graph(model)
        graphs: list[compute_floor.Graph] = ["model", "step"] if step else ["model"]
        for t in (int(x) for x in args.compute_threads.split(",") if x):
            for graph in graphs:
                c = compute_floor.measure(
                    model, args.frame_size, args.duration, 1.0, args.gpu, t, graph
                )
                _log(
                    f"compute floor, {t} threads, {graph} graph: {c.steps_per_s:,.0f} steps/s "
                    f"{c.providers}"
                )
                if best is None or c.steps_per_s > best.steps_per_s:
                    best = c
        if best is None:
            raise ValueError(f"no thread counts in --compute-threads {args.compute_threads!r}")
    except Exception as exc:
        return _failed("compute floor", load, args.frame_size, exc)
    return Row(
        "compute floor",
        f"ORT in-process, batch {best.batch}",
        best.batch,
        steps_per_s=best.steps_per_s,
        p50_ms=best.run_ms_p50,
        note=f"{best.providers[0]}, intra-op threads {best.threads}, {best.graph} graph",
    )


def server_specs(model: BenchModel, args: argparse.Namespace) -> dict[str, ServerSpec]:
    """How each server under test starts (the rounds and the side-by-side run use the same)."""
    gpu_flag = ["--gpu"] if args.gpu else []
    loop_flag = ["--loop", args.loop_name]
    echo = ServerSpec(python_module("bench.echo_server", "--port", "0", *loop_flag))
    naive = ServerSpec(
        python_module(
            "bench.naive_server",
            "--model-repository", str(model.repository),
            "--model", model.name,
            "--port", "0",
            "--intra-op-threads", str(args.naive_threads),
            *loop_flag,
            *gpu_flag,
        )
    )  # fmt: skip
    rnnserve = ServerSpec(
        rnnserve_command(model.repository, args.gpu, *args.rnnserve_arg, event_loop=args.loop_name),
        args.rnnserve_env,
    )
    return {"echo": echo, "naive": naive, "rnnserve": rnnserve}


def run_side_by_side(model: BenchModel, args: argparse.Namespace, work: Path) -> SideBySide:
    """The ping-pong floors' systems at FLOOR_N sessions, side by side (bench/side_by_side.py):
    echo twice (the A/A pair), naive when asked, rnnserve."""
    specs = server_specs(model, args)
    servers = {"echo": specs["echo"], ECHO_AGAIN: specs["echo"]}
    if "naive" in args.systems:
        servers["naive"] = specs["naive"]
    servers["rnnserve"] = specs["rnnserve"]
    _log(f"side by side: {', '.join(servers)}, {args.side_cycles} cycles")
    sbs = side_by_side.measure(
        servers, model, work, args.side_sessions, args.side_cycles, args.side_turn
    )
    for f in side_floors(sbs):
        _log(f"side by side: {f.name}: {f.measured:.2f}×")
    return sbs


def side_floors(sbs: SideBySide) -> list[Floor]:
    """The ping-pong floors from the side-by-side run (`per_round` holds the A/A pair's same
    ratio, echo against echo: the method's noise in this run)."""
    out: list[Floor] = []
    for name, num, den, attr, need, le in _FLOORS:
        if num[1] != FLOOR_N or den[1] != FLOOR_N:
            continue  # not a ping-pong floor
        key = "p99_ms" if attr == "p99_ms" else "steps_per_s"
        measured = sbs.ratio(num[0], den[0], key)
        passed = None if math.isnan(measured) else (measured <= need if le else measured >= need)
        noise = sbs.ratio(ECHO_AGAIN, "echo", key) if den[0] == "echo" else math.nan
        if sbs.sessions != FLOOR_N:  # a smaller run (tests): same ratios, no verdict on the floor
            name, passed = name.replace(f"{FLOOR_N} sessions", f"{sbs.sessions} sessions"), None
        out.append(Floor(name, measured, f"{'≤' if le else '≥'} {need}×", passed, [noise]))
    return out


def run_round(
    k: int, model: BenchModel, args: argparse.Namespace, run_id: str, work: Path
) -> list[Row]:
    """One round: echo, naive, rnnserve (+ frames), each in a fresh server process, then the
    compute floor: everything a floor compares, measured back to back. Every other round runs
    the servers in reverse order, so that a slow drift of the machine's speed (common on shared
    VMs) favours neither side of a ratio."""
    tag = f"{run_id}-r{k}"
    specs = server_specs(model, args)

    def start(system: str) -> list[Row]:
        _log(f"round {k}: {system} server")
        spec = specs[system]
        sessions = args.sessions if system != "rnnserve" or "rnnserve" in args.systems else []
        log_path = work / f"{system}-r{k}.log"
        return _server_system(system, spec.cmd, log_path, spec.env, model, args, tag, sessions)

    def echo() -> list[Row]:
        return start("echo")

    def naive() -> list[Row]:
        return start("naive")

    def rnnserve() -> list[Row]:
        return start("rnnserve")

    servers = [
        run
        for wanted, run in (
            ("echo" in args.systems, echo),
            ("naive" in args.systems, naive),
            (not {"rnnserve", "frames", "kserve"}.isdisjoint(args.systems), rnnserve),
        )
        if wanted
    ]
    if k % 2 == 0:
        servers.reverse()
    rows: list[Row] = []
    for run in servers:
        rows += run()
    if "compute" in args.systems:
        rows.append(_compute_row(model, args))
    for f in floors([rows]):
        if not math.isnan(f.measured):
            _log(f"round {k}: {f.name}: {f.measured:.2f}×")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="rnnserve serving benchmark (issue 3): rnnserve, naive, echo, compute floor",
    )
    p.add_argument("--sessions", default="1,64,256,1024", help="ping-pong session counts")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"subset of {ALL_SYSTEMS}")
    p.add_argument("--clients", type=int, default=1, help="load generator processes")
    p.add_argument(
        "--sessions-per-stream",
        type=int,
        default=1,
        help="1 = a stream per session (default); K = K sessions multiplexed per stream",
    )
    p.add_argument("--frame-size", type=int, default=256, help="sessions per frame / compute batch")
    p.add_argument(
        "--frame-streams",
        type=int,
        default=4,
        help="concurrent frame streams (4: two frames computing while two travel, so neither ORT "
        "worker waits for the network)",
    )
    p.add_argument("--memory-sessions", type=int, default=100_000)
    p.add_argument(
        "--compute-threads",
        default="1,0",
        help="ORT intra-op thread counts to try for the compute floor (0 = ORT default); "
        "the best is the floor",
    )
    p.add_argument(
        "--naive-threads", type=int, default=1, help="naive server's ORT intra-op threads"
    )
    p.add_argument("--gpu", action="store_true", help="CUDA execution provider for every system")
    p.add_argument("--model-repository", default=None, help="use this repository's --model")
    p.add_argument("--model", default="gru_bench")
    add_model_source_argument(p)
    p.add_argument(
        "--rnnserve-arg",
        action="append",
        default=[],
        help="extra argument for `rnnserve serve` (repeatable)",
    )
    p.add_argument(
        "--rnnserve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for `rnnserve serve` (repeatable), "
        "e.g. RNNSERVE_RUNTIME__INTRA_OP_THREADS=1",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds; each runs echo, naive, rnnserve/frames and compute once, back to back; "
        "the table shows medians, floors the median of per-round ratios",
    )
    p.add_argument(
        "--side-cycles",
        type=int,
        default=20,
        help="side-by-side run: cycles, each giving every system one turn",
    )
    p.add_argument(
        "--side-turn", type=float, default=1.0, help="side-by-side run: measured seconds per turn"
    )
    p.add_argument(
        "--side-sessions",
        type=int,
        default=FLOOR_N,
        help="side-by-side run: ping-pong sessions per system (the floors are set at 256)",
    )
    p.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default="auto",
        help="event loop of every server (echo/naive --loop, rnnserve --event-loop); "
        "auto = uvloop when installed, as rnnserve's default",
    )
    p.add_argument("--output", default=None, help="write the Markdown here (and FILE.json)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    try:
        args.loop_name = resolve_loop(args.loop)
    except (RuntimeError, ValueError) as exc:
        p.error(str(exc))
    args.sessions = [int(s) for s in args.sessions.split(",") if s]
    args.rnnserve_env = dict(kv.split("=", 1) for kv in args.rnnserve_env)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {ALL_SYSTEMS}")

    t_start = time.monotonic()
    load_before = loadavg()
    run_id = f"b{int(time.time()) % 100000}"
    work = Path(tempfile.mkdtemp(prefix="rnnserve-bench-"))
    rounds: list[list[Row]] = []
    mem: memory.MemoryResult | None = None
    sbs: SideBySide | None = None
    try:
        if args.model_repository:
            model = load_model(Path(args.model_repository), args.model)
        else:
            _log("writing the benchmark model")
            model = ensure_model(work / "repository", args.model_source, args.model)
        _log(describe(model))
        _log(f"event loop: {args.loop_name}")
        if set(args.systems) - {"memory", "side-by-side"}:
            for k in range(1, args.repeat + 1):
                _log(f"round {k}/{args.repeat}")
                rounds.append(run_round(k, model, args, run_id, work))
        if "side-by-side" in args.systems:
            sbs = run_side_by_side(model, args, work)
        if "memory" in args.systems:
            _log(f"memory: {args.memory_sessions:,} idle sessions")
            try:
                mem = memory.measure(
                    model,
                    work,
                    args.memory_sessions,
                    1024,
                    args.gpu,
                    tuple(args.rnnserve_arg),
                    args.rnnserve_env,
                    event_loop=args.loop_name,
                )
                _log(f"memory: {mem.bytes_per_session:,.0f} B/session")
            except Exception as exc:
                _failed("memory", "idle", args.memory_sessions, exc)
    finally:
        if os.environ.get("RNNSERVE_BENCH_KEEP"):
            _log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = summarize(rounds)
    fl = floors(rounds)
    side_fl = side_floors(sbs) if sbs is not None else []
    device = "GPU (cuda)" if args.gpu else "CPU"
    k = args.sessions_per_stream
    layout = "one stream per session" if k <= 1 else f"{k} sessions per stream"
    header = (
        f"## rnnserve serving benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"`python -m bench.serving {' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
        f"model: {describe(model)}  \n"
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {device}; "
        f"load average before {load_before[0]:.2f}, after {loadavg()[0]:.2f}  \n"
        f"{args.duration:g} s measured after {args.warmup:g} s warm-up per point; ping-pong with "
        f"{layout}, "
        f"{args.clients} load-generator process(es); frames: {args.frame_streams} stream(s) of "
        f"{args.frame_size} sessions; event loop: {args.loop_name} (every server); "
        f"run took {time.monotonic() - t_start:.0f} s  \n"
        f"{len(rounds)} round(s), each running every system once back to back in fresh server "
        "processes: the table shows medians over rounds (steps/s range: min–max), and each floor "
        "is the ratio within each round (both sides from the same round), listed per round, "
        "whose median decides PASS/FAIL"
        + (
            "; the ping-pong floors are also measured side by side (every server running, the "
            "load taking turns between them), which decides them: rounds a minute apart carry "
            "the machine's drift into a ratio, turns a second apart do not (docs/benchmarks.md)"
            if sbs is not None
            else ""
        )
    )
    text = render(rows, fl, mem, header, sbs, side_fl)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(out.suffix + ".json").write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "floors": [asdict(f) for f in fl],
                    "round_rows": [[asdict(r) for r in rr] for rr in rounds],
                    "event_loop": args.loop_name,
                    "memory": asdict(mem) if mem else None,
                    "side_by_side": asdict(sbs) if sbs else None,
                    "side_floors": [asdict(f) for f in side_fl],
                    "header": header,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
