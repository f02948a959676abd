"""Load generator: N concurrent sessions stepping ping-pong against rnnserve's Inference.Stream.

Each session sends one step (T=1, 16 features), waits for its prediction, then sends the next.
By default every session has its own bidirectional stream, as a device talking straight to the
server would; `--sessions-per-stream K` multiplexes K sessions on one stream instead (a gateway).
All streams of one client process share one channel (one HTTP/2 connection). `--clients P`
spreads the sessions over P client processes when one Python process cannot keep up; the
harness reports the clients' CPU so that this is visible.

Frame mode sends FrameRequests of `frame_size` sessions (one step each), ping-pong per stream.

KServe mode does the step mode's ping-pong over the KServe v2 stream (`ModelStreamInfer`, one
stream per session, `sequence_id` = the session id), as a Triton client would.

Timing: every client starts at the same monotonic instant (the first step of each session carries
start=true), runs `warmup_s` unmeasured, then counts completions and their latencies for
`duration_s`. The warm-up starts only once every session has had its first reply.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol

import grpc
import numpy as np
import numpy.typing as npt

from bench.procstat import cpu_seconds
from rnnserve_proto import kserve_pb2, rnnserve_pb2, rnnserve_pb2_grpc

Mode = Literal["step", "frame", "kserve"]
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
_MAX_MSG = 64 * 1024 * 1024


@dataclass(frozen=True)
class LoadSpec:
    target: str
    model: str
    mode: Mode = "step"
    sessions: int = 1  # step mode: concurrent sessions
    sessions_per_stream: int = 1
    frame_size: int = 256  # frame mode: sessions per frame
    frame_streams: int = 1  # frame mode: concurrent frame streams, frame_size sessions each
    features: int = 16
    out_features: int = 16
    warmup_s: float = 2.0
    duration_s: float = 5.0
    prefix: str = "bench"


@dataclass
class _WorkerResult:
    steps: int = 0
    starved: int = 0  # sessions with no reply inside the measured window
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


@dataclass(frozen=True)
class LoadResult:
    spec: LoadSpec
    clients: int
    streams: int
    steps: int
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str
    starved_sessions: int  # sessions that got no reply in the measured window
    setup_s: float  # from go until every session had its first reply
    server_cpu_pct: float  # percent of one core over the measured window
    client_cpu_pct: float  # all client processes together
    p90_ms: float = float("nan")
    p999_ms: float = float("nan")


class _Window:
    """The measured window of one client process. It opens only after every session of every
    client has had its first reply (opening 1,024 streams takes seconds on a busy machine) plus
    the warm-up; until the parent sends it, start and end are infinite."""

    def __init__(self, streams_or_sessions: int) -> None:
        self.start = math.inf
        self.end = math.inf
        self._waiting = streams_or_sessions
        self.all_started = asyncio.Event()
        self.go = asyncio.Event()  # set with the window: every client has opened its sessions

    async def first_reply(self) -> None:
        """Called after a session's (or frame stream's) first reply; returns once every session
        of every client is open. Without this barrier, sessions that already ping-pong starve
        the opening of the rest (see docs/benchmarks.md)."""
        self._waiting -= 1
        if self._waiting <= 0:
            self.all_started.set()
        await self.go.wait()


def tensor(rows: npt.NDArray[np.float32]) -> rnnserve_pb2.Tensor:
    return rnnserve_pb2.Tensor(shape=list(rows.shape), data=rows.astype("<f4").tobytes())


class ErrorTally(Protocol):
    """Where a load generator counts bad replies and keeps the first one's description."""

    errors: int
    first_error: str


def check_step(resp: rnnserve_pb2.StreamResponse, out_bytes: int, res: ErrorTally) -> None:
    """Count a streamed step's reply as an error unless it is OK with `out_bytes` of output."""
    s = resp.step
    if s.status.code != 0 or len(s.output.data) != out_bytes:
        res.errors += 1
        if not res.first_error:
            res.first_error = (
                f"code={s.status.code} {s.status.message!r} bytes={len(s.output.data)}"
            )


