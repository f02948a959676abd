"""The service layer in-process, on real ONNX Runtime with the fixture repository.

Every result is compared with an offline ONNX Runtime run of the whole sequence (fixtures.offline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures import H, build_repository, offline, rollout, service_settings
from prometheus_client import CollectorRegistry

from rnnserve_server.errors import ErrorCode, RnnServeError
from rnnserve_server.service import InferenceService
from rnnserve_server.store import LAST_OUTPUT
from rnnserve_server.types import (
    FrameInput,
    SessionInfo,
    SessionSnapshot,
    StepInput,
    StepOutput,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


def serve(repo: Path, body: Callable[[InferenceService], Awaitable[Any]], **overrides: Any) -> Any:
    """Run `body(service)` on a fresh service (own metrics registry), then close it."""

    async def main() -> Any:
        svc = await InferenceService.create(
            service_settings(repo, **overrides), registry=CollectorRegistry()
        )
        try:
            return await body(svc)
        finally:
            await svc.close(5.0)

    return asyncio.run(main())


def data(seed: int, T: int, F: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(T, F)).astype(np.float32)


def sample(svc: InferenceService, name: str, labels: dict[str, str]) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def stream(
    svc: InferenceService, sid: str, model: str, x: np.ndarray, seed: int, version: int | None
) -> np.ndarray:
    """x in random chunk lengths (1..7), the first with start."""
    rng = np.random.default_rng(seed)
    outs, t = [], 0
    while t < len(x):
        n = int(rng.integers(1, 8))
        out = await svc.step(StepInput(sid, model, version, x[t : t + n], start=t == 0))
        outs.append(out.y)
        t += n
        assert out.step == min(t, len(x))
    return np.concatenate(outs)


# -- equality with offline runs ------------------------------------------------------------------
@pytest.mark.parametrize(("model", "version"), [("gru", 1), ("gru", None), ("counter", None)])
def test_chunked_stream_equals_offline(repo: Path, model: str, version: int | None) -> None:
    x = data(1, 60)

    async def body(svc: InferenceService) -> np.ndarray:
        return await stream(svc, "s1", model, x, seed=2, version=version)

    y = serve(repo, body)
    ref = offline(repo, model, version or (2 if model == "gru" else 1), x)
    np.testing.assert_allclose(y, ref, atol=TOL, rtol=0)


def test_64_interleaved_sessions_equal_each_alone(repo: Path) -> None:
    xs = [data(100 + i, 40) for i in range(64)]

    async def body(svc: InferenceService) -> tuple[list[np.ndarray], float, float]:
        ys = await asyncio.gather(
            *(stream(svc, f"il-{i}", "gru", xs[i], seed=i, version=None) for i in range(64))
        )
        runs = sample(svc, "rnnserve_batch_sessions_count", {"model": "gru"})
        rows = sample(svc, "rnnserve_batch_sessions_sum", {"model": "gru"})
        return ys, runs, rows

    ys, runs, rows = serve(repo, body)
    for i in range(64):
        np.testing.assert_allclose(ys[i], offline(repo, "gru", 2, xs[i]), atol=TOL, rtol=0)
    assert rows / runs > 4, f"sessions did not share runs: {rows} rows in {runs} runs"


def test_steps_of_one_session_apply_in_submission_order(repo: Path) -> None:
    x = data(7, 30)

    async def body(svc: InferenceService) -> list[Any]:
        # Submitted back to back without waiting: the batcher must apply them in order.
        calls = [svc.step(StepInput("ord", "gru", None, x[:3], start=True))]
        calls += [svc.step(StepInput("ord", "gru", None, x[t : t + 3])) for t in range(3, 30, 3)]
        return await asyncio.gather(*calls)

    outs = serve(repo, body)
    assert [o.step for o in outs] == list(range(3, 31, 3))
    np.testing.assert_allclose(
        np.concatenate([o.y for o in outs]), offline(repo, "gru", 2, x), atol=TOL, rtol=0
    )


def test_frames_equal_offline_and_mix_with_steps(repo: Path) -> None:
    N = 16
    xs = np.stack([data(300 + i, 24) for i in range(N)])
    ids = [f"fr-{i}" for i in range(N)]
    lens = [1, 5, 2, 8, 8]

    async def body(svc: InferenceService) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        outs, t = [], 0
        for T in lens:
            start = np.full(N, t == 0)
            fo = await svc.frame(
                FrameInput("gru", None, ids, xs[:, t : t + T], start, np.zeros(N, bool),
                           np.full(N, -1, np.int64))
            )  # fmt: skip
            assert fo.errors == [None] * N
            assert fo.steps.tolist() == [t + T] * N
            outs.append(fo.y)
            t += T
        # A frame with one unknown id: that session fails alone.
        fo2 = await svc.frame(
            FrameInput("gru", None, [*ids, "nobody"], np.zeros((N + 1, 1, 3), np.float32),
                       np.zeros(N + 1, bool), np.zeros(N + 1, bool), np.full(N + 1, -1, np.int64))
        )  # fmt: skip
        return np.concatenate(outs, axis=1), fo2.steps, fo2.errors

    y, steps, errors = serve(repo, body)
    np.testing.assert_allclose(y, offline(repo, "gru", 2, xs), atol=TOL, rtol=0)
    assert steps.tolist() == [25] * N + [-1]
    assert errors[:N] == [None] * N
    assert errors[N] is not None
    assert errors[N].code == ErrorCode.NOT_FOUND


def test_predict_equals_offline_and_touches_no_session(repo: Path) -> None:
    x3 = np.stack([data(400 + i, 12) for i in range(3)])

    async def body(svc: InferenceService) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        whole3 = await svc.predict("whole", None, x3)
        whole2 = await svc.predict("whole", 1, x3[0])
        gru = await svc.predict("gru", None, x3)
        return whole3, whole2, gru, svc.session_count()

    whole3, whole2, gru, count = serve(repo, body)
    np.testing.assert_allclose(whole3, offline(repo, "whole", 1, x3), atol=TOL, rtol=0)
    np.testing.assert_allclose(whole2, offline(repo, "whole", 1, x3[0]), atol=TOL, rtol=0)
    assert whole2.shape == (12, 3)
    np.testing.assert_allclose(gru, offline(repo, "gru", 2, x3), atol=TOL, rtol=0)
    assert count == 0


# -- bad input leaves the session exactly as it was -----------------------------------------------
X = data(5, 20)
NAN = X[:2].copy()
NAN[1, 2] = np.nan
INF = X[:2].copy()
INF[0, 0] = np.inf
PM_INF = X[:2].copy()
PM_INF[0, 1], PM_INF[1, 0] = np.inf, -np.inf

BAD_STEPS: dict[str, tuple[StepInput, ErrorCode, str]] = {
    "features": (StepInput("v", "gru", None, X[:2, :2]), ErrorCode.INVALID_ARGUMENT, "features"),
    "rank": (StepInput("v", "gru", None, X[None, :2]), ErrorCode.INVALID_ARGUMENT, "shape"),
    "nan": (StepInput("v", "gru", None, NAN), ErrorCode.INVALID_ARGUMENT, "NaN"),
    "inf": (StepInput("v", "gru", None, INF), ErrorCode.INVALID_ARGUMENT, "NaN or Inf"),
    # +Inf and -Inf together sum to NaN, which numpy warns about: still a plain rejection.
    "plus_minus_inf": (
        StepInput("v", "gru", None, PM_INF),
        ErrorCode.INVALID_ARGUMENT,
        "NaN or Inf",
    ),
    "plus_minus_inf_start": (
        StepInput("v", "gru", None, PM_INF, start=True),
        ErrorCode.INVALID_ARGUMENT,
        "first at step 0, feature 1",
    ),
    "empty": (StepInput("v", "gru", None, X[:0]), ErrorCode.INVALID_ARGUMENT, "empty"),
    "too_long": (StepInput("v", "gru", None, data(1, 17)), ErrorCode.INVALID_ARGUMENT, "at most"),
    "dtype": (
        StepInput("v", "gru", None, X[:2].astype(str)),
        ErrorCode.INVALID_ARGUMENT,
        "float32",
    ),
    "unknown_model": (StepInput("v", "nope", None, X[:2]), ErrorCode.NOT_FOUND, "not loaded"),
    "unknown_version": (StepInput("v", "gru", 9, X[:2]), ErrorCode.NOT_FOUND, "no version 9"),
    "other_model": (
        StepInput("v", "counter", None, X[:2]),
        ErrorCode.FAILED_PRECONDITION,
        "belongs to model 'gru'",
    ),
    "other_version": (
        StepInput("v", "gru", 1, X[:2]),
        ErrorCode.FAILED_PRECONDITION,
        "version 2",
    ),
    "whole_model": (
        StepInput("v", "whole", None, X[:2]),
        ErrorCode.FAILED_PRECONDITION,
        "use Predict",
    ),
    "expected_step": (
        StepInput("v", "gru", None, X[:2], expected_step=3),
        ErrorCode.FAILED_PRECONDITION,
        "has consumed 5 steps",
    ),
    "negative_expected": (
        StepInput("v", "gru", None, X[:2], expected_step=-2),
        ErrorCode.INVALID_ARGUMENT,
        "expected_step",
    ),
    "start_expected": (
        StepInput("v", "gru", None, X[:2], start=True, expected_step=0),
        ErrorCode.FAILED_PRECONDITION,
        "expected 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STEPS))
def test_rejected_step_leaves_state_unchanged(repo: Path, case: str) -> None:
    bad, code, text = BAD_STEPS[case]

    async def body(svc: InferenceService) -> tuple[Any, Any, RnnServeError, np.ndarray]:
        await svc.step(StepInput("v", "gru", None, X[:5], start=True))
        before = svc.get_session("v")
        await asyncio.sleep(0.01)  # a touched timestamp would differ
        with pytest.raises(RnnServeError) as info:
            await svc.step(bad)
        after = svc.get_session("v")
        rest = await svc.step(StepInput("v", "gru", None, X[5:]))
        return before, after, info.value, rest.y

    before, after, err, rest = serve(repo, body, limits={"max_chunk_steps": 16})
    assert err.code == code, err.message
    assert text in err.message
    assert after == before
    np.testing.assert_allclose(rest, offline(repo, "gru", 2, X)[5:], atol=TOL, rtol=0)


BAD_IDS = ["bad id", "x" * 129, "tab\t", "ü"]


@pytest.mark.parametrize("sid", BAD_IDS)
def test_malformed_session_id_is_invalid_argument(repo: Path, sid: str) -> None:
    async def body(svc: InferenceService) -> None:
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput(sid, "gru", None, X[:1], start=True))
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        assert "session id" in info.value.message
        assert svc.session_count() == 0

    serve(repo, body)


def test_rejected_frame_rows_leave_state_unchanged(repo: Path) -> None:
    ids = ["fa", "fb", "fc", "bad id", "fd"]

    async def body(svc: InferenceService) -> None:
        for sid in ids[:3]:
            await svc.step(StepInput(sid, "gru", None, X[:4], start=True))
        before = [svc.get_session(s) for s in ids[:3]]
        x = np.stack([X[4:6]] * 5)
        x[1, 0, 0] = np.nan  # fb: non-finite
        fo = await svc.frame(
            FrameInput("gru", None, ids, x, np.array([0, 0, 0, 1, 0], bool), np.zeros(5, bool),
                       np.array([-1, -1, 7, -1, -1]))
        )  # fmt: skip
        codes = [None if e is None else e.code for e in fo.errors]
        assert codes == [
            None,
            ErrorCode.INVALID_ARGUMENT,  # NaN
            ErrorCode.FAILED_PRECONDITION,  # expected 7, has 4
            ErrorCode.INVALID_ARGUMENT,  # malformed id
            ErrorCode.NOT_FOUND,  # no start
        ]
        assert fo.steps.tolist() == [6, 4, 4, -1, -1]
        assert np.isnan(fo.y[1:]).all()
        assert np.isfinite(fo.y[0]).all()
        assert svc.get_session("fb") == before[1]
        assert svc.get_session("fc") == before[2]
        rest = await svc.step(StepInput("fb", "gru", None, X[4:]))
        np.testing.assert_allclose(rest.y, offline(repo, "gru", 2, X)[4:], atol=TOL, rtol=0)

    serve(repo, body)


BIG = 3e38  # finite float32, but two of them overflow the accumulator's sum
ONES = np.ones((1, 3), np.float32)


def test_chunk_that_drives_the_state_to_inf_is_rejected_and_changes_nothing(repo: Path) -> None:
    """One live session's plain step (the batcher's one-row path): the second BIG overflows."""

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("acc", "accumulator", None, ONES, start=True))
        await svc.step(StepInput("acc", "accumulator", None, ONES * BIG))
        before = svc.get_session("acc")
        await asyncio.sleep(0.01)  # a touched timestamp would differ
        for chunk in (ONES * BIG, np.concatenate([ONES, ONES * BIG])):
            with pytest.raises(RnnServeError) as info:
                await svc.step(StepInput("acc", "accumulator", None, chunk))
            assert info.value.code == ErrorCode.INVALID_ARGUMENT
            assert "its outputs and state 's' came out NaN or Inf" in info.value.message
            assert "session is unchanged" in info.value.message
            assert svc.get_session("acc") == before
        # One step per chunk, so the sums are added in the offline run's order.
        rest = [
            await svc.step(StepInput("acc", "accumulator", None, x)) for x in (-BIG * ONES, ONES)
        ]
        accepted = np.concatenate([ONES, ONES * BIG, -BIG * ONES, ONES])
        expected = offline(repo, "accumulator", 1, accepted)[2:]
        np.testing.assert_array_equal(np.concatenate([r.y for r in rest]), expected)
        assert expected.tolist() == [[0.0] * 3, [1.0] * 3]

    serve(repo, body)


def test_predict_refuses_outputs_that_overflow_unless_allowed(repo: Path) -> None:
    """Stateless, but under the same rule as streamed chunks: with allow_non_finite off no NaN or
    Inf crosses the API; the message names the sequences of a batch that overflowed."""
    over = np.concatenate([ONES * BIG, ONES * BIG])  # finite input, the second sum overflows
    fine = np.concatenate([ONES, ONES])

    async def refused(svc: InferenceService) -> None:
        with pytest.raises(RnnServeError) as single:
            await svc.predict("accumulator", None, over)
        assert single.value.code == ErrorCode.INVALID_ARGUMENT
        assert "the input is finite but the outputs came out NaN or Inf" in single.value.message
        with pytest.raises(RnnServeError) as batch:
            await svc.predict("accumulator", None, np.stack([fine, over, fine, over]))
        assert "in sequence(s) 1, 3 of the batch" in batch.value.message
        y = await svc.predict("accumulator", None, np.stack([fine, fine]))
        np.testing.assert_array_equal(y, np.stack([offline(repo, "accumulator", 1, fine)] * 2))

    serve(repo, refused)

    async def allowed(svc: InferenceService) -> None:
        y = await svc.predict("accumulator", None, over)
        assert np.isinf(y[1]).all()
        assert np.isfinite(y[0]).all()

    serve(repo, allowed, limits={"allow_non_finite": True})


def test_forecast_refuses_a_rollout_that_overflows_and_says_how_far_is_finite(
    tmp_path: Path,
) -> None:
    """An autoregressive accumulator doubles its sum at every forecast step after the first
    (the session's last prediction): from 1e38 the third step is Inf. The refusal names the step
    and the longest finite horizon; the session is unchanged and that horizon is served."""
    from fixtures import write_accumulator

    write_accumulator(tmp_path, "acc", 1, autoregressive=True)

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("f", "acc", None, ONES * 1e38, start=True))
        before = svc.get_session("f")
        with pytest.raises(RnnServeError) as info:
            await svc.forecast("f", 5)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        assert "overflows to NaN or Inf at step 3 of 5" in info.value.message
        assert "a horizon of at most 2 stays finite" in info.value.message
        assert svc.get_session("f") == before
        y, step = await svc.forecast("f", 2)
        assert step == 1
        np.testing.assert_array_equal(y, np.float32([[1e38] * 3, [2e38] * 3]))
        await svc.step(StepInput("f", "acc", None, ONES * 2e38))  # the sum is now 3e38
        with pytest.raises(RnnServeError) as second:
            await svc.forecast("f", 3)
        assert "at step 2 of 3" in second.value.message
        assert "at most 1 stays" in second.value.message

    serve(tmp_path, body)


def test_step_and_export_reads_its_own_step_and_a_rejected_step_closes_nothing(
    repo: Path,
) -> None:
    """The export sits in the session's lane right behind its step: a chunk submitted before
    the caller resumes does not leak into the snapshot; a step the batcher rejects is neither
    exported nor followed by the close."""

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("acc", "accumulator", None, ONES, start=True))
        pair = asyncio.ensure_future(
            svc.step_and_export(StepInput("acc", "accumulator", None, ONES * 2))
        )
        await asyncio.sleep(0)  # the pair is submitted; now a later chunk queues behind it
        later = asyncio.ensure_future(svc.step(StepInput("acc", "accumulator", None, ONES * 4)))
        out, snap = await pair
        await later
        assert out.step == snap.info.step == 2
        np.testing.assert_array_equal(snap.states["s"], [3.0] * 3)  # 1 + 2, not 1 + 2 + 4
        await svc.step(StepInput("acc", "accumulator", None, ONES * BIG))
        before = svc.get_session("acc")
        with pytest.raises(RnnServeError) as info:
            await svc.step_and_export(StepInput("acc", "accumulator", None, ONES * BIG), close=True)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        assert svc.get_session("acc") == before  # still open, untouched
        out, snap = await svc.step_and_export(
            StepInput("acc", "accumulator", None, ONES), close=True
        )
        assert out.step == snap.info.step == 5
        with pytest.raises(RnnServeError) as gone:
            svc.get_session("acc")
        assert gone.value.code == ErrorCode.NOT_FOUND

    serve(repo, body)


def test_input_that_normalises_beyond_float32_runs_like_offline(repo: Path) -> None:
    """3e38 is finite, but the GRU's normalisation (std 0.5) takes it past float32's range: the
    model sees inf, saturates, and the step applies like the offline run (no INTERNAL error from
    an overflow warning)."""
    x = data(3, 3)
    x[1, 1] = 3e38

    async def body(svc: InferenceService) -> np.ndarray:
        outs = [await svc.step(StepInput("sat", "gru", None, x[:1], start=True))]
        outs += [await svc.step(StepInput("sat", "gru", None, x[t : t + 1])) for t in (1, 2)]
        return np.concatenate([o.y for o in outs])

    y = serve(repo, body)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, offline(repo, "gru", 2, x), atol=TOL, rtol=0)


def test_overflowing_rows_of_a_batch_fail_alone(repo: Path) -> None:
    """Steps of several sessions in one batch (the vectorised path), new sessions among them:
    only the overflowing rows fail; a session the failed chunk would have created does not exist,
    and the slot it had reserved is free again."""

    async def body(svc: InferenceService) -> None:
        for sid in ("ok", "big"):
            await svc.step(StepInput(sid, "accumulator", None, ONES * BIG, start=True))
        before = svc.get_session("big")
        created_before = svc.session_count()
        ok, big, new_big, new_ok = await asyncio.gather(
            svc.step(StepInput("ok", "accumulator", None, -ONES * BIG)),
            svc.step(StepInput("big", "accumulator", None, ONES * BIG)),
            svc.step(
                StepInput("nb", "accumulator", None, np.concatenate([ONES * BIG] * 2), start=True)
            ),
            svc.step(StepInput("nk", "accumulator", None, ONES, start=True)),
            return_exceptions=True,
        )
        for failed in (big, new_big):
            assert isinstance(failed, RnnServeError), failed
            assert failed.code == ErrorCode.INVALID_ARGUMENT
            assert "came out NaN or Inf" in failed.message
        assert not isinstance(ok, BaseException)
        assert not isinstance(new_ok, BaseException)
        np.testing.assert_array_equal(ok.y, [[0.0, 0.0, 0.0]])
        np.testing.assert_array_equal(new_ok.y, ONES)
        assert svc.get_session("big") == before
        with pytest.raises(RnnServeError) as info:
            svc.get_session("nb")
        assert info.value.code == ErrorCode.NOT_FOUND
        assert svc.session_count() == created_before + 1  # nk only
        # The frame path: the same check per row, with per-row results.
        fo = await svc.frame(
            FrameInput("accumulator", None, ["ok", "big", "nk"], np.stack([ONES * BIG] * 3),
                       np.zeros(3, bool), np.zeros(3, bool), np.full(3, -1))
        )  # fmt: skip
        codes = [None if e is None else e.code for e in fo.errors]
        assert codes == [None, ErrorCode.INVALID_ARGUMENT, None]
        assert fo.steps.tolist() == [3, 1, 2]
        assert np.isnan(fo.y[1]).all()
        assert np.isfinite(fo.y[[0, 2]]).all()
        assert svc.get_session("big") == before

        # Its slot went back to the pool: the model's last free slot (of 4) still takes a session.
        await svc.step(StepInput("last", "accumulator", None, ONES, start=True))
        assert svc.session_count() == 4

    serve(repo, body, sessions={"max_sessions_per_model": 4})


def test_frame_wide_errors_raise(repo: Path) -> None:
    async def body(svc: InferenceService) -> list[tuple[ErrorCode, str]]:
        bad = [
            FrameInput("nope", None, ["a"], np.zeros((1, 1, 3), np.float32), *_flags(1)),
            FrameInput("whole", None, ["a"], np.zeros((1, 1, 3), np.float32), *_flags(1)),
            FrameInput("gru", None, ["a", "b"], np.zeros((1, 1, 3), np.float32), *_flags(2)),
            FrameInput("gru", None, ["a", "a"], np.zeros((2, 1, 3), np.float32), *_flags(2)),
            FrameInput("gru", None, ["a"], np.zeros((1, 0, 3), np.float32), *_flags(1)),
        ]
        out = []
        for req in bad:
            with pytest.raises(RnnServeError) as info:
                await svc.frame(req)
            out.append((info.value.code, info.value.message))
        return out

    got = serve(repo, body)
    assert [c for c, _ in got] == [
        ErrorCode.NOT_FOUND,
        ErrorCode.FAILED_PRECONDITION,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.INVALID_ARGUMENT,
    ]
    assert "more than once" in got[3][1]


def _flags(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.ones(n, bool), np.zeros(n, bool), np.full(n, -1, np.int64)


# -- session lifecycle ----------------------------------------------------------------------------
def test_unknown_ended_and_assigned_sessions(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput("ghost", "gru", None, X[:1]))
        assert info.value.code == ErrorCode.NOT_FOUND
        assert "does not exist" in info.value.message
        out = await svc.step(StepInput("", "gru", None, X[:2], start=True))
        assert re.fullmatch(r"[0-9a-f]{32}", out.session_id)
        assert svc.get_session(out.session_id).step == 2
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput("", "gru", None, X[:2]))
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        await svc.step(StepInput(out.session_id, "gru", None, X[2:3], end=True))
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput(out.session_id, "gru", None, X[:1]))
        assert info.value.code == ErrorCode.NOT_FOUND
        assert "ended by its client" in info.value.message
        assert sample(svc, "rnnserve_sessions_ended_total", {"model": "gru", "reason": "end"}) == 1

    serve(repo, body)


def test_duplicate_start_resets_the_session(repo: Path) -> None:
    async def body(svc: InferenceService) -> tuple[Any, Any]:
        await svc.step(StepInput("dup", "gru", None, X[:9], start=True))
        again = await svc.step(StepInput("dup", "gru", None, X[9:14], start=True))
        return again, svc.session_count()

    again, count = serve(repo, body)
    assert again.step == 5
    assert count == 1
    np.testing.assert_allclose(again.y, offline(repo, "gru", 2, X[9:14]), atol=TOL, rtol=0)


def test_capacity_limit_rejects_new_sessions(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        for i in range(3):
            await svc.step(StepInput(f"c{i}", "gru", None, X[:2], start=True))
        t0 = time.perf_counter()
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput("c3", "gru", None, X[:2], start=True))
        assert time.perf_counter() - t0 < 0.5
        assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
        assert "maximum of 3 sessions" in info.value.message
        assert svc.session_count("gru") == 3
        # existing sessions keep working; a freed slot can be reused
        await svc.step(StepInput("c0", "gru", None, X[2:3], end=True))
        fo = await svc.frame(
            FrameInput("gru", None, ["n1", "n2", "c1"], np.stack([X[:1]] * 3), *_flags(3))
        )
        codes = [None if e is None else e.code for e in fo.errors]
        assert codes == [None, ErrorCode.RESOURCE_EXHAUSTED, None]
        assert svc.session_count("gru") == 3
        with pytest.raises(RnnServeError):
            svc.get_session("n2")

    serve(repo, body, sessions={"max_sessions_per_model": 3})


def test_lru_eviction_drops_the_least_recently_used(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        for sid in ("a", "b", "c"):
            await svc.step(StepInput(sid, "gru", None, X[:2], start=True))
            await asyncio.sleep(0.002)
        await svc.step(StepInput("a", "gru", None, X[2:3]))  # a is now the most recent
        await svc.step(StepInput("d", "gru", None, X[:2], start=True))
        live = sorted(i.session_id for i in svc.list_sessions("gru")[0])
        assert live == ["a", "c", "d"]
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput("b", "gru", None, X[:1]))
        assert info.value.code == ErrorCode.NOT_FOUND
        assert "LRU" in info.value.message
        assert sample(svc, "rnnserve_sessions_ended_total", {"model": "gru", "reason": "lru"}) == 1
        assert sample(svc, "rnnserve_active_sessions", {"model": "gru"}) == 3

    serve(repo, body, sessions={"max_sessions_per_model": 3, "eviction": "lru"})


def test_idle_sessions_expire(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("idle", "gru", None, X[:1], start=True))
        await svc.step(StepInput("busy", "gru", None, X[:1], start=True))
        for t in range(1, 9):
            await asyncio.sleep(0.1)
            await svc.step(StepInput("busy", "gru", None, X[t : t + 1]))
        assert svc.get_session("busy").step == 9
        with pytest.raises(RnnServeError) as info:
            await svc.step(StepInput("idle", "gru", None, X[:1]))
        assert info.value.code == ErrorCode.NOT_FOUND
        assert "idle" in info.value.message
        assert "expired" in info.value.message
        assert sample(svc, "rnnserve_sessions_ended_total", {"model": "gru", "reason": "ttl"}) == 1

    serve(repo, body, sessions={"idle_ttl_s": 0.35, "sweep_interval_s": 0.05})


def test_arena_shrinks_after_a_burst_and_the_survivors_continue(repo: Path) -> None:
    """A burst grows the arena past its initial 1,024 slots; once it is over, the sweeper moves
    the survivors (created last, so in the highest slots) down and frees the rest."""
    N = 1100
    keep = [N - 4, N - 3, N - 2, N - 1]
    ids = [f"burst-{i}" for i in range(N)]
    xs = np.stack([data(700 + i, 6) for i in range(N)])
    labels = {"model": "gru"}
    no_expect = np.full(N, -1, np.int64)

    async def body(svc: InferenceService) -> tuple[float, float, np.ndarray]:
        first = await svc.frame(
            FrameInput("gru", None, ids, xs[:, :2], np.ones(N, bool), np.zeros(N, bool), no_expect)
        )
        assert first.errors == [None] * N
        grown = sample(svc, "rnnserve_state_arena_bytes", labels)
        end = np.ones(N, bool)
        end[keep] = False  # everyone else ends with this step
        second = await svc.frame(
            FrameInput("gru", None, ids, xs[:, 2:3], np.zeros(N, bool), end, no_expect)
        )
        assert second.errors == [None] * N
        for _ in range(100):  # the sweeper runs every 50 ms
            if sample(svc, "rnnserve_state_arena_bytes", labels) < grown:
                break
            await asyncio.sleep(0.05)
        shrunk = sample(svc, "rnnserve_state_arena_bytes", labels)
        rest = [await svc.step(StepInput(ids[i], "gru", None, xs[i, 3:])) for i in keep]
        assert [out.step for out in rest] == [6] * 4
        y = np.concatenate(
            [first.y[keep], second.y[keep], np.stack([out.y for out in rest])], axis=1
        )
        return grown, shrunk, y

    grown, shrunk, y = serve(repo, body, sessions={"sweep_interval_s": 0.05})
    v1 = 1024 * H * 4  # gru version 1's arena, untouched: the series adds up every version
    assert grown == v1 + 2048 * H * 4
    assert shrunk == v1 + 1024 * H * 4
    np.testing.assert_allclose(y, offline(repo, "gru", 2, xs[keep]), atol=TOL, rtol=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux")
def test_ort_workers_run_at_the_configured_niceness(repo: Path) -> None:
    """runtime.worker_nice: the threads that run ONNX Runtime are nicer than the event loop."""

    def nice_of(tid: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, tid)

    def threads() -> set[int]:
        return {int(t) for t in os.listdir("/proc/self/task")}

    before = threads()

    async def body(svc: InferenceService) -> tuple[int, set[int], set[int]]:
        loop_nice = nice_of(threading.get_native_id())
        x = data(5, 4)
        out = await svc.step(StepInput("nice", "gru", None, x, start=True))  # on a worker
        np.testing.assert_allclose(out.y, offline(repo, "gru", 2, x), atol=TOL, rtol=0)
        workers = threads() - before  # the service's worker threads (they load the models)
        return loop_nice, {nice_of(t) for t in workers}, workers

    loop_nice, worker_nices, workers = serve(
        repo,
        body,
        runtime={"worker_nice": max(7, nice_of(threading.get_native_id()) + 1)},
        batcher={"inline_max_steps": 0},
    )
    assert workers  # the pool started its threads for this service
    assert worker_nices == {max(7, loop_nice + 1)}
    assert nice_of(threading.get_native_id()) == loop_nice  # the loop thread kept its priority


def test_admin_get_list_reset_close(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("m1", "gru", None, X[:4], start=True))
        await svc.step(StepInput("m2", "counter", None, X[:2], start=True))
        info = svc.get_session("m1")
        assert (info.model, info.version, info.step) == ("gru", 2, 4)
        assert info.created_unix <= info.last_active_unix <= time.time()
        infos, total = svc.list_sessions()
        assert total == 2
        assert {i.session_id for i in infos} == {"m1", "m2"}
        infos, total = svc.list_sessions("counter", limit=1)
        assert total == 1
        assert infos[0].session_id == "m2"
        infos, total = svc.list_sessions(limit=1)
        assert total == 2
        assert len(infos) == 1
        assert (await svc.reset_session("m1")).step == 0
        y = (await svc.step(StepInput("m1", "gru", None, X[:3]))).y
        np.testing.assert_allclose(y, offline(repo, "gru", 2, X[:3]), atol=TOL, rtol=0)
        closed = await svc.close_session("m1")
        assert closed.step == 3
        with pytest.raises(RnnServeError) as info_err:
            svc.get_session("m1")
        assert info_err.value.code == ErrorCode.NOT_FOUND
        assert "closed" in info_err.value.message
        labels = {"model": "gru", "reason": "close"}
        assert sample(svc, "rnnserve_sessions_ended_total", labels) == 1

    serve(repo, body)


def test_export_import_round_trip_between_services(repo: Path) -> None:
    x = data(11, 30)

    async def first(svc: InferenceService) -> tuple[SessionSnapshot, np.ndarray]:
        a = await svc.step(StepInput("mv", "gru", None, x[:12], start=True))
        snap = await svc.export_session("mv")
        return snap, a.y

    snap, y1 = serve(repo, first)
    assert snap.info.step == 12
    assert snap.states["h"].shape == (1, H)
    assert LAST_OUTPUT in snap.states

    async def second(svc: InferenceService) -> None:
        info = await svc.import_session(snap)
        assert (info.session_id, info.step, info.version) == ("mv", 12, 2)
        fc = (await svc.forecast("mv", 3))[0]
        np.testing.assert_allclose(fc, rollout(repo, "gru", 2, x[:12], 3), atol=TOL, rtol=0)
        y2 = (await svc.step(StepInput("mv", "gru", None, x[12:]))).y
        np.testing.assert_allclose(
            np.concatenate([y1, y2]), offline(repo, "gru", 2, x), atol=TOL, rtol=0
        )
        with pytest.raises(RnnServeError) as info_err:
            await svc.import_session(snap)
        assert info_err.value.code == ErrorCode.ALREADY_EXISTS
        again = await svc.import_session(snap, overwrite=True)
        assert again.step == 12
        assert svc.session_count() == 1
        labels = {"model": "gru", "reason": "replaced"}
        assert sample(svc, "rnnserve_sessions_ended_total", labels) == 1
        bad = SessionSnapshot(snap.info, {"h": np.zeros((2, H), np.float32)})
        with pytest.raises(RnnServeError) as info_err:
            await svc.import_session(bad, overwrite=True)
        assert info_err.value.code == ErrorCode.INVALID_ARGUMENT
        assert svc.get_session("mv").step == 12

    serve(repo, second)


def test_import_onto_a_full_model_keeps_the_session_it_would_replace(repo: Path) -> None:
    """overwrite=True onto another, full version: RESOURCE_EXHAUSTED, and the live session it
    was meant to replace is still there, unchanged (room is found before anything is removed);
    with eviction=lru the least recently used session of the target makes room instead."""
    x = data(21, 4)

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("mover", "gru", 1, x, start=True))
        await svc.step(StepInput("occupant", "gru", 2, x[:2], start=True))
        snap = await svc.export_session("mover")
        before = svc.get_session("mover")
        moved = SessionSnapshot(dataclasses.replace(snap.info, version=2), snap.states)
        with pytest.raises(RnnServeError) as info:
            await svc.import_session(moved, overwrite=True)
        assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
        assert svc.get_session("mover") == before
        assert (await svc.export_session("mover")).states["h"].tolist() == snap.states["h"].tolist()
        labels = {"model": "gru", "reason": "replaced"}
        assert sample(svc, "rnnserve_sessions_ended_total", labels) == 0

    serve(repo, body, sessions={"max_sessions_per_model": 1})

    async def lru(svc: InferenceService) -> None:
        await svc.step(StepInput("mover", "gru", 1, x, start=True))
        await svc.step(StepInput("occupant", "gru", 2, x[:2], start=True))
        snap = await svc.export_session("mover")
        moved = SessionSnapshot(dataclasses.replace(snap.info, version=2), snap.states)
        info = await svc.import_session(moved, overwrite=True)
        assert (info.version, info.step) == (2, 4)
        assert [s.session_id for s in svc.list_sessions()[0]] == ["mover"]
        for reason in ("replaced", "lru"):
            assert sample(svc, "rnnserve_sessions_ended_total", {"model": "gru", "reason": reason})
        after = await svc.export_session("mover")
        assert after.states["h"].tolist() == snap.states["h"].tolist()

    serve(repo, lru, sessions={"max_sessions_per_model": 1, "eviction": "lru"})


def test_import_refuses_snapshots_no_session_could_continue_from(repo: Path) -> None:
    """NaN/Inf in a state (every later step would be refused), a step count near int64's end,
    a creation time that is not a time: INVALID_ARGUMENT, nothing created. A snapshot of a
    session with no output yet (all-NaN last output) is fine, and a creation time ahead of this
    server's clock is taken as now."""

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("src", "accumulator", None, np.ones((2, 3), np.float32), True))
        good = await svc.export_session("src")
        await svc.close_session("src")
        info = good.info

        def with_state(value: float) -> SessionSnapshot:
            return SessionSnapshot(info, {**good.states, "s": np.array([1, value, 2], np.float32)})

        bad = {
            "NaN state": with_state(np.nan),
            "Inf state": with_state(np.inf),
            "Inf last output": SessionSnapshot(
                info, {**good.states, LAST_OUTPUT: np.array([0, np.inf, 0], np.float32)}
            ),
            "huge step": SessionSnapshot(dataclasses.replace(info, step=2**63 - 1), good.states),
            "NaN created": SessionSnapshot(
                dataclasses.replace(info, created_unix=float("nan")), good.states
            ),
            "negative created": SessionSnapshot(
                dataclasses.replace(info, created_unix=-5.0), good.states
            ),
        }
        for what, snap in bad.items():
            with pytest.raises(RnnServeError) as err:
                await svc.import_session(snap)
            assert err.value.code == ErrorCode.INVALID_ARGUMENT, what
            assert "src" in err.value.message, what
            assert svc.session_count() == 0, what
        fresh = SessionSnapshot(
            dataclasses.replace(info, created_unix=time.time() + 1e6),
            {**good.states, LAST_OUTPUT: np.full(3, np.nan, np.float32)},
        )
        imported = await svc.import_session(fresh)
        assert imported.created_unix <= time.time()
        y = (await svc.step(StepInput("src", "accumulator", None, np.ones((1, 3), np.float32)))).y
        assert y.tolist() == [[3.0] * 3]

    serve(repo, body)


