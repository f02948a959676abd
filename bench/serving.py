"""rnnserve's serving benchmark: every system and every floor of issue 3 in one run.

    python -m bench.serving [--sessions 1,64,256,1024] [--duration 5] [--warmup 2]
                            [--systems echo,naive,rnnserve,frames,compute,memory]
                            [--clients 1] [--sessions-per-stream 1] [--gpu] [--output FILE]

Systems, all on the same model (2-layer GRU, hidden 128, 16 features in and out):
  echo      bench/echo_server.py: same service and message sizes, no compute (transport floor)
  naive     bench/naive_server.py: one ORT run per request, state in a dict
  rnnserve  `rnnserve serve`, ping-pong steps
  frames    `rnnserve serve`, FrameRequests of --frame-size sessions (ping-pong per stream)
  compute   in-process ORT, batches of --frame-size (compute floor)
  memory    RSS growth per idle session with --memory-sessions sessions open
Each server runs in its own process; the load generator in one or more other processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import compute_floor, memory
from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.model import BenchModel, describe, ensure_model, load_model
from bench.procstat import loadavg
from bench.servers import (
    ServerProcess,
    python_module,
    rnnserve_command,
    wait_model_ready,
)

ALL_SYSTEMS = ("echo", "naive", "rnnserve", "frames", "compute", "memory")
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
class Floor:
    name: str
    measured: float
    required: str
    passed: bool | None  # None: not measured


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
        sessions=r.spec.sessions
        if r.spec.mode == "step"
        else r.spec.frame_size * r.spec.frame_streams,
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


def floors(rows: list[Row]) -> list[Floor]:
    """The ratios issue 3 sets, from this run's rows."""
    rn, echo, naive = (_find(rows, s, FLOOR_N) for s in ("rnnserve", "echo", "naive"))
    frames, compute = _find(rows, "frames"), _find(rows, "compute floor")
    out: list[Floor] = []

    def add(name: str, num: Row | None, den: Row | None, attr: str, need: float, le: bool) -> None:
        if num is None or den is None:
            out.append(Floor(name, math.nan, f"{'≤' if le else '≥'} {need}×", None))
            return
        ratio = getattr(num, attr) / getattr(den, attr)
        out.append(
            Floor(
                name, ratio, f"{'≤' if le else '≥'} {need}×", ratio <= need if le else ratio >= need
            )
        )

    add(f"rnnserve / echo steps/s, {FLOOR_N} sessions", rn, echo, "steps_per_s", 0.8, False)
    add(f"rnnserve / echo p99, {FLOOR_N} sessions", rn, echo, "p99_ms", 1.25, True)
    add(f"rnnserve / naive steps/s, {FLOOR_N} sessions", rn, naive, "steps_per_s", 1.2, False)
    add("frames / compute floor steps/s", frames, compute, "steps_per_s", 0.5, False)
    add(
        f"frames / naive steps/s ({FLOOR_N} sessions ping-pong)",
        frames,
        naive,
        "steps_per_s",
        10,
        False,
    )
    return out


def render(rows: list[Row], fl: list[Floor], mem: memory.MemoryResult | None, header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| system | load | sessions | streams | client procs | steps/s | p50 ms | p99 ms "
        "| server CPU % | client CPU % | errors | notes |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        lines.append(
            f"| {r.system} | {r.load} | {r.sessions} | {_fmt(r.streams, 'd')} | "
            f"{_fmt(r.clients, 'd')} | {_fmt(r.steps_per_s)} | {_fmt(r.p50_ms, '.2f')} | "
            f"{_fmt(r.p99_ms, '.2f')} | {_fmt(r.server_cpu_pct)} | {_fmt(r.client_cpu_pct)} | "
            f"{r.errors} | {_cell(r.note)} |"
        )
    lines += ["", "| floor (issue 3) | measured | required | result |", "|---|---:|---|---|"]
    for f in fl:
        verdict = "n/a" if f.passed is None else ("PASS" if f.passed else "FAIL")
        lines.append(f"| {f.name} | {_fmt(f.measured, '.2f')}× | {f.required} | {verdict} |")
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


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _failed(system: str, load: str, sessions: int, exc: BaseException) -> Row:
    _log(f"{system} {load} {sessions}: FAILED {type(exc).__name__}: {exc}")
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Row(system, load, sessions, errors=1, note=f"{type(exc).__name__}: {msg}")


