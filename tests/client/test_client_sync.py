"""Every public method of Client and Session against a real server on loopback."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from client_support import Model

from rnnserve_client import Client, FailedPrecondition, NotFound, Session, SessionInfo
from rnnserve_client._local import LocalServer

RTOL, ATOL = 1e-4, 1e-3


def test_health_and_wait_until_ready(client: Client) -> None:
    client.wait_until_ready(timeout=5)
    assert client.health() == "SERVING"


def test_list_models_and_metadata(client: Client, model: Model) -> None:
    infos = {m.name: m for m in client.list_models()}
    assert model.name in infos
    info = infos[model.name]
    assert info.ready
    assert info.streaming
    assert info.latest_version in info.versions
    meta = client.model_metadata(model.name)
    assert meta.name == model.name
    assert meta.input_features == model.input_features
    assert client.model_metadata(model.name, version=info.latest_version).version == (
        info.latest_version
    )


def test_session_step_in_chunks_equals_one_chunk_and_predict(client: Client, model: Model) -> None:
    x = model.series(12)
    with client.session(model.name) as a, client.session(model.name) as b:
        assert not a.started
        assert a.step_index == 0
        ya = np.concatenate([a.step(x[:5]), a.step(x[5:6]), a.step(x[6:])])
        assert a.started
        assert a.step_index == 12
        yb = b.step(x)
        assert ya.shape == (12, model.output_features)
        np.testing.assert_allclose(ya, yb, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(client.predict(model.name, x), ya, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(a.predict(x), ya, rtol=RTOL, atol=ATOL)
        assert a.step_index == 12  # predict does not touch the session


def test_one_dimensional_input_is_a_univariate_series(client: Client, model: Model) -> None:
    if model.input_features != 1:
        pytest.skip("univariate shorthand needs a one-feature model")
    x = model.series(6)
    with client.session(model.name) as a:
        np.testing.assert_allclose(
            a.step(x[:, 0]), client.predict(model.name, x), rtol=RTOL, atol=ATOL
        )


def test_stream_yields_per_chunk(client: Client, model: Model) -> None:
    x = model.series(10)
    chunks = [x[:3], x[3:4], x[4:10]]
    with client.session(model.name) as s:
        outs = list(s.stream(chunks))
        assert [o.shape[0] for o in outs] == [3, 1, 6]
        assert s.step_index == 10
    np.testing.assert_allclose(
        np.concatenate(outs), client.predict(model.name, x), rtol=RTOL, atol=ATOL
    )


def test_info_get_list_attach(client: Client, model: Model) -> None:
    x = model.series(4)
    s = client.session(model.name, session_id="client-test-info")
    assert s.id == "client-test-info"
    assert s.model == model.name
    s.step(x)
    info = s.info()
    assert isinstance(info, SessionInfo)
    assert (info.session_id, info.model, info.step) == (s.id, model.name, 4)
    assert client.get_session(s.id).step == 4
    listed = {i.session_id: i for i in client.list_sessions(model.name)}
    assert listed[s.id].step == 4
    assert len(client.list_sessions(limit=1)) == 1
    attached = client.attach(s.id)
    assert isinstance(attached, Session)
    assert attached.started
    assert attached.step_index == 4
    y_attached = attached.step(x[:1])
    s2 = client.session(model.name)
    ref = s2.step(np.concatenate([x, x[:1]]))[-1:]
    np.testing.assert_allclose(y_attached, ref, rtol=RTOL, atol=ATOL)
    s2.close()
    attached.close()
    with pytest.raises(NotFound):
        client.get_session(s.id)


def test_reset_and_close(client: Client, model: Model) -> None:
    x = model.series(5)
    s = client.session(model.name)
    first = s.step(x)
    s.reset()
    assert s.step_index == 0
    assert s.info().step == 0
    np.testing.assert_allclose(s.step(x), first, rtol=RTOL, atol=ATOL)
    info = client.reset_session(s.id)
    assert info.step == 0
    s.close()
    assert not s.started
    s.close()  # idempotent
    with pytest.raises(NotFound):
        client.get_session(s.id)
    # Stepping a closed session starts it afresh.
    np.testing.assert_allclose(s.step(x), first, rtol=RTOL, atol=ATOL)
    closed = client.close_session(s.id)
    assert closed.step == 5


def test_end_flag_frees_the_session(client: Client, model: Model) -> None:
    s = client.session(model.name)
    s.step(model.series(2))
    s.step(model.series(2), end=True)
    assert not s.started
    with pytest.raises(NotFound):
        client.get_session(s.id)


def test_forecast(client: Client, model: Model) -> None:
    x = model.series(8)
    with client.session(model.name) as s:
        s.step(x)
        f1 = s.forecast(5)
        assert f1.shape == (5, model.output_features)
        assert s.info().step == 8  # forecast leaves the session alone
        np.testing.assert_allclose(client.forecast(s.id, 5), f1, rtol=RTOL, atol=ATOL)
        # The first forecast step is the prediction the last chunk made for the next step.
        with client.session(model.name) as r:
            np.testing.assert_allclose(f1[0], r.step(x)[-1], rtol=RTOL, atol=ATOL)


def test_export_import(client: Client, model: Model) -> None:
    x = model.series(9)
    with client.session(model.name) as s:
        s.step(x[:6])
        snap = client.export_session(s.id)
        assert snap.info.step == 6
        assert snap.states
        moved = SessionInfo(
            session_id=s.id + "-copy",
            model=snap.info.model,
            version=snap.info.version,
            step=snap.info.step,
            created_unix=snap.info.created_unix,
            last_active_unix=snap.info.last_active_unix,
        )
        info = client.import_session(type(snap)(info=moved, states=snap.states))
        assert info.step == 6
        copy = client.attach(moved.session_id)
        np.testing.assert_allclose(copy.step(x[6:]), s.step(x[6:]), rtol=RTOL, atol=ATOL)
        again = client.import_session(client.export_session(s.id), overwrite=True)
        assert again.step == 9
        copy.close()


def test_many_sessions_in_threads_share_one_client(client: Client, model: Model) -> None:
    x = model.series(6)
    ref = client.predict(model.name, x)
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        with client.session(model.name) as s:
            results[i] = np.concatenate([s.step(x[:2]), s.step(x[2:])])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(8))
    for y in results.values():
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_unary_transport(server: LocalServer, model: Model) -> None:
    x = model.series(7)
    with Client(server.target, use_stream=False) as c:
        with c.session(model.name) as s:
            y = np.concatenate([s.step(x[:3]), s.step(x[3:])])
            assert s.step_index == 7
        np.testing.assert_allclose(y, c.predict(model.name, x), rtol=RTOL, atol=ATOL)


def test_close_is_idempotent_and_context_manager_closes(server: LocalServer) -> None:
    c = Client(server.target)
    with c as same:
        assert same is c
        assert c.health() == "SERVING"
    c.close()
    with pytest.raises(RuntimeError, match="client is closed"):
        c.list_models()


def test_frame_many_sessions_in_one_message(client: Client, model: Model) -> None:
    xs = np.stack([model.series(5, seed=i) for i in range(3)])  # [N, T, F]
    ids = [f"frame-{i}" for i in range(3)]
    first = client.frame(model.name, ids, xs[:, :2], start=True)
    assert first.ok
    assert first.session_ids == ids
    assert first.steps == [2, 2, 2]
    second = client.frame(model.name, ids, xs[:, 2:], expected_step=[2, 2, -1])
    assert second.ok
    y = np.concatenate([first.y, second.y], axis=1)
    for i in range(3):
        np.testing.assert_allclose(y[i], client.predict(model.name, xs[i]), rtol=RTOL, atol=ATOL)
    # A per-session failure is reported in its row; the others are applied.
    third = client.frame(model.name, ids, xs[:, :1], expected_step=[5, 0, 5], end=True)
    assert third.errors[0] is None
    assert third.errors[2] is None
    assert isinstance(third.errors[1], FailedPrecondition)
    assert third.errors[1].step == 5
    assert np.isnan(third.y[1]).all()
    assert third.steps[1] == 5
    assert not third.ok
    assert {s.session_id for s in client.list_sessions(model.name)} & set(ids) == {"frame-1"}
    client.close_session("frame-1")
    with pytest.raises(NotFound):  # frame-wide error: raised
        client.frame("no_such_model", ids, xs[:, :1], start=True)
