"""The dispatcher: runs the pure engine on each input and has the store carry it out.

Decisions are made one at a time against the in-memory state (fast, pure), then committed;
commits of concurrent webhooks are grouped by the store. The state only advances once its
decision is durable: if a commit fails, the state is reloaded from the store, so memory
never holds what the disk does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

from daemon.alerts import Webhook
from daemon.config import Config
from daemon.decide import (
    BUSINESS_UPDATE,
    MERGED,
    OPEN,
    OPENED,
    RESOLVED,
    Decision,
    Incident,
    State,
    advance,
    decide,
)
from daemon.decide.bodies import truncations
from daemon.errors import StoreError
from daemon.metrics import Metrics
from daemon.store import Store

log = logging.getLogger("firehouse.dispatch")
# Notifications with this many alerts are decided off the event loop (seconds for 10,000);
# smaller ones cost less than the hand-over to a thread.
BIG_WEBHOOK = 500


class Dispatcher:
    """Serialises decisions, commits them, and wakes the outbox worker."""

    def __init__(self, store: Store, config: Config, metrics: Metrics,
                 clock: Callable[[], datetime], on_commit: Callable[[Decision], None]) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.on_commit = on_commit
        self.state = State()
        self._live(self.state)
        self._lock = asyncio.Lock()
        self._in_flight = 0
        self._stale = False
        self._refresh_wanted = False

    @property
    def retention_seconds(self) -> float:
        """How long resolved alerts are remembered, to recognise late duplicates."""
        return self.config.settings.resolved_retention_hours * 3600

    async def load(self) -> None:
        """Load the engine state from the store (at start, and after a failed commit)."""
        self._live(await self.store.load_state(
            self.clock(), self.retention_seconds,
            changes_seconds=self.config.settings.changes_window_hours * 3600))
        self.metrics.incidents_open.set(len(self.state.open))

    def _live(self, state: State) -> None:
        """Own the maps of `state`: decisions are applied to them in place (`advance`), so
        that one costs what it changed, not the size of the state. `self.state` is a
        read-only view of them, current under the lock."""
        self._open: dict[str, Incident] = dict(state.open)
        self._by_fp: dict[str, str] = dict(state.by_fingerprint)
        self._by_service: dict[str, str] = dict(state.by_service)
        self._resolved: dict[str, datetime | None] = dict(state.resolved)
        self.state = State(MappingProxyType(self._open), MappingProxyType(self._by_fp),
                           MappingProxyType(self._resolved), state.changes,
                           MappingProxyType(self._by_service))

    async def refresh(self) -> None:
        """Reload the state from the store, which forgets resolutions past their retention
        (memory stays bounded); deferred until no commit is in flight."""
        async with self._lock:
            if self._in_flight:
                self._refresh_wanted = True
                return
            await self.load()

    def swap_config(self, config: Config) -> None:
        """Activate a new, fully validated configuration for the next decisions."""
        self.config = config

    async def handle(self, webhook: Webhook) -> Decision:
        """Decide on a notification and return once the decision is durable."""
        return await self.run(lambda config, state, now: decide(webhook, config, state, now),
                              in_thread=len(webhook.alerts) >= BIG_WEBHOOK)

    async def run(self, step: Callable[[Config, State, datetime], Decision], *,
                  in_thread: bool = False) -> Decision:
        """Run one pure engine step (a webhook, a PagerDuty update, a clock tick, a change...)
        on the current state and return once its decision is durable.

        `in_thread`: decide on a worker thread, so that the event loop keeps answering
        (health checks, metrics) meanwhile. The lock still serialises decisions, and nothing
        changes the state while one is made: `advance` runs after it, under the lock.
        """
        async with self._lock:
            now = self.clock()
            if in_thread:
                decision = await asyncio.to_thread(step, self.config, self.state, now)
            else:
                decision = step(self.config, self.state, now)
            if decision.changes_anything:
                # Advance now so the next webhook decides on top of this one; undone below
                # (by reloading) if the commit fails.
                advance(self._open, self._by_fp, self._by_service, self._resolved, decision)
                if decision.changes:
                    self.state = replace(self.state,
                                         changes=self.state.changes + decision.changes)
                self._in_flight += 1
        if decision.changes_anything:
            try:
                await self.store.commit(decision)
            except StoreError:
                self._stale = True
                raise
            finally:
                await self._settle()
            if decision.events or decision.incidents:
                self.on_commit(decision)
        self._count(decision)
        return decision

    async def _settle(self) -> None:
        """After a commit: once none is in flight, replace a state that a failure spoiled.

        Reloading while other commits are in flight would forget their decisions, and the
        next repeat of their alerts would page again under new dedup keys.
        """
        async with self._lock:
            self._in_flight -= 1
            if self._in_flight or not (self._stale or self._refresh_wanted):
                return
            if self._stale:
                log.error("commit failed; reloading engine state from the store")
            self._refresh_wanted = False
            try:
                await self.load()
            except StoreError:
                log.exception("could not reload state; will retry after the next commit")
            else:
                self._stale = False

    def _count(self, decision: Decision) -> None:
        for incident in decision.incidents:
            if incident.status == OPEN and incident.opened_at == decision.now:
                self.metrics.incidents_opened.labels(str(incident.mapped).lower()).inc()
            elif incident.status == RESOLVED:
                self.metrics.incidents_resolved.inc()
            elif incident.status == MERGED:
                self.metrics.incidents_merged.inc()
            for page in incident.pages:
                if page.at == decision.now and page.reason not in (OPENED, BUSINESS_UPDATE):
                    self.metrics.escalations.labels(page.reason.replace(" ", "_")).inc()
        self.metrics.incidents_open.set(len(self.state.open))
        for event in decision.events:
            for what in truncations(event.body):
                self.metrics.events_truncated.labels(what).inc()