def test_import_of_non_finite_state_is_allowed_when_non_finite_values_are(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("src", "accumulator", None, np.ones((1, 3), np.float32), True))
        good = await svc.export_session("src")
        nan = SessionSnapshot(good.info, {**good.states, "s": np.full(3, np.nan, np.float32)})
        assert (await svc.import_session(nan, overwrite=True)).step == 1

    serve(repo, body, limits={"allow_non_finite": True})


def test_default_version_follows_a_session_to_its_version_and_its_input_width(
    tmp_path: Path,
) -> None:
    """v1 takes 3 features, v2 (the latest) 4. A step naming no version for a session on v1 is
    checked against v1's width: the right chunk is served, a chunk of v2's width is refused
    with INVALID_ARGUMENT on its own, and other sessions batched with it are not disturbed."""
    from fixtures import write_accumulator

    write_accumulator(tmp_path, "acc", 1, features=3)
    write_accumulator(tmp_path, "acc", 2, features=4)

    async def body(svc: InferenceService) -> None:
        for sid in ("old", "other"):
            await svc.step(StepInput(sid, "acc", 1, np.ones((1, 3), np.float32), start=True))
        y = (await svc.step(StepInput("old", "acc", None, np.ones((1, 3), np.float32)))).y
        assert y.tolist() == [[2.0] * 3]
        results = await asyncio.gather(
            svc.step(StepInput("other", "acc", 1, np.ones((2, 3), np.float32))),
            svc.step(StepInput("old", "acc", None, np.ones((1, 4), np.float32))),
            svc.step(StepInput("other", "acc", None, np.ones((1, 3), np.float32))),
            return_exceptions=True,
        )
        assert isinstance(results[1], RnnServeError)
        assert results[1].code == ErrorCode.INVALID_ARGUMENT
        assert "3" in results[1].message
        assert [r.y.tolist() for r in (results[0], results[2])] == [  # type: ignore[union-attr]
            [[2.0] * 3, [3.0] * 3],
            [[4.0] * 3],
        ]
        assert svc.get_session("old").step == 2

    serve(tmp_path, body)


