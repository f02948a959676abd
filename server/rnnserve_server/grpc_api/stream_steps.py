"""The streamed steps of one Stream call: submitted as they are read, answered from the batch;
and what KServe's ModelStreamInfer shares with them: a stream's reply order (`ReplyOrder`) and the
step answered in its turn (`OrderedStep`, submitted by an `OrderedSteps`).

Each chunk becomes a `StreamStep`, the `Outcome` the batcher resolves: a plain slots object whose
`set_result` builds the reply and hands it to the stream's writer at once, inside the batch that
computed it. One is made per message, so it carries no callbacks, closures or futures of its own:
that is the per-message cost of the ping-pong path.

Order: replies of one session go out in the order its requests arrived on the stream; replies of
different sessions go out as soon as they are ready. Every reply not yet sent is a `Pending`:
`ReplyOrder.tails` holds each session's latest one, and a later reply that could overtake it waits
for it (`Pending.then`). What can overtake:

- a rejected chunk, answered at once: it waits for the session's tail, whatever that is;
- a reply made by a task (a frame, a general KServe request: `Later`): it waits for the tails of
  every session it names, and becomes their tail;
- a step behind a reply that waits itself (a `Later`, or a step waiting on one): the batcher may
  compute it before that reply goes out, so it waits too, holding its result until then.

A step behind a plain step needs nothing: the batcher resolves one session's chunks in submission
order and a plain step is answered the moment it is resolved. So while no reply of the stream
waits (`ReplyOrder.waiting == 0`, always so on a ping-pong stream of steps) a step does not even
look at the tails: its cost is the `tails` entry it leaves while in flight.

That ordering of steps is `OrderedStep`'s and `OrderedSteps`'; the native classes (`StreamStep`,
`StreamSteps`) and KServe's (`kserve_stream`) add only how a request is submitted and how a
step's result or failure becomes a reply.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from time import perf_counter_ns
from typing import Any, Generic, TypeVar

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.batcher import StepResult
from rnnserve_server.errors import ErrorCode, RnnServeError
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import as_service_error, code_name
from rnnserve_server.service import InferenceService
from rnnserve_server.types import StepInput

log = logging.getLogger(__name__)

_OK = code_name(ErrorCode.OK)
R = TypeVar("R")  # a stream's reply message
RequestT = TypeVar("RequestT")  # a stream's request message
StepT = TypeVar("StepT", bound="OrderedStep[Any]")
Put = Callable[[pb.StreamResponse | None], None]
ReplyError = Callable[[pb.StepRequest, RnnServeError, int], None]


class Pending:
    """A reply not yet sent. `waiting` counts what it still waits for (earlier replies of its
    sessions; for a `Later`, its own reply too); `after` what waits for it, run in order once it
    is sent (`ReplyOrder.let_out`)."""

    __slots__ = ("after", "waiting")

    after: list[Callable[[], None]] | None
    waiting: int

    def then(self, fn: Callable[[], None]) -> None:
        """Run `fn` right after this reply is sent (only asked of replies not yet sent: those
        are the ones in `ReplyOrder.tails`)."""
        if self.after is None:
            self.after = [fn]
        else:
            self.after.append(fn)

    def release(self) -> None:
        """One reply this one waited for was sent."""
        raise NotImplementedError


class ReplyOrder:
    """One stream's reply order (see the module docstring)."""

    __slots__ = ("_due", "_letting_out", "tails", "waiting")

    def __init__(self) -> None:
        self.tails: dict[str, Pending] = {}  # each session's latest reply not yet sent
        self.waiting = 0  # replies not yet sent with waiting > 0
        self._due: deque[Callable[[], None]] = deque()
        self._letting_out = False

    def queue_behind(self, entry: Pending, session_id: str) -> None:
        """A step about to be submitted: it waits for the session's tail if that waits itself
        (call only while `waiting`). Before the submission, since the batcher may reject a chunk
        at once through the step itself."""
        previous = self.tails.get(session_id)
        if previous is not None and previous.waiting:
            entry.waiting = 1
            self.waiting += 1
            previous.then(entry.release)

    def reply_after(self, session_id: str, reply: Callable[[], None]) -> None:
        """`reply` sends an answer that is ready now (a rejection): run it once the session's
        replies in flight are sent, at once when there are none."""
        previous = self.tails.get(session_id) if session_id else None
        if previous is None:
            reply()
        else:
            previous.then(reply)

    def let_out(self, after: list[Callable[[], None]]) -> None:
        """Run what waited for a reply just sent, in order. Iteratively: replies it lets out
        queue what waited for them behind it, so a long chain (many pipelined steps held behind
        a frame) does not recurse."""
        due = self._due
        due.extend(after)
        if self._letting_out:
            return
        self._letting_out = True
        try:
            while due:
                fn = due.popleft()
                try:
                    fn()
                except Exception:  # a bug in one reply must not hold back the others
                    log.exception("sending a stream reply failed")
        finally:
            self._letting_out = False