class _PingPong:
    """One session's ping-pong: the request it re-sends (start only on the first) and the
    bookkeeping of every reply: checked, the window opened after the first, counted inside it."""

    def __init__(
        self, spec: LoadSpec, sid: str, win: _Window, res: _WorkerResult, x: rnnserve_pb2.Tensor
    ) -> None:
        self.req = rnnserve_pb2.StreamRequest(
            step=rnnserve_pb2.StepRequest(session_id=sid, model=spec.model, input=x, start=True)
        )
        self.out_bytes = spec.out_features * 4
        self.win = win
        self.res = res
        self.sent = 0
        self.counted = 0

    def next_request(self) -> Any:
        self.req.step.request_id = str(self.sent)
        return self.req

    def _check(self, resp: Any) -> None:
        check_step(resp, self.out_bytes, self.res)

    def _started(self) -> None:
        self.req.step.start = False

    async def reply(self, resp: Any, t0: float, t1: float) -> bool:
        """Account one reply; True once the measured window is over."""
        res = self.res
        self._check(resp)
        if self.sent == 0:
            self._started()
            await self.win.first_reply()
        self.sent += 1
        if t1 >= self.win.start:
            if t1 > self.win.end:
                return True
            res.steps += 1
            self.counted += 1
            res.latencies_s.append(t1 - t0)
        return False

    def close(self) -> None:
        self.res.starved += self.counted == 0


class _KServeStub:
    """ModelStreamInfer at KServe's wire path (`inference.GRPCInferenceService`; the generated
    stub's path carries rnnserve's own proto package, see proto/rnnserve_proto/kserve.proto)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.ModelStreamInfer = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=kserve_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=kserve_pb2.ModelStreamInferResponse.FromString,
        )


class _KServePingPong(_PingPong):
    """The same ping-pong over KServe's ModelStreamInfer: `sequence_id` names the session."""

    def __init__(
        self, spec: LoadSpec, sid: str, win: _Window, res: _WorkerResult, x: rnnserve_pb2.Tensor
    ) -> None:
        super().__init__(spec, sid, win, res, x)
        tensor = kserve_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1, *x.shape]
        )
        self.kreq = kserve_pb2.ModelInferRequest(
            model_name=spec.model, inputs=[tensor], raw_input_contents=[x.data]
        )
        self.kreq.parameters["sequence_id"].string_param = sid
        self.kreq.parameters["sequence_start"].bool_param = True

    def next_request(self) -> Any:
        self.kreq.id = str(self.sent)
        return self.kreq

    def _check(self, resp: Any) -> None:
        outputs = resp.infer_response.raw_output_contents
        if resp.error_message or len(outputs) != 1 or len(outputs[0]) != self.out_bytes:
            self.res.errors += 1
            if not self.res.first_error:
                self.res.first_error = f"kserve: {resp.error_message!r}"

    def _started(self) -> None:
        del self.kreq.parameters["sequence_start"]


async def _single_session_stream(
    stub: Any,
    spec: LoadSpec,
    sid: str,
    win: _Window,
    res: _WorkerResult,
    rng: np.random.Generator,
) -> None:
    x = tensor(rng.standard_normal((1, spec.features), dtype=np.float32))
    pp: _PingPong
    if spec.mode == "kserve":
        pp = _KServePingPong(spec, sid, win, res, x)
        call = stub.ModelStreamInfer()
    else:
        pp = _PingPong(spec, sid, win, res, x)
        call = stub.Stream()
    clock = time.monotonic
    while True:
        req = pp.next_request()
        t0 = clock()
        await call.write(req)
        resp = await call.read()
        t1 = clock()
        if resp is EOF:
            raise RuntimeError(f"stream of {sid} ended early: {await call.code()}")
        if await pp.reply(resp, t0, t1):
            break
    pp.close()
    await finish_stream(call)


async def _multiplexed_stream(
    stub: rnnserve_pb2_grpc.InferenceStub,
    spec: LoadSpec,
    sids: list[str],
    win: _Window,
    res: _WorkerResult,
    rng: np.random.Generator,
) -> None:
    call = stub.Stream()
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[rnnserve_pb2.StreamResponse]] = {}
    write_lock = asyncio.Lock()  # one write in flight per call

    async def reader() -> None:
        async for resp in call:
            fut = pending.pop(resp.step.session_id, None)
            if fut is not None and not fut.done():
                fut.set_result(resp)
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"stream ended: {await call.code()}"))

    async def session(sid: str) -> None:
        x = tensor(rng.standard_normal((1, spec.features), dtype=np.float32))
        pp = _PingPong(spec, sid, win, res, x)
        clock = time.monotonic
        while True:
            req = pp.next_request()
            fut: asyncio.Future[rnnserve_pb2.StreamResponse] = loop.create_future()
            pending[sid] = fut
            t0 = clock()
            async with write_lock:
                await call.write(req)
            resp = await fut
            t1 = clock()
            if await pp.reply(resp, t0, t1):
                break
        pp.close()

    read_task = asyncio.create_task(reader())
    await asyncio.gather(*(session(s) for s in sids))
    await call.done_writing()
    await read_task


