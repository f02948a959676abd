"""The pure request builders and reply parsers shared by Client and AsyncClient."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnserve_client import FailedPrecondition, InvalidArgument, NotFound, ReplyLost, _health
from rnnserve_client import _builders as b
from rnnserve_proto import rnnserve_pb2 as pb


def test_tensor_round_trip_is_little_endian_float32() -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3) / 3
    t = b.to_tensor(x)
    assert list(t.shape) == [2, 3]
    assert t.data == x.astype("<f4").tobytes()
    y = b.from_tensor(t)
    assert y.dtype == np.float32
    assert y.flags.writeable
    np.testing.assert_array_equal(y, x.astype(np.float32))
    with pytest.raises(InvalidArgument, match="bytes"):
        b.from_tensor(pb.Tensor(shape=[2, 2], data=b"\0" * 12))


def test_chunk_shapes() -> None:
    assert b.as_chunk(3.0).shape == (1, 1)
    assert b.as_chunk([1, 2, 3]).shape == (3, 1)
    assert b.as_chunk(np.zeros((4, 2))).shape == (4, 2)
    assert b.as_sequence(np.zeros((2, 4, 1))).shape == (2, 4, 1)
    with pytest.raises(InvalidArgument):
        b.as_chunk(np.zeros((1, 1, 1)))


def test_step_request_sets_expected_step_only_when_given() -> None:
    x = b.as_chunk([1.0, 2.0])
    req = b.step_request(session_id="s", model="m", version=0, x=x, request_id="r", start=True)
    assert req.start
    assert not req.HasField("expected_step")
    req = b.step_request(session_id="s", model="m", version=2, x=x, request_id="r", expected_step=0)
    assert req.HasField("expected_step")
    assert req.expected_step == 0
    assert req.model_version == 2


def _reply(code: int, step: int, y: np.ndarray | None = None) -> pb.StepResponse:
    r = pb.StepResponse(step=step, status=pb.Status(code=code, message="m"))
    if y is not None:
        r.output.CopyFrom(b.to_tensor(y))
    return r


def test_interpret_step() -> None:
    ok = b.interpret_step(
        _reply(0, 5, np.ones((2, 1))), expected_step=3, steps=2, resent=False, start=False
    )
    assert ok.step == 5
    assert ok.y is not None
    assert ok.error is None
    fp = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # A resend refused exactly one chunk further on: applied once, reply lost.
    lost = b.interpret_step(_reply(fp, 5), expected_step=3, steps=2, resent=True, start=False)
    assert isinstance(lost.error, ReplyLost)
    assert lost.step == 5
    assert lost.error.lost_steps == 2
    # The same reply to a first send is a plain mismatch.
    plain = b.interpret_step(_reply(fp, 5), expected_step=3, steps=2, resent=False, start=False)
    assert isinstance(plain.error, FailedPrecondition)
    assert plain.error.step == 5
    assert plain.step == 5  # the session follows the server's count
    # Somewhere else entirely: not ours to explain away.
    other = b.interpret_step(_reply(fp, 9), expected_step=3, steps=2, resent=True, start=False)
    assert type(other.error) is FailedPrecondition
    unknown = b.interpret_step(
        _reply(fp, b.STEP_UNKNOWN), expected_step=3, steps=2, resent=True, start=False
    )
    assert unknown.need_step
    nf = b.interpret_step(
        _reply(grpc.StatusCode.NOT_FOUND.value[0], -1),
        expected_step=0,
        steps=1,
        resent=False,
        start=True,
    )
    assert isinstance(nf.error, NotFound)


def test_health_codec() -> None:
    assert _health.encode_request("") == b""
    assert _health.encode_request("rnnserve.v1.Inference") == b"\x0a\x15rnnserve.v1.Inference"
    assert _health.decode_status(b"\x08\x01") == _health.SERVING
    assert _health.decode_status(b"") == 0
    assert _health.status_name(2) == "NOT_SERVING"


def test_interpret_lost_final_chunk() -> None:
    nf = grpc.StatusCode.NOT_FOUND.value[0]
    out = b.interpret_step(
        _reply(nf, -1), expected_step=4, steps=2, resent=True, start=False, end=True
    )
    assert isinstance(out.error, ReplyLost)
    assert out.step == 0
    plain = b.interpret_step(
        _reply(nf, -1), expected_step=4, steps=2, resent=False, start=False, end=True
    )
    assert type(plain.error) is NotFound


def test_frame_request_and_result() -> None:
    req = b.frame_request(
        model="m",
        version=0,
        session_ids=["a", "b"],
        x=np.zeros((2, 3)),
        request_id="r",
        start=[True, False],
        expected_step=[-1, 4],
    )
    assert list(req.input.shape) == [2, 3, 1]
    assert list(req.start) == [True, False]
    assert list(req.end) == [False, False]
    assert list(req.expected_step) == [-1, 4]
    with pytest.raises(InvalidArgument, match=r"\[3, T, F\]"):
        b.frame_request(
            model="m", version=0, session_ids=["a", "b", "c"], x=np.zeros((2, 3, 1)), request_id="r"
        )
    with pytest.raises(InvalidArgument, match="start needs 2 flags"):
        b.frame_request(
            model="m",
            version=0,
            session_ids=["a", "b"],
            x=np.zeros((2, 3, 1)),
            request_id="r",
            start=[True],
        )
    fp = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    resp = pb.FrameResponse(
        session_ids=["a", "b"],
        output=b.to_tensor(np.zeros((2, 1, 1))),
        step=[3, 7],
        code=[0, fp],
        message=["", "mismatch"],
    )
    res = b.frame_result(resp)
    assert res.errors[0] is None
    assert isinstance(res.errors[1], FailedPrecondition)
    assert res.errors[1].step == 7
    assert res.steps == [3, 7]
    assert not res.ok
    resp.status.code = grpc.StatusCode.NOT_FOUND.value[0]
    with pytest.raises(NotFound):
        b.frame_result(resp)
