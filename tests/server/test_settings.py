"""Settings precedence: flags > RNNSERVE_* environment > config file (TOML or JSON) > defaults."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from grpc_helpers import RNNSERVE, ServerProcess
from pydantic import ValidationError

from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc
from rnnserve_server.cli import load_settings
from rnnserve_server.config import ServerSettings
from rnnserve_server.cores import usable_cores


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RNNSERVE_"):
            monkeypatch.delenv(key)


def test_defaults_work() -> None:
    s = load_settings()
    assert s == ServerSettings()
    assert s.port == 8001
    assert s.sessions.eviction == "reject"


def test_toml_file_sets_nested_fields(tmp_path: Path) -> None:
    cfg = tmp_path / "rnnserve.toml"
    cfg.write_text(
        'port = 9100\nmodels = ["a"]\n[sessions]\nmax_sessions_per_model = 7\neviction = "lru"\n'
    )
    s = load_settings(cfg)
    assert (s.port, s.models) == (9100, ["a"])
    assert (s.sessions.max_sessions_per_model, s.sessions.eviction) == (7, "lru")
    assert s.sessions.idle_ttl_s == ServerSettings().sessions.idle_ttl_s  # untouched default


def test_env_beats_file_and_flags_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "rnnserve.json"
    cfg.write_text(json.dumps({"port": 9100, "metrics_port": 9101, "sessions": {"idle_ttl_s": 5}}))
    monkeypatch.setenv("RNNSERVE_PORT", "9200")
    monkeypatch.setenv("RNNSERVE_SESSIONS__IDLE_TTL_S", "6")
    s = load_settings(cfg)
    assert (s.port, s.metrics_port, s.sessions.idle_ttl_s) == (9200, 9101, 6.0)
    s = load_settings(cfg, port=9300, sessions={"max_sessions_per_model": 3})
    assert s.port == 9300
    # A flag for one nested field leaves the others from env/file in place.
    assert (s.sessions.max_sessions_per_model, s.sessions.idle_ttl_s) == (3, 6.0)


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("shutdown_grace_s = 2.5\n")
    monkeypatch.setenv("RNNSERVE_CONFIG_FILE", str(cfg))
    assert load_settings().shutdown_grace_s == 2.5


def test_typos_and_bad_values_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(cfg)
    cfg.write_text('[sessions]\neviction = "random"\n')
    with pytest.raises(ValidationError, match="eviction"):
        load_settings(cfg)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_cli_reports_bad_settings_with_exit_code_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = -1\n")
    done = subprocess.run(
        [str(RNNSERVE), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "port" in done.stderr


def test_event_loop_setting() -> None:
    assert ServerSettings().event_loop == "auto"
    with pytest.raises(ValidationError):
        load_settings(event_loop="trio")


def test_uvloop_is_used_when_installed_else_refused_clearly(
    repository: Path, tmp_path: Path
) -> None:
    """uvloop is optional: with it, the server serves on it; without it, exit 2 and say why."""
    if importlib.util.find_spec("uvloop") is None:
        done = subprocess.run(
            [str(RNNSERVE), "serve", "--event-loop", "uvloop", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert "uvloop" in done.stderr
        assert "not installed" in done.stderr
        return
    proc = ServerProcess(repository, tmp_path, args=["--event-loop", "uvloop"]).start()
    try:
        with proc.channel() as ch:
            stub = rnnserve_pb2_grpc.ModelsStub(ch)  # type: ignore[no-untyped-call]
            models = stub.ListModels(rnnserve_pb2.ListModelsRequest(), timeout=10)
        assert models.models
        assert "event loop: uvloop" in proc.log_file.read_text()
    finally:
        proc.stop()


def test_parallel_light_batches_auto_follows_the_usable_cores() -> None:
    from rnnserve_server.service import _parallel_light_batches

    def resolve(choice: str, workers: int) -> bool:
        return _parallel_light_batches(
            ServerSettings.model_validate(
                {"batcher": {"parallel_light_batches": choice}, "runtime": {"run_workers": workers}}
            )
        )

    cores = usable_cores()
    assert resolve("on", 10_000) is True
    assert resolve("off", 1) is False
    assert resolve("auto", 10_000) is False  # more workers than cores: light batches wait
    workers = max(1, cores - 2)
    assert resolve("auto", workers) is (cores >= workers + 2)  # this machine: 2 cores, False
    with pytest.raises(ValidationError):
        ServerSettings.model_validate({"batcher": {"parallel_light_batches": "sometimes"}})


def test_worker_nice_auto_follows_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnserve_server.service import _worker_nice

    def resolve(choice: int | str, workers: int) -> int:
        return _worker_nice(
            ServerSettings.model_validate(
                {"runtime": {"worker_nice": choice, "run_workers": workers}}
            )
        )

    cores = usable_cores()
    assert resolve(5, 1) == 5
    assert resolve(0, 10_000) == 0
    assert resolve("auto", 10_000) == 19  # more workers than cores: compute yields to I/O
    workers = max(1, cores - 2)
    assert resolve("auto", workers) == (0 if cores >= workers + 2 else 19)
    for bad in (20, -1, "high"):
        with pytest.raises(ValidationError):
            ServerSettings.model_validate({"runtime": {"worker_nice": bad}})
    monkeypatch.setenv("RNNSERVE_RUNTIME__WORKER_NICE", "7")
    assert ServerSettings().runtime.worker_nice == 7


def test_step_graph_setting_takes_auto_or_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().runtime.step_graph == "auto"
    for text, value in (("false", False), ("true", True), ("auto", "auto"), ("0", False)):
        monkeypatch.setenv("RNNSERVE_RUNTIME__STEP_GRAPH", text)
        assert ServerSettings().runtime.step_graph == value, text
    for bad in ("sometimes", 2):
        with pytest.raises(ValidationError):
            ServerSettings.model_validate({"runtime": {"step_graph": bad}})
    with pytest.raises(ValidationError):
        ServerSettings.model_validate({"runtime": {"step_graph_min_batch": 0}})
