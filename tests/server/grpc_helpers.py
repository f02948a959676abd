"""Helpers for the end-to-end gRPC tests: a real `rnnserve serve` subprocess on port 0, tensor
packing, and a few stream drivers built on the generated stubs."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from rnnserve_proto import model_repository_pb2 as mr
from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
RNNSERVE = Path(sys.executable).parent / "rnnserve"
STARTUP_TIMEOUT_S = 60.0


def tensor(x: np.ndarray) -> pb.Tensor:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.Tensor(shape=list(x.shape), data=x.tobytes())


def array(t: pb.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


def models_in(root: Path) -> dict[str, mr.ModelMetadata]:
    """The latest version of every model in a repository."""
    found: dict[str, mr.ModelMetadata] = {}
    for meta_file in sorted(root.glob("*/*/metadata.json")):
        meta = json_format.Parse(meta_file.read_text(), mr.ModelMetadata())
        if meta.name not in found or meta.version > found[meta.name].version:
            found[meta.name] = meta
    return found


@dataclass
class ServerProcess:
    """`rnnserve serve` in a subprocess; stderr (JSON logs) goes to a file for post-mortems."""

    repository: Path
    workdir: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    grpc_port: int = 0
    metrics_port: int = 0
    _reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(RNNSERVE), "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
            "--providers", "cpu",
            *self.args,
        ]  # fmt: skip
        env = {**os.environ, "RNNSERVE_RUNTIME__RUN_WORKERS": "1", **self.env}
        env.pop("RNNSERVE_CONFIG_FILE", None)
        with self.log_file.open("w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=self.workdir
            )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self._reader = threading.Thread(
            target=lambda: [lines.put(ln) for ln in stdout], daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is None and time.monotonic() < deadline:
                    continue
                line = ""
            if not line:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log_file.read_text()}")
            if line.startswith("rnnserve listening"):
                parts = dict(p.split("=", 1) for p in line.split()[2:])
                self.grpc_port = int(parts["grpc"].rsplit(":", 1)[1])
                self.metrics_port = int(parts["metrics"].split(":")[2].split("/")[0])
                return self

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def logs(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.inference = pb_grpc.InferenceStub(channel)
        self.sessions = pb_grpc.SessionsStub(channel)
        self.models = pb_grpc.ModelsStub(channel)


def step_request(
    session_id: str,
    model: str,
    x: np.ndarray,
    *,
    request_id: str = "",
    start: bool = False,
    end: bool = False,
    version: int = 0,
    expected_step: int | None = None,
) -> pb.StreamRequest:
    step = pb.StepRequest(
        session_id=session_id,
        model=model,
        model_version=version,
        input=tensor(x),
        start=start,
        end=end,
        request_id=request_id,
    )
    if expected_step is not None:
        step.expected_step = expected_step
    return pb.StreamRequest(step=step)


def run_stream(
    stub: pb_grpc.InferenceStub, requests: Iterable[pb.StreamRequest], timeout: float = 60.0
) -> list[pb.StreamResponse]:
    """Send every request on one stream (pipelined) and return the replies in arrival order."""
    return list(stub.Stream(iter(list(requests)), timeout=timeout))


def by_request_id(replies: Iterable[pb.StreamResponse]) -> dict[str, pb.StepResponse]:
    out: dict[str, pb.StepResponse] = {}
    for reply in replies:
        assert reply.WhichOneof("kind") == "step"
        assert reply.step.request_id not in out, "two replies for one request"
        out[reply.step.request_id] = reply.step
    return out


class PingPong:
    """One open stream driven request by request (send one, wait for its reply)."""

    def __init__(self, stub: pb_grpc.InferenceStub) -> None:
        self._requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
        self._replies: Iterator[pb.StreamResponse] = stub.Stream(
            iter(self._requests.get, None), timeout=60
        )

    def send(self, request: pb.StreamRequest) -> pb.StreamResponse:
        self._requests.put(request)
        return next(self._replies)

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._replies:
            pass


def random_chunks(rng: np.random.Generator, total: int, most: int = 7) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, most + 1), total - sum(sizes))))
    return sizes


def raw_input(meta: mr.ModelMetadata, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Plausible raw inputs [steps, F]: around the training mean and spread when known."""
    x = rng.normal(size=(steps, meta.input_features))
    norm = meta.normalization
    if norm.input_mean:
        x = x * np.asarray(norm.input_std) + np.asarray(norm.input_mean)
    return x.astype(np.float32)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