def test_one_id_never_lives_on_two_model_versions(repo: Path) -> None:
    """Routing picks a version when a chunk is submitted; work queued ahead of it may put the
    id elsewhere before it runs. A start that would then create a second session of the same id
    is refused with FAILED_PRECONDITION: (a) a start queued behind an import that moves the
    session to another version; (b) a start for another model queued behind an admin operation
    that is itself behind the id's creation on the first model."""
    x = data(31, 3)
    ones = np.ones((1, 3), np.float32)

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("mv", "gru", 2, x[:2], start=True))
        snap = await svc.export_session("mv")
        to_v1 = SessionSnapshot(dataclasses.replace(snap.info, version=1), snap.states)
        busy, imported, started = await asyncio.gather(  # the import waits for the busy step
            svc.step(StepInput("mv", "gru", 2, np.tile(x[:1], (500, 1)))),
            svc.import_session(to_v1, overwrite=True),
            svc.step(StepInput("mv", "gru", None, x[2:], start=True)),
            return_exceptions=True,
        )
        assert isinstance(busy, StepOutput)
        assert busy.step == 502
        assert isinstance(imported, SessionInfo)
        assert imported.version == 1
        assert isinstance(started, RnnServeError), started
        assert started.code == ErrorCode.FAILED_PRECONDITION
        assert "version 1" in started.message
        assert [(i.session_id, i.version, i.step) for i in svc.list_sessions()[0]] == [("mv", 1, 2)]

        _, exported, second = await asyncio.gather(
            svc.step(StepInput("two", "accumulator", None, ones, start=True)),
            svc.export_session("two"),
            svc.step(StepInput("two", "gru", None, x[:1], start=True)),
            return_exceptions=True,
        )
        assert isinstance(exported, SessionSnapshot)
        assert exported.info.model == "accumulator"
        assert isinstance(second, RnnServeError), second
        assert second.code == ErrorCode.FAILED_PRECONDITION
        assert "accumulator" in second.message
        assert svc.get_session("two").model == "accumulator"
        assert svc.session_count() == 2

    serve(repo, body)


