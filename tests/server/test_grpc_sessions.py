"""Session administration over gRPC: get/list/reset/close, duplicate start, export and import
between two server processes, capacity, LRU eviction and the idle TTL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from fixtures import offline
from grpc_helpers import ServerProcess, Stubs, array, assert_close, raw_input, tensor

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb

C = grpc.StatusCode


def _step(
    stubs: Stubs, sid: str, meta: mr.ModelMetadata, x: np.ndarray, start: bool = False
) -> pb.StepResponse:
    return stubs.inference.Step(
        pb.StepRequest(session_id=sid, model=meta.name, input=tensor(x), start=start)
    )


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_get_list_reset_close(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(30), 8)
    before = time.time()
    for i in range(3):
        _step(stubs, f"admin-{i}", meta, x[:4], start=True)
    info = stubs.sessions.GetSession(pb.SessionRef(session_id="admin-0"))
    assert (info.session_id, info.model, info.model_version, info.step) == (
        "admin-0", meta.name, meta.version, 4,
    )  # fmt: skip
    assert before - 1 <= info.created_unix <= info.last_active_unix <= time.time() + 1

    listed = stubs.sessions.ListSessions(pb.ListSessionsRequest(model=meta.name))
    ids = {s.session_id for s in listed.sessions}
    assert {"admin-0", "admin-1", "admin-2"} <= ids
    assert listed.total == len(listed.sessions)
    limited = stubs.sessions.ListSessions(pb.ListSessionsRequest(model=meta.name, limit=2))
    assert len(limited.sessions) == 2
    assert limited.total == listed.total
    assert _code(lambda: stubs.sessions.ListSessions(pb.ListSessionsRequest(limit=-1)))[0] == (
        C.INVALID_ARGUMENT
    )

    reset = stubs.sessions.ResetSession(pb.SessionRef(session_id="admin-1"))
    assert reset.step == 0
    after_reset = _step(stubs, "admin-1", meta, x)
    assert_close(array(after_reset.output), offline(repository, meta.name, meta.version, x))

    closed = stubs.sessions.CloseSession(pb.SessionRef(session_id="admin-2"))
    assert (closed.session.session_id, closed.session.step) == ("admin-2", 4)
    code, details = _code(lambda: stubs.sessions.GetSession(pb.SessionRef(session_id="admin-2")))
    assert code == C.NOT_FOUND
    assert "closed" in details
    code, _ = _code(lambda: _step(stubs, "admin-2", meta, x[:1]))
    assert code == C.NOT_FOUND
    for call in (
        stubs.sessions.ResetSession,
        stubs.sessions.CloseSession,
        stubs.sessions.ExportSession,
    ):
        assert (
            _code(lambda call=call: call(pb.SessionRef(session_id="admin-none")))[0] == C.NOT_FOUND
        )  # type: ignore[misc]


def test_duplicate_start_resets_the_session(
    stubs: Stubs, repository: Path, streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    rng = np.random.default_rng(31)
    a, b = raw_input(meta, rng, 5), raw_input(meta, rng, 7)
    _step(stubs, "dup-1", meta, a, start=True)
    again = _step(stubs, "dup-1", meta, b, start=True)
    assert again.step == len(b)
    assert_close(array(again.output), offline(repository, meta.name, meta.version, b))


def test_export_import_between_two_servers(
    stubs: Stubs,
    repository: Path,
    catalog: dict[str, mr.ModelMetadata],
    make_server: Callable[..., ServerProcess],
) -> None:
    other = make_server()
    rng = np.random.default_rng(32)
    with other.channel() as channel:
        remote = Stubs(channel)
        for meta in (m for m in catalog.values() if m.streaming):
            sid = f"move-{meta.name}"
            x = raw_input(meta, rng, 11)
            _step(stubs, sid, meta, x[:6], start=True)
            snapshot = stubs.sessions.ExportSession(pb.SessionRef(session_id=sid))
            assert snapshot.session.step == 6
            assert {s.name for s in meta.states} <= {s.name for s in snapshot.states}
            imported = remote.sessions.ImportSession(pb.ImportSessionRequest(snapshot=snapshot))
            assert (imported.session_id, imported.step) == (sid, 6)
            assert imported.model == meta.name
            rest = _step(remote, sid, meta, x[6:])
            assert rest.step == 11
            expected = offline(repository, meta.name, meta.version, x)
            assert_close(array(rest.output), expected[6:])
            # The source is untouched by the export and continues identically.
            assert_close(array(_step(stubs, sid, meta, x[6:]).output), expected[6:])

            code, details = _code(
                lambda snapshot=snapshot: remote.sessions.ImportSession(  # type: ignore[misc]
                    pb.ImportSessionRequest(snapshot=snapshot)
                )
            )
            assert code == C.ALREADY_EXISTS
            assert "overwrite" in details
            again = remote.sessions.ImportSession(
                pb.ImportSessionRequest(snapshot=snapshot, overwrite=True)
            )
            assert again.step == 6
            # A corrupted snapshot is refused and changes nothing.
            broken = pb.SessionSnapshot()
            broken.CopyFrom(snapshot)
            broken.states[0].data = broken.states[0].data[:-4]
            code, _ = _code(
                lambda broken=broken: remote.sessions.ImportSession(  # type: ignore[misc]
                    pb.ImportSessionRequest(snapshot=broken, overwrite=True)
                )
            )
            assert code == C.INVALID_ARGUMENT
            assert remote.sessions.GetSession(pb.SessionRef(session_id=sid)).step == 6


def test_capacity_limit_rejects_new_sessions(
    make_server: Callable[..., ServerProcess], streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    server = make_server("--max-sessions", "3")
    x = np.zeros((2, meta.input_features), np.float32)
    with server.channel() as channel:
        stubs = Stubs(channel)
        for i in range(3):
            _step(stubs, f"cap-{i}", meta, x, start=True)
        started = time.monotonic()
        code, details = _code(lambda: _step(stubs, "cap-3", meta, x, start=True))
        assert code == C.RESOURCE_EXHAUSTED
        assert "3" in details
        assert time.monotonic() - started < 2.0  # fast, not after a timeout
        for i in range(3):  # the live sessions are unaffected
            assert _step(stubs, f"cap-{i}", meta, x).step == 4
        stubs.sessions.CloseSession(pb.SessionRef(session_id="cap-0"))
        assert _step(stubs, "cap-3", meta, x, start=True).step == 2


def test_lru_evicts_the_least_recently_used(
    make_server: Callable[..., ServerProcess], streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    server = make_server("--max-sessions", "3", "--eviction", "lru")
    x = np.zeros((1, meta.input_features), np.float32)
    with server.channel() as channel:
        stubs = Stubs(channel)
        for i in range(3):
            _step(stubs, f"lru-{i}", meta, x, start=True)
        _step(stubs, "lru-0", meta, x)  # lru-1 is now the least recently used
        _step(stubs, "lru-3", meta, x, start=True)
        code, details = _code(lambda: stubs.sessions.GetSession(pb.SessionRef(session_id="lru-1")))
        assert code == C.NOT_FOUND
        assert "evicted" in details
        for sid in ("lru-0", "lru-2", "lru-3"):
            stubs.sessions.GetSession(pb.SessionRef(session_id=sid))


def test_idle_ttl_evicts_idle_sessions_only(
    make_server: Callable[..., ServerProcess], streaming_model: mr.ModelMetadata
) -> None:
    meta = streaming_model
    server = make_server("--idle-ttl-s", "1.0", "--sweep-interval-s", "0.1")
    x = np.zeros((1, meta.input_features), np.float32)
    with server.channel() as channel:
        stubs = Stubs(channel)
        _step(stubs, "ttl-idle", meta, x, start=True)
        _step(stubs, "ttl-busy", meta, x, start=True)
        deadline = time.monotonic() + 10
        failure: grpc.RpcError | None = None
        while failure is None and time.monotonic() < deadline:
            _step(stubs, "ttl-busy", meta, x)  # activity keeps it alive
            try:
                stubs.sessions.GetSession(pb.SessionRef(session_id="ttl-idle"))
            except grpc.RpcError as exc:
                failure = exc
            time.sleep(0.2)
        assert failure is not None, "the idle session was never evicted"
        assert failure.code() == C.NOT_FOUND
        assert "idle" in (failure.details() or "")
        assert stubs.sessions.GetSession(pb.SessionRef(session_id="ttl-busy")).step >= 2
        code, details = _code(lambda: _step(stubs, "ttl-idle", meta, x))
        assert code == C.NOT_FOUND
        assert "expired" in details
