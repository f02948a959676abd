"""loop_metrics' families expose exactly what prometheus_client's own Counter and Histogram expose
for the same updates (parsed with prometheus_client's text parser), and a scrape racing the
writer always sees a coherent histogram."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rnnserve_server.loop_metrics import LoopCounter, LoopHistogram
from rnnserve_server.metrics import observe_many

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition but `_created` (prometheus_client's own timestamps)."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_histogram_and_counter_expose_what_prometheus_client_exposes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ours_h = LoopHistogram("t_seconds", "doc", ["model", "method"], ours, BOUNDS)
    theirs_h = Histogram("t_seconds", "doc", ["model", "method"], buckets=BOUNDS, registry=theirs)
    ours_c = LoopCounter("t_total", "doc", ["model"], ours)
    theirs_c = Counter("t_total", "doc", ["model"], registry=theirs)

    rng = np.random.default_rng(7)
    # Values on the bounds themselves (they belong to that bucket), below the first, above the
    # last, and a spread in between; some one by one, some as a batch large enough to vectorise.
    single = [*BOUNDS, 0.0, 0.0005, 99.0, *rng.lognormal(-4, 2, 20).tolist()]
    batch = [*BOUNDS, *rng.lognormal(-3, 2, 200).tolist()]
    for labels in (("a", "step"), ("b", "frame")):
        for v in single:
            ours_h.labels(*labels).observe(v)
            theirs_h.labels(*labels).observe(v)
        observe_many(ours_h.labels(*labels), batch)
        observe_many(ours_h.labels(*labels), batch[:5])  # the small, unvectorised path
        for v in batch + batch[:5]:
            theirs_h.labels(*labels).observe(v)
    for model, amount in (("a", 1.0), ("a", 2.5), ("b", 4.0)):
        ours_c.labels(model).inc(amount)
        theirs_c.labels(model).inc(amount)
    ours_c.labels("a").inc()
    theirs_c.labels("a").inc()

    mine, reference = samples(ours), samples(theirs)
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert mine[key] == pytest.approx(value, rel=1e-12), key
    # The exposition also says what each family is.
    types = {f.name: f.type for f in text_string_to_metric_families(generate_latest(ours).decode())}
    assert types == {"t_seconds": "histogram", "t": "counter"}


def test_misuse_is_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("x_total", "doc", ["model"], registry)
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("m").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("m", "extra")
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("x_total", "doc", ["model"], registry)
    with pytest.raises(ValueError, match="ascending"):
        LoopHistogram("y_seconds", "doc", [], registry, (1.0, 0.5))
    assert counter.labels("m").value == 0.0  # the refused update changed nothing


def test_a_scrape_racing_the_writer_sees_a_coherent_histogram() -> None:
    registry = CollectorRegistry()
    child = LoopHistogram("r_seconds", "doc", ["model"], registry, BOUNDS).labels("m")
    stop = threading.Event()
    seen: list[dict[str, float]] = []
    problems: list[str] = []

    def scrape() -> None:
        while not stop.is_set():
            [family] = text_string_to_metric_families(generate_latest(registry).decode())
            values = {
                s.labels.get("le", s.name): s.value for s in family.samples if "le" in s.labels
            }
            count = next(s.value for s in family.samples if s.name.endswith("_count"))
            buckets = list(values.values())
            if buckets != sorted(buckets) or count != values["+Inf"]:
                problems.append(f"incoherent scrape: {values}, count {count}")
            seen.append(values)

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(60_000):
            child.observe(0.05 if i % 2 else 5.0)
    finally:
        stop.set()
        reader.join()
    assert not problems, problems[:3]
    assert len(seen) > 1
    assert sum(child.counts) == 60_000
    assert child.sum == pytest.approx(30_000 * 5.05)
