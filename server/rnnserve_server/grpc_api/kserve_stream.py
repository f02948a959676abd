"""KServe's ModelStreamInfer, the common request: a sequence step that asks for the prediction
only. It is submitted as soon as it is read and answered from inside the batch that computed it,
like the native Stream's steps (`stream_steps`), instead of costing a task, a coroutine and a
future per request. Everything else on the stream (stateless requests, state outputs, requests
that fail to parse) takes the servicer's general path.

Order: replies of one sequence go out in the order its requests arrived, kept as the native
Stream's are (`stream_steps.OrderedSteps` and its `ReplyOrder`): a rejected step waits for the
sequence's replies in flight, a general request's reply (`KServeSteps.sender`) for those of its
sequence, and a step behind a reply that waits holds its result until that one is out. What
`KServeStep` and `KServeSteps` add to that shared ordering: how a request is parsed into a step,
and how its result or failure becomes a reply (with KServe's statistics).

Also here: how a failed stream request is told (`stream_error`), and how a step's NOT_FOUND is
put in the protocol's terms (`explain`), since both paths answer errors the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING

from rnnserve_proto import kserve_pb2 as kpb
from rnnserve_proto import model_repository_pb2 as repo_pb2
from rnnserve_server.batcher import StepResult
from rnnserve_server.errors import ErrorCode, Internal, NotFound, RnnServeError
from rnnserve_server.grpc_api import kserve_convert as conv
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import as_service_error, code_name
from rnnserve_server.grpc_api.stream_steps import OrderedStep, OrderedSteps
from rnnserve_server.types import StepInput

if TYPE_CHECKING:
    from rnnserve_server.service import InferenceService

log = logging.getLogger(__name__)

METHOD = "kserve_stream_infer"
_OK = code_name(ErrorCode.OK)
Put = Callable[[kpb.ModelStreamInferResponse | None], None]
Metadata = Callable[[str, str], repo_pb2.ModelMetadata]
Counters = Callable[[str, int], conv.ModelCounters]


class KServeStep(OrderedStep[kpb.ModelInferRequest]):
    """One streamed sequence step in flight: the `Outcome` the batcher resolves."""

    __slots__ = ("chunk", "meta", "sequence")

    def __init__(
        self,
        owner: KServeSteps,
        request: kpb.ModelInferRequest,
        meta: repo_pb2.ModelMetadata,
        sequence: conv.SequenceControl,
        chunk: StepInput,
        started: int,
    ) -> None:
        super().__init__(owner, request, started)
        self.meta = meta
        self.sequence = sequence
        self.chunk = chunk


class KServeSteps(OrderedSteps[KServeStep, kpb.ModelStreamInferResponse]):
    """Submits one stream's plain sequence steps and answers them through `put` (exactly one
    `put` per submitted step); `sender` orders the stream's other replies with them."""

    def __init__(
        self,
        service: InferenceService,
        recorder: Recorder,
        metadata: Metadata,
        counters: Counters,
        put: Put,
    ) -> None:
        super().__init__(service, recorder, put)
        self._metadata = metadata
        self._counters = counters

    def try_submit(self, request: kpb.ModelInferRequest) -> bool:
        """Submit `request` if it is a plain sequence step; False leaves it to the general
        path (which also reports a request that fails to parse, so it is parsed there again:
        a rare cost)."""
        started = perf_counter_ns()
        try:
            meta = self._metadata(request.model_name, request.model_version)
            if not meta.streaming or (
                request.outputs and conv.requested_outputs(request, meta) != [meta.output_name]
            ):
                return False
            sequence = conv.parse_sequence(request.parameters)
            if not sequence.is_sequence:
                return False
            x = conv.decode_input(request, meta)
            chunk = conv.sequence_step(request, meta, sequence, x, end=sequence.end)
        except RnnServeError:
            return False
        self._submit(KServeStep(self, request, meta, sequence, chunk, started), chunk)
        return True

    def sender(self, request: kpb.ModelInferRequest) -> Put:
        """For a request of the general path: what sends its reply (exactly once) in its turn
        among its sequence's replies, a place taken now. A request that names no sequence
        (stateless, a start that asks for an id, parameters that fail to parse) has no turn: its
        reply goes out as it comes."""
        try:
            session_id = conv.parse_sequence(request.parameters).session_id
        except RnnServeError:
            return self._put
        if not session_id:
            return self._put
        return self.later((session_id,)).answer

    def reply_result(self, step: KServeStep, result: StepResult) -> None:
        try:
            y = result.y[None]
            response = conv.infer_response(
                model=step.model,
                version=step.version,
                request_id=step.request.id,
                outputs=[conv.y_output(y, step.meta)],
                sequence=step.sequence,
                session_id=step.session_id,
            )
            elapsed = perf_counter_ns() - step.started
            self._rec.request(step.model, METHOD, _OK, elapsed / 1e9, y.shape[1])
            self._counters(step.model, step.version).record(ok=True, batch=1, elapsed_ns=elapsed)
            reply = kpb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:  # a bug here must not stop the batch answering everyone else
            log.exception("answering a KServe stream step failed")
            reply = stream_error(step.request, Internal(f"internal error: {exc}"))
        self._put(reply)

    def reply_failure(self, step: KServeStep, error: BaseException) -> None:
        try:
            failure = explain(as_service_error(error), step.chunk)
            elapsed = perf_counter_ns() - step.started
            self._rec.request(
                step.request.model_name, METHOD, code_name(failure.code), elapsed / 1e9
            )
            version = step.version or int(step.meta.version)
            self._counters(step.meta.name, version).record(ok=False, batch=1, elapsed_ns=elapsed)
            reply = stream_error(step.request, failure)
        except Exception as bug:  # a bug here must not stop the batch answering everyone else
            log.exception("answering a failed KServe stream step failed")
            reply = stream_error(step.request, Internal(f"internal error: {bug}"))
        self._put(reply)


def explain(error: RnnServeError, chunk: StepInput) -> RnnServeError:
    """The service's NOT_FOUND for a continuing chunk means the sequence is not active: say so
    in the protocol's terms."""
    if error.code != ErrorCode.NOT_FOUND or chunk.start:
        return error
    return NotFound(
        f"sequence_id {chunk.session_id} is not an active sequence of model {chunk.model!r}; "
        f"begin it with sequence_start=True ({error.message})"
    )


def stream_error(
    request: kpb.ModelInferRequest, error: RnnServeError
) -> kpb.ModelStreamInferResponse:
    """Stream errors carry only a message in tritonclient, so it names the request and sequence;
    the infer_response also echoes the id for clients that read it."""
    try:
        sequence: conv.SequenceControl | None = conv.parse_sequence(request.parameters)
    except RnnServeError:
        sequence = None
    session_id = sequence.session_id if sequence is not None else None
    prefix = conv.describe_request(request.id, session_id)
    echo = kpb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    if sequence is not None and session_id:
        echo.parameters[conv.SEQUENCE_ID].CopyFrom(
            conv.sequence_id_param(session_id, sequence.id_kind)
        )
    return kpb.ModelStreamInferResponse(
        error_message=f"[{code_name(error.code)}] {prefix}{error.message}", infer_response=echo
    )
