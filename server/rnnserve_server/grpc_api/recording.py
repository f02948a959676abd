"""Request-level metrics as the front end sees them (method, status code, latency, steps).

The metric objects live in `rnnserve_server.metrics.Metrics` (on the injected registry, exposed as
`service.metrics`). This adapter keeps the hot path cheap: the labelled children of one
(model, method, code) are looked up once and cached together, so recording a request is one dict
lookup and three lock-free updates (`loop_metrics`; the front ends run on the event loop). It
also bounds label cardinality: a model name nobody loaded is recorded as "" instead of growing a
series per typo.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rnnserve_server.metrics import Metrics


class Recorder:
    def __init__(self, metrics: Metrics | None, models: Iterable[str]) -> None:
        self._metrics = metrics
        self._known = frozenset(models)
        # (model, method, code) -> (requests counter, latency histogram, steps counter); only for
        # loaded models, so that unknown names cannot grow it.
        self._requests: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._steps: dict[tuple[str, str], Any] = {}

    def request(self, model: str, method: str, code: str, latency_s: float, steps: int = 0) -> None:
        """One finished request: counted by status, its latency observed, its steps counted."""
        children = self._requests.get((model, method, code))
        if children is None:
            if self._metrics is None:
                return
            children = self._children(model, method, code)
        children[0].inc()
        children[1].observe(latency_s)
        if steps > 0:
            children[2].inc(steps)

    def _children(self, model: str, method: str, code: str) -> tuple[Any, Any, Any]:
        assert self._metrics is not None
        label = model if model in self._known else ""
        children = (
            self._metrics.requests_total.labels(label, method, code),
            self._metrics.request_latency.labels(label, method),
            self._metrics.steps_total.labels(label, code),
        )
        if label:
            self._requests[(model, method, code)] = children
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
