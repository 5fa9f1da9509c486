"""The outbox worker: delivers stored events to PagerDuty, at least once, in order per key.

2xx is done. 429, 5xx, timeouts and connection errors are retried with exponential backoff
and jitter (honouring Retry-After), without limit. Any other 4xx is a permanent failure kept
as a dead letter with PagerDuty's message, noted on its incident's timeline in the same
transaction, until `POST /api/v1/outbox/{id}/retry`. Events whose routing key is empty are
dry-run: logged and marked, never sent.

Up to `concurrency` events are in flight at once, never two of one dedup key; a freed slot
is refilled at once, and the outcomes that came in meanwhile are recorded in one
transaction. Each routing key has a budget (`pagerduty.rate_limit_per_minute`, a token
bucket): an event whose key has spent it stays pending, unattempted, while other keys'
events flow; a 429 pauses its whole key. An event is marked delivered only after PagerDuty
answered 2xx; a crash in between sends it again, and PagerDuty deduplicates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter

from daemon.config import Settings, mask
from daemon.metrics import Metrics
from daemon.pagerduty import OK, RATE_LIMITED, PagerDutyClient, SendResult
from daemon.store import DEAD, DELIVERED, DRY_RUN, PENDING, Attempt, Store, StoredEvent

log = logging.getLogger("firehouse.outbox")

Clock = Callable[[], datetime]
# Why a routing key holds its events back (SHAPED_REASONS, a metric label).
BUDGET = "budget"
PAUSED = "rate_limited"
IDLE_WAIT = 60.0


def utcnow() -> datetime:
    """The current time in UTC (the only clock the workers read)."""
    return datetime.now(UTC)


async def every(interval: Callable[[], float], round_: Callable[[], Awaitable[object]],
                stop: asyncio.Event, failed: Callable[[], None]) -> None:
    """The loop of a periodic worker: a round every `interval()` seconds (asked each time: a
    reload may change it) until `stop` is set. A round that raises is reported by `failed`,
    called inside the handler so that it may log the exception, and the loop goes on."""
    while not stop.is_set():
        try:
            await round_()
        except asyncio.CancelledError:
            raise
        except Exception:
            failed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval())


def backoff(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempts + 1`: exponential, capped, jittered by half."""
    ceiling = min(cap, base * (2 ** min(attempts, 30)))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    paused_until: float = 0.0
    holding: str = ""  # why the key holds its events back (counted once per hold), or ""


class Shaper:
    """Token buckets per routing key: at most `per_minute()` events a minute each, in bursts
    of up to that many; a key PagerDuty answered 429 waits until `pause` says. Counts each
    hold in `shaped`, by reason."""

    def __init__(self, per_minute: Callable[[], int], shaped: Counter) -> None:
        self.per_minute = per_minute
        self.shaped = shaped
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str, now: float) -> _Bucket:
        """`key`'s bucket, refilled up to now (the limit is read afresh: a reload may change
        it)."""
        limit = self.per_minute()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(limit), now)
        bucket.tokens = min(float(limit), bucket.tokens + max(0.0, now - bucket.at) * limit / 60)
        bucket.at = now
        return bucket

    def _hold(self, bucket: _Bucket, reason: str) -> None:
        if bucket.holding != reason:
            bucket.holding = reason
            self.shaped.labels(reason).inc()

    def take(self, key: str, now: datetime) -> bool:
        """Spend one event of `key`'s budget; False if it has none left or is paused."""
        bucket = self._bucket(key, now.timestamp())
        if bucket.paused_until > bucket.at:
            self._hold(bucket, PAUSED)
            return False
        if self.per_minute() > 0:
            if bucket.tokens < 1:
                self._hold(bucket, BUDGET)
                return False
            bucket.tokens -= 1
        bucket.holding = ""
        return True

    def pause(self, key: str, now: datetime, until: datetime) -> None:
        """Hold `key` back until `until` (PagerDuty answered 429)."""
        bucket = self._bucket(key, now.timestamp())
        bucket.paused_until = max(bucket.paused_until, until.timestamp())
        self._hold(bucket, PAUSED)

    def held(self, now: datetime) -> dict[str, float]:
        """The routing keys that may not send now, each with when it may (a timestamp);
        forgets the keys whose budget is whole again."""
        at = now.timestamp()
        limit = self.per_minute()
        held: dict[str, float] = {}
        for key in list(self._buckets):
            bucket = self._bucket(key, at)
            ready = bucket.paused_until
            if limit > 0 and bucket.tokens < 1:
                ready = max(ready, at + (1 - bucket.tokens) * 60 / limit)
            if ready > at:
                held[key] = ready
            elif bucket.tokens >= limit:
                del self._buckets[key]
        return held


