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
from daemon.decide import (
    RESOLVE,
    TRIGGER,
    Decision,
    OutboundEvent,
    State,
    apply,
    decide,
    trigger_priority,
)
from daemon.decide.model import RESOLVE_PRIORITY
from daemon.metrics import Metrics
from daemon.outbox import Deliverer, utcnow
from daemon.pagerduty import PagerDutyClient, SendResult
from daemon.store import (
    DEAD,
    DELIVERED,
    DELIVERY_FAILED,
    DRY_RUN,
    PENDING,
    Attempt,
    StoredEvent,
)
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
    """An incident opened with four pages, then resolved at once (no flap damping): the
    resolves of those four pages (the business line's last update left out)."""
    config = undamped(config)
    opened = decide(webhook(db_alert()), config, State(), NOW)
    closed = decide(webhook(resolved(db_alert())), config, apply(State(), opened), NOW)
    assert [e.target for e in opened.events] == [
        "checkout-owner", "dba-oncall", "command-center", "business-line"]
    pages = {e.dedup_key for e in opened.events}
    resolves = tuple(e for e in closed.events if e.dedup_key in pages)
    assert [e.action for e in resolves] == [RESOLVE] * 4
    return opened, dataclasses.replace(closed, events=resolves)


def single(decision: Decision) -> Decision:
    """Only the first event of a decision, for tests about one event."""
    return Decision(events=decision.events[:1], now=decision.now)


def deliverer(store: SqliteStore, url: str, session: aiohttp.ClientSession,
              clock: Clock | None = None, max_delay: float = 0.05, *, rate_limit: int = 0,
              concurrency: int = 32, client: PagerDutyClient | None = None) -> Deliverer:
    """A worker with tiny backoff, on the real clock unless one is given, sending at most
    `rate_limit` events a minute per routing key (0: no limit)."""
    client = client or PagerDutyClient(url, session, timeout=2.0)
    return Deliverer(store, client, Metrics(), clock=clock or utcnow, base_delay=0.01,
                     max_delay=max_delay, rate_limit=lambda: rate_limit,
                     concurrency=concurrency)


def page(name: str, severity: str, target: str = "dba-oncall") -> OutboundEvent:
    """A valid trigger of its own dedup key on `target`'s routing key."""
    key = f"test/{target}/{name}"
    body = {"event_action": TRIGGER, "dedup_key": key, "client": "Firehouse", "payload": {
        "summary": f"{severity} page {name}", "source": "test", "severity": severity}}
    return OutboundEvent("incident", target, routing_key(target), key, TRIGGER, body,
                         trigger_priority(severity))


def resolve_of(event: OutboundEvent) -> OutboundEvent:
    """The resolve of a page, as the engine makes it."""
    body = {"event_action": RESOLVE, "dedup_key": event.dedup_key}
    return dataclasses.replace(event, action=RESOLVE, body=body, priority=RESOLVE_PRIORITY)


async def commit(store: SqliteStore, *outbound: OutboundEvent) -> None:
    """Write events to the outbox as a decision would."""
    await store.commit(Decision(events=outbound, now=NOW))


async def drain(worker: Deliverer) -> int:
    """Run rounds until one attempts nothing (the clock standing still); how many were sent."""
    sent = 0
    while attempted := await worker.deliver_due():
        sent += attempted
    return sent


def sent_keys(pd: PagerDutyStandIn) -> list[tuple[str, str]]:
    """(action, dedup key) of every event PagerDuty accepted, in arrival order."""
    return [(b["event_action"], b["dedup_key"]) for b in pd.events]


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

    async def test_a_dead_letter_is_noted_on_its_incident_timeline(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        config: Config, clock: Clock,
    ) -> None:
        """A page PagerDuty refuses leaves a delivery_failed note on its incident naming
        the target, the status and PagerDuty's message, and how to send it again."""
        opened = decide(webhook(db_alert()), config, State(), NOW)
        good, *others = opened.events
        payload = {**good.body["payload"], "severity": "catastrophic"}
        invalid = dataclasses.replace(good, body={**good.body, "payload": payload})
        await store.commit(dataclasses.replace(opened, events=(invalid, *others)))
        worker = deliverer(store, pd.url, session, clock)

        await drain(worker)

        one = await store.get_incident(good.incident_id)
        assert one is not None
        (note,) = [n for n in one["timeline"] if n["kind"] == DELIVERY_FAILED]
        (dead,) = await store.list_events(DEAD, 10)
        assert note["message"].startswith(
            f"PagerDuty refused the page to {good.target} (HTTP 400, client_error): "
            "Event object is invalid")
        assert note["message"].endswith(f"POST /api/v1/outbox/{dead.id}/retry")
        assert {p["target"]: p["delivery"]["state"] for p in one["pages"]} == {
            good.target: DEAD, **{e.target: DELIVERED for e in others}}

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

        async def read_then_stop(now: datetime, limit: int, **skip: Any) -> list[StoredEvent]:
            found = await read(now, limit, **skip)
            worker.stop()
            return found

        monkeypatch.setattr(store, "due_events", read_then_stop)

        await asyncio.wait_for(worker.run(), timeout=5)  # the idle wait would be 60 s


