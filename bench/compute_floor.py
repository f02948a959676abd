"""The compute floor: ONNX Runtime running the benchmark model in-process, batches of 256
sessions x 1 step, the recurrent state fed back each run. No gRPC, no Python per session.

`graph="step"` runs the copy of the graph that rnnserve may run for one-step batches (its RNN,
GRU and LSTM cells written out, `rnnserve_server.step_graph`), so that the floor is the faster
of the two ways ORT can compute the same batch, as rnnserve may use either."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from bench.model import BenchModel, load_model
from rnnserve_server.step_graph import single_step_graph

Graph = Literal["model", "step"]


@dataclass(frozen=True)
class ComputeResult:
    batch: int
    steps_per_s: float
    run_ms_p50: float
    providers: list[str]
    threads: int
    graph: Graph = "model"


def has_step_graph(model: BenchModel) -> bool:
    return single_step_graph(model.onnx_path.read_bytes()) is not None


def make_session(
    model: BenchModel, gpu: bool, threads: int, graph: Graph = "model"
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0 = ORT default (one per physical core)
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    )
    if graph == "step":
        made = single_step_graph(model.onnx_path.read_bytes())
        if made is None:
            raise ValueError(
                f"{model.name} has no step graph (no RNN, GRU or LSTM cells to write out)"
            )
        return ort.InferenceSession(made[0], opts, providers=providers)
    return ort.InferenceSession(str(model.onnx_path), opts, providers=providers)


def measure(
    model: BenchModel,
    batch: int = 256,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    gpu: bool = False,
    threads: int = 0,
    graph: Graph = "model",
) -> ComputeResult:
    meta = model.metadata
    sess = make_session(model, gpu, threads, graph)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, meta.input_features), dtype=np.float32)
    states = {s.input_name: np.zeros((batch, *s.shape), np.float32) for s in meta.states}
    out_names = [meta.output_name] + [s.output_name for s in meta.states]
    feeds: dict[str, np.ndarray] = {meta.input_name: x, **states}
    state_inputs = [s.input_name for s in meta.states]

    def one() -> None:
        outs = sess.run(out_names, feeds)
        for name, value in zip(state_inputs, outs[1:], strict=True):
            feeds[name] = value

    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        one()
    times: list[float] = []
    t0 = time.perf_counter()
    t_end = t0 + duration_s
    while (now := time.perf_counter()) < t_end:
        one()
        times.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - t0
    return ComputeResult(
        batch=batch,
        steps_per_s=batch * len(times) / elapsed,
        run_ms_p50=float(np.median(times) * 1e3),
        providers=sess.get_providers(),
        threads=threads,
        graph=graph,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--model", default="gru_bench")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--graph", choices=["model", "step"], default="model")
    a = parser.parse_args()
    model = load_model(Path(a.model_repository), a.model)
    r = measure(model, a.batch, a.duration, 1.0, a.gpu, a.threads, a.graph)
    print(
        f"{r.steps_per_s:,.0f} steps/s (batch {r.batch}, run p50 {r.run_ms_p50:.2f} ms, "
        f"{r.providers}, {r.graph} graph)"
    )


if __name__ == "__main__":
    main()
