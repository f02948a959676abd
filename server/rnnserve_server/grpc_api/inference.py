"""The Inference servicer: Stream, Step, Predict, Forecast. Converts, delegates, reports.

Stream multiplexes sessions. A step is validated and queued as soon as it is read
(`service.submit_step`, in arrival order, which is what keeps each session's chunks in order) and
answered inside the batch that computed it (`stream_steps.StreamSteps`): no task and no future
per message, since on the ping-pong path every event-loop hop costs throughput. Frames, rarer and
larger, run as tasks. Replies go out as they finish, except that a reply never overtakes an
earlier reply of the same session on the same stream (`stream_steps.ReplyOrder`, which orders a
frame's reply with the replies of every session it names, and rejections with the rest).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from time import perf_counter, perf_counter_ns
from typing import Any

import grpc
from typing_extensions import override

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_proto import rnnserve_pb2_grpc as pb_grpc
from rnnserve_server.errors import ErrorCode, InvalidArgument, RnnServeError
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.drain import EOF, StreamDrain, StreamReplies
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import abort, as_service_error, code_name, status_proto
from rnnserve_server.grpc_api.stream_steps import StreamSteps
from rnnserve_server.grpc_api.stream_tasks import StreamTasks
from rnnserve_server.service import InferenceService

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_OK = code_name(ErrorCode.OK)
_NO_KIND = InvalidArgument("StreamRequest carries neither a step nor a frame")


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, service: InferenceService, recorder: Recorder) -> None:
        self._service = service
        self._rec = recorder
        # Stream readers, cancelled on shutdown so open streams stop taking new work.
        self._drain = StreamDrain()
        self._latest: dict[str, int] | None = None

    def begin_drain(self) -> None:
        """Shutdown stage: open streams stop reading, answer what they took, then end with
        UNAVAILABLE so clients reconnect elsewhere."""
        self._drain.begin()

    @property
    def draining(self) -> bool:
        return self._drain.draining

    # -- Stream ----------------------------------------------------------------------------------
    @override
    async def Stream(  # reader/writer API: a coroutine
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: Context
    ) -> None:
        replies: StreamReplies[pb.StreamResponse] = StreamReplies(context.write)
        put = replies.put
        steps = StreamSteps(
            self._service,
            self._rec,
            put,
            lambda request, error, started: self._reply_error(request, error, started, put),
        )
        submit_step = steps.submit
        frames: StreamTasks[pb.StreamResponse] = StreamTasks()

        async def read() -> None:
            read_next = context.read  # cheaper than iterating request_iterator, which wraps it
            while (request := await read_next()) is not EOF:
                assert isinstance(request, pb.StreamRequest)
                replies.expect()
                if frames.unstarted:  # a frame read earlier submits first: arrival order
                    await frames.submitted()
                kind = request.WhichOneof("kind")
                if kind == "step":
                    submit_step(request.step)
                elif kind == "frame":
                    # Its reply takes its place among its sessions' replies now, as read.
                    reply = steps.later(request.frame.session_ids)
                    frames.start(partial(self._stream_frame, request.frame), reply.answer)
                else:
                    put(pb.StreamResponse(step=pb.StepResponse(status=status_proto(_NO_KIND))))

        await self._drain.serve(context, read, replies)

    def _reply_error(
        self,
        request: pb.StepRequest,
        error: RnnServeError,
        started_ns: int,
        put: Callable[[pb.StreamResponse | None], None],
    ) -> None:
        """A rejected streamed chunk's reply, with the session's (unchanged) step count."""
        self._rec.request(
            request.model,
            "stream_step",
            code_name(error.code),
            (perf_counter_ns() - started_ns) * 1e-9,
            _rows(request.input),
        )
        step = self._step_of(request.session_id)
        put(pb.StreamResponse(step=convert.step_error_response(request, status_proto(error), step)))

    async def _stream_frame(self, request: pb.FrameRequest) -> pb.StreamResponse:
        started = perf_counter()
        try:
            out = await self._service.frame(convert.frame_input(request))
        except Exception as exc:
            error = as_service_error(exc)
            code = code_name(error.code)
            self._rec.request(request.model, "frame", code, perf_counter() - started)
            return pb.StreamResponse(
                frame=convert.frame_error_response(request, status_proto(error))
            )
        response = pb.StreamResponse()
        convert.frame_response(out, request.request_id, response.frame)
        self._rec.request(out.model, "frame", _OK, perf_counter() - started)
        steps_per_session = out.y.shape[1] if out.y.ndim == 3 else 0
        ok = out.errors.count(None)
        self._rec.steps(out.model, _OK, ok * steps_per_session)
        if ok < len(out.errors):
            for failed in out.errors:
                if failed is not None:
                    self._rec.steps(out.model, code_name(failed.code), steps_per_session)
        return response

    def _step_of(self, session_id: str) -> int:
        """The step count reported with a rejected chunk: the session's (unchanged) count, or -1
        when it does not exist."""
        if not session_id:
            return -1
        try:
            return self._service.get_session(session_id).step
        except RnnServeError:
            return -1

    # -- unary -----------------------------------------------------------------------------------
    @override
    async def Step(self, request: pb.StepRequest, context: Context) -> pb.StepResponse:
        started = perf_counter()
        try:
            out = await self._service.step(convert.step_input(request))
        except Exception as exc:
            error = as_service_error(exc)
            self._rec.request(
                request.model,
                "step",
                code_name(error.code),
                perf_counter() - started,
                _rows(request.input),
            )
            await abort(context, error)
        response = convert.step_response(out, request.request_id)
        self._rec.request(out.model, "step", _OK, perf_counter() - started, len(out.y))
        return response

    @override
    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        started = perf_counter()
        steps = 0
        try:
            x = convert.tensor_to_array(request.input, (2, 3))
            steps = x.size // x.shape[-1] if x.shape[-1] else 0
            version = convert.version_or_latest(request.model_version)
            y = await self._service.predict(request.model, version, x)
            resolved = self._resolved_version(request.model, version)
        except Exception as exc:
            error = as_service_error(exc)
            self._rec.request(
                request.model, "predict", code_name(error.code), perf_counter() - started, steps
            )
            await abort(context, error)
        response = convert.predict_response(y, request, resolved)
        self._rec.request(request.model, "predict", _OK, perf_counter() - started, steps)
        return response

    @override
    async def Forecast(self, request: pb.ForecastRequest, context: Context) -> pb.ForecastResponse:
        started = perf_counter()
        sid = request.session_id
        try:
            # The service waits for the session's earlier work (its creation may be queued), so
            # the model label is looked up afterwards, not before.
            y, step = await self._service.forecast(sid, request.horizon)
        except Exception as exc:
            error = as_service_error(exc)
            model = self._service.model_of(sid)
            self._rec.request(model, "forecast", code_name(error.code), perf_counter() - started)
            await abort(context, error)
        response = convert.forecast_response(y, step, request)
        model = self._service.model_of(sid)
        self._rec.request(model, "forecast", _OK, perf_counter() - started, len(y))
        return response

    def _resolved_version(self, model: str, version: int | None) -> int:
        if version is not None:
            return version
        if self._latest is None:  # models are loaded once at startup; look them up once
            self._latest = {m.name: m.latest_version for m in self._service.list_models()}
        return self._latest.get(model, 0)


def _rows(tensor: pb.Tensor) -> int:
    """Steps a rejected chunk carried (its first dimension), for steps_total{code!=OK}."""
    return int(tensor.shape[0]) if len(tensor.shape) == 2 else 0
