"""Every metric the Grafana dashboard queries exists in a real scrape of the server after some
traffic (parsed with prometheus_client's text parser), and matches docs/metrics.md."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rnnserve_client import Client, NotFound
from rnnserve_client._local import LocalServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/rnnserve.json"
METRIC = re.compile(r"\b(rnnserve_[a-z0-9_]+)\b")


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names |= set(METRIC.findall(target["expr"]))
    for var in dashboard["templating"]["list"]:
        names |= set(METRIC.findall(var["definition"]))
    return names


def _documented() -> set[str]:
    table = (ROOT / "docs/metrics.md").read_text()
    return set(re.findall(r"^\| `(rnnserve_[a-z0-9_]+)` \|", table, re.M))


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    repo = Path(os.environ.get("RNNSERVE_TEST_REPOSITORY", ROOT / "model_repository"))
    with LocalServer(repo, extra_args=["--log-format", "text"]) as srv:
        yield srv


def _traffic(target: str) -> None:
    with Client(target) as client:
        models = [m for m in client.list_models() if m.streaming]
        assert models
        for m in models[:2]:
            meta = client.model_metadata(m.name)
            x = np.linspace(0, 50, 8 * meta.input_features, dtype=np.float32)
            x = x.reshape(8, meta.input_features)
            with client.session(m.name) as s:
                s.step(x[:4])
                s.step(x[4:])
            client.predict(m.name, x)
        with pytest.raises(NotFound):
            client.get_session("no-such-session")
        with pytest.raises(NotFound):
            client.session("no_such_model").step([1.0])


def test_dashboard_queries_only_existing_metrics(server: LocalServer) -> None:
    _traffic(server.target)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    scraped = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    wanted = _dashboard_metrics()
    assert len(wanted) >= 12
    missing = sorted(wanted - scraped)
    assert not missing, f"dashboard queries metrics the server does not export: {missing}"


def test_dashboard_covers_the_documented_metrics() -> None:
    documented = _documented()
    assert len(documented) >= 10
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in _dashboard_metrics()}
    assert used <= documented, sorted(used - documented)
    assert documented - used == set(), sorted(documented - used)