class GatedClient(PagerDutyClient):
    """The real client, each send waiting for a pass from the test; notes what is in flight."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        super().__init__(url, session, timeout=2.0)
        self.passes = asyncio.Semaphore(0)
        self.in_flight: list[str] = []
        self.started = 0
        self.most = 0
        self.overlaps: list[str] = []

    async def send(self, routing_key: str, body: Any, *, change: bool = False) -> SendResult:
        """Wait for a pass, then send for real."""
        key = body["dedup_key"]
        if key in self.in_flight:
            self.overlaps.append(key)
        self.in_flight.append(key)
        self.started += 1
        self.most = max(self.most, len(self.in_flight))
        try:
            await self.passes.acquire()
            return await super().send(routing_key, body, change=change)
        finally:
            self.in_flight.remove(key)


class TestThroughput:
    async def test_sends_concurrently_one_per_dedup_key_refilling_freed_slots(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
    ) -> None:
        """Up to 32 sends are in flight, never two of one dedup key, and a slot that frees
        is refilled without waiting for the others; every resolve follows its trigger."""
        pages = [page(f"p{i}", "error") for i in range(40)]
        await commit(store, *pages)
        await commit(store, *(resolve_of(p) for p in pages[:10]))
        client = GatedClient(pd.url, session)
        worker = deliverer(store, pd.url, session, client=client)

        async with running(worker):
            async def full() -> bool:
                return len(client.in_flight) == 32

            await wait_until(full, what="32 sends in flight")
            assert len(set(client.in_flight)) == 32
            assert set(client.in_flight) <= {p.dedup_key for p in pages}
            client.passes.release()

            async def refilled() -> bool:
                return client.started == 33

            await wait_until(refilled, what="a 33rd send")  # 31 still waiting
            assert len(client.in_flight) == 32
            for _ in range(100):
                client.passes.release()
            await wait_until(lambda: all_in(store, DELIVERED), what="all delivered")

        assert (client.most, client.overlaps) == (32, [])
        assert len(pd.events) == 50
        order = sent_keys(pd)
        for event in pages[:10]:
            assert order.index((TRIGGER, event.dedup_key)) < order.index(
                (RESOLVE, event.dedup_key))

    @pytest.mark.parametrize("ready_for", [5.0, None])
    async def test_events_read_too_long_ago_are_read_again(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        clock: Clock, ready_for: float | None,
    ) -> None:
        """An event read but not started within `ready_for` (on a shared store: its lease
        less the send timeout, as reading leases it) is let go and read afresh before it
        is sent, never sent on a lease that may have run out; without it (one process), it
        waits for its slot as read."""
        first, second, third = page("a", "error"), page("b", "error"), page("c", "error")
        await commit(store, first)
        client = GatedClient(pd.url, session)
        worker = Deliverer(store, client, Metrics(), clock=clock, concurrency=2,
                           ready_for=ready_for)
        reads: list[list[str]] = []
        read = store.due_events

        async def counted(*args: Any, **kwargs: Any) -> list[Any]:
            found = await read(*args, **kwargs)
            reads.append([e.dedup_key for e in found])
            return found

        store.due_events = counted  # type: ignore[method-assign]
        assert await worker._start_due() == 1  # the first, held at the gate
        await commit(store, second, third)
        assert await worker._start_due() == 1  # the second; the third waits for a slot
        assert reads[-1] == [second.dedup_key, third.dedup_key]
        clock.advance(6)
        await worker._start_due()
        for _ in range(2):
            client.passes.release()
        await worker._finish()
        before = len(reads)

        assert await worker._start_due() == 1
        assert [e.dedup_key for e in worker._sending.values()] == [third.dedup_key]
        # (Reads that found nothing: the free slot looked for more.)
        again = [keys for keys in reads[before:] if keys]
        if ready_for is None:
            assert again == []  # started as read
        else:
            assert again == [[third.dedup_key]]  # read afresh first
        client.passes.release()
        await worker._finish()
        assert len(pd.events) == 3

    async def test_outcomes_are_recorded_in_one_transaction(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The outcomes of a round of sends are written with one call to the store."""
        calls: list[list[Attempt]] = []
        record = store.record

        async def spy(attempts: list[Attempt]) -> None:
            calls.append(list(attempts))
            await record(attempts)

        monkeypatch.setattr(store, "record", spy)
        await commit(store, *(page(f"p{i}", "error") for i in range(20)))
        pd.set_mode(500, count=3)

        assert await deliverer(store, pd.url, session).deliver_due() == 20

        assert [len(c) for c in calls] == [20]
        assert sorted(a.state for a in calls[0]) == [DELIVERED] * 17 + [PENDING] * 3
        rows = await events(store)
        assert sorted((e.state, e.attempts) for e in rows) == (
            [(DELIVERED, 1)] * 17 + [(PENDING, 1)] * 3)


