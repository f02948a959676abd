"""The batcher on its own: how batches form, per-session order, errors, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures import build_repository, offline
from prometheus_client import CollectorRegistry

from rnnserve_server import repository
from rnnserve_server.batcher import Batcher, FrameResult, StepResult
from rnnserve_server.config import RuntimeSettings
from rnnserve_server.errors import ErrorCode, NotFound, RnnServeError
from rnnserve_server.lanes import SessionLanes
from rnnserve_server.metrics import Metrics
from rnnserve_server.runtime import ModelRunner, States
from rnnserve_server.store import RecentEnds, SessionStore
from rnnserve_server.types import FloatArray

TOL = 1e-5
POISON = 1234.0  # FailingRunner fails any run whose input contains this value


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


class FailingRunner(ModelRunner):
    """A real runner that fails like a broken model would, for chosen inputs (fault injection)."""

    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        if (x == POISON).any():
            raise RuntimeError("injected ONNX Runtime failure")
        return super().run(x, states)


@dataclass
class Rig:
    batcher: Batcher
    store: SessionStore
    metrics: Metrics

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model": "gru"})
        return 0.0 if value is None else value

    def step(
        self, sid: str, x: np.ndarray, start: bool = False, end: bool = False
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batcher.submit_step(sid, x, start, end, None, future)
        return future

    def frame(self, ids: list[str], x: np.ndarray, start: bool) -> asyncio.Future[Any]:
        n = len(ids)
        return self.batcher.submit(
            ids, x, np.full(n, start), np.zeros(n, bool), np.full(n, -1, np.int64), frame=True
        )


@asynccontextmanager
async def rig(
    repo: Path, runner_cls: type[ModelRunner] = ModelRunner, **kw: Any
) -> AsyncIterator[Rig]:
    mv = repository.scan(repo, ["gru"])["gru"][2]
    runner = runner_cls(mv, RuntimeSettings(providers=["cpu"], intra_op_threads=1))
    metrics = Metrics(CollectorRegistry())
    store = SessionStore("gru", 2, runner.states, 1000, metrics, RecentEnds())
    executor = ThreadPoolExecutor(2)
    options: dict[str, Any] = {"max_batch_size": 256, "max_queue_delay_ms": 0.0}
    options.update(kw)
    batcher = Batcher(
        runner, store, SessionLanes(), executor, metrics, evict_lru=False,
        describe_missing=lambda sid, _store: NotFound(f"session {sid!r} does not exist"),
        **options,
    )  # fmt: skip
    batcher.start()
    try:
        yield Rig(batcher, store, metrics)
    finally:
        await batcher.drain()
        await batcher.stop()
        executor.shutdown()


def data(seed: int, T: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(T, 3)).astype(np.float32)


def test_chunks_submitted_together_share_one_run_per_length(repo: Path) -> None:
    xs = [data(i, 3) for i in range(12)]

    async def main() -> None:
        async with rig(repo) as r:
            # Submitted without yielding: all are ready when the loop next runs. Three lengths.
            futs = [r.step(f"s{i}", xs[i][: 1 + i % 3], start=True) for i in range(12)]
            results: list[StepResult] = await asyncio.gather(*futs)
            assert r.sample("rnnserve_ort_run_seconds_count") == 3
            assert r.sample("rnnserve_batch_sessions_sum") == 12
            for i, res in enumerate(results):
                T = 1 + i % 3
                assert res.step == T
                np.testing.assert_allclose(res.y, offline(repo, "gru", 2, xs[i][:T]), atol=TOL)

    asyncio.run(main())


def test_max_batch_size_splits_runs_and_frames(repo: Path) -> None:
    xs = np.stack([data(50 + i, 2) for i in range(10)])
    ids = [f"f{i}" for i in range(10)]

    async def main() -> None:
        async with rig(repo, max_batch_size=4) as r:
            res: FrameResult = await r.frame(ids, xs, start=True)
            assert r.sample("rnnserve_ort_run_seconds_count") == 3  # 4 + 4 + 2
            np.testing.assert_allclose(res.y, offline(repo, "gru", 2, xs), atol=TOL)
            assert res.steps.tolist() == [2] * 10
            futs = [r.step(ids[i], xs[i], start=False) for i in range(10)]
            await asyncio.gather(*futs)
            assert r.sample("rnnserve_ort_run_seconds_count") == 6
            assert r.sample("rnnserve_batch_sessions_count") == 6

    asyncio.run(main())


def test_one_session_never_twice_in_a_batch(repo: Path) -> None:
    x = data(9, 8)

    async def main() -> None:
        async with rig(repo) as r:
            futs = [r.step("one", x[t : t + 2], start=t == 0) for t in range(0, 8, 2)]
            # another session's frame, queued behind the steps of "one" it includes
            ffut = r.frame(["one", "two"], np.stack([x[:1], x[:1]]), start=False)
            results: list[StepResult] = await asyncio.gather(*futs)
            frame: FrameResult = await ffut
            assert r.sample("rnnserve_ort_run_seconds_count") == 5
            assert r.sample("rnnserve_batch_sessions_sum") == 5  # each run: one session
            y = np.concatenate([res.y for res in results])
            np.testing.assert_allclose(y, offline(repo, "gru", 2, x), atol=TOL)
            assert frame.steps.tolist() == [9, -1]
            assert frame.errors[0] is None
            assert frame.errors[1] is not None

    asyncio.run(main())


def test_queue_delay_lets_a_batch_fill(repo: Path) -> None:
    async def main(delay_ms: float) -> float:
        async with rig(repo, max_queue_delay_ms=delay_ms) as r:
            first = r.step("a", data(1, 1), start=True)
            await asyncio.sleep(0.02)
            second = r.step("b", data(2, 1), start=True)
            await asyncio.gather(first, second)
            return r.sample("rnnserve_ort_run_seconds_count")

    assert asyncio.run(main(400.0)) == 1
    assert asyncio.run(main(0.0)) == 2


def test_ort_failure_fans_out_and_leaves_states_untouched(repo: Path) -> None:
    x = data(3, 6)
    poisoned = np.full((1, 3), POISON, np.float32)

    async def main() -> None:
        async with rig(repo, runner_cls=FailingRunner) as r:
            await asyncio.gather(r.step("p", x[:2], start=True), r.step("q", x[:2], start=True))
            before = {k: v.copy() for k, v in r.store.states.items()}
            steps = r.store.steps.copy()
            futs = [r.step("p", x[2:3]), r.step("q", poisoned), r.step("new", x[:1], start=True)]
            results = await asyncio.gather(*futs, return_exceptions=True)
            for res in results:
                assert isinstance(res, RnnServeError)
                assert res.code == ErrorCode.INTERNAL
                assert "failed to run" in res.message
            np.testing.assert_array_equal(r.store.states["h"], before["h"])
            np.testing.assert_array_equal(r.store.steps, steps)
            assert "new" not in r.store
            assert len(r.store) == 2
            rest: StepResult = await r.step("p", x[2:])
            np.testing.assert_allclose(rest.y, offline(repo, "gru", 2, x)[2:], atol=TOL)

    asyncio.run(main())


class ThreadRecordingRunner(ModelRunner):
    """A real runner that notes which thread ran each batch, and how many session-steps."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.runs: list[tuple[int, int]] = []

    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        self.runs.append((threading.get_ident(), x.shape[0] * x.shape[1]))
        return super().run(x, states)


