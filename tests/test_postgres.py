"""The PostgreSQL store on a real server, in a fresh schema per test (of the database
conftest's `postgres_database` makes for the run: skipped without PostgreSQL, or failed
under FIREHOUSE_REQUIRE_E2E=1). Several `PostgresStore`s on one schema stand for several
replicas; what both stores do is compared with the SQLite store, the reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import pytest

import daemon.dispatch as dispatch_module
from daemon.app import Firehouse
from daemon.config import Config, load_config
from daemon.decide import MERGED, RESOLVE, TRIGGER, Change, Decision, State, apply, decide
from daemon.dispatch import Dispatcher
from daemon.errors import OutboxConflict, StoreError
from daemon.metrics import Metrics
from daemon.store import DEAD, DELIVERED, DELIVERY_FAILED, PENDING, Attempt, is_shared
from daemon.store.pgsql import MIGRATIONS
from daemon.store.postgres import (
    CONNECT_TIMEOUT,
    MIGRATION_LOCK_CLASS,
    PostgresStore,
    describe_dsn,
)
from daemon.store.sqlite import SqliteStore, unmoved_incidents
from daemon.store.transfer import import_sqlite
from tests.conftest import PostgresDatabase
from tests.helpers import (
    NOW,
    SETTINGS,
    config_env,
    free_port,
    resolved,
    undamped,
    wait_until,
    webhook,
)
from tests.test_store import db_alert, open_and_resolve, unrelated_alerts

DAY = 24 * 3600.0
LEASE = 30.0


def schema_of(dsn: str) -> str:
    """The schema a DSN of `PostgresDatabase.new_schema` keeps its tables in."""
    return dict(parse_qsl(urlsplit(dsn).query))["search_path"]


@pytest.fixture
def dsn(postgres_database: PostgresDatabase) -> Iterator[str]:
    """The DSN of a fresh, empty schema (in this run's database), dropped after the test."""
    made = postgres_database.new_schema()
    yield made
    postgres_database.drop_schema(made)


@pytest.fixture
def schema(dsn: str) -> str:
    return schema_of(dsn)


@pytest.fixture
async def sql(dsn: str) -> AsyncIterator[Any]:
    """A plain connection on the test's schema, to look at (or break) the tables."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The reference: an open SQLite store."""
    opened = SqliteStore(tmp_path / "reference.db")
    await opened.open()
    yield opened
    await opened.close()


StoreFactory = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def stores(dsn: str) -> AsyncIterator[StoreFactory]:
    """Make replicas on the test's schema: `await stores("b", listen=cb, open=False)`;
    every one is closed at the end."""
    made: list[PostgresStore] = []

    async def make(owner: str = "replica-a", *, listen: Callable[[int], None] | None = None,
                   open: bool = True, url: str | None = None) -> PostgresStore:
        store = PostgresStore(url or dsn, lease_seconds=LEASE, owner=owner)
        if listen is not None:
            store.listen(listen)
        made.append(store)
        if open:
            await store.open()
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def pg(stores: StoreFactory) -> PostgresStore:
    """An open PostgreSQL store: replica "replica-a"."""
    return await stores()


async def version_of(store: PostgresStore) -> int:
    return (await store.load_versioned(NOW, DAY))[1]


def chain(config: Config, *alerts: dict[str, Any]) -> list[Decision]:
    """One decision per alert, each on the state the previous ones left."""
    state = State()
    decisions = []
    for item in alerts:
        decision = decide(webhook(item), config, state, NOW)
        state = apply(state, decision)
        decisions.append(decision)
    return decisions


# ------------------------------------------------------------------------------- schema


class TestMigrations:
    async def test_open_creates_the_schema_in_the_search_path_of_the_dsn(
        self, pg: PostgresStore, sql: Any, schema: str
    ) -> None:
        """open() migrates on its own, into the schema the DSN names, and records it."""
        tables = {r[0] for r in await sql.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)}
        applied = await sql.fetch("SELECT version, description FROM firehouse_migrations")

        assert pg.migrations_applied == [m[0] for m in MIGRATIONS]
        assert {"incidents", "alerts", "resolutions", "timeline", "outbox", "changes", "meta",
                "decision_clock", "firehouse_migrations"} <= tables
        assert [(r[0], r[1]) for r in applied] == [(m[0], m[1]) for m in MIGRATIONS]
        assert await sql.fetchval("SELECT version FROM decision_clock") == 0

    async def test_migrating_again_applies_nothing(
        self, pg: PostgresStore, stores: StoreFactory, sql: Any
    ) -> None:
        """A second migrate, and a second replica's open, find the schema up to date."""
        again = await pg.migrate()
        second = await stores("replica-b")

        assert again == []
        assert second.migrations_applied == []
        assert await sql.fetchval("SELECT count(*) FROM firehouse_migrations") == len(MIGRATIONS)

    async def test_three_replicas_starting_at_once_apply_each_migration_once(
        self, stores: StoreFactory, sql: Any
    ) -> None:
        """Replicas opening together all succeed; exactly one of them migrated."""
        replicas = [await stores(f"replica-{n}", open=False) for n in range(3)]

        await asyncio.gather(*(r.open() for r in replicas))

        assert sorted(r.migrations_applied for r in replicas) == [
            [], [], [m[0] for m in MIGRATIONS]]
        assert await sql.fetchval("SELECT count(*) FROM firehouse_migrations") == len(MIGRATIONS)

    async def test_migrate_works_before_open(self, stores: StoreFactory) -> None:
        """`firehouse migrate` asks migrate() which migrations it applied before opening."""
        store = await stores(open=False)

        assert await store.migrate() == [m[0] for m in MIGRATIONS]
        await store.open()
        assert store.migrations_applied == []

    async def test_a_schema_newer_than_this_firehouse_is_refused(
        self, pg: PostgresStore, stores: StoreFactory, sql: Any
    ) -> None:
        """A database a newer Firehouse migrated is not opened (it could not run on it)."""
        known = MIGRATIONS[-1][0]
        await sql.execute("INSERT INTO firehouse_migrations VALUES ($1, 'from the future', 0)",
                          known + 1)
        newer = await stores("replica-b", open=False)

        with pytest.raises(StoreError, match=f"schema version {known + 1}, newer than this "
                                             rf"Firehouse \({known}\)"):
            await newer.open()
        with pytest.raises(StoreError, match="is not open"):
            await newer.outbox_counts()

    async def test_migration_lock_is_per_schema(
        self, stores: StoreFactory, sql: Any, schema: str, postgres_database: PostgresDatabase
    ) -> None:
        """A replica waits for another's migration of its schema, never for another
        schema's (the lock key is the schema's)."""
        other = postgres_database.new_schema()
        elsewhere = PostgresStore(other, owner="elsewhere")
        try:
            await sql.execute("SELECT pg_advisory_lock($1, hashtext($2))",
                              MIGRATION_LOCK_CLASS, schema)
            waiting = asyncio.create_task((await stores(open=False)).open())
            await asyncio.wait_for(elsewhere.open(), 5)
            await asyncio.sleep(0.3)
            assert not waiting.done()

            await sql.execute("SELECT pg_advisory_unlock($1, hashtext($2))",
                              MIGRATION_LOCK_CLASS, schema)
            await asyncio.wait_for(waiting, 5)
            assert elsewhere.channel != (await stores("c")).channel
        finally:
            await elsewhere.close()
            postgres_database.drop_schema(other)


