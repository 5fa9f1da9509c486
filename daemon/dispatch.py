"""The dispatcher: runs the pure engine on each input and has the store carry it out.

Decisions are made one at a time against the in-memory state (fast, pure), then committed;
commits of concurrent webhooks are grouped by the store. The state only advances once its
decision is durable: if a commit fails, the state is reloaded from the store, so memory
never holds what the disk does not.

On a store several replicas share (PostgreSQL), decisions are made under the store's
cluster-wide lock, in batches: the replica holding it first catches its state up with
what the others committed since its version, then decides every input waiting for it and
writes them in the same transaction. Two webhooks for one fire at two replicas are thus
decided one after the other, on the same state. Between batches, notifications from the
database keep the state (and so the clock's deadlines) current.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
    evolve,
)
from daemon.decide.bodies import truncations
from daemon.errors import StandingAside, StoreError, StoreUnreachable
from daemon.metrics import Metrics
from daemon.store import Delta, SharedStore, Store, is_shared

log = logging.getLogger("firehouse.dispatch")
# Notifications with this many alerts are decided off the event loop (seconds for 10,000);
# smaller ones cost less than the hand-over to a thread.
BIG_WEBHOOK = 500
# A batch under the shared store's cluster-wide lock takes at most this many inputs, and
# takes no more once its deciding has lasted this long: the other replicas wait for the
# lock (10 s at most), and PostgreSQL ends a transaction idle for 30 s.
MAX_BATCH = 64
BATCH_SECONDS = 1.0
Step = Callable[[Config, State, datetime], Decision]


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (unless it was off already)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(slots=True)
class _Job:
    """An input waiting for the shared store's lock, and the caller waiting for it."""

    step: Step
    in_thread: bool
    alone: bool = False  # retried in a transaction of its own after its batch failed
    done: asyncio.Future[Decision] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


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
        # Shared store: the decision version the state is current to, and the inputs
        # waiting for the next batch.
        self.version = 0
        self._heard = 0  # the newest version a notification told of
        self._jobs: list[_Job] = []
        self._drainer: asyncio.Task[None] | None = None
        self._loaded = False  # catching up before the first load would read everything
        self._catching_up: asyncio.Task[None] | None = None
        # Why this replica decides nothing for now (daemon/cluster.py); None: it decides.
        self.refusal: str | None = None

    @property
    def retention_seconds(self) -> float:
        """How long resolved alerts are remembered, to recognise late duplicates."""
        return self.config.settings.resolved_retention_hours * 3600

    async def load(self) -> None:
        """Load the engine state from the store (at start, and after a failed commit)."""
        changes_seconds = self.config.settings.changes_window_hours * 3600
        if is_shared(self.store):
            state, self.version = await self.store.load_versioned(
                self.clock(), self.retention_seconds, changes_seconds=changes_seconds)
            self._live(state)
        else:
            self._live(await self.store.load_state(
                self.clock(), self.retention_seconds, changes_seconds=changes_seconds))
        self.metrics.incidents_open.set(len(self.state.open))
        self._loaded = True
        if self._heard > self.version:
            self.notified(self._heard)  # told of while loading

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
        self._keep_failing(None)

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
        self._keep_failing(None)  # over the new map's positions

    async def handle(self, webhook: Webhook) -> Decision:
        """Decide on a notification and return once the decision is durable."""
        return await self.run(lambda config, state, now: decide(webhook, config, state, now),
                              in_thread=len(webhook.alerts) >= BIG_WEBHOOK)

    async def run(self, step: Step, *, in_thread: bool = False) -> Decision:
        """Run one pure engine step (a webhook, a PagerDuty update, a clock tick, a change...)
        on the current state and return once its decision is durable.

        `in_thread`: decide on a worker thread, so that the event loop keeps answering
        (health checks, metrics) meanwhile. The lock still serialises decisions, and nothing
        changes the state while one is made: `advance` runs after it, under the lock.

        On a shared store the step waits for the cluster-wide lock, batched with the other
        inputs waiting for it (see `_drain`).
        """
        if self.refusal is not None:
            raise StandingAside(self.refusal)
        if is_shared(self.store):
            return await self._run_shared(self.store, step, in_thread)
        async with self._lock:
            decision = await self._decide(step, in_thread)
            if decision.changes_anything:
                # Advance now so the next webhook decides on top of this one; undone below
                # (by reloading) if the commit fails.
                self._advance(decision)
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

    async def _decide(self, step: Step, in_thread: bool) -> Decision:
        """One pure step on the current state, with the cyclic garbage collector paused.

        A big step allocates tens of thousands of records, dicts and event bodies, and the
        collector's passes over them (and over what the state holds) landed in the middle
        of it: in process (`python -m bench.engine`, 3 runs each), a 1,000-alert outage
        after the stream was decided and stored in 274-323 ms with the pause and 380-489 ms
        without; the steady stream is unchanged. What a step leaves is freed by reference
        counting, and the collector runs again as soon as the step is done."""
        now = self.clock()
        with collector_paused():
            if in_thread:
                return await asyncio.to_thread(step, self.config, self.state, now)
            return step(self.config, self.state, now)

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

    # -- a store several replicas share ----------------------------------------------------

    async def _run_shared(self, store: SharedStore, step: Step, in_thread: bool) -> Decision:
        job = _Job(step, in_thread)
        self._jobs.append(job)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(store), name="decisions")
        return await job.done

    async def _drain(self, store: SharedStore) -> None:
        """Decide and commit the waiting inputs, a batch per hold of the store's lock."""
        while self._jobs:
            if self._jobs[0].alone:
                jobs = [self._jobs.pop(0)]
            else:
                jobs, self._jobs = self._jobs[:MAX_BATCH], self._jobs[MAX_BATCH:]
            taken = list(jobs)
            async with self._lock:
                try:
                    decided = await self._decide_locked(store, jobs)
                    self._jobs[:0] = taken[len(jobs):]  # those its time left, first
                except Exception as exc:  # every waiting caller is answered; none is lost
                    self._stale = True
                    waiting = [job for job in taken if not job.done.done()]
                    if len(waiting) > 1 and not isinstance(exc, StoreUnreachable):
                        # One input the database refuses must not fail those that shared
                        # its transaction (nothing of it was committed): each is decided
                        # again, on the reloaded state, in a transaction of its own.
                        for job in waiting:
                            job.alone = True
                        self._jobs[:0] = waiting
                        continue
                    error = exc if isinstance(exc, StoreError) else StoreError(
                        f"could not decide and store: {exc!r}")
                    if not isinstance(exc, StoreError):
                        log.exception("unexpected error deciding under the shared lock")
                    for job in waiting:
                        job.done.set_exception(error)
                    continue
            for job, decision in decided:
                try:
                    if decision.changes_anything and (decision.events or decision.incidents):
                        self.on_commit(decision)
                    self._count(decision)
                except Exception:  # the decision is stored: its caller is answered anyway
                    log.exception("error after committing a decision")
                if not job.done.done():
                    job.done.set_result(decision)

    async def _decide_locked(self, store: SharedStore, jobs: list[_Job]
                             ) -> list[tuple[_Job, Decision]]:
        """One transaction under the cluster-wide lock: catch up, decide, write. A step that
        raises fails only its own caller."""
        if self._stale or self._refresh_wanted:
            await self.load()
            self._stale = self._refresh_wanted = False
        if self._heard > self.version:
            # Read most of what the others wrote before taking the lock, which every replica
            # waits for: under it, only what was committed since is left to read.
            try:
                self._catch_up(await store.delta(self.version))
            except StoreError as exc:
                log.debug("catching up before the lock failed (retried under it): %s", exc)
        decided: list[tuple[_Job, Decision]] = []
        async with store.exclusive() as txn:
            if txn.version != self.version:
                self._catch_up(await txn.delta(self.version))
            writes: list[Decision] = []
            started = time.monotonic()
            for index, job in enumerate(jobs):
                if index and time.monotonic() - started > BATCH_SECONDS:
                    del jobs[index:]  # left to the next batch (`_drain` puts them back)
                    break
                try:
                    decision = await self._decide(job.step, job.in_thread)
                except Exception as exc:
                    if not job.done.done():  # its caller may have gone
                        job.done.set_exception(exc)
                    continue
                if decision.changes_anything:
                    self._advance(decision)
                    writes.append(decision)
                decided.append((job, decision))
            if writes:
                self.version = await txn.write(writes)
        return decided

    def notified(self, version: int) -> None:
        """The shared store says a decision of `version` was committed (by any replica):
        catch up in the background unless the state is current already."""
        self._heard = max(self._heard, version)
        if version <= self.version or not is_shared(self.store) or not self._loaded:
            return
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._catch_up_now(self.store),
                                                    name="catch-up")

    async def _catch_up_now(self, store: SharedStore) -> None:
        async with self._lock:
            try:
                delta = await store.delta(self.version)
            except StoreError as exc:
                # The next decision catches up under the lock anyway.
                log.warning("could not catch up with other replicas: %s", exc)
                return
            if delta.version > self.version:
                self._catch_up(delta)

    def _catch_up(self, delta: Delta) -> None:
        """Apply what other replicas committed, so that the next decision and the clock
        see it; the incidents go to `on_commit` like this replica's own."""
        remote = Decision(incidents=delta.incidents, resolutions=delta.resolutions,
                          changes=delta.changes)
        self._advance(remote)
        self.version = delta.version
        self.metrics.incidents_open.set(len(self.state.open))
        if delta.incidents:
            self.on_commit(remote)

    def _advance(self, decision: Decision) -> None:
        """Apply a decision (this replica's, or what others committed) to the live state;
        changes are kept oldest first, as `load` reads them, each once."""
        # The services whose failing incident may change: the decision's incidents', before
        # and after.
        names = [name for incident in decision.incidents for name in incident.services]
        names += [name for incident in decision.incidents
                  if (before := self._open.get(incident.id)) is not None
                  for name in before.services]
        advance(self._open, self._by_fp, self._by_service, self._resolved, decision)
        self._keep_failing(names)
        if decision.changes:
            known = {c.id for c in self.state.changes}
            added = tuple(c for c in decision.changes if c.id not in known)
            if added:
                self.state = replace(self.state, changes=tuple(sorted(
                    self.state.changes + added,
                    key=lambda c: (c.at, c.received_at or c.at, c.id))))

    def _keep_failing(self, names: list[str] | None) -> None:
        """Keep `state.failing`, the failing services as a bitset over the map, in step with
        `by_service`: only `names` may have changed (None: any)."""
        graph = self.config.graph
        kept = self.state.failing
        if names is None or kept is None or kept[0] is not graph:
            mask = graph.mask(self._by_service)
        elif not names:
            return
        else:
            by_service = self._by_service
            failing = graph.mask(name for name in names if name in by_service) or 0
            mask = (kept[1] & ~(graph.mask(names) or 0)) | failing
        self.state = evolve(self.state, failing=None if mask is None else (graph, mask))

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
