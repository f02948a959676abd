"""Session-aware batching: many sessions' chunks coalesced into one ONNX Runtime run.

A `Batcher` (one per model version) owns a queue of ready chunks (see `lanes.SessionLanes` for
how per-session order is kept). When work is ready and a worker is free it takes up to
`max_batch_size` sessions' worth of ready chunks (after waiting up to `max_queue_delay_ms` for a
batch to fill; with 0 it takes whatever arrived while the previous run was in flight), validates
them against the session store, gathers states and hands the run to the shared thread pool (one
ORT run per distinct chunk length T); when the run is done it scatters states back and resolves
the chunks. An ORT error fails that batch's chunks with INTERNAL and leaves their sessions
untouched; rows whose outputs or new state come out NaN or Inf from finite input (a model
overflowed by values far outside its range) fail alone with INVALID_ARGUMENT, unapplied, so a
session's state is never poisoned for every later step. A row that is not applied changes nothing
else either: with LRU eviction, a start on a full model only picks its victims (idle sessions,
held in their lanes meanwhile) and evicts them when its row commits.

It is driven by plain loop callbacks, not a task: a batch starts one loop iteration after its
work became ready and is answered one iteration after ORT returns. Under ping-pong load an
iteration of the loop takes milliseconds (hundreds of gRPC reads), so every hop a task, an event
or `run_in_executor`'s future chain would add shows up as latency, and, with a fixed number of
sessions each waiting for its reply, as lost throughput.

Everything but the ORT run happens on the event loop thread, so the store needs no locks. Per-row
work is vectorised (numpy over the batch, C-level map/dict operations for id lookups): a frame
of many sessions costs a few microseconds of Python per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from rnnserve_server.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    RnnServeError,
    Unavailable,
)
from rnnserve_server.lanes import SessionLanes, Work
from rnnserve_server.metrics import Metrics
from rnnserve_server.outcome import Outcome
from rnnserve_server.runtime import ModelRunner, States
from rnnserve_server.store import SessionStore
from rnnserve_server.types import FloatArray
from rnnserve_server.validation import rows_finite

log = logging.getLogger("rnnserve.batcher")

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# Shared read-only flag arrays for single steps: no allocation per request.
_TRUE1 = np.ones(1, np.bool_)
_FALSE1 = np.zeros(1, np.bool_)
_NO_EXPECT1 = np.full(1, -1, np.int64)
_NO_ROWS = np.empty(0, np.int64)
_NO_X = np.empty((0, 0, 0), np.float32)
_ISFINITE = np.isfinite
# An inline run blocks the event loop (every stream, health checks): a model whose tiny runs take
# longer than this on average goes back to the worker threads for good.
_INLINE_BUDGET_S = 0.001
# Session-steps per message from which a partial batch counts as ORT work (see _may_start).
_HEAVY_STEPS_PER_MESSAGE = 8
for _a in (_TRUE1, _FALSE1, _NO_EXPECT1, _NO_ROWS, _NO_X):
    _a.flags.writeable = False
# Chunk.flags: which per-row options are used at all (lets batches skip whole checks).
_START, _END, _EXPECT = 1, 2, 4


class Chunk(Work):
    """T steps for n sessions of one model version (n = 1 for a step, N for a frame)."""

    __slots__ = ("end", "enqueued", "expected", "flags", "frame", "start", "x")

    def __init__(
        self,
        batcher: Batcher,
        ids: list[str],
        x: FloatArray,  # [n, T, F] raw values
        start: BoolArray,
        end: BoolArray,
        expected: IntArray,  # -1 = no check
        frame: bool,
        future: Outcome,
        flags: int,
    ) -> None:
        super().__init__(ids, future, batcher)
        self.x = x
        self.start = start
        self.end = end
        self.expected = expected
        self.frame = frame
        self.flags = flags  # _START | _END | _EXPECT: which per-row options any row uses
        self.enqueued = time.perf_counter()

    def on_ready(self) -> None:
        assert self.owner is not None
        self.owner.push(self)


class StepResult:
    """A step's outputs (a plain slots class: one is made per step on the hot path)."""

    __slots__ = ("step", "y")

    def __init__(self, y: FloatArray, step: int) -> None:
        self.y = y  # [T, O] raw units
        self.step = step  # steps consumed after the chunk


@dataclass(frozen=True, slots=True)
class FrameResult:
    y: FloatArray  # [N, T, O], NaN rows for failed sessions
    steps: IntArray  # [N], -1 where the session does not exist
    errors: list[RnnServeError | None]


