"""The service layer in-process (no gRPC): µs per step through `InferenceService.step` with N
concurrent ping-pong tasks, frames of 256 sessions through `InferenceService.frame`, the ONNX
Runtime compute floor for the same batches, and memory per idle session.

    .venv/bin/python -m bench.service_inprocess [--seconds 3] [--sessions 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from prometheus_client import CollectorRegistry

from bench.model import BenchModel, ensure_model
from bench.procstat import rss_bytes
from rnnserve_server.config import ServerSettings
from rnnserve_server.service import InferenceService
from rnnserve_server.types import FrameInput, StepInput

THREADS = 1  # ORT intra-op threads for the service and the floor (--threads)


def settings(model: BenchModel, **kw: object) -> ServerSettings:
    return ServerSettings(
        model_repository=model.repository,
        models=[model.name],
        runtime={"providers": ["cpu"], "intra_op_threads": THREADS},
        **kw,  # type: ignore[arg-type]
    )


async def ping_pong(
    svc: InferenceService, name: str, n: int, seconds: float, F: int
) -> tuple[float, float]:
    """N tasks, each stepping its own session one step at a time; returns wall and CPU (all
    threads) µs per step."""
    x = np.random.default_rng(0).standard_normal((1, F), dtype=np.float32)
    for i in range(n):
        await svc.step(StepInput(f"pp-{n}-{i}", name, None, x, start=True))
    stop = False
    counts = [0] * n

    async def worker(i: int) -> None:
        sid = f"pp-{n}-{i}"
        req = StepInput(sid, name, None, x)
        while not stop:
            await svc.step(req)
            counts[i] += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(n)]
    await asyncio.sleep(0.3)  # warm up
    c0, t0, p0 = sum(counts), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    c1, t1, p1 = sum(counts), time.perf_counter(), time.process_time()
    stop = True
    await asyncio.gather(*tasks)
    return (t1 - t0) / (c1 - c0) * 1e6, (p1 - p0) / (c1 - c0) * 1e6


async def frames(
    svc: InferenceService, name: str, n: int, seconds: float, F: int
) -> tuple[float, float]:
    """Frames of n sessions x 1 step, one after the other; returns wall and CPU µs per
    session-step."""
    ids = [f"fr-{i}" for i in range(n)]
    x = np.random.default_rng(1).standard_normal((n, 1, F), dtype=np.float32)
    no = np.zeros(n, np.bool_)
    exp = np.full(n, -1, np.int64)
    await svc.frame(FrameInput(name, None, ids, x, np.ones(n, np.bool_), no, exp))
    req = FrameInput(name, None, ids, x, no, no, exp)
    for _ in range(20):
        await svc.frame(req)
    count, t0, p0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        out = await svc.frame(req)
        count += 1
    assert all(e is None for e in out.errors)
    wall = (time.perf_counter() - t0) / (count * n) * 1e6
    return wall, (time.process_time() - p0) / (count * n) * 1e6


def compute_floor(model: BenchModel, batch: int, seconds: float) -> tuple[float, float]:
    """Bare ORT runs of `batch` sessions x 1 step with state fed back; wall and CPU µs per
    session-step."""
    meta = model.metadata
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(str(model.onnx_path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 1, meta.input_features), np.float32)
    feeds = {meta.input_name: x}
    feeds.update({s.input_name: np.zeros((batch, *s.shape), np.float32) for s in meta.states})
    outs = [meta.output_name] + [s.output_name for s in meta.states]
    for _ in range(20):
        sess.run(outs, feeds)
    count, t0, p0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        res = sess.run(outs, feeds)
        for i, s in enumerate(meta.states):
            feeds[s.input_name] = res[i + 1]
        count += 1
    wall = (time.perf_counter() - t0) / (count * batch) * 1e6
    return wall, (time.process_time() - p0) / (count * batch) * 1e6


async def memory(model: BenchModel, sessions: int) -> tuple[float, int]:
    """RSS growth per idle session after opening `sessions` with frames of 1024."""
    svc = await InferenceService.create(
        settings(model, sessions={"max_sessions_per_model": sessions + 1}),
        registry=CollectorRegistry(),
    )
    name, F = model.name, model.metadata.input_features
    try:
        await svc.frame(
            FrameInput(name, None, ["warm"], np.zeros((1, 1, F), np.float32),
                       np.ones(1, np.bool_), np.zeros(1, np.bool_), np.full(1, -1, np.int64))
        )  # fmt: skip
        gc.collect()
        before = rss_bytes(os.getpid())
        for lo in range(0, sessions, 1024):
            n = min(1024, sessions - lo)
            ids = [f"mem-{lo + i:07d}" for i in range(n)]
            out = await svc.frame(
                FrameInput(name, None, ids, np.zeros((n, 1, F), np.float32),
                           np.ones(n, np.bool_), np.zeros(n, np.bool_), np.full(n, -1, np.int64))
            )  # fmt: skip
            assert all(e is None for e in out.errors)
            del ids, out
        gc.collect()
        after = rss_bytes(os.getpid())
        assert svc.session_count() == sessions + 1
    finally:
        await svc.close(5.0)
    return (after - before) / sessions, model.state_bytes


async def run(model: BenchModel, seconds: float, sessions: int) -> None:
    name, F = model.name, model.metadata.input_features
    print(f"model {name}: 2-layer GRU H=128 F=16, ORT intra-op threads {THREADS}")
    svc = await InferenceService.create(settings(model), registry=CollectorRegistry())
    try:
        for n in (1, 64, 256):
            us, cpu = await ping_pong(svc, name, n, seconds, F)
            floor, fcpu = compute_floor(model, n, seconds)
            print(
                f"service.step, {n:3d} concurrent sessions: {us:7.1f} µs/step wall, "
                f"{cpu:7.1f} µs CPU ({1e6 / us:7.0f} steps/s); bare ORT batch {n}: "
                f"{floor:6.1f} µs wall, {fcpu:6.1f} µs CPU"
            )
        us, cpu = await frames(svc, name, 256, seconds, F)
        floor, fcpu = compute_floor(model, 256, seconds)
        print(
            f"service.frame, 256 sessions x 1 step: {us:6.2f} µs/step wall, {cpu:6.2f} µs CPU "
            f"({1e6 / us:7.0f} steps/s); bare ORT batch 256: {floor:6.2f} µs wall, {fcpu:6.2f} "
            f"µs CPU ({1e6 / floor:7.0f} steps/s) -> {floor / us:.2f}x of the compute floor"
        )
    finally:
        await svc.close(5.0)
    if sessions:
        per, raw = await memory(model, sessions)
        print(f"memory: {per:.0f} B per idle session at {sessions} sessions (raw state {raw} B)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=100_000, help="0 = skip memory")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0 = ORT)")
    a = parser.parse_args()
    global THREADS
    THREADS = a.threads
    with tempfile.TemporaryDirectory(prefix="rnnserve-inproc-") as tmp:
        model = ensure_model(Path(tmp) / "repository", "fallback")
        asyncio.run(run(model, a.seconds, a.sessions))


if __name__ == "__main__":
    main()