class Later(Pending, Generic[R]):
    """A reply made elsewhere (a task: a frame, a general KServe request) that names sessions:
    it waits for their replies in flight, later replies of theirs wait for it, and it is sent
    once it is `answer`ed and those it waits for are out."""

    __slots__ = ("_ids", "_order", "_put", "_reply")

    def __init__(self, order: ReplyOrder, put: Callable[[R | None], None], ids: Iterable[str]):
        self.after = None
        self.waiting = 1  # its own reply
        self._order = order
        self._put = put
        self._reply: R | None = None
        tails = order.tails
        named: list[str] = []
        for sid in ids:
            if not sid:  # a rejected id: no session of this stream can have it
                continue
            previous = tails.get(sid)
            if previous is self:  # named twice
                continue
            if previous is not None:
                self.waiting += 1
                previous.then(self.release)
            tails[sid] = self
            named.append(sid)
        self._ids = named
        order.waiting += 1

    def answer(self, reply: R | None) -> None:
        """The reply (None: nothing to send); it goes out when its turn comes."""
        self._reply = reply
        self.release()

    def release(self) -> None:
        self.waiting -= 1
        if self.waiting:
            return
        order = self._order
        order.waiting -= 1
        tails = order.tails
        for sid in self._ids:
            if tails.get(sid) is self:
                del tails[sid]
        reply, self._reply = self._reply, None
        self._put(reply)
        after = self.after
        if after is not None:
            self.after = None
            order.let_out(after)