class Deliverer:
    """Background worker that empties the outbox into PagerDuty."""

    def __init__(
        self,
        store: Store,
        client: PagerDutyClient,
        metrics: Metrics,
        *,
        clock: Clock = utcnow,
        concurrency: int = 32,
        rate_limit: Callable[[], int] = lambda: 0,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        rng: random.Random | None = None,
        ready_for: float | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.concurrency = concurrency
        self.shaper = Shaper(rate_limit, metrics.outbox_shaped)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wake = asyncio.Event()
        self._stopping = False
        # Events read, sends in flight, outcomes not yet recorded; their dedup keys are held:
        # the next event of a key waits until the one before it is recorded.
        self._sending: dict[asyncio.Task[Attempt], StoredEvent] = {}
        self._ready: deque[StoredEvent] = deque()  # read, due, not started yet
        # How long read events may wait to be started (None: as long as it takes). On a
        # store several replicas share, reading leases them: an event must be sent before
        # its lease runs out, or another replica may send it too; past this, read again.
        self.ready_for = ready_for
        self._read_at = clock()
        self._done: list[tuple[StoredEvent, Attempt]] = []
        self._held_keys: set[str] = set()
        # Labelled children looked up once: `labels()` costs a lock and a tuple per event.
        self._sent: dict[tuple[str, str], Counter] = {}
        # Set while this replica stands aside (daemon/cluster.py): it starts no send, and
        # lets the events it read go, for the replicas that page for real.
        self.standing_aside = False

    def wake(self) -> None:
        """Tell the worker that new events were committed."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the worker to finish the sends in flight, record them and return."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; store errors are logged and retried, never fatal."""
        failures = 0
        try:
            while not self._stopping:
                try:
                    await self._start_due()
                    await self._wait()
                    await self._record_done()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Typically the store (disk full): back off, or events that were sent but
                    # could not be recorded would be sent again every second.
                    failures += 1
                    delay = min(30.0, 2.0 ** (failures - 1))
                    log.exception("outbox worker error; retrying in %.0fs", delay)
                    self._forget_ready()  # read afresh after the pause
                    await asyncio.sleep(delay)
            await self._finish()
        finally:
            self._forget_ready()
            for task in self._sending:
                # Cancelled mid-send: those events stay pending and go out after a restart.
                task.cancel()

    def _forget_ready(self) -> None:
        """Let go of the events read but not started: they stay pending, read again later."""
        self._held_keys.difference_update(e.dedup_key for e in self._ready)
        self._ready.clear()

    async def deliver_due(self) -> int:
        """One round: send what is due (within the limit in flight and the budgets), wait
        for every answer and record them; returns how many were attempted."""
        started = await self._start_due()
        await self._finish()
        return started

    async def _finish(self) -> None:
        """Wait for every send in flight, then record all outcomes."""
        while self._sending:
            await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
            self._collect()
        await self._record_done()

    async def _start_due(self) -> int:
        """Start sending due events into the free slots; returns how many were started.

        Due events are read `concurrency` at a time, most urgent first, and kept until a
        slot frees: a freed slot is refilled without a query (each query walks past the
        resolves waiting behind their triggers)."""
        started = 0
        read_again = not self._stopping
        now = self.clock()
        if self.standing_aside:
            self._forget_ready()
            return 0
        if self._ready and self.ready_for is not None \
                and (now - self._read_at).total_seconds() > self.ready_for:
            self._forget_ready()
        while not self._stopping and len(self._sending) < self.concurrency:
            if not self._ready:
                if not read_again:
                    break
                read_again = False
                # Cleared before reading: a commit after the read wakes the next wait.
                self._wake.clear()
                self._read_at = now
                held = self.shaper.held(now)
                self.metrics.outbox_shaped_keys.set(len(held))
                self._ready.extend(await self.store.due_events(
                    now, self.concurrency, skip_routing_keys=held,
                    skip_dedup_keys=self._held_keys))
                self._held_keys.update(e.dedup_key for e in self._ready)
                continue
            event = self._ready.popleft()
            if event.routing_key and not self.shaper.take(event.routing_key, now):
                # It waits, still pending and unattempted; the next read skips its key, so
                # that other keys' events fill the slots.
                self._held_keys.discard(event.dedup_key)
                read_again = True
                continue
            self._sending[asyncio.create_task(self._attempt(event))] = event
            started += 1
        return started

    async def _wait(self) -> None:
        """Until a send ends, events are committed, or the next event is due."""
        if self._done:
            return
        waiters: set[asyncio.Future[Any]] = set(self._sending)
        timeout = None
        wake = None
        if len(self._sending) < self.concurrency:
            # A free slot: also wake for new events, a retry falling due, or a budget refill.
            timeout = await self._idle_timeout()
            wake = asyncio.ensure_future(self._wake.wait())
            waiters.add(wake)
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if wake is not None:
                wake.cancel()
        self._collect()

    async def _idle_timeout(self) -> float:
        if self.standing_aside:
            return IDLE_WAIT  # until woken: nothing is sent meanwhile
        now = self.clock()
        held = self.shaper.held(now)
        next_at = await self.store.next_attempt_at(skip_routing_keys=held,
                                                   skip_dedup_keys=self._held_keys)
        timeout = IDLE_WAIT
        if next_at is not None:
            timeout = min(timeout, (next_at - now).total_seconds())
        if held:
            timeout = min(timeout, min(held.values()) - now.timestamp())
        return max(0.0, timeout)

    def _collect(self) -> None:
        """Move finished sends to the outcomes to record; a send that failed (a bug) frees
        its key, its event still pending."""
        for task in [t for t in self._sending if t.done()]:
            event = self._sending.pop(task)
            if task.cancelled():
                self._held_keys.discard(event.dedup_key)
                continue
            error = task.exception()
            if error is not None:
                log.error("could not deliver", exc_info=error, extra={"fields": fields(event)})
                self._held_keys.discard(event.dedup_key)
                continue
            self._done.append((event, task.result()))

    async def _record_done(self) -> None:
        """Record every outcome that came in, in one transaction, then free their keys."""
        done, self._done = self._done, []
        if not done:
            return
        try:
            await self.store.record([attempt for _, attempt in done])
        except Exception:
            # Still pending on disk: sent again later (PagerDuty deduplicates).
            log.exception("could not record %d delivery outcome(s)", len(done))
            raise
        finally:
            for event, _ in done:
                self._held_keys.discard(event.dedup_key)

    async def _attempt(self, event: StoredEvent) -> Attempt:
        """Send one event (or log it, in dry-run) and say how to record the outcome."""
        if not event.routing_key:
            if log.isEnabledFor(logging.INFO):
                log.info("dry-run", extra={"fields": fields(event)})
            self.metrics.events_dry_run.inc()
            return Attempt(event.id, DRY_RUN, self.clock(), 0)
        started = time.perf_counter()
        result = await self.client.send(event.routing_key, event.body,
                                        change=event.action == "change")
        self.metrics.delivery_seconds.observe(time.perf_counter() - started)
        sent = self._sent.get((event.action, result.outcome))
        if sent is None:
            sent = self._sent[event.action, result.outcome] = self.metrics.events_sent.labels(
                event.action, result.outcome)
        sent.inc()
        return self._outcome(event, result)

    def _outcome(self, event: StoredEvent, result: SendResult) -> Attempt:
        now = self.clock()
        if result.outcome == OK:
            # One line per page, built only when INFO is on; retries and dead letters below
            # are always logged, with the summary.
            if log.isEnabledFor(logging.INFO):
                log.info("sent", extra={"fields": {**fields(event), "status": result.status}})
            return Attempt(event.id, DELIVERED, now, result.status)
        error = f"{result.outcome}: {result.message}"
        if result.retryable:
            delay = backoff(event.attempts, self.base_delay, self.max_delay, self.rng)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, self.max_delay))
            retry_at = now + timedelta(seconds=delay)
            if result.outcome == RATE_LIMITED:
                # PagerDuty's limit is per integration key: the key's other events wait too.
                self.shaper.pause(event.routing_key, now, retry_at)
            log.warning("retry", extra={"fields": {
                **fields(event), "in": f"{delay:.1f}s", "outcome": result.outcome,
                "status": result.status, "error": result.message}})
            return Attempt(event.id, PENDING, retry_at, result.status, error)
        log.error("dead letter", extra={"fields": {
            **fields(event), "outcome": result.outcome, "status": result.status,
            "error": result.message}})
        return Attempt(event.id, DEAD, now, result.status, error, note=dead_note(event, result))


