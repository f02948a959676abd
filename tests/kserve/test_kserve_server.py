"""The stock tritonclient against a real rnnserve server: health, metadata, sequences over
infer() and over a stream, equality with the native API and with an offline ONNX Runtime run,
and errors that leave every sequence's state untouched."""

from __future__ import annotations

import itertools
import queue
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from fixtures import offline
from kserve_harness import MAX_BATCH, Server, ServerThread, models_in, server_settings
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb

TOL = {"rtol": 1e-5, "atol": 1e-5}
CHUNKS = (3, 1, 4)  # steps per request of one sequence
_ids = itertools.count(1000)

Array = npt.NDArray[np.float32]


def _raw(meta: mr.ModelMetadata, steps: int, seed: int) -> Array:
    """Raw (un-normalised) inputs around the model's training distribution."""
    z = np.random.default_rng(seed).normal(size=(steps, meta.input_features))
    norm = meta.normalization
    if norm.input_mean:
        z = z * np.array(norm.input_std) + np.array(norm.input_mean)
    return z.astype(np.float32)


def _split(x: Array, sizes: Sequence[int] = CHUNKS) -> list[Array]:
    return np.split(x, np.cumsum(sizes)[:-1])


def _inputs(chunk: npt.NDArray[Any], datatype: str = "FP32") -> list[triton.InferInput]:
    batch = chunk[None] if chunk.ndim == 2 else chunk
    tensor = triton.InferInput("x", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    return [tensor]


def _reference(server: Server, name: str, x: Array) -> Array:
    meta = server.models[name]
    return offline(server.repository, name, int(meta.version), x)


def _native(server: Server, name: str, chunks: list[Array]) -> Array:
    """The same chunks through the native Step API, as a fresh session."""
    stub = server.native_inference()
    sid = f"native-{uuid.uuid4().hex[:12]}"
    ys = []
    for i, chunk in enumerate(chunks):
        reply = stub.Step(
            pb.StepRequest(
                session_id=sid,
                model=name,
                input=pb.Tensor(shape=list(chunk.shape), data=chunk.astype("<f4").tobytes()),
                start=i == 0,
                end=i == len(chunks) - 1,
            )
        )
        ys.append(np.frombuffer(reply.output.data, "<f4").reshape(tuple(reply.output.shape)))
    return np.concatenate(ys)


def _infer_sequence(
    client: triton.InferenceServerClient, name: str, chunks: list[Array], sequence_id: int | str
) -> Array:
    ys = []
    for i, chunk in enumerate(chunks):
        result = client.infer(
            name,
            _inputs(chunk),
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(chunks) - 1,
        )
        y = result.as_numpy("y")
        assert y.shape == (1, len(chunk), y.shape[2])
        ys.append(y[0])
    return np.concatenate(ys)


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# -- health and metadata -------------------------------------------------------------------------
def test_liveness_readiness_and_server_metadata(
    server: Server, client: triton.InferenceServerClient
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for name in server.models:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, str(server.models[name].version))
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(server.streaming[0], "999")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "rnnserve"
    assert "sequence" in metadata["extensions"]


def test_model_metadata_and_config(server: Server, client: triton.InferenceServerClient) -> None:
    for name, meta in server.models.items():
        got = client.get_model_metadata(name, as_json=True)
        assert got["name"] == name
        assert str(meta.version) in got["versions"]
        assert got["inputs"] == [
            {"name": "x", "datatype": "FP32", "shape": ["-1", "-1", str(meta.input_features)]}
        ]
        assert got["outputs"] == [
            {"name": "y", "datatype": "FP32", "shape": ["-1", "-1", str(meta.output_features)]}
        ]
        config = client.get_model_config(name).config
        if meta.streaming:
            assert [s.output_name for s in config.sequence_batching.state] == [
                s.output_name for s in meta.states
            ]
        else:
            assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("no-such-model")
    assert _status(exc) == "StatusCode.NOT_FOUND"


def test_repository_index_lists_every_model(
    server: Server, client: triton.InferenceServerClient
) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == set(server.models)
    assert all(m["state"] == "READY" for m in index)


def test_unimplemented_rpcs_say_so(client: triton.InferenceServerClient) -> None:
    for call in (partial(client.load_model, "x"), client.get_system_shared_memory_status):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert _status(exc) == "StatusCode.UNIMPLEMENTED"


# -- sequences over infer() ----------------------------------------------------------------------
@pytest.mark.parametrize("id_kind", ["int", "string"])
def test_sequence_over_infer_matches_native_and_offline(
    server: Server, client: triton.InferenceServerClient, id_kind: str
) -> None:
    for n, name in enumerate(server.streaming):
        x = _raw(server.models[name], sum(CHUNKS), seed=n)
        chunks = _split(x)
        sid: int | str = next(_ids) if id_kind == "int" else f"seq-{uuid.uuid4().hex[:8]}"
        got = _infer_sequence(client, name, chunks, sid)
        np.testing.assert_allclose(got, _reference(server, name, x), **TOL)
        np.testing.assert_allclose(got, _native(server, name, chunks), **TOL)
        # The end flag freed the session, which is a native session like any other.
        with pytest.raises(grpc.RpcError) as gone:
            server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_response_echoes_request_and_sequence_ids(
    server: Server, client: triton.InferenceServerClient
) -> None:
    name = server.streaming[0]
    x = _raw(server.models[name], 2, seed=5)
    sid = next(_ids)
    result = client.infer(name, _inputs(x), request_id="r-1", sequence_id=sid, sequence_start=True)
    response = result.get_response()
    assert response.id == "r-1"
    assert response.parameters["sequence_id"].int64_param == sid
    assert response.model_version == str(server.models[name].version)
    result = client.infer(
        name, _inputs(x), sequence_id=f"s{sid}", sequence_start=True, sequence_end=True
    )
    assert result.get_response().parameters["sequence_id"].string_param == f"s{sid}"
    client.infer(name, _inputs(x), sequence_id=sid, sequence_end=True)


def test_v2_sequence_is_a_native_session(
    server: Server, client: triton.InferenceServerClient
) -> None:
    """Started over v2, continued natively, finished over v2: one session throughout."""
    name = server.streaming[0]
    x = _raw(server.models[name], sum(CHUNKS), seed=11)
    first, middle, last = _split(x)
    sid = next(_ids)
    ys = [client.infer(name, _inputs(first), sequence_id=sid, sequence_start=True).as_numpy("y")[0]]
    info = server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))
    assert (info.model, info.step) == (name, len(first))
    reply = server.native_inference().Step(
        pb.StepRequest(
            session_id=str(sid),
            model=name,
            input=pb.Tensor(shape=list(middle.shape), data=middle.tobytes()),
        )
    )
    ys.append(np.frombuffer(reply.output.data, "<f4").reshape(tuple(reply.output.shape)))
    assert reply.step == len(first) + len(middle)
    ys.append(
        client.infer(name, _inputs(last), sequence_id=sid, sequence_end=True).as_numpy("y")[0]
    )
    np.testing.assert_allclose(np.concatenate(ys), _reference(server, name, x), **TOL)


