"""The service layer: everything the front ends (native gRPC, KServe v2) need, with no protobuf or
grpc in sight. Front ends convert messages to the domain types in `types.py`, call these methods
and map `RnnServeError.code` to their status codes.

Contract for implementers and callers:
- Every method raises RnnServeError subclasses (never bare exceptions) for anything a client did.
- A rejected request leaves every session's state, step count and timestamps exactly as before.
- Steps for one session are applied strictly in the order `step`/`frame` were called for it.

Session semantics:
- Session ids are global across models: a session belongs to the model version that created it;
  naming another model (or another explicit version) for it is FAILED_PRECONDITION. With version
  None (latest) a request goes to the version the session lives on.
- `start` on a live id resets it to the initial state (step 0) before the chunk; on an unknown id
  it creates the session; with an empty id the server assigns one (uuid4 hex).
- `expected_step` is compared with the session's count *before* the chunk (0 for a session that
  the chunk creates), so a retried chunk is never applied twice.
- Admin operations (reset, close, export, import, forecast's state copy) are ordered with the
  session's steps: they see every step submitted before them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from rnnserve_proto import model_repository_pb2
from rnnserve_server import repository, validation
from rnnserve_server.batcher import Batcher, FrameResult, StepResult
from rnnserve_server.config import ServerSettings
from rnnserve_server.cores import lower_priority, usable_cores
from rnnserve_server.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    RnnServeError,
    Unavailable,
)
from rnnserve_server.lanes import SessionLanes
from rnnserve_server.metrics import Metrics
from rnnserve_server.outcome import Outcome
from rnnserve_server.runtime import ModelRunner
from rnnserve_server.store import LAST_OUTPUT, RecentEnds, SessionStore
from rnnserve_server.sweeper import Sweeper
from rnnserve_server.types import (
    FloatArray,
    FrameInput,
    FrameOutput,
    ModelInfo,
    SessionInfo,
    SessionSnapshot,
    StepInput,
    StepOutput,
)

log = logging.getLogger("rnnserve.service")
_ID_OK = validation.ID_RE.fullmatch
# Step counts are int64; an imported count leaves room for any number of chunks after it.
MAX_IMPORT_STEP = 2**62

_REASON_TEXT = {
    "end": "was ended by its client (end flag)",
    "close": "was closed (CloseSession)",
    "ttl": "expired: it was idle longer than the idle TTL",
    "lru": "was evicted to make room for newer sessions (LRU, the model was full)",
    "replaced": "was replaced by an imported session",
}


def _few_cores(settings: ServerSettings) -> bool:
    """Fewer usable cores (affinity and container CPU limit) than the event loop, gRPC's threads
    and every ORT worker each want one of."""
    return usable_cores() < settings.runtime.run_workers + 2


def _parallel_light_batches(settings: ServerSettings) -> bool:
    """BatcherSettings.parallel_light_batches, with 'auto' resolved against the usable cores."""
    choice = settings.batcher.parallel_light_batches
    if choice != "auto":
        return choice == "on"
    return not _few_cores(settings)


def _worker_nice(settings: ServerSettings) -> int:
    """RuntimeSettings.worker_nice, with 'auto' resolved against the usable cores."""
    choice = settings.runtime.worker_nice
    if choice != "auto":
        return choice
    return 19 if _few_cores(settings) else 0


class LoadedModel:
    """One loaded model version and the objects serving it."""

    __slots__ = ("batcher", "features", "meta", "name", "runner", "store", "streaming", "version")

    def __init__(self, runner: ModelRunner, store: SessionStore, batcher: Batcher) -> None:
        self.runner = runner
        self.store = store
        self.batcher = batcher
        # plain attributes: read on every request
        self.meta: model_repository_pb2.ModelMetadata = runner.meta
        self.name: str = runner.meta.name
        self.version = int(runner.meta.version)
        self.streaming = bool(runner.meta.streaming)
        self.features = runner.input_features


class InferenceService:
    """Facade over the model registry, the session stores, the batchers and the sweeper."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        models: dict[str, dict[int, LoadedModel]],
        lanes: SessionLanes,
        executor: ThreadPoolExecutor,
        recent: RecentEnds,
    ) -> None:
        """Use `create`; this only wires already-built parts together."""
        self.settings = settings
        self.metrics = metrics
        self._models = models
        self._latest = {name: versions[max(versions)] for name, versions in models.items()}
        self._stores = [m.store for versions in models.values() for m in versions.values()]
        self._lanes = lanes
        self._executor = executor
        self._recent = recent
        self._limits = settings.limits
        self._max_chunk = settings.limits.max_chunk_steps
        self._closing = False
        self._sweeper = Sweeper(self._all_models(), lanes, settings.sessions)

    @classmethod
    async def create(
        cls, settings: ServerSettings, registry: CollectorRegistry | None = None
    ) -> InferenceService:
        """Load the repository, create ORT sessions and start background tasks (batchers, TTL
        sweeper) on the running event loop. `registry`: where metrics are defined (a fresh one
        when None); the service's metrics are `service.metrics`."""
        metrics = Metrics(registry)
        found = repository.scan(settings.model_repository, settings.models or None)
        loop = asyncio.get_running_loop()
        nice = _worker_nice(settings)
        if nice:
            log.info(
                "ONNX Runtime workers run at nice %d: the event loop and gRPC preempt them "
                "(%d usable cores)",
                nice,
                usable_cores(),
            )
        executor = ThreadPoolExecutor(
            max_workers=settings.runtime.run_workers,
            thread_name_prefix="rnnserve-ort",
            initializer=functools.partial(lower_priority, nice),
        )
        lanes = SessionLanes()
        recent = RecentEnds()
        models: dict[str, dict[int, LoadedModel]] = {}
        try:
            for name, versions in found.items():
                for version, mv in versions.items():
                    # Session creation can take a while: keep the loop responsive.
                    runner = await loop.run_in_executor(executor, ModelRunner, mv, settings.runtime)
                    meta = runner.meta
                    store = SessionStore(
                        name,
                        version,
                        runner.states,
                        settings.sessions.max_sessions_per_model,
                        metrics,
                        recent,
                        last_output_features=runner.output_features if meta.autoregressive else 0,
                    )
                    batcher = Batcher(
                        runner,
                        store,
                        lanes,
                        executor,
                        metrics,
                        max_batch_size=settings.batcher.max_batch_size,
                        max_queue_delay_ms=settings.batcher.max_queue_delay_ms,
                        inline_max_steps=settings.batcher.inline_max_steps,
                        evict_lru=settings.sessions.eviction == "lru",
                        reject_non_finite=not settings.limits.allow_non_finite,
                        describe_missing=functools.partial(_describe_missing, models, recent),
                        store_of=functools.partial(_store_of, models),
                        max_in_flight=settings.runtime.run_workers,
                        parallel_light_batches=_parallel_light_batches(settings),
                    )
                    models.setdefault(name, {})[version] = LoadedModel(runner, store, batcher)
                    metrics.set_model_info(
                        name,
                        version,
                        meta.variant,
                        runner.provider,
                        meta.streaming,
                        runner.step_graph,
                    )
                    log.info(
                        "loaded model %s version %d (%s, %s, provider %s)",
                        name,
                        version,
                        meta.variant,
                        "streaming" if meta.streaming else "whole-sequence",
                        runner.provider,
                        extra={"model": name, "version": version, "provider": runner.provider},
                    )
        except Exception:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        service = cls(settings, metrics, models, lanes, executor, recent)
        for m in service._all_models():
            m.batcher.start()
        service._sweeper.start()
        return service

    async def close(self, grace_s: float) -> None:
        """Stop accepting work, finish what is queued or in flight within `grace_s`, stop tasks."""
        if self._closing:
            return
        self._closing = True
        batchers = [m.batcher for m in self._all_models()]
        pending = sum(b.pending for b in batchers)
        log.info("shutting down: %d chunks queued or in flight", pending)
        try:
            await asyncio.wait_for(asyncio.gather(*[b.drain() for b in batchers]), grace_s)
        except TimeoutError:
            log.warning(
                "shutdown grace of %.1f s ran out; %d chunks failed with UNAVAILABLE",
                grace_s,
                sum(b.pending for b in batchers),
            )
        await self._sweeper.stop()
        for b in batchers:
            await b.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def closing(self) -> bool:
        return self._closing

    def _check_open(self) -> None:
        if self._closing:
            raise Unavailable("server is shutting down")

    # -- models ------------------------------------------------------------------------------------
    def _all_models(self) -> list[LoadedModel]:
        return [m for versions in self._models.values() for m in versions.values()]

    def _model(self, name: str, version: int | None) -> LoadedModel:
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not loaded (loaded models: {known})")
        if not version:
            return self._latest[name]
        m = versions.get(version)
        if m is None:
            have = ", ".join(str(v) for v in versions)
            raise NotFound(f"model {name!r} has no version {version} (loaded versions: {have})")
        return m

    def _streaming(self, name: str, version: int | None) -> LoadedModel:
        m = self._model(name, version)
        if not m.meta.streaming:
            raise FailedPrecondition(
                f"model {name!r} is a whole-sequence ({m.meta.variant}) model and keeps no "
                "state between calls; it cannot be streamed: use Predict"
            )
        return m

    def _locate(self, session_id: str) -> LoadedModel | None:
        return _locate(self._models, session_id)

    def model_of(self, session_id: str) -> str:
        """The model a live session belongs to, "" when none (for metric labels)."""
        m = self._locate(session_id)
        return "" if m is None else m.name

    def _missing(self, session_id: str, asked: SessionStore) -> RnnServeError:
        return _describe_missing(self._models, self._recent, session_id, asked)

    def _route(self, session_id: str, model: str, version: int | None) -> LoadedModel:
        """The model version that serves `session_id` for a request naming model/version."""
        target = self._model(model, version)
        if session_id in target.store.slot_of:
            return target
        owner = self._locate(session_id)
        if owner is None:
            last = self._lanes.last(session_id)
            if last is not None and last.owner is not None and last.owner is not target.batcher:
                owner_b = last.owner
                if owner_b.model != model or version:
                    raise FailedPrecondition(
                        f"session {session_id!r} is being created on model {owner_b.model!r} "
                        f"version {owner_b.version}; model {model!r} cannot use it"
                    )
                return self._model(owner_b.model, owner_b.version)
            return target
        if owner.name != model or (version and owner.version != version):
            raise FailedPrecondition(
                f"session {session_id!r} belongs to model {owner.name!r} version "
                f"{owner.version}, not model {model!r}"
                + (f" version {version}" if version else "")
                + "; close it first or use another session id"
            )
        return owner

    # -- inference ---------------------------------------------------------------------------------
    async def step(self, request: StepInput) -> StepOutput:
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        session_id, model, version = self.submit_step(request, future)
        res = await future
        return StepOutput(session_id, model, version, res.y, res.step)

    async def step_and_export(
        self, request: StepInput, close: bool = False
    ) -> tuple[StepOutput, SessionSnapshot]:
        """A step and the session's state right after it (closing the session then if `close`).
        The export takes its place in the session's lane together with the step, so no later
        chunk of the session, not even one submitted before this coroutine resumes, can change
        the state it reads (a stream that pipelines its requests needs that). A rejected step
        is neither exported nor closed: the session stays as it was."""
        stepped: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        session_id, model, version = self.submit_step(request, stepped)

        def export() -> SessionSnapshot | None:
            # The lane runs this after the step has resolved (a later loop iteration).
            if not stepped.done() or stepped.cancelled() or stepped.exception() is not None:
                return None
            m = self._located(session_id)
            snap = m.store.snapshot(session_id)
            assert snap is not None
            if close:
                self._close_in(m, session_id, "end")  # as a step's end flag counts it
            return snap

        exported = self._lanes.submit_exclusive([session_id], export)
        res = await stepped
        snap: SessionSnapshot | None = await exported
        assert snap is not None
        return StepOutput(session_id, model, version, res.y, res.step), snap

    def submit_step(self, request: StepInput, outcome: Outcome) -> tuple[str, str, int]:
        """`step` without the await: validate and queue the chunk now (raising RnnServeError for
        a rejection, before any state is touched); its StepResult or RnnServeError goes to
        `outcome` later. Streams pass an object that answers when the batcher resolves it: no
        task and no event-loop hop per message. Returns where the chunk went: (session id, the
        server-assigned one when the request had none; model; version), a plain tuple (a
        NamedTuple costs half a microsecond more per step)."""
        # The hot path: a handful of cheap checks, each with a slow path that explains.
        if self._closing:
            raise Unavailable("server is shutting down")
        sid = request.session_id
        if not sid:
            if not request.start:
                raise InvalidArgument(
                    "session_id is empty; send start=true to get a server-assigned id"
                )
            sid = uuid.uuid4().hex
        elif _ID_OK(sid) is None:
            validation.check_session_id(sid)
        version = request.version
        m = None if version else self._latest.get(request.model)
        if m is None or not m.streaming:
            m = self._streaming(request.model, version)
        if sid not in m.store.slot_of:
            # Before the checks: a session may live on another version, with another input width.
            m = self._route(sid, request.model, version)
        x = request.x
        if not (
            type(x) is np.ndarray
            and x.dtype == np.float32
            and x.ndim == 2
            and x.shape[1] == m.features
            and 0 < x.shape[0] <= self._max_chunk
        ):
            where = f"session {sid!r}, model {request.model!r}"
            x = validation.check_chunk(x, m.features, self._limits, where, check_finite=False)
        expected = request.expected_step
        if expected is not None and expected < 0:
            raise InvalidArgument(f"session {sid!r}: expected_step must be >= 0, got {expected}")
        # NaN/Inf are checked by the batcher, vectorised over the whole batch.
        m.batcher.submit_step(sid, x, request.start, request.end, expected, outcome)
        return sid, m.name, m.version

    async def frame(self, request: FrameInput) -> FrameOutput:
        """Per-session failures are reported in FrameOutput.errors; only frame-wide problems
        (unknown model, bad tensor shape) raise."""
        self._check_open()
        m = self._streaming(request.model, request.version)
        ids = list(request.session_ids)
        n = len(ids)
        where = f"frame for model {request.model!r}"
        if n == 0:
            raise InvalidArgument(f"{where}: no session ids")
        if n > self._limits.max_frame_sessions:
            raise InvalidArgument(
                f"{where}: {n} sessions; at most {self._limits.max_frame_sessions} per frame"
            )
        x = validation.as_float32(request.x, "input")
        F = m.runner.input_features
        if x.ndim != 3 or x.shape[0] != n or x.shape[2] != F:
            raise InvalidArgument(
                f"{where}: input must have shape [{n}, T, {F}] (sessions, steps, features), "
                f"got {list(x.shape)}"
            )
        T = x.shape[1]
        if T == 0:
            raise InvalidArgument(f"{where}: the chunk is empty (T=0)")
        if self._limits.max_chunk_steps < T:
            raise InvalidArgument(
                f"{where}: {T} steps per session; at most {self._limits.max_chunk_steps}"
            )
        start = _flags(request.start, n, "start", where)
        end = _flags(request.end, n, "end", where)
        expected = np.asarray(request.expected_step, np.int64)
        if expected.size == 0:
            expected = np.full(n, -1, np.int64)
        elif expected.shape != (n,):
            raise InvalidArgument(f"{where}: expected_step needs {n} values, got {expected.size}")
        if len(set(ids)) != n:
            seen: set[str] = set()
            dup = next(s for s in ids if s in seen or seen.add(s))  # type: ignore[func-returns-value]
            raise InvalidArgument(f"{where}: session id {dup!r} appears more than once")
        slot_of = m.store.slot_of
        live = all(map(slot_of.__contains__, ids))  # C-level; the steady state of a gateway
        # Per-session problems found before the batcher: those sessions are left out. Ids of
        # live sessions were checked when they were created.
        pre: dict[int, RnnServeError] = (
            {}
            if live
            else {i: InvalidArgument(p) for i, p in validation.bad_session_ids(ids).items()}
        )
        if (expected < -1).any():
            for i in np.flatnonzero(expected < -1).tolist():
                pre[i] = InvalidArgument(f"session {ids[i]!r}: expected_step must be >= -1")
        # Sessions living on another model or version (or being created there).
        lanes = self._lanes
        for i in [] if live else [i for i, s in enumerate(ids) if s not in slot_of]:
            sid = ids[i]
            if i in pre:
                continue
            owner = self._locate(sid)
            if owner is not None:
                pre[i] = self._missing(sid, m.store)
                continue
            last = lanes.last(sid)
            if last is not None and last.owner is not None and last.owner is not m.batcher:
                pre[i] = FailedPrecondition(
                    f"session {sid!r} is being created on model {last.owner.model!r} version "
                    f"{last.owner.version}; this frame is for model {m.name!r} version {m.version}"
                )
        if not pre:
            res: FrameResult = await m.batcher.submit(ids, x, start, end, expected, frame=True)
            return FrameOutput(m.name, m.version, ids, res.y, res.steps, res.errors)
        keep = np.array([i for i in range(n) if i not in pre], np.int64)
        y = np.full((n, T, m.runner.output_features), np.nan, np.float32)
        steps = np.full(n, -1, np.int64)
        errors: list[RnnServeError | None] = [None] * n
        for i, err in pre.items():
            errors[i] = err
            info = m.store.info(ids[i])
            if info is not None:
                steps[i] = info.step
        if keep.size:
            sub_ids = [ids[i] for i in keep.tolist()]
            res = await m.batcher.submit(
                sub_ids, x[keep], start[keep], end[keep], expected[keep], frame=True
            )
            y[keep] = res.y
            steps[keep] = res.steps
            for j, i in enumerate(keep.tolist()):
                errors[i] = res.errors[j]
        return FrameOutput(m.name, m.version, ids, y, steps, errors)

    async def predict(self, model: str, version: int | None, x: FloatArray) -> FloatArray:
        """Stateless run from the initial state; x is [T, F] or [B, T, F], same rank returned."""
        self._check_open()
        m = self._model(model, version)
        x = validation.as_float32(x, "input")
        F = m.runner.input_features
        where = f"predict for model {model!r}"
        if x.ndim not in (2, 3) or x.shape[-1] != F:
            raise InvalidArgument(
                f"{where}: input must have shape [T, {F}] or [B, T, {F}], got {list(x.shape)}"
            )
        xb = x[None] if x.ndim == 2 else x
        if xb.shape[0] == 0 or xb.shape[1] == 0:
            raise InvalidArgument(f"{where}: the input is empty (shape {list(x.shape)})")
        total = xb.shape[0] * xb.shape[1]
        if total > self._limits.max_predict_steps:
            raise InvalidArgument(
                f"{where}: {total} steps (B x T); at most {self._limits.max_predict_steps}"
            )
        if not self._limits.allow_non_finite:
            validation.check_finite(xb, where)
        loop = asyncio.get_running_loop()
        try:
            y = await loop.run_in_executor(self._executor, m.runner.predict, xb)
        except RuntimeError as exc:  # executor shut down
            raise Unavailable("server is shutting down") from exc
        except Exception as exc:
            log.error("predict failed: %s", exc, extra={"model": model})
            raise Internal(f"model {model!r} version {m.version} failed to run: {exc}") from exc
        finite = None if self._limits.allow_non_finite else validation.rows_finite(y)
        if finite is not None and not finite.all():
            # As for streamed chunks: no NaN/Inf crosses the API unless allowed.
            rows = np.flatnonzero(~finite).tolist()
            which = "" if x.ndim == 2 else f" in sequence(s) {_first(rows)} of the batch"
            raise InvalidArgument(
                f"{where}: the input is finite but the outputs came out NaN or Inf{which} "
                "(values far outside what the model was trained on overflow it)"
            )
        return y[0] if x.ndim == 2 else y

    async def forecast(self, session_id: str, horizon: int) -> tuple[FloatArray, int]:
        """Autoregressive rollout [H, O] from the session's state; returns it and the session's
        (unchanged) step count. FAILED_PRECONDITION for non-autoregressive models.

        The rollout starts from the session's last prediction (the forecast of its next input)
        and feeds each prediction back as the next raw input, on a copy of the state."""
        self._check_open()
        validation.check_session_id(session_id)
        m = self._locate(session_id)
        if m is None:
            # It may be queued for creation: wait for its earlier work, then look again.
            m = await self._lanes.exclusive([session_id], lambda: self._locate(session_id))
            if m is None:
                raise (
                    self._missing(session_id, self._stores[0])
                    if self._stores
                    else NotFound(f"session {session_id!r} does not exist")
                )
        if not m.meta.autoregressive:
            raise FailedPrecondition(
                f"model {m.name!r} ({m.meta.variant}) is not autoregressive: its output does not "
                "predict its next input, so it cannot forecast"
            )
        limit = self._limits.max_forecast_horizon
        if not 1 <= horizon <= limit:
            raise InvalidArgument(f"horizon must be between 1 and {limit}, got {horizon}")
        store = m.store

        def copy_state() -> tuple[dict[str, np.ndarray], np.ndarray, int]:
            slot = store.slot_of.get(session_id)
            if slot is None:
                raise self._missing(session_id, store)
            assert store.last_output is not None
            first = store.last_output[slot].copy()
            step = int(store.steps[slot])
            if step == 0 or not np.isfinite(first).all():
                raise FailedPrecondition(
                    f"session {session_id!r} has no prediction yet (step {step}); send at least "
                    "one step before forecasting"
                )
            states = {name: arr[slot : slot + 1].copy() for name, arr in store.states.items()}
            return states, first, step

        states, first, step = await self._lanes.exclusive([session_id], copy_state)
        loop = asyncio.get_running_loop()
        try:
            y = await loop.run_in_executor(
                self._executor, m.runner.forecast, first, states, horizon
            )
        except RuntimeError as exc:
            raise Unavailable("server is shutting down") from exc
        except Exception as exc:
            log.error("forecast failed: %s", exc, extra={"model": m.name, "session_id": session_id})
            raise Internal(f"model {m.name!r} failed to run: {exc}") from exc
        finite = None if self._limits.allow_non_finite else validation.rows_finite(y)
        if finite is not None and not finite.all():
            # Step 1 is the session's own (finite) last prediction, so bad >= 1.
            bad = int(np.flatnonzero(~finite)[0])
            raise InvalidArgument(
                f"forecast for session {session_id!r}: the rollout overflows to NaN or Inf at "
                f"step {bad + 1} of {horizon} (the model diverges when fed its own predictions), "
                f"so a horizon of at most {bad} stays finite; the session is unchanged"
            )
        return y, step

    # -- sessions ----------------------------------------------------------------------------------
    def _find(self, session_id: str) -> LoadedModel:
        validation.check_session_id(session_id)
        m = self._locate(session_id)
        if m is None:
            raise (
                self._missing(session_id, self._stores[0])
                if self._stores
                else NotFound(f"session {session_id!r} does not exist")
            )
        return m

    def get_session(self, session_id: str) -> SessionInfo:
        m = self._find(session_id)
        info = m.store.info(session_id)
        assert info is not None
        return info

    def list_sessions(
        self, model: str | None = None, limit: int = 0
    ) -> tuple[list[SessionInfo], int]:
        """Sessions (optionally of one model), at most `limit` (0 = all), and the total count."""
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0, got {limit}")
        if model:
            self._model(model, None)
            stores = [m.store for m in self._models[model].values()]
        else:
            stores = self._stores
        total = sum(len(s) for s in stores)
        out: list[SessionInfo] = []
        for s in stores:
            if limit and len(out) >= limit:
                break
            out.extend(s.infos(limit - len(out) if limit else 0))
        return out, total

    async def _exclusive(self, session_id: str, fn: Any) -> Any:
        """Run fn(model) once the session's earlier work is done (re-locating it then)."""
        validation.check_session_id(session_id)

        def run() -> Any:
            return fn(self._located(session_id))

        return await self._lanes.exclusive([session_id], run)

    def _located(self, session_id: str) -> LoadedModel:
        """The model holding a live session, or NOT_FOUND."""
        m = self._locate(session_id)
        if m is None:
            raise self._missing(session_id, self._stores[0])
        return m

    async def reset_session(self, session_id: str) -> SessionInfo:
        def reset(m: LoadedModel) -> SessionInfo:
            slot = m.store.slot_of[session_id]
            m.store.reset(np.array([slot], np.int64), time.time())
            log.debug("session reset", extra={"session_id": session_id, "model": m.name})
            return m.store.info_at(session_id, slot)

        info: SessionInfo = await self._exclusive(session_id, reset)
        return info

    async def close_session(self, session_id: str) -> SessionInfo:
        info: SessionInfo = await self._exclusive(
            session_id, lambda m: self._close_in(m, session_id, "close")
        )
        return info

    @staticmethod
    def _close_in(m: LoadedModel, session_id: str, reason: str) -> SessionInfo:
        slot = m.store.slot_of[session_id]
        info = m.store.info_at(session_id, slot)
        m.store.remove(np.array([slot], np.int64), reason, time.time())
        log.debug("session closed", extra={"session_id": session_id, "model": m.name})
        return info

    async def export_session(self, session_id: str) -> SessionSnapshot:
        def export(m: LoadedModel) -> SessionSnapshot:
            snap = m.store.snapshot(session_id)
            assert snap is not None
            return snap

        snap: SessionSnapshot = await self._exclusive(session_id, export)
        return snap

    async def import_session(
        self, snapshot: SessionSnapshot, overwrite: bool = False
    ) -> SessionInfo:
        self._check_open()
        info = snapshot.info
        sid = info.session_id
        validation.check_session_id(sid)
        m = self._streaming(info.model, info.version or None)
        _check_snapshot(snapshot, m, reject_non_finite=not self._limits.allow_non_finite)
        target = m

        def do_import() -> SessionInfo:
            now = time.time()
            store = target.store
            current = self._locate(sid)
            if current is not None and not overwrite:
                raise AlreadyExists(
                    f"session {sid!r} already exists on model {current.name!r} version "
                    f"{current.version}; import with overwrite to replace it"
                )
            replaced = None if current is None else current.store.slot_of[sid]
            if current is not None and current.store is store:
                # Its own slot makes room: the removal below cannot leave the import without one.
                current.store.remove(np.array([replaced], np.int64), "replaced", now)
                current = None
            # Room first, so that a full model refuses the import with the old session intact.
            slots = store.reserve(1)
            if slots.size == 0 and self.settings.sessions.eviction == "lru":
                victims = store.lru_slots(1, self._lanes.busy)
                store.remove(victims, "lru", now)
                slots = store.reserve(1)
            if slots.size == 0:
                raise _full(store)
            if current is not None:
                current.store.remove(np.array([replaced], np.int64), "replaced", now)
            store.commit_new([sid], slots, now)
            slot = int(slots[0])
            # A creation time ahead of this server's clock (another server's) is taken as now.
            created = min(info.created_unix, now)
            fixed = dataclasses.replace(info, created_unix=created)
            store.write(slot, dataclasses.replace(snapshot, info=fixed), now)
            log.debug("session imported", extra={"session_id": sid, "model": store.model})
            return store.info_at(sid, slot)

        result: SessionInfo = await self._lanes.exclusive([sid], do_import, target.batcher)
        return result

    # -- models ------------------------------------------------------------------------------------
    def list_models(self) -> list[ModelInfo]:
        out = []
        for name, versions in self._models.items():
            latest = self._latest[name]
            out.append(
                ModelInfo(
                    name=name,
                    versions=sorted(versions),
                    latest_version=latest.version,
                    variant=latest.meta.variant,
                    streaming=latest.meta.streaming,
                    ready=not self._closing,
                )
            )
        return out

    def model_metadata(
        self, model: str, version: int | None = None
    ) -> model_repository_pb2.ModelMetadata:
        meta = model_repository_pb2.ModelMetadata()
        meta.CopyFrom(self._model(model, version).meta)
        return meta

    def model_names(self) -> Sequence[str]:
        return list(self._models)

    # -- additions for front ends, tests and benchmarks --------------------------------------------
    def session_count(self, model: str | None = None) -> int:
        """Live sessions (of one model, or all)."""
        if model:
            return sum(len(m.store) for m in self._models.get(model, {}).values())
        return sum(len(s) for s in self._stores)

    def sweep_now(self) -> int:
        """Run one TTL sweep at once; returns the number of sessions evicted."""
        return self._sweeper.sweep()


