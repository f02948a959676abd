"""Start and stop the servers under test as separate processes and find their gRPC port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from bench.serverutil import PORT_PREFIX
from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc

# `rnnserve serve` prints this line on stdout once it serves (server/rnnserve_server/cli.py).
_RNNSERVE_READY = re.compile(r"rnnserve listening grpc=\S*:(\d+)")


class ServerProcess:
    """A server started with --port 0. Output goes to a log file (never an unread pipe, which
    would stall a server that logs per request); the port is read from it."""

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_port(self, timeout_s: float = 120.0) -> int:
        """Our bench servers print BENCH_PORT=<n>; rnnserve is asked over /proc which of its
        listening sockets answers the native Models API."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            text = self.log_path.read_text(errors="replace")
            m = re.search(re.escape(PORT_PREFIX) + r"(\d+)", text) or _RNNSERVE_READY.search(text)
            if m:
                self.port = int(m.group(1))
                return self.port
            for port in listening_ports(self.pid):
                if _answers_models_api(port):
                    self.port = port
                    return port
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not start within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def listening_ports(pid: int) -> list[int]:
    """TCP ports `pid` listens on, from /proc/<pid>/fd socket inodes and /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def _answers_models_api(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=1.0)
            rnnserve_pb2_grpc.ModelsStub(ch).ListModels(  # type: ignore[no-untyped-call]
                rnnserve_pb2.ListModelsRequest(), timeout=2.0
            )
        return True
    except (grpc.RpcError, grpc.FutureTimeoutError):
        return False


def wait_model_ready(target: str, model: str, timeout_s: float = 120.0) -> None:
    """Poll rnnserve's ListModels until `model` is loaded and ready."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with grpc.insecure_channel(target) as ch:
        stub = rnnserve_pb2_grpc.ModelsStub(ch)  # type: ignore[no-untyped-call]
        while time.monotonic() < deadline:
            try:
                resp = stub.ListModels(rnnserve_pb2.ListModelsRequest(), timeout=5.0)
                if any(m.name == model and m.ready for m in resp.models):
                    return
                last = str(resp)
            except grpc.RpcError as exc:
                last = str(exc)
            time.sleep(0.3)
    raise TimeoutError(f"model {model} not ready on {target}: {last}")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def rnnserve_command(
    repository: Path, gpu: bool, *extra: str, event_loop: str | None = None
) -> list[str]:
    """`rnnserve serve` on port 0; `event_loop` (auto/asyncio/uvloop) becomes --event-loop, None
    leaves the server's default. `extra` comes last, so it can override anything."""
    exe = Path(sys.executable).with_name("rnnserve")
    loop_flag = ["--event-loop", event_loop] if event_loop else []
    return [
        str(exe),
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--providers",
        "cuda,cpu" if gpu else "cpu",
        *loop_flag,
        *extra,
    ]
