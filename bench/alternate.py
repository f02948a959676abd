"""Alternating ping-pong: the same sessions' load against several servers that run side by side,
in short windows that take turns, so that every system is measured in the same seconds.

Why: on a small shared VM the machine's speed drifts by ±30% from one minute to the next, and
the floors of issue 3 are ratios of two systems' numbers. Measured one after the other (the
rounds of `bench.serving`), a ratio carries that drift; measured in turns of a second that
alternate A, B, B, A, A, B, ... over a minute, both sides see the same machine, and what is left
is the short-term noise of each turn, which averages out over many of them.

How: one load-generator process opens `sessions` streams to every target (a session per stream,
the first step with start=true, as `bench.loadgen` does) and waits until every session has had
its first reply. Then a controller opens one target at a time for `settle_s + window_s`: that
target's sessions step ping-pong, the others' wait before their next step (an idle server
costs next to no CPU: no traffic). Steps and latencies count only in the last `window_s` of
each turn, after the previous target's in-flight steps have drained and caches have warmed.
Each turn also records the target server's and the load generator's CPU time.

Two systems compare by their steps over all measured seconds, and by the median over their
turns of each turn's p99. Single turns scatter by ±20% even between adjacent seconds on such a
VM (the table's range of single-cycle ratios shows it); the steps of some twenty interleaved
turns agree from run to run within a few percent. The p99 of all turns' latencies pooled is
reported too, but one stall of the machine in one turn can carry it (an A/A pair once differed
1.38x); the median of turns moves one rank. Two servers of the same kind in one run (an A/A
pair) show how large the remaining noise is. Usable alone:

    python -m bench.alternate --target echo=127.0.0.1:5001 --target rnnserve=127.0.0.1:5002
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from bench.loadgen import EOF, check_step, finish_stream, tensor
from bench.procstat import cpu_seconds
from bench.side_by_side import SideBySide, render
from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc


@dataclass(frozen=True)
class Target:
    name: str
    address: str  # host:port
    pid: int | None = None  # the server process, for its CPU time


@dataclass
class Turn:
    """One target's measured window in one cycle."""

    steps: int = 0
    latencies_s: list[float] = field(default_factory=list)
    server_cpu_s: float = math.nan
    client_cpu_s: float = math.nan
    wall_s: float = math.nan

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else math.nan

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1e3)


@dataclass
class SystemResult:
    """Every turn of one target, and figures over all of them (latencies pooled)."""

    name: str
    turns: list[Turn] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    @property
    def steps_per_s(self) -> float:
        wall = sum(t.wall_s for t in self.turns)
        return sum(t.steps for t in self.turns) / wall if wall > 0 else math.nan

    def percentile_ms(self, q: float) -> float:
        """Over every latency of every turn."""
        pooled = [x for t in self.turns for x in t.latencies_s]
        return float(np.percentile(np.asarray(pooled), q) * 1e3) if pooled else math.nan

    def typical_turn_ms(self, q: float) -> float:
        """The median over turns of each turn's percentile: a stall of the machine in one turn
        moves it by one rank, where it can move the pooled p99 by a third (an A/A pair of echo
        servers once differed 1.38x in pooled p99, with equal throughput)."""
        per_turn = [t.percentile_ms(q) for t in self.turns if t.latencies_s]
        return float(np.median(per_turn)) if per_turn else math.nan

    def cpu_us_per_step(self, which: str) -> float:
        """Server or client CPU per step over all turns, in microseconds."""
        steps = sum(t.steps for t in self.turns)
        cpu = sum(getattr(t, f"{which}_cpu_s") for t in self.turns)
        return cpu / steps * 1e6 if steps else math.nan


@dataclass(frozen=True)
class AlternateResult:
    sessions: int
    window_s: float
    settle_s: float
    cycles: int
    systems: dict[str, SystemResult]

    def summary(self) -> dict[str, Any]:
        """Every figure a report needs, without the raw latencies (JSON-ready)."""
        return {
            "sessions": self.sessions,
            "window_s": self.window_s,
            "settle_s": self.settle_s,
            "cycles": self.cycles,
            "systems": {
                name: {
                    "steps_per_s": s.steps_per_s,
                    "p50_ms": s.percentile_ms(50),
                    "p90_ms": s.percentile_ms(90),
                    "p99_ms": s.typical_turn_ms(99),  # what the p99 floor compares
                    "p99_all_turns_ms": s.percentile_ms(99),
                    "p999_all_turns_ms": s.percentile_ms(99.9),
                    "server_cpu_us_per_step": s.cpu_us_per_step("server"),
                    "client_cpu_us_per_step": s.cpu_us_per_step("client"),
                    "errors": s.errors,
                    "first_error": s.first_error,
                    "turn_steps_per_s": [t.steps_per_s for t in s.turns],
                    "turn_p99_ms": [t.percentile_ms(99) for t in s.turns],
                }
                for name, s in self.systems.items()
            },
        }


