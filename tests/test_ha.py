"""High availability: several real ``firehouse run`` replicas on one PostgreSQL schema.

The README's "High availability: several replicas on PostgreSQL" promises: any replica takes
any webhook, and webhooks of one fire at two replicas at once make one incident and one set
of pages; a replica killed -9 loses nothing (what it answered is in PostgreSQL, what it had
claimed is sent by another replica once its lease runs out) and doubles nothing (except an
event it had sent but not recorded, which PagerDuty deduplicates); each clock deadline
escalates once; a PostgreSQL outage turns readiness and webhooks to 503 and, once the
database is back, delivery resumes; several replicas may migrate an empty schema at once.

Each test gets a schema of its own in the ``test`` database (``search_path`` in the DSN),
dropped afterwards, and its own dependency map and rules. Between each replica and the
PagerDuty stand-in sits a `Relay`, which records which replica sent what and can withhold
PagerDuty's answers from a replica (so that it is killed with events sent but not recorded).
The test plays Alertmanager and the load balancer: a webhook not answered ``200`` is sent
again, at the next replica.

The outage test stops the machine's PostgreSQL cluster for a few seconds (and always starts
it again); it needs root (``pg_ctlcluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp import web

from daemon.store.pgsql import MIGRATIONS
from tests.conftest import FirehouseFactory
from tests.helpers import alert, resolved, webhook_json
from tests.pagerduty_standin import EVENT_PATH, HUNG, PagerDutyStandIn
from tests.procs import REQUIRE_E2E_ENV, FirehouseProcess, free_port

pytestmark = pytest.mark.e2e

# The server the HA tests use (as the shared fixtures: FIREHOUSE_TEST_POSTGRES); the outage
# test stops the local cluster PG_CLUSTER, so it runs only when that is the server used.
PG_DSN = os.environ.get("FIREHOUSE_TEST_POSTGRES") or "postgresql://postgres@127.0.0.1:5432/test"
# The machine's cluster (Debian's layout: /etc/postgresql/<version>/main), newest version.
PG_CLUSTER = (max(os.listdir("/etc/postgresql"), key=float, default="15")
              if os.path.isdir("/etc/postgresql") else "15", "main")
LEASE = 5.0  # database.lease_seconds: the minimum
PD_TIMEOUT = 2.0  # pagerduty.timeout_seconds: below the lease, as the README asks
POST_TIMEOUT = 8.0  # per webhook POST; Alertmanager gives about 10 s
DELIVERY_TIMEOUT = 40.0  # a lease (5 s) plus a few backoff rounds
READY_AFTER_OUTAGE = 6.5  # README: /-/ready answers 503 within 5 s of the database going away
OUTAGE_POST_TIMEOUT = 5.0  # keeps the outage short: PostgreSQL is shared with other tests

Key = tuple[str, str]  # (routing_key, dedup_key)
EventId = tuple[str, str, str]  # (event_action, routing_key, dedup_key)
Notification = dict[str, Any]


# --------------------------------------------------------------------------- PostgreSQL


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_E2E_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_E2E_ENV}=1 requires it", pytrace=False)
    pytest.skip(reason)


async def _connect(dsn: str = PG_DSN) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=5)


@pytest.fixture
def backend() -> str:
    """These tests are about PostgreSQL alone: not parametrised over the store backends."""
    return "postgres"


@pytest.fixture
def database_urls() -> Callable[[], str]:
    """The ``firehouse`` factory's store per process is not used: every replica here is
    given the test's one shared schema (``pg_schema``) in its settings."""
    return lambda: ""


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh, empty schema in the test database: the DSN of a store living in it.

    List it BEFORE ``firehouse`` in a test's arguments: fixtures are torn down in reverse,
    so the replicas are stopped before the schema is dropped."""
    name = f"ha_{uuid.uuid4().hex[:12]}"
    try:
        conn = await _connect()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(f"PostgreSQL not reachable at {PG_DSN}: {exc!r}")
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    try:
        yield f"{PG_DSN}?search_path={name}"
    finally:
        for attempt in range(10):  # PostgreSQL may be coming back from the outage test
            try:
                conn = await _connect()
                try:
                    await conn.execute("SET lock_timeout = '10s'")
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                finally:
                    await conn.close()
                break
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if attempt == 9:
                    raise
                await asyncio.sleep(1.0)


async def outbox_doubles(dsn: str) -> dict[tuple[str, str], int]:
    """(action, dedup key) of the events the database's outbox holds more than once."""
    rows = await db_rows(
        dsn, "SELECT action, dedup_key, count(*) AS n FROM outbox GROUP BY action, dedup_key"
    )
    return {(r["action"], r["dedup_key"]): r["n"] for r in rows if r["n"] != 1}


