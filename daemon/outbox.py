"""The outbox worker: delivers stored events to PagerDuty, at least once, in order per key.

2xx is done. 429, 5xx, timeouts and connection errors are retried with exponential backoff
and jitter (honouring Retry-After), without limit. Any other 4xx is a permanent failure kept
as a dead letter with PagerDuty's message. Events whose routing key is empty are dry-run:
logged and marked, never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from daemon.config import Settings, mask
from daemon.metrics import Metrics
from daemon.pagerduty import OK, PagerDutyClient, SendResult
from daemon.store import DELIVERED, DRY_RUN, Store, StoredEvent

log = logging.getLogger("firehouse.outbox")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time in UTC (the only clock the workers read)."""
    return datetime.now(UTC)


def backoff(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempts + 1`: exponential, capped, jittered by half."""
    ceiling = min(cap, base * (2 ** min(attempts, 30)))
    return rng.uniform(ceiling / 2, ceiling)


class Deliverer:
    """Background worker that empties the outbox into PagerDuty."""

    def __init__(
        self,
        store: Store,
        client: PagerDutyClient,
        metrics: Metrics,
        *,
        clock: Clock = utcnow,
        batch: int = 64,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Tell the worker that new events were committed."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the worker to finish its current batch and return."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; store errors are logged and retried, never fatal."""
        failures = 0
        while not self._stopping:
            try:
                delivered = await self.deliver_due()
                failures = 0
                if delivered:
                    continue
                await self._sleep_until_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Typically the store (disk full): back off, or a batch that was sent but
                # could not be recorded would be sent again every second.
                failures += 1
                delay = min(30.0, 2.0 ** (failures - 1))
                log.exception("outbox worker error; retrying in %.0fs", delay)
                await asyncio.sleep(delay)

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        if self._stopping:
            # stop() came during the last batch: its wake-up was just cleared.
            return
        next_at = await self.store.next_attempt_at()
        timeout = 60.0
        if next_at is not None:
            timeout = max(0.0, min(timeout, (next_at - self.clock()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def deliver_due(self) -> int:
        """Send one batch of due events concurrently; returns how many were attempted."""
        events = await self.store.due_events(self.clock(), self.batch)
        # Every attempt finishes before the next batch is read: an event still in flight
        # would otherwise be read again and sent twice, or overtaken by its own resolve.
        results = await asyncio.gather(*(self._deliver(e) for e in events),
                                       return_exceptions=True)
        failures: list[Exception] = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, Exception):
                log.error("could not deliver or record", exc_info=result,
                          extra={"fields": fields(event)})
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
        if failures:
            # Those events are still pending and due: let run() pause rather than resend.
            raise failures[0]
        return len(events)

    async def _deliver(self, event: StoredEvent) -> None:
        if not event.routing_key:
            log.info("dry-run", extra={"fields": fields(event)})
            self.metrics.events_dry_run.inc()
            await self.store.mark_delivered(event.id, self.clock(), DRY_RUN, 0)
            return
        started = time.perf_counter()
        result = await self.client.send(event.routing_key, event.body,
                                        change=event.action == "change")
        self.metrics.delivery_seconds.observe(time.perf_counter() - started)
        self.metrics.events_sent.labels(event.action, result.outcome).inc()
        await self._record(event, result)

    async def _record(self, event: StoredEvent, result: SendResult) -> None:
        now = self.clock()
        if result.outcome == OK:
            log.info("sent", extra={"fields": {**fields(event), "status": result.status}})
            await self.store.mark_delivered(event.id, now, DELIVERED, result.status)
        elif result.retryable:
            delay = backoff(event.attempts, self.base_delay, self.max_delay, self.rng)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, self.max_delay))
            log.warning("retry", extra={"fields": {
                **fields(event), "in": f"{delay:.1f}s", "outcome": result.outcome,
                "status": result.status, "error": result.message}})
            await self.store.mark_retry(event.id, now + timedelta(seconds=delay),
                                        result.status, f"{result.outcome}: {result.message}")
        else:
            log.error("dead letter", extra={"fields": {
                **fields(event), "outcome": result.outcome, "status": result.status,
                "error": result.message}})
            await self.store.mark_dead(event.id, now, result.status,
                                       f"{result.outcome}: {result.message}")


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
        while not self._stop.is_set():
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox housekeeping failed; trying again later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

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