def test_state_output_on_request(server: Server, client: triton.InferenceServerClient) -> None:
    name = server.streaming[0]
    meta = server.models[name]
    state = meta.states[0]
    x = _raw(meta, 3, seed=2)
    sid = next(_ids)
    outputs = [triton.InferRequestedOutput("y"), triton.InferRequestedOutput(state.output_name)]
    result = client.infer(name, _inputs(x), outputs=outputs, sequence_id=sid, sequence_start=True)
    snapshot = server.native_sessions().ExportSession(pb.SessionRef(session_id=str(sid)))
    value = next(s for s in snapshot.states if s.name == state.name)
    dtype = "<f4" if state.dtype == mr.FLOAT32 else "<i8"
    native = np.frombuffer(value.data, dtype).reshape(tuple(value.shape))
    got = result.as_numpy(state.output_name)
    assert got.shape == (1, *native.shape)
    np.testing.assert_array_equal(got[0], native)
    np.testing.assert_allclose(result.as_numpy("y")[0], _reference(server, name, x), **TOL)
    # Without asking, only the prediction comes back.
    result = client.infer(name, _inputs(x), sequence_id=sid)
    assert result.as_numpy(state.output_name) is None
    # With the end flag, the state is read before the session goes away.
    result = client.infer(name, _inputs(x), outputs=outputs[1:], sequence_id=sid, sequence_end=True)
    assert result.as_numpy("y") is None
    assert result.as_numpy(state.output_name).shape == got.shape
    with pytest.raises(grpc.RpcError) as gone:
        server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ended by its client (end flag)" in str(gone.value.details())  # not CloseSession


