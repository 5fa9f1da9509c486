"""The outbox worker, with a real SQLite store and the PagerDuty stand-in."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from daemon.config import Config
from daemon.decide import Decision, State, apply, decide
from daemon.metrics import Metrics
from daemon.outbox import Deliverer
from daemon.pagerduty import PagerDutyClient
from daemon.store import DEAD, DELIVERED, DRY_RUN, PENDING, StoredEvent
from daemon.store.sqlite import SqliteStore
from tests.helpers import (
    NOW,
    alert,
    make_config,
    resolved,
    routing_key,
    undamped,
    wait_until,
    webhook,
)
from tests.pagerduty_standin import PagerDutyStandIn


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    """A hand-moved clock starting at NOW."""
    return Clock(NOW)


def db_alert() -> dict[str, Any]:
    """A critical alert on the payments database: three pages and the business line's
    update (the tier-1 rule asks for business updates)."""
    return alert({"alertname": "PostgresDown", "service": "postgres-payments",
                  "severity": "critical"})


def open_and_resolve(config: Config) -> tuple[Decision, Decision]:
    """An incident opened with four pages, then resolved at once (no flap damping)."""
    config = undamped(config)
    opened = decide(webhook(db_alert()), config, State(), NOW)
    closed = decide(webhook(resolved(db_alert())), config, apply(State(), opened), NOW)
    assert [e.target for e in opened.events] == [
        "checkout-owner", "dba-oncall", "command-center", "business-line"]
    assert len(closed.events) == 4
    return opened, closed


def single(decision: Decision) -> Decision:
    """Only the first event of a decision, for tests about one event."""
    return Decision(events=decision.events[:1], now=decision.now)


def deliverer(store: SqliteStore, url: str, session: aiohttp.ClientSession,
              clock: Clock | None = None, max_delay: float = 0.05) -> Deliverer:
    """A worker with tiny backoff, on the real clock unless one is given."""
    client = PagerDutyClient(url, session, timeout=2.0)
    if clock is None:
        return Deliverer(store, client, Metrics(), base_delay=0.01, max_delay=max_delay)
    return Deliverer(store, client, Metrics(), clock=clock, base_delay=0.01,
                     max_delay=max_delay)


@asynccontextmanager
async def running(worker: Deliverer) -> AsyncIterator[Deliverer]:
    """The worker's run() loop as a background task, stopped on exit."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)


async def events(store: SqliteStore) -> list[StoredEvent]:
    """Every outbox row, oldest first."""
    return list(reversed(await store.list_events(None, 1000)))


async def all_in(store: SqliteStore, state: str) -> bool:
    """Whether every outbox row is in `state`."""
    return all(e.state == state for e in await events(store))