async def _frame_stream(
    stub: rnnserve_pb2_grpc.InferenceStub,
    spec: LoadSpec,
    sids: list[str],
    win: _Window,
    res: _WorkerResult,
    rng: np.random.Generator,
) -> None:
    n = len(sids)
    x = tensor(rng.standard_normal((n, 1, spec.features), dtype=np.float32))
    req = rnnserve_pb2.StreamRequest(
        frame=rnnserve_pb2.FrameRequest(
            model=spec.model, session_ids=sids, input=x, start=[True] * n
        )
    )
    out_bytes = n * spec.out_features * 4
    call = stub.Stream()
    i = frames = 0
    while True:
        req.frame.request_id = str(i)
        t0 = time.monotonic()
        await call.write(req)
        resp = await call.read()
        t1 = time.monotonic()
        if resp is EOF:
            raise RuntimeError(f"frame stream ended early: {await call.code()}")
        f = resp.frame
        bad = sum(1 for c in f.code if c != 0)
        if f.status.code != 0 or bad or len(f.output.data) != out_bytes:
            res.errors += max(bad, 1)
            if not res.first_error:
                msgs = [m for m in f.message if m][:1]
                res.first_error = f"frame code={f.status.code} {f.status.message!r} {msgs}"
        if i == 0:
            del req.frame.start[:]
            await win.first_reply()
        i += 1
        if t1 >= win.start:
            if t1 > win.end:
                break
            res.steps += n
            frames += 1
            res.latencies_s.append(t1 - t0)
    res.starved += n if frames == 0 else 0
    await finish_stream(call)