# ------------------------------------------------------------------------------ parity


def normalised(incident: dict[str, Any] | None) -> dict[str, Any] | None:
    """An incident's JSON with its alerts in a fixed order: both stores list them by
    first_seen, and leave the order of alerts first seen together to the database."""
    if incident is None:
        return None
    return {**incident, "alerts": sorted(incident["alerts"],
                                         key=lambda a: (a["first_seen"], a["fingerprint"]))}


async def api_view(store: Any, incident_ids: list[str]) -> list[Any]:
    """What the HTTP API would show of the store. Incidents opened at the same moment (by
    one webhook) are listed in an order neither store promises: sorted here."""
    listed = await store.list_incidents(None, 10)
    return [
        sorted(listed, key=lambda i: (i["opened_at"], i["id"])),
        sorted(i["id"] for i in await store.list_incidents("open", 10)),
        [i["opened_at"] for i in listed],  # newest first
        [normalised(await store.get_incident(i)) for i in incident_ids],
        await store.list_changes(None, 10),
        await store.list_changes("cart", 10),
        await store.outbox_counts(),
        await store.list_events(None, 50),
        await store.list_events(PENDING, 50),
    ]


async def state_view(store: Any, at: timedelta = timedelta(minutes=2)) -> list[Any]:
    """What the engine would load from the store."""
    state = await store.load_state(NOW + at, DAY)
    return [dict(state.open), dict(state.by_fingerprint), dict(state.resolved), state.changes,
            dict(state.by_service)]


def changes() -> Decision:
    """Changes whose order needs care: the same time, with and without a receipt time,
    ids that sort differently by byte and by locale."""
    return Decision(now=NOW, changes=(
        Change("B-2", "cart", "deploy cart 2", NOW, who="ci", version="2"),
        Change("a-1", "cart", "deploy cart 1", NOW, received_at=NOW),
        Change("a-0", "cart", "deploy cart 0", NOW, received_at=NOW - timedelta(seconds=1)),
        Change("c-3", "payments", "flag flip", NOW - timedelta(hours=1),
               links=(("https://ci.example/3", "build"),), received_at=NOW),
    ))


async def scenario(store: Any, config: Config) -> list[Any]:
    """Drive a store through decisions, deliveries, a retry and a cleanup; what it shows
    after each step."""
    config = undamped(config)
    one, two = db_alert(), db_alert(service="cart", name="CartSlow", severity="warning")
    first = decide(webhook(one, two), config, State(), NOW)
    state = apply(State(), first)
    second = decide(webhook(resolved(two), one), config, state, NOW + timedelta(minutes=1))
    kept = first.incidents[0]
    gone = dataclasses.replace(kept, id="merged-away", status=MERGED, merged_into=kept.id)
    merged = Decision(now=NOW, incidents=(gone,), events=(
        dataclasses.replace(first.events[0], incident_id=gone.id, dedup_key="merged/page"),))
    for decision in (first, second, changes(), merged):
        await store.commit(decision)
    ids = sorted({i.id for d in (first, second, merged) for i in d.incidents})
    seen = [await state_view(store), await api_view(store, ids)]

    due = await store.due_events(NOW + timedelta(minutes=2), 10)
    seen.append(due)
    by_key = {e.dedup_key: e for e in due}
    away = by_key.pop("merged/page")
    a, b, c, *_ = by_key.values()
    await store.record([
        Attempt(a.id, DELIVERED, NOW + timedelta(minutes=2), 202),
        Attempt(b.id, DEAD, NOW + timedelta(minutes=2), 400, "client_error: bad", note="refused"),
        Attempt(c.id, PENDING, NOW + timedelta(minutes=5), 503, "busy"),
        Attempt(away.id, DEAD, NOW + timedelta(minutes=2), 400, "client_error", note="merged"),
    ])
    seen += [await store.next_attempt_at(), await store.oldest_pending_at(),
             await store.overdue_events(NOW + timedelta(hours=1), 10),
             await store.due_events(NOW + timedelta(minutes=3), 10)]
    seen.append(await store.requeue(b.id, {b.target: "rotated"}, NOW + timedelta(minutes=3)))
    with pytest.raises(OutboxConflict, match="is pending, not dead") as conflict:
        await store.requeue(b.id, {b.target: "rotated"}, NOW)
    seen += [str(conflict.value), await store.requeue(10_000, {}, NOW)]
    seen.append(await store.cleanup(NOW + timedelta(hours=2), NOW - timedelta(days=2)))
    seen += [await state_view(store), await api_view(store, ids)]
    return seen


