"""The streamed steps of one Stream call: submitted as they are read, answered from the batch;
and the reply order of a stream (`ReplyOrder`), which KServe's ModelStreamInfer shares.

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
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from time import perf_counter
from typing import Generic, TypeVar

from rnnserve_proto import rnnserve_pb2 as pb
from rnnserve_server.batcher import StepResult
from rnnserve_server.errors import ErrorCode, RnnServeError
from rnnserve_server.grpc_api import convert
from rnnserve_server.grpc_api.recording import Recorder
from rnnserve_server.grpc_api.status import as_service_error, code_name
from rnnserve_server.service import InferenceService

log = logging.getLogger(__name__)

_OK = code_name(ErrorCode.OK)
R = TypeVar("R")
Put = Callable[[pb.StreamResponse | None], None]
ReplyError = Callable[[pb.StepRequest, RnnServeError, float], None]


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


class StreamStep(Pending):
    """One streamed chunk in flight (see the module docstring)."""

    __slots__ = ("model", "request", "resolved", "sid", "started", "stash", "steps", "version")

    stash: tuple[StepResult | None, BaseException | None] | None

    def __init__(self, steps: StreamSteps, request: pb.StepRequest, started: float) -> None:
        self.steps = steps
        self.request = request
        self.started = started
        self.resolved = False
        self.after = None
        self.waiting = 0  # 1 while it waits for an earlier reply of its session
        self.sid = ""
        self.model = ""
        self.version = 0
        # `stash`, the (result, error) resolved while waiting, is set only then.

    def done(self) -> bool:
        return self.resolved

    def set_result(self, result: StepResult, /) -> None:
        self.resolved = True
        self.steps.answer(self, result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self.resolved = True
        self.steps.answer(self, None, exception)

    def release(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.steps.unheld(self)


class StreamSteps:
    """Submits one stream's steps and answers them; `put` is the stream's reply writer and
    `reply_error` answers a rejected chunk (exactly one `put` per chunk either way). `later`
    orders the stream's other replies (frames) with the steps."""

    def __init__(
        self, service: InferenceService, recorder: Recorder, put: Put, reply_error: ReplyError
    ) -> None:
        self._service = service
        self._rec = recorder
        self._put = put
        self._reply_error = reply_error
        self._order = ReplyOrder()
        self._tails = self._order.tails

    def submit(self, request: pb.StepRequest) -> None:
        started = perf_counter()
        step = StreamStep(self, request, started)
        order = self._order
        if order.waiting:
            order.queue_behind(step, request.session_id)
        try:
            sid, model, version = self._service.submit_step(convert.step_input(request), step)
        except Exception as exc:  # each request gets its own reply; the stream stays up
            error = as_service_error(exc)
            if step.waiting:  # already queued behind the session's replies: answer it there
                step.set_exception(error)
            else:
                order.reply_after(
                    request.session_id, partial(self._reply_error, request, error, started)
                )
            return
        step.sid, step.model, step.version = sid, model, version
        if not step.resolved or step.waiting:
            self._tails[sid] = step

    def later(self, session_ids: Iterable[str]) -> Later[pb.StreamResponse]:
        """A reply made elsewhere, for these sessions, ordered with theirs (`Later.answer` it)."""
        return Later(self._order, self._put, session_ids)

    def unheld(self, step: StreamStep) -> None:
        """`step` waited for an earlier reply and now waits for nothing: answer it if the
        batcher already resolved it."""
        self._order.waiting -= 1
        if step.resolved:
            stash, step.stash = step.stash, None
            assert stash is not None
            result, error = stash
            self.answer(step, result, error)

    def answer(
        self, step: StreamStep, result: StepResult | None, error: BaseException | None
    ) -> None:
        """The batcher resolved `step`: reply (unless it waits its turn), then let out the
        replies queued behind it."""
        if step.waiting:
            step.stash = (result, error)
            return
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
            self._order.let_out(after)
