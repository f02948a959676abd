"""Run `rnnserve serve` as a child process on free loopback ports (for the demo and tests).

Only the console script is started; nothing of the server package is imported here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from rnnserve_client._errors import RnnServeError
from rnnserve_client.client import Client

# The one line `rnnserve serve` prints on stdout once it listens (ports resolved when 0 was asked).
_LISTENING = re.compile(rb"rnnserve listening grpc=\S+:(\d+) metrics=http://\S+:(\d+)/metrics")


def server_command() -> list[str]:
    """The `rnnserve` console script of this environment (next to the interpreter), else PATH."""
    beside = Path(sys.executable).with_name("rnnserve")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("rnnserve")
    if found is None:
        raise FileNotFoundError(
            "the `rnnserve` command is not installed; install the server with "
            "`pip install 'rnnserve[server]'` (or run `make install`)"
        )
    return [found]


class LocalServer:
    """`rnnserve serve` on 127.0.0.1 with free ports; `with LocalServer(repo) as server: ...`.

    The server is asked for port 0 and the ports it bound are read from its "rnnserve listening"
    line; ready means grpc.health.v1 reports SERVING. Stopped with SIGTERM (the server's graceful
    shutdown); its output goes to a temporary file whose tail is shown if it fails to start.
    `command` replaces the `rnnserve` executable (e.g. a different environment's).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 90.0,
        command: Sequence[str] | None = None,
    ) -> None:
        self.command = list(command) if command is not None else None
        self.model_repository = Path(model_repository)
        self.host = host
        self.port = 0
        self.metrics_port = 0
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def start(self) -> Self:
        cmd = [
            *(self.command or server_command()),
            "serve",
            "--model-repository",
            str(self.model_repository),
            "--host",
            self.host,
            "--port",
            "0",
            "--metrics-port",
            "0",
            *self.extra_args,
        ]
        env = {**os.environ, **self.env}
        fd, name = tempfile.mkstemp(prefix="rnnserve-", suffix=".log")
        os.close(fd)
        self._log_path = Path(name)
        # The child appends (O_APPEND), so reading the file here never moves its write offset.
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while not self.port:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"rnnserve printed no ports in {self.ready_timeout} s")
            found = _LISTENING.search(self._read_log())
            if found:
                self.port, self.metrics_port = int(found[1]), int(found[2])
            else:
                time.sleep(0.1)
        with Client(self.target, timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if client.health() == "SERVING":
                        return
                except RnnServeError:  # not listening yet
                    pass
                time.sleep(0.2)
        raise TimeoutError(
            f"rnnserve was not SERVING after {self.ready_timeout} s:\n{self.log_tail()}"
        )

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"rnnserve exited with status {self.process.returncode} before it was "
                f"ready:\n{self.log_tail()}"
            )

    def _read_log(self) -> bytes:
        return self._log_path.read_bytes() if self._log_path is not None else b""

    def log_tail(self, limit: int = 4000) -> str:
        """The last `limit` characters the server printed."""
        return self._read_log().decode(errors="replace")[-limit:]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not exit in `timeout` s. Returns its status."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        self.stop()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
