"""/metrics over HTTP, parsed with prometheus_client's text parser: counters and histograms move
by exactly the traffic the test sends."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import onnx
from fixtures import forward_cells_only
from grpc_helpers import ServerProcess, Stubs, raw_input, run_stream, step_request, tensor
from prometheus_client.parser import text_string_to_metric_families

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.compiled import hot_path
from rnnserve_server.repository import scan

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_by_the_traffic_sent(
    server: ServerProcess, stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    m = meta.name
    x = raw_input(meta, np.random.default_rng(40), 9)
    bad = x[:3].copy()
    bad[0, 0] = np.nan
    before = scrape(server)
    replies = run_stream(
        stubs.inference,
        [
            step_request("metrics-1", m, x[:4], start=True, request_id="1"),
            step_request("metrics-1", m, bad, request_id="bad"),
            step_request("metrics-1", m, x[4:8], request_id="2"),
            step_request("metrics-1", m, x[8:], end=True, request_id="3"),
        ],
    )
    assert [r.step.status.code for r in replies] == [0, 3, 0, 0]
    stubs.inference.Predict(pb.PredictRequest(model=m, input=tensor(x)))
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rnnserve_requests_total", model=m, method="stream_step", code="OK") == 3
    assert (
        delta("rnnserve_requests_total", model=m, method="stream_step", code="INVALID_ARGUMENT")
        == 1
    )
    assert delta("rnnserve_requests_total", model=m, method="predict", code="OK") == 1
    assert delta("rnnserve_steps_total", model=m, code="OK") == 9 + 9  # stream + predict
    assert delta("rnnserve_steps_total", model=m, code="INVALID_ARGUMENT") == 3
    assert delta("rnnserve_request_latency_seconds_count", model=m, method="stream_step") == 4
    assert delta("rnnserve_request_latency_seconds_sum", model=m, method="stream_step") > 0
    inf_bucket = delta(
        "rnnserve_request_latency_seconds_bucket", model=m, method="stream_step", le="+Inf"
    )
    assert inf_bucket == 4
    assert delta("rnnserve_sessions_created_total", model=m) == 1
    assert delta("rnnserve_sessions_ended_total", model=m, reason="end") == 1
    assert delta("rnnserve_session_steps_count", model=m) == 1
    assert delta("rnnserve_session_steps_sum", model=m) == 9
    assert delta("rnnserve_active_sessions", model=m) == 0  # created and ended
    runs = delta("rnnserve_ort_run_seconds_count", model=m)
    assert runs >= 3  # at least one run per accepted chunk (predict runs outside the batcher)
    assert delta("rnnserve_batch_sessions_count", model=m) >= 3
    assert delta("rnnserve_queue_delay_seconds_count", model=m) >= 3
    infos = [
        dict(labels)
        for (name, labels), v in after.items()
        if name == "rnnserve_model_info" and dict(labels)["model"] == m and v == 1
    ]
    assert {i["version"] for i in infos} >= {str(meta.version)}
    assert all(i["provider"] for i in infos)


def test_unknown_model_names_do_not_create_label_series(
    server: ServerProcess, stubs: Stubs
) -> None:
    x = np.zeros((1, 1), np.float32)
    run_stream(stubs.inference, [step_request("metrics-x", "typo-model-123", x, start=True)])
    after = scrape(server)
    assert not any(dict(labels).get("model") == "typo-model-123" for _, labels in after)
    assert (
        value(after, "rnnserve_requests_total", model="", method="stream_step", code="NOT_FOUND")
        >= 1
    )


def test_active_sessions_and_state_bytes_gauges(
    server: ServerProcess, stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    m = meta.name
    x = np.zeros((1, meta.input_features), np.float32)
    before = scrape(server)
    for i in range(3):
        stubs.inference.Step(
            pb.StepRequest(session_id=f"gauge-{i}", model=m, input=tensor(x), start=True)
        )
    mid = scrape(server)
    for i in range(3):
        stubs.sessions.CloseSession(pb.SessionRef(session_id=f"gauge-{i}"))
    after = scrape(server)
    active = "rnnserve_active_sessions"
    assert value(mid, active, model=m) - value(before, active, model=m) == 3
    assert value(after, active, model=m) == value(before, active, model=m)
    grown = value(mid, "rnnserve_state_bytes", model=m) - value(
        before, "rnnserve_state_bytes", model=m
    )
    per_session = sum(
        4 * int(np.prod(s.shape)) if s.dtype == mr.FLOAT32 else 8 * int(np.prod(s.shape))
        for s in meta.states
    )
    assert grown >= 3 * per_session
    # the arena holds at least every live session's state, in whole slots
    arena = value(mid, "rnnserve_state_arena_bytes", model=m)
    assert arena >= value(mid, "rnnserve_state_bytes", model=m)
    assert arena > 0
    assert arena % per_session == 0
    assert (
        value(after, "rnnserve_sessions_ended_total", model=m, reason="close")
        - value(before, "rnnserve_sessions_ended_total", model=m, reason="close")
        == 3
    )


def test_server_info_says_which_hot_path_runs(server: ServerProcess) -> None:
    """The server's own verdict (compiled or pure Python) matches what this process, with the
    same environment and the same files, decides; and its log line says why."""
    expected = hot_path()
    samples = scrape(server)
    assert value(samples, "rnnserve_server_info", hot_path=expected.label) == 1
    other = "python" if expected.compiled else "mypyc"
    assert ("rnnserve_server_info", frozenset({("hot_path", other)})) not in samples
    lines = [r for r in server.logs() if str(r.get("msg", "")).startswith("hot path:")]
    assert [r.get("hot_path") for r in lines] == [expected.label]
    assert expected.reason in str(lines[0]["msg"])


def test_model_info_says_which_models_run_a_step_graph(
    server: ServerProcess, repository: Path
) -> None:
    """runtime.step_graph is 'auto' by default: on CPU, models made of forward RNN, GRU or LSTM
    layers run one-step batches through a step graph where it timed faster at load; the metric
    labels every model, and only such models can say true."""
    seen = {}
    for (name, labels), v in scrape(server).items():
        if name == "rnnserve_model_info" and v == 1:
            info = dict(labels)
            seen[(info["model"], int(info["version"]))] = info["step_graph"]
    writable = {
        (name, version)
        for name, versions in scan(repository, None).items()
        for version, mv in versions.items()
        if forward_cells_only(onnx.load(str(mv.onnx_path)).graph)
    }
    assert set(seen) == {(n, v) for n, vs in scan(repository, None).items() for v in vs}
    assert set(seen.values()) <= {"true", "false"}
    assert {k for k, v in seen.items() if v == "true"} <= writable
