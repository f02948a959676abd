"""SessionStore: the arena, its free list, growth, eviction candidates and snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from rnnserve_server.metrics import Metrics
from rnnserve_server.runtime import StateSpec
from rnnserve_server.store import LAST_OUTPUT, RecentEnds, SessionStore

SPECS = [
    StateSpec("h", "h_in", "h_out", (2, 4), np.dtype(np.float32), 0.5),
    StateSpec("n", "n_in", "n_out", (), np.dtype(np.int64), 0),
]
STATE_BYTES = 2 * 4 * 4 + 8


def make(max_sessions: int = 100, initial: int = 2) -> tuple[SessionStore, Metrics]:
    metrics = Metrics(CollectorRegistry())
    store = SessionStore(
        "m", 1, SPECS, max_sessions, metrics, RecentEnds(limit=3), last_output_features=3,
        initial_capacity=initial,
    )  # fmt: skip
    return store, metrics


def add(store: SessionStore, ids: list[str], now: float = 100.0) -> np.ndarray:
    slots = store.reserve(len(ids))
    assert slots.size == len(ids)
    store.commit_new(ids, slots, now)
    for i, slot in enumerate(slots.tolist()):
        store.states["h"][slot] = i
        store.states["n"][slot] = 10 + i
    return slots


def gauge(metrics: Metrics, name: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(name, {"model": "m"})
    return value


def test_arena_grows_geometrically_and_keeps_state() -> None:
    store, _ = make(max_sessions=5, initial=2)
    slots = add(store, ["a", "b"])
    assert store.capacity == 2
    more = add(store, ["c"])
    assert store.capacity == 4  # doubled
    assert store.states["h"].shape == (4, 2, 4)
    np.testing.assert_array_equal(store.states["h"][slots[1]], np.ones((2, 4)))
    assert store.states["n"][slots].tolist() == [10, 11]
    assert len({*slots.tolist(), *more.tolist()}) == 3
    add(store, ["d", "e"])
    assert store.capacity == 5  # capped at max_sessions
    assert store.reserve(1).size == 0
    assert store.free_slots == 0


def test_remove_frees_slots_counts_and_remembers() -> None:
    store, metrics = make()
    slots = add(store, ["a", "b", "c"])
    assert gauge(metrics, "rnnserve_active_sessions") == 3
    assert gauge(metrics, "rnnserve_state_bytes") == 3 * STATE_BYTES
    store.steps[slots] = [5, 6, 7]
    gone = store.remove(slots[:2], "ttl", now=160.0)
    assert gone == ["a", "b"]
    assert len(store) == 1
    assert "c" in store
    assert gauge(metrics, "rnnserve_active_sessions") == 1
    labels = {"model": "m", "reason": "ttl"}
    assert metrics.registry.get_sample_value("rnnserve_sessions_ended_total", labels) == 2
    assert metrics.registry.get_sample_value("rnnserve_session_steps_sum", {"model": "m"}) == 11
    duration = metrics.registry.get_sample_value("rnnserve_session_duration_seconds_sum",
                                                 {"model": "m"})  # fmt: skip
    assert duration == pytest.approx(120.0)
    ended = store.recent.get("a")
    assert ended is not None
    assert ended.reason == "ttl"
    reused = store.reserve(2)
    assert sorted(reused.tolist()) == sorted(slots[:2].tolist())


def test_recent_ends_are_bounded() -> None:
    recent = RecentEnds(limit=3)
    recent.add_many(["a", "b", "c", "d"], "m", "end", 1.0)
    assert recent.get("a") is None
    assert recent.get("d") is not None


def test_lru_picks_oldest_idle_sessions_and_skips_busy_ones() -> None:
    store, _ = make()
    slots = add(store, ["a", "b", "c", "d"])
    store.last_active[slots] = [40.0, 10.0, 30.0, 20.0]
    picked = store.lru_slots(2, busy=lambda sid: sid == "b")
    assert store.ids[picked].tolist() == ["d", "c"]
    idle = store.idle_slots(cutoff_unix=35.0)
    assert sorted(store.ids[idle].tolist()) == ["b", "c", "d"]


def test_reset_and_snapshot_round_trip() -> None:
    store, _ = make()
    slots = add(store, ["a"])
    slot = int(slots[0])
    store.steps[slot] = 42
    assert store.last_output is not None
    store.last_output[slot] = [1.0, 2.0, 3.0]
    snap = store.snapshot("a")
    assert snap is not None
    assert snap.info.step == 42
    assert snap.states["n"].shape == ()
    assert int(snap.states["n"]) == 10
    np.testing.assert_array_equal(snap.states[LAST_OUTPUT], [1.0, 2.0, 3.0])
    store.reset(slots, now=200.0)
    assert store.states["h"][slot].tolist() == np.full((2, 4), 0.5).tolist()
    assert int(store.steps[slot]) == 0
    store.write(slot, snap, now=300.0)
    again = store.snapshot("a")
    assert again is not None
    assert again.info.step == 42
    for name in ("h", "n", LAST_OUTPUT):
        np.testing.assert_array_equal(again.states[name], snap.states[name])
    assert again.info.last_active_unix == 300.0


def test_shrink_compacts_live_sessions_and_frees_the_arena() -> None:
    store, metrics = make(max_sessions=1000, initial=4)
    ids = [f"s{i}" for i in range(64)]
    add(store, ids)
    assert store.capacity == 64
    # distinct data per session, so any mix-up during the move shows
    for i, sid in enumerate(ids):
        slot = store.slot_of[sid]
        store.states["h"][slot] = i
        store.states["n"][slot] = 1000 + i
        store.steps[slot] = 7 * i
        assert store.last_output is not None
        store.last_output[slot] = [i, i, i]
    keep = ids[-5:]  # the highest slots survive: every one of them must move
    before = {sid: store.snapshot(sid) for sid in keep}
    store.remove(np.array([store.slot_of[s] for s in ids[:-5]], np.int64), "end", 200.0)
    assert store.shrink() == 16  # 5 live: halved while at least half stays free (and >= 4)
    assert store.capacity == 16
    assert gauge(metrics, "rnnserve_state_arena_bytes") == 16 * STATE_BYTES
    assert store.states["h"].shape == (16, 2, 4)
    assert sorted(store.slot_of) == sorted(keep)
    for sid in keep:
        slot = store.slot_of[sid]
        assert slot < 16
        assert store.ids[slot] == sid
        assert store.live[slot]
        after = store.snapshot(sid)
        snap = before[sid]
        assert after is not None
        assert snap is not None
        assert after.info == snap.info
        for name in ("h", "n", LAST_OUTPUT):
            np.testing.assert_array_equal(after.states[name], snap.states[name])
    assert int(store.live.sum()) == 5
    # the free stack holds exactly the other slots, lowest first
    fresh = store.reserve(11)
    assert sorted(fresh.tolist()) == sorted(set(range(16)) - {store.slot_of[s] for s in keep})
    assert fresh[0] == min(fresh)
    assert store.reserve(1).size == 1  # grows again on demand
    assert store.capacity == 32


def test_shrink_waits_for_reservations_and_keeps_the_initial_size() -> None:
    store, _ = make(max_sessions=1000, initial=4)
    add(store, [f"s{i}" for i in range(32)])
    store.remove(np.array(sorted(store.slot_of.values())[1:], np.int64), "end", 200.0)
    held = store.reserve(1)  # a batch in flight holds a slot for a session it creates
    assert store.shrink() == 0
    assert store.capacity == 32
    store.release(held)
    assert store.shrink() == 4  # one live session: down to the initial size, not below
    assert store.shrink() == 0
    add(store, ["a", "b"])
    assert store.shrink() == 0  # 3 of 4 live: nothing to give back