class TestRateShaping:
    async def test_a_burst_beyond_the_budget_waits_most_urgent_first(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        """300 events on one routing key at 120 a minute: 120 go at once, the others wait
        pending and unattempted; resolves and critical triggers before warnings; none is
        refused."""
        earlier = [page(f"e{i}", "error") for i in range(50)]
        await commit(store, *earlier)
        worker = deliverer(store, pd.url, session, clock, rate_limit=120)
        assert await drain(worker) == 50
        clock.advance(60)  # the budget is whole again
        warnings = [page(f"w{i}", "warning") for i in range(150)]
        resolves = [resolve_of(e) for e in earlier]
        criticals = [page(f"c{i}", "critical") for i in range(100)]
        await commit(store, *warnings)
        await commit(store, *resolves)
        await commit(store, *criticals)

        assert await drain(worker) == 120
        assert set(sent_keys(pd)[50:]) == {(RESOLVE, e.dedup_key) for e in earlier} | {
            (TRIGGER, e.dedup_key) for e in criticals[:70]}
        waiting = [e for e in await events(store) if e.state != DELIVERED]
        assert len(waiting) == 180
        assert all((e.state, e.attempts, e.last_error) == (PENDING, 0, "") for e in waiting)
        assert worker.metrics.outbox_shaped.labels("budget")._value.get() == 1

        clock.advance(30)  # 60 more
        assert await drain(worker) == 60
        assert set(sent_keys(pd)[170:]) == {(TRIGGER, e.dedup_key) for e in criticals[70:]} | {
            (TRIGGER, e.dedup_key) for e in warnings[:30]}
        clock.advance(60)
        assert await drain(worker) == 120

        assert await all_in(store, DELIVERED)
        assert [r.status for r in pd.received] == [202] * 350
        assert pd.invalid == []

    async def test_another_routing_key_is_not_held_back(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        """While one routing key waits for its budget, a later, less urgent one's events go."""
        busy = [page(f"b{i}", "critical") for i in range(130)]
        other = [page(f"o{i}", "info", target="checkout-owner") for i in range(5)]
        await commit(store, *busy)
        await commit(store, *other)

        worker = deliverer(store, pd.url, session, clock, rate_limit=120)
        assert await drain(worker) == 125

        rows = {e.dedup_key: e for e in await events(store)}
        assert all(rows[e.dedup_key].state == DELIVERED for e in other)
        assert sum(rows[e.dedup_key].state == PENDING for e in busy) == 10
        assert worker.metrics.outbox_shaped_keys._value.get() == 1

    async def test_a_resolve_never_overtakes_its_trigger_waiting_for_budget(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        """A resolve ranks high, but waits behind its own trigger while that waits for budget."""
        first, second = page("c1", "critical"), page("c2", "critical")
        slow = page("w", "warning")
        await commit(store, first, second, slow)
        await commit(store, resolve_of(slow))
        worker = deliverer(store, pd.url, session, clock, rate_limit=2)

        assert await drain(worker) == 2
        clock.advance(30)  # one more event
        assert await drain(worker) == 1
        clock.advance(30)
        assert await drain(worker) == 1

        assert sent_keys(pd)[2:] == [(TRIGGER, slow.dedup_key), (RESOLVE, slow.dedup_key)]
        assert pd.state(slow.routing_key, slow.dedup_key) == "resolved"

    async def test_a_429_pauses_the_whole_routing_key(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        """After a 429 with Retry-After: 30, the key's other events wait too; others flow."""
        paused = [page(f"p{i}", "critical") for i in range(3)]
        other = page("o", "info", target="checkout-owner")
        await commit(store, *paused, other)
        worker = deliverer(store, pd.url, session, clock, max_delay=300, concurrency=1)
        pd.set_mode(429, count=1, retry_after=30)

        assert await worker.deliver_due() == 1
        assert await drain(worker) == 1
        rows = {e.dedup_key: e for e in await events(store)}
        assert rows[other.dedup_key].state == DELIVERED
        assert [(rows[e.dedup_key].state, rows[e.dedup_key].attempts) for e in paused] == [
            (PENDING, 1), (PENDING, 0), (PENDING, 0)]
        assert worker.metrics.outbox_shaped.labels("rate_limited")._value.get() == 1
        clock.advance(29)
        assert await worker.deliver_due() == 0
        clock.advance(1.5)
        assert await drain(worker) == 3

        assert [r.status for r in pd.received] == [429, 202, 202, 202, 202]
        assert await all_in(store, DELIVERED)

    async def test_run_sleeps_until_the_budget_refills(
        self, store: SqliteStore, pd: PagerDutyStandIn, session: aiohttp.ClientSession,
    ) -> None:
        """The run() loop sends the events held for budget once it refills, on its own."""
        await commit(store, *(page(f"p{i}", "error") for i in range(3)))
        worker = deliverer(store, pd.url, session, rate_limit=600)  # one each 0.1 s
        worker.shaper.take(routing_key("dba-oncall"), utcnow())
        for _ in range(599):
            worker.shaper.take(routing_key("dba-oncall"), utcnow())

        async with running(worker):
            await wait_until(lambda: all_in(store, DELIVERED), what="all delivered")

        assert len(pd.events) == 3
        assert worker.metrics.outbox_shaped.labels("budget")._value.get() >= 1


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
