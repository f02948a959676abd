"""Hot-path counters and histograms kept as plain Python numbers, exported when scraped.

prometheus_client's `Counter.inc` takes a lock per update, and `Histogram.observe` takes two after
a Python loop over its buckets: a few microseconds each, and a streamed step at low load makes
half a dozen of them (request count and latency, steps, queue delay, ORT run time, batch size).
The families here update a float, or a list slot found by `bisect`, for about a tenth of that,
and build their samples only when /metrics is scraped. They register on the same registry and
expose the same names, types and labels.

The price is a single writer: every update must come from the event loop thread (the batcher,
the front ends and the store all run there; ONNX Runtime workers hand their timings back to the
loop). Scrapes run on prometheus_client's HTTP thread and read a copy of each child's numbers,
each copy one C-level operation under the GIL. A histogram's `_count` is derived from its
buckets, so the two always agree; its `_sum` may trail them by the observation in progress.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Generic, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# From this many values on, one numpy bucket search beats a bisect per value.
_VECTORISE_FROM = 16


class CounterChild:
    """One labelled counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up; got an increment of {amount}")
        self.value += amount


class HistogramChild:
    """One labelled histogram: `counts[i]` observations fell in bucket i (the last is +Inf)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds  # finite upper bounds, ascending
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A value equal to a bound belongs to that bucket (le), which is bisect_left's index.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Sequence[float]) -> None:
        if len(values) < _VECTORISE_FROM:
            for value in values:
                self.observe(value)
            return
        arr = np.asarray(values, np.float64)
        found = np.bincount(
            np.searchsorted(self.bounds, arr, side="left"), minlength=len(self.counts)
        )
        counts = self.counts
        for i, n in enumerate(found.tolist()):
            if n:
                counts[i] += n
        self.sum += float(arr.sum())


C = TypeVar("C", CounterChild, HistogramChild)


class _Family(Generic[C]):
    """Children by label values, registered on `registry` as a custom collector (an object with
    `collect` and `describe`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        registry.register(self)  # describe() gives it the names to check for clashes

    def labels(self, *values: str) -> C:
        """The child for these label values, created on first use (cache it on hot paths)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {list(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _new_child(self) -> C:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _snapshot(self) -> list[tuple[tuple[str, ...], C]]:
        return list(self._children.items())  # one C call: safe against the loop adding one


class LoopCounter(_Family[CounterChild]):
    """A labelled counter (its name ends in `_total`, as the exposition requires)."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, child in self._snapshot():
            family.add_metric(list(key), child.value)
        yield family


class LoopHistogram(_Family[HistogramChild]):
    """A labelled histogram with fixed bucket bounds (+Inf is added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: bucket bounds must be distinct and ascending: {buckets}")
        self._bounds = [b for b in bounds if b != float("inf")]
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, child in self._snapshot():
            counts = child.counts[:]  # before the sum: the sum may only trail the buckets
            total = child.sum
            family.add_metric(
                list(key),
                list(zip(self._le, accumulate(counts), strict=True)),
                sum_value=total,
            )
        yield family
