"""The streamed steps of one Stream call: submitted as they are read, answered from the batch.

Each chunk becomes a `StreamStep`, the `Outcome` the batcher resolves: a plain slots object whose
`set_result` builds the reply and hands it to the stream's writer at once, inside the batch that
computed it. One is made per message, so it carries no callbacks, closures or futures of its own:
that is the per-message cost of the ping-pong path.

Order: a rejected chunk is answered by the service at once, but its reply must not overtake the
reply of an earlier chunk of the same session still in flight on this stream; it waits on that
chunk (`StreamStep.then`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.batcher import StepResult
from rnnserve_server.errors import ErrorCode, RnnServeError
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import as_service_error, code_name
from rnnserve_server.service import InferenceService

log = logging.getLogger(__name__)

_OK = code_name(ErrorCode.OK)
Put = Callable[[pb.StreamResponse | None], None]
ReplyError = Callable[[pb.StepRequest, RnnServeError, float], None]


class StreamStep:
    """One streamed chunk in flight (see the module docstring)."""

    __slots__ = ("after", "model", "request", "resolved", "sid", "started", "steps", "version")

    def __init__(self, steps: StreamSteps, request: pb.StepRequest, started: float) -> None:
        self.steps = steps
        self.request = request
        self.started = started
        self.resolved = False
        self.after: list[Callable[[], None]] | None = None  # replies waiting for this one
        self.sid = ""
        self.model = ""
        self.version = 0

    def done(self) -> bool:
        return self.resolved

    def set_result(self, result: StepResult, /) -> None:
        self.resolved = True
        self.steps.answer(self, result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self.resolved = True
        self.steps.answer(self, None, exception)

    def then(self, fn: Callable[[], None]) -> None:
        """Run `fn` once this step is answered (at once when it already is)."""
        if self.resolved:
            fn()
        elif self.after is None:
            self.after = [fn]
        else:
            self.after.append(fn)


class StreamSteps:
    """Submits one stream's steps and answers them; `put` is the stream's reply writer and
    `reply_error` answers a rejected chunk (exactly one `put` per chunk either way)."""

    def __init__(
        self, service: InferenceService, recorder: Recorder, put: Put, reply_error: ReplyError
    ) -> None:
        self._service = service
        self._rec = recorder
        self._put = put
        self._reply_error = reply_error
        self._tails: dict[str, StreamStep] = {}  # each session's latest chunk in flight here

    def submit(self, request: pb.StepRequest) -> None:
        started = perf_counter()
        step = StreamStep(self, request, started)
        try:
            sid, model, version = self._service.submit_step(convert.step_input(request), step)
        except Exception as exc:  # each request gets its own reply; the stream stays up
            error = as_service_error(exc)
            previous = self._tails.get(request.session_id)
            if previous is None:
                self._reply_error(request, error, started)
            else:
                previous.then(lambda: self._reply_error(request, error, started))
            return
        step.sid, step.model, step.version = sid, model, version
        if not step.resolved:
            self._tails[sid] = step

    def answer(
        self, step: StreamStep, result: StepResult | None, error: BaseException | None
    ) -> None:
        """The batcher resolved `step`: reply, then let out the replies queued behind it."""
        if self._tails.get(step.sid) is step:
            del self._tails[step.sid]
        try:
            if result is None:
                assert error is not None
                self._reply_error(step.request, as_service_error(error), step.started)
            else:
                response = pb.StreamResponse()
                y = result.y
                convert.fill_step_response(
                    response.step,
                    step.sid,
                    step.request.request_id,
                    step.model,
                    step.version,
                    y,
                    result.step,
                )
                self._rec.request(
                    step.model, "stream_step", _OK, perf_counter() - step.started, len(y)
                )
                self._put(response)
        except Exception:  # a bug here must not stop the batch answering everyone else
            log.exception("answering a streamed step failed")
            self._put(None)
        after = step.after
        if after is not None:
            step.after = None
            for fn in after:
                fn()
