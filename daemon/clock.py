"""The clock worker: wakes at the next deadline and feeds `now` to the engine's `tick`.

Deadlines live on the incidents in the store, so they survive restarts; each fires once
because the engine records it as fired in the same decision that pages. The worker sleeps
until the earliest deadline, or until a commit or a reload may have brought an earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from daemon.decide import next_deadline, tick
from daemon.dispatch import Dispatcher
from daemon.errors import StoreError
from daemon.metrics import Metrics

log = logging.getLogger("firehouse.clock")

# Never sleep longer than this: a safety net against a missed wake-up.
MAX_SLEEP = 60.0
# After a failed tick (the store refused the decision), try again this soon.
RETRY_AFTER = 5.0


class Timekeeper:
    """Runs the engine's clock: escalations on missed deadlines, damped resolutions,
    business updates."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics,
                 clock: Callable[[], datetime]) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.clock = clock
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def wake(self) -> None:
        """Look at the deadlines again (after a commit or a reload)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to return."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Tick whenever a deadline is due; errors are logged, never fatal."""
        while not self._stop.is_set():
            delay = MAX_SLEEP
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.error("clock: could not store the decision (%s); retrying", exc)  # noqa: TRY400
                delay = RETRY_AFTER
            except Exception:
                log.exception("clock: tick failed; retrying")
                delay = RETRY_AFTER
            if self._stop.is_set():
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.0))

    async def step(self) -> float:
        """Tick if something is due; how long to sleep until the next deadline."""
        due = next_deadline(self.dispatcher.config, self.dispatcher.state)
        if due is not None and due <= self.clock():
            decision = await self.dispatcher.run(tick)
            if decision.timeline:
                self.metrics.clock_ticks.inc()
                for note in decision.timeline:
                    log.info("clock: %s", note.message,
                             extra={"fields": {"incident": note.incident_id,
                                               "kind": note.kind}})
            due = next_deadline(self.dispatcher.config, self.dispatcher.state)
            if due is not None and due <= self.clock():
                log.error("clock: a deadline at %s is still due after a tick", due.isoformat())
                return RETRY_AFTER
        if due is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, (due - self.clock()).total_seconds())
