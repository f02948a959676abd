"""What a user would write by hand: grpc.aio, one ONNX Runtime run per request, no batching,
each session's state a numpy array in a dict. It serves the same model from the same repository
with rnnserve's Inference.Stream and Inference.Step (frames are not offered).

Deliberately not crippled: ORT runs inline on the event loop (no thread hop) with one intra-op
thread by default, which is the fastest setting for batch-1 runs on a small shared machine.
Run `python -m bench.naive_server --model-repository DIR --model gru_bench --port 0` (add
`--loop asyncio|uvloop` to pick the event loop; auto = uvloop when installed); it prints
`BENCH_PORT=<port>` when it is serving.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bench.model import BenchModel, load_model
from bench.serverutil import (
    MAX_MESSAGE_BYTES,
    add_loop_argument,
    run_server,
    serve_until_signal,
)
from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc

F32 = npt.NDArray[np.float32]
NOT_FOUND, INVALID_ARGUMENT, UNIMPLEMENTED = 5, 3, 12
_STATUS = {c.value[0]: c for c in grpc.StatusCode}


def make_session(model: BenchModel, gpu: bool, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    )
    return ort.InferenceSession(str(model.onnx_path), opts, providers=providers)


class NaiveInference(rnnserve_pb2_grpc.InferenceServicer):
    def __init__(self, model: BenchModel, session: ort.InferenceSession) -> None:
        meta = model.metadata
        self.name = meta.name
        self.version = meta.version
        self.features = meta.input_features
        self.sess = session
        self.x_name, self.y_name = meta.input_name, meta.output_name
        self.state_specs = [
            (s.input_name, s.output_name, tuple(s.shape), s.initial_value) for s in meta.states
        ]
        self.out_names = [self.y_name] + [s[1] for s in self.state_specs]
        n = meta.normalization
        self.in_mean = np.asarray(n.input_mean, np.float32) if n.input_mean else None
        self.in_std = np.asarray(n.input_std, np.float32) if n.input_std else None
        self.out_mean = np.asarray(n.output_mean, np.float32) if n.output_mean else None
        self.out_std = np.asarray(n.output_std, np.float32) if n.output_std else None
        self.states: dict[str, tuple[list[F32], int]] = {}  # id -> (state arrays, steps)

    def _initial(self) -> list[F32]:
        return [np.full((1, *shape), init, np.float32) for _, _, shape, init in self.state_specs]

    def step(self, req: rnnserve_pb2.StepRequest) -> rnnserve_pb2.StepResponse:
        resp = rnnserve_pb2.StepResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            model=self.name,
            model_version=self.version,
        )
        shape = list(req.input.shape)
        if len(shape) != 2 or shape[1] != self.features or shape[0] < 1:
            resp.status.code, resp.status.message = INVALID_ARGUMENT, f"bad input shape {shape}"
            return resp
        if req.start:
            entry = (self._initial(), 0)
        elif req.session_id in self.states:
            entry = self.states[req.session_id]
        else:
            resp.status.code, resp.status.message = NOT_FOUND, "unknown session"
            resp.step = -1
            return resp
        x = np.frombuffer(req.input.data, "<f4").reshape(1, shape[0], shape[1])
        if self.in_mean is not None and self.in_std is not None:
            x = (x - self.in_mean) / self.in_std
        feeds = {self.x_name: x}
        for (in_name, _, _, _), value in zip(self.state_specs, entry[0], strict=True):
            feeds[in_name] = value
        outs = self.sess.run(self.out_names, feeds)
        y = outs[0][0]
        if self.out_mean is not None and self.out_std is not None:
            y = y * self.out_std + self.out_mean
        steps = entry[1] + shape[0]
        if req.end:
            self.states.pop(req.session_id, None)
        else:
            self.states[req.session_id] = (outs[1:], steps)
        resp.output.shape.extend(y.shape)
        resp.output.data = np.ascontiguousarray(y, "<f4").tobytes()
        resp.step = steps
        return resp

    async def Stream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[rnnserve_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[rnnserve_pb2.StreamRequest, rnnserve_pb2.StreamResponse],
    ) -> AsyncIterator[rnnserve_pb2.StreamResponse]:
        async for req in request_iterator:
            if req.HasField("step"):
                yield rnnserve_pb2.StreamResponse(step=self.step(req.step))
            else:
                frame = rnnserve_pb2.FrameResponse(request_id=req.frame.request_id)
                frame.status.code, frame.status.message = UNIMPLEMENTED, "no frames here"
                yield rnnserve_pb2.StreamResponse(frame=frame)

    async def Step(  # noqa: N802 (gRPC method name)
        self,
        request: rnnserve_pb2.StepRequest,
        context: grpc.aio.ServicerContext[rnnserve_pb2.StepRequest, rnnserve_pb2.StepResponse],
    ) -> rnnserve_pb2.StepResponse:
        resp = self.step(request)
        if resp.status.code:
            await context.abort(_STATUS[resp.status.code], resp.status.message)
        return resp


async def _main(args: argparse.Namespace) -> None:
    model = load_model(Path(args.model_repository), args.model)
    servicer = NaiveInference(model, make_session(model, args.gpu, args.intra_op_threads))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    rnnserve_pb2_grpc.add_InferenceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    await serve_until_signal(server, args.host, args.port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--model", default="gru_bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="CUDA execution provider")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    add_loop_argument(parser)
    args = parser.parse_args()
    run_server(lambda: _main(args), args.loop)


if __name__ == "__main__":
    main()