def test_no_sequence_id_runs_statelessly(
    server: Server, client: triton.InferenceServerClient
) -> None:
    for n, name in enumerate([*server.streaming, *server.whole]):
        meta = server.models[name]
        x = np.stack([_raw(meta, 5, seed=20 + n), _raw(meta, 5, seed=40 + n)])
        y = client.infer(name, _inputs(x)).as_numpy("y")
        np.testing.assert_allclose(y, _reference(server, name, x), **TOL)


def test_explicit_versions(server: Server, client: triton.InferenceServerClient) -> None:
    """Every version of every model is reachable by its number; "" is the latest."""
    for path in sorted(server.repository.glob("*/*/metadata.json")):
        name, version = path.parent.parent.name, int(path.parent.name)
        x = _raw(server.models[name], 3, seed=version)
        result = client.infer(name, _inputs(x), model_version=str(version))
        assert result.get_response().model_version == str(version)
        expected = offline(server.repository, name, version, x)
        np.testing.assert_allclose(result.as_numpy("y")[0], expected, **TOL)
    with pytest.raises(InferenceServerException) as exc:
        client.infer(server.streaming[0], _inputs(x), model_version="999")
    assert _status(exc) == "StatusCode.NOT_FOUND"


def test_latest_version_follows_a_sequence_to_its_version(tmp_path: Path) -> None:
    """A sequence started on version 1 of a two-version model continues there when later
    requests name no version (""), over infer() and over the stream, as native sessions do."""
    from fixtures import build_repository

    repository = build_repository(tmp_path)
    runner = ServerThread(server_settings(repository))
    port = runner.start()
    meta = models_in(repository)["gru"]
    x = _raw(meta, 6, seed=41)
    chunks = _split(x, (2, 2, 2))
    sid = next(_ids)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            first = client.infer(
                "gru", _inputs(chunks[0]), model_version="1", sequence_id=sid, sequence_start=True
            )
            second = client.infer("gru", _inputs(chunks[1]), sequence_id=sid)
            replies = _open_stream(client)
            try:
                client.async_stream_infer("gru", _inputs(chunks[2]), sequence_id=sid)
                ((third, error),) = _collect(replies, 1)
            finally:
                client.stop_stream()
    finally:
        runner.stop()
    assert error is None
    results = (first, second, third)
    assert [r.get_response().model_version for r in results] == ["1"] * 3
    ys = np.concatenate([r.as_numpy("y")[0] for r in results])
    np.testing.assert_allclose(ys, offline(repository, "gru", 1, x), **TOL)


def test_batch_is_limited_to_max_batch_size(
    server: Server, client: triton.InferenceServerClient
) -> None:
    name = server.streaming[0]
    assert client.get_model_config(name).config.max_batch_size == MAX_BATCH
    x = np.stack([_raw(server.models[name], 2, seed=i) for i in range(MAX_BATCH + 1)])
    with pytest.raises(InferenceServerException) as exc:
        client.infer(name, _inputs(x))
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "max_batch_size" in exc.value.message()
    y = client.infer(name, _inputs(x[:MAX_BATCH])).as_numpy("y")
    np.testing.assert_allclose(y, _reference(server, name, x[:MAX_BATCH]), **TOL)


