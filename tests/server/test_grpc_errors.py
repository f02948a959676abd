"""Every bad input gets its status code and a readable message, and leaves the session exactly as
it was: the session continues as if the bad request had never been sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures import offline
from grpc_helpers import (
    ServerProcess,
    Stubs,
    array,
    assert_close,
    raw_input,
    run_stream,
    step_request,
    tensor,
)

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb

C = grpc.StatusCode
BadRequest = Callable[[str, mr.ModelMetadata], pb.StepRequest]


def _step(sid: str, meta: mr.ModelMetadata, **kw: object) -> pb.StepRequest:
    x = kw.pop("x", np.zeros((2, meta.input_features), np.float32))
    req = step_request(sid, meta.name, x, request_id="bad", **kw).step  # type: ignore[arg-type]
    return req


def _raw(sid: str, meta: mr.ModelMetadata, shape: list[int], data: bytes) -> pb.StepRequest:
    return pb.StepRequest(
        session_id=sid, model=meta.name, input=pb.Tensor(shape=shape, data=data), request_id="bad"
    )


def _with_value(value: float) -> BadRequest:
    def make(sid: str, meta: mr.ModelMetadata) -> pb.StepRequest:
        x = np.ones((3, meta.input_features), np.float32)
        x[1, 0] = value
        return _step(sid, meta, x=x)

    return make


def _with_values(first: float, second: float) -> BadRequest:
    def make(sid: str, meta: mr.ModelMetadata) -> pb.StepRequest:
        x = np.ones((3, meta.input_features), np.float32)
        x[0, 0], x[2, -1] = first, second
        return _step(sid, meta, x=x)

    return make


BAD_INPUTS: dict[str, tuple[BadRequest, grpc.StatusCode, str]] = {
    "wrong feature count": (
        lambda sid, m: _step(sid, m, x=np.zeros((2, m.input_features + 1), np.float32)),
        C.INVALID_ARGUMENT,
        "features",
    ),
    "rank 3 chunk": (
        lambda sid, m: _step(sid, m, x=np.zeros((1, 2, m.input_features), np.float32)),
        C.INVALID_ARGUMENT,
        "shape",
    ),
    "bytes not float32 of the shape": (
        lambda sid, m: _raw(sid, m, [2, m.input_features], b"\0" * (16 * m.input_features)),
        C.INVALID_ARGUMENT,
        "bytes",
    ),
    "NaN": (_with_value(float("nan")), C.INVALID_ARGUMENT, "NaN"),
    "Inf": (_with_value(float("inf")), C.INVALID_ARGUMENT, "Inf"),
    "plus and minus Inf": (_with_values(float("inf"), float("-inf")), C.INVALID_ARGUMENT, "Inf"),
    "empty chunk": (
        lambda sid, m: _step(sid, m, x=np.zeros((0, m.input_features), np.float32)),
        C.INVALID_ARGUMENT,
        "empty",
    ),
    "over-long chunk": (
        lambda sid, m: _step(sid, m, x=np.zeros((4097, m.input_features), np.float32)),
        C.INVALID_ARGUMENT,
        "4096",
    ),
    "unknown model": (
        lambda sid, m: pb.StepRequest(
            session_id=sid, model="no-such-model", input=tensor(np.zeros((1, 1))), request_id="bad"
        ),
        C.NOT_FOUND,
        "no-such-model",
    ),
    "unknown version": (
        lambda sid, m: _step(sid, m, version=987),
        C.NOT_FOUND,
        "987",
    ),
    "negative version": (
        lambda sid, m: _step(sid, m, version=-1),
        C.INVALID_ARGUMENT,
        "model_version must be >= 0",
    ),
    "wrong expected_step": (
        lambda sid, m: _step(sid, m, expected_step=3),
        C.FAILED_PRECONDITION,
        "",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_code_and_leaves_the_session_unchanged(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata, case: str
) -> None:
    make_bad, code, fragment = BAD_INPUTS[case]
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(20), 9)
    sid = f"bad-{case.replace(' ', '-')}"
    replies = run_stream(
        stubs.inference,
        [
            step_request(sid, meta.name, x[:5], start=True, request_id="a"),
            pb.StreamRequest(step=make_bad(sid, meta)),
            step_request(sid, meta.name, x[5:], request_id="b"),
        ],
    )
    assert [r.step.request_id for r in replies] == ["a", "bad", "b"]
    bad = replies[1].step
    assert bad.status.code == code.value[0], bad.status.message
    assert fragment in bad.status.message
    assert bad.step == 5  # the session's unchanged count
    assert not bad.output.data
    assert replies[2].step.status.code == 0
    assert replies[2].step.step == 9
    y = np.concatenate([array(replies[0].step.output), array(replies[2].step.output)])
    assert_close(y, offline(repository, meta.name, meta.version, x))


def test_finite_input_that_overflows_the_model_is_refused_and_changes_nothing(
    fixture_stubs: Stubs, fixture_repository: Path
) -> None:
    """`accumulator` sums its inputs into its state: a second 3e38 makes inf from finite input.
    The chunk is refused on its reply, the stream goes on, and the session continues as if the
    chunk had never been sent."""
    big = np.full((1, 3), 3e38, np.float32)
    one = np.ones((1, 3), np.float32)
    replies = run_stream(
        fixture_stubs.inference,
        [
            step_request("overflow", "accumulator", big, start=True, request_id="a"),
            step_request("overflow", "accumulator", big, request_id="bad"),
            step_request("overflow", "accumulator", -big, request_id="b"),
            step_request("overflow", "accumulator", one, request_id="c"),
        ],
    )
    assert [r.step.request_id for r in replies] == ["a", "bad", "b", "c"]
    bad = replies[1].step
    assert bad.status.code == C.INVALID_ARGUMENT.value[0], bad.status.message
    assert "came out NaN or Inf" in bad.status.message
    assert bad.step == 1
    assert not bad.output.data
    assert [r.step.step for r in replies[2:]] == [2, 3]
    y = np.concatenate([array(r.step.output) for r in (replies[0], *replies[2:])])
    expected = offline(fixture_repository, "accumulator", 1, np.concatenate([big, -big, one]))
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    ("session_id", "fragment"),
    [("has space", "' '"), ("x" * 129, "129 characters"), ("naïve", "ï")],
)
def test_malformed_session_id_is_invalid_argument(
    stubs: Stubs, streaming_model: mr.ModelMetadata, session_id: str, fragment: str
) -> None:
    x = np.zeros((1, streaming_model.input_features), np.float32)
    [reply] = run_stream(
        stubs.inference, [step_request(session_id, streaming_model.name, x, start=True)]
    )
    assert reply.step.status.code == C.INVALID_ARGUMENT.value[0]
    assert fragment in reply.step.status.message
    assert reply.step.step == -1


def test_unknown_session_without_start_is_not_found(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    x = np.zeros((1, streaming_model.input_features), np.float32)
    [reply] = run_stream(stubs.inference, [step_request("never-started", streaming_model.name, x)])
    assert reply.step.status.code == C.NOT_FOUND.value[0]
    assert "never-started" in reply.step.status.message
    assert "start" in reply.step.status.message
    assert reply.step.step == -1


def test_unary_step_reports_errors_as_grpc_status(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    bad = _step("unary-bad", meta, x=np.zeros((2, meta.input_features + 2), np.float32))
    bad.start = True
    with pytest.raises(grpc.RpcError) as info:
        stubs.inference.Step(bad)
    assert info.value.code() == C.INVALID_ARGUMENT
    assert "features" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stubs.inference.Step(_step("unary-missing", meta))
    assert info.value.code() == C.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stubs.inference.Predict(pb.PredictRequest(model="nope", input=tensor(np.zeros((1, 1)))))
    assert info.value.code() == C.NOT_FOUND


def test_oversized_message_is_resource_exhausted(
    make_server: Callable[..., ServerProcess], streaming_model: mr.ModelMetadata
) -> None:
    server = make_server("--max-message-bytes", str(64 * 1024))
    meta = streaming_model
    with server.channel() as channel:
        stubs = Stubs(channel)
        ok = _step("size-1", meta, start=True)
        stubs.inference.Step(ok)
        big = _step("size-1", meta, x=np.zeros((64 * 1024 // 4, meta.input_features), np.float32))
        with pytest.raises(grpc.RpcError) as info:
            stubs.inference.Step(big)
        assert info.value.code() == C.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            run_stream(stubs.inference, [pb.StreamRequest(step=big)])
        assert info.value.code() == C.RESOURCE_EXHAUSTED
        # The server is fine and the session untouched.
        assert stubs.sessions.GetSession(pb.SessionRef(session_id="size-1")).step == 2


def test_predict_whose_finite_input_overflows_the_model_is_invalid_argument(
    fixture_stubs: Stubs,
) -> None:
    """The fixture `accumulator` sums its inputs: two steps of 3e38 overflow float32."""
    x = np.full((2, 3), 3e38, np.float32)
    with pytest.raises(grpc.RpcError) as info:
        fixture_stubs.inference.Predict(pb.PredictRequest(model="accumulator", input=tensor(x)))
    assert info.value.code() == C.INVALID_ARGUMENT
    assert "the input is finite but the outputs came out NaN or Inf" in (info.value.details() or "")
    fine = np.full((2, 3), 1.0, np.float32)
    reply = fixture_stubs.inference.Predict(
        pb.PredictRequest(model="accumulator", input=tensor(fine))
    )
    assert array(reply.output).tolist() == [[1.0] * 3, [2.0] * 3]


def test_negative_model_version_is_invalid_argument_everywhere(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    """Not another spelling of "latest" (0 is): Step, Predict and GetModelMetadata refuse it."""
    meta = streaming_model
    x = tensor(np.zeros((1, meta.input_features), np.float32))
    calls = [
        lambda: stubs.inference.Step(
            pb.StepRequest(session_id="neg", model=meta.name, model_version=-1, input=x, start=True)
        ),
        lambda: stubs.inference.Predict(
            pb.PredictRequest(model=meta.name, model_version=-2, input=x)
        ),
        lambda: stubs.models.GetModelMetadata(pb.ModelRef(model=meta.name, model_version=-1)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == C.INVALID_ARGUMENT
        assert "model_version must be >= 0" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as gone:
        stubs.sessions.GetSession(pb.SessionRef(session_id="neg"))
    assert gone.value.code() == C.NOT_FOUND  # the refused start created nothing
