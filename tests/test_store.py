"""The stores, each test on both backends (see `backend` in conftest): SQLite on real
database files in a temporary directory, PostgreSQL in a fresh schema; the tests of the
SQLite file itself on SQLite only."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.decide import MERGED, RESOLVE, TRIGGER, Deadlines, Decision, State, apply, decide
from daemon.errors import OutboxConflict, StoreError
from daemon.store import (
    DEAD,
    DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_RETRIED,
    DRY_RUN,
    PENDING,
    Attempt,
    Store,
)
from daemon.store.sqlite import INCIDENT_EVENTS, SqliteStore
from tests.conftest import NewStore, sqlite_only
from tests.helpers import NOW, alert, resolved, routing_key, target_names, undamped, webhook

DAY = 24 * 3600.0


def db_alert(service: str = "postgres-payments", name: str = "PostgresDown",
             severity: str = "critical") -> dict[str, Any]:
    """A firing alert on a service of the example map."""
    return alert({"alertname": name, "service": service, "severity": severity})


def open_and_resolve(config: Config) -> tuple[Decision, Decision]:
    """Two decisions: an incident opened with three pages and the business line's update,
    then resolved (without flap damping), cut to the resolves of those four pages."""
    config = undamped(config)
    firing = db_alert()
    opened = decide(webhook(firing), config, State(), NOW)
    closed = decide(webhook(resolved(firing)), config, apply(State(), opened),
                    NOW + timedelta(minutes=5))
    assert [e.target for e in opened.events] == [
        "checkout-owner", "dba-oncall", "command-center", "business-line"]
    # Only the resolves of those four pages (not the business line's last update, which is
    # triggered at info and resolved in the same decision, its trigger first).
    pages = {e.dedup_key for e in opened.events}
    resolves = tuple(e for e in closed.events if e.dedup_key in pages)
    assert [e.action for e in resolves] == [RESOLVE] * 4
    final = f"firehouse/{opened.incidents[0].id}/business-line/update-2"
    last_word = [e for e in closed.events if e.dedup_key not in pages]
    assert [(e.action, e.dedup_key) for e in last_word] == [(TRIGGER, final), (RESOLVE, final)]
    assert last_word[0].body["payload"]["severity"] == "info"
    assert last_word[0].body["payload"]["summary"].startswith("Recovered:")
    return opened, dataclasses.replace(closed, events=resolves)


def unrelated_alerts(count: int) -> list[dict[str, Any]]:
    """Alerts on services no map knows: each opens its own incident."""
    return [db_alert(service=f"legacy-{n}", name=f"Alert{n}") for n in range(count)]


class TestCommitAndLoad:
    async def test_state_survives_a_restart(self, new_store: NewStore, config: Config) -> None:
        """What was committed is the engine state after close and reopen of the same file."""
        one, two = db_alert(), db_alert(service="cart", name="CartSlow", severity="warning")
        first = decide(webhook(one, two), config, State(), NOW)
        state = apply(State(), first)
        second = decide(webhook(resolved(two), one), config, state, NOW + timedelta(minutes=1))
        state = apply(state, second)
        before = new_store()
        await before.open()
        await before.commit(first)
        await before.commit(second)
        await before.close()

        after = new_store()
        await after.open()
        try:
            loaded = await after.load_state(NOW + timedelta(minutes=2), DAY)
        finally:
            await after.close()

        assert dict(loaded.open) == dict(state.open)
        assert dict(loaded.by_fingerprint) == dict(state.by_fingerprint)
        assert dict(loaded.resolved) == dict(state.resolved)
        repeat = decide(webhook(one), config, loaded, NOW + timedelta(minutes=3))
        assert repeat.events == ()

    async def test_resolutions_older_than_retention_are_not_loaded(
        self, store: Store, config: Config
    ) -> None:
        """A resolution is forgotten by the engine once it is older than the retention."""
        await store.commit(decide(webhook(resolved(db_alert())), config, State(), NOW))

        assert len((await store.load_state(NOW + timedelta(hours=1), DAY)).resolved) == 1
        assert (await store.load_state(NOW + timedelta(days=2), DAY)).resolved == {}

    async def test_concurrent_commits_share_transactions(
        self, store: Store, config: Config
    ) -> None:
        """Many decisions committed concurrently are all stored, in fewer transactions."""
        decisions = []
        state = State()
        for item in unrelated_alerts(50):
            decision = decide(webhook(item), config, state, NOW)
            state = apply(state, decision)
            decisions.append(decision)
        statements: list[str] = []
        if isinstance(store, SqliteStore):
            store.conn.set_trace_callback(statements.append)
        else:  # a shared store writes each transaction under its decision lock
            take_lock = store.exclusive

            def exclusive() -> Any:
                statements.append("COMMIT")
                return take_lock()

            store.exclusive = exclusive  # type: ignore[method-assign]

        await asyncio.gather(*(store.commit(d) for d in decisions))

        if isinstance(store, SqliteStore):
            store.conn.set_trace_callback(None)
        transactions = statements.count("COMMIT")
        assert 1 <= transactions < len(decisions)
        loaded = await store.load_state(NOW, DAY)
        assert len(loaded.open) == 50
        assert (await store.outbox_counts())[PENDING] == sum(len(d.events) for d in decisions)


    async def test_one_bad_decision_fails_only_its_own_commit(
        self, store: Store, config: Config
    ) -> None:
        """A decision that cannot be written fails alone; its batch mates are stored."""
        decisions = []
        state = State()
        for item in unrelated_alerts(10):
            decision = decide(webhook(item), config, state, NOW)
            state = apply(state, decision)
            decisions.append(decision)
        # A lone surrogate cannot be encoded as UTF-8 for the incident's title column.
        poisoned = dataclasses.replace(
            decisions[4], incidents=(dataclasses.replace(decisions[4].incidents[0],
                                                         title="bad \ud800"),))

        results = await asyncio.gather(
            *(store.commit(d) for d in [*decisions[:4], poisoned, *decisions[5:]]),
            return_exceptions=True)

        assert [type(r).__name__ for r in results] == ["NoneType"] * 4 + ["StoreError"] + [
            "NoneType"] * 5
        assert len((await store.load_state(NOW, DAY)).open) == 9

    async def test_unwritable_decision_fails_its_commit_instead_of_hanging(
        self, store: Store, config: Config
    ) -> None:
        """A decision that cannot be written fails with StoreError, and the store stays usable."""
        good = decide(webhook(db_alert()), config, State(), NOW)
        event = dataclasses.replace(good.events[0], body={"not json": {1, 2}})

        with pytest.raises(StoreError, match="could not write"):
            await asyncio.wait_for(store.commit(Decision(events=(event,), now=NOW)), 5)

        await store.commit(good)
        assert (await store.outbox_counts())[PENDING] == len(good.events)


class TestOpen:
    @sqlite_only
    async def test_wal_and_full_synchronous(self, store: Store) -> None:
        """The database runs in WAL mode with synchronous=FULL."""
        other = sqlite3.connect(store.path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    async def test_database_files_are_private(self, tmp_path: Path, config: Config) -> None:
        """The database and its -wal and -shm files, which hold routing keys, are mode 0600."""
        old_umask = os.umask(0o022)  # the usual umask, under which files are world-readable
        try:
            opened = SqliteStore(tmp_path / "state.db")
            await opened.open()
            await opened.commit(decide(webhook(db_alert()), config, State(), NOW))
            files = sorted(tmp_path.iterdir())
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
            await opened.close()
        finally:
            os.umask(old_umask)
        assert {"state.db", "state.db-wal", "state.db-shm"} <= set(modes)
        assert set(modes.values()) == {0o600}

    async def test_second_process_on_the_same_file_is_refused(self, tmp_path: Path) -> None:
        """A second store on a state file that is in use fails to open, naming the holder."""
        path = tmp_path / "state.db"
        first = SqliteStore(path)
        await first.open()
        second = SqliteStore(path)
        try:
            lock = tmp_path / "state.db.lock"
            with pytest.raises(StoreError) as caught:
                await second.open()
            assert str(caught.value) == (
                f"state database {path} is in use by another Firehouse (pid {os.getpid()}, "
                f"lock {lock}); run one process per state file")
        finally:
            await second.close()
            await first.close()
        third = SqliteStore(path)  # released on close
        await third.open()
        await third.close()

    async def test_corrupt_file_fails_open_naming_it(self, tmp_path: Path) -> None:
        """A file of garbage fails open() with a StoreError naming the file."""
        path = tmp_path / "state.db"
        path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
        corrupt = SqliteStore(path)

        with pytest.raises(StoreError, match=str(path)):
            await corrupt.open()
        await corrupt.close()


class TestOutbox:
    async def test_due_events_hold_a_resolve_behind_its_pending_trigger(
        self, store: Store, config: Config
    ) -> None:
        """due_events gives one event per dedup key and never a resolve before its trigger."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        later = NOW + timedelta(hours=1)

        first = await store.due_events(later, 100)
        assert sorted(e.action for e in first) == [TRIGGER] * 4
        assert len({e.dedup_key for e in first}) == 4
        for event in first:
            await store.mark_retry(event.id, later + timedelta(minutes=1), 500, "server_error")
        assert await store.due_events(later, 100) == []

        await store.mark_delivered(first[0].id, later, DELIVERED, 202)
        (resolve,) = await store.due_events(later, 100)
        assert (resolve.action, resolve.dedup_key) == (RESOLVE, first[0].dedup_key)

    async def test_next_attempt_ignores_events_held_behind_their_key(
        self, store: Store, config: Config
    ) -> None:
        """A resolve held behind a trigger that waits for a retry does not count as due."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        retry_at = NOW + timedelta(minutes=30)  # after the resolves were due
        for event in await store.due_events(NOW, 100):
            await store.mark_retry(event.id, retry_at, 503, "server_error")

        assert await store.due_events(NOW, 100) == []
        assert await store.next_attempt_at() == retry_at

    async def test_most_urgent_event_comes_first(self, store: Store, config: Config) -> None:
        """With a backlog, a critical page is handed out before an earlier info page."""
        quiet = alert({"alertname": "Lonely", "service": "nowhere", "severity": "info"})
        loud = alert({"alertname": "Fire", "service": "nowhere-else", "severity": "critical"})
        await store.commit(decide(webhook(quiet), config, State(), NOW))
        await store.commit(decide(webhook(loud), config, State(), NOW))

        (event,) = await store.due_events(NOW, 1)

        assert event.body["payload"]["severity"] == "critical"

    async def test_delivery_state_transitions(self, store: Store, config: Config) -> None:
        """mark_retry keeps an event pending until its time, mark_dead and mark_delivered end it."""
        opened, _ = open_and_resolve(config)
        await store.commit(dataclasses.replace(opened, events=opened.events[:3]))
        a, b, c = await store.due_events(NOW, 10)
        retry_at = NOW + timedelta(seconds=30)

        await store.mark_retry(a.id, retry_at, 503, "server_error: busy")
        await store.mark_dead(b.id, NOW, 400, "client_error: Event object is invalid")
        await store.mark_delivered(c.id, NOW, DRY_RUN, 0)

        rows = {e.id: e for e in await store.list_events(None, 10)}
        assert (rows[a.id].state, rows[a.id].attempts, rows[a.id].last_error) == (
            PENDING, 1, "server_error: busy")
        assert rows[a.id].next_attempt_at == retry_at
        assert (rows[b.id].state, rows[b.id].attempts) == (DEAD, 1)
        assert "Event object is invalid" in rows[b.id].last_error
        assert rows[c.id].state == DRY_RUN
        assert await store.outbox_counts() == {PENDING: 1, DEAD: 1, DRY_RUN: 1}
        assert await store.next_attempt_at() == retry_at
        assert await store.due_events(retry_at - timedelta(seconds=1), 10) == []
        assert [e.id for e in await store.due_events(retry_at, 10)] == [a.id]
        await store.mark_delivered(a.id, retry_at, DELIVERED, 202)
        assert await store.next_attempt_at() is None
        assert await store.oldest_pending_at() is None
        assert [e.id for e in await store.list_events(DELIVERED, 10)] == [a.id]

    async def test_a_dead_trigger_does_not_block_its_resolve(
        self, store: Store, config: Config
    ) -> None:
        """Once a trigger is dead, the resolve queued behind it becomes due."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        triggers = await store.due_events(NOW, 10)

        await store.mark_dead(triggers[0].id, NOW, 400, "client_error")

        due = await store.due_events(NOW + timedelta(minutes=5), 10)
        assert (RESOLVE, triggers[0].dedup_key) in {(e.action, e.dedup_key) for e in due}


    async def test_record_writes_many_outcomes_at_once(
        self, store: Store, config: Config
    ) -> None:
        """record() ends, retries and kills several events in one call."""
        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        a, b, c, d = await store.due_events(NOW, 10)
        retry_at = NOW + timedelta(seconds=30)

        await store.record([
            Attempt(a.id, DELIVERED, NOW, 202), Attempt(b.id, PENDING, retry_at, 503, "busy"),
            Attempt(c.id, DEAD, NOW, 400, "client_error: bad"), Attempt(d.id, DRY_RUN, NOW, 0),
        ])

        rows = {e.id: e for e in await store.list_events(None, 10)}
        assert [(rows[e.id].state, rows[e.id].attempts, rows[e.id].last_error)
                for e in (a, b, c, d)] == [
            (DELIVERED, 1, ""), (PENDING, 1, "busy"), (DEAD, 1, "client_error: bad"),
            (DRY_RUN, 1, "")]
        assert rows[b.id].next_attempt_at == retry_at
        assert store.healthy

    async def test_resolves_rank_with_critical_triggers(
        self, store: Store, config: Config
    ) -> None:
        """A resolve is handed out before an earlier warning page, and beside critical ones."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        for event in await store.due_events(NOW, 10):
            await store.mark_delivered(event.id, NOW, DELIVERED, 202)
        warning = decide(webhook(db_alert("nowhere", "Lonely", "warning")), config, State(), NOW)
        await store.commit(warning)
        await store.commit(closed)

        due = await store.due_events(NOW + timedelta(hours=1), len(closed.events))

        assert [e.action for e in due] == [RESOLVE] * len(closed.events)

    async def test_skipped_keys_are_left_out(self, store: Store, config: Config) -> None:
        """Events of skipped routing keys or dedup keys are neither handed out nor awaited."""
        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        first, second, *rest = opened.events
        retry_at = NOW + timedelta(seconds=30)
        for event in await store.due_events(NOW, 10):
            if event.dedup_key in {e.dedup_key for e in rest}:
                await store.mark_retry(event.id, retry_at, 503, "busy")

        due = await store.due_events(NOW, 10, skip_routing_keys=[first.routing_key],
                                     skip_dedup_keys=[second.dedup_key])

        assert due == []
        assert await store.next_attempt_at(skip_routing_keys=[first.routing_key],
                                           skip_dedup_keys=[second.dedup_key]) == retry_at
        assert await store.next_attempt_at() == NOW

    async def test_a_database_without_the_urgency_index_gets_it(
        self, tmp_path: Path, config: Config
    ) -> None:
        """A state file made before the index existed is given it on open, and works."""
        path = tmp_path / "old.db"
        old = SqliteStore(path)
        await old.open()
        await old.commit(open_and_resolve(config)[0])
        await old.close()
        with sqlite3.connect(path) as conn:
            conn.execute("DROP INDEX outbox_pending_by_urgency")

        store = SqliteStore(path)
        await store.open()
        try:
            assert len(await store.due_events(NOW, 10)) == 4
            plan = store.conn.execute(
                "SELECT name FROM sqlite_master WHERE name = 'outbox_pending_by_urgency'"
            ).fetchall()
        finally:
            await store.close()
        assert plan == [("outbox_pending_by_urgency",)]


class TestIncidentApi:
    async def test_incident_json_never_contains_routing_keys(
        self, store: Store, config: Config
    ) -> None:
        """list_incidents and get_incident return JSON without any routing key."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        incident_id = opened.incidents[0].id

        listed = await store.list_incidents(None, 10)
        one = await store.get_incident(incident_id)

        assert one is not None
        assert [i["id"] for i in listed] == [incident_id]
        assert {p["target"] for p in one["pages"]} == {e.target for e in opened.events}
        assert one["timeline"][0]["kind"] == "opened"
        text = json.dumps([listed, one])
        for target in target_names():
            assert routing_key(target) not in text
        assert "routing_key" not in text
        assert await store.get_incident("no-such-incident") is None

    @sqlite_only
    async def test_an_incidents_events_are_read_along_an_index(self, store: Store) -> None:
        """The incident API reads its events by index, not by a scan of the whole outbox
        (which keeps delivered events for hours: 6x slower with 1,400 events)."""
        plan = store.conn.execute(f"EXPLAIN QUERY PLAN {INCIDENT_EVENTS}", ("x",)).fetchall()
        assert any("USING INDEX outbox_by_incident" in row[-1] for row in plan), plan