def test_fp64_input_is_accepted(server: Server, client: triton.InferenceServerClient) -> None:
    name = server.streaming[0]
    x = _raw(server.models[name], 4, seed=3)
    y = client.infer(name, _inputs(x.astype(np.float64), "FP64")).as_numpy("y")[0]
    np.testing.assert_allclose(y, _reference(server, name, x), **TOL)


def test_server_assigns_an_id_to_an_empty_string_start(server: Server) -> None:
    """Only a hand-built request can send sequence_id="" (tritonclient omits it)."""
    name = server.streaming[0]
    x = _raw(server.models[name], 2, seed=4)
    request = service_pb2.ModelInferRequest(model_name=name)
    request.parameters["sequence_id"].string_param = ""
    request.parameters["sequence_start"].bool_param = True
    request.inputs.add(name="x", datatype="FP32", shape=[1, *x.shape])
    request.raw_input_contents.append(x.tobytes())
    stub = service_pb2_grpc.GRPCInferenceServiceStub(server.channel)
    response = stub.ModelInfer(request)
    assigned = response.parameters["sequence_id"].string_param
    assert assigned
    info = server.native_sessions().GetSession(pb.SessionRef(session_id=assigned))
    assert info.step == len(x)
    server.native_sessions().CloseSession(pb.SessionRef(session_id=assigned))


# -- errors: clear, and state unchanged ----------------------------------------------------------
def _bad_requests(name: str, meta: mr.ModelMetadata) -> list[tuple[str, dict[str, Any], str, str]]:
    """(what, infer kwargs, expected status, text expected in the message)."""
    f = meta.input_features
    good = np.zeros((1, 2, f), np.float32)
    wrong_features = triton.InferInput("x", [1, 2, f + 1], "FP32")
    wrong_features.set_data_from_numpy(np.zeros((1, 2, f + 1), np.float32))
    batch_two = triton.InferInput("x", [2, 2, f], "FP32")
    batch_two.set_data_from_numpy(np.zeros((2, 2, f), np.float32))
    wrong_name = triton.InferInput("input", [1, 2, f], "FP32")
    wrong_name.set_data_from_numpy(good)
    return [
        (
            "datatype",
            {"inputs": _inputs(good.astype(np.int32), "INT32")},
            "INVALID_ARGUMENT",
            "FP32",
        ),
        ("features", {"inputs": [wrong_features]}, "INVALID_ARGUMENT", f"[batch, time, {f}]"),
        ("batch", {"inputs": [batch_two]}, "INVALID_ARGUMENT", "batch size 1"),
        ("name", {"inputs": [wrong_name]}, "INVALID_ARGUMENT", "'x'"),
        (
            "output",
            {"inputs": _inputs(good), "outputs": [triton.InferRequestedOutput("zz")]},
            "INVALID_ARGUMENT",
            "'zz'",
        ),
        (
            "model",
            {"inputs": _inputs(good), "model_name": "no-such-model"},
            "NOT_FOUND",
            "no-such-model",
        ),
    ]