def test_forecast_leaves_the_session_unchanged(repo: Path) -> None:
    x = data(12, 20)

    async def body(svc: InferenceService) -> None:
        await svc.step(StepInput("fc", "gru", None, x[:1], start=True))
        await svc.step(StepInput("fc", "gru", None, x[1:10]))
        before = svc.get_session("fc")
        y, step = await svc.forecast("fc", 6)
        assert step == 10
        assert svc.get_session("fc") == before
        np.testing.assert_allclose(y, rollout(repo, "gru", 2, x[:10], 6), atol=TOL, rtol=0)
        rest = (await svc.step(StepInput("fc", "gru", None, x[10:]))).y
        np.testing.assert_allclose(rest, offline(repo, "gru", 2, x)[10:], atol=TOL, rtol=0)
        # errors
        await svc.step(StepInput("cnt", "counter", None, x[:2], start=True))
        cases = [
            ("cnt", 2, ErrorCode.FAILED_PRECONDITION),
            ("fc", 0, ErrorCode.INVALID_ARGUMENT),
            ("fc", 10_001, ErrorCode.INVALID_ARGUMENT),
            ("nope", 2, ErrorCode.NOT_FOUND),
        ]
        for sid, horizon, code in cases:
            with pytest.raises(RnnServeError) as info:
                await svc.forecast(sid, horizon)
            assert info.value.code == code, info.value.message
        await svc.reset_session("fc")
        with pytest.raises(RnnServeError) as info:
            await svc.forecast("fc", 2)
        assert info.value.code == ErrorCode.FAILED_PRECONDITION
        assert "no prediction yet" in info.value.message

    serve(repo, body)