class TestDelivery:
    """Whether PagerDuty has each page, from the outbox: shown with the page, noted on the
    timeline when refused, and retried on request."""

    async def test_each_open_page_carries_the_delivery_of_its_trigger(
        self, store: Store, config: Config
    ) -> None:
        """A page's `delivery` is its trigger's outbox state, with the error while it is
        dead or being retried; None once the row is cleaned up."""
        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        a, b, c, d = await store.due_events(NOW, 10)
        await store.record([
            Attempt(a.id, PENDING, NOW + timedelta(seconds=30), 503, "server_error: busy"),
            Attempt(b.id, DEAD, NOW, 400, "client_error: Invalid routing key", note="refused"),
            Attempt(c.id, DELIVERED, NOW, 202), Attempt(d.id, DRY_RUN, NOW, 0),
        ])
        incident_id = opened.incidents[0].id

        one = await store.get_incident(incident_id)
        (listed,) = await store.list_incidents(None, 10)
        await store.cleanup(NOW + timedelta(hours=1), NOW)
        cleaned = await store.get_incident(incident_id)

        assert one is not None
        assert cleaned is not None
        delivery = {p["dedup_key"]: p["delivery"] for p in one["pages"]}
        assert delivery == {p["dedup_key"]: p["delivery"] for p in listed["pages"]}
        assert delivery[a.dedup_key] == {"action": TRIGGER, "state": PENDING, "event_id": a.id,
                                         "attempts": 1, "last_error": "server_error: busy",
                                         "last_status": 503}
        assert delivery[b.dedup_key] == {
            "action": TRIGGER, "state": DEAD, "event_id": b.id, "attempts": 1,
            "last_error": "client_error: Invalid routing key", "last_status": 400}
        assert delivery[c.dedup_key] == {"action": TRIGGER, "state": DELIVERED,
                                         "event_id": c.id, "attempts": 1}
        assert delivery[d.dedup_key] == {"action": TRIGGER, "state": DRY_RUN,
                                         "event_id": d.id, "attempts": 1}
        after = {p["dedup_key"]: p["delivery"] for p in cleaned["pages"]}
        assert (after[c.dedup_key], after[d.dedup_key]) == (None, None)
        assert after[b.dedup_key]["state"] == DEAD  # dead letters stay

    async def test_a_page_carries_the_delivery_of_its_resolve_once_there_is_one(
        self, store: Store, config: Config
    ) -> None:
        """Once a page is resolved its `delivery` is its resolve's (action `resolve`): a
        resolve PagerDuty refused is dead with PagerDuty's reason, one being retried is
        pending with the error, a sent one delivered. While the trigger is still being
        sent, the resolve waits behind it, and the delivery is the trigger's."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        await store.commit(closed)
        later = NOW + timedelta(minutes=10)
        a, b, c, d = await store.due_events(later, 10)
        assert {e.action for e in (a, b, c, d)} == {TRIGGER}
        await store.record([
            Attempt(a.id, DELIVERED, later, 202), Attempt(b.id, DELIVERED, later, 202),
            Attempt(c.id, DELIVERED, later, 202),
            Attempt(d.id, PENDING, later + timedelta(hours=1), 503, "server_error: busy"),
        ])
        ra, rb, rc = sorted(await store.due_events(later, 10), key=lambda e: e.id)
        assert [(e.action, e.dedup_key) for e in (ra, rb, rc)] == [
            (RESOLVE, a.dedup_key), (RESOLVE, b.dedup_key), (RESOLVE, c.dedup_key)]
        await store.record([
            Attempt(ra.id, DEAD, later, 400, "client_error: Invalid routing key",
                    note="refused"),
            Attempt(rb.id, PENDING, later + timedelta(seconds=30), 429, "rate_limited: slow"),
            Attempt(rc.id, DELIVERED, later, 202),
        ])

        one = await store.get_incident(opened.incidents[0].id)
        (listed,) = await store.list_incidents("resolved", 10)

        assert one is not None
        assert one["status"] == "resolved"
        delivery = {p["dedup_key"]: p["delivery"] for p in one["pages"]}
        assert delivery == {p["dedup_key"]: p["delivery"] for p in listed["pages"]}
        assert delivery[a.dedup_key] == {
            "action": RESOLVE, "state": DEAD, "event_id": ra.id, "attempts": 1,
            "last_error": "client_error: Invalid routing key", "last_status": 400}
        assert delivery[b.dedup_key] == {
            "action": RESOLVE, "state": PENDING, "event_id": rb.id, "attempts": 1,
            "last_error": "rate_limited: slow", "last_status": 429}
        assert delivery[c.dedup_key] == {"action": RESOLVE, "state": DELIVERED,
                                         "event_id": rc.id, "attempts": 1}
        assert delivery[d.dedup_key] == {  # its resolve waits behind it
            "action": TRIGGER, "state": PENDING, "event_id": d.id, "attempts": 1,
            "last_error": "server_error: busy", "last_status": 503}

    async def test_a_dead_letter_note_is_written_with_the_dead_mark(
        self, store: Store, config: Config
    ) -> None:
        """An attempt's note lands on its incident's timeline (kind delivery_failed) in the
        transaction that marks the event dead."""
        opened = decide(webhook(db_alert()), config, State(), NOW)
        await store.commit(opened)
        (first, *_) = await store.due_events(NOW, 10)

        await store.record([Attempt(first.id, DEAD, NOW, 400, "client_error: bad",
                                    note="PagerDuty refused the page to dba-oncall")])

        one = await store.get_incident(opened.incidents[0].id)
        assert one is not None
        assert one["timeline"][-1] == {"at": NOW.isoformat(), "kind": DELIVERY_FAILED,
                                       "message": "PagerDuty refused the page to dba-oncall"}

    async def test_the_note_follows_a_merge_to_the_incident_holding_the_page(
        self, store: Store, config: Config
    ) -> None:
        """A dead page of a merged incident is noted on the incident it was merged into,
        which holds its pages now."""
        opened = decide(webhook(db_alert()), config, State(), NOW)
        (kept,) = opened.incidents
        gone = dataclasses.replace(kept, id="merged-away", status=MERGED, merged_into=kept.id)
        event = dataclasses.replace(opened.events[0], incident_id=gone.id)
        await store.commit(dataclasses.replace(opened, incidents=(kept, gone), events=(event,)))
        (dead,) = await store.due_events(NOW, 10)

        await store.record([Attempt(dead.id, DEAD, NOW, 400, "client_error", note="refused")])

        holder, merged = await store.get_incident(kept.id), await store.get_incident(gone.id)
        assert holder is not None
        assert merged is not None
        assert [n["kind"] for n in holder["timeline"]][-1] == DELIVERY_FAILED
        assert DELIVERY_FAILED not in [n["kind"] for n in merged["timeline"]]


class TestRequeue:
    async def test_a_dead_letter_goes_back_with_the_new_routing_key_and_its_resolve(
        self, store: Store, config: Config
    ) -> None:
        """requeue puts a dead trigger back to pending, due now, attempts and error reset,
        with the target's current routing key, the dead resolve after it too, and notes it."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        trigger = (await store.due_events(NOW, 10))[1]
        await store.mark_dead(trigger.id, NOW, 400, "client_error: Invalid routing key")
        await store.commit(closed)
        later = NOW + timedelta(minutes=5)
        resolve = next(e for e in await store.due_events(later, 10)
                       if e.dedup_key == trigger.dedup_key)
        await store.mark_dead(resolve.id, later, 400, "client_error: Invalid routing key")
        rotated = routing_key(trigger.target, "rotated")
        retried_at = later + timedelta(minutes=1)

        requeued = await store.requeue(trigger.id, {trigger.target: rotated}, retried_at)

        assert requeued is not None
        assert [(e.id, e.state, e.attempts, e.last_error, e.routing_key, e.next_attempt_at)
                for e in requeued] == [
            (trigger.id, PENDING, 0, "", rotated, retried_at),
            (resolve.id, PENDING, 0, "", rotated, retried_at)]
        assert [e.id for e in await store.due_events(retried_at, 10)
                if e.dedup_key == trigger.dedup_key] == [trigger.id]  # the resolve after it
        one = await store.get_incident(trigger.incident_id)
        assert one is not None
        note = one["timeline"][-1]
        assert note["kind"] == DELIVERY_RETRIED
        assert trigger.target in note["message"]
        assert "new routing key" in note["message"]
        assert rotated not in json.dumps(one)
        with pytest.raises(OutboxConflict, match="is pending, not dead"):
            await store.requeue(trigger.id, {trigger.target: rotated}, retried_at)
        assert await store.requeue(10_000, {trigger.target: rotated}, retried_at) is None

    async def test_a_trigger_whose_resolve_went_out_is_not_requeued(
        self, store: Store, config: Config
    ) -> None:
        """A dead trigger whose resolve PagerDuty accepted stays dead: sent now, it would
        open an alert that nothing resolves."""
        opened, closed = open_and_resolve(config)
        await store.commit(opened)
        trigger = (await store.due_events(NOW, 10))[0]
        await store.mark_dead(trigger.id, NOW, 400, "client_error")
        await store.commit(closed)
        later = NOW + timedelta(minutes=5)
        resolve = next(e for e in await store.due_events(later, 10)
                       if e.dedup_key == trigger.dedup_key)
        await store.mark_delivered(resolve.id, later, DELIVERED, 202)

        with pytest.raises(OutboxConflict, match="already been sent the resolve"):
            await store.requeue(trigger.id, {trigger.target: trigger.routing_key}, later)
        assert (await store.list_events(DEAD, 10))[0].id == trigger.id

    async def test_a_target_no_longer_configured_is_a_conflict(
        self, store: Store, config: Config
    ) -> None:
        """Without the target in the settings there is no routing key to send with."""
        opened, _ = open_and_resolve(config)
        await store.commit(opened)
        trigger = (await store.due_events(NOW, 10))[0]
        await store.mark_dead(trigger.id, NOW, 400, "client_error")

        with pytest.raises(OutboxConflict, match="no longer in the settings"):
            await store.requeue(trigger.id, {}, NOW)