def test_errors_over_infer_are_clear_and_leave_state_unchanged(
    server: Server, client: triton.InferenceServerClient
) -> None:
    name = server.streaming[0]
    meta = server.models[name]
    x = _raw(meta, sum(CHUNKS), seed=7)
    first, middle, last = _split(x)
    sid = next(_ids)
    ys = [client.infer(name, _inputs(first), sequence_id=sid, sequence_start=True).as_numpy("y")[0]]
    for what, kwargs, status, text in _bad_requests(name, meta):
        kwargs.setdefault("model_name", name)
        with pytest.raises(InferenceServerException) as exc:
            client.infer(sequence_id=sid, **kwargs)
        assert _status(exc) == f"StatusCode.{status}", what
        assert text in exc.value.message(), (what, exc.value.message())
        assert "sequence_start" not in exc.value.message(), what
    info = server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))
    assert info.step == len(first)
    ys.append(client.infer(name, _inputs(middle), sequence_id=sid).as_numpy("y")[0])
    ys.append(
        client.infer(name, _inputs(last), sequence_id=sid, sequence_end=True).as_numpy("y")[0]
    )
    np.testing.assert_allclose(np.concatenate(ys), _reference(server, name, x), **TOL)


def test_missing_start_is_rejected(server: Server, client: triton.InferenceServerClient) -> None:
    name = server.streaming[0]
    x = _raw(server.models[name], 2, seed=8)
    sid = next(_ids)
    with pytest.raises(InferenceServerException) as exc:
        client.infer(name, _inputs(x), sequence_id=sid)
    assert _status(exc) == "StatusCode.NOT_FOUND"
    assert "sequence_start" in exc.value.message()
    with pytest.raises(grpc.RpcError):  # nothing was created by the rejected request
        server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))


def test_whole_sequence_model_refuses_sequence_ids(
    server: Server, client: triton.InferenceServerClient
) -> None:
    if not server.whole:
        pytest.skip("the repository has no whole-sequence model")
    name = server.whole[0]
    x = _raw(server.models[name], 2, seed=9)
    with pytest.raises(InferenceServerException) as exc:
        client.infer(name, _inputs(x), sequence_id=1, sequence_start=True)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"


# -- streams -------------------------------------------------------------------------------------
def _open_stream(client: triton.InferenceServerClient) -> queue.Queue[tuple[Any, Any]]:
    """Start the client's stream; every (result, error) it calls back with lands in the queue
    (stop it with client.stop_stream())."""
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    return replies


def _collect(replies: queue.Queue[tuple[Any, Any]], count: int) -> list[tuple[Any, Any]]:
    return [replies.get(timeout=30) for _ in range(count)]


def test_many_sequences_interleaved_on_one_stream(
    server: Server, client: triton.InferenceServerClient
) -> None:
    """Every streaming model, int and string ids, chunks of all sequences interleaved, plus bad
    requests in between: the bad ones get error messages, the others are exact."""
    replies = _open_stream(client)
    sequences: dict[str, tuple[str, int | str, Array]] = {}
    for n, (name, kind) in enumerate(itertools.product(server.streaming, ("int", "string", "int"))):
        sid: int | str = next(_ids) if kind == "int" else f"stream-{uuid.uuid4().hex[:8]}"
        sequences[str(sid)] = (name, sid, _raw(server.models[name], sum(CHUNKS), seed=100 + n))
    sent = errors_expected = 0
    try:
        for i in range(len(CHUNKS)):
            for key, (name, sid, x) in sequences.items():
                chunk = _split(x)[i]
                client.async_stream_infer(
                    name,
                    _inputs(chunk),
                    request_id=f"{key}/{i}",
                    sequence_id=sid,
                    sequence_start=i == 0,
                    sequence_end=i == len(CHUNKS) - 1,
                )
                sent += 1
                if i == 1:  # a bad chunk for this sequence between its good ones
                    client.async_stream_infer(
                        name,
                        _inputs(chunk.astype(np.int32), "INT32"),
                        request_id=f"{key}/bad",
                        sequence_id=sid,
                    )
                    sent += 1
                    errors_expected += 1
        client.async_stream_infer(  # a never-started sequence
            server.streaming[0], _inputs(_split(x)[0]), request_id="orphan", sequence_id=next(_ids)
        )
        sent += 1
        errors_expected += 1
        got = _collect(replies, sent)
        # The stream is still open and usable after the errors.
        name = server.streaming[0]
        probe = _raw(server.models[name], 2, seed=999)
        client.async_stream_infer(name, _inputs(probe), request_id="probe")
        ((probe_result, probe_error),) = _collect(replies, 1)
    finally:
        client.stop_stream()
    assert probe_error is None
    np.testing.assert_allclose(
        probe_result.as_numpy("y")[0], _reference(server, name, probe), **TOL
    )

    errors = [error for _, error in got if error is not None]
    assert len(errors) == errors_expected
    assert all("INVALID_ARGUMENT" in e.message() or "NOT_FOUND" in e.message() for e in errors)
    assert any("'orphan'" in e.message() and "sequence_start" in e.message() for e in errors)
    outputs: dict[str, dict[int, Array]] = {key: {} for key in sequences}
    for result, error in got:
        if error is not None:
            continue
        response = result.get_response()
        key, index = response.id.split("/")
        param = response.parameters["sequence_id"]
        assert str(param.int64_param or param.string_param) == key
        outputs[key][int(index)] = result.as_numpy("y")[0]
    for key, (name, _, x) in sequences.items():
        y = np.concatenate([outputs[key][i] for i in range(len(CHUNKS))])
        np.testing.assert_allclose(y, _reference(server, name, x), **TOL)


