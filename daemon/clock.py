"""The clock worker: wakes at the next deadline and feeds `now` to the engine's `tick`.

Deadlines live on the incidents in the store, so they survive restarts; each fires once
because the engine records it as fired in the same decision that pages. The worker sleeps
until the earliest deadline it knows. A commit tells it the deadlines of the incidents it
changed (what the decision changed, not a scan of every open incident on the webhook
path); every open incident is scanned only when something fell due, on a reload, and
every MAX_SLEEP at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from daemon.decide import Incident, earliest_deadline, next_deadline, tick
from daemon.dispatch import Dispatcher
from daemon.errors import StandingAside, StoreError
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
        # The earliest deadline known, and whether every open incident must be looked at.
        self._next: datetime | None = None
        self._rescan = True

    def wake(self) -> None:
        """Look at every open incident's deadlines again (a reload, a clock moved by hand)."""
        self._rescan = True
        self._wake.set()

    def consider(self, incidents: Iterable[Incident]) -> None:
        """After a commit: wake earlier if the incidents it changed owe something earlier.
        A deadline that moved later (an acknowledgement) only makes a wake-up find nothing
        due, and rescan."""
        due = earliest_deadline(self.dispatcher.config, incidents)
        if due is not None and (self._next is None or due < self._next):
            self._next = due
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
            except StandingAside:
                delay = RETRY_AFTER  # the replicas that page keep the clock (cluster.py)
            except StoreError as exc:
                log.error("clock: could not store the decision (%s); retrying", exc)  # noqa: TRY400
                delay = RETRY_AFTER
            except Exception:
                log.exception("clock: tick failed; retrying")
                delay = RETRY_AFTER
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.0))
            except TimeoutError:
                # A deadline's time, or the safety net: look at everything.
                self._rescan = True

    async def step(self) -> float:
        """Tick if something is due; how long to sleep until the next deadline."""
        if self._rescan:
            self._rescan = False
            self._next = next_deadline(self.dispatcher.config, self.dispatcher.state)
        due = self._next
        if due is not None and due <= self.clock():
            decision = await self.dispatcher.run(tick)
            if decision.timeline:
                self.metrics.clock_ticks.inc()
                for note in decision.timeline:
                    log.info("clock: %s", note.message,
                             extra={"fields": {"incident": note.incident_id,
                                               "kind": note.kind}})
            due = self._next = next_deadline(self.dispatcher.config, self.dispatcher.state)
            if due is not None and due <= self.clock():
                log.error("clock: a deadline at %s is still due after a tick", due.isoformat())
                return RETRY_AFTER
        if due is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, (due - self.clock()).total_seconds())
