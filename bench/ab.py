"""Interleaved A/B rounds: server variants under the same ping-pong load, taking turns.

On a shared 2-core VM the machine's speed drifts by 10-20% within minutes, so two servers measured
minutes apart cannot be compared. A change worth a few percent only shows when the variants take
turns, each in a fresh process, round after round (the order reversed every other round), and
each round is compared within itself; docs/benchmarks.md's A/B numbers were taken this way.

    python -m bench.ab --sessions 256 --rounds 6 echo old@/tmp/old-checkout new \\
        light:RNNSERVE_BATCHER__PARALLEL_LIGHT_BATCHES=on

A variant is `echo` (bench/echo_server.py) or `NAME[:ENV=VALUE,...][@CHECKOUT]`: `rnnserve serve`
with that environment, running the server code of another checkout when one is given (its
server/, proto/ and client/ go first on PYTHONPATH, so its generated protobuf modules must exist).
The first variant is the baseline of every ratio.

`--side-by-side CYCLES` runs every variant at once instead and gives each one-second turns of the
same load (bench/alternate.py), CYCLES times: ratios a second apart rather than a minute, which
is what the serving benchmark's ping-pong floors use (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import LoadResult, LoadSpec, run_load
from bench.model import BenchModel, add_model_source_argument, describe, ensure_model, load_model
from bench.servers import ServerProcess, python_module, rnnserve_command, wait_model_ready
from bench.serverutil import add_loop_argument, resolve_loop
from bench.side_by_side import ServerSpec
from bench.side_by_side import measure as measure_side_by_side
from bench.side_by_side import render as render_side_by_side


@dataclass(frozen=True)
class Variant:
    label: str  # as given on the command line
    name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def echo(self) -> bool:
        return self.name == "echo"


def parse_variant(text: str) -> Variant:
    head, _, checkout = text.partition("@")
    name, _, settings = head.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} has no name")
    env: dict[str, str] = {}
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} in variant {text!r} is not ENV=VALUE")
        env[key] = value
    if checkout:
        root = Path(checkout).resolve()
        if not (root / "server" / "rnnserve_server").is_dir():
            raise argparse.ArgumentTypeError(f"{root} is not an rnnserve checkout")
        env["PYTHONPATH"] = os.pathsep.join(str(root / d) for d in ("server", "proto", "client"))
    if name == "echo" and env:
        raise argparse.ArgumentTypeError("the echo variant takes no settings or checkout")
    return Variant(text, name, env)


def command(variant: Variant, model: BenchModel, loop_name: str) -> list[str]:
    if variant.echo:
        return python_module("bench.echo_server", "--port", "0", "--loop", loop_name)
    return rnnserve_command(model.repository, False, event_loop=loop_name)


def side_by_side(
    variants: list[Variant], model: BenchModel, args: argparse.Namespace, work: Path
) -> int:
    """Every variant at once, taking turns (`--side-by-side`): print the table, return the exit
    status. Variants are named by position there (labels may hold '='); a legend maps them."""
    names = [f"{i + 1}:{'echo' if v.echo else 'rnnserve'}" for i, v in enumerate(variants)]
    servers = {
        name: ServerSpec(command(v, model, args.loop_name), v.env or None)
        for name, v in zip(names, variants, strict=True)
    }
    sbs = measure_side_by_side(servers, model, work, args.sessions, args.side_by_side, args.turn)
    print("\n".join(render_side_by_side(sbs, baseline=names[0])))
    print("\n" + "\n".join(f"- {n}: {v.label}" for n, v in zip(names, variants, strict=True)))
    bad = sbs.error or any(s["errors"] for s in sbs.systems.values())
    return 1 if bad else 0


def measure(
    variant: Variant, model: BenchModel, args: argparse.Namespace, log_path: Path, prefix: str
) -> LoadResult:
    """One fresh server process of `variant` under the ping-pong load; stops it."""
    cmd = command(variant, model, args.loop_name)
    server = ServerProcess(variant.name, cmd, log_path, variant.env)
    try:
        server.wait_port()
        if not variant.echo:
            wait_model_ready(server.target, model.name)
        spec = LoadSpec(
            target=server.target,
            model=model.name,
            mode="step" if variant.echo else args.mode,
            sessions=args.sessions,
            features=model.metadata.input_features,
            out_features=model.metadata.output_features,
            warmup_s=args.warmup,
            duration_s=args.duration,
            prefix=prefix,
        )
        return run_load(spec, args.clients, server.pid)
    finally:
        server.stop()


def render(variants: list[Variant], results: dict[str, list[LoadResult]]) -> str:
    """Medians over rounds; ratios are taken within each round, then their median."""
    base = results[variants[0].label]
    first = variants[0].name
    lines = [
        f"| variant | steps/s | p50 ms | p90 ms | p99 ms | p99.9 ms | steps/s ÷ {first} "
        f"| p99 ÷ {first} | p99 ratio per round | server CPU % | client CPU % | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for v in variants:
        rs = results[v.label]

        def med(attr: str, rs: list[LoadResult] = rs) -> float:
            return statistics.median(getattr(r, attr) for r in rs)

        speed = [r.steps_per_s / b.steps_per_s for r, b in zip(rs, base, strict=True)]
        tail = [r.p99_ms / b.p99_ms for r, b in zip(rs, base, strict=True)]
        lines.append(
            f"| {v.label} | {med('steps_per_s'):,.0f} | {med('p50_ms'):.2f} | {med('p90_ms'):.2f} "
            f"| {med('p99_ms'):.2f} | {med('p999_ms'):.2f} | {statistics.median(speed):.3f} "
            f"| {statistics.median(tail):.3f} | {', '.join(f'{x:.2f}' for x in tail)} "
            f"| {med('server_cpu_pct'):.0f} | {med('client_cpu_pct'):.0f} "
            f"| {sum(r.errors for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description="Interleaved A/B rounds of server variants under one ping-pong load",
    )
    p.add_argument("variants", nargs="+", type=parse_variant, help="echo | NAME[:ENV=V,...][@DIR]")
    p.add_argument("--sessions", type=int, default=256, help="concurrent ping-pong sessions")
    p.add_argument(
        "--mode",
        choices=["step", "kserve"],
        default="step",
        help="rnnserve's protocol: native Stream steps, or the KServe stream (echo: native)",
    )
    p.add_argument("--rounds", type=int, default=6, help="rounds (every variant once each)")
    p.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="CYCLES",
        help="run every variant at once and alternate one-second turns, CYCLES times, instead "
        "of rounds (native Stream only)",
    )
    p.add_argument("--turn", type=float, default=1.0, help="--side-by-side: seconds per turn")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--clients", type=int, default=1, help="load generator processes")
    p.add_argument("--model-repository", help="use this repository's --model")
    p.add_argument("--model", default="gru_bench")
    add_model_source_argument(p)
    add_loop_argument(p)
    args = p.parse_args(argv)
    args.loop_name = resolve_loop(args.loop)
    variants: list[Variant] = args.variants
    if len({v.label for v in variants}) != len(variants):
        p.error("variants must differ")
    if args.side_by_side and args.mode != "step":
        p.error("--side-by-side drives the native Stream only")
    work = Path(tempfile.mkdtemp(prefix="rnnserve-ab-"))
    results: dict[str, list[LoadResult]] = {v.label: [] for v in variants}
    try:
        if args.model_repository:
            model = load_model(Path(args.model_repository), args.model)
        else:
            model = ensure_model(work / "repository", args.model_source, args.model)
        if args.side_by_side:
            print(
                f"`python -m bench.ab {' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
                f"model: {describe(model)}; event loop {args.loop_name}\n"
            )
            return side_by_side(variants, model, args, work)
        run_id = f"ab{int(time.time()) % 100000}"
        for k in range(args.rounds):
            for i, v in enumerate(variants if k % 2 == 0 else variants[::-1]):
                r = measure(v, model, args, work / f"r{k}-{i}.log", f"{run_id}-r{k}-{i}")
                results[v.label].append(r)
                print(
                    f"round {k + 1}: {v.label}: {r.steps_per_s:,.0f} steps/s, p50 {r.p50_ms:.2f} "
                    f"p99 {r.p99_ms:.2f} ms, errors {r.errors} {r.first_error}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"`python -m bench.ab {' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
        f"model: {describe(model)}; {args.sessions} ping-pong sessions"
        f"{' over the KServe stream' if args.mode == 'kserve' else ''}, {args.rounds} rounds of "
        f"{args.duration:g} s after {args.warmup:g} s warm-up, event loop {args.loop_name}\n"
    )
    print(render(variants, results))
    return 1 if any(r.errors for rs in results.values() for r in rs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