class TestParityWithSqlite:
    async def test_every_read_shows_what_sqlite_shows(
        self, pg: PostgresStore, sqlite: SqliteStore, config: Config
    ) -> None:
        """The same decisions and deliveries give the same engine state, API JSON, outbox
        rows, timeline notes (on the incident holding a merged page) and conflicts."""
        expected = await scenario(sqlite, config)
        got = await scenario(pg, config)

        assert len(got) == len(expected)
        for step, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            assert mine == theirs, f"step {step}"
        # Not vacuous: the notes were written, the merged incident's on the one holding it.
        notes = {i["id"]: [n["kind"] for n in i["timeline"]].count(DELIVERY_FAILED)
                 for i in got[-1][3]}
        assert notes.pop("merged-away") == 0
        assert sorted(notes.values()) == [0, 2]

    async def test_state_survives_a_restart(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """What was committed is the engine state a new replica loads."""
        one, two = db_alert(), db_alert(service="cart", name="CartSlow", severity="warning")
        first = decide(webhook(one, two), config, State(), NOW)
        state = apply(State(), first)
        second = decide(webhook(resolved(two), one), config, state, NOW + timedelta(minutes=1))
        state = apply(state, second)
        before = await stores()
        await before.commit(first)
        await before.commit(second)
        await before.close()

        loaded = await (await stores("replica-b")).load_state(NOW + timedelta(minutes=2), DAY)

        assert dict(loaded.open) == dict(state.open)
        assert dict(loaded.by_fingerprint) == dict(state.by_fingerprint)
        assert dict(loaded.resolved) == dict(state.resolved)
        assert decide(webhook(one), config, loaded, NOW + timedelta(minutes=3)).events == ()


# ----------------------------------------------------------------------------- commits


class TestCommit:
    async def test_concurrent_commits_share_transactions(
        self, pg: PostgresStore, config: Config
    ) -> None:
        """Decisions committed together are all stored, under fewer versions than there
        are decisions (one per transaction)."""
        decisions = chain(config, *unrelated_alerts(50))

        await asyncio.gather(*(pg.commit(d) for d in decisions))

        version = await version_of(pg)
        assert 1 <= version < len(decisions)
        assert len((await pg.load_state(NOW, DAY)).open) == 50
        assert (await pg.outbox_counts())[PENDING] == sum(len(d.events) for d in decisions)
        assert pg.healthy

    async def test_a_nul_in_labels_does_not_poison_the_webhook(
        self, pg: PostgresStore, config: Config
    ) -> None:
        """PostgreSQL text refuses NUL: the alert is stored with U+FFFD in its place rather
        than failing (and being retried) forever."""
        decision = decide(webhook(db_alert(service="svc\x00x")), config, State(), NOW)

        await pg.commit(decision)

        (incident,) = (await pg.load_state(NOW, DAY)).open.values()
        assert [a.service for a in incident.alerts.values()] == ["svc\ufffdx"]
        assert incident.services == decision.incidents[0].services  # the JSON keeps it


# --------------------------------------------------------------------- exclusive, delta


class TestExclusive:
    async def test_two_replicas_take_the_decision_lock_in_turn(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A second replica's exclusive() waits for the first's to commit, then sees its
        version and what it wrote."""
        first, second = await stores("replica-a"), await stores("replica-b")
        decision = decide(webhook(db_alert()), config, State(), NOW)
        entered = asyncio.Event()

        async def other() -> tuple[int, list[str]]:
            async with second.exclusive() as held:
                entered.set()
                return held.version, [i.id for i in (await held.delta(0)).incidents]

        async with first.exclusive() as held:
            before = held.version
            waiting = asyncio.create_task(other())
            await asyncio.sleep(0.5)
            assert not entered.is_set()
            written = await held.write([decision])

        assert await asyncio.wait_for(waiting, 5) == (written, [decision.incidents[0].id])
        assert written == before + 1

    async def test_an_error_under_the_lock_rolls_everything_back(
        self, pg: PostgresStore, config: Config
    ) -> None:
        """What was written in an exclusive() that raised is not committed, clock included."""
        decision = decide(webhook(db_alert()), config, State(), NOW)

        async def write_then_fail() -> None:
            async with pg.exclusive() as held:
                await held.write([decision])
                raise RuntimeError("engine bug")

        with pytest.raises(RuntimeError, match="engine bug"):
            await write_then_fail()

        assert await version_of(pg) == 0
        assert (await pg.load_state(NOW, DAY)).open == {}
        assert await pg.outbox_counts() == {}
        assert pg.healthy  # the database did nothing wrong

    async def test_delta_has_exactly_what_was_written_after_a_version(
        self, pg: PostgresStore, config: Config
    ) -> None:
        """Incidents written (or only seen) after the version, whole and whatever their
        status, the resolutions and changes made since, and the current version."""
        config = undamped(config)
        firing = db_alert()
        (elsewhere,) = chain(config, db_alert(service="legacy-9", name="Other"))
        await pg.commit(elsewhere)
        opened = decide(webhook(firing), config, State(), NOW)
        state = apply(State(), opened)
        await pg.commit(opened)
        after_open = await version_of(pg)
        seen = decide(webhook(firing), config, state, NOW + timedelta(minutes=1))
        assert seen.seen  # a repeat: only last_seen moves
        assert not seen.incidents
        state = apply(state, seen)
        await pg.commit(seen)
        after_seen = await version_of(pg)

        delta = await pg.delta(after_open)

        assert delta.version == after_seen == after_open + 1
        assert delta.incidents == (state.open[opened.incidents[0].id],)
        (alert,) = delta.incidents[0].alerts.values()
        assert alert.last_seen == NOW + timedelta(minutes=1)
        assert (delta.resolutions, delta.changes) == ((), ())
        assert {i.id for i in (await pg.delta(0)).incidents} == {
            opened.incidents[0].id, elsewhere.incidents[0].id}

        closed = decide(webhook(resolved(firing)), config, state, NOW + timedelta(minutes=2))
        await pg.commit(closed)
        await pg.commit(changes())
        delta = await pg.delta(after_seen)
        async with pg.exclusive() as held:
            locked = await held.delta(after_seen)

        (incident,) = delta.incidents
        assert incident.status == "resolved"
        assert incident == closed.incidents[0]
        assert set(incident.alerts) == set(state.open[incident.id].alerts)
        assert delta.resolutions == closed.resolutions
        assert [c.id for c in delta.changes] == ["c-3", "B-2", "a-0", "a-1"]
        assert delta.version == after_seen + 2
        assert locked == delta
        assert await pg.delta(delta.version) == dataclasses.replace(delta, incidents=(),
                                                                    resolutions=(), changes=())

    async def test_a_shared_store_says_so(self, pg: PostgresStore) -> None:
        assert is_shared(pg)
        assert not is_shared(SqliteStore(Path("unused.db")))


# ------------------------------------------------------------------------ outbox leases


class TestLeases:
    async def test_two_replicas_never_get_the_same_event(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """Replicas reading due events at the same moment split them; each event is handed
        out once until recorded, and every one is handed out in the end."""
        a, b = await stores("replica-a"), await stores("replica-b")
        decisions = chain(config, *unrelated_alerts(40))
        for decision in decisions:
            await a.commit(decision)
        opened, closed = open_and_resolve(config)
        await a.commit(opened)
        await a.commit(closed)
        handed: list[int] = []

        for _ in range(20):
            got_a, got_b = await asyncio.gather(a.due_events(NOW + timedelta(hours=1), 7),
                                                b.due_events(NOW + timedelta(hours=1), 7))
            if not got_a and not got_b:
                break
            assert not {e.id for e in got_a} & {e.id for e in got_b}
            handed += [e.id for e in got_a + got_b]
            await a.record([Attempt(e.id, DELIVERED, NOW, 202) for e in got_a])
            await b.record([Attempt(e.id, DELIVERED, NOW, 202) for e in got_b])

        assert sorted(handed) == list(range(1, 40 + len(opened.events) + len(closed.events) + 1))
        assert await a.outbox_counts() == {DELIVERED: len(handed)}

    async def test_a_running_lease_is_skipped_and_an_expired_one_taken_over(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """Another replica's events are not due for this one until the lease runs out
        (a replica killed with -9 hands nothing back); its own are due again at once."""
        a, b = await stores("replica-a"), await stores("replica-b")
        await a.commit(decide(webhook(db_alert()), config, State(), NOW))
        taken = await a.due_events(NOW, 10)
        assert len(taken) == 4

        assert await b.due_events(NOW + timedelta(seconds=10), 10) == []
        assert await b.next_attempt_at() == NOW + timedelta(seconds=LEASE)
        assert await a.next_attempt_at() == NOW
        assert [e.id for e in await a.due_events(NOW + timedelta(seconds=10), 10)] == [
            e.id for e in taken]  # renewed: now until NOW + 40 s

        later = NOW + timedelta(seconds=10 + LEASE + 1)
        assert [e.id for e in await b.due_events(later, 10)] == [e.id for e in taken]
        assert await a.due_events(later, 10) == []

    async def test_close_hands_the_leases_back_and_wakes_the_others(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A replica stopping gracefully frees its events for the others at once."""
        heard: list[int] = []
        a = await stores("replica-a")
        b = await stores("replica-b", listen=heard.append)
        # Else the commit may come first, and b hear only of it (once connected).
        await eventually(lambda: heard == [0], what="b listening")
        await a.commit(decide(webhook(db_alert()), config, State(), NOW))
        taken = await a.due_events(NOW, 10)
        await eventually(lambda: heard == [0, 1], what="b heard the commit")

        await a.close()

        assert [e.id for e in await b.due_events(NOW, 10)] == [e.id for e in taken]
        await eventually(lambda: len(heard) == 3, what="b heard the leases freed")

    async def test_a_retry_gives_the_event_back_and_wakes_the_others(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A retry recorded by the lease holder (say, on its way out after a send timed
        out) tells every replica at once: the event is theirs at its retry time, not when
        the lease they last saw runs out (which is what they were waiting for)."""
        heard: list[int] = []
        a = await stores("replica-a")
        b = await stores("replica-b", listen=heard.append)
        await eventually(lambda: heard == [0], what="b listening")
        await a.commit(decide(webhook(db_alert()), config, State(), NOW))
        first, *_ = await a.due_events(NOW, 10)
        await eventually(lambda: heard == [0, 1], what="b heard the commit")
        assert await b.next_attempt_at() == NOW + timedelta(seconds=LEASE)

        retry_at = NOW + timedelta(seconds=1)
        await a.mark_retry(first.id, retry_at, 0, "timeout: no answer")

        await eventually(lambda: len(heard) == 3, what="b told of the event given back")
        assert await b.next_attempt_at() == retry_at

    async def test_a_finished_event_wakes_the_others_for_the_event_behind_it(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A trigger recorded (delivered or dead) lets its resolve go: every replica is
        told, so that the resolve does not wait for a lease that no longer matters. An
        event with nothing behind it tells nobody."""
        heard: list[int] = []
        a = await stores("replica-a")
        b = await stores("replica-b", listen=heard.append)
        await eventually(lambda: heard == [0], what="b listening")
        opened, closed = open_and_resolve(config)
        await a.commit(opened)
        await a.commit(closed)
        await eventually(lambda: heard == [0, 1, 2], what="b heard both commits")
        later = NOW + timedelta(hours=1)
        first, second, *_ = await a.due_events(later, 100)

        await a.mark_delivered(first.id, later, DELIVERED, 202)
        await eventually(lambda: len(heard) == 4, what="b told of the resolve let go")
        await a.mark_dead(second.id, later, 400, "client_error: refused")
        await eventually(lambda: len(heard) == 5, what="b told of the other resolve")
        resolves = await b.due_events(later, 100)
        assert sorted(e.dedup_key for e in resolves) == sorted([first.dedup_key,
                                                                 second.dedup_key])
        await b.record([Attempt(e.id, DELIVERED, later, 202) for e in resolves])
        await a.commit(chain(config, *unrelated_alerts(1))[0])  # heard as version 3

        await eventually(lambda: heard[-1:] == [3], what="the next commit")
        assert len(heard) == 6, heard  # the resolves had nothing behind them

    async def test_an_outcome_ends_the_lease(self, stores: StoreFactory, config: Config) -> None:
        """A retry recorded by the lease holder is due for any replica at its time."""
        a, b = await stores("replica-a"), await stores("replica-b")
        await a.commit(decide(webhook(db_alert()), config, State(), NOW))
        first, *_ = await a.due_events(NOW, 10)

        await a.mark_retry(first.id, NOW + timedelta(seconds=1), 503, "busy")

        assert first.id in {e.id for e in await b.due_events(NOW + timedelta(seconds=2), 10)}

    async def test_an_outcome_after_another_replica_finished_the_event_is_ignored(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A replica whose lease ran out while it sent reports too late: the event stays
        as the replica that took it over recorded it, without the late note."""
        a, b = await stores("replica-a"), await stores("replica-b")
        opened = decide(webhook(db_alert()), config, State(), NOW)
        await a.commit(opened)
        (slow, *_) = await a.due_events(NOW, 1)
        later = NOW + timedelta(seconds=LEASE + 1)
        (again,) = await b.due_events(later, 1)
        assert again.id == slow.id
        await b.mark_delivered(again.id, later, DELIVERED, 202)

        await a.record([Attempt(slow.id, DEAD, later, 400, "client_error", note="refused")])

        (row,) = [e for e in await a.list_events(None, 10) if e.id == slow.id]
        assert (row.state, row.attempts) == (DELIVERED, 1)
        incident = await a.get_incident(opened.incidents[0].id)
        assert incident is not None
        assert DELIVERY_FAILED not in [n["kind"] for n in incident["timeline"]]

    async def test_only_the_head_of_a_dedup_key_is_due(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A resolve waits behind its pending trigger, whoever holds the trigger's lease."""
        a, b = await stores("replica-a"), await stores("replica-b")
        opened, closed = open_and_resolve(config)
        await a.commit(opened)
        await a.commit(closed)
        later = NOW + timedelta(hours=1)

        triggers = await a.due_events(later, 100)
        assert sorted(e.action for e in triggers) == [TRIGGER] * 4
        assert await b.due_events(later, 100) == []  # the resolves wait behind a's triggers

        await a.mark_delivered(triggers[0].id, later, DELIVERED, 202)
        (resolve,) = await b.due_events(later, 100)
        assert (resolve.action, resolve.dedup_key) == (RESOLVE, triggers[0].dedup_key)

    async def test_skipped_keys_and_urgency(self, pg: PostgresStore, config: Config) -> None:
        """Skipped keys are neither handed out nor awaited; the most urgent event first."""
        quiet = db_alert("nowhere", "Lonely", "info")
        loud = db_alert("nowhere-else", "Fire", "critical")
        await pg.commit(decide(webhook(quiet), config, State(), NOW))
        await pg.commit(decide(webhook(loud), config, State(), NOW))
        critical, info = await pg.list_events(None, 2)  # newest first
        assert critical.body["payload"]["severity"] == "critical"

        (first,) = await pg.due_events(NOW, 1)
        skipped = await pg.due_events(NOW, 10, skip_routing_keys=[critical.routing_key],
                                      skip_dedup_keys=[info.dedup_key])

        assert first.id == critical.id
        assert skipped == []
        assert await pg.next_attempt_at(skip_dedup_keys=[info.dedup_key, critical.dedup_key]
                                        ) is None


async def eventually(check: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """Wait until `check()` holds; fail the test after `timeout` seconds."""
    async def holds() -> bool:
        return check()
    await wait_until(holds, timeout, what)


# ---------------------------------------------------------------------------- listening


class TestListen:
    async def test_hears_another_replicas_commit(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """The version of every commit, by any replica; the current one on connecting."""
        heard: list[int] = []
        await stores("replica-a", listen=heard.append)
        b = await stores("replica-b")
        await eventually(lambda: heard == [0], what="the version on connecting")

        await b.commit(decide(webhook(db_alert()), config, State(), NOW))

        await eventually(lambda: heard == [0, 1], what="b's commit")

    async def test_hears_the_current_version_after_reconnecting(
        self, stores: StoreFactory, sql: Any, config: Config
    ) -> None:
        """A listener whose connection is killed reconnects and reports the version it
        missed, then hears commits again."""
        heard: list[int] = []
        await stores("replica-a", listen=heard.append)
        b = await stores("replica-b")
        await eventually(lambda: heard == [0], what="the version on connecting")
        killed = await sql.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'firehouse-listen replica-a'")
        assert killed == 1
        await asyncio.sleep(0.3)  # the listener waits a second before reconnecting

        first, second = chain(config, *unrelated_alerts(2))
        await b.commit(first)  # nobody listens: missed
        await eventually(lambda: heard == [0, 1], timeout=5, what="the reconnection")
        await b.commit(second)

        await eventually(lambda: heard == [0, 1, 2], what="a commit after reconnecting")


# ------------------------------------------------------------------------------ outages


class Proxy:
    """A TCP relay to the test server, to take PostgreSQL away and bring it back, or to
    make it hang: `freeze()` holds every byte either way (connections stay open, new ones
    are accepted, nothing is answered) until `thaw()`."""

    def __init__(self, port: int, dsn: str) -> None:
        parts = urlsplit(dsn)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def freeze(self) -> None:
        """Hang: hold every byte until `thaw()`."""
        self.flowing.clear()

    def thaw(self) -> None:
        """Pass the bytes held, and the next ones, again."""
        self.flowing.set()

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer, self.flowing),
                                 _pipe(up_reader, writer, self.flowing))
        finally:
            for w in (writer, up_writer):
                self.writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                flowing: asyncio.Event) -> None:
    try:
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


def through(port: int, dsn: str) -> str:
    """`dsn` with the server replaced by 127.0.0.1:`port`."""
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user + '@' if user else ''}127.0.0.1:{port}"))


class TestOutage:
    async def test_an_unreachable_server_fails_open_at_once_naming_it(self) -> None:
        """Nothing listening: open() raises StoreError naming host and port, not the
        password, well within the connect timeout."""
        port = free_port()
        store = PostgresStore(f"postgresql://firehouse:s3cret@127.0.0.1:{port}/firehouse")
        started = time.monotonic()

        with pytest.raises(StoreError) as caught:
            await store.open()

        assert time.monotonic() - started < CONNECT_TIMEOUT
        assert f"postgresql://firehouse@127.0.0.1:{port}/firehouse: connecting:" in str(
            caught.value)
        assert "s3cret" not in str(caught.value)
        await store.close()

    async def test_writes_fail_fast_while_the_server_is_away_and_a_probe_recovers(
        self, dsn: str, stores: StoreFactory, config: Config
    ) -> None:
        """With PostgreSQL gone, commit, record and reads raise StoreError within
        seconds and the store reports unhealthy; once it is back a probe makes it healthy."""
        proxy = Proxy(free_port(), dsn)
        await proxy.start()
        store = await stores(url=through(proxy.port, dsn))
        first, second = chain(config, *unrelated_alerts(2))
        await store.commit(first)
        (event,) = await store.due_events(NOW, 10)

        await proxy.stop()
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"127.0.0.1:{proxy.port}"):
            await store.commit(second)
        assert not store.healthy
        with pytest.raises(StoreError):
            await store.record([Attempt(event.id, DELIVERED, NOW, 202)])
        with pytest.raises(StoreError):
            await store.load_state(NOW, DAY)
        with pytest.raises(StoreError):
            await store.probe(NOW)
        assert time.monotonic() - started < 2 * CONNECT_TIMEOUT
        assert not store.healthy

        await proxy.start()
        await store.probe(NOW)
        assert store.healthy
        await store.commit(second)
        assert len((await store.load_state(NOW, DAY)).open) == 2
        await store.close()
        await proxy.stop()


# ------------------------------------------------------------------------------- import


async def sqlite_file(path: Path, config: Config) -> SqliteStore:
    """A SQLite store with incidents open and resolved, a merged one, changes, and outbox
    rows delivered, dead and pending; returned open."""
    store = SqliteStore(path)
    await store.open()
    opened, closed = open_and_resolve(config)
    await store.commit(opened)
    a, b, *_ = await store.due_events(NOW, 10)
    await store.record([Attempt(a.id, DELIVERED, NOW, 202),
                        Attempt(b.id, DEAD, NOW, 400, "client_error", note="refused")])
    await store.commit(closed)
    for decision in chain(config, *unrelated_alerts(3)):
        await store.commit(decision)
    await store.commit(changes())
    return store


class TestImport:
    async def test_a_moved_file_is_marked_and_a_replica_warns_of_an_unmoved_one(
        self, tmp_path: Path, stores: StoreFactory, config: Config
    ) -> None:
        """Before the move, a replica starting beside the file is told it holds open
        incidents PostgreSQL lacks; the move marks the file, and SQLite refuses to open it."""
        path = tmp_path / "state.db"
        await (await sqlite_file(path, config)).close()
        opened = len((await _reopened_state(path)).open)
        assert opened > 0

        assert unmoved_incidents(path) == opened
        await import_sqlite(path, await stores())

        assert unmoved_incidents(path) == 0
        with pytest.raises(StoreError, match="was moved to postgresql://"):
            await SqliteStore(path).open()

    @pytest.mark.parametrize("used", [False, True], ids=["fresh database", "used database"])
    async def test_the_warning_about_an_unmoved_file_gives_advice_that_works(
        self, tmp_path: Path, dsn: str, pg: PostgresStore, config: Config,
        caplog: pytest.LogCaptureFixture, used: bool
    ) -> None:
        """A replica started beside a SQLite file with open incidents warns of them. On a
        database no Firehouse has used, it says to run `firehouse migrate --from-sqlite`,
        which then works; on one that holds incidents already, that command would be
        refused: the warning says the file cannot be imported there, and what to do
        instead (resolve the pages in PagerDuty by hand, naming the incidents, or import
        into a fresh database)."""
        path = tmp_path / "state.db"
        await (await sqlite_file(path, config)).close()
        opened = sorted((await _reopened_state(path)).open)
        if used:
            await pg.commit(decide(webhook(db_alert("legacy-99", "Elsewhere")), config,
                                   State(), NOW))
        env = config_env(state=path, database_url=dsn, listen="127.0.0.1:0",
                         pagerduty_url=f"http://127.0.0.1:{free_port()}")
        firehouse = Firehouse(load_config(SETTINGS, env=env), SETTINGS, env=env)
        with caplog.at_level(logging.WARNING, logger="firehouse"):
            await firehouse.start()
            await firehouse.stop()

        (warning,) = [r.getMessage() for r in caplog.records
                      if r.getMessage().startswith(f"the SQLite state file {path}")]
        assert f"holds {len(opened)} open incident(s)" in warning
        if not used:
            assert f"run `firehouse migrate --from-sqlite {path}`" in warning
            counts = await import_sqlite(path, pg)
            assert counts["incidents"] > 0
            return
        assert "cannot be imported into it" in warning
        assert "already holds incidents" in warning
        assert "run `firehouse migrate --from-sqlite" not in warning
        assert "resolve them there by hand" in warning
        assert "fresh database" in warning
        assert all(ident in warning for ident in opened), (opened, warning)
        with pytest.raises(StoreError, match="already holds incidents rows"):
            await import_sqlite(path, pg)

    async def test_a_sqlite_file_moves_over_whole(
        self, tmp_path: Path, stores: StoreFactory, config: Config
    ) -> None:
        """Everything is copied: the engine state, the API's view, the outbox with its ids
        and states (pending events deliverable); replicas running hear of it."""
        path = tmp_path / "state.db"
        source = await sqlite_file(path, config)
        ids = [i["id"] for i in await source.list_incidents(None, 10)]
        expected = [await state_view(source), await api_view(source, ids)]
        due = await source.due_events(NOW + timedelta(hours=1), 50)
        await source.close()
        with sqlite3.connect(path) as conn:
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("incidents", "alerts", "resolutions", "timeline", "outbox",
                              "changes")}
        conn.close()
        heard: list[int] = []
        replica = await stores("replica-b", listen=heard.append)
        target = await stores()

        counts = await import_sqlite(path, target)

        assert counts == rows
        assert [await state_view(target), await api_view(target, ids)] == expected
        assert await target.due_events(NOW + timedelta(hours=1), 50) == due
        assert {i.id for i in (await replica.delta(0)).incidents} == set(ids)
        await eventually(lambda: heard[-1:] == [1], what="replicas told of the import")
        await target.commit(decide(webhook(db_alert("legacy-77", "New")), config, State(), NOW))
        newest = (await target.list_events(None, 1))[0]
        assert newest.id == rows["outbox"] + 1

    async def test_a_database_already_deciding_is_refused_unchanged(
        self, tmp_path: Path, pg: PostgresStore, config: Config
    ) -> None:
        """A target holding incidents or outbox events is not imported into."""
        await (await sqlite_file(tmp_path / "state.db", config)).close()
        await pg.commit(decide(webhook(db_alert()), config, State(), NOW))
        before = [await version_of(pg), await pg.outbox_counts(),
                  await pg.list_incidents(None, 10)]

        with pytest.raises(StoreError, match="already holds incidents rows"):
            await import_sqlite(tmp_path / "state.db", pg)

        assert [await version_of(pg), await pg.outbox_counts(),
                await pg.list_incidents(None, 10)] == before

    async def test_resolutions_and_changes_a_fresh_database_took_are_merged(
        self, tmp_path: Path, pg: PostgresStore, config: Config
    ) -> None:
        """A resolved notification of an unknown alert and a change posted before the
        import do not stop it."""
        await (await sqlite_file(tmp_path / "state.db", config)).close()
        await pg.commit(decide(webhook(resolved(db_alert("legacy-5", "Gone"))), config,
                               State(), NOW))
        await pg.commit(changes())

        counts = await import_sqlite(tmp_path / "state.db", pg)

        assert counts["changes"] == 0  # the same changes: already there
        assert len((await pg.load_state(NOW, DAY)).resolved) == counts["resolutions"] + 1

    @pytest.mark.parametrize("kind", ["garbage", "other sqlite", "newer firehouse"])
    async def test_a_file_that_is_not_a_firehouse_database_is_refused(
        self, tmp_path: Path, pg: PostgresStore, config: Config, kind: str
    ) -> None:
        """Not a database, another application's, or a newer Firehouse's: refused."""
        path = tmp_path / "state.db"
        if kind == "garbage":
            path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
        elif kind == "other sqlite":
            with sqlite3.connect(path) as conn:
                conn.execute("CREATE TABLE things (x)")
            conn.close()
        else:
            await (await sqlite_file(path, config)).close()
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            conn.close()

        with pytest.raises(StoreError, match="newer than this Firehouse" if kind ==
                           "newer firehouse" else "is not a Firehouse state database"):
            await import_sqlite(path, pg)

        assert await pg.outbox_counts() == {}
        assert await version_of(pg) == 0


