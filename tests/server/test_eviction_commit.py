"""LRU eviction takes effect only when the creating row is applied.

With eviction=lru and a full model, a start evicts the least recently used idle session, but only
once its chunk has run and its result is accepted: a start that is refused (its finite input
overflows the model to Inf, or ONNX Runtime fails) leaves every other session, and the metrics,
exactly as they were. Victims are held in their session lanes while the run is in flight, so no
other request steps (or closes) a session that may be evicted under it.

Uses the fixture `accumulator` model: its state sums its inputs, so two steps of 3e38 overflow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures import build_repository, service_settings
from prometheus_client import CollectorRegistry

from rnnserve_server.errors import ErrorCode, RnnServeError
from rnnserve_server.runtime import States
from rnnserve_server.service import InferenceService
from rnnserve_server.types import FloatArray, FrameInput, StepInput

MODEL = "accumulator"
BIG = 3e38  # finite float32, but two of them overflow the accumulator's sum
ONES = np.ones((1, 3), np.float32)
OVERFLOW = np.full((2, 3), BIG, np.float32)  # a finite chunk the model turns into Inf
POISON = 1234.0  # the patched runner fails any run whose input holds this value
STATE_BYTES = 3 * 4  # the accumulator's state: float32 [3]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


def serve(
    repo: Path, body: Callable[[InferenceService], Awaitable[Any]], max_sessions: int, **kw: Any
) -> Any:
    """Run `body(service)` on a fresh service whose models hold `max_sessions` sessions each and
    evict the least recently used one when full."""

    async def main() -> Any:
        settings = service_settings(
            repo, sessions={"max_sessions_per_model": max_sessions, "eviction": "lru"}, **kw
        )
        svc = await InferenceService.create(settings, registry=CollectorRegistry())
        try:
            return await body(svc)
        finally:
            await svc.close(5.0)

    return asyncio.run(main())


def metrics(svc: InferenceService) -> dict[str, float]:
    """Every session metric of the model that eviction moves."""

    def get(name: str, **labels: str) -> float:
        value = svc.metrics.registry.get_sample_value(name, {"model": MODEL, **labels})
        return 0.0 if value is None else value

    return {
        "lru": get("rnnserve_sessions_ended_total", reason="lru"),
        "active": get("rnnserve_active_sessions"),
        "bytes": get("rnnserve_state_bytes"),
        "created": get("rnnserve_sessions_created_total"),
        "ended_steps": get("rnnserve_session_steps_count"),
    }


async def start(svc: InferenceService, sid: str, x: np.ndarray) -> None:
    await svc.step(StepInput(sid, MODEL, None, x, start=True))
    await asyncio.sleep(0.002)  # distinct last-activity times: a well-defined LRU order


async def state(svc: InferenceService, sid: str) -> list[float]:
    snap = await svc.export_session(sid)
    values: list[float] = snap.states["s"].tolist()
    return values


async def rejected(call: Awaitable[Any]) -> RnnServeError:
    with pytest.raises(RnnServeError) as info:
        await call
    return info.value


def assert_gone(svc: InferenceService, sid: str, evicted: bool) -> None:
    with pytest.raises(RnnServeError) as info:
        svc.get_session(sid)
    assert info.value.code == ErrorCode.NOT_FOUND
    assert ("LRU" in info.value.message) == evicted, info.value.message


def live(svc: InferenceService) -> list[str]:
    return sorted(i.session_id for i in svc.list_sessions(MODEL)[0])


def patch_runner(svc: InferenceService, delay_s: float = 0.0) -> None:
    """Make the accumulator's runner fail (like a broken model) on input holding POISON, and
    take `delay_s` longer for input holding BIG (a run that stays in flight for a while)."""
    runner = svc._model(MODEL, None).runner
    real = runner.run

    def run(x: FloatArray, states: States) -> tuple[FloatArray, States]:
        if (x == POISON).any():
            raise RuntimeError("injected ONNX Runtime failure")
        if delay_s and (x == BIG).any():
            time.sleep(delay_s)
        return real(x, states)

    runner.run = run  # type: ignore[method-assign]


# -- one session ---------------------------------------------------------------------------------
def test_rejected_start_on_a_full_lru_model_evicts_nobody(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        await start(svc, "innocent", np.concatenate([ONES, 2 * ONES]))
        before, s_before = svc.get_session("innocent"), await state(svc, "innocent")
        m_before = metrics(svc)
        err = await rejected(svc.step(StepInput("overflow", MODEL, None, OVERFLOW, start=True)))
        assert err.code == ErrorCode.INVALID_ARGUMENT
        assert "the chunk was not applied" in err.message
        assert svc.get_session("innocent") == before  # alive, same step count and timestamps
        assert await state(svc, "innocent") == s_before == [3.0] * 3
        assert metrics(svc) == m_before
        assert_gone(svc, "overflow", evicted=False)
        assert live(svc) == ["innocent"]
        # It goes on from where it was.
        out = await svc.step(StepInput("innocent", MODEL, None, ONES))
        assert out.step == 3
        assert out.y.tolist() == [[4.0] * 3]

    serve(repo, body, max_sessions=1)


def test_start_whose_run_fails_on_a_full_lru_model_evicts_nobody(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        patch_runner(svc)
        await start(svc, "innocent", ONES)
        before, m_before = svc.get_session("innocent"), metrics(svc)
        err = await rejected(
            svc.step(StepInput("broken", MODEL, None, np.full((1, 3), POISON), start=True))
        )
        assert err.code == ErrorCode.INTERNAL
        assert svc.get_session("innocent") == before
        assert await state(svc, "innocent") == [1.0] * 3
        assert metrics(svc) == m_before
        assert_gone(svc, "broken", evicted=False)

    serve(repo, body, max_sessions=1)


def test_accepted_start_on_a_full_lru_model_evicts_exactly_the_lru_session(repo: Path) -> None:
    async def body(svc: InferenceService) -> None:
        await start(svc, "a", ONES)
        await start(svc, "b", 2 * ONES)
        await svc.step(StepInput("a", MODEL, None, ONES))  # b is now the least recently used
        m_before = metrics(svc)
        out = await svc.step(StepInput("c", MODEL, None, np.concatenate([ONES, 4 * ONES]), True))
        assert (out.step, out.y.tolist()) == (2, [[1.0] * 3, [5.0] * 3])
        assert live(svc) == ["a", "c"]
        assert_gone(svc, "b", evicted=True)
        assert await state(svc, "a") == [2.0] * 3
        assert await state(svc, "c") == [5.0] * 3
        assert metrics(svc) == {
            "lru": m_before["lru"] + 1,
            "active": 2,
            "bytes": 2 * STATE_BYTES,
            "created": m_before["created"] + 1,
            "ended_steps": m_before["ended_steps"] + 1,
        }

    serve(repo, body, max_sessions=2)


# -- several sessions created at once -----------------------------------------------------------
def test_frame_creating_sessions_evicts_only_for_the_accepted_rows(repo: Path) -> None:
    """A full model of 4 (a..d, a least recently used); a frame steps d and starts n1, n2, n3,
    whose n2 overflows: n1 and n3 take the places of a and b; c, the third candidate, stays."""

    async def body(svc: InferenceService) -> None:
        for i, sid in enumerate("abcd"):
            await start(svc, sid, (i + 1) * ONES)
        c_before, m_before = svc.get_session("c"), metrics(svc)
        ids = ["d", "n1", "n2", "n3"]
        x = np.stack([np.ones((2, 3)), np.ones((2, 3)), OVERFLOW, np.full((2, 3), 2.0)])
        res = await svc.frame(
            FrameInput(
                MODEL, None, ids, x.astype(np.float32),
                start=np.array([False, True, True, True]),
                end=np.zeros(4, bool),
                expected_step=np.full(4, -1, np.int64),
            )
        )  # fmt: skip
        codes = [None if e is None else e.code for e in res.errors]
        assert codes == [None, None, ErrorCode.INVALID_ARGUMENT, None]
        assert res.steps.tolist() == [3, 2, -1, 2]
        assert res.y[3].tolist() == [[2.0] * 3, [4.0] * 3]
        assert live(svc) == ["c", "d", "n1", "n3"]
        for sid in ("a", "b"):
            assert_gone(svc, sid, evicted=True)
        assert_gone(svc, "n2", evicted=False)
        assert svc.get_session("c") == c_before
        assert await state(svc, "c") == [3.0] * 3
        assert await state(svc, "d") == [6.0] * 3
        assert await state(svc, "n1") == [2.0] * 3
        assert await state(svc, "n3") == [4.0] * 3
        m = metrics(svc)
        assert (m["lru"], m["active"], m["bytes"]) == (m_before["lru"] + 2, 4, 4 * STATE_BYTES)
        assert m["created"] == m_before["created"] + 2

    serve(repo, body, max_sessions=4)


def test_batched_starts_evict_only_for_the_accepted_rows(repo: Path) -> None:
    """Starts of three sessions sent together (one batch) on a full model of 3: the one that
    overflows takes no place, so only the two least recently used sessions go."""

    async def body(svc: InferenceService) -> None:
        for i, sid in enumerate("abc"):
            await start(svc, sid, (i + 1) * ONES)
        m_before = metrics(svc)
        chunks = {"n1": np.ones((2, 3), np.float32), "n2": OVERFLOW, "n3": 2 * ONES.repeat(2, 0)}
        outs = await asyncio.gather(
            *(svc.step(StepInput(sid, MODEL, None, x, start=True)) for sid, x in chunks.items()),
            return_exceptions=True,
        )
        assert isinstance(outs[1], RnnServeError)
        assert outs[1].code == ErrorCode.INVALID_ARGUMENT
        assert [o.step for o in (outs[0], outs[2])] == [2, 2]  # type: ignore[union-attr]
        assert live(svc) == ["c", "n1", "n3"]
        assert_gone(svc, "a", evicted=True)
        assert_gone(svc, "b", evicted=True)
        assert await state(svc, "c") == [3.0] * 3
        assert await state(svc, "n3") == [4.0] * 3
        m = metrics(svc)
        assert (m["lru"], m["active"], m["bytes"]) == (m_before["lru"] + 2, 3, 3 * STATE_BYTES)

    serve(repo, body, max_sessions=3)


# -- the victim while the creating run is in flight ----------------------------------------------
SLOW = {
    "batcher": {"inline_max_steps": 0, "parallel_light_batches": "on"},
    "runtime": {"providers": ["cpu"], "intra_op_threads": 1, "run_workers": 2},
}


def test_step_on_the_candidate_waits_for_a_start_that_is_then_rejected(repo: Path) -> None:
    """While a start that may evict `innocent` runs, a step on `innocent` waits; the start is
    refused, so the step applies to the intact session."""

    async def body(svc: InferenceService) -> None:
        patch_runner(svc, delay_s=0.3)
        await start(svc, "innocent", ONES)
        creating = asyncio.ensure_future(
            svc.step(StepInput("overflow", MODEL, None, OVERFLOW, start=True))
        )
        await asyncio.sleep(0.1)  # its run is in flight now
        out = await svc.step(StepInput("innocent", MODEL, None, 2 * ONES))
        assert creating.done()  # the step waited for it
        err = await rejected(creating)
        assert err.code == ErrorCode.INVALID_ARGUMENT
        assert (out.step, out.y.tolist()) == (2, [[3.0] * 3])
        assert live(svc) == ["innocent"]
        assert metrics(svc)["lru"] == 0

    serve(repo, body, max_sessions=1, **SLOW)


def test_step_on_the_lru_session_waits_for_the_start_that_evicts_it(repo: Path) -> None:
    """The same with an accepted start: the waiting step finds the session evicted, and the new
    session's state (in the evicted one's slot) is not touched by it."""

    async def body(svc: InferenceService) -> None:
        patch_runner(svc, delay_s=0.3)
        await start(svc, "old", ONES)
        x = np.array([[BIG, 1, 1], [-BIG, 1, 1]], np.float32)  # finite sums all along
        creating = asyncio.ensure_future(svc.step(StepInput("new", MODEL, None, x, start=True)))
        await asyncio.sleep(0.1)
        err = await rejected(svc.step(StepInput("old", MODEL, None, 5 * ONES)))
        assert creating.done()
        assert err.code == ErrorCode.NOT_FOUND
        assert "LRU" in err.message
        assert (await creating).step == 2
        assert live(svc) == ["new"]
        assert await state(svc, "new") == [0.0, 2.0, 2.0]
        assert svc.get_session("new").step == 2
        assert metrics(svc)["lru"] == 1

    serve(repo, body, max_sessions=1, **SLOW)