async def db_rows(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _pg_ctl(action: str) -> list[str]:
    return ["pg_ctlcluster", "--skip-systemctl-redirect", *PG_CLUSTER, action]


async def pg_ctl(action: str) -> None:
    """Stop or start the PostgreSQL cluster (without blocking the stand-ins' event loop)."""
    proc = await asyncio.create_subprocess_exec(
        *_pg_ctl(action), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    # start: 2 = already running; stop: 2 = not running. Both are what we wanted.
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"pg_ctlcluster {action} exited {proc.returncode}: {out.decode()}")


async def pg_start_surely() -> None:
    """Start the cluster, retrying: other engineers' tests share it."""
    for attempt in range(5):
        try:
            await pg_ctl("start")
            conn = await _connect()
        except (OSError, RuntimeError, asyncpg.PostgresError, TimeoutError):
            if attempt == 4:
                raise
            await asyncio.sleep(1.0)
        else:
            await conn.close()
            return


# --------------------------------------------------------------------------- the relay


@dataclass(frozen=True)
class Sent:
    """One event a replica sent, as the relay forwarded it to the stand-in."""

    replica: str
    event: EventId
    at: float  # time.monotonic() when forwarded
    status: int  # what the stand-in answered
    withheld: bool  # the answer was never given to the replica


class Relay:
    """A tiny HTTP relay between one replica and the PagerDuty stand-in.

    It forwards every request and passes the answer back, recording who sent what; with
    ``withhold = True`` it still forwards (PagerDuty gets the event) but never answers the
    replica: the replica has sent an event it cannot record as delivered."""

    def __init__(self, name: str, upstream: str) -> None:
        self.name = name
        self.upstream = upstream
        self.withhold = False
        self.sent: list[Sent] = []
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        for _ in range(3):
            port = free_port()
            try:
                await web.TCPSite(runner, "127.0.0.1", port).start()
            except OSError:
                continue
            self.port = port
            break
        else:
            raise RuntimeError("relay: no free port")
        self._runner = runner

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def withheld(self) -> list[Sent]:
        return [s for s in self.sent if s.withheld]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        at = time.monotonic()
        withhold = self.withhold
        async with self._session.post(
            self.upstream + request.path,
            data=raw,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as answer:
            body = await answer.read()
            status = answer.status
            headers = {k: v for k, v in answer.headers.items() if k in ("Retry-After",)}
        event: EventId = ("?", "?", "?")
        with contextlib.suppress(ValueError, TypeError, KeyError):
            parsed = json.loads(raw)
            event = (parsed["event_action"], parsed["routing_key"], parsed["dedup_key"])
        if request.path == EVENT_PATH:
            self.sent.append(Sent(self.name, event, at, status, withhold))
        if withhold:
            await self._released.wait()  # until the test ends: the replica is killed first
            return web.Response(status=503)
        return web.Response(
            status=status, body=body, headers={**headers, "Content-Type": "application/json"}
        )


RelayFactory = Callable[[str], Awaitable[Relay]]


@pytest.fixture
async def relays(pagerduty: PagerDutyStandIn) -> AsyncIterator[RelayFactory]:
    """``await relays(name)``: a started relay to the stand-in (list before ``firehouse``)."""
    started: list[Relay] = []

    async def start(name: str) -> Relay:
        relay = Relay(name, pagerduty.url)
        await relay.start()
        started.append(relay)
        return relay

    try:
        yield start
    finally:
        for relay in started:
            await relay.stop()


# --------------------------------------------------------------------------- settings


def ha_settings(
    dsn: str,
    directory: Path,
    pagerduty_url: str,
    services: Mapping[str, Any],
    *,
    ack_within: str = "1h",
) -> dict[str, Any]:
    """Settings of a replica: the shared schema, a short lease, the test's own map (only
    ``services``) and one rule paging the technical lead and the incident lead, escalating
    to senior management when not acknowledged ``ack_within``; no flap damping."""
    directory.mkdir(parents=True, exist_ok=True)
    map_path = directory / "ha-map.yaml"
    rules_path = directory / "ha-rules.yaml"
    map_path.write_text(yaml.safe_dump({"services": dict(services)}), encoding="utf-8")
    rules = {
        "rules": [
            {
                "name": "ha drill: call the fire department",
                "page": ["technical_lead", "incident_lead"],
                "clock": {"ack_within": ack_within, "escalate_to": ["senior_management"]},
            }
        ]
    }
    rules_path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return {
        "database": {"url": dsn, "lease_seconds": LEASE},
        "rules": [str(rules_path)],
        "dependency_maps": [str(map_path)],
        "incidents": {"flap_damping_seconds": 0},
        "pagerduty": {"url": pagerduty_url, "timeout_seconds": PD_TIMEOUT},
    }


async def configured(
    relays: RelayFactory,
    firehouse: FirehouseFactory,
    dsn: str,
    tmp_path: Path,
    services: Mapping[str, Any],
    names: Sequence[str],
    **settings: Any,
) -> tuple[list[FirehouseProcess], list[Relay]]:
    """One replica per name on the shared schema, each behind a relay of that name,
    configured but not started (the tests start them together)."""
    relay_list = [await relays(name) for name in names]
    replicas = [
        await firehouse(settings=ha_settings(dsn, tmp_path / "ha", relay.url, services,
                                             **settings), start=False)
        for relay in relay_list
    ]
    return replicas, relay_list


def fire_services(fire: str) -> dict[str, Any]:
    """A fire of its own on the map: a database and the application that depends on it
    (connected, so their alerts make one incident), connected to nothing else."""
    return {
        f"ha-{fire}-db": {"tier": 2, "component": "dbms",
                          "owners": {"technical_lead": "dba-oncall"}},
        f"ha-{fire}-app": {"tier": 2, "component": "application",
                           "owners": {"technical_lead": "shop-app-oncall"},
                           "depends_on": [f"ha-{fire}-db"]},
    }


FIRE_TARGETS = ("command-center", "dba-oncall", "shop-app-oncall")  # technical + incident lead


def fire_alerts(fire: str, started: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fire's two alerts (database, application), both critical: the severity, and so
    the dedup keys, do not depend on the order the alerts arrive in."""
    return tuple(  # type: ignore[return-value]
        alert(
            {"alertname": f"HaDrill{part.title()}Down", "service": f"ha-{fire}-{part}",
             "severity": "critical", "fire": fire},
            starts_at=started,
            annotations={"summary": f"{part} of fire {fire} is down"},
        )
        for part in ("db", "app")
    )


# --------------------------------------------------------------------------- HTTP


async def post(
    session: aiohttp.ClientSession,
    fh: FirehouseProcess,
    body: Notification,
    timeout: float = POST_TIMEOUT,
) -> int:
    """POST one notification as Alertmanager does; 0 when nothing answered."""
    return await fh.notify(session, body, timeout)


async def send_balanced(
    session: aiohttp.ClientSession,
    replicas: Sequence[FirehouseProcess],
    first: int,
    body: Notification,
    timeout: float = 30.0,
) -> list[tuple[int, int]]:
    """Send a notification to ``replicas[first]``; whatever is not answered 200 is sent to the
    next replica, and so on round the ring (a load balancer, Alertmanager's retries).
    Returns the (replica index, status) of every attempt; fails on a 4xx or after ``timeout``."""
    attempts: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    index = first
    while True:
        status = await post(session, replicas[index % len(replicas)], body)
        attempts.append((index % len(replicas), status))
        if status == 200:
            return attempts
        if 400 <= status < 500 or time.monotonic() > deadline:
            raise AssertionError(f"notification not accepted: attempts {attempts}\n{body}")
        index += 1
        if index % len(replicas) == first % len(replicas):
            await asyncio.sleep(0.2)  # a whole round failed: back off a little


async def get_json(fh: FirehouseProcess, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as session,
        session.get(fh.url + path) as response,
    ):
        text = await response.text()
        assert response.status == 200, (fh.url + path, response.status, text)
        return await response.json()


async def ready_status(fh: FirehouseProcess) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(fh.url + "/-/ready") as response,
        ):
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return 0


async def incidents(fh: FirehouseProcess) -> list[dict[str, Any]]:
    """Every incident the replica's API knows, in detail (alerts, pages, clock, timeline)."""
    listing = await get_json(fh, "/api/v1/incidents?limit=1000")
    return [await get_json(fh, f"/api/v1/incidents/{i['id']}") for i in listing["incidents"]]


async def outbox_counts(fh: FirehouseProcess) -> dict[str, int]:
    counts: dict[str, int] = (await get_json(fh, "/api/v1/outbox?limit=1"))["counts"]
    return counts


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what()}")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- PagerDuty's view


def accepted(pd: PagerDutyStandIn, action: str) -> list[Key]:
    """(routing_key, dedup_key) of every accepted event with this action, in order."""
    return [(b["routing_key"], b["dedup_key"]) for b in pd.events if b["event_action"] == action]


def assert_opened_once(pd: PagerDutyStandIn, expected: set[Key]) -> None:
    """Valid requests only; exactly the expected keys were opened, each exactly once."""
    assert pd.invalid == [], pd.dump()
    opened = pd.incidents_opened
    twice = {key: n for key, n in opened.items() if n != 1}
    assert not twice, f"opened more than once: {twice}\n{pd.dump()}"
    assert set(opened) == expected, (
        f"missing: {expected - set(opened)}\nunexpected: {set(opened) - expected}\n{pd.dump()}"
    )


def page_keys(fh: FirehouseProcess, incident: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """The incident's pages by (routing_key, dedup_key)."""
    return {(fh.key(p["target"]), p["dedup_key"]): p for p in incident["pages"]}


# --------------------------------------------------------------------------- tests


async def test_one_fire_hammered_at_two_replicas_is_one_incident_paged_once(
    pg_schema: str,
    relays: RelayFactory,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """50 notifications of one fire (the same alerts again and again, and alerts of three
    connected services), all at once, half at each of two replicas on one schema: both
    replicas and the database know exactly one incident, with all three alerts, and
    PagerDuty gets one trigger per target (four), each received and opened once."""
    services = {
        "ha-db": {"tier": 2, "component": "dbms", "owners": {"technical_lead": "dba-oncall"}},
        "ha-api": {"tier": 2, "component": "application",
                   "owners": {"technical_lead": "shop-app-oncall"}, "depends_on": ["ha-db"]},
        "ha-web": {"tier": 2, "component": "application",
                   "owners": {"technical_lead": "identity-oncall"}, "depends_on": ["ha-api"]},
    }
    replicas, _ = await configured(relays, firehouse, pg_schema, tmp_path, services, "ab")
    await asyncio.gather(*(r.start() for r in replicas))

    started = datetime.now(UTC) - timedelta(seconds=30)
    alerts = [
        alert({"alertname": f"HaDown{i}", "service": service, "severity": "critical"},
              starts_at=started)
        for i, service in enumerate(services)
    ]
    bodies = [
        webhook_json(*alerts) if i % 5 == 4 else webhook_json(alerts[i % len(alerts)])
        for i in range(50)
    ]
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(
            *(post(session, replicas[i % 2], body) for i, body in enumerate(bodies))
        )
    assert statuses == [200] * len(bodies), (
        f"statuses {Counter(statuses)}\n{replicas[0].logs()}\n{replicas[1].logs()}"
    )

    targets = {"command-center", "dba-oncall", "identity-oncall", "shop-app-oncall"}
    await pagerduty.wait_for_count(len(targets), DELIVERY_TIMEOUT)

    async def settled() -> bool:
        counts = [await outbox_counts(r) for r in replicas]
        return all(c.get("pending", 0) == 0 for c in counts)

    await eventually(settled, DELIVERY_TIMEOUT, pagerduty.dump)
    await asyncio.sleep(1.0)  # time for a wrongly doubled event to show up

    seen = [await incidents(r) for r in replicas]
    for replica, found in zip(replicas, seen, strict=True):
        assert len(found) == 1, (replica.url, [(i["id"], i["status"]) for i in found])
        (incident,) = found
        assert incident["status"] == "open", incident["status"]
        fingerprints = {a["fingerprint"] for a in incident["alerts"]}
        assert len(fingerprints) == len(alerts), incident["alerts"]
        assert sorted(p["target"] for p in incident["pages"]) == sorted(targets), (
            incident["pages"]
        )
    assert seen[0][0]["id"] == seen[1][0]["id"]
    incident_id = seen[0][0]["id"]

    (row,) = await db_rows(pg_schema, "SELECT count(*) AS n FROM incidents")
    assert row["n"] == 1, f"the database holds {row['n']} incidents"
    assert await outbox_doubles(pg_schema) == {}

    fh = replicas[0]
    expected = {(fh.key(t), f"firehouse/{incident_id}/{t}/critical") for t in targets}
    triggers = Counter(accepted(pagerduty, "trigger"))
    assert set(triggers) == expected, pagerduty.dump()
    assert set(triggers.values()) == {1}, f"a trigger was received twice:\n{pagerduty.dump()}"
    assert_opened_once(pagerduty, expected)
    assert accepted(pagerduty, "resolve") == []
    assert {r.status for r in pagerduty.received} == {202}  # nothing refused or retried


async def test_kill9_of_one_of_three_replicas_loses_no_page_and_doubles_none(
    pg_schema: str,
    relays: RelayFactory,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """Three replicas, a 5 s lease and a 3 s acknowledgement deadline. Eight separate fires
    (two alerts each) are sent round-robin over the replicas; half-way, the victim's
    PagerDuty answers are withheld and, as soon as it has sent an event it could not record
    (or three quarters in, if the others claimed every event meanwhile), it is killed -9;
    what it does not answer goes to the next replica. Once every page and
    escalation is in PagerDuty, everything resolves. Then: every fire is one incident with
    its three pages and one escalation; every trigger, escalation and resolve reached
    PagerDuty; no dedup key was opened twice; and the only events received twice are those
    the victim sent just before it died, sent again by another replica a lease later."""
    fires = [f"f{k}" for k in range(8)]
    services: dict[str, Any] = {}
    for fire in fires:
        services.update(fire_services(fire))
    replicas, relay_list = await configured(relays, firehouse, pg_schema, tmp_path, services,
                                            ["replica-0", "replica-1", "replica-2"],
                                            ack_within="3s")
    await asyncio.gather(*(r.start() for r in replicas))
    victim_index = 1
    victim, victim_relay = replicas[victim_index], relay_list[victim_index]
    survivors = [r for r in replicas if r is not victim]

    started = datetime.now(UTC) - timedelta(seconds=30)
    alerts = {fire: fire_alerts(fire, started) for fire in fires}
    stream: list[Notification] = []
    for fire in fires:  # each fire: its database, its application, then both again
        db, app = alerts[fire]
        stream += [webhook_json(db), webhook_json(app), webhook_json(db, app)]
    half = len(stream) // 2
    # The victim dies once it has sent an event it could not record, or, if the others
    # claimed every event meanwhile, here anyway: notifications are left to fail over.
    kill_by = half + len(stream) // 4
    killed_at: float | None = None
    failed_over = 0

    async with aiohttp.ClientSession() as session:
        for index, body in enumerate(stream):
            if index == half:
                victim_relay.withhold = True
            attempts = await send_balanced(session, replicas, index, body)
            failed_over += len(attempts) > 1
            if victim_relay.withhold and killed_at is None and (
                    victim_relay.withheld or index >= kill_by):
                await asyncio.sleep(0.05)  # perhaps a few more in flight
                await victim.kill9()
                killed_at = time.monotonic()
            await asyncio.sleep(0.05)
    assert killed_at is not None
    assert victim.killed
    assert not victim.running
    assert failed_over > 0, "no notification was sent again at another replica"
    print(f"\nkilled {victim.url} after notification ~{half}; withheld from it:"
          f" {[s.event for s in victim_relay.withheld]}; {failed_over} notification(s)"
          " failed over")

    # What each fire must page: its three targets once, and senior management once when
    # the acknowledgement deadline passes (nobody acknowledges).
    fh = survivors[0]
    found: list[dict[str, Any]] = []

    async def all_escalated() -> bool:
        nonlocal found
        found = await incidents(fh)
        return len(found) >= len(fires) and all(
            any(p["reason"] == "not acknowledged in time" for p in i["pages"]) for i in found
        )

    await eventually(all_escalated, DELIVERY_TIMEOUT,
                     lambda: f"{[(i['id'], i['pages']) for i in found]}")
    assert len(found) == len(fires), [(i["id"], i["status"], i["services"]) for i in found]
    by_fire: dict[str, dict[str, Any]] = {}
    for incident in found:
        assert incident["status"] == "open", (incident["id"], incident["status"])
        labels = {a["labels"]["fire"] for a in incident["alerts"]}
        assert len(labels) == 1, incident["alerts"]
        assert len(incident["alerts"]) == 2, incident["alerts"]
        fire = labels.pop()
        assert fire not in by_fire, f"fire {fire} has two incidents"
        by_fire[fire] = incident
        reasons = {p["target"]: p["reason"] for p in incident["pages"]}
        assert sorted(p["target"] for p in incident["pages"]) == sorted(
            (*FIRE_TARGETS, "ops-management")
        ), (fire, incident["pages"])
        assert reasons["ops-management"] == "not acknowledged in time", incident["pages"]
        assert {reasons[t] for t in FIRE_TARGETS} <= {"opened", "impact grew"}, reasons
        assert "ack" in incident["clock"]["fired"], incident["clock"]
        for p in incident["pages"]:
            suffix = "/critical/ack-missed" if p["target"] == "ops-management" else "/critical"
            assert p["dedup_key"] == f"firehouse/{incident['id']}/{p['target']}{suffix}", p
    triggers = set().union(*(page_keys(fh, i) for i in found))
    escalations = {k for k in triggers if k[1].endswith("/ack-missed")}
    assert len(escalations) == len(fires)

    async def triggers_delivered() -> bool:
        return triggers <= set(accepted(pagerduty, "trigger"))

    await eventually(triggers_delivered, DELIVERY_TIMEOUT, pagerduty.dump)

    # Everything clears: the incidents resolve at once (no flap damping).
    async with aiohttp.ClientSession() as session:
        for index, fire in enumerate(fires):
            db, app = alerts[fire]
            ended = datetime.now(UTC)
            await send_balanced(session, replicas, index,
                                webhook_json(resolved(db, ended), resolved(app, ended)))

    async def all_resolved() -> bool:
        counts = await outbox_counts(fh)
        return (triggers <= set(accepted(pagerduty, "resolve"))
                and counts.get("pending", 0) == 0)

    await eventually(all_resolved, DELIVERY_TIMEOUT,
                     lambda: f"missing resolves {triggers - set(accepted(pagerduty, 'resolve'))}"
                     f"\n{pagerduty.dump()}")
    await asyncio.sleep(1.0)  # time for a wrongly doubled event to show up

    # The database's view, on both survivors.
    for survivor in survivors:
        final = await incidents(survivor)
        assert sorted(i["id"] for i in final) == sorted(i["id"] for i in found)
        assert {i["status"] for i in final} == {"resolved"}, [(i["id"], i["status"]) for i in final]
        for incident in final:
            escalated = [p for p in incident["pages"] if p["reason"] == "not acknowledged in time"]
            assert len(escalated) == 1, (incident["id"], incident["pages"])
    counts = await outbox_counts(fh)
    assert counts.get("dead", 0) == 0, counts
    assert await outbox_doubles(pg_schema) == {}
    assert counts.get("pending", 0) == 0, counts

    # PagerDuty's view.
    assert_opened_once(pagerduty, triggers)
    assert set(accepted(pagerduty, "resolve")) == triggers, pagerduty.dump()
    for key in triggers:
        assert pagerduty.state(*key) == "resolved", (key, pagerduty.dump())
    assert_no_event_twice(relay_list, victim_relay, killed_at)
    assert_in_order(pagerduty)


def assert_no_event_twice(relay_list: Sequence[Relay], victim: Relay, killed_at: float) -> None:
    """Each event was accepted by PagerDuty once; except an event the victim sent just before
    it was killed, without being able to record it (its answer withheld), which one other
    replica sends once more, no sooner than about a lease later."""
    receipts: dict[EventId, list[Sent]] = defaultdict(list)
    for relay in relay_list:
        for sent in relay.sent:
            if sent.status == 202:
                receipts[sent.event].append(sent)
    repeated = {event: sorted(s, key=lambda s: s.at) for event, s in receipts.items()
                if len(s) > 1}
    for event, sends in repeated.items():
        print(f"re-sent after the kill: {event}: "
              + ", ".join(f"{s.replica} at {s.at - killed_at:+.2f}s" for s in sends))
        first, *again = sends
        assert len(again) == 1, f"{event} accepted {len(sends)} times: {sends}"
        (second,) = again
        why = f"{event} accepted twice, first not by the killed replica before the kill"
        assert first.replica == victim.name, (why, sends)
        assert first.withheld, (why, sends)
        assert first.at < killed_at, (why, sends)
        assert second.replica != victim.name, sends
        assert second.at - first.at >= LEASE - 1.0, (
            f"{event} re-sent {second.at - first.at:.2f}s after the first, within the lease"
        )
    # Conversely, what the victim sent but could not record is sent again by another.
    for sent in victim.withheld:
        if sent.status == 202:
            assert sent.event in repeated, (
                f"{sent.event} was sent by the killed replica but never recorded, and no other"
                f" replica sent it again: {receipts[sent.event]}"
            )


def assert_in_order(pd: PagerDutyStandIn) -> None:
    """No resolve reached PagerDuty before its trigger was accepted."""
    triggered: set[Key] = set()
    for request in pd.received:
        body = request.body
        if request.path != EVENT_PATH or body is None:
            continue
        key = (body["routing_key"], body["dedup_key"])
        if body["event_action"] == "trigger" and request.status == 202:
            triggered.add(key)
        elif body["event_action"] == "resolve":
            assert key in triggered, f"resolve of {key} before its trigger:\n{pd.dump()}"


@contextlib.contextmanager
def frozen(fh: FirehouseProcess) -> Iterator[None]:
    """The replica stopped with SIGSTOP for the block (it claims nothing, hears nothing
    until it goes on), and always continued with SIGCONT."""
    assert fh.proc is not None
    fh.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        fh.proc.send_signal(signal.SIGCONT)


async def test_a_replica_stopped_during_a_send_hands_its_event_over_at_once(
    pg_schema: str,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """README: a replica that stops cleanly gives its claims back at once. Three replicas
    with a 30 s lease; two are frozen, so the third claims the pages of a new fire, and
    PagerDuty hangs on the first one it sends. The frozen two go on (they see the events
    claimed until the lease runs out), then the third is stopped with SIGTERM: it waits out
    its PagerDuty timeout, records a retry and exits. Another replica sends the page within
    a few seconds of that exit, not when the third's lease would have run out (~25 s
    later), and PagerDuty has every page once."""
    lease = 30.0
    settings = ha_settings(pg_schema, tmp_path / "st", pagerduty.url, fire_services("st"))
    settings["database"]["lease_seconds"] = lease
    replicas = [await firehouse(settings=settings, start=False) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    r2, r3, r4 = replicas
    pagerduty.set_mode("hang", 1)
    started = datetime.now(UTC) - timedelta(seconds=30)

    with frozen(r2), frozen(r3):
        async with aiohttp.ClientSession() as session:
            assert await post(session, r4, webhook_json(*fire_alerts("st", started))) == 200

        async def hung() -> bool:
            return any(r.status == HUNG for r in pagerduty.received)

        await eventually(hung, 10.0, pagerduty.dump)
        claimed_at = time.monotonic()
        # Every page claimed by r4 (the others are frozen): none is left to them.
        await pagerduty.wait_for_count(len(FIRE_TARGETS) - 1, 10.0)
    (stuck,) = [r.body for r in pagerduty.received if r.status == HUNG]
    assert stuck is not None
    await asyncio.sleep(1.5)  # r2 and r3 catch up: r4's lease runs ~28 s more

    assert await r4.stop() == 0, r4.logs()
    exited = time.monotonic()
    await pagerduty.wait_for(lambda b: b["dedup_key"] == stuck["dedup_key"], lease)
    delivered_after = time.monotonic() - exited
    print(f"\nr4 exited {exited - claimed_at:.1f}s after the claim; the hung page was "
          f"delivered {delivered_after:.1f}s after that")

    assert delivered_after < 5.0, (
        f"the page r4 gave back was sent {delivered_after:.1f}s after r4 exited (its lease "
        f"would have run out {lease - (exited - claimed_at):.1f}s after the exit)\n"
        f"{r2.logs()}\n{r3.logs()}")
    triggers = accepted(pagerduty, "trigger")
    assert len(triggers) == len(set(triggers)) == len(FIRE_TARGETS), pagerduty.dump()
    assert_opened_once(pagerduty, set(triggers))


async def test_database_outage_answers_503_and_loses_no_page(
    pg_schema: str,
    relays: RelayFactory,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """PagerDuty answers 500, so the pages of two fires wait in the outbox; PostgreSQL stops.
    Within about 5 s every replica's /-/ready says 503, and a notification of a third fire
    is answered 5xx (not 200: it could not be stored) at each replica. PostgreSQL starts
    again, PagerDuty recovers: readiness returns, the notification re-sent (as Alertmanager
    retries) is accepted, and every page of the three fires reaches PagerDuty exactly once."""
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        _unavailable("stopping PostgreSQL needs root and pg_ctlcluster")
    where = urlsplit(PG_DSN)
    if (where.hostname, where.port or 5432) not in (("127.0.0.1", 5432), ("localhost", 5432)):
        pytest.skip(f"the outage test stops the local cluster {PG_CLUSTER}, not {PG_DSN}")
    fires = ["o1", "o2", "o3"]
    services: dict[str, Any] = {}
    for fire in fires:
        services.update(fire_services(fire))
    replicas, _ = await configured(relays, firehouse, pg_schema, tmp_path, services, "ab")
    await asyncio.gather(*(r.start() for r in replicas))
    started = datetime.now(UTC) - timedelta(seconds=30)
    bodies = {fire: webhook_json(*fire_alerts(fire, started)) for fire in fires}

    pagerduty.set_mode(500)
    async with aiohttp.ClientSession() as session:
        for index, fire in enumerate(fires[:2]):
            assert await post(session, replicas[index], bodies[fire]) == 200

    async def tried() -> bool:  # the events were attempted and are waiting in the outbox
        pending = await get_json(replicas[0], "/api/v1/outbox?state=pending&limit=1000")
        events = pending["events"]
        return len(events) == 2 * len(FIRE_TARGETS) and all(e["attempts"] for e in events)

    await eventually(tried, DELIVERY_TIMEOUT, pagerduty.dump)

    during: list[tuple[str, int]] = []
    not_ready: dict[str, float] = {}
    try:
        await pg_ctl("stop")
        stopped = time.monotonic()

        async def turns_unready(fh: FirehouseProcess) -> None:
            while time.monotonic() - stopped < READY_AFTER_OUTAGE:
                if await ready_status(fh) == 503:
                    not_ready[fh.url] = time.monotonic() - stopped
                    return
                await asyncio.sleep(0.1)

        async with aiohttp.ClientSession() as session:
            # Meanwhile (all at once, to keep the outage short), a notification of the third
            # fire at each replica.
            *_, statuses = await asyncio.gather(
                *(turns_unready(r) for r in replicas),
                asyncio.gather(*(post(session, r, bodies["o3"], timeout=OUTAGE_POST_TIMEOUT)
                                 for r in replicas)),
            )
        during = [(r.url, status) for r, status in zip(replicas, statuses, strict=True)]
    finally:
        await pg_start_surely()
    outage = time.monotonic() - stopped
    pagerduty.set_mode("ok")
    print(f"\nPostgreSQL was down {outage:.1f}s; /-/ready 503 after {not_ready};"
          f" webhooks meanwhile: {during}")

    assert set(not_ready) == {r.url for r in replicas}, (
        f"/-/ready did not say 503 within {READY_AFTER_OUTAGE}s of the database stopping:"
        f" only {not_ready}"
    )
    for url, status in during:
        assert 500 <= status < 600, f"{url} answered {status or 'nothing'} with the database down"

    async def all_ready() -> bool:
        return all([await ready_status(r) == 200 for r in replicas])

    await eventually(all_ready, 30.0, lambda: "\n".join(r.logs() for r in replicas))
    async with aiohttp.ClientSession() as session:
        await send_balanced(session, replicas, 1, bodies["o3"])
        # The same notification again at the other replica (an HA pair): no second incident.
        assert await post(session, replicas[0], bodies["o3"]) == 200

    found: list[dict[str, Any]] = []

    async def delivered() -> bool:
        nonlocal found
        found = await incidents(replicas[0])
        keys = set().union(*(page_keys(replicas[0], i) for i in found)) if found else set()
        counts = await outbox_counts(replicas[1])
        return (len(found) >= len(fires) and keys <= set(accepted(pagerduty, "trigger"))
                and counts.get("pending", 0) == 0)

    await eventually(delivered, DELIVERY_TIMEOUT,
                     lambda: f"{[(i['id'], i['pages']) for i in found]}\n{pagerduty.dump()}")
    await asyncio.sleep(1.0)  # time for a wrongly doubled event to show up
    assert len(found) == len(fires), [(i["id"], i["alerts"]) for i in found]
    assert sorted({a["labels"]["fire"] for i in found for a in i["alerts"]}) == fires
    for incident in found:
        assert sorted(p["target"] for p in incident["pages"]) == sorted(FIRE_TARGETS), incident
    keys = set().union(*(page_keys(replicas[0], i) for i in found))
    triggers = Counter(accepted(pagerduty, "trigger"))
    assert set(triggers) == keys, pagerduty.dump()
    assert set(triggers.values()) == {1}, f"a trigger was received twice:\n{pagerduty.dump()}"
    assert_opened_once(pagerduty, keys)
    counts = await outbox_counts(replicas[0])
    assert counts == {"delivered": len(keys)}, counts


async def test_replicas_starting_at_once_migrate_an_empty_schema(
    pg_schema: str,
    relays: RelayFactory,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """Three replicas started at the same moment on an empty schema all become ready (the
    migrations run once, under the advisory lock); a webhook stored by one is seen by the
    others, and `firehouse migrate` afterwards finds nothing left to do."""
    services = fire_services("m1")
    replicas, _ = await configured(relays, firehouse, pg_schema, tmp_path, services, "abc")
    results = await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
    failures = [f"{r.url}: {res}" for r, res in zip(replicas, results, strict=True)
                if isinstance(res, BaseException)]
    assert not failures, "\n\n".join(failures)
    assert all(r.running for r in replicas)

    started = datetime.now(UTC) - timedelta(seconds=30)
    async with aiohttp.ClientSession() as session:
        assert await post(session, replicas[0], webhook_json(*fire_alerts("m1", started))) == 200
    for replica in replicas:
        found = await incidents(replica)
        assert len(found) == 1, (replica.url, found)
        assert len(found[0]["alerts"]) == 2, (replica.url, found)
    await pagerduty.wait_for_count(len(FIRE_TARGETS), DELIVERY_TIMEOUT)

    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "migrate", "--config", str(replicas[0].settings_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=replicas[0].env(),
        cwd=replicas[0].workdir,
    )
    out, err = await migrate.communicate()
    assert migrate.returncode == 0, (out.decode(), err.decode())
    assert "schema already up to date" in out.decode(), (out.decode(), err.decode())
    applied = [r["version"] for r in await db_rows(
        pg_schema, "SELECT version FROM firehouse_migrations ORDER BY version")]
    assert applied == [version for version, _what, _sql in MIGRATIONS], applied


async def test_a_sqlite_firehouse_moves_to_postgresql_with_its_open_incident(
    pg_schema: str,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """The README's move: stop the single Firehouse, `firehouse migrate --from-sqlite` its
    file into PostgreSQL, start a replica there. The open incident is there with its pages,
    a repeat of its alerts pages no one, and their resolution resolves the pages sent from
    SQLite (same dedup keys). A second import into the now-used database is refused."""
    services = fire_services("mv")
    settings = ha_settings(pg_schema, tmp_path / "mv", pagerduty.url, services)
    single_settings = {k: v for k, v in settings.items() if k != "database"}
    started = datetime.now(UTC) - timedelta(seconds=30)
    alerts = fire_alerts("mv", started)

    single = await firehouse(settings=single_settings)
    async with aiohttp.ClientSession() as session:
        assert await post(session, single, webhook_json(*alerts)) == 200
    await pagerduty.wait_for_count(len(FIRE_TARGETS), DELIVERY_TIMEOUT)

    async def recorded() -> bool:
        return await outbox_counts(single) == {"delivered": len(FIRE_TARGETS)}

    await eventually(recorded, DELIVERY_TIMEOUT, lambda: "deliveries recorded")
    before = await incidents(single)

    async def cli(fh: FirehouseProcess, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", *args, "--config", str(fh.settings_path),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=fh.env(), cwd=fh.workdir,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async def migrate(source: Path) -> tuple[int, str]:
        return await cli(replica, "migrate", "--from-sqlite", str(source))

    replica = await firehouse(settings=settings, start=False)
    replica.configure()
    # Not while a Firehouse still runs on the file: it would go on paging from it.
    status, out = await migrate(single.state_path)
    assert status != 0
    assert "in use by another Firehouse" in out, out
    assert "stop it before moving its state" in out, out
    # Refused before anything was written: not even the schema.
    assert [r["t"] for r in await db_rows(pg_schema, "SELECT to_regclass('incidents') t")] \
        == [None]
    assert await single.stop() == 0

    status, out = await migrate(single.state_path)
    assert status == 0, out
    assert f"copied from {single.state_path}: 1 incidents" in out, out

    await replica.start()
    after = await incidents(replica)
    assert [i["id"] for i in after] == [i["id"] for i in before]
    assert after[0]["status"] == "open"
    assert page_keys(replica, after[0]) == page_keys(single, before[0])

    async with aiohttp.ClientSession() as session:
        assert await post(session, replica, webhook_json(*alerts)) == 200
        assert await post(session, replica,
                          webhook_json(*(resolved(a, datetime.now(UTC)) for a in alerts))) == 200
    await pagerduty.wait_for_count(2 * len(FIRE_TARGETS), DELIVERY_TIMEOUT)
    assert_opened_once(pagerduty, set(page_keys(single, before[0])))
    assert sorted(accepted(pagerduty, "resolve")) == sorted(page_keys(single, before[0]))

    status, out = await migrate(single.state_path)
    assert status != 0
    assert "incidents" in out, out
    # The moved file cannot be run again (its pending events would be sent twice).
    status, out = await cli(single, "run")
    assert status != 0
    assert "was moved to" in out, out


async def metric(fh: FirehouseProcess, name: str) -> float:
    """One sample of the replica's /metrics, by its name with labels as exposed."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as session,
        session.get(fh.url + "/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in {fh.url}/metrics")


async def test_a_dry_run_replica_beside_a_live_one_stands_aside_and_loses_no_page(
    pg_schema: str,
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    tmp_path: Path,
) -> None:
    """A replica started in dry-run on a database that live replicas page from (a pod
    whose secret was not mounted) would decide pages without routing keys: logged, never
    sent, whichever replica delivered them. Instead it reports not ready, answers webhooks
    503 saying why, and decides and sends nothing; the live replica says so in its log.
    A fire sent to the dry-run one first and then, as a load balancer does after the 503,
    to the live one, is paged for real, once per target, and no event is dry-run. When
    the live replica stops cleanly, the dry-run one is alone and takes webhooks again; a
    live replica that was killed keeps it aside instead (the database is a live one)."""
    settings = ha_settings(pg_schema, tmp_path / "dr", pagerduty.url, fire_services("dr"))
    live = await firehouse(settings=settings)
    dry = await firehouse(settings={**settings, "dry_run": True}, start=False)
    dry.ready_path = "/-/healthy"  # it is not to become ready
    await dry.start()

    async with aiohttp.ClientSession() as session:
        async with session.get(dry.url + "/-/ready") as response:
            text = await response.text()
            assert response.status == 503, text
        assert "dry-run" in text, text
        assert "page for real" in text, text
        started = datetime.now(UTC) - timedelta(seconds=30)
        body = webhook_json(*fire_alerts("dr", started))
        async with session.post(dry.webhook_url, json=body) as response:
            refused = await response.json()
            assert response.status == 503, refused
        assert "dry-run" in refused["error"], refused
        attempts = await send_balanced(session, [dry, live], 0, body)
    assert attempts == [(0, 503), (1, 200)], attempts
    assert await metric(dry, "firehouse_cluster_refusing") == 1
    assert await metric(live, "firehouse_cluster_refusing") == 0

    async def live_sees_it() -> bool:  # at its next heartbeat
        return await metric(live, 'firehouse_cluster_replicas{mode="dry_run"}') == 1

    await eventually(live_sees_it, 8.0, live.logs)
    assert await metric(live, 'firehouse_cluster_replicas{mode="live"}') == 1

    await pagerduty.wait_for_count(len(FIRE_TARGETS), DELIVERY_TIMEOUT)
    await asyncio.sleep(1.0)  # a stray event would show up meanwhile
    triggers = accepted(pagerduty, "trigger")
    assert sorted(live.targets_by_key[key] for key, _ in triggers) == sorted(FIRE_TARGETS), (
        pagerduty.dump())
    assert_opened_once(pagerduty, set(triggers))
    rows = await db_rows(pg_schema, "SELECT state, count(*) AS n FROM outbox GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"delivered": len(FIRE_TARGETS)}, rows
    assert "are in dry-run" in live.logs(200), live.logs()

    # The live replica stops cleanly: the dry-run one is alone, and a dry-run cluster.
    assert await live.stop() == 0, live.logs()

    async def dry_ready() -> bool:
        return await ready_status(dry) == 200

    await eventually(dry_ready, 15.0, dry.logs)
    assert await metric(dry, "firehouse_cluster_refusing") == 0

    # A live replica killed -9 leaves its row: the dry-run one stands aside again, even
    # once the killed one is no longer seen.
    await live.start()

    async def dry_refuses() -> bool:
        return await ready_status(dry) == 503

    await eventually(dry_refuses, 15.0, dry.logs)
    await live.kill9()
    await asyncio.sleep(20.0)  # longer than a replica is counted as running (16 s)
    async with aiohttp.ClientSession() as session, session.get(dry.url + "/-/ready") as response:
        text = await response.text()
        assert response.status == 503, text
    assert "did not stop cleanly" in text, text