async def finish_stream(call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
    """Half-close and drain, so the server sees a clean end of stream."""
    await call.done_writing()
    while await call.read() is not EOF:
        pass


def _stream_groups(spec: LoadSpec, worker: int, workers: int) -> list[list[str]]:
    """Session ids per stream for one client process."""
    if spec.mode == "frame":
        groups = [
            [f"{spec.prefix}-f{j}-{i}" for i in range(spec.frame_size)]
            for j in range(spec.frame_streams)
        ]
    else:
        ids = [f"{spec.prefix}-{i}" for i in range(spec.sessions)]
        k = max(1, spec.sessions_per_stream)
        groups = [ids[i : i + k] for i in range(0, len(ids), k)]
    return groups[worker::workers]


async def _worker_async(spec: LoadSpec, worker: int, workers: int, conn: Connection) -> None:
    groups = _stream_groups(spec, worker, workers)
    rng = np.random.default_rng(worker)
    res = _WorkerResult()
    async with grpc.aio.insecure_channel(
        spec.target,
        options=[
            ("grpc.max_receive_message_length", _MAX_MSG),
            ("grpc.max_send_message_length", _MAX_MSG),
        ],
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub: Any
        if spec.mode == "kserve":
            stub = _KServeStub(channel)
        else:
            stub = rnnserve_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        conn.send("ready")
        t_go: float = conn.recv()
        await asyncio.sleep(max(0.0, t_go - time.monotonic()))
        n_first = len(groups) if spec.mode == "frame" else sum(len(g) for g in groups)
        win = _Window(n_first)
        if spec.mode == "frame":
            coros = [_frame_stream(stub, spec, g, win, res, rng) for g in groups]
        elif spec.sessions_per_stream <= 1 or spec.mode == "kserve":
            coros = [_single_session_stream(stub, spec, g[0], win, res, rng) for g in groups]
        else:
            coros = [_multiplexed_stream(stub, spec, g, win, res, rng) for g in groups]
        everything: asyncio.Future[list[None]] = asyncio.gather(*coros)
        started: asyncio.Future[bool] = asyncio.ensure_future(win.all_started.wait())
        waits: list[asyncio.Future[Any]] = [everything, started]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        conn.send("started")  # also when something failed early: never hang the parent
        loop = asyncio.get_running_loop()
        win.start, win.end = await loop.run_in_executor(None, conn.recv)
        win.go.set()
        try:
            await everything
        except Exception as exc:  # reported in the result
            res.errors += 1
            res.first_error = res.first_error or " ".join(f"{type(exc).__name__}: {exc}".split())
        started.cancel()
    conn.send(res)


def _worker(spec: LoadSpec, worker: int, workers: int, conn: Connection) -> None:
    asyncio.run(_worker_async(spec, worker, workers, conn))
    conn.close()


def run_load(spec: LoadSpec, clients: int = 1, server_pid: int | None = None) -> LoadResult:
    """Run the load in `clients` separate processes; measure server and client CPU meanwhile."""
    n_streams = len(_stream_groups(spec, 0, 1))
    clients = max(1, min(clients, n_streams))
    ctx = mp.get_context("spawn")
    procs: list[Any] = []  # multiprocessing's process classes differ per context
    conns: list[Connection] = []
    for w in range(clients):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(spec, w, clients, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    try:
        for c in conns:
            if not c.poll(60) or c.recv() != "ready":
                raise RuntimeError("a load generator process did not get ready")
        t_go = time.monotonic() + 0.1
        for c in conns:
            c.send(t_go)
        for c in conns:  # every session has had its first reply
            if not c.poll(300) or c.recv() != "started":
                raise RuntimeError("a load generator process did not open its sessions")
        setup_s = time.monotonic() - t_go
        w_start = time.monotonic() + spec.warmup_s
        w_end = w_start + spec.duration_s
        for c in conns:
            c.send((w_start, w_end))
        pids = [p.pid for p in procs if p.pid is not None]
        time.sleep(max(0.0, w_start - time.monotonic()))
        c0 = sum(cpu_seconds(p) for p in pids)
        s0 = cpu_seconds(server_pid) if server_pid else 0.0
        w0 = time.monotonic()
        time.sleep(max(0.0, w_end - time.monotonic()))
        c1 = sum(cpu_seconds(p) for p in pids)
        s1 = cpu_seconds(server_pid) if server_pid else 0.0
        wall = time.monotonic() - w0
        results: list[_WorkerResult] = []
        for c in conns:
            if not c.poll(spec.duration_s + 120):
                raise RuntimeError("a load generator process did not report")
            results.append(c.recv())
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    lat = np.array([x for r in results for x in r.latencies_s], dtype=np.float64)
    steps = sum(r.steps for r in results)
    p50, p90, p99, p999 = (
        (np.percentile(lat, [50, 90, 99, 99.9]) * 1e3).tolist() if lat.size else [math.nan] * 4
    )
    errors = [r for r in results if r.errors]
    return LoadResult(
        spec=spec,
        clients=clients,
        streams=n_streams,
        steps=steps,
        steps_per_s=steps / spec.duration_s,
        p50_ms=float(p50),
        p99_ms=float(p99),
        errors=sum(r.errors for r in results),
        starved_sessions=sum(r.starved for r in results),
        setup_s=setup_s,
        first_error=errors[0].first_error if errors else "",
        server_cpu_pct=100 * (s1 - s0) / wall if server_pid else float("nan"),
        client_cpu_pct=100 * (c1 - c0) / wall,
        p90_ms=float(p90),
        p999_ms=float(p999),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Ping-pong load against an Inference.Stream server"
    )
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--model", default="gru_bench")
    parser.add_argument("--mode", choices=["step", "frame", "kserve"], default="step")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--sessions-per-stream", type=int, default=1)
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--frame-streams", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, default=None)
    a = parser.parse_args()
    spec = LoadSpec(
        target=a.target,
        model=a.model,
        mode=a.mode,
        sessions=a.sessions,
        sessions_per_stream=a.sessions_per_stream,
        frame_size=a.frame_size,
        frame_streams=a.frame_streams,
        warmup_s=a.warmup,
        duration_s=a.duration,
        prefix=f"lg{int(time.time())}",
    )
    r = run_load(spec, a.clients, a.server_pid)
    print(
        f"{r.steps_per_s:,.0f} steps/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  "
        f"errors {r.errors} {r.first_error} starved {r.starved_sessions}  "
        f"server CPU {r.server_cpu_pct:.0f}%  "
        f"client CPU {r.client_cpu_pct:.0f}% ({r.clients} procs, {r.streams} streams, "
        f"sessions open after {r.setup_s:.1f} s)"
    )


if __name__ == "__main__":
    main()
