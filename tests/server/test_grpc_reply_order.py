"""Reply order on one Stream (rnnserve.proto): the replies of one session come back in the order
its requests were sent, whatever their kind (step, frame, rejection), while the replies of other
sessions are not held back.

The earlier request of each case is made slow (a long chunk) or answered from a task (a frame),
so that without the ordering the later reply would overtake it in most runs; each case repeats a
few times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import offline
from grpc_helpers import Stubs, array, assert_close, raw_input, run_stream, step_request, tensor

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb

LONG = 4096  # steps: the most one chunk may have (max_chunk_steps); it takes a while to run
TRIALS = 8


def _frame(
    meta: mr.ModelMetadata,
    ids: list[str],
    x: np.ndarray,
    request_id: str,
    *,
    start: bool = False,
    expected: list[int] | None = None,
) -> pb.StreamRequest:
    frame = pb.FrameRequest(
        model=meta.name, session_ids=ids, input=tensor(x), request_id=request_id
    )
    if start:
        frame.start[:] = [True] * len(ids)
    if expected is not None:
        frame.expected_step[:] = expected
    return pb.StreamRequest(frame=frame)


def _request_id(reply: pb.StreamResponse) -> str:
    kind = reply.WhichOneof("kind")
    assert kind is not None
    request_id: str = getattr(reply, kind).request_id
    return request_id


def _order(stubs: Stubs, requests: list[pb.StreamRequest]) -> list[str]:
    return [_request_id(r) for r in run_stream(stubs.inference, requests)]


def _too_wide(meta: mr.ModelMetadata, steps: int) -> np.ndarray:
    """A chunk with one feature too many: rejected before it is queued."""
    return np.ones((steps, meta.input_features + 1), np.float32)


def test_step_behind_a_frame_is_answered_after_the_frame(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    """step (start), frame, step of one session: the frame's reply comes from a task, the last
    step's from its batch, which may come first; it must not go out first. The chunks apply in
    order too."""
    meta = streaming_model
    rng = np.random.default_rng(31)
    for trial in range(TRIALS):
        sid = f"order-fs-{trial}"
        x = raw_input(meta, rng, 3)
        replies = run_stream(
            stubs.inference,
            [
                step_request(sid, meta.name, x[:1], request_id="a", start=True),
                _frame(meta, [sid], x[None, 1:2], "b"),
                step_request(sid, meta.name, x[2:], request_id="c", end=True),
            ],
        )
        assert [_request_id(r) for r in replies] == ["a", "b", "c"], f"trial {trial}"
        a, b, c = replies
        assert (a.step.step, list(b.frame.step), c.step.step) == (1, [2], 3)
        assert list(b.frame.code) == [0]
        y = np.concatenate([array(a.step.output), array(b.frame.output)[0], array(c.step.output)])
        assert_close(y, offline(repository, meta.name, meta.version, x))


def test_rejected_step_behind_a_frame_is_answered_after_the_frame(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    x = np.ones((1, 256, meta.input_features), np.float32)
    for trial in range(TRIALS):
        sid = f"order-fe-{trial}"
        order = _order(
            stubs,
            [
                _frame(meta, [sid], x, "frame", start=True),
                step_request(sid, meta.name, _too_wide(meta, 1), request_id="rejected"),
            ],
        )
        assert order == ["frame", "rejected"], f"trial {trial}"


@pytest.mark.parametrize("refusal", ["frame-wide", "per-session"])
def test_refused_frame_behind_a_long_step_is_answered_after_the_step(
    stubs: Stubs, streaming_model: mr.ModelMetadata, refusal: str
) -> None:
    """A frame refused as a whole (its input has the wrong shape) or for its session before the
    batcher (a negative expected_step) is answered at once; its reply still waits for the
    session's long step in flight."""
    meta = streaming_model
    F = meta.input_features
    long = np.ones((LONG, F), np.float32)
    for trial in range(TRIALS):
        sid = f"order-sf-{refusal}-{trial}"
        if refusal == "frame-wide":
            frame = _frame(meta, [sid], np.ones((1, 1, F + 1), np.float32), "frame")
        else:
            frame = _frame(meta, [sid], np.ones((1, 1, F), np.float32), "frame", expected=[-5])
        replies = run_stream(
            stubs.inference,
            [step_request(sid, meta.name, long, request_id="step", start=True), frame],
        )
        assert [_request_id(r) for r in replies] == ["step", "frame"], f"trial {trial}"
        step, refused = replies[0].step, replies[1].frame
        assert step.status.code == 0
        assert step.step == LONG
        if refusal == "frame-wide":
            assert refused.status.code != 0
        else:
            assert refused.status.code == 0  # refused for the session only
            assert list(refused.code) != [0]


def test_frame_waits_for_every_session_it_names_and_they_wait_for_it(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    """A frame naming an idle session and one with a long step in flight (refused, so it is
    answered at once) waits for the long step; a later step of the idle session waits for the
    frame, and so for the long step too."""
    meta = streaming_model
    F = meta.input_features
    one = np.ones((1, F), np.float32)
    for trial in range(TRIALS):
        idle, busy = f"order-m-idle-{trial}", f"order-m-busy-{trial}"
        order = _order(
            stubs,
            [
                step_request(idle, meta.name, one, request_id="idle-start", start=True),
                step_request(
                    busy, meta.name, np.ones((LONG, F), np.float32), request_id="busy", start=True
                ),
                _frame(meta, [idle, busy], np.ones((2, 1, F + 1), np.float32), "frame"),
                step_request(idle, meta.name, one, request_id="idle-next"),
            ],
        )
        assert order.index("busy") < order.index("frame") < order.index("idle-next"), order
        assert order.index("idle-start") < order.index("frame"), order


def test_rejections_queue_in_order_behind_a_frame_and_a_step(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    """Several rejections and steps of one session pipelined behind a frame: every reply in
    the order sent."""
    meta = streaming_model
    F = meta.input_features
    one = np.ones((1, F), np.float32)
    for trial in range(TRIALS // 2):
        sid = f"order-chain-{trial}"
        requests = [_frame(meta, [sid], np.ones((1, 512, F), np.float32), "0", start=True)]
        for i in range(1, 13):
            x = _too_wide(meta, 1) if i % 3 == 0 else one
            requests.append(step_request(sid, meta.name, x, request_id=str(i)))
        replies = run_stream(stubs.inference, requests)
        assert [_request_id(r) for r in replies] == [str(i) for i in range(13)]
        steps = [r.step for r in replies[1:]]
        assert [s.status.code != 0 for s in steps] == [i % 3 == 0 for i in range(1, 13)]
        assert [s.step for s in steps if s.status.code == 0] == list(range(513, 513 + 8))


def test_replies_of_other_sessions_are_not_held_back(
    stubs: Stubs, streaming_model: mr.ModelMetadata
) -> None:
    """A long step of one session in flight does not delay another session's reply (here a
    rejection, which is ready at once)."""
    meta = streaming_model
    F = meta.input_features
    for trial in range(TRIALS // 2):
        busy, other = f"order-h-busy-{trial}", f"order-h-other-{trial}"
        order = _order(
            stubs,
            [
                step_request(
                    busy, meta.name, np.ones((LONG, F), np.float32), request_id="busy", start=True
                ),
                _frame(meta, [busy], np.ones((1, 1, F), np.float32), "frame"),
                step_request(other, meta.name, _too_wide(meta, 1), request_id="other"),
            ],
        )
        assert order == ["other", "busy", "frame"], f"trial {trial}"