def dead_note(event: StoredEvent, result: SendResult) -> str:
    """The timeline note of a dead letter: who was not paged, and PagerDuty's reason."""
    what = {"trigger": "the page", "resolve": "the resolve"}.get(event.action,
                                                                  f"the {event.action} event")
    return (f"PagerDuty refused {what} to {event.target} (HTTP {result.status}, "
            f"{result.outcome}): {result.message or 'no message'}; not retried: fix the "
            f"cause, then POST /api/v1/outbox/{event.id}/retry")


def fields(event: StoredEvent) -> dict[str, object]:
    """An event's log fields: the routing key masked; untrusted text is escaped by the
    logfmt formatter, never interpreted."""
    found: dict[str, object] = {
        "action": event.action,
        "target": event.target,
        "routing_key": mask(event.routing_key),
        "dedup_key": event.dedup_key,
        "incident": event.incident_id,
    }
    payload = event.body.get("payload")
    if isinstance(payload, dict) and payload:
        found["severity"] = payload.get("severity")
        found["summary"] = payload.get("summary", "")
    return found


class Housekeeper:
    """Reports events that are overdue (still retried) and deletes what is past keeping."""

    def __init__(self, store: Store, metrics: Metrics, settings: Callable[[], Settings], *,
                 clock: Clock = utcnow, interval: float = 30.0,
                 after_cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        self.after_cleanup = after_cleanup
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self._reported: set[int] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to return."""
        self._stop.set()

    async def run(self) -> None:
        """Check every `interval` seconds until stopped; errors are logged, never fatal."""
        await every(lambda: self.interval, self.check, self._stop, lambda: log.exception(
            "outbox housekeeping failed; trying again later"))

    async def check(self) -> None:
        """One round: count and log overdue events, then delete what is past keeping."""
        settings = self.settings()
        now = self.clock()
        overdue = await self.store.overdue_events(
            now - timedelta(seconds=settings.overdue_after), 1000)
        self.metrics.outbox_overdue.set(len(overdue))
        for event in overdue:
            if event.id not in self._reported:
                log.warning("overdue: not delivered yet, still retrying", extra={"fields": {
                    **fields(event), "age": f"{(now - event.created_at).total_seconds():.0f}s",
                    "attempts": event.attempts, "error": event.last_error}})
        self._reported = {event.id for event in overdue}
        removed = await self.store.cleanup(
            now - timedelta(hours=settings.delivered_retention_hours),
            now - timedelta(hours=settings.resolved_retention_hours))
        if removed:
            log.info("cleaned up", extra={"fields": {"rows": removed}})
            if self.after_cleanup is not None:
                await self.after_cleanup()
