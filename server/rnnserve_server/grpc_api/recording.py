"""Request-level metrics as the front end sees them (method, status code, latency, steps).

The metric objects live in `rnnserve_server.metrics.Metrics` (on the injected registry, exposed as
`service.metrics`). This adapter keeps the hot path cheap: the labelled children are looked up
once per (model, method, code) and cached, since prometheus_client's `labels()` takes a lock and
validates on every call. It also bounds label cardinality: a model name nobody loaded is recorded
as "" instead of growing a series per typo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from rnnserve_server.metrics import Metrics, observe_many


class Recorder:
    def __init__(self, metrics: Metrics | None, models: Iterable[str]) -> None:
        self._metrics = metrics
        self._known = frozenset(models)
        self._requests: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._steps: dict[tuple[str, str], Any] = {}
        self._later: list[tuple[str, str, str, float, int]] = []

    def request(self, model: str, method: str, code: str, latency_s: float, steps: int = 0) -> None:
        """One finished request: counted by status, its latency observed, its steps counted."""
        if self._metrics is None:
            return
        children = self._children(model, method, code)
        children[0].inc()
        children[1].observe(latency_s)
        if steps > 0:
            self.steps(model, code, steps)

    def request_soon(
        self, model: str, method: str, code: str, latency_s: float, steps: int = 0
    ) -> None:
        """`request`, recorded once the current callbacks are done: a batch's streamed steps
        finish together and are counted together (one bucket search and one lock per counter
        instead of three locked updates per step)."""
        later = self._later
        later.append((model, method, code, latency_s, steps))
        if len(later) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        later, self._later = self._later, []
        if self._metrics is None:
            return
        grouped: dict[tuple[str, str, str], tuple[list[float], list[int]]] = {}
        for model, method, code, latency_s, steps in later:
            key = (model, method, code)
            entry = grouped.get(key)
            if entry is None:
                entry = grouped[key] = ([], [])
            entry[0].append(latency_s)
            entry[1].append(steps)
        for (model, method, code), (latencies, steps_list) in grouped.items():
            counter, histogram = self._children(model, method, code)
            counter.inc(len(latencies))
            observe_many(histogram, latencies)
            self.steps(model, code, sum(steps_list))

    def _children(self, model: str, method: str, code: str) -> tuple[Any, Any]:
        if model not in self._known:
            model = ""
        key = (model, method, code)
        children = self._requests.get(key)
        if children is None:
            assert self._metrics is not None
            children = self._requests[key] = (
                self._metrics.requests_total.labels(model, method, code),
                self._metrics.request_latency.labels(model, method),
            )
        return children

    def steps(self, model: str, code: str, steps: int) -> None:
        if self._metrics is None or steps <= 0:
            return
        if model not in self._known:
            model = ""
        child = self._steps.get((model, code))
        if child is None:
            child = self._steps[(model, code)] = self._metrics.steps_total.labels(model, code)
        child.inc(steps)