def _locate(models: dict[str, dict[int, LoadedModel]], session_id: str) -> LoadedModel | None:
    for versions in models.values():
        for m in versions.values():
            if session_id in m.store.slot_of:
                return m
    return None


def _store_of(models: dict[str, dict[int, LoadedModel]], session_id: str) -> SessionStore | None:
    m = _locate(models, session_id)
    return None if m is None else m.store


def _describe_missing(
    models: dict[str, dict[int, LoadedModel]],
    recent: RecentEnds,
    session_id: str,
    asked: SessionStore,
) -> RnnServeError:
    """The error for a session that is not in `asked` (the store a request went to)."""
    other = _locate(models, session_id)
    if other is not None and other.store is not asked:
        return FailedPrecondition(
            f"session {session_id!r} belongs to model {other.name!r} version "
            f"{other.version}, not model {asked.model!r} version {asked.version}"
        )
    ended = recent.get(session_id)
    if ended is not None:
        ago = max(0.0, time.time() - ended.at_unix)
        return NotFound(
            f"session {session_id!r} does not exist: it {_REASON_TEXT[ended.reason]} "
            f"{ago:.0f} s ago; send start=true to begin a new one"
        )
    return NotFound(
        f"session {session_id!r} does not exist (never started, ended, or expired); send "
        "start=true to create it"
    )


