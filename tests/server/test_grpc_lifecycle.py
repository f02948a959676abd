"""Process-level behaviour of `rnnserve serve`: SIGTERM drains in-flight work and exits in time;
the server process never imports torch, onnx or the training package."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import ServerProcess, Stubs, raw_input, step_request

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb

GRACE_S = 3.0


@dataclass
class Terminated:
    sent: int
    replies: list[pb.StreamResponse]
    stream_code: grpc.StatusCode
    exit_code: int | None
    exit_after_s: float
    modules: list[str]
    health: list[int] = field(default_factory=list)
    log: list[dict[str, object]] = field(default_factory=list)


@pytest.fixture(scope="module")
def terminated(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, streaming_model: mr.ModelMetadata
) -> Terminated:
    """A server that served real traffic and got SIGTERM with a burst of requests in flight."""
    workdir = tmp_path_factory.mktemp("sigterm")
    modules_file = workdir / "modules.json"
    server = ServerProcess(
        repository,
        workdir,
        args=("--shutdown-grace-s", str(GRACE_S)),
        env={"RNNSERVE_DEBUG_MODULES_FILE": str(modules_file)},
    ).start()
    meta = streaming_model
    x = raw_input(meta, np.random.default_rng(50), 4)
    requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
    try:
        with server.channel() as channel:
            stubs = Stubs(channel)
            stubs.inference.Predict(pb.PredictRequest(model=meta.name, input=_tensor(x)))
            statuses: list[int] = []
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            watcher = threading.Thread(target=_collect, args=(watch, statuses), daemon=True)
            watcher.start()
            stream = stubs.inference.Stream(iter(requests.get, None), timeout=30)
            for i in range(8):
                requests.put(
                    step_request(f"term-{i}", meta.name, x, start=True, request_id=f"s{i}")
                )
            replies = [next(stream) for _ in range(8)]
            sent = 8
            for k in range(200):  # a burst, then SIGTERM while it is in flight
                sid = f"term-{k % 8}"
                requests.put(step_request(sid, meta.name, x, request_id=f"{sid}/{k}"))
                sent += 1
            replies += [next(stream) for _ in range(20)]  # the server is mid-burst
            server.terminate()
            signalled = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                replies.extend(stream)
            except grpc.RpcError as exc:
                code = exc.code()
            finally:
                requests.put(None)
            exit_code = server.proc.wait(GRACE_S + 10) if server.proc else None
            exit_after = time.monotonic() - signalled
            watcher.join(10)
    finally:
        server.stop()
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    return Terminated(sent, replies, code, exit_code, exit_after, modules, statuses, server.logs())


def _collect(watch: Iterator[health_pb2.HealthCheckResponse], into: list[int]) -> None:
    try:
        for update in watch:
            into.append(update.status)
    except grpc.RpcError:
        pass  # the server went away: the watch ends


def _tensor(x: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())


def test_sigterm_exits_cleanly_within_the_grace_period(terminated: Terminated) -> None:
    assert terminated.exit_code == 0
    assert terminated.exit_after_s < GRACE_S + 2.0
    times = {str(e.get("msg")): datetime.fromisoformat(str(e["ts"])) for e in terminated.log}
    assert "shutting down" in times
    assert "stopped" in times
    # Nothing (not even the open health Watch) held the drain until the deadline.
    assert (times["stopped"] - times["shutting down"]).total_seconds() < GRACE_S - 1
    assert not [e for e in terminated.log if "ran out" in str(e.get("msg"))]


def test_health_turns_not_serving_when_draining_starts(terminated: Terminated) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert terminated.health[:1] == [serving]
    assert not_serving in terminated.health


def test_sigterm_answers_everything_it_took_and_ends_the_stream(terminated: Terminated) -> None:
    replies = terminated.replies
    assert 28 <= len(replies) <= terminated.sent
    # Whatever the server read before the signal was answered, successfully and in order.
    assert all(r.step.status.code == 0 for r in replies), [
        r.step.status for r in replies if r.step.status.code
    ][:1]
    seen: dict[str, int] = {}
    for r in replies[8:]:
        sid = r.step.session_id
        seen[sid] = seen.get(sid, 0) + 1
        assert r.step.step == 4 + 4 * seen[sid]  # each session's chunks applied once, in order
    # The stream ends with UNAVAILABLE (telling the client to reconnect elsewhere) unless every
    # request was already answered when the signal arrived.
    if len(replies) < terminated.sent:
        assert terminated.stream_code == grpc.StatusCode.UNAVAILABLE
    else:
        assert terminated.stream_code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)


def test_server_never_imports_torch_onnx_or_training_code(terminated: Terminated) -> None:
    modules = set(terminated.modules)
    # The list is real: the runtime and the front end were loaded.
    assert {"onnxruntime", "grpc", "rnnserve_server.app", "rnnserve_server.runtime"} <= modules
    forbidden = [
        m
        for m in modules
        if m.split(".")[0] in {"torch", "onnx", "onnxscript", "rnnserve_models", "torchvision"}
    ]
    assert forbidden == []


def test_port_in_use_fails_loudly(
    server: ServerProcess, make_server: Callable[..., ServerProcess]
) -> None:
    with pytest.raises(RuntimeError, match="cannot bind the gRPC port"):
        make_server("--port", str(server.grpc_port))
