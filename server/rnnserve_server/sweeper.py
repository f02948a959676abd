"""Background housekeeping of the session stores, one asyncio task per service.

Each sweep evicts idle sessions (idle TTL: one vectorised pass per store, last_active < now - ttl;
sessions with queued or running work are skipped, whatever their age), then shrinks the arena of
every store that a burst left mostly empty (`SessionStore.shrink`), at a moment when its model
has no batch in flight, so no slot is referenced by a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from rnnserve_server.config import SessionSettings
from rnnserve_server.lanes import SessionLanes

if TYPE_CHECKING:
    from rnnserve_server.service import LoadedModel

log = logging.getLogger("rnnserve.sweeper")


class Sweeper:
    def __init__(
        self, models: list[LoadedModel], lanes: SessionLanes, settings: SessionSettings
    ) -> None:
        self._models = models
        self._lanes = lanes
        self._ttl = settings.idle_ttl_s
        self._interval = settings.sweep_interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="session sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.sweep()
                self.shrink()
            except Exception:  # keep sweeping; a failure here must not stop eviction for good
                log.exception("session sweep failed")

    def shrink(self) -> int:
        """Shrink every mostly empty arena whose model has no run in flight; returns how many
        arenas shrank."""
        return sum(
            1 for m in self._models if m.batcher.runs_in_flight == 0 and m.store.shrink() > 0
        )

    def sweep(self) -> int:
        """Evict every session idle for longer than the TTL; returns how many."""
        if self._ttl <= 0:
            return 0
        now = time.time()
        cutoff = now - self._ttl
        busy = self._lanes.busy
        total = 0
        for m in self._models:
            store = m.store
            slots = store.idle_slots(cutoff)
            if slots.size == 0:
                continue
            if len(self._lanes):
                ids = store.ids[slots].tolist()
                slots = np.asarray(
                    [s for s, sid in zip(slots.tolist(), ids, strict=True) if not busy(sid)],
                    np.int64,
                )
            gone = store.remove(slots, "ttl", now)
            total += len(gone)
            if gone:
                log.info(
                    "evicted %d sessions idle for more than %.0f s",
                    len(gone),
                    self._ttl,
                    extra={"model": m.name, "session_id": gone[0]},
                )
        return total