class OrderedStep(Pending, Generic[RequestT]):
    """A streamed step in flight, the `Outcome` the batcher resolves, answered in its turn (see
    the module docstring); its `owner` says what the reply is. A protocol's step class adds only
    fields of its own."""

    __slots__ = (
        "model",
        "owner",
        "request",
        "resolved",
        "session_id",
        "started",
        "stash",
        "version",
    )

    stash: tuple[StepResult | None, BaseException | None] | None

    def __init__(self, owner: OrderedSteps[Any, Any], request: RequestT, started: int) -> None:
        self.owner = owner
        self.request = request
        self.started = started  # perf_counter_ns(): exact, and what KServe's statistics count
        self.resolved = False
        self.after = None
        self.waiting = 0  # 1 while it waits for an earlier reply of its session
        self.session_id = ""  # where the service put it: set once it is submitted
        self.model = ""
        self.version = 0
        # `stash`, the (result, error) resolved while waiting, is set only then.

    def done(self) -> bool:
        return self.resolved

    def answer(self, result: StepResult | None, error: BaseException | None = None, /) -> None:
        """Resolved: reply (unless it waits its turn), then let out the replies queued behind
        it."""
        self.resolved = True
        if self.waiting:
            self.stash = (result, error)
            return
        owner = self.owner
        tails = owner.tails
        if tails.get(self.session_id) is self:
            del tails[self.session_id]
        if result is not None:
            owner.reply_result(self, result)
        else:
            assert error is not None
            owner.reply_failure(self, error)
        after = self.after
        if after is not None:
            self.after = None
            owner.order.let_out(after)

    def set_result(self, result: StepResult, /) -> None:
        self.answer(result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self.answer(None, exception)

    def release(self) -> None:
        self.waiting -= 1
        if self.waiting:
            return
        # It waits for nothing now: answer it if the batcher already resolved it.
        self.owner.order.waiting -= 1
        if self.resolved:
            stash, self.stash = self.stash, None
            assert stash is not None
            self.answer(*stash)


class OrderedSteps(Generic[StepT, R]):
    """Submits one stream's steps in their sessions' reply order and orders the stream's other
    replies with them (`later`); `put` is the stream's reply writer. A protocol's class says how
    a request becomes a step (calling `_submit`) and how a step's result or failure becomes a
    reply (`reply_result`, `reply_failure`: each `put`s exactly once)."""

    def __init__(
        self, service: InferenceService, recorder: Recorder, put: Callable[[R | None], None]
    ) -> None:
        self._service = service
        self._rec = recorder
        self._put = put
        self.order = ReplyOrder()
        self.tails = self.order.tails  # also read by the steps, which answer themselves

    def _submit(self, step: StepT, chunk: StepInput) -> None:
        """Submit `step`, its request read as `chunk`; a rejection is answered in its turn."""
        order = self.order
        if order.waiting:
            order.queue_behind(step, chunk.session_id)
        try:
            step.session_id, step.model, step.version = self._service.submit_step(chunk, step)
        except Exception as exc:  # each request gets its own reply; the stream stays up
            if step.waiting:  # already queued behind the session's replies: answer it there
                step.set_exception(exc)
            else:
                self._reject(step, chunk.session_id, exc)
            return
        if not step.resolved or step.waiting:
            self.tails[step.session_id] = step

    def _reject(self, step: StepT, session_id: str, exc: BaseException) -> None:
        """`step`, not queued, failed: answer it once its session's replies in flight are out."""
        self.order.reply_after(session_id, partial(step.set_exception, exc))

    def later(self, session_ids: Iterable[str]) -> Later[R]:
        """A reply made elsewhere, for these sessions, ordered with theirs (`Later.answer` it)."""
        return Later(self.order, self._put, session_ids)

    def reply_result(self, step: StepT, result: StepResult) -> None:
        """Send `step`'s reply for the batcher's result."""
        raise NotImplementedError

    def reply_failure(self, step: StepT, error: BaseException) -> None:
        """Send `step`'s reply for its failure (a service error, or a bug of ours)."""
        raise NotImplementedError


class StreamStep(OrderedStep[pb.StepRequest]):
    """One streamed chunk in flight (see the module docstring)."""

    __slots__ = ()


class StreamSteps(OrderedSteps[StreamStep, pb.StreamResponse]):
    """Submits one stream's steps and answers them; `put` is the stream's reply writer and
    `reply_error` answers a rejected chunk (exactly one `put` per chunk either way). `later`
    orders the stream's other replies (frames) with the steps."""

    def __init__(
        self, service: InferenceService, recorder: Recorder, put: Put, reply_error: ReplyError
    ) -> None:
        super().__init__(service, recorder, put)
        self._reply_error = reply_error

    def submit(self, request: pb.StepRequest) -> None:
        step = StreamStep(self, request, perf_counter_ns())
        try:
            chunk = convert.step_input(request)
        except Exception as exc:  # a malformed chunk: rejected in its turn, as the service's are
            self._reject(step, request.session_id, exc)
            return
        self._submit(step, chunk)

    def reply_result(self, step: StreamStep, result: StepResult) -> None:
        try:
            response = pb.StreamResponse()
            y = result.y
            convert.fill_step_response(
                response.step,
                step.session_id,
                step.request.request_id,
                step.model,
                step.version,
                y,
                result.step,
            )
            elapsed = (perf_counter_ns() - step.started) * 1e-9
            self._rec.request(step.model, "stream_step", _OK, elapsed, len(y))
            self._put(response)
        except Exception:  # a bug here must not stop the batch answering everyone else
            log.exception("answering a streamed step failed")
            self._put(None)

    def reply_failure(self, step: StreamStep, error: BaseException) -> None:
        try:
            self._reply_error(step.request, as_service_error(error), step.started)
        except Exception:  # as above
            log.exception("answering a streamed step failed")
            self._put(None)