class _Gate:
    """Whose turn it is: sessions of a closed target wait before their next step."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.stopped = False
        self.turn: Turn | None = None  # the turn being measured
        self.count_from = math.inf  # replies count from here (after the settling time)...
        self.count_until = math.inf  # ...to here


async def _session(
    stub: rnnserve_pb2_grpc.InferenceStub,
    model: str,
    sid: str,
    x: rnnserve_pb2.Tensor,
    gate: _Gate,
    opened: asyncio.Queue[None],
    result: SystemResult,
    out_bytes: int,
) -> None:
    req = rnnserve_pb2.StreamRequest(
        step=rnnserve_pb2.StepRequest(session_id=sid, model=model, input=x, start=True)
    )
    call = stub.Stream()
    clock = time.monotonic
    sent = 0
    while True:
        if sent and not gate.open.is_set():  # the first step opens the session at once
            await gate.open.wait()
        if gate.stopped:
            break
        req.step.request_id = str(sent)
        t0 = clock()
        await call.write(req)
        resp = await call.read()
        t1 = clock()
        if resp is EOF:
            raise RuntimeError(f"stream of {sid} on {result.name} ended: {await call.code()}")
        check_step(resp, out_bytes, result)
        if sent == 0:
            req.step.start = False
            opened.put_nowait(None)
        sent += 1
        turn = gate.turn
        if turn is not None and gate.count_from <= t1 <= gate.count_until:
            turn.steps += 1
            turn.latencies_s.append(t1 - t0)
    await finish_stream(call)


async def _alternate(
    targets: list[Target],
    model: str,
    sessions: int,
    cycles: int,
    window_s: float,
    settle_s: float,
    features: int,
    out_features: int,
) -> AlternateResult:
    rng = np.random.default_rng(0)
    results = {t.name: SystemResult(t.name) for t in targets}
    gates = {t.name: _Gate() for t in targets}
    channels = [grpc.aio.insecure_channel(t.address) for t in targets]
    tasks: list[asyncio.Task[None]] = []
    prefix = f"alt{int(time.time())}"
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 30)
        for t, ch in zip(targets, channels, strict=True):
            stub = rnnserve_pb2_grpc.InferenceStub(ch)  # type: ignore[no-untyped-call]
            gate = gates[t.name]
            opened: asyncio.Queue[None] = asyncio.Queue()
            for i in range(sessions):  # one target at a time: each opens, then waits its turn
                x = tensor(rng.standard_normal((1, features), dtype=np.float32))
                tasks.append(
                    asyncio.create_task(
                        _session(
                            stub, model, f"{prefix}-{i}", x, gate, opened, results[t.name],
                            out_features * 4,
                        )
                    )
                )  # fmt: skip
            for _ in range(sessions):
                await asyncio.wait_for(opened.get(), 120)
        # The thousand-odd stream objects made so far are permanent: out of the cyclic GC, so
        # that its full collections don't pause whichever turn they fall in.
        gc.collect()
        gc.freeze()
        names = [t.name for t in targets]
        pids = {t.name: t.pid for t in targets}
        for cycle in range(-1, cycles):  # cycle -1 warms every server up, unmeasured
            # A, B, C then C, B, A: a drift within a cycle favours no side on average.
            order = names if cycle % 2 == 0 else names[::-1]
            for name in order:
                gate, turn = gates[name], Turn()
                now = time.monotonic()
                gate.turn, gate.count_from = turn, now + settle_s
                gate.count_until = gate.count_from + window_s
                gate.open.set()
                await asyncio.sleep(max(0.0, gate.count_from - time.monotonic()))
                pid = pids[name]
                s0 = cpu_seconds(pid) if pid else math.nan
                c0, w0 = time.process_time(), time.monotonic()
                await asyncio.sleep(max(0.0, gate.count_until - time.monotonic()))
                turn.server_cpu_s = (cpu_seconds(pid) if pid else math.nan) - s0
                turn.client_cpu_s = time.process_time() - c0
                turn.wall_s = time.monotonic() - w0
                gate.open.clear()
                gate.turn = None
                if cycle >= 0:
                    results[name].turns.append(turn)
        for gate in gates.values():
            gate.stopped = True
            gate.open.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for ch in channels:
            await ch.close(None)
    return AlternateResult(sessions, window_s, settle_s, cycles, results)


def run_alternate(
    targets: list[Target],
    model: str,
    sessions: int = 256,
    cycles: int = 20,
    window_s: float = 1.0,
    settle_s: float = 0.25,
    features: int = 16,
    out_features: int = 16,
) -> AlternateResult:
    """Run the alternating load in this process (it is the load generator: call it from a
    process that does nothing else meanwhile)."""
    if len({t.name for t in targets}) != len(targets):
        raise ValueError("target names must differ")
    return asyncio.run(
        _alternate(targets, model, sessions, cycles, window_s, settle_s, features, out_features)
    )


def _target(text: str) -> Target:
    name, _, rest = text.partition("=")
    address, _, pid = rest.partition("@")
    if not name or not address:
        raise argparse.ArgumentTypeError("expected NAME=HOST:PORT[@PID]")
    return Target(name, address, int(pid) if pid else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--target", type=_target, action="append", required=True,
        help="NAME=HOST:PORT[@SERVER_PID], repeatable; the first is the baseline",
    )  # fmt: skip
    p.add_argument("--model", default="gru_bench")
    p.add_argument("--sessions", type=int, default=256)
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--window", type=float, default=1.0, help="measured seconds per turn")
    p.add_argument("--settle", type=float, default=0.25, help="unmeasured seconds per turn")
    p.add_argument("--json", default=None, help="also write the figures (no raw latencies) here")
    a = p.parse_args(argv)
    result = run_alternate(a.target, a.model, a.sessions, a.cycles, a.window, a.settle)
    summary = result.summary()
    table = SideBySide(a.sessions, a.cycles, a.window, systems=summary["systems"])
    print("\n".join(render(table, baseline=a.target[0].name)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