class _Group:
    """Rows of one distinct T within a batch, after validation and gather."""

    __slots__ = (
        "T", "end", "errors", "flags", "hold", "ids", "items", "n_ok", "new_rows", "new_slots",
        "ok_rows", "prior", "prior_one", "slot", "slots_ok", "start", "states_in", "victims",
        "x_ok",
    )  # fmt: skip

    def __init__(self, items: list[Chunk]) -> None:
        self.items = items
        self.T: int = items[0].x.shape[1]
        self.errors: dict[int, RnnServeError] = {}  # row -> why it does not run
        self.flags = 0
        self.ids: list[str] = []
        self.start: BoolArray = _FALSE1
        self.end: BoolArray = _FALSE1
        self.prior: IntArray = _NO_EXPECT1  # step count before the chunk, -1 if missing
        self.new_rows: IntArray = _NO_ROWS  # rows creating a session
        self.new_slots: IntArray = _NO_ROWS  # their reserved slots (free ones; see victims)
        # LRU eviction (a full model): sessions that make room for new_rows beyond new_slots,
        # least recently used first. They stay live, held in their lanes by `hold`, until the
        # group commits: only the creating rows that are applied evict (see _commit_evicting).
        self.victims: IntArray = _NO_ROWS
        self.hold: _EvictionHold | None = None
        self.ok_rows: IntArray | None = None  # rows that run; None: all of them
        self.n_ok = 0
        self.slots_ok: IntArray = _NO_ROWS
        self.x_ok: FloatArray = _NO_X
        self.states_in: States = {}
        # One live session's plain step (see Batcher._prepare_one): its slot and step count.
        self.slot = -1
        self.prior_one = 0


class _NoOutcome:
    """The outcome of an `_EvictionHold`: nobody waits for it."""

    __slots__ = ()

    def done(self) -> bool:
        return True

    def set_result(self, result: Any, /) -> None:
        pass

    def set_exception(self, exception: BaseException, /) -> None:
        pass


_NO_OUTCOME = _NoOutcome()


class _EvictionHold(Work):
    """A place in the lanes of the sessions a batch may evict to make room for the sessions it
    creates: until the batch commits (evicting) or gives up (they stay), later work on them waits,
    so no other batch steps, and nothing closes or expires, a session about to be evicted.
    Entered when they are idle (LRU candidates have no work queued), so it is ready at once."""

    __slots__ = ()

    def __init__(self, ids: list[str]) -> None:
        super().__init__(ids, _NO_OUTCOME)

    def on_ready(self) -> None:  # never blocked: entered on idle sessions only
        pass


class _Run:
    """A batch handed to the thread pool; `abandoned` once stop() failed it (its late result
    is dropped). `timings`: (seconds, sessions) of each ORT run, filled by the worker and
    recorded by the loop (the run-level metrics have a single writer, the loop thread)."""

    __slots__ = ("abandoned", "batch", "groups", "timings")

    def __init__(self, batch: list[Chunk], groups: list[_Group]) -> None:
        self.batch = batch
        self.groups = groups
        self.abandoned = False
        self.timings: list[tuple[float, int]] = []