class TestDeliverer:
    async def test_delivers_pending_events_in_order_per_key(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Committed events reach PagerDuty valid, trigger before resolve, keys masked in logs."""
        caplog.set_level(logging.INFO, logger="firehouse.outbox")
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)

        async with running(deliverer(store, pd.url, session)):
            await wait_until(lambda: all_in(store, DELIVERED), what="all delivered")

        assert pd.invalid == []
        assert len(pd.events) == 8
        for event in opened.events:
            actions = [b["event_action"] for b in pd.events if b["dedup_key"] == event.dedup_key]
            assert actions == ["trigger", "resolve"]
            assert pd.state(event.routing_key, event.dedup_key) == "resolved"
            logged = [str(getattr(r, "fields", "")) for r in caplog.records]
            assert not any(event.routing_key in line for line in logged)
            assert any(f"****{event.routing_key[-4:]}" in line for line in logged)

    async def test_server_errors_are_retried_until_delivered(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, clock: Clock,
    ) -> None:
        """An event answered 500 twice is retried after a backoff and then delivered."""
        await store.commit(single(decide(webhook(db_alert()), config, State(), NOW)))
        worker = deliverer(store, pd.url, session, clock)
        pd.set_mode(500, count=2)

        for _ in range(3):
            assert await worker.deliver_due() == 1
            assert await worker.deliver_due() == 0  # not due again before its backoff
            clock.advance(1.0)

        (event,) = await events(store)
        assert (event.state, event.attempts) == (DELIVERED, 3)
        assert [r.status for r in pd.received] == [500, 500, 202]

    async def test_rate_limit_waits_for_retry_after(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, clock: Clock,
    ) -> None:
        """After a 429 with Retry-After: 30 the event waits 30 s, longer than its own backoff."""
        await store.commit(single(decide(webhook(db_alert()), config, State(), NOW)))
        worker = deliverer(store, pd.url, session, clock, max_delay=300)
        pd.set_mode(429, count=1, retry_after=30)

        assert await worker.deliver_due() == 1
        (event,) = await events(store)
        assert event.state == PENDING
        assert event.next_attempt_at >= NOW + timedelta(seconds=30)
        assert event.last_error.startswith("rate_limited")
        clock.advance(29)
        assert await worker.deliver_due() == 0
        clock.advance(1.5)
        assert await worker.deliver_due() == 1

        assert [r.status for r in pd.received] == [429, 202]

    async def test_rejected_event_goes_to_the_dead_letter(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, clock: Clock,
    ) -> None:
        """An event PagerDuty rejects with 400 is dead with PagerDuty's message, never retried."""
        opened = single(decide(webhook(db_alert()), config, State(), NOW))
        (good,) = opened.events
        payload = {**good.body["payload"], "severity": "catastrophic"}
        invalid = dataclasses.replace(good, body={**good.body, "payload": payload})
        await store.commit(Decision(events=(invalid,), now=NOW))
        worker = deliverer(store, pd.url, session, clock)

        assert await worker.deliver_due() == 1
        clock.advance(3600)
        assert await worker.deliver_due() == 0

        (event,) = await events(store)
        assert event.state == DEAD
        assert "Event object is invalid" in event.last_error
        assert "payload.severity" in event.last_error
        assert len(pd.received) == 1

    async def test_events_wait_for_pagerduty_to_come_back(
        self, store: SqliteStore, session: aiohttp.ClientSession, config: Config,
    ) -> None:
        """While PagerDuty refuses connections events stay pending, and go out once it is back."""
        async with PagerDutyStandIn() as gone:
            url, port = gone.url, int(gone.url.rsplit(":", 1)[1])
        await store.commit(single(decide(webhook(db_alert()), config, State(), NOW)))

        async def retried() -> bool:
            (event,) = await events(store)
            return event.attempts >= 2

        async with running(deliverer(store, url, session, max_delay=0.1)):
            await wait_until(retried, what="two failed attempts")
            (event,) = await events(store)
            assert event.state == PENDING
            assert event.last_error.startswith("connection_error")
            async with PagerDutyStandIn(port=port) as back:
                await wait_until(lambda: all_in(store, DELIVERED), what="delivery")
                assert [b["dedup_key"] for b in back.events] == [event.dedup_key]

    async def test_dry_run_events_are_logged_never_sent(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """In dry-run, events are logged with the key masked, marked dry_run and never sent."""
        caplog.set_level(logging.INFO, logger="firehouse.outbox")
        dry = make_config(dry_run=True)
        decision = decide(webhook(db_alert()), dry, State(), NOW)
        await store.commit(decision)

        assert await deliverer(store, pd.url, session).deliver_due() == 4

        assert await all_in(store, DRY_RUN)
        assert pd.received == []
        dry_runs = [r for r in caplog.records if r.getMessage() == "dry-run"]
        assert len(dry_runs) == 4
        assert all(r.fields["routing_key"] == "(none)" for r in dry_runs)
        assert {r.fields["target"] for r in dry_runs} == {
            "dba-oncall", "command-center", "checkout-owner", "business-line"}
        assert routing_key("dba-oncall") not in caplog.text

    async def test_resolve_waits_for_a_trigger_being_retried(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, clock: Clock,
    ) -> None:
        """A resolve is never sent before its trigger is delivered, even while that is retried."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        worker = deliverer(store, pd.url, session, clock)
        pd.set_mode(503, count=4)

        assert await worker.deliver_due() == 4  # the four triggers, all refused
        assert await worker.deliver_due() == 0  # the resolves are due but held back
        assert all(r.body is not None and r.body["event_action"] == "trigger"
                   for r in pd.received)
        clock.advance(1.0)
        while await worker.deliver_due():
            clock.advance(1.0)

        assert await all_in(store, DELIVERED)
        for event in opened.events:
            sent = [(r.body["event_action"], r.status) for r in pd.received
                    if r.body is not None and r.body["dedup_key"] == event.dedup_key]
            assert sent == [("trigger", 503), ("trigger", 202), ("resolve", 202)]
            assert pd.state(event.routing_key, event.dedup_key) == "resolved"

    async def test_stop_during_a_batch_ends_the_worker_at_once(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A stop() that arrives while a batch is read ends run() without the idle wait."""
        worker = deliverer(store, pd.url, session)
        read = store.due_events

        async def read_then_stop(now: datetime, limit: int) -> list[StoredEvent]:
            found = await read(now, limit)
            worker.stop()
            return found

        monkeypatch.setattr(store, "due_events", read_then_stop)

        await asyncio.wait_for(worker.run(), timeout=5)  # the idle wait would be 60 s


class TestHousekeeper:
    async def test_overdue_events_are_counted_and_logged_once(
        self, store: SqliteStore, config: Config, clock: Clock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An event pending past the overdue age is counted and logged once, still pending."""
        from daemon.outbox import Housekeeper  # noqa: PLC0415

        caplog.set_level(logging.WARNING, logger="firehouse.outbox")
        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        metrics = Metrics()
        keeper = Housekeeper(store, metrics, lambda: config.settings, clock=clock)

        await keeper.check()
        assert metrics.outbox_overdue._value.get() == 0
        clock.advance(config.settings.overdue_after + 1)
        await keeper.check()
        await keeper.check()

        assert metrics.outbox_overdue._value.get() == 4
        logged = [r for r in caplog.records if r.getMessage().startswith("overdue")]
        assert len(logged) == 4
        assert {r.fields["target"] for r in logged} == {e.target for e in opened.events}
        assert await all_in(store, PENDING)

    async def test_delivered_rows_are_cleaned_up_after_retention_dead_ones_stay(
        self, store: SqliteStore, config: Config, clock: Clock,
    ) -> None:
        """Delivered rows go after the retention; dead letters and pending rows stay."""
        from daemon.outbox import Housekeeper  # noqa: PLC0415

        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        first, second, third, fourth = await events(store)
        await store.mark_delivered(first.id, clock(), DELIVERED, 202)
        await store.mark_dead(second.id, clock(), 400, "client_error: bad")
        keeper = Housekeeper(store, Metrics(), lambda: config.settings, clock=clock)

        await keeper.check()
        assert len(await events(store)) == 4
        clock.advance(config.settings.delivered_retention_hours * 3600 + 1)
        await keeper.check()

        assert [(e.id, e.state) for e in await events(store)] == [
            (second.id, DEAD), (third.id, PENDING), (fourth.id, PENDING)]


class TestRetryAfter:
    def test_seconds_and_http_dates(self) -> None:
        """Retry-After is read as seconds or as an HTTP date; anything else is ignored."""
        from email.utils import format_datetime  # noqa: PLC0415

        from daemon.pagerduty import _retry_after  # noqa: PLC0415

        later = datetime.now(tz=NOW.tzinfo) + timedelta(seconds=60)
        assert _retry_after({"Retry-After": "7"}) == 7.0
        date = _retry_after({"Retry-After": format_datetime(later, usegmt=True)})
        assert date is not None
        assert 50 < date <= 60
        assert _retry_after({"Retry-After": "soon"}) is None
        assert _retry_after({}) is None
