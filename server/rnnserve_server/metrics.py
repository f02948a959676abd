"""Every metric of docs/metrics.md, defined on an injected CollectorRegistry.

One `Metrics` object is shared by the service (batcher, store, sweeper) and the front ends (which
record request-level metrics through `observe_request` and `count_steps`). Tests build their own
registry, so nothing here touches prometheus_client's global one.

The metrics updated for every step or batch are `loop_metrics` families (lock-free, updated on
the event loop thread only); the rest are prometheus_client's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rnnserve_server.compiled import hot_path
from rnnserve_server.errors import ErrorCode
from rnnserve_server.loop_metrics import HistogramChild, LoopCounter, LoopHistogram

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_STEPS_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)
_DURATION_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)

# Reasons for rnnserve_sessions_ended_total.
END_REASONS = ("end", "close", "ttl", "lru", "replaced")


def code_name(code: ErrorCode | int | str) -> str:
    """The status label: a gRPC status name such as "OK" or "INVALID_ARGUMENT"."""
    if isinstance(code, str):
        return code
    return ErrorCode(int(code)).name


class Metrics:
    """The server's metrics. Construct once per service with the registry /metrics serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests_total = LoopCounter(
            "rnnserve_requests_total",
            "Requests by API method and status.",
            ["model", "method", "code"],
            registry=r,
        )
        self.steps_total = LoopCounter(
            "rnnserve_steps_total",
            "Time steps processed (or rejected), by status.",
            ["model", "code"],
            registry=r,
        )
        self.request_latency = LoopHistogram(
            "rnnserve_request_latency_seconds",
            "Request received to reply ready.",
            ["model", "method"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.queue_delay = LoopHistogram(
            "rnnserve_queue_delay_seconds",
            "Time a chunk waited in the batcher before its run started.",
            ["model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.ort_run = LoopHistogram(
            "rnnserve_ort_run_seconds",
            "One ONNX Runtime run (one batch).",
            ["model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_sessions = LoopHistogram(
            "rnnserve_batch_sessions",
            "Sessions in one ONNX Runtime run.",
            ["model"],
            registry=r,
            buckets=_BATCH_BUCKETS,
        )
        self.active_sessions = Gauge(
            "rnnserve_active_sessions", "Live sessions.", ["model"], registry=r
        )
        self.state_bytes = Gauge(
            "rnnserve_state_bytes",
            "Bytes of recurrent state held by live sessions.",
            ["model"],
            registry=r,
        )
        self.arena_bytes = Gauge(
            "rnnserve_state_arena_bytes",
            "Bytes allocated for recurrent state: live sessions plus free slots of the arena.",
            ["model"],
            registry=r,
        )
        self.sessions_created = Counter(
            "rnnserve_sessions_created_total",
            "Sessions created (start, import).",
            ["model"],
            registry=r,
        )
        self.sessions_ended = Counter(
            "rnnserve_sessions_ended_total",
            "Sessions ended, by reason (end, close, ttl, lru, replaced).",
            ["model", "reason"],
            registry=r,
        )
        self.session_steps = Histogram(
            "rnnserve_session_steps",
            "Steps a session consumed, observed when it ends.",
            ["model"],
            buckets=_STEPS_BUCKETS,
            registry=r,
        )
        self.session_duration = Histogram(
            "rnnserve_session_duration_seconds",
            "Session lifetime, observed when it ends.",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "rnnserve_model_info",
            "Loaded models (value 1), the execution provider really in use, and whether "
            "one-step batches run a step graph (runtime.step_graph).",
            ["model", "version", "variant", "provider", "streaming", "step_graph"],
            registry=r,
        )
        self.server_info = Gauge(
            "rnnserve_server_info",
            "This server process (value 1): hot_path is mypyc when the compiled hot path runs, "
            "python when the pure Python one does (see the startup log for why).",
            ["hot_path"],
            registry=r,
        )
        self.server_info.labels(hot_path().label).set(1)

    # -- request level (front ends) --------------------------------------------------------------
    def observe_request(
        self, model: str, method: str, code: ErrorCode | int | str, latency_s: float
    ) -> None:
        """One request finished: counts it by status and records its latency."""
        self.requests_total.labels(model, method, code_name(code)).inc()
        self.request_latency.labels(model, method).observe(latency_s)

    def count_steps(self, model: str, code: ErrorCode | int | str, steps: int) -> None:
        """`steps` time steps processed (code OK) or rejected (the error's code)."""
        if steps > 0:
            self.steps_total.labels(model, code_name(code)).inc(steps)

    # -- service level ---------------------------------------------------------------------------
    def set_model_info(
        self,
        model: str,
        version: int,
        variant: str,
        provider: str,
        streaming: bool,
        step_graph: bool = False,
    ) -> None:
        self.model_info.labels(
            model,
            str(version),
            variant,
            provider,
            "true" if streaming else "false",
            "true" if step_graph else "false",
        ).set(1)


def observe_many(hist: Any, values: list[float]) -> None:
    """Observe many values at once: a `loop_metrics` child's own `observe_many`; for a
    prometheus_client histogram child, one bucket search in numpy instead of one locked `observe`
    per value (a few µs each), using its bucket counters when present (prometheus_client's
    default single-process values), else `observe` one by one."""
    if isinstance(hist, HistogramChild):
        hist.observe_many(values)
        return
    buckets = getattr(hist, "_buckets", None)
    upper = getattr(hist, "_upper_bounds", None)
    total = getattr(hist, "_sum", None)
    if len(values) < 8 or buckets is None or upper is None or total is None:
        for v in values:
            hist.observe(v)
        return
    arr = np.asarray(values, np.float64)
    # bucket i counts values <= upper[i] that are > upper[i-1] (observe() picks the first
    # bound >= value), which is searchsorted(side="left")
    counts = np.bincount(np.searchsorted(upper, arr, side="left"), minlength=len(upper))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)
    total.inc(float(arr.sum()))