class Batcher:
    """Coalesces ready chunks of one model version into ONNX Runtime runs; see module docs."""

    def __init__(
        self,
        runner: ModelRunner,
        store: SessionStore,
        lanes: SessionLanes,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        inline_max_steps: int = 0,
        evict_lru: bool,
        describe_missing: Callable[[str, SessionStore], RnnServeError],
        store_of: Callable[[str], SessionStore | None] = lambda _: None,
        reject_non_finite: bool = True,
        max_in_flight: int = 1,
        parallel_light_batches: bool = True,
    ) -> None:
        self.runner = runner
        self.store = store
        self.lanes = lanes
        self.model = runner.meta.name
        self.version = int(runner.meta.version)
        self._executor = executor
        self._max = max_batch_size
        self._delay = max_queue_delay_ms / 1000.0
        self._inline_steps = inline_max_steps
        self._inline_runs = 0
        self._inline_mean_s = 0.0  # moving average of inline run times (the first is skipped)
        self._evict_lru = evict_lru
        self._describe_missing = describe_missing
        self._store_of = store_of  # where a session id lives now (any model version), if anywhere
        self._reject_non_finite = reject_non_finite
        self._ready: deque[Chunk] = deque()
        self._ready_rows = 0
        self._ready_steps = 0  # session-steps in _ready (rows x T)
        self._pending = 0  # submitted chunks not yet resolved
        self._idle = asyncio.Event()
        self._idle.set()
        # Batches in flight at once: while one runs in ORT (GIL released), the event loop prepares
        # the next and answers the last. Safe because a session with a chunk in flight is busy in
        # its lane: it is never in two batches, never evicted, and slots are reserved up front.
        # A full batch may also start while every worker is busy (up to twice as many in flight):
        # it waits in the executor's queue and starts the moment a worker frees, instead of a
        # loop round trip later. Partial batches still wait, so that they keep filling.
        self._workers = max(1, max_in_flight)
        self._parallel_light = parallel_light_batches
        self._running = 0
        self._in_flight: set[_Run] = set()
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._kick_scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # max_queue_delay_ms expiry
        self._closed = False
        label = self.model
        self._queue_delay = metrics.queue_delay.labels(label)
        self._ort_run = metrics.ort_run.labels(label)
        self._batch_sessions = metrics.batch_sessions.labels(label)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_ref = asyncio.get_running_loop()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def runs_in_flight(self) -> int:
        """Batches between gather and scatter: their sessions' slots must not move."""
        return self._running

    async def drain(self) -> None:
        """Wait until every submitted chunk is resolved."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Fail whatever is queued or running with UNAVAILABLE, without applying it. A run
        already inside ORT finishes in its thread; its result is dropped."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        err = Unavailable("server is shutting down")
        while self._ready:
            self._fail(self._ready.popleft(), err)
        self._ready_rows = 0
        self._ready_steps = 0
        for run in list(self._in_flight):
            self._abandon(run, err)

    # -- submission ------------------------------------------------------------------------------
    def submit(
        self,
        ids: list[str],
        x: FloatArray,
        start: BoolArray,
        end: BoolArray,
        expected: IntArray,
        *,
        frame: bool,
    ) -> asyncio.Future[Any]:
        """Queue validated input ([n, T, F] raw values) for n distinct sessions. The future
        resolves to a StepResult (frame=False, n=1) or FrameResult, or raises RnnServeError."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(Unavailable("server is shutting down"))
            return fut
        flags = (
            (_START if start.any() else 0)
            | (_END if end.any() else 0)
            | (_EXPECT if (expected >= 0).any() else 0)
        )
        chunk = Chunk(self, ids, x, start, end, expected, frame, fut, flags)
        self._pending += 1
        self._idle.clear()
        if self.lanes.enter(chunk):
            self.push(chunk)
        return fut

    def submit_step(
        self,
        session_id: str,
        x: FloatArray,
        start: bool,
        end: bool,
        expected: int | None,
        outcome: Outcome,
    ) -> None:
        """`submit` for one session's [T, F] chunk, inlined: this runs once per step. Its
        StepResult (or RnnServeError) is delivered to `outcome`, except on a stopped batcher:
        that raises UNAVAILABLE, so the caller answers it as the rejection it is, in its turn
        (an outcome resolved during submission would answer before the session's earlier
        chunks still in flight)."""
        if self._loop_ref is None or self._closed:
            raise Unavailable("server is shutting down")
        chunk = Chunk(
            self,
            [session_id],
            x[None],
            _TRUE1 if start else _FALSE1,
            _TRUE1 if end else _FALSE1,
            _NO_EXPECT1 if expected is None else np.full(1, expected, np.int64),
            False,
            outcome,
            (_START if start else 0) | (_END if end else 0) | (0 if expected is None else _EXPECT),
        )
        self._pending += 1
        self._idle.clear()
        if self.lanes.enter_one(session_id, chunk):
            self._ready.append(chunk)
            self._ready_rows += 1
            self._ready_steps += x.shape[0]
            if not self._kick_scheduled:
                self._schedule()

    def push(self, chunk: Chunk) -> None:
        """A chunk reached the head of all its lanes."""
        if self._closed:
            self._fail(chunk, Unavailable("server is shutting down"))
            return
        self._ready.append(chunk)
        self._ready_rows += len(chunk.ids)
        self._ready_steps += chunk.x.shape[0] * chunk.x.shape[1]
        if not self._kick_scheduled:
            self._schedule()

    # -- scheduling ------------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start batches on the next loop iteration: whatever the current one still readies
        (other streams' reads, callers woken by the last run) joins them, instead of ping-pong
        clients splitting into groups that alternate between runs and never coalesce again."""
        assert self._loop_ref is not None
        self._kick_scheduled = True
        self._loop_ref.call_soon(self._kick)

    def _kick(self) -> None:
        """Start every batch that may start now (see _may_start and max_queue_delay_ms)."""
        self._kick_scheduled = False
        while self._ready and not self._closed and self._may_start():
            if self._delay > 0 and self._ready_rows < self._max:
                wait = self._ready[0].enqueued + self._delay - time.perf_counter()
                if wait > 0:  # let it fill; new work and finished runs kick again before then
                    if self._timer is None:
                        assert self._loop_ref is not None
                        self._timer = self._loop_ref.call_later(wait, self._timer_fired)
                    return
            batch = self._take()
            if batch:
                self._launch(batch)

    def _timer_fired(self) -> None:
        self._timer = None
        self._kick()

    def _may_start(self) -> bool:
        """A batch may start now: nothing runs; or a worker is free and parallel runs are worth
        it (many cores, or heavy work); or the batch is full (see __init__)."""
        running = self._running
        if running == 0:
            return True
        if running < self._workers and (self._parallel_light or self._is_heavy()):
            return True
        return running < 2 * self._workers and self._ready_rows >= self._max

    def _is_heavy(self) -> bool:
        """Ready work is mostly ORT (frames, long chunks) rather than messages. A light partial
        batch (one-step messages) beside a running one only takes a core from the event loop
        where cores are few, so it waits and joins a bigger batch instead (see
        BatcherSettings.parallel_light_batches)."""
        return self._ready_steps >= _HEAVY_STEPS_PER_MESSAGE * len(self._ready)

    def _take(self) -> list[Chunk]:
        """Ready chunks up to max_batch_size rows (always at least one). Chunks whose caller
        gave up (cancelled future) before their run are dropped, not applied."""
        ready = self._ready
        batch: list[Chunk] = []
        rows = 0
        while ready and (not batch or rows + len(ready[0].ids) <= self._max):
            c = ready.popleft()
            self._ready_rows -= len(c.ids)
            self._ready_steps -= c.x.shape[0] * c.x.shape[1]
            if c.future.done():
                self._finish(c)
                continue
            batch.append(c)
            rows += len(c.ids)
        return batch

    def _fail(self, chunk: Chunk, err: RnnServeError) -> None:
        if not chunk.future.done():
            chunk.future.set_exception(err)
        self._finish(chunk)

    def _fail_batch(self, batch: list[Chunk], err: RnnServeError) -> None:
        for c in batch:
            if not c.future.done():
                self._fail(c, err)

    def _finish(self, chunk: Chunk) -> None:
        self.lanes.release(chunk)
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    # -- one batch ---------------------------------------------------------------------------------
    def _launch(self, batch: list[Chunk]) -> None:
        """Validate and gather a batch on the loop, then hand its ORT runs to the thread pool."""
        groups: list[_Group] = []
        try:
            now = time.time()
            t_start = time.perf_counter()
            self._queue_delay.observe_many([t_start - c.enqueued for c in batch])
            if len(batch) == 1 or all(c.x.shape[1] == batch[0].x.shape[1] for c in batch):
                groups = [_Group(batch)]
            else:
                by_t: dict[int, list[Chunk]] = {}
                for c in batch:
                    by_t.setdefault(c.x.shape[1], []).append(c)
                groups = [_Group(items) for items in by_t.values()]
            for g in groups:
                self._prepare(g, now)
            if not any(g.n_ok for g in groups):  # nothing to run: every row failed its checks
                for g in groups:
                    self._resolve(g, None, None)
                return
            jobs = [(g.x_ok, g.states_in) for g in groups]
            run = _Run(batch, groups)
            inline = self._runs_inline(groups)
            if inline:
                # No Future here: on the single-session path its lock and condition are a
                # measurable share of the step.
                outputs: list[tuple[FloatArray, States]] | None = None
                failure: BaseException | None = None
                t0 = time.perf_counter()
                try:
                    outputs = self._run_all(jobs, run.timings)
                except Exception as exc:  # an ORT failure: _ran reports it like a worker's
                    failure = exc
                self._timed_inline(time.perf_counter() - t0)
            else:
                done = self._executor.submit(self._run_all, jobs, run.timings)
        except Exception as exc:  # a bug in this module: never leave a chunk unanswered
            self._batch_failed(batch, groups, exc)
            return
        self._in_flight.add(run)
        self._running += 1
        if inline:
            self._ran(run, outputs, failure)
            return
        loop = self._loop_ref
        assert loop is not None

        def ran(done: Future[list[tuple[FloatArray, States]]]) -> None:  # on the worker thread
            if done.cancelled():  # the pool shut down before it ran
                failure: BaseException | None = Unavailable("server is shutting down")
            else:
                failure = done.exception()
            outputs = None if failure is not None else done.result()
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to answer
                loop.call_soon_threadsafe(self._ran, run, outputs, failure)

        done.add_done_callback(ran)

    def _runs_inline(self, groups: list[_Group]) -> bool:
        """A tiny batch on an otherwise idle batcher: run it here, on the loop. Handing it to a
        worker costs two thread wake-ups and GIL hand-offs, more than ORT takes for a few
        steps, and at low load nothing else is waiting for the loop meanwhile."""
        if self._running or self._ready or not self._inline_steps:
            return False
        return sum(g.n_ok * g.T for g in groups) <= self._inline_steps

    def _timed_inline(self, seconds: float) -> None:
        """Stop inlining a model whose tiny runs are too slow to block the loop for (the first
        run is not counted: it includes ONNX Runtime's one-off allocations)."""
        self._inline_runs += 1
        if self._inline_runs == 1:
            return
        # Each run counts for at most 4x the budget: one hiccup (a preempted thread) doesn't end
        # inlining; three slow runs in a row do.
        self._inline_mean_s = 0.9 * self._inline_mean_s + 0.1 * min(seconds, 4 * _INLINE_BUDGET_S)
        if self._inline_mean_s > _INLINE_BUDGET_S:
            self._inline_steps = 0
            log.info(
                "tiny batches take %.2f ms in ONNX Runtime, too long to run on the event loop; "
                "they go to the worker threads from now on",
                self._inline_mean_s * 1e3,
                extra={"model": self.model, "version": self.version},
            )

    def _ran(
        self,
        run: _Run,
        outputs: list[tuple[FloatArray, States]] | None,
        failure: BaseException | None,
    ) -> None:
        """Back on the loop: answer the batch's chunks (with ORT's `outputs` per group, or its
        `failure`) and start what became ready meanwhile."""
        for seconds, sessions in run.timings:
            self._ort_run.observe(seconds)
            self._batch_sessions.observe(sessions)
        if run.abandoned:
            return
        self._in_flight.discard(run)
        self._running -= 1
        try:
            if failure is None:
                assert outputs is not None
                now = time.time()
                for g, res in zip(run.groups, outputs, strict=True):
                    self._resolve(g, res, now)
            else:
                self._run_failed(run.groups, failure)
        except Exception as exc:  # a bug in this module: never leave a chunk unanswered
            # Groups not yet resolved give back their slots and lanes (resolved ones hold none).
            self._batch_failed(run.batch, run.groups, exc)
        if self._ready and not self._kick_scheduled:
            self._schedule()

    def _run_failed(self, groups: list[_Group], exc: BaseException) -> None:
        """ORT raised: every row that was to run fails with INTERNAL, its session untouched."""
        log.error(
            "ONNX Runtime run failed: %s", exc, extra={"model": self.model, "version": self.version}
        )
        err = Internal(f"model {self.model!r} version {self.version} failed to run: {exc}")
        for g in groups:
            self._unreserve(g)
            ran = range(len(g.ids)) if g.ok_rows is None else g.ok_rows.tolist()
            for r in ran:
                g.errors[r] = err
            g.ok_rows, g.n_ok = _NO_ROWS, 0
            self._resolve(g, None, None)

    def _batch_failed(self, batch: list[Chunk], groups: list[_Group], exc: Exception) -> None:
        log.exception("batch failed", exc_info=exc, extra={"model": self.model})
        for g in groups:
            self._unreserve(g)
        self._fail_batch(batch, Internal(f"internal error: {exc}"))

    def _abandon(self, run: _Run, err: RnnServeError) -> None:
        """stop(): fail a batch still in ORT without applying it."""
        run.abandoned = True
        self._in_flight.discard(run)
        self._running -= 1
        for g in run.groups:
            self._unreserve(g)
        self._fail_batch(run.batch, err)

    def _run_all(
        self, jobs: list[tuple[FloatArray, States]], timings: list[tuple[float, int]]
    ) -> list[tuple[FloatArray, States]]:
        """Worker thread: one ORT run per group (split at max_batch_size); ORT releases the GIL.
        Each run's (seconds, sessions) goes to `timings`, for the loop to record."""
        out: list[tuple[FloatArray, States]] = []
        runner = self.runner
        for x, states in jobs:
            n = x.shape[0]
            if n == 0:
                out.append((x, states))
                continue
            ys: list[FloatArray] = []
            sts: list[States] = []
            for lo in range(0, n, self._max):
                hi = min(n, lo + self._max)
                part = states if (lo == 0 and hi == n) else {k: v[lo:hi] for k, v in states.items()}
                t0 = time.perf_counter()
                y, st = runner.run(x[lo:hi], part)
                timings.append((time.perf_counter() - t0, hi - lo))
                ys.append(y)
                sts.append(st)
            if len(ys) == 1:
                out.append((ys[0], sts[0]))
            else:
                out.append(
                    (np.concatenate(ys), {k: np.concatenate([s[k] for s in sts]) for k in sts[0]})
                )
        return out

    def _prepare(self, g: _Group, now: float) -> None:
        """Validate every row against the store (nothing is changed yet), reserve slots for new
        sessions and gather the states of the rows that will run. Whole checks are skipped when
        no row can fail them (the steady state: live sessions, no flags)."""
        store = self.store
        items = g.items
        if len(items) == 1:
            c = items[0]
            if len(c.ids) == 1 and not c.flags and not c.frame and self._prepare_one(g, c):
                return
            ids, x, start, end, expected, flags = c.ids, c.x, c.start, c.end, c.expected, c.flags
        else:
            ids = [s for c in items for s in c.ids]
            x = np.concatenate([c.x for c in items])
            flags = 0
            for c in items:
                flags |= c.flags
            start = np.concatenate([c.start for c in items]) if flags & _START else _FALSE1
            end = np.concatenate([c.end for c in items]) if flags & _END else _FALSE1
            expected = np.concatenate([c.expected for c in items]) if flags & _EXPECT else _NO_ROWS
        n = len(ids)
        g.ids, g.start, g.end, g.flags = ids, start, end, flags
        slot_of = store.slot_of
        slots = np.fromiter(map(slot_of.get, ids, repeat(-1)), np.int64, n)
        prior = store.steps[slots]  # a copy; rows of missing sessions are fixed just below
        missing: BoolArray | None = None
        if slots.min() < 0:
            missing = slots < 0
            prior[missing] = -1
        g.prior = prior
        errors = g.errors
        if self._reject_non_finite and not _all_finite_quick(x):
            # Only now look row by row.
            finite = rows_finite(x)
            for r in np.flatnonzero(~finite).tolist():
                idx = np.argwhere(~np.isfinite(x[r]))[0].tolist()
                errors[r] = InvalidArgument(
                    f"session {ids[r]!r}, model {self.model!r}: input contains NaN or Inf "
                    f"(first at step {idx[0]}, feature {idx[1]}); non-finite inputs are rejected"
                )
        if missing is not None:
            bad = missing & ~start if flags & _START else missing.copy()
            if errors:
                bad &= ~_mask(n, errors)
            for r in np.flatnonzero(bad).tolist():
                errors[r] = self._describe_missing(ids[r], store)
        if flags & _EXPECT:
            # Checked against the count before this chunk (0 for a session it creates).
            check = expected >= 0
            if errors:
                check &= ~_mask(n, errors)
            have = np.maximum(prior, 0)
            for r in np.flatnonzero(check & (have != expected)).tolist():
                errors[r] = FailedPrecondition(
                    f"session {ids[r]!r} has consumed {int(have[r])} steps, but the request "
                    f"expected {int(expected[r])}; the chunk was not applied"
                )
        if missing is not None and flags & _START:
            creating = missing & start
            if errors:
                creating &= ~_mask(n, errors)
            for r in np.flatnonzero(creating).tolist():
                # Routing chose this version when the chunk was submitted; work queued before it
                # (an import, another model's start) may have put the id on another since.
                other = self._store_of(ids[r])
                if other is not None:
                    creating[r] = False
                    errors[r] = FailedPrecondition(
                        f"session {ids[r]!r} lives on model {other.model!r} version "
                        f"{other.version} (it was created or moved there while this chunk "
                        f"waited), not on model {self.model!r} version {self.version}; the "
                        "chunk was not applied"
                    )
            self._create(g, slots, creating, now)
        if errors:
            ok_rows: IntArray | None = np.flatnonzero(~_mask(n, errors))
            slots_ok = slots[ok_rows]
            g.x_ok = x[ok_rows]
            start_ok = start[ok_rows] if flags & _START else None
        else:
            ok_rows = None
            slots_ok = slots
            g.x_ok = x
            start_ok = start if flags & _START else None
        g.ok_rows, g.slots_ok, g.n_ok = ok_rows, slots_ok, len(slots_ok)
        states = {name: arr.take(slots_ok, axis=0) for name, arr in store.states.items()}
        if start_ok is not None and start_ok.any():
            for name, arr in states.items():
                arr[start_ok] = store.initial[name]
        g.states_in = states

    def _prepare_one(self, g: _Group, c: Chunk) -> bool:
        """`_prepare` for the commonest batch at low load: one step of one live session with no
        flags. Scalar indexing instead of the vectorised path's two dozen small numpy calls;
        False (nothing done) when the general path must look closer (a new or missing session,
        non-finite input)."""
        store = self.store
        slot = store.slot_of.get(c.ids[0])
        if slot is None:
            return False
        x = c.x
        if self._reject_non_finite and not _all_finite_quick(x):
            return False
        g.ids = c.ids
        g.slot = slot
        g.prior_one = int(store.steps[slot])
        g.n_ok = 1
        g.x_ok = x
        # Views of the arena rows: the session is busy in its lane, so nothing writes its row
        # before _resolve_one, and a resized arena leaves the view on the old, intact buffer.
        g.states_in = {name: arr[slot : slot + 1] for name, arr in store.states.items()}
        return True

    def _resolve_one(self, g: _Group, y: FloatArray, states_out: States, now: float) -> None:
        """`_resolve` for a group `_prepare_one` made."""
        c = g.items[0]
        if self._reject_non_finite and not _results_finite(y, states_out):
            if not c.future.done():
                c.future.set_exception(self._non_finite_result(g.ids[0], y[0], states_out, 0))
            self._finish(c)
            return
        store = self.store
        slot = g.slot
        for name, arr in store.states.items():
            arr[slot] = states_out[name][0]
        after = g.prior_one + g.T
        store.steps[slot] = after
        store.last_active[slot] = now
        if store.last_output is not None:
            store.last_output[slot] = y[0, -1]
        if not c.future.done():
            c.future.set_result(StepResult(y[0], after))
        self._finish(c)

    def _create(self, g: _Group, slots: IntArray, creating: BoolArray, now: float) -> None:
        """Reserve slots for the rows that start new sessions; rows that find no room fail with
        RESOURCE_EXHAUSTED. With LRU eviction, a full model's least recently used idle sessions
        are only *picked* here (held in their lanes, still live): `_commit_evicting` evicts as
        many as the rows that are applied need, so a row that is not applied evicts nobody."""
        store = self.store
        errors = g.errors
        new_rows = np.flatnonzero(creating)
        if errors and new_rows.size:
            new_rows = np.array([r for r in new_rows.tolist() if r not in errors], np.int64)
        if not new_rows.size:
            return
        new_slots = store.reserve(new_rows.size)
        room = new_slots
        if new_slots.size < new_rows.size and self._evict_lru:
            victims = store.lru_slots(new_rows.size - new_slots.size, self.lanes.busy)
            if victims.size:
                hold = _EvictionHold(store.ids[victims].tolist())
                g.victims, g.hold = victims, hold  # set first: _unreserve releases it whatever
                ready = self.lanes.enter(hold)
                assert ready, "LRU candidates are idle sessions"
                # The new rows gather from the victims' slots (their states are replaced by the
                # initial state of the start), and get their slots for good at commit.
                room = np.concatenate([new_slots, victims])
        if room.size < new_rows.size:
            for r in new_rows[room.size :].tolist():
                errors[r] = ResourceExhausted(
                    f"model {self.model!r} version {self.version} holds its maximum of "
                    f"{store.max_sessions} sessions; session {g.ids[r]!r} was not created "
                    "(end or close idle sessions, or raise sessions.max_sessions_per_model)"
                )
            new_rows = new_rows[: room.size]
        slots[new_rows] = room
        g.new_rows, g.new_slots = new_rows, new_slots

    def _commit_evicting(self, g: _Group, now: float) -> None:
        """Commit the new sessions of a group that picked LRU victims (see `_create`): the rows
        still in new_rows (the others were not applied) take the free reserved slots first, then
        the slots of just enough victims, least recently used first, which are evicted now. The
        other victims stay as they were; every victim's lane is released."""
        store = self.store
        rows, free, victims, hold = g.new_rows, g.new_slots, g.victims, g.hold
        g.new_rows = g.new_slots = g.victims = _NO_ROWS
        g.hold = None
        try:
            k = rows.size
            if k <= free.size:
                slots = free[:k]
                store.release(free[k:])
            else:
                evict = victims[: k - free.size]
                gone = store.remove(evict, "lru", now)
                log.info(
                    "evicted %d least recently used sessions",
                    len(gone),
                    extra={"model": self.model, "session_id": gone[0]},
                )
                # remove() put exactly these slots on top of the free stack.
                slots = np.concatenate([free, store.reserve(evict.size)])
            if k:
                ok_rows = g.ok_rows
                pos = rows if ok_rows is None else np.searchsorted(ok_rows, rows)
                g.slots_ok[pos] = slots
                store.commit_new([g.ids[r] for r in rows.tolist()], slots, now)
        finally:
            if hold is not None:
                self.lanes.release(hold)

    def _unreserve(self, g: _Group) -> None:
        """Nothing of the group is applied: give back its reserved slots; its LRU victims (if
        any) stay, untouched, and their lanes are released."""
        if g.new_slots.size:
            self.store.release(g.new_slots)
            g.new_slots = _NO_ROWS
        g.new_rows = _NO_ROWS
        hold = g.hold
        if hold is not None:
            g.hold = None
            g.victims = _NO_ROWS
            self.lanes.release(hold)

    def _resolve(self, g: _Group, res: tuple[FloatArray, States] | None, now: float | None) -> None:
        """Scatter a run's results into the store and answer every chunk of the group."""
        if g.slot >= 0 and res is not None and now is not None:
            self._resolve_one(g, res[0], res[1], now)
            return
        store = self.store
        ids = g.ids
        flags = g.flags
        y_ok: FloatArray | None = None
        after = _NO_ROWS
        if res is not None and now is not None and g.n_ok:
            y_ok, states_out = res
            if self._reject_non_finite and not _results_finite(y_ok, states_out):
                y_ok, states_out = self._drop_non_finite(g, y_ok, states_out)
        ok_rows = g.ok_rows
        if y_ok is not None and now is not None and g.n_ok:
            if g.hold is not None:
                self._commit_evicting(g, now)
            elif g.new_rows.size:
                store.commit_new([ids[r] for r in g.new_rows.tolist()], g.new_slots, now)
                g.new_rows = g.new_slots = _NO_ROWS  # committed: nothing left to give back
            slots_ok = g.slots_ok
            for name, arr in store.states.items():
                arr[slots_ok] = states_out[name]
            prior_ok = g.prior if ok_rows is None else g.prior[ok_rows]
            if flags & _START:
                start_ok = g.start if ok_rows is None else g.start[ok_rows]
                after = np.where(start_ok, 0, prior_ok) + g.T
            else:
                after = prior_ok + g.T
            store.steps[slots_ok] = after
            store.last_active[slots_ok] = now
            if store.last_output is not None:
                store.last_output[slots_ok] = y_ok[:, -1]
            if flags & _END:
                end_ok = g.end if ok_rows is None else g.end[ok_rows]
                if end_ok.any():
                    store.remove(slots_ok[end_ok], "end", now)
        elif g.new_slots.size or g.hold is not None:  # nothing applied: nobody is evicted
            self._unreserve(g)
        # Position of each row among the rows that ran (-1 for failed rows).
        pos: IntArray | None = None
        if ok_rows is not None:
            pos = np.full(len(ids), -1, np.int64)
            pos[ok_rows] = np.arange(ok_rows.size)
        errors = g.errors
        # Python ints for the per-step loop (indexing a list beats indexing an array).
        after_at: list[int] = after.tolist()
        pos_at: list[int] | None = None if pos is None else pos.tolist()
        off = 0
        for c in g.items:
            n = len(c.ids)
            fut = c.future
            if fut.done():  # the caller gave up while the run was in flight
                pass
            elif not c.frame:
                err = errors.get(off) if errors else None
                if err is not None:
                    fut.set_exception(err)
                elif y_ok is not None:
                    p = off if pos_at is None else pos_at[off]
                    fut.set_result(StepResult(y_ok[p], after_at[p]))
            else:
                fut.set_result(self._frame_result(g, off, n, y_ok, after, pos))
            self._finish(c)
            off += n

    def _drop_non_finite(
        self, g: _Group, y_ok: FloatArray, states_out: States
    ) -> tuple[FloatArray, States]:
        """Fail the rows whose outputs or new state came out NaN or Inf, like rejected input:
        their sessions stay exactly as they were (a session about to be created is not). Returns
        the rows that remain; g's bookkeeping of which rows run is narrowed to them."""
        bad = ~rows_finite(y_ok)
        for arr in states_out.values():
            bad |= ~rows_finite(arr)
        rows = np.arange(len(g.ids)) if g.ok_rows is None else g.ok_rows
        for p in np.flatnonzero(bad).tolist():
            r = int(rows[p])
            g.errors[r] = self._non_finite_result(g.ids[r], y_ok[p], states_out, p)
        if g.new_rows.size:
            dropped = np.isin(g.new_rows, rows[bad])
            if dropped.any():
                if g.hold is None:
                    self.store.release(g.new_slots[dropped])
                    g.new_slots = g.new_slots[~dropped]
                # else: _commit_evicting hands out the slots (and evicts) for the rows left.
                g.new_rows = g.new_rows[~dropped]
        keep = np.flatnonzero(~bad)
        g.ok_rows, g.slots_ok, g.n_ok = rows[keep], g.slots_ok[keep], keep.size
        return y_ok[keep], {name: arr[keep] for name, arr in states_out.items()}

    def _non_finite_result(
        self, session_id: str, y: FloatArray, states_out: States, row: int
    ) -> InvalidArgument:
        """Why a chunk whose (finite) input drove the model to NaN or Inf was not applied."""
        parts = [] if np.isfinite(y).all() else ["outputs"]
        parts += [
            f"state {name!r}"
            for name, a in states_out.items()
            if not rows_finite(a[row : row + 1])[0]
        ]
        what = " and ".join(parts)
        return InvalidArgument(
            f"session {session_id!r}, model {self.model!r}: the chunk's input is finite but "
            f"its {what} came out NaN or Inf (values far outside what the model was trained on "
            "overflow it); the chunk was not applied and the session is unchanged"
        )

    def _frame_result(
        self,
        g: _Group,
        off: int,
        n: int,
        y_ok: FloatArray | None,
        after: IntArray,
        pos: IntArray | None,
    ) -> FrameResult:
        if pos is None and y_ok is not None:  # every row ran
            if off == 0 and n == y_ok.shape[0]:
                return FrameResult(y_ok, after, [None] * n)
            return FrameResult(y_ok[off : off + n], after[off : off + n], [None] * n)
        y = np.full((n, g.T, self.runner.output_features), np.nan, np.float32)
        steps = g.prior[off : off + n].copy()
        errs: list[RnnServeError | None] = [None] * n
        assert pos is not None
        p = pos[off : off + n]
        ran = p >= 0
        if y_ok is not None and ran.any():
            y[ran] = y_ok[p[ran]]
            steps[ran] = after[p[ran]]
        for r, err in g.errors.items():
            if off <= r < off + n:
                errs[r - off] = err
        return FrameResult(y, steps, errs)


def _all_finite_quick(x: FloatArray) -> bool:
    """True when every value is finite. Element-wise, not through a sum: a sum of +Inf and -Inf
    makes numpy warn "invalid value" (an error where warnings are errors), and a float64 sum
    costs 3-4x more than np.isfinite on a batch's states (about the same on one step)."""
    return bool(_ISFINITE(x).all())


def _results_finite(y: FloatArray, states: States) -> bool:
    """A run's outputs and new float states hold no NaN or Inf (integer states always pass)."""
    if not _all_finite_quick(y):
        return False
    return all(a.dtype.kind != "f" or _all_finite_quick(a) for a in states.values())


def _mask(n: int, rows: dict[int, Any]) -> BoolArray:
    m = np.zeros(n, np.bool_)
    m[list(rows)] = True
    return m