def test_a_tiny_batch_on_an_idle_batcher_runs_on_the_loop(repo: Path) -> None:
    xs = [data(70 + i, 4) for i in range(4)]

    async def main(inline_max_steps: int) -> list[bool]:
        async with rig(
            repo, runner_cls=ThreadRecordingRunner, inline_max_steps=inline_max_steps
        ) as r:
            runner = r.batcher.runner
            assert isinstance(runner, ThreadRecordingRunner)
            loop_thread = threading.get_ident()
            # 1 session-step, then 3 sessions x 1 step, then 2 sessions x 4 steps (over 4)
            first: StepResult = await r.step("a", xs[0][:1], start=True)
            trio = await asyncio.gather(
                *(r.step(f"b{i}", xs[i][:1], start=True) for i in range(1, 4))
            )
            pair = await asyncio.gather(r.step("c", xs[0], start=True), r.step("a", xs[1][1:]))
            # results are the same wherever the run happened
            np.testing.assert_allclose(first.y, offline(repo, "gru", 2, xs[0][:1]), atol=TOL)
            for i, res in enumerate(trio, start=1):
                np.testing.assert_allclose(res.y, offline(repo, "gru", 2, xs[i][:1]), atol=TOL)
            np.testing.assert_allclose(pair[0].y, offline(repo, "gru", 2, xs[0]), atol=TOL)
            assert pair[1].step == 4
            assert [steps for _, steps in runner.runs] == [1, 3, 4, 3]  # T=4 and T=3 groups
            assert r.sample("rnnserve_ort_run_seconds_count") == 4
            return [tid == loop_thread for tid, _ in runner.runs]

    assert asyncio.run(main(4)) == [True, True, False, False]
    assert asyncio.run(main(0)) == [False, False, False, False]


