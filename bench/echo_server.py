"""The transport floor: rnnserve's Inference service shape over grpc.aio with no compute.

Every StepRequest is answered by a StepResponse of the same size (its input tensor is returned as
the output, which has the same shape because the benchmark model has 16 inputs and 16 outputs);
a FrameRequest by a FrameResponse with the per-session fields filled. Run it as
`python -m bench.echo_server --port 0 [--loop auto|asyncio|uvloop]`; it prints
`BENCH_PORT=<port>` when it is serving.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc

from bench.serverutil import (
    MAX_MESSAGE_BYTES,
    add_loop_argument,
    run_server,
    serve_until_signal,
)
from rnnserve_proto import rnnserve_pb2, rnnserve_pb2_grpc


def echo_step(req: rnnserve_pb2.StepRequest) -> rnnserve_pb2.StepResponse:
    """The echo reply to a step: its input back as the output (same size: 16 in, 16 out)."""
    return rnnserve_pb2.StepResponse(
        session_id=req.session_id,
        request_id=req.request_id,
        output=req.input,
        step=1,
        model=req.model,
        model_version=1,
    )


def _echo_frame(req: rnnserve_pb2.FrameRequest) -> rnnserve_pb2.FrameResponse:
    n = len(req.session_ids)
    return rnnserve_pb2.FrameResponse(
        request_id=req.request_id,
        session_ids=req.session_ids,
        output=req.input,
        step=[1] * n,
        code=[0] * n,
        message=[""] * n,
        model=req.model,
        model_version=1,
    )


class EchoInference(rnnserve_pb2_grpc.InferenceServicer):
    async def Stream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[rnnserve_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[rnnserve_pb2.StreamRequest, rnnserve_pb2.StreamResponse],
    ) -> AsyncIterator[rnnserve_pb2.StreamResponse]:
        async for req in request_iterator:
            if req.HasField("step"):
                yield rnnserve_pb2.StreamResponse(step=echo_step(req.step))
            else:
                yield rnnserve_pb2.StreamResponse(frame=_echo_frame(req.frame))

    async def Step(  # noqa: N802 (gRPC method name)
        self,
        request: rnnserve_pb2.StepRequest,
        context: grpc.aio.ServicerContext[rnnserve_pb2.StepRequest, rnnserve_pb2.StepResponse],
    ) -> rnnserve_pb2.StepResponse:
        return echo_step(request)


async def _main(host: str, port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    rnnserve_pb2_grpc.add_InferenceServicer_to_server(EchoInference(), server)  # type: ignore[no-untyped-call]
    await serve_until_signal(server, host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    add_loop_argument(parser)
    args = parser.parse_args()
    run_server(lambda: _main(args.host, args.port), args.loop)


if __name__ == "__main__":
    main()