# ---------------------------------------------------------------------------------- DSN


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://fh:s3cret@db.example:5432/firehouse?search_path=fh",
     "postgresql://fh@db.example:5432/firehouse?search_path=fh"),
    ("postgres://fh@h1:5432,h2:5433/db?password=s3cret&sslmode=require",
     "postgres://fh@h1:5432,h2:5433/db?sslmode=require"),
    ("postgresql://:s3cret@/db?host=/run/postgresql", "postgresql:///db?host=%2Frun%2Fpostgresql"),
    ("host=db password=s3cret", "(a PostgreSQL DSN that is not a postgresql:// URL)"),
])
def test_describe_dsn_never_shows_a_password(dsn: str, shown: str) -> None:
    assert describe_dsn(dsn) == shown
    assert "s3cret" not in json.dumps(describe_dsn(dsn))


# ------------------------------------------------------------- dispatchers as replicas


class TestReplicatedDispatch:
    """Two `Dispatcher`s, each on a store of its own on one schema: two replicas' engines."""

    async def test_one_fire_at_two_replicas_at_once_is_one_incident(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """Webhooks for one fire split over two replicas, all in flight together, open one
        incident and trigger each target once (with one dedup key)."""
        replicas = []
        for owner in ("replica-a", "replica-b"):
            dispatcher = Dispatcher(await stores(owner), config, Metrics(), lambda: NOW,
                                    lambda _: None)
            await dispatcher.load()
            replicas.append(dispatcher)
        alerts = [db_alert(name=f"PostgresDown{n}") for n in range(6)]
        alerts += [db_alert(service="payments", name=f"PaymentsErrors{n}") for n in range(6)]

        decisions = await asyncio.gather(*(
            replicas[n % 2].handle(webhook(item)) for n, item in enumerate(alerts)))

        state = await (await stores("reader")).load_state(NOW, DAY)
        assert len(state.open) == 1
        triggers = [(e.target, e.dedup_key) for d in decisions for e in d.events
                    if e.action == TRIGGER]
        assert len(triggers) == len(set(triggers))
        assert len({target for target, _ in triggers}) == len(triggers)
        assert {d.incidents[0].id for d in decisions if d.incidents} == set(state.open)

    async def test_a_replica_hears_what_another_decided(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A commit at one replica reaches the other's state and commit callback (which
        gives the clock its deadlines) through the notification, without a webhook there."""
        heard: list[Decision] = []
        first = Dispatcher(await stores("replica-a"), config, Metrics(), lambda: NOW,
                           lambda _: None)
        second_store = await stores("replica-b", open=False)
        second = Dispatcher(second_store, config, Metrics(), lambda: NOW, heard.append)
        second_store.listen(second.notified)
        await second_store.open()
        await first.load()
        await second.load()

        opened = await first.handle(webhook(db_alert()))

        incident = opened.incidents[0]

        async def caught_up() -> bool:
            return incident.id in second.state.open

        await wait_until(caught_up, 10, "the second replica's catch-up")
        assert second.version == first.version
        assert [i.id for d in heard for i in d.incidents] == [incident.id]
        assert second.state.open[incident.id].deadlines == incident.deadlines
        # What it learnt counts as its state: a repeat at the second replica pages no one.
        assert (await second.handle(webhook(db_alert()))).events == ()


    @pytest.mark.parametrize(("max_batch", "seconds", "transactions"),
                             [(64, 60.0, 1), (2, 60.0, 3), (64, 0.0, 5)])
    async def test_a_batch_under_the_lock_is_bounded_in_size_and_time(
        self, stores: StoreFactory, config: Config, monkeypatch: pytest.MonkeyPatch,
        max_batch: int, seconds: float, transactions: int,
    ) -> None:
        """Inputs waiting together are decided in one transaction under the cluster-wide
        lock, but no more than MAX_BATCH of them, and none more once deciding has taken
        BATCH_SECONDS (the other replicas wait for that lock): the rest go in the next
        transactions, first, every one decided once and stored."""
        monkeypatch.setattr(dispatch_module, "MAX_BATCH", max_batch)
        monkeypatch.setattr(dispatch_module, "BATCH_SECONDS", seconds)
        store = await stores()
        dispatcher = Dispatcher(store, config, Metrics(), lambda: NOW, lambda _: None)
        await dispatcher.load()
        alerts = unrelated_alerts(5)

        decisions = await asyncio.gather(*(dispatcher.handle(webhook(a)) for a in alerts))

        assert await version_of(store) == dispatcher.version == transactions
        opened = [i.id for d in decisions for i in d.incidents]
        assert len(opened) == len(set(opened)) == 5
        assert set((await store.load_state(NOW, DAY)).open) == set(opened)

    async def test_no_catch_up_before_the_state_is_loaded(
        self, stores: StoreFactory, config: Config
    ) -> None:
        """A notification heard while the state is still loading starts no catch-up (from
        version 0 it would read every incident ever written); once loaded, a version newer
        than the loaded one is caught up with."""
        first = Dispatcher(await stores("replica-a"), config, Metrics(), lambda: NOW,
                           lambda _: None)
        await first.load()
        await first.handle(webhook(db_alert()))
        second = Dispatcher(await stores("replica-b"), config, Metrics(), lambda: NOW,
                            lambda _: None)

        second.notified(first.version)
        assert second._catching_up is None
        await second.load()
        assert second.version == first.version
        assert second._catching_up is None  # current already: nothing to read
        second.notified(first.version + 1)  # another commit since
        assert second._catching_up is not None
        await second._catching_up


async def _reopened_state(path: Path) -> State:
    store = SqliteStore(path)
    await store.open()
    try:
        return await store.load_state(NOW, DAY)
    finally:
        await store.close()