class SlowThreadRecordingRunner(ThreadRecordingRunner):
    """Like a large model: each run takes at least 20 ms."""

    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        time.sleep(0.02)
        return super().run(x, states)


def test_a_model_too_slow_to_run_on_the_loop_goes_back_to_the_workers(repo: Path) -> None:
    x = data(8, 6)

    async def main() -> None:
        async with rig(repo, runner_cls=SlowThreadRecordingRunner, inline_max_steps=4) as r:
            runner = r.batcher.runner
            assert isinstance(runner, SlowThreadRecordingRunner)
            loop_thread = threading.get_ident()
            results = [await r.step("s", x[t : t + 1], start=t == 0) for t in range(6)]
            # the first run is not timed; three more 20 ms runs end inlining for this model
            on_loop = [tid == loop_thread for tid, _ in runner.runs]
            assert on_loop == [True, True, True, True, False, False]
            y = np.concatenate([res.y for res in results])
            np.testing.assert_allclose(y, offline(repo, "gru", 2, x), atol=TOL)

    asyncio.run(main())


class OverlapRunner(ModelRunner):
    """A real runner whose runs take 50 ms and that records how many ran at once."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        self._now = 0
        self.peak = 0

    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        with self._lock:
            self._now += 1
            self.peak = max(self.peak, self._now)
        try:
            time.sleep(0.05)
            return super().run(x, states)
        finally:
            with self._lock:
                self._now -= 1


async def steps_behind_a_run(
    r: Rig, repo: Path, first: tuple[str, np.ndarray], later: list[tuple[str, np.ndarray]]
) -> OverlapRunner:
    """Start session `first`, submit the `later` sessions while its run is in ORT, check every
    result against offline; returns the rig's runner (its `peak` tells what overlapped)."""
    runner = r.batcher.runner
    assert isinstance(runner, OverlapRunner)
    head = r.step(first[0], first[1], start=True)
    await asyncio.sleep(0.01)  # the first run is in ORT
    tail = [r.step(sid, x, start=True) for sid, x in later]
    results: list[StepResult] = await asyncio.gather(head, *tail)
    for (_, x), res in zip([first, *later], results, strict=True):
        np.testing.assert_allclose(res.y, offline(repo, "gru", 2, x), atol=TOL)
    return runner


def test_light_partial_batches_wait_for_the_running_one_unless_allowed(repo: Path) -> None:
    xs = [data(90 + i, 1) for i in range(3)]

    async def main(parallel_light: bool) -> tuple[int, int]:
        async with rig(
            repo,
            runner_cls=OverlapRunner,
            max_in_flight=2,
            parallel_light_batches=parallel_light,
        ) as r:
            # one-step messages: the second batch forms while the first runs
            later = [(f"s{i}", xs[i]) for i in (1, 2)]
            runner = await steps_behind_a_run(r, repo, ("a", xs[0]), later)
            light_peak, runner.peak = runner.peak, 0
            # heavy work (a frame of 16 sessions: 16 session-steps in one message) may overlap
            first = r.step("a", xs[1])
            await asyncio.sleep(0.01)
            ids = [f"f{i}" for i in range(16)]
            frame: FrameResult = await r.frame(ids, np.stack([xs[2]] * 16), start=True)
            await first
            assert frame.steps.tolist() == [1] * 16
            assert r.sample("rnnserve_ort_run_seconds_count") == 4
            return light_peak, runner.peak

    assert asyncio.run(main(parallel_light=False)) == (1, 2)
    assert asyncio.run(main(parallel_light=True)) == (2, 2)


