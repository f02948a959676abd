"""The server's streamed-step path in-process: what one ping-pong step costs the server beyond
gRPC's transport, as CPU time or, under valgrind, as a machine-independent instruction count.

    python -m bench.stream_path [--sessions 256] [--rounds 40] [--instructions]

Each round sends one step for each of N sessions through the Stream servicer's own code
(`StreamSteps` over `InferenceService`, the batcher and ONNX Runtime): requests are parsed from
wire bytes and replies serialized, as gRPC's (de)serializers do, and the round ends when every
reply is out. `--echo` does only what the echo server does per message (parse, build the same
reply, serialize), so the difference is rnnserve's own per-step work.

Why: on a shared 2-core VM the ping-pong benchmark's rounds vary by +-15 %, far more than most
hot-path changes save. `--instructions` runs this module twice under `valgrind --tool=callgrind`
(with 5 rounds and with 5 + --rounds) and reports the difference per step, whatever else the
machine does. It includes ONNX Runtime's share (about 70k instructions per step of the 2-layer GRU
at batch 256). Those runs take out what made the count vary (+-4 % between runs of the same code,
measured): every batch runs on the event loop (`inline_max_steps` large, and no time budget,
which valgrind's slowness would exhaust), so no thread timing decides how the loop interleaves;
the hash seed is fixed (PYTHONHASHSEED=0); and only the main thread is counted, where all of
that runs (background threads' work landing in one run and not the other made whole-process
counts bimodal on one host). The worker hand-off left out costs a few hundred instructions per
batch.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from bench.echo_server import echo_step
from bench.model import BenchModel, add_model_source_argument, ensure_model, load_model
from bench.serverutil import resolve_loop
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server import batcher as batcher_module
from rnnserve_server.config import ServerSettings
from rnnserve_server.errors import RnnServeError
from rnnserve_server.event_loop import run_on_event_loop
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.stream_steps import StreamSteps
from rnnserve_server.service import InferenceService

WARM_ROUNDS = 5  # the instruction count's baseline run (start-up, first runs, allocations)


def request_bytes(model: BenchModel, i: int, start: bool) -> bytes:
    features = model.metadata.input_features
    x = np.random.default_rng(i).standard_normal((1, features), dtype=np.float32)
    request = pb.StepRequest(
        session_id=f"sess-{i:05d}",
        model=model.name,
        request_id=f"r{i}",
        input=pb.Tensor(shape=[1, features], data=x.tobytes()),
        start=start,
    )
    return pb.StreamRequest(step=request).SerializeToString()


def echo_reply(request: pb.StepRequest) -> bytes:
    """What bench/echo_server.py does for a step, serialization included."""
    return pb.StreamResponse(step=echo_step(request)).SerializeToString()


async def run_rounds(
    model: BenchModel, sessions: int, rounds: int, echo: bool, inline: bool = False
) -> float:
    """Run the rounds; returns CPU seconds of this thread (the event loop's) spent in them.
    `inline`: every batch runs on the event loop (deterministic, for instruction counts)."""
    first = [request_bytes(model, i, True) for i in range(sessions)]
    later = [request_bytes(model, i, False) for i in range(sessions)]
    if echo:
        cpu = time.thread_time()
        for r in range(rounds):
            for wire in first if r == 0 else later:
                request = pb.StreamRequest.FromString(wire)
                if request.WhichOneof("kind") == "step":
                    echo_reply(request.step)
        return time.thread_time() - cpu

    settings = ServerSettings(
        model_repository=model.repository,
        models=[model.name],
        runtime={"providers": ["cpu"]},
        batcher={"inline_max_steps": sessions} if inline else {},
    )
    if inline:
        batcher_module._INLINE_BUDGET_S = math.inf  # valgrind makes every run "too slow"
    service = await InferenceService.create(settings, registry=CollectorRegistry())
    recorder = Recorder(service.metrics, [model.name])
    answered = 0
    all_answered = asyncio.Event()
    failures: list[str] = []

    def put(reply: pb.StreamResponse | None) -> None:
        nonlocal answered
        if reply is not None:
            reply.SerializeToString()
        answered += 1
        if answered == sessions:
            all_answered.set()

    def reply_error(request: pb.StepRequest, error: RnnServeError, started: float) -> None:
        failures.append(f"{request.session_id}: {error}")
        put(None)

    streams = [StreamSteps(service, recorder, put, reply_error) for _ in range(sessions)]
    try:
        cpu = time.thread_time()
        for r in range(rounds):
            answered = 0
            all_answered.clear()
            for stream, wire in zip(streams, first if r == 0 else later, strict=True):
                request = pb.StreamRequest.FromString(wire)
                if request.WhichOneof("kind") == "step":
                    stream.submit(request.step)
            await all_answered.wait()
        spent = time.thread_time() - cpu
    finally:
        await service.close(5.0)
    if failures:
        raise RuntimeError(f"{len(failures)} steps failed, first: {failures[0]}")
    return spent


def count_instructions(argv_tail: list[str], rounds: int) -> int:
    """Instructions callgrind counted on the main thread in a whole run of this module with
    `rounds` rounds. Only the main thread: with --inline every batch (and ONNX Runtime, one
    intra-op thread) runs there, while background threads' work can land in one run and not the
    other (seen: 230M instructions in one 5-round run, 1.3M in a 45-round one), which made whole-
    process counts of the same code bimodal on some hosts (~150k or ~191k per step)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "env",
            "PYTHONHASHSEED=0",
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.stream_path",
            *argv_tail,
            "--rounds",
            str(rounds),
            "--inline",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        main_thread = Path(f"{out}-01")
        text = main_thread.read_text() if main_thread.exists() else ""
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def instructions_per_step(argv_tail: list[str], sessions: int, rounds: int) -> float:
    """Two whole runs, side by side (valgrind is single-threaded and slow); their difference
    is the measured rounds' share."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        base = pool.submit(count_instructions, argv_tail, WARM_ROUNDS)
        full = count_instructions(argv_tail, WARM_ROUNDS + rounds)
        return (full - base.result()) / (rounds * sessions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_path", description=__doc__)
    p.add_argument("--sessions", type=int, default=256, help="sessions, one step each per round")
    p.add_argument("--rounds", type=int, default=40, help="measured rounds")
    p.add_argument("--echo", action="store_true", help="only the echo server's per-message work")
    p.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    p.add_argument(
        "--inline", action="store_true", help="run every batch on the event loop (--instructions)"
    )
    p.add_argument("--model-repository", help="use this repository's gru_bench")
    add_model_source_argument(p)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rnnserve-stream-path-"))
    try:
        if args.model_repository:
            model = load_model(Path(args.model_repository))
        else:
            model = ensure_model(work / "repository", args.model_source)
        what = "echo" if args.echo else "rnnserve"
        if args.instructions:
            if shutil.which("valgrind") is None:
                p.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
            tail = ["--sessions", str(args.sessions), "--model-repository", str(model.repository)]
            tail += ["--echo"] if args.echo else []
            per_step = instructions_per_step(tail, args.sessions, args.rounds)
            print(f"{what}: {per_step:,.0f} instructions per streamed step "
                  f"({args.sessions} sessions, {args.rounds} rounds, callgrind)")  # fmt: skip
            return 0
        spent = run_on_event_loop(
            run_rounds(model, args.sessions, args.rounds, args.echo, args.inline),
            resolve_loop("auto"),
        )
        steps = args.sessions * args.rounds
        print(f"{what}: {spent / steps * 1e6:.2f} µs of event-loop CPU per streamed step "
              f"({args.sessions} sessions, {args.rounds} rounds)")  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
