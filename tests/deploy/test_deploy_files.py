"""docker-compose.yml, the Dockerfile, the Prometheus config and the Grafana provisioning parse
and agree with each other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rnnserve.json"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose_config(*files: Path) -> dict[str, Any]:
    """The merged configuration as docker-compose resolves it (validated against its schema)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    args = [exe]
    for f in files:
        args += ["-f", str(f)]
    out = subprocess.run(
        [*args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


def test_compose_validates_with_docker_compose() -> None:
    config = _compose_config(COMPOSE)
    assert set(config["services"]) == {"rnnserve", "prometheus", "grafana"}


def test_gpu_override_validates_and_reserves_an_nvidia_gpu() -> None:
    config = _compose_config(COMPOSE, COMPOSE_GPU)
    server = config["services"]["rnnserve"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert server["build"]["args"]["VARIANT"] == "cuda"


def test_compose_structure() -> None:
    """Checks that need no docker-compose: what is mounted where, and that it exists."""
    compose = _yaml(COMPOSE)
    services = compose["services"]
    server = services["rnnserve"]
    assert server["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / server["build"]["dockerfile"]).is_file()
    assert server["build"]["args"]["VARIANT"] == "cpu"
    assert any(v.endswith("model_repository}:/models:ro") for v in server["volumes"])
    assert server["command"][:2] == ["--model-repository", "/models"]
    metrics_port = server["command"][server["command"].index("--metrics-port") + 1]
    assert f"{metrics_port}:{metrics_port}" in server["ports"]
    assert server["stop_signal"] == "SIGTERM"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    gpu = _yaml(COMPOSE_GPU)["services"]["rnnserve"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]


def test_dockerfile_installs_only_the_server_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip install \"\.\[server\]\"", text)
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        assert "torch" not in line
        assert "train" not in line
    assert '! python -c "import torch"' in text  # the build fails if torch slipped in
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"^FROM base-\$\{VARIANT\} AS server$", text, re.M)
    for variant in ("cpu", "cuda"):
        assert re.search(rf"^FROM \S+ AS base-{variant}$", text, re.M)
    assert 'ENTRYPOINT ["rnnserve", "serve"]' in text


def test_prometheus_scrapes_the_server_metrics_port() -> None:
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    compose = _yaml(COMPOSE)["services"]["rnnserve"]["command"]
    metrics_port = compose[compose.index("--metrics-port") + 1]
    assert job["static_configs"][0]["targets"] == [f"rnnserve:{metrics_port}"]


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    (ds,) = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    (provider,) = _yaml(DEPLOY / "grafana/provisioning/dashboards/rnnserve.yml")["providers"]
    grafana = _yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert (ROOT / "deploy/grafana/dashboards").joinpath(DASHBOARD.name).is_file()

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("sessions", "steps", "latency", "batch", "errors", "evictions"):
        assert topic in titles, topic