class TestProbe:
    @sqlite_only
    async def test_a_probe_that_commits_makes_the_store_healthy(
        self, store: Store
    ) -> None:
        """probe() commits a small write and sets healthy by its outcome."""
        await store._run(lambda: store.conn.execute("PRAGMA query_only=1"))
        with pytest.raises(StoreError):
            await store.probe(NOW)
        assert not store.healthy

        await store._run(lambda: store.conn.execute("PRAGMA query_only=0"))
        await store.probe(NOW)

        assert store.healthy


class TestDeadlinesStored:
    """An incident's deadlines are stored in its document, loaded back, and shown by the API."""

    async def test_round_trip(self, new_store: NewStore, config: Config) -> None:
        """Deadlines committed are the deadlines loaded after a reopen of the file."""
        opened = decide(webhook(db_alert()), config, State(), NOW)
        (incident,) = opened.incidents
        assert incident.deadlines.ack_by is not None
        before = new_store()
        await before.open()
        await before.commit(opened)
        await before.close()

        after = new_store()
        await after.open()
        try:
            loaded = await after.load_state(NOW, DAY)
        finally:
            await after.close()

        assert loaded.open[incident.id].deadlines == incident.deadlines

    async def test_api_json(self, store: Store, config: Config) -> None:
        """get_incident and list_incidents show the deadlines as RFC 3339 times and seconds."""
        opened = decide(webhook(db_alert()), config, State(), NOW)
        await store.commit(opened)
        incident_id = opened.incidents[0].id
        expected = {
            "ack_by": (NOW + timedelta(minutes=5)).isoformat(),
            "resolve_by": (NOW + timedelta(hours=1)).isoformat(),
            "escalate_to": ["senior_management"],
            "business_updates_every": 1800,
        }

        one = await store.get_incident(incident_id)
        (listed,) = await store.list_incidents(None, 10)

        assert one is not None
        assert one["deadlines"] == expected
        assert listed["deadlines"] == expected
        (assessed,) = [n for n in one["timeline"] if n["kind"] == "assessed"]
        assert "deadlines: ack by" in assessed["message"]

    async def test_incident_stored_before_deadlines(self, tmp_path: Path,
                                                    config: Config) -> None:
        """An incident document without deadlines (an older Firehouse) loads with none."""
        path = tmp_path / "state.db"
        opened = decide(webhook(db_alert()), config, State(), NOW)
        incident_id = opened.incidents[0].id
        store = SqliteStore(path)
        await store.open()
        await store.commit(opened)
        await store.close()
        with sqlite3.connect(path) as conn:
            (doc,) = conn.execute("SELECT doc FROM incidents").fetchone()
            old = json.loads(doc)
            del old["deadlines"]
            conn.execute("UPDATE incidents SET doc = ?", (json.dumps(old),))
        conn.close()

        store = SqliteStore(path)
        await store.open()
        try:
            loaded = await store.load_state(NOW, DAY)
            shown = await store.get_incident(incident_id)
        finally:
            await store.close()

        assert loaded.open[incident_id].deadlines == Deadlines()
        assert shown is not None
        assert shown["deadlines"] == Deadlines().to_json()
