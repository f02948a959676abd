"""Per-model session store: recurrent state in a preallocated arena, indexed by slot.

Each loaded model version owns one `SessionStore`. Every state tensor lives in one numpy array
[capacity, *shape]; step counts and timestamps are numpy arrays too, and a session is a slot
number plus one dict entry (id -> slot). An idle session therefore costs its raw state bytes plus
about a hundred bytes of bookkeeping, and a batch's states are gathered and scattered with one
fancy-indexing operation per state tensor. The arena grows geometrically (doubling) up to the
model's capacity, and shrinks again (compacting live sessions into the low slots) when a burst
is over; freed slots go back on a free stack (numpy, so frames allocate many at once).

The store is not thread-safe: only the event loop thread mutates it (the batcher gathers before
and scatters after each ONNX Runtime run on the loop). Slots of sessions with queued or running
work are protected from eviction by the caller (see `batcher.SessionLanes`).

Persistence seam: `snapshot`/`restore` turn one session into a `SessionSnapshot` and back; a
`StateBackend` (Redis in a later issue) stores those, so the store itself never does I/O.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from rnnserve_server.metrics import END_REASONS, Metrics, observe_many
from rnnserve_server.runtime import StateSpec
from rnnserve_server.types import SessionInfo, SessionSnapshot

log = logging.getLogger("rnnserve.store")

IntArray = npt.NDArray[np.int64]
# Snapshot entry that carries an autoregressive model's last prediction (Forecast's first value);
# not a StateTensor of the graph, so it has a reserved name.
LAST_OUTPUT = "__last_output__"
_INITIAL_CAPACITY = 1024


class StateBackend(Protocol):
    """Where snapshots of sessions can be persisted (Redis etc.; none is built yet).

    The service would `save` sessions it evicts or on shutdown and `load` an unknown id before
    answering NOT_FOUND. Implementations must be safe to call from the event loop (async).
    """

    async def save(self, snapshots: list[SessionSnapshot]) -> None: ...

    async def load(self, session_id: str) -> SessionSnapshot | None: ...

    async def delete(self, session_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Ended:
    """Why and when a session id stopped existing (for precise NOT_FOUND messages)."""

    model: str
    reason: str  # end, close, ttl, lru, replaced
    at_unix: float


class RecentEnds:
    """A bounded record of recently ended session ids, shared by every store."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._items: OrderedDict[str, Ended] = OrderedDict()

    def add_many(self, ids: Iterable[str], model: str, reason: str, now: float) -> None:
        items = self._items
        record = Ended(model, reason, now)
        for sid in ids:
            items[sid] = record
            items.move_to_end(sid)
        while len(items) > self._limit:
            items.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._items.pop(session_id, None)

    def get(self, session_id: str) -> Ended | None:
        return self._items.get(session_id)


class CapacityError(Exception):
    """No free slot and eviction is not allowed (the service maps it to RESOURCE_EXHAUSTED)."""