def _flags(values: Any, n: int, name: str, where: str) -> np.ndarray:
    arr = np.asarray(values, np.bool_)
    if arr.size == 0:
        return np.zeros(n, np.bool_)
    if arr.shape != (n,):
        raise InvalidArgument(f"{where}: {name} needs {n} flags (or none), got {arr.size}")
    return arr


def _full(store: SessionStore) -> RnnServeError:
    from rnnserve_server.errors import ResourceExhausted

    return ResourceExhausted(
        f"model {store.model!r} version {store.version} holds its maximum of "
        f"{store.max_sessions} sessions (end or close idle sessions, or raise "
        "sessions.max_sessions_per_model)"
    )


def _check_snapshot(snapshot: SessionSnapshot, m: LoadedModel, reject_non_finite: bool) -> None:
    info = snapshot.info
    sid = info.session_id
    if not 0 <= info.step <= MAX_IMPORT_STEP:
        raise InvalidArgument(
            f"snapshot of session {sid!r}: step must be between 0 and {MAX_IMPORT_STEP}, got "
            f"{info.step}"
        )
    if not (math.isfinite(info.created_unix) and info.created_unix >= 0):
        raise InvalidArgument(
            f"snapshot of session {sid!r}: created_unix must be a time in seconds since the "
            f"epoch (or 0 for now), got {info.created_unix}"
        )
    expected = {s.name: s for s in m.runner.states}
    names = set(snapshot.states) - {LAST_OUTPUT}
    if names != set(expected):
        raise InvalidArgument(
            f"snapshot of session {sid!r} has states {sorted(names)}, model {m.name!r} version "
            f"{m.version} needs {sorted(expected)}"
        )
    for name, spec in expected.items():
        value = np.asarray(snapshot.states[name])
        if value.shape != spec.shape or value.dtype != spec.dtype:
            raise InvalidArgument(
                f"snapshot of session {sid!r}: state {name!r} is {value.dtype}{list(value.shape)},"
                f" model {m.name!r} version {m.version} needs {spec.dtype}{list(spec.shape)}"
            )
    last = snapshot.states.get(LAST_OUTPUT)
    if last is not None and np.asarray(last).shape != (m.runner.output_features,):
        raise InvalidArgument(
            f"snapshot of session {sid!r}: {LAST_OUTPUT} must have shape "
            f"[{m.runner.output_features}]"
        )
    if reject_non_finite:
        # A poisoned state would fail every later step of the session (and Forecast with it).
        for name, value in snapshot.states.items():
            arr = np.asarray(value)
            if name == LAST_OUTPUT and np.isnan(arr).all():
                continue  # all NaN: no output yet (a fresh or reset session exports it so)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InvalidArgument(
                    f"snapshot of session {sid!r}: state {name!r} holds NaN or Inf; such a "
                    "session could not take another step (set limits.allow_non_finite to allow)"
                )


def _first(rows: list[int], shown: int = 5) -> str:
    """Row indices for a message: the first few, then how many more."""
    text = ", ".join(map(str, rows[:shown]))
    return text if len(rows) <= shown else f"{text} and {len(rows) - shown} more"