def test_on_few_cores_only_a_full_light_batch_runs_beside_another(repo: Path) -> None:
    """With parallel_light_batches off, a half-full batch of one-step messages waits for the
    run in flight (parallel runs of ping-pong widened its tail on 2 cores); a full one may not
    wait, since it cannot grow."""
    xs = [data(120 + i, 1) for i in range(5)]

    async def overlap(sessions: list[str]) -> int:
        async with rig(
            repo,
            runner_cls=OverlapRunner,
            max_in_flight=2,
            max_batch_size=4,
            parallel_light_batches=False,
        ) as r:
            later = [(sid, xs[1 + i]) for i, sid in enumerate(sessions)]
            runner = await steps_behind_a_run(r, repo, ("a", xs[0]), later)
            assert r.sample("rnnserve_ort_run_seconds_count") == 2
            return runner.peak

    assert asyncio.run(overlap(["b", "c"])) == 1  # half full: waits
    assert asyncio.run(overlap(["b", "c", "d", "e"])) == 2  # full: runs beside the first


def test_an_ort_failure_in_an_inline_run_is_reported_like_a_workers(repo: Path) -> None:
    x = data(5, 3)

    async def main() -> None:
        async with rig(repo, runner_cls=FailingRunner, inline_max_steps=4) as r:
            await r.step("p", x[:2], start=True)
            h = r.store.states["h"].copy()
            with pytest.raises(RnnServeError) as failed:
                await r.step("p", np.full((1, 3), POISON, np.float32))
            assert failed.value.code == ErrorCode.INTERNAL
            assert "failed to run" in failed.value.message
            np.testing.assert_array_equal(r.store.states["h"], h)
            rest: StepResult = await r.step("p", x[2:])
            assert rest.step == 3
            np.testing.assert_allclose(rest.y, offline(repo, "gru", 2, x)[2:], atol=TOL)

    asyncio.run(main())


def test_a_cancelled_chunk_that_has_not_run_is_not_applied(repo: Path) -> None:
    async def main() -> None:
        async with rig(repo) as r:
            await r.step("c", data(1, 2), start=True)
            fut = r.step("c", data(2, 3))
            fut.cancel()
            await asyncio.sleep(0.05)
            assert int(r.store.steps[r.store.slot_of["c"]]) == 2
            res: StepResult = await r.step("c", data(3, 1))
            assert res.step == 3

    asyncio.run(main())


class SlowRunner(ModelRunner):
    """A real runner that takes at least 0.2 s per run (to catch a shutdown mid-run)."""

    def run(self, x: FloatArray, states: States) -> tuple[FloatArray, States]:
        time.sleep(0.2)
        return super().run(x, states)


def test_stop_fails_queued_and_running_chunks_without_applying_them(repo: Path) -> None:
    async def main() -> None:
        async with rig(repo, runner_cls=SlowRunner) as r:
            await r.step("s", data(1, 2), start=True)
            futs = [r.step("s", data(2 + i, 1)) for i in range(3)]  # one session: serial runs
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(r.batcher.drain()), 0.05)
            await r.batcher.stop()
            results = await asyncio.gather(*futs, return_exceptions=True)
            for res in results:
                assert isinstance(res, RnnServeError)
                assert res.code == ErrorCode.UNAVAILABLE
            assert int(r.store.steps[r.store.slot_of["s"]]) == 2
            # A stopped batcher refuses at once (the caller answers it in the session's turn);
            # resolving the outcome during submission could overtake replies still in flight.
            with pytest.raises(RnnServeError) as late:
                r.step("s", data(9, 1))
            assert late.value.code == ErrorCode.UNAVAILABLE
            assert int(r.store.steps[r.store.slot_of["s"]]) == 2

    asyncio.run(main())