def _native_states(server: Server, name: str, chunks: list[Array], state_name: str) -> list[Array]:
    """The state after each chunk, through a native session stepped one request at a time."""
    stub, sessions = server.native_inference(), server.native_sessions()
    sid = f"native-{uuid.uuid4().hex[:12]}"
    states = []
    for i, chunk in enumerate(chunks):
        stub.Step(
            pb.StepRequest(
                session_id=sid,
                model=name,
                input=pb.Tensor(shape=list(chunk.shape), data=chunk.astype("<f4").tobytes()),
                start=i == 0,
            )
        )
        snapshot = sessions.ExportSession(pb.SessionRef(session_id=sid))
        value = next(s for s in snapshot.states if s.name == state_name)
        states.append(np.frombuffer(value.data, "<f4").reshape(tuple(value.shape)))
    sessions.CloseSession(pb.SessionRef(session_id=sid))
    return states


def test_pipelined_state_outputs_are_each_requests_own(
    server: Server, client: triton.InferenceServerClient
) -> None:
    """Requests of one sequence sent back to back on a stream, every other one asking for the
    state (the others take the stream's plain-step path): each state is the one right after its
    own chunk, not after a later one; outputs equal the offline run; and a sequence that ends
    with a state output and starts again at once under the same id is not closed by the earlier
    end."""
    name = server.streaming[0]
    meta = server.models[name]
    state = next(s for s in meta.states if s.dtype == mr.FLOAT32)
    sizes = (2, 1, 3, 1, 1, 2)
    x = _raw(meta, sum(sizes), seed=21)
    chunks = _split(x, sizes)
    expected = _native_states(server, name, chunks, state.name)
    with_state = [triton.InferRequestedOutput("y"), triton.InferRequestedOutput(state.output_name)]
    replies = _open_stream(client)
    sid = next(_ids)
    try:
        for i, chunk in enumerate(chunks):
            client.async_stream_infer(
                name,
                _inputs(chunk),
                outputs=with_state if i % 2 or i == len(chunks) - 1 else None,
                request_id=str(i),
                sequence_id=sid,
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
        # The same id again, right behind the end.
        client.async_stream_infer(
            name, _inputs(chunks[0]), request_id="again", sequence_id=sid, sequence_start=True
        )
        got = _collect(replies, len(chunks) + 1)
    finally:
        client.stop_stream()
    assert [error for _, error in got] == [None] * len(got)
    by_id = {result.get_response().id: result for result, _ in got}
    for i, want in enumerate(expected):
        got_state = by_id[str(i)].as_numpy(state.output_name)
        if i % 2 or i == len(chunks) - 1:
            np.testing.assert_allclose(got_state[0], want, **TOL, err_msg=f"request {i}")
        else:
            assert got_state is None
    ys = np.concatenate([by_id[str(i)].as_numpy("y")[0] for i in range(len(chunks))])
    np.testing.assert_allclose(ys, _reference(server, name, x), **TOL)
    # The restarted sequence is alive with one chunk applied.
    info = server.native_sessions().GetSession(pb.SessionRef(session_id=str(sid)))
    assert info.step == len(chunks[0])
    server.native_sessions().CloseSession(pb.SessionRef(session_id=str(sid)))


def test_statistics_count_served_requests(
    server: Server, client: triton.InferenceServerClient
) -> None:
    name = server.streaming[0]
    before = client.get_inference_statistics(name, as_json=True)["model_stats"]
    x = _raw(server.models[name], 2, seed=12)
    client.infer(name, _inputs(np.stack([x, x, x])))
    after = client.get_inference_statistics(name, as_json=True)["model_stats"]
    version = str(server.models[name].version)

    def count(stats: list[dict[str, Any]], field: str) -> int:
        entry = next(s for s in stats if s["version"] == version)
        return int(entry.get(field, 0))

    assert count(after, "inference_count") - count(before, "inference_count") == 3
    assert count(after, "execution_count") - count(before, "execution_count") == 1


def test_stream_requests_are_counted_in_statistics(
    server: Server, client: triton.InferenceServerClient
) -> None:
    """Plain sequence steps on a stream (answered from their batch) count like any request:
    successes with their batch size, and failures."""
    name = server.streaming[0]
    meta = server.models[name]
    version = str(meta.version)

    def stats() -> dict[str, int]:
        entry = next(
            s
            for s in client.get_inference_statistics(name, as_json=True)["model_stats"]
            if s["version"] == version
        )
        infer = entry.get("inference_stats", {})
        return {
            "inference": int(entry.get("inference_count", 0)),
            "execution": int(entry.get("execution_count", 0)),
            "success": int(infer.get("success", {}).get("count", 0)),
            "fail": int(infer.get("fail", {}).get("count", 0)),
        }

    before = stats()
    chunks = _split(_raw(meta, sum(CHUNKS), seed=31))
    replies = _open_stream(client)
    sid = next(_ids)
    try:
        for i, chunk in enumerate(chunks):
            client.async_stream_infer(
                name, _inputs(chunk), sequence_id=sid, sequence_start=i == 0, sequence_end=False
            )
        client.async_stream_infer(name, _inputs(chunks[0]), sequence_id=next(_ids))  # not started
        got = _collect(replies, len(chunks) + 1)
    finally:
        client.stop_stream()
    assert sum(error is not None for _, error in got) == 1
    after = stats()
    n = len(chunks)
    assert {k: after[k] - before[k] for k in after} == {
        "inference": n,
        "execution": n,
        "success": n,
        "fail": 1,
    }
    server.native_sessions().CloseSession(pb.SessionRef(session_id=str(sid)))


def test_drain_ends_streams_and_readiness(repository: Path) -> None:
    """Shutdown's first stage: not ready any more, open streams end with UNAVAILABLE."""
    runner = ServerThread(server_settings(repository))
    port = runner.start()
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            replies = _open_stream(client)
            meta = next(m for m in models_in(repository).values() if m.streaming)
            client.async_stream_infer(meta.name, _inputs(_raw(meta, 2, seed=1)))
            ((result, error),) = _collect(replies, 1)
            assert error is None
            assert client.is_server_ready()
            assert runner.kserve is not None
            runner.call(runner.kserve.begin_drain)
            ((result, error),) = _collect(replies, 1)
            assert result is None
            assert "UNAVAILABLE" in str(error.status())
            assert not client.is_server_ready()
            assert not client.is_model_ready(meta.name)
            assert client.is_server_live()
            client.stop_stream()
    finally:
        runner.stop()