def run_pingpong_system(
    system: str, server: ServerProcess, model: BenchModel, args: argparse.Namespace, run_id: str
) -> list[Row]:
    rows: list[Row] = []
    try:
        server.wait_port()
        if system == "rnnserve":
            wait_model_ready(server.target, model.name)
    except Exception as exc:
        server.stop()
        return [_failed(system, "ping-pong", n, exc) for n in args.sessions]
    try:
        for n in args.sessions:
            spec = LoadSpec(
                target=server.target,
                model=model.name,
                mode="step",
                sessions=n,
                sessions_per_stream=args.sessions_per_stream,
                features=model.metadata.input_features,
                out_features=model.metadata.output_features,
                warmup_s=args.warmup,
                duration_s=args.duration,
                prefix=f"{run_id}-{system}-n{n}",
            )
            try:
                r = run_load(spec, min(args.clients, n), server.pid)
                rows.append(_row_from(system, "ping-pong", r))
                _log(
                    f"{system} N={n}: {r.steps_per_s:,.0f} steps/s p50 {r.p50_ms:.2f} ms "
                    f"p99 {r.p99_ms:.2f} ms errors {r.errors} {r.first_error}"
                )
            except Exception as exc:
                rows.append(_failed(system, "ping-pong", n, exc))
        if system == "rnnserve" and "frames" in args.systems:
            spec = LoadSpec(
                target=server.target,
                model=model.name,
                mode="frame",
                frame_size=args.frame_size,
                frame_streams=args.frame_streams,
                features=model.metadata.input_features,
                out_features=model.metadata.output_features,
                warmup_s=args.warmup,
                duration_s=args.duration,
                prefix=f"{run_id}-frames",
            )
            try:
                r = run_load(spec, min(args.clients, args.frame_streams), server.pid)
                rows.append(_row_from("frames", f"frames of {args.frame_size}", r))
                _log(f"frames: {r.steps_per_s:,.0f} steps/s errors {r.errors} {r.first_error}")
            except Exception as exc:
                rows.append(_failed("frames", f"frames of {args.frame_size}", args.frame_size, exc))
    finally:
        server.stop()
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
    p.add_argument("--frame-streams", type=int, default=2, help="concurrent frame streams")
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
    p.add_argument(
        "--model-source",
        choices=["auto", "cli", "fallback"],
        default="auto",
        help="auto: `rnnserve-train export`, else the onnx.helper fallback",
    )
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
    p.add_argument("--output", default=None, help="write the Markdown here (and FILE.json)")
    args = p.parse_args(argv)
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
    rows: list[Row] = []
    mem: memory.MemoryResult | None = None
    try:
        if args.model_repository:
            model = load_model(Path(args.model_repository), args.model)
        else:
            _log("writing the benchmark model")
            model = ensure_model(work / "repository", args.model_source, args.model)
        _log(describe(model))
        gpu_flag = ["--gpu"] if args.gpu else []
        if "echo" in args.systems:
            _log("echo server")
            srv = ServerProcess(
                "echo", python_module("bench.echo_server", "--port", "0"), work / "echo.log"
            )
            rows += run_pingpong_system("echo", srv, model, args, run_id)
        if "naive" in args.systems:
            _log("naive server")
            srv = ServerProcess(
                "naive",
                python_module(
                    "bench.naive_server",
                    "--model-repository",
                    str(model.repository),
                    "--model",
                    model.name,
                    "--port",
                    "0",
                    "--intra-op-threads",
                    str(args.naive_threads),
                    *gpu_flag,
                ),
                work / "naive.log",
            )
            rows += run_pingpong_system("naive", srv, model, args, run_id)
        if "rnnserve" in args.systems or "frames" in args.systems:
            _log("rnnserve")
            srv = ServerProcess(
                "rnnserve",
                rnnserve_command(model.repository, args.gpu, *args.rnnserve_arg),
                work / "rnnserve.log",
                args.rnnserve_env,
            )
            if "rnnserve" not in args.systems:
                args.sessions, saved = [], args.sessions
                rows += run_pingpong_system("rnnserve", srv, model, args, run_id)
                args.sessions = saved
            else:
                rows += run_pingpong_system("rnnserve", srv, model, args, run_id)
        if "compute" in args.systems:
            best: compute_floor.ComputeResult | None = None
            for t in (int(x) for x in args.compute_threads.split(",") if x):
                c = compute_floor.measure(model, args.frame_size, args.duration, 1.0, args.gpu, t)
                _log(f"compute floor, {t} threads: {c.steps_per_s:,.0f} steps/s {c.providers}")
                if best is None or c.steps_per_s > best.steps_per_s:
                    best = c
            if best is not None:
                rows.append(
                    Row(
                        "compute floor",
                        f"ORT in-process, batch {best.batch}",
                        best.batch,
                        steps_per_s=best.steps_per_s,
                        p50_ms=best.run_ms_p50,
                        note=f"{best.providers[0]}, intra-op threads {best.threads}",
                    )
                )
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
                )
                _log(f"memory: {mem.bytes_per_session:,.0f} B/session")
            except Exception as exc:
                _failed("memory", "idle", args.memory_sessions, exc)
    finally:
        if os.environ.get("RNNSERVE_BENCH_KEEP"):
            _log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    fl = floors(rows)
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
        f"{args.frame_size} sessions; run took {time.monotonic() - t_start:.0f} s"
    )
    text = render(rows, fl, mem, header)
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
                    "memory": asdict(mem) if mem else None,
                    "header": header,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
