"""ONNX Runtime model runner: one InferenceSession per loaded model version.

Runs are plain (blocking) calls; the batcher calls them from a bounded thread pool (ORT releases
the GIL while it computes). Normalisation lives here, so callers send and receive raw values:
the graph sees (x - mean) / std and its outputs are mapped back with y * std + mean.

Execution providers come from settings ("cuda", "cpu"). When CUDA is asked for but the session
does not really use it (`session.get_providers()`), the server says so in one log line and later
models skip the attempt. On CUDA, Forecast keeps the recurrent state on the device between its
steps through IO binding; only the small prediction that is fed back travels to the host.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_server.config import RuntimeSettings
from rnnserve_server.repository import ModelVersion, RepositoryError
from rnnserve_server.step_graph import single_step_graph
from rnnserve_server.types import FloatArray

log = logging.getLogger("rnnserve.runtime")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ORT_TYPES = {mr.FLOAT32: "tensor(float)", mr.INT64: "tensor(int64)"}

# None until a session has tried CUDA; then whether it worked. Guarded by _cuda_lock.
_cuda_usable: bool | None = None
_cuda_lock = threading.Lock()

States = dict[str, np.ndarray]  # StateTensor.name -> [B, *shape]

# How far a step graph's outputs may be from the model's (float32 rounding in another order;
# the bench GRU differs by 5e-7 at most).
_STEP_GRAPH_TOLERANCE = 1e-5
# With step_graph 'auto', the step graph must take at most this share of the model's time.
_STEP_GRAPH_GAIN = 0.95
_TIMING_RUNS = 12  # per graph and batch size


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One recurrent state tensor of a model (from its metadata)."""

    name: str
    input_name: str
    output_name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    initial_value: float

    @property
    def nbytes(self) -> int:
        """Bytes of this state for one session."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def initial(self, batch: int) -> np.ndarray:
        return np.full((batch, *self.shape), self.initial_value, dtype=self.dtype)


def state_specs(meta: mr.ModelMetadata) -> list[StateSpec]:
    return [
        StateSpec(
            name=st.name,
            input_name=st.input_name,
            output_name=st.output_name,
            shape=tuple(int(d) for d in st.shape),
            dtype=np.dtype(np.float32 if st.dtype == mr.FLOAT32 else np.int64),
            initial_value=float(st.initial_value),
        )
        for st in meta.states
    ]


def _session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = settings.inter_op_threads
    spin = "1" if settings.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    return so


def _create_session(path: str, settings: RuntimeSettings) -> ort.InferenceSession:
    global _cuda_usable
    so = _session_options(settings)
    want_cuda = "cuda" in settings.providers
    cpu_ok = "cpu" in settings.providers
    with _cuda_lock:
        try_cuda = want_cuda and _cuda_usable is not False
        providers: list[Any] = []
        for name in settings.providers:
            if name == "cuda" and try_cuda:
                providers.append((_CUDA, {"device_id": settings.cuda_device_id}))
            elif name == "cpu":
                providers.append(_CPU)
        if not providers:  # CUDA only, and it already failed once
            raise RepositoryError("CUDA is the only execution provider allowed and it is unusable")
        if try_cuda:
            # ORT prints several multi-line messages when the CUDA libraries or the GPU are
            # missing; silence its default logger for this call and report once ourselves.
            ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(path, so, providers=providers)
        except Exception as exc:  # ORT raises its own types for unreadable or invalid graphs
            raise RepositoryError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        finally:
            if try_cuda:
                ort.set_default_logger_severity(2)
        if try_cuda:
            used = _CUDA in session.get_providers()
            if not used and _cuda_usable is None:
                if cpu_ok:
                    log.warning(
                        "CUDA execution provider requested (device %d) but not usable: no GPU, "
                        "or the CUDA 13 / cuDNN 9 libraries are missing; running on CPU",
                        settings.cuda_device_id,
                    )
                else:
                    raise RepositoryError(
                        "CUDA is the only execution provider allowed and it is unusable"
                    )
            _cuda_usable = used
    return session


class ModelRunner:
    """Runs one model version. Thread-safe: ORT sessions accept concurrent run() calls."""

    def __init__(self, model: ModelVersion, settings: RuntimeSettings) -> None:
        self.model = model
        self.meta = model.metadata
        self.session = _create_session(str(model.onnx_path), settings)
        self.on_cuda = _CUDA in self.session.get_providers()
        # One-step batches of at least this many sessions run the step graph (if there is one).
        self._step_session: ort.InferenceSession | None = None
        self._step_min_batch = settings.step_graph_min_batch
        self.provider = "cuda" if self.on_cuda else "cpu"
        self.device_id = settings.cuda_device_id
        self.states = state_specs(self.meta)
        self.input_features = int(self.meta.input_features)
        self.output_features = int(self.meta.output_features)
        self._out_names = [self.meta.output_name] + [s.output_name for s in self.states]
        norm = self.meta.normalization
        self._in_norm = _affine(norm.input_mean, norm.input_std)
        self._out_norm = _affine(norm.output_mean, norm.output_std)
        self._check_graph()
        if settings.step_graph is not False and not self.on_cuda:
            self._step_session = self._load_step_graph(settings)

    @property
    def step_graph(self) -> bool:
        """One-step batches run a copy of the graph with its RNN/GRU/LSTM nodes written out."""
        return self._step_session is not None

    def _load_step_graph(self, settings: RuntimeSettings) -> ort.InferenceSession | None:
        """The step graph's session, if the model has RNN, GRU or LSTM nodes it can write out, the
        copy gives the original's outputs for one step (checked here on random inputs) and,
        with step_graph 'auto', it is faster (timed here); else None."""
        where = str(self.model.onnx_path)
        try:
            made = single_step_graph(self.model.onnx_path.read_bytes())
            if made is None:
                return None
            step, cells = made
            session = ort.InferenceSession(step, _session_options(settings), providers=[_CPU])
            diff = self._step_graph_difference(session)
        except Exception as exc:  # any failure leaves the model on its own graph
            log.warning("%s: no step graph (%s: %s)", where, type(exc).__name__, exc)
            return None
        if not diff <= _STEP_GRAPH_TOLERANCE:
            log.warning(
                "%s: the step graph differs from the model by %.3g (> %g); not used",
                where, diff, _STEP_GRAPH_TOLERANCE,
            )  # fmt: skip
            return None
        timed = ""
        if settings.step_graph == "auto":
            per_step = self._time_graphs(session)
            timed = "µs per session-step, model -> step graph: " + ", ".join(
                f"batch {b} {m * 1e6:.2f} -> {st * 1e6:.2f}" for b, (m, st) in per_step.items()
            )
            # From the smallest timed batch on which it is faster at every larger one.
            start = None
            for batch in sorted(per_step, reverse=True):
                model_s, step_s = per_step[batch]
                if step_s > _STEP_GRAPH_GAIN * model_s:
                    break
                start = batch
            if start is None:
                log.info("%s: the step graph is not faster here (%s); not used", self.label, timed)
                return None
            self._step_min_batch = start
        log.info(
            "%s: one-step batches of %d+ sessions run a step graph (%d %s written out; "
            "largest difference from the model %.2g%s)",
            self.label, self._step_min_batch, cells, "cell" if cells == 1 else "cells", diff,
            f"; {timed}" if timed else "",
        )  # fmt: skip
        return session

    def _time_graphs(self, step: ort.InferenceSession) -> dict[int, tuple[float, float]]:
        """Seconds per session-step of the model and of `step`, for one-step batches from
        step_graph_min_batch up to 256 sessions: the fastest of several alternating runs, so
        that a busy moment of the machine weighs on neither."""
        out: dict[int, tuple[float, float]] = {}
        low = self._step_min_batch
        for batch in sorted({low, *(b for b in (64, 128, 256) if b > low)}):
            feeds = self._random_feeds(batch, seed=batch)
            best = [math.inf, math.inf]
            for k in range(2 * _TIMING_RUNS):
                session = self.session if k % 2 == 0 else step
                t0 = time.perf_counter()
                session.run(self._out_names, feeds)
                elapsed = time.perf_counter() - t0
                if k >= 2:  # the first run of each warms it up
                    best[k % 2] = min(best[k % 2], elapsed)
            out[batch] = (best[0] / batch, best[1] / batch)
        return out

    def _random_feeds(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """One step of `batch` sessions: random inputs and float states, initial counters."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, 1, self.input_features)).astype(np.float32)
        feeds: dict[str, np.ndarray] = {self.meta.input_name: x}
        for s in self.states:
            if s.dtype == np.float32:
                feeds[s.input_name] = rng.standard_normal((batch, *s.shape)).astype(np.float32)
            else:  # counters: the initial value
                feeds[s.input_name] = s.initial(batch)
        return feeds

    def _step_graph_difference(self, step: ort.InferenceSession) -> float:
        """Largest absolute difference between the model's and `step`'s outputs for one step of
        a few sessions, from random inputs and states."""
        feeds = self._random_feeds(3, seed=0)
        want = self.session.run(self._out_names, feeds)
        got = step.run(self._out_names, feeds)
        return max(
            float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
            for a, b in zip(want, got, strict=True)
        )

    @property
    def label(self) -> str:
        return f"{self.meta.name}:{self.meta.version}"

    def _check_graph(self) -> None:
        """Fail at load time when the ONNX graph breaks the repository contract."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        where = f"{self.model.onnx_path}"
        need_in = {self.meta.input_name: "tensor(float)"}
        need_out = {self.meta.output_name: "tensor(float)"}
        for st in self.meta.states:
            need_in[st.input_name] = _ORT_TYPES[st.dtype]
            need_out[st.output_name] = _ORT_TYPES[st.dtype]
        for kind, have, need in (("input", inputs, need_in), ("output", outputs, need_out)):
            for name, typ in need.items():
                if name not in have:
                    raise RepositoryError(f"{where}: graph has no {kind} {name!r}")
                if have[name].type != typ:
                    raise RepositoryError(
                        f"{where}: {kind} {name!r} is {have[name].type}, metadata says {typ}"
                    )
        extra = set(inputs) - set(need_in)
        if extra:
            raise RepositoryError(f"{where}: graph inputs not in metadata: {sorted(extra)}")
        for spec in self.states:
            shape = inputs[spec.input_name].shape[1:]
            if len(shape) != len(spec.shape) or any(
                isinstance(d, int) and d != e for d, e in zip(shape, spec.shape, strict=False)
            ):
                raise RepositoryError(
                    f"{where}: state input {spec.input_name!r} has per-session shape {shape}, "
                    f"metadata says {list(spec.shape)}"
                )

    # -- helpers ---------------------------------------------------------------------------------
    def initial_states(self, batch: int) -> States:
        return {s.name: s.initial(batch) for s in self.states}

    def normalize(self, x: FloatArray) -> FloatArray:
        if self._in_norm is None:
            return x
        mean, std = self._in_norm
        # Finite values beyond float32's range after scaling become +-inf, as IEEE 754 says (no
        # warning printed to stderr); the batcher refuses a chunk whose results come out non-finite.
        with np.errstate(over="ignore"):
            out: FloatArray = ((x - mean) / std).astype(np.float32, copy=False)
        return out

    def denormalize(self, y: FloatArray) -> FloatArray:
        if self._out_norm is None:
            return y
        mean, std = self._out_norm
        with np.errstate(over="ignore"):  # as in normalize
            out: FloatArray = (y * std + mean).astype(np.float32, copy=False)
        return out

    # -- runs (blocking; call from a worker thread) -----------------------------------------------
    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        """One run: raw x [B, T, F] and states [B, *shape] -> raw y [B, T, O] and next states."""
        feeds: dict[str, np.ndarray] = {self.meta.input_name: self.normalize(x)}
        for s in self.states:
            feeds[s.input_name] = states[s.name]
        session = self.session
        step = self._step_session
        if step is not None and x.shape[1] == 1 and x.shape[0] >= self._step_min_batch:
            session = step
        outs = session.run(self._out_names, feeds)
        y = self.denormalize(outs[0])
        return y, {s.name: outs[i + 1] for i, s in enumerate(self.states)}

    def predict(self, x: FloatArray) -> FloatArray:
        """Whole sequences [B, T, F] from the initial state."""
        y, _ = self.run(x, self.initial_states(x.shape[0]))
        return y

    def forecast(self, first: FloatArray, states: States, horizon: int) -> FloatArray:
        """Autoregressive rollout for one session. `first` [O] is the session's last prediction
        (the forecast of the next input); each further step feeds the previous prediction back
        as the next raw input. Returns [horizon, O]; `states` is not modified."""
        out = np.empty((horizon, self.output_features), np.float32)
        out[0] = first
        if horizon == 1:
            return out
        if self.on_cuda:
            return self._forecast_bound(out, states)
        cur = {k: v.copy() for k, v in states.items()}
        for h in range(1, horizon):
            y, cur = self.run(out[h - 1].reshape(1, 1, -1), cur)
            out[h] = y[0, 0]
        return out

    def _forecast_bound(self, out: FloatArray, states: States) -> FloatArray:
        # States stay on the GPU between steps: each step's state outputs become the next step's
        # inputs as device OrtValues; only x (F floats) and y (O floats) cross to and from host.
        dev = ("cuda", self.device_id)
        cur = {
            s.input_name: ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(states[s.name]), *dev
            )
            for s in self.states
        }
        for h in range(1, out.shape[0]):
            binding = self.session.io_binding()
            x = self.normalize(out[h - 1].reshape(1, 1, -1))
            binding.bind_cpu_input(self.meta.input_name, x)
            for s in self.states:
                binding.bind_ortvalue_input(s.input_name, cur[s.input_name])
            binding.bind_output(self.meta.output_name, "cpu")
            for s in self.states:
                binding.bind_output(s.output_name, *dev)
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()
            out[h] = self.denormalize(values[0].numpy())[0, 0]
            cur = {s.input_name: values[i + 1] for i, s in enumerate(self.states)}
        return out


def _affine(mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if not mean:
        return None
    return np.asarray(mean, np.float64), np.asarray(std, np.float64)
