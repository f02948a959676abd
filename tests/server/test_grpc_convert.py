"""Pure units: protobuf <-> domain conversion and the one ErrorCode -> gRPC status table."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.errors import ErrorCode, InvalidArgument, NotFound, RnnServeError
from rnnserve_server.grpc_api import convert, status
from rnnserve_server.types import FrameOutput, SessionInfo, SessionSnapshot, StepOutput


def _tensor(x: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())


def test_tensor_round_trip_is_exact() -> None:
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    back = convert.tensor_to_array(convert.array_to_tensor(x), (2,))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, x)


def test_tensor_view_is_zero_copy_and_read_only() -> None:
    t = _tensor(np.ones((2, 2)))
    x = convert.tensor_to_array(t, (2,))
    assert not x.flags.writeable


@pytest.mark.parametrize(
    ("shape", "nbytes", "fragment"),
    [
        ((3,), 12, "rank 2"),
        ((1, 2, 3), 24, "rank 2"),
        ((2, 3), 20, "needs 24 bytes"),
        ((2, 3), 25, "needs 24 bytes"),  # not a whole number of float32s
        ((2, -3), 0, "negative"),
    ],
)
def test_bad_tensors_are_invalid_argument(
    shape: tuple[int, ...], nbytes: int, fragment: str
) -> None:
    t = pb.Tensor(shape=list(shape), data=b"\0" * nbytes)
    with pytest.raises(InvalidArgument, match=fragment):
        convert.tensor_to_array(t, (2,))


def test_step_input_maps_every_field() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = pb.StepRequest(
        session_id="s", model="m", model_version=0, input=_tensor(x), start=True, end=True
    )
    inp = convert.step_input(req)
    assert (inp.session_id, inp.model, inp.version, inp.start, inp.end) == (
        "s",
        "m",
        None,
        True,
        True,
    )
    assert inp.expected_step is None
    np.testing.assert_array_equal(inp.x, x)
    req.model_version = 4
    req.expected_step = 0  # presence matters: 0 is a real expectation
    inp = convert.step_input(req)
    assert inp.version == 4
    assert inp.expected_step == 0


def test_step_response_carries_output_and_ids() -> None:
    y = np.array([[1.5, -2.0]], np.float32)
    out = StepOutput(session_id="s", model="m", version=3, y=y, step=7)
    resp = convert.step_response(out, "r1")
    assert (resp.session_id, resp.request_id, resp.step, resp.model, resp.model_version) == (
        "s", "r1", 7, "m", 3,
    )  # fmt: skip
    np.testing.assert_array_equal(convert.tensor_to_array(resp.output, (2,)), y)
    assert resp.status.code == 0


def test_frame_input_defaults_and_mismatches() -> None:
    x = np.zeros((2, 4, 3), np.float32)
    req = pb.FrameRequest(model="m", session_ids=["a", "b"], input=_tensor(x))
    inp = convert.frame_input(req)
    assert inp.start.tolist() == [False, False]
    assert inp.end.tolist() == [False, False]
    assert inp.expected_step.tolist() == [-1, -1]
    req.start.extend([True, False])
    req.expected_step.extend([-1, 5])
    inp = convert.frame_input(req)
    assert inp.start.tolist() == [True, False]
    assert inp.expected_step.tolist() == [-1, 5]
    req.end.append(True)  # 1 flag for 2 sessions
    with pytest.raises(InvalidArgument, match="end"):
        convert.frame_input(req)
    bad = pb.FrameRequest(model="m", session_ids=["a"], input=_tensor(x))
    with pytest.raises(InvalidArgument, match="2 rows"):
        convert.frame_input(bad)


def test_frame_response_reports_per_session_status() -> None:
    y = np.zeros((2, 1, 2), np.float32)
    y[1] = np.nan
    out = FrameOutput(
        model="m",
        version=1,
        session_ids=["a", "b"],
        y=y,
        steps=np.array([4, -1]),
        errors=[None, NotFound("session 'b' does not exist")],
    )
    resp = convert.frame_response(out, "f1")
    assert list(resp.code) == [0, int(grpc.StatusCode.NOT_FOUND.value[0])]
    assert list(resp.message) == ["", "session 'b' does not exist"]
    assert list(resp.step) == [4, -1]
    assert convert.tensor_to_array(resp.output, (3,)).shape == (2, 1, 2)


def test_snapshot_round_trip_keeps_dtypes_and_values() -> None:
    info = SessionInfo("s", "m", 2, 11, 100.0, 200.5)
    states = {
        "h": np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32),
        "count": np.array(11, np.int64),
    }
    proto = convert.snapshot_proto(SessionSnapshot(info=info, states=states))
    assert {s.name: s.dtype for s in proto.states} == {"h": mr.FLOAT32, "count": mr.INT64}
    back = convert.snapshot_from_proto(pb.SessionSnapshot.FromString(proto.SerializeToString()))
    assert back.info == info
    for name, value in states.items():
        assert back.states[name].dtype == value.dtype
        np.testing.assert_array_equal(back.states[name], value)
        assert back.states[name].flags.writeable


def test_snapshot_with_wrong_byte_count_is_rejected() -> None:
    snap = pb.SessionSnapshot(
        session=pb.SessionInfo(session_id="s", model="m"),
        states=[pb.StateValue(name="h", shape=[2], dtype=mr.FLOAT32, data=b"\0" * 4)],
    )
    with pytest.raises(InvalidArgument, match="needs 8 bytes"):
        convert.snapshot_from_proto(snap)
    snap.states[0].dtype = mr.DATA_TYPE_UNSPECIFIED
    with pytest.raises(InvalidArgument, match="dtype"):
        convert.snapshot_from_proto(snap)


def test_status_table_covers_every_error_code_with_the_same_number() -> None:
    assert set(status.GRPC_CODES) == set(ErrorCode)
    for code, grpc_code in status.GRPC_CODES.items():
        assert grpc_code.value[0] == int(code)
        assert status.code_name(code) == code.name


def test_unexpected_exceptions_become_internal_without_details() -> None:
    err = status.as_service_error(KeyError("secret internals"))
    assert err.code == ErrorCode.INTERNAL
    assert "secret" not in err.message
    mine = InvalidArgument("x")
    assert status.as_service_error(mine) is mine
    proto = status.status_proto(RnnServeError("boom", code=ErrorCode.UNAVAILABLE))
    assert (proto.code, proto.message) == (14, "boom")