# -- shutdown and metrics -------------------------------------------------------------------------
def test_close_drains_queued_work_then_refuses(repo: Path) -> None:
    async def main() -> None:
        svc = await InferenceService.create(service_settings(repo), registry=CollectorRegistry())
        xs = [data(500 + i, 20) for i in range(32)]
        tasks = [
            asyncio.ensure_future(svc.step(StepInput(f"d{i}", "gru", None, xs[i], start=True)))
            for i in range(32)
        ]
        await asyncio.sleep(0)  # every step is submitted
        await svc.close(10.0)
        for i, t in enumerate(tasks):
            np.testing.assert_allclose(
                t.result().y, offline(repo, "gru", 2, xs[i]), atol=TOL, rtol=0
            )
        for call in (
            svc.step(StepInput("late", "gru", None, xs[0], start=True)),
            svc.predict("whole", None, xs[0]),
        ):
            with pytest.raises(RnnServeError) as info:
                await call
            assert info.value.code == ErrorCode.UNAVAILABLE
            assert "shutting down" in info.value.message

    asyncio.run(main())


def test_metrics_move_with_the_work(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        info = {"model": "gru", "version": "2", "variant": "gru", "provider": "cpu",
                "streaming": "true", "step_graph": "true"}  # fmt: skip
        assert sample(svc, "rnnserve_model_info", info) == 1
        for i in range(5):
            await svc.step(StepInput(f"mx{i}", "gru", None, X[:3], start=True))
        assert sample(svc, "rnnserve_sessions_created_total", {"model": "gru"}) == 5
        assert sample(svc, "rnnserve_active_sessions", {"model": "gru"}) == 5
        assert sample(svc, "rnnserve_state_bytes", {"model": "gru"}) == 5 * H * 4
        assert sample(svc, "rnnserve_queue_delay_seconds_count", {"model": "gru"}) == 5
        assert sample(svc, "rnnserve_ort_run_seconds_count", {"model": "gru"}) == 5
        await svc.step(StepInput("mx0", "gru", None, X[3:4], end=True))
        assert sample(svc, "rnnserve_session_steps_count", {"model": "gru"}) == 1
        assert sample(svc, "rnnserve_session_steps_sum", {"model": "gru"}) == 4
        assert sample(svc, "rnnserve_session_duration_seconds_count", {"model": "gru"}) == 1
        assert sample(svc, "rnnserve_active_sessions", {"model": "gru"}) == 4
        assert sample(svc, "rnnserve_state_bytes", {"model": "gru"}) == 4 * H * 4
        # request-level helpers used by the front ends
        svc.metrics.observe_request("gru", "step", ErrorCode.OK, 0.001)
        svc.metrics.count_steps("gru", "INVALID_ARGUMENT", 7)
        labels = {"model": "gru", "method": "step", "code": "OK"}
        assert sample(svc, "rnnserve_requests_total", labels) == 1
        labels = {"model": "gru", "code": "INVALID_ARGUMENT"}
        assert sample(svc, "rnnserve_steps_total", labels) == 7

    serve(repo, body)


def test_cuda_falls_back_to_cpu_with_one_log_line(
    repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rnnserve_server import runtime

    if ort_has_gpu():
        pytest.skip("a usable GPU is present: nothing falls back")
    monkeypatch.setattr(runtime, "_cuda_usable", None)
    caplog.set_level(logging.INFO)

    async def body(svc: InferenceService) -> None:
        labels = {"model": "gru", "version": "2", "variant": "gru", "provider": "cpu",
                  "streaming": "true", "step_graph": "true"}  # fmt: skip
        assert sample(svc, "rnnserve_model_info", labels) == 1
        out = await svc.step(StepInput("g", "gru", None, X[:3], start=True))
        np.testing.assert_allclose(out.y, offline(repo, "gru", 2, X[:3]), atol=TOL, rtol=0)

    serve(repo, body, runtime={"providers": ["cuda", "cpu"]})
    lines = [r for r in caplog.records if "CUDA" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert "running on CPU" in lines[0].getMessage()


def ort_has_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU (then CUDA may really be used)."""
    return Path("/dev/nvidia0").exists()