class SessionStore:
    """Sessions of one model version."""

    def __init__(
        self,
        model: str,
        version: int,
        specs: list[StateSpec],
        max_sessions: int,
        metrics: Metrics,
        recent: RecentEnds,
        last_output_features: int = 0,
        initial_capacity: int = _INITIAL_CAPACITY,
    ) -> None:
        self.model = model
        self.version = version
        self.specs = specs
        self.max_sessions = max_sessions
        self.recent = recent
        self.state_nbytes = sum(s.nbytes for s in specs)
        cap = max(1, min(max_sessions, initial_capacity))
        self._initial_capacity = cap
        self.capacity = cap
        self.states: dict[str, np.ndarray] = {
            s.name: np.empty((cap, *s.shape), s.dtype) for s in specs
        }
        self.initial = {s.name: s.initial_value for s in specs}
        # Autoregressive models keep their last prediction (raw units): Forecast starts from it.
        self.last_output: np.ndarray | None = (
            np.full((cap, last_output_features), np.nan, np.float32)
            if last_output_features
            else None
        )
        self.steps = np.zeros(cap, np.int64)
        self.created = np.zeros(cap, np.float64)
        self.last_active = np.zeros(cap, np.float64)
        self.live = np.zeros(cap, np.bool_)
        self.ids = np.empty(cap, object)
        self.slot_of: dict[str, int] = {}
        self._free = np.arange(cap - 1, -1, -1, dtype=np.int64)  # a stack; lowest slot on top
        self._n_free = cap
        self._active = metrics.active_sessions.labels(model)
        self._bytes = metrics.state_bytes.labels(model)
        # Versions of one model share the series: each store adds its own arena (inc, not set).
        self._arena_bytes = metrics.arena_bytes.labels(model)
        self._arena_bytes.inc(cap * self.state_nbytes)
        self._created_total = metrics.sessions_created.labels(model)
        self._ended = {r: metrics.sessions_ended.labels(model, r) for r in END_REASONS}
        self._session_steps = metrics.session_steps.labels(model)
        self._session_duration = metrics.session_duration.labels(model)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self.slot_of

    # -- slots -----------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        """Double the arena (at least to `need` slots), up to max_sessions."""
        old = self.capacity
        new = min(self.max_sessions, max(old * 2, need))
        if new <= old:
            return
        self._resize(new)
        free = np.empty(new, np.int64)
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[: added.size] = added
        free[added.size : added.size + self._n_free] = self._free[: self._n_free]
        self._free = free
        self._n_free += added.size
        log.info(
            "session arena grown", extra={"model": self.model, "capacity": new, "previous": old}
        )

    def shrink(self) -> int:
        """Give back arena memory after a burst: when at most a quarter of the slots are live,
        move live sessions into the lowest slots and cut the arena (by halving, never below its
        initial size, leaving at least half the new arena free so the next arrivals don't grow
        it again). Returns the new capacity, or 0 when nothing changed.

        Only safe when no slot is reserved or referenced by a batch in flight: the caller checks
        that the model's batcher has no run in flight (then nothing is reserved either, which is
        checked here)."""
        cap = self.capacity
        n_live = len(self.slot_of)
        new = cap
        while new // 2 >= max(self._initial_capacity, 2 * n_live):
            new //= 2
        if new == cap or self._n_free + n_live != cap:  # nothing to give back, or reservations
            return 0
        live = self.live
        movers = np.flatnonzero(live[new:]) + new
        if movers.size:
            targets = np.flatnonzero(~live[:new])[: movers.size]
            for arr in self._per_slot():
                arr[targets] = arr[movers]
            self.ids[targets] = self.ids[movers]
            live[targets] = True
            self.slot_of.update(zip(self.ids[targets].tolist(), targets.tolist(), strict=True))
        self._resize(new)
        self._free = np.flatnonzero(~self.live)[::-1].astype(np.int64)  # lowest slot on top
        self._n_free = self._free.size
        log.info(
            "session arena shrunk",
            extra={"model": self.model, "capacity": new, "previous": cap, "sessions": n_live},
        )
        return new

    def _resize(self, new: int) -> None:
        """Every per-slot array at `new` slots, fresh (so a shrink frees the old ones): the first
        min(old, new) rows kept, added rows empty (no session, no last output)."""
        keep = min(self.capacity, new)

        def resized(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            b = np.empty((new, *a.shape[1:]), a.dtype)
            b[:keep] = a[:keep]
            b[keep:] = fill
            return b

        self.states = {k: resized(v) for k, v in self.states.items()}
        if self.last_output is not None:
            self.last_output = resized(self.last_output, np.nan)
        self.steps = resized(self.steps)
        self.created = resized(self.created)
        self.last_active = resized(self.last_active)
        self.live = resized(self.live, False)
        self.ids = resized(self.ids, None)
        self._arena_bytes.inc((new - self.capacity) * self.state_nbytes)
        self.capacity = new

    def _per_slot(self) -> list[np.ndarray]:
        """Every array indexed by slot that holds a session's data."""
        arrays = [*self.states.values(), self.steps, self.created, self.last_active]
        if self.last_output is not None:
            arrays.append(self.last_output)
        return arrays

    def reserve(self, k: int) -> IntArray:
        """Up to k free slots (fewer when the model is full). They hold no session until
        `commit_new`; give unused ones back with `release`."""
        if k > self._n_free:
            self._grow(self.capacity - self._n_free + k)
        k = min(k, self._n_free)
        top = self._n_free
        slots = self._free[top - k : top][::-1].copy()
        self._n_free = top - k
        return slots

    def release(self, slots: IntArray) -> None:
        n = slots.size
        self._free[self._n_free : self._n_free + n] = slots
        self._n_free += n

    @property
    def free_slots(self) -> int:
        """Slots available without evicting (including arena growth)."""
        return self._n_free + (self.max_sessions - self.capacity)

    def commit_new(self, ids: list[str], slots: IntArray, now: float) -> None:
        """Register new sessions in reserved slots (their state is written by the caller)."""
        self.slot_of.update(zip(ids, slots.tolist(), strict=True))
        self.ids[slots] = ids
        self.live[slots] = True
        self.created[slots] = now
        self.last_active[slots] = now
        self.steps[slots] = 0
        if self.last_output is not None:
            self.last_output[slots] = np.nan
        n = len(ids)
        self._created_total.inc(n)
        self._active.inc(n)
        self._bytes.inc(n * self.state_nbytes)
        for sid in ids:
            self.recent.forget(sid)

    def reset(self, slots: IntArray, now: float) -> None:
        """Back to the model's initial state, step 0 (a start on a live id)."""
        for name, arr in self.states.items():
            arr[slots] = self.initial[name]
        if self.last_output is not None:
            self.last_output[slots] = np.nan
        self.steps[slots] = 0
        self.last_active[slots] = now

    def remove(self, slots: IntArray, reason: str, now: float) -> list[str]:
        """End sessions: free their slots, count and observe them. Returns their ids."""
        if slots.size == 0:
            return []
        ids: list[str] = self.ids[slots].tolist()
        slot_of = self.slot_of
        for sid in ids:
            del slot_of[sid]
        steps = self.steps[slots].tolist()
        durations = (now - self.created[slots]).tolist()
        self.ids[slots] = None
        self.live[slots] = False
        self.release(slots)
        n = len(ids)
        self._ended[reason].inc(n)
        self._active.dec(n)
        self._bytes.dec(n * self.state_nbytes)
        observe_many(self._session_steps, steps)
        observe_many(self._session_duration, durations)
        self.recent.add_many(ids, self.model, reason, now)
        return ids

    # -- eviction candidates -----------------------------------------------------------------------
    def idle_slots(self, cutoff_unix: float) -> IntArray:
        """Live slots whose last activity is older than cutoff."""
        return np.flatnonzero(self.live & (self.last_active < cutoff_unix)).astype(np.int64)

    def lru_slots(self, k: int, busy: Callable[[str], bool]) -> IntArray:
        """Up to k least recently used live sessions that have no queued or running work."""
        live = np.flatnonzero(self.live)
        if live.size == 0 or k <= 0:
            return np.empty(0, np.int64)
        # Look at a few more than k: some of the oldest may be busy.
        m = min(live.size, 2 * k + 16)
        ages = self.last_active[live]
        cand = live[np.argpartition(ages, m - 1)[:m]] if m < live.size else live
        cand = cand[np.argsort(self.last_active[cand], kind="stable")]
        picked = self._not_busy(cand, busy)
        if len(picked) < k and m < live.size:  # rare: most of the oldest were busy
            picked = self._not_busy(live[np.argsort(self.last_active[live], kind="stable")], busy)
        return np.asarray(picked[:k], np.int64)

    def _not_busy(self, slots: IntArray, busy: Callable[[str], bool]) -> list[int]:
        ids = self.ids[slots].tolist()
        return [s for s, sid in zip(slots.tolist(), ids, strict=True) if not busy(sid)]

    # -- one session -----------------------------------------------------------------------------
    def info(self, session_id: str) -> SessionInfo | None:
        slot = self.slot_of.get(session_id)
        if slot is None:
            return None
        return self.info_at(session_id, slot)

    def info_at(self, session_id: str, slot: int) -> SessionInfo:
        return SessionInfo(
            session_id=session_id,
            model=self.model,
            version=self.version,
            step=int(self.steps[slot]),
            created_unix=float(self.created[slot]),
            last_active_unix=float(self.last_active[slot]),
        )

    def infos(self, limit: int) -> list[SessionInfo]:
        items = list(self.slot_of.items())
        if limit:
            items = items[:limit]
        return [self.info_at(sid, slot) for sid, slot in items]

    def snapshot(self, session_id: str) -> SessionSnapshot | None:
        slot = self.slot_of.get(session_id)
        if slot is None:
            return None
        states = {name: arr[slot].copy() for name, arr in self.states.items()}
        if self.last_output is not None:
            states[LAST_OUTPUT] = self.last_output[slot].copy()
        return SessionSnapshot(info=self.info_at(session_id, slot), states=states)

    def write(self, slot: int, snapshot: SessionSnapshot, now: float) -> None:
        """Fill a (live or just committed) slot from a validated snapshot."""
        for name, arr in self.states.items():
            arr[slot] = snapshot.states[name]
        if self.last_output is not None:
            value = snapshot.states.get(LAST_OUTPUT)
            self.last_output[slot] = np.nan if value is None else value
        info = snapshot.info
        self.steps[slot] = info.step
        self.created[slot] = info.created_unix or now
        self.last_active[slot] = now


def now_unix() -> float:
    return time.time()
