"""The Inference service over real gRPC against offline ONNX Runtime runs of the same data."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures import offline
from grpc_helpers import (
    PingPong,
    ServerProcess,
    Stubs,
    array,
    assert_close,
    by_request_id,
    random_chunks,
    raw_input,
    run_stream,
    step_request,
    tensor,
)

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb


def _reference(repository: Path, meta: mr.ModelMetadata, x: np.ndarray) -> np.ndarray:
    return offline(repository, meta.name, meta.version, x)


def test_streamed_chunks_equal_offline_run(
    stubs: Stubs,
    repository: Path,
    catalog: dict[str, mr.ModelMetadata],
    streaming_name: str,
) -> None:
    meta = catalog[streaming_name]
    rng = np.random.default_rng(sum(map(ord, streaming_name)))
    x = raw_input(meta, rng, 60)
    sizes = random_chunks(rng, len(x))
    requests, t = [], 0
    for i, size in enumerate(sizes):
        requests.append(
            step_request(
                f"chunks-{streaming_name}", meta.name, x[t : t + size],
                request_id=str(i), start=i == 0, end=i == len(sizes) - 1,
            )
        )  # fmt: skip
        t += size
    replies = run_stream(stubs.inference, requests)
    assert [r.step.request_id for r in replies] == [str(i) for i in range(len(sizes))]
    assert all(r.step.status.code == 0 for r in replies), replies[0].step.status
    assert [r.step.step for r in replies] == list(np.cumsum(sizes))
    assert {r.step.model_version for r in replies} == {meta.version}
    y = np.concatenate([array(r.step.output) for r in replies])
    assert_close(y, _reference(repository, meta, x))


def test_predict_of_whole_sequence_model_equals_offline(
    stubs: Stubs, repository: Path, catalog: dict[str, mr.ModelMetadata], whole_name: str
) -> None:
    meta = catalog[whole_name]
    rng = np.random.default_rng(5)
    x = raw_input(meta, rng, 37)
    reply = stubs.inference.Predict(
        pb.PredictRequest(model=meta.name, input=tensor(x), request_id="p1")
    )
    assert (reply.request_id, reply.model, reply.model_version) == ("p1", meta.name, meta.version)
    assert_close(array(reply.output), _reference(repository, meta, x))
    batch = np.stack([raw_input(meta, rng, 12) for _ in range(3)])
    reply = stubs.inference.Predict(pb.PredictRequest(model=meta.name, input=tensor(batch)))
    assert_close(array(reply.output), _reference(repository, meta, batch))


def test_predict_works_for_streaming_models_and_keeps_no_state(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(6), 20)
    expected = _reference(repository, meta, x)
    for _ in range(2):  # the second call starts from the initial state again
        reply = stubs.inference.Predict(pb.PredictRequest(model=meta.name, input=tensor(x)))
        assert_close(array(reply.output), expected)


def test_whole_sequence_model_predicts_and_refuses_streaming(
    fixture_stubs: Stubs, fixture_repository: Path
) -> None:
    """On the fixture repository, so it runs whatever the shipped repository holds."""
    root = fixture_repository
    x = np.random.default_rng(12).normal(size=(2, 9, 3)).astype(np.float32)
    reply = fixture_stubs.inference.Predict(pb.PredictRequest(model="whole", input=tensor(x)))
    expected = offline(root, "whole", 1, x)
    assert_close(array(reply.output), expected)
    assert np.abs(expected).max() > 0.1  # not trivially zero
    [refused] = run_stream(
        fixture_stubs.inference, [step_request("to-whole", "whole", x[0], start=True)]
    )
    assert refused.step.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "Predict" in refused.step.status.message


def test_unary_step_and_end(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(7), 9)
    outs = []
    for i, (a, b) in enumerate([(0, 4), (4, 5), (5, 9)]):
        reply = stubs.inference.Step(
            pb.StepRequest(
                session_id="unary-1", model=meta.name, input=tensor(x[a:b]),
                start=i == 0, end=b == 9, request_id=f"u{i}",
            )
        )  # fmt: skip
        assert (reply.session_id, reply.request_id, reply.step) == ("unary-1", f"u{i}", b)
        outs.append(array(reply.output))
    assert_close(np.concatenate(outs), _reference(repository, meta, x))
    with pytest.raises(grpc.RpcError) as info:  # `end` freed the session
        stubs.sessions.GetSession(pb.SessionRef(session_id="unary-1"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_empty_id_with_start_gets_a_server_assigned_id(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(8), 6)
    stream = PingPong(stubs.inference)
    try:
        first = stream.send(step_request("", meta.name, x[:2], start=True, request_id="a")).step
        assert first.status.code == 0
        assert first.session_id
        other = stream.send(step_request("", meta.name, x[:2], start=True)).step
        assert other.session_id != first.session_id
        second = stream.send(step_request(first.session_id, meta.name, x[2:])).step
        assert second.step == 6
    finally:
        stream.close()
    y = np.concatenate([array(first.output), array(second.output)])
    assert_close(y, _reference(repository, meta, x))


def test_frames_match_sessions_run_alone(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    rng = np.random.default_rng(9)
    n, t = 5, 3
    ids = [f"frame-{i}" for i in range(n)]
    x = np.stack([raw_input(meta, rng, 2 * t) for _ in range(n)])  # [N, 2T, F]
    first = pb.FrameRequest(
        model=meta.name, session_ids=ids, input=tensor(x[:, :t]), start=[True] * n,
        request_id="f1",
    )  # fmt: skip
    # Second frame: one extra session that does not exist (no start) fails alone.
    ids2 = [*ids, "frame-missing"]
    x2 = np.concatenate([x[:, t:], np.zeros((1, t, meta.input_features), np.float32)])
    second = pb.FrameRequest(
        model=meta.name, session_ids=ids2, input=tensor(x2), request_id="f2",
        end=[True] * n + [False],
    )  # fmt: skip
    replies = run_stream(
        stubs.inference, [pb.StreamRequest(frame=first), pb.StreamRequest(frame=second)]
    )
    frames = {r.frame.request_id: r.frame for r in replies}
    assert list(frames["f1"].code) == [0] * n
    assert list(frames["f1"].step) == [t] * n
    assert list(frames["f2"].code) == [0] * n + [grpc.StatusCode.NOT_FOUND.value[0]]
    assert list(frames["f2"].step) == [2 * t] * n + [-1]
    assert frames["f2"].message[n]
    y2 = array(frames["f2"].output)
    assert np.isnan(y2[n]).all()
    y = np.concatenate([array(frames["f1"].output), y2[:n]], axis=1)
    assert_close(y, _reference(repository, meta, x))


def test_64_interleaved_sessions_over_4_streams_equal_each_alone(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    rng = np.random.default_rng(10)
    sessions = {f"inter-{i}": raw_input(meta, rng, int(rng.integers(5, 25))) for i in range(64)}
    plans: dict[str, list[tuple[int, int]]] = {}
    for sid, x in sessions.items():
        bounds = np.cumsum([0, *random_chunks(rng, len(x), most=5)])
        plans[sid] = list(itertools.pairwise(bounds.tolist()))
    # Each stream carries 16 sessions; their chunks are shuffled together, keeping each
    # session's own order.
    streams: list[list[pb.StreamRequest]] = [[] for _ in range(4)]
    for k, stream in enumerate(streams):
        sids = list(sessions)[k::4]
        cursors = dict.fromkeys(sids, 0)
        while cursors:
            sid = sids[int(rng.integers(len(sids)))]
            if sid not in cursors:
                continue
            i = cursors[sid]
            a, b = plans[sid][i]
            stream.append(
                step_request(
                    sid, meta.name, sessions[sid][a:b], start=i == 0, request_id=f"{sid}/{i}"
                )
            )
            cursors[sid] = i + 1
            if cursors[sid] == len(plans[sid]):
                del cursors[sid]
    results: list[list[pb.StreamResponse]] = [[] for _ in range(4)]

    def drive(k: int) -> None:
        results[k] = run_stream(stubs.inference, streams[k])

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    replies = by_request_id(r for rs in results for r in rs)
    assert len(replies) == sum(len(p) for p in plans.values())
    for sid, x in sessions.items():
        chunks = [replies[f"{sid}/{i}"] for i in range(len(plans[sid]))]
        assert all(c.status.code == 0 for c in chunks), chunks[0].status
        assert_close(
            np.concatenate([array(c.output) for c in chunks]), _reference(repository, meta, x)
        )
    # Per-session reply order on each stream follows request order.
    for rs in results:
        seen: dict[str, int] = {}
        for r in rs:
            sid, i = r.step.request_id.split("/")
            assert int(i) == seen.get(sid, -1) + 1
            seen[sid] = int(i)


def test_forecast_rolls_out_and_leaves_the_session_unchanged(
    stubs: Stubs, repository: Path, catalog: dict[str, mr.ModelMetadata]
) -> None:
    auto = [m for m in catalog.values() if m.streaming and m.autoregressive]
    if not auto:
        pytest.skip("no autoregressive model in the repository")
    meta = auto[0]
    rng = np.random.default_rng(11)
    x = raw_input(meta, rng, 10)
    sid = "forecast-1"
    stubs.inference.Step(
        pb.StepRequest(session_id=sid, model=meta.name, input=tensor(x[:6]), start=True)
    )
    horizon = 4
    reply = stubs.inference.Forecast(
        pb.ForecastRequest(session_id=sid, horizon=horizon, request_id="fc")
    )
    assert (reply.session_id, reply.request_id, reply.step) == (sid, "fc", 6)
    forecast = array(reply.output)
    assert forecast.shape == (horizon, meta.output_features)
    # Reference: output t predicts input t+1, so each prediction is fed back as the next input.
    seq = x[:6]
    for h in range(horizon):
        predicted = _reference(repository, meta, seq)[-1]
        np.testing.assert_allclose(forecast[h], predicted, rtol=1e-4, atol=1e-4)
        seq = np.concatenate([seq, predicted[None]])
    info = stubs.sessions.GetSession(pb.SessionRef(session_id=sid))
    assert info.step == 6
    rest = stubs.inference.Step(
        pb.StepRequest(session_id=sid, model=meta.name, input=tensor(x[6:]))
    )
    assert_close(array(rest.output), _reference(repository, meta, x)[6:])


def test_forecast_waits_for_a_session_whose_start_is_queued(
    make_server: Callable[..., ServerProcess], catalog: dict[str, mr.ModelMetadata]
) -> None:
    """Forecast, like every admin operation, sees the work submitted before it: a session whose
    start is still queued (a long batch delay holds it) is forecast once created, not NOT_FOUND."""
    auto = [m for m in catalog.values() if m.streaming and m.autoregressive]
    if not auto:
        pytest.skip("no autoregressive model in the repository")
    meta = auto[0]
    server = make_server("--max-queue-delay-ms", "800")
    x = raw_input(meta, np.random.default_rng(12), 3)
    with server.channel() as channel:
        stubs = Stubs(channel)
        start = stubs.inference.Step.future(
            pb.StepRequest(session_id="fc-queued", model=meta.name, input=tensor(x), start=True)
        )
        time.sleep(0.3)  # the start is in the session's lane, its batch still waiting
        assert not start.done()
        reply = stubs.inference.Forecast(pb.ForecastRequest(session_id="fc-queued", horizon=2))
        assert start.result().step == 3
    assert reply.step == 3
    assert array(reply.output).shape == (2, meta.output_features)


def test_forecast_refused_for_non_autoregressive_model(fixture_stubs: Stubs) -> None:
    stubs = fixture_stubs  # its `counter` model is streaming but not autoregressive
    x = np.zeros((2, 3), np.float32)
    stubs.inference.Step(
        pb.StepRequest(session_id="fc-plain", model="counter", input=tensor(x), start=True)
    )
    with pytest.raises(grpc.RpcError) as info:
        stubs.inference.Forecast(pb.ForecastRequest(session_id="fc-plain", horizon=3))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "autoregressive" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stubs.inference.Forecast(pb.ForecastRequest(session_id="fc-nobody", horizon=3))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_int64_scalar_state_survives_export_and_import(fixture_stubs: Stubs) -> None:
    stubs = fixture_stubs  # `counter`: y = x + position, position kept as an int64 [] state
    x = np.zeros((4, 3), np.float32)
    stubs.inference.Step(
        pb.StepRequest(session_id="int-state", model="counter", input=tensor(x), start=True)
    )
    snapshot = stubs.sessions.ExportSession(pb.SessionRef(session_id="int-state"))
    [count] = [s for s in snapshot.states if s.name == "count"]
    assert (list(count.shape), count.dtype) == ([], mr.INT64)
    assert np.frombuffer(count.data, "<i8").tolist() == [4]
    snapshot.session.session_id = "int-state-copy"
    stubs.sessions.ImportSession(pb.ImportSessionRequest(snapshot=snapshot))
    reply = stubs.inference.Step(
        pb.StepRequest(session_id="int-state-copy", model="counter", input=tensor(x[:2]))
    )
    assert array(reply.output)[:, 0].tolist() == [4.0, 5.0]
