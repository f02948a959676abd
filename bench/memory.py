"""Memory per idle session: start rnnserve, open many sessions with frames (start=true, one step
each), and compare the server's RSS growth per session with the raw state bytes per session."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.loadgen import EOF
from bench.model import BenchModel, add_model_source_argument, ensure_model, load_model
from bench.procstat import rss_bytes
from bench.servers import ServerProcess, rnnserve_command, wait_model_ready
from bench.serverutil import LOOP_CHOICES
from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc


@dataclass(frozen=True)
class MemoryResult:
    sessions: int
    rss_before: int
    rss_after: int
    raw_state_bytes: int  # per session
    listed_total: int  # sessions the server reports (ListSessions.total), -1 if unavailable
    errors: int
    seconds: float

    @property
    def bytes_per_session(self) -> float:
        return (self.rss_after - self.rss_before) / self.sessions

    @property
    def overhead_ratio(self) -> float:
        return self.bytes_per_session / self.raw_state_bytes


async def _open_sessions(target: str, model: BenchModel, sessions: int, frame: int) -> int:
    """Open `sessions` sessions; returns how many came back with a non-OK code."""
    errors = 0
    feats = model.metadata.input_features
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        call = rnnserve_pb2_grpc.InferenceStub(ch).Stream()  # type: ignore[no-untyped-call]
        x = np.zeros((frame, 1, feats), "<f4")
        for start in range(0, sessions, frame):
            n = min(frame, sessions - start)
            req = rnnserve_pb2.FrameRequest(
                model=model.name,
                session_ids=[f"mem-{i}" for i in range(start, start + n)],
                input=rnnserve_pb2.Tensor(shape=[n, 1, feats], data=x[:n].tobytes()),
                start=[True] * n,
                request_id=str(start),
            )
            await call.write(rnnserve_pb2.StreamRequest(frame=req))
            resp = await call.read()
            if resp is EOF:
                raise RuntimeError(f"stream ended: {await call.code()} {await call.details()}")
            f = resp.frame
            errors += n if f.status.code else sum(1 for c in f.code if c)
        await call.done_writing()
    return errors


def _listed_total(target: str, model: str) -> int:
    try:
        with grpc.insecure_channel(target) as ch:
            stub = rnnserve_pb2_grpc.SessionsStub(ch)  # type: ignore[no-untyped-call]
            resp = stub.ListSessions(rnnserve_pb2.ListSessionsRequest(model=model, limit=1))
            return int(resp.total)
    except grpc.RpcError:
        return -1


def measure(
    model: BenchModel,
    workdir: Path,
    sessions: int = 100_000,
    frame: int = 1024,
    gpu: bool = False,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    event_loop: str | None = None,
) -> MemoryResult:
    server = ServerProcess(
        "rnnserve (memory)",
        rnnserve_command(model.repository, gpu, *extra_args, event_loop=event_loop),
        workdir / "rnnserve-memory.log",
        env,
    )
    try:
        server.wait_port()
        wait_model_ready(server.target, model.name)
        # One small frame first, so lazily built structures (arena, batcher) are not counted.
        asyncio.run(_open_sessions(server.target, model, 1, 1))
        time.sleep(0.5)
        before = rss_bytes(server.pid)
        t0 = time.monotonic()
        errors = asyncio.run(_open_sessions(server.target, model, sessions, frame))
        seconds = time.monotonic() - t0
        time.sleep(1.0)
        after = rss_bytes(server.pid)
        listed = _listed_total(server.target, model.name)
    finally:
        server.stop()
    # mem-0 was opened by the warm-up frame and reset by the big run: `sessions` new ones.
    return MemoryResult(sessions, before, after, model.state_bytes, listed, errors, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", default=None, help="default: build one in a tmpdir")
    parser.add_argument("--model", default="gru_bench")
    add_model_source_argument(parser)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--frame", type=int, default=1024)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default=None,
        help="rnnserve's --event-loop (auto/asyncio/uvloop); default: the server's own default",
    )
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnserve-bench-") as tmp:
        work = Path(tmp)
        if a.model_repository:
            model = load_model(Path(a.model_repository), a.model)
        else:
            model = ensure_model(work / "repository", a.model_source)
        r = measure(model, work, a.sessions, a.frame, a.gpu, event_loop=a.loop)
    print(
        f"{r.sessions} sessions: RSS {r.rss_before / 2**20:.1f} -> {r.rss_after / 2**20:.1f} MiB, "
        f"{r.bytes_per_session:.0f} B/session vs {r.raw_state_bytes} B raw state "
        f"({r.overhead_ratio:.2f}x); errors {r.errors}; server lists {r.listed_total}"
    )


if __name__ == "__main__":
    main()
