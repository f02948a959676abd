"""Per-session order across the whole service: `SessionLanes`.

Every unit of work (a step, a frame, an admin operation) takes its place in the lane of each
session it touches when it is submitted, and becomes *ready* only when it is at the head of all of
them. So a session's next chunk waits for the previous one, two chunks of one session never share
a batch, and admin operations (export, close, forecast's state copy) see every earlier step. Work
only ever waits for work submitted before it, so there is no deadlock. Session ids are global, so
there is one `SessionLanes` per service, shared by every model's batcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rnnserve_server.errors import Internal, RnnServeError
from rnnserve_server.outcome import Outcome

if TYPE_CHECKING:
    from rnnserve_server.batcher import Batcher

log = logging.getLogger("rnnserve.lanes")


class Work:
    """Something waiting in session lanes: a chunk for the batcher or an admin operation."""

    __slots__ = ("blocked", "future", "ids", "owner", "waiters")

    def __init__(self, ids: list[str], future: Outcome, owner: Batcher | None = None) -> None:
        self.ids = ids
        self.future = future
        self.owner = owner  # the model version this work creates or runs sessions on, if any
        self.blocked = 0  # how many earlier works (one per shared session) are still pending
        self.waiters: list[Work] | None = None  # later works queued behind this one

    def on_ready(self) -> None:
        raise NotImplementedError


class Control(Work):
    """An admin operation that must see every earlier step of its sessions."""

    __slots__ = ("fn", "lanes")

    def __init__(
        self,
        lanes: SessionLanes,
        ids: list[str],
        fn: Callable[[], Any],
        future: asyncio.Future[Any],
        owner: Batcher | None,
    ) -> None:
        super().__init__(ids, future, owner)
        self.lanes = lanes
        self.fn = fn

    def on_ready(self) -> None:
        # Run on the next loop iteration, not inside the release that readied it (releases
        # happen on the loop thread).
        asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        waiter = self.future
        try:
            if not waiter.done():
                waiter.set_result(self.fn())
        except RnnServeError as exc:
            waiter.set_exception(exc)
        except Exception as exc:  # a bug: report it as INTERNAL, keep the lanes moving
            log.exception("admin operation failed")
            waiter.set_exception(Internal(f"internal error: {exc}"))
        finally:
            self.lanes.release(self)


class SessionLanes:
    """Per-session FIFO of work; see the module docstring.

    Each session id maps to the *last* work queued for it. A new work on that session registers
    as a waiter of that last work and counts it in `blocked`; when a work finishes, its waiters'
    counts drop and those reaching zero become ready. The common cases (no session of a work is
    busy / nobody queued behind it) are single C-level dict operations, so a frame of many
    sessions costs little more than a step.
    """

    def __init__(self) -> None:
        self._tails: dict[str, Work] = {}  # session id -> last work queued on it

    def __len__(self) -> int:
        return len(self._tails)

    def busy(self, session_id: str) -> bool:
        return session_id in self._tails

    def last(self, session_id: str) -> Work | None:
        return self._tails.get(session_id)

    def enter(self, work: Work) -> bool:
        """Queue `work` behind earlier work on its sessions; True when it is ready at once."""
        tails = self._tails
        ids = work.ids
        if tails.keys().isdisjoint(ids):
            tails.update(dict.fromkeys(ids, work))
            return True
        blocked = 0
        for sid in ids:
            prev = tails.get(sid)
            tails[sid] = work
            if prev is not None:
                if prev.waiters is None:
                    prev.waiters = [work]
                else:
                    prev.waiters.append(work)
                blocked += 1
        work.blocked = blocked
        return blocked == 0

    def enter_one(self, session_id: str, work: Work) -> bool:
        """`enter` for a work on one session (a step: the hot path)."""
        tails = self._tails
        prev = tails.get(session_id)
        tails[session_id] = work
        if prev is None:
            return True
        if prev.waiters is None:
            prev.waiters = [work]
        else:
            prev.waiters.append(work)
        work.blocked = 1
        return False

    def release(self, work: Work) -> None:
        """`work` is finished (or failed): the next work of each of its sessions moves up."""
        tails = self._tails
        waiters = work.waiters
        if waiters is None:
            # Nothing queued behind: every id still points at this work.
            ids = work.ids
            if len(ids) == 1:  # a step: the hot path
                del tails[ids[0]]
            else:
                deque(map(tails.__delitem__, ids), maxlen=0)
            return
        for sid in work.ids:
            if tails.get(sid) is work:
                del tails[sid]
        work.waiters = None
        for nxt in waiters:
            nxt.blocked -= 1
            if nxt.blocked == 0:
                nxt.on_ready()

    async def exclusive(
        self, ids: list[str], fn: Callable[[], Any], owner: Batcher | None = None
    ) -> Any:
        """Run fn() on the loop once every earlier work on these sessions is finished. `owner`:
        the model version fn may create a session on (for routing checks of later work)."""
        if self._tails.keys().isdisjoint(ids):
            return fn()  # nothing ahead, and fn runs without yielding: no lane needed
        return await self.submit_exclusive(ids, fn, owner)

    def submit_exclusive(
        self, ids: list[str], fn: Callable[[], Any], owner: Batcher | None = None
    ) -> asyncio.Future[Any]:
        """`exclusive` without the await: fn takes its place in the lanes now, so work submitted
        after this call (even before the caller awaits) runs after fn."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        work = Control(self, ids, fn, fut, owner)
        if self.enter(work):
            work.on_ready()
        return fut
