"""Crashes and restarts of a real ``firehouse run``: nothing accepted is lost, nothing pages twice.

Each test drives a real Firehouse process (``tests/procs.py``) against the PagerDuty stand-in
and plays Alertmanager itself: it POSTs notifications, and re-sends every one that was not
answered ``200`` (Alertmanager retries 5xx and network errors). The promise checked is the
README's "What happens when PagerDuty is down?": a decision is on disk before the ``200``,
delivery is retried until it succeeds and resumes after a crash or restart, events of one
dedup key go out in order, and PagerDuty never opens one (routing_key, dedup_key) twice.

What each alert should page is computed independently of the running process, by the pure
engine (``decide``) on the same settings, rules and maps.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import defaultdict
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import yaml

from daemon.alerts import fingerprint, parse_webhook
from daemon.config import Config, load_config
from daemon.decide import State, apply, decide
from tests.conftest import FirehouseFactory
from tests.helpers import alert, resolved, webhook_json
from tests.pagerduty_standin import EVENT_PATH, PagerDutyStandIn, Received
from tests.procs import MAPS_DIR, FirehouseProcess

pytestmark = pytest.mark.e2e

POST_TIMEOUT = 5.0  # per webhook POST; Alertmanager gives about 10 s
DELIVERY_TIMEOUT = 45.0  # backoff after a few failed attempts is 8-16 s, then 16-32 s
RETRY_TIMEOUT = 20.0  # re-sending the webhooks that were not answered 200

# Each drill alert is on a service of its own, in a drill map next to the example shop's, that
# depends on nothing and that nothing depends on: alerts on connected services would be one
# incident, and which one would depend on the order they arrive in. Four kinds, in turn: a
# tier-1 application with a service lead and a business service (technical lead, service
# lead, incident lead and the business line's update), a tier-2 database (technical and
# incident lead), a batch job (its team only), and a service no map knows (command center).
KINDS = (
    {"tier": 1, "component": "application", "business_service": "drill-shop",
     "owners": {"technical_lead": "shop-app-oncall", "service_lead": "checkout-owner"}},
    {"tier": 2, "component": "dbms", "owners": {"technical_lead": "dba-oncall"}},
    {"tier": 4, "component": "batch", "owners": {"technical_lead": "data-oncall"}},
    None,
)
SEVERITIES = ("warning", "critical", "info", "error")

Key = tuple[str, str]  # (routing_key, dedup_key)
Notification = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def drill_service(drill: str, index: int) -> str:
    """The service of a drill's alert `index`: its own, mapped unless of the unmapped kind."""
    mapped = KINDS[index % len(KINDS)] is not None
    return f"drill-{drill}-{index:03d}" if mapped else f"unmapped-{drill}-{index:03d}"


def drill_alert(drill: str, index: int) -> dict[str, Any]:
    """A distinct firing alert of a drill, on a service of its own."""
    return alert(
        {
            "alertname": f"CrashDrill{index:03d}",
            "service": drill_service(drill, index),
            "severity": SEVERITIES[(index // len(KINDS)) % len(SEVERITIES)],
            "drill": drill,
        },
        annotations={"summary": f"drill {drill} alert {index}"},
    )


def drill_settings(directory: Path, drill: str, count: int, **extra: Any) -> dict[str, Any]:
    """Settings whose maps are the example shop's and a drill map of `count` isolated
    services (see KINDS); `extra` settings on top."""
    services = {drill_service(drill, i): KINDS[i % len(KINDS)] for i in range(count)
                if KINDS[i % len(KINDS)] is not None}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"drill-{drill}.yaml"
    path.write_text(yaml.safe_dump({"services": services}), encoding="utf-8")
    return {"dependency_maps": [str(MAPS_DIR), str(path)], **extra}


# Incidents resolve as soon as their alert does: the drills check delivery, not damping.
UNDAMPED = {"incidents": {"flap_damping_seconds": 0}}


def alert_fingerprint(alert_json: Mapping[str, Any]) -> str:
    return fingerprint(alert_json["labels"])


class Oracle(Protocol):
    """The targets of one alert's pages by the pure engine (see `oracle`)."""

    def __call__(self, alert_json: Mapping[str, Any], closed: bool = False) -> list[str]: ...


def oracle(fh: FirehouseProcess) -> Oracle:
    """The target of each page of one alert's incident, sorted, by the pure engine on
    ``fh``'s own settings: once it fired, or (``closed``) once it resolved too, which closes
    it at once in the undamped drills (the business line's final update is a page too)."""
    config: Config = load_config(fh.settings_path, env=fh.env())

    def targets(alert_json: Mapping[str, Any], closed: bool = False) -> list[str]:
        now = datetime.now(UTC)
        decision = decide(parse_webhook(webhook_json(alert_json)), config, State(), now)
        if closed:
            decision = decide(parse_webhook(webhook_json(resolved(alert_json))), config,
                              apply(State(), decision), now)
        (incident,) = decision.incidents
        return sorted(page.target for page in incident.pages)

    return targets


async def post(session: aiohttp.ClientSession, fh: FirehouseProcess, body: Notification) -> int:
    """POST one notification as Alertmanager does; 0 when nothing answered (a crash)."""
    return await fh.notify(session, body, POST_TIMEOUT)


async def redeliver(fh: FirehouseProcess, bodies: Sequence[Notification]) -> None:
    """Re-send each notification until it is answered 200, as Alertmanager retries (all at
    once: for notifications of different groups)."""

    async def one(session: aiohttp.ClientSession, body: Notification) -> None:
        deadline = time.monotonic() + RETRY_TIMEOUT
        while (status := await post(session, fh, body)) != 200:
            if time.monotonic() > deadline or 400 <= status < 500:
                raise AssertionError(
                    f"a re-sent notification was answered {status or 'nothing'}:\n{fh.logs()}"
                )
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, b) for b in bodies))


async def hammer(
    fh: FirehouseProcess,
    bodies: Sequence[Notification],
    kill_after: int,
    rng: random.Random,
    crash: Callable[[], Awaitable[object]],
) -> list[int]:
    """POST ``bodies`` 16 at a time; ``crash`` Firehouse once ``kill_after`` got their 200
    (plus 0-5 ms). The status of each POST, 0 where nothing answered."""
    answered = 0
    kill_now = asyncio.Event()
    semaphore = asyncio.Semaphore(16)

    async def send(session: aiohttp.ClientSession, body: Notification) -> int:
        nonlocal answered
        async with semaphore:
            status = await post(session, fh, body)
        if status == 200:
            answered += 1
            if answered >= kill_after:
                kill_now.set()
        return status

    async def killer() -> None:
        await kill_now.wait()
        await asyncio.sleep(rng.uniform(0, 0.005))
        await crash()

    async with aiohttp.ClientSession() as session:
        kill_task = asyncio.create_task(killer())
        statuses = await asyncio.gather(*(send(session, b) for b in bodies))
        kill_now.set()  # in case everything was answered first: kill now
        await kill_task
    return list(statuses)


async def get_json(fh: FirehouseProcess, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as session,
        session.get(fh.url + path) as response,
    ):
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


@dataclass
class Stored:
    """What Firehouse's API says it decided: incidents per alert, with their pages."""

    incidents_by_alert: dict[str, list[str]] = field(default_factory=dict)
    # incident -> (target, dedup key) of each of its pages
    pages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)


async def stored(fh: FirehouseProcess) -> Stored:
    """Every incident (GET /api/v1/incidents and /{id}) and the outbox counts."""
    listing = await get_json(fh, "/api/v1/incidents?limit=1000")
    result = Stored()
    for summary in listing["incidents"]:
        detail = await get_json(fh, f"/api/v1/incidents/{summary['id']}")
        for stored_alert in detail["alerts"]:
            result.incidents_by_alert.setdefault(stored_alert["fingerprint"], []).append(
                detail["id"]
            )
        result.pages[detail["id"]] = [(p["target"], p["dedup_key"]) for p in detail["pages"]]
    result.outbox = (await get_json(fh, "/api/v1/outbox?limit=1"))["counts"]
    return result


def accepted(pd: PagerDutyStandIn, action: str) -> list[Key]:
    """(routing_key, dedup_key) of every accepted event with this action, in order."""
    return [(b["routing_key"], b["dedup_key"]) for b in pd.events if b["event_action"] == action]


def event_requests(pd: PagerDutyStandIn) -> list[Received]:
    return [r for r in pd.received if r.path == EVENT_PATH and r.body is not None]


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what()}")
        await asyncio.sleep(0.1)


def assert_one_page_per_key(pd: PagerDutyStandIn, expected: set[Key]) -> None:
    """Valid requests only; exactly the expected keys were opened, each exactly once."""
    assert pd.invalid == [], pd.dump()
    opened = pd.incidents_opened
    twice = {key: n for key, n in opened.items() if n != 1}
    assert not twice, f"opened more than once: {twice}\n{pd.dump()}"
    assert set(opened) == expected, (
        f"missing: {expected - set(opened)}\nunexpected: {set(opened) - expected}\n{pd.dump()}"
    )


def assert_in_order(pd: PagerDutyStandIn) -> None:
    """No resolve reached PagerDuty (even as a refused attempt) before its trigger was accepted."""
    first_trigger: dict[Key, int] = {}
    for index, request in enumerate(event_requests(pd)):
        body = request.body
        assert body is not None
        key = (body["routing_key"], body["dedup_key"])
        if body["event_action"] == "trigger" and request.status == 202:
            first_trigger.setdefault(key, index)
        elif body["event_action"] == "resolve":
            assert key in first_trigger, (
                f"resolve of {key} sent (answered {request.status}) before its trigger was"
                f" accepted:\n{pd.dump()}"
            )


def expected_keys(
    fh: FirehouseProcess, found: Stored, alerts: Iterable[Mapping[str, Any]],
    targets: Oracle, closed: Collection[str] = (),
) -> dict[str, set[Key]]:
    """Per alert fingerprint, the keys its one incident pages; checks one incident each, with
    the engine's pages: one per target, and the business line's final update for the
    incidents of the alerts (fingerprints) ``closed``."""
    result: dict[str, set[Key]] = {}
    for alert_json in alerts:
        fp = alert_fingerprint(alert_json)
        incidents = found.incidents_by_alert.get(fp, [])
        assert len(incidents) == 1, (
            f"{alert_json['labels']['alertname']} has {len(incidents)} incidents: {incidents}"
        )
        pages = found.pages[incidents[0]]
        paged = sorted(target for target, _ in pages)
        assert paged == targets(alert_json, fp in closed), (alert_json["labels"], pages)
        result[fp] = {(fh.key(target), key) for target, key in pages}
    return result


# --------------------------------------------------------------------------- tests


@pytest.fixture
def refused_port() -> Iterator[socket.socket]:
    """A local port held by a socket that is bound but not listening: connections to it are
    refused, and nothing else can take it until the test closes the socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder


async def test_kill9_while_pagerduty_is_down_loses_nothing_and_pages_once(
    firehouse: FirehouseFactory, refused_port: socket.socket, tmp_path: Path
) -> None:
    """PagerDuty refuses connections; Firehouse is killed -9 in the middle of 30 notifications,
    restarted on the same state, then PagerDuty comes back answering 500, then 429 with
    Retry-After, then normally: every alert gets its pages (and their resolves, in order),
    and no (routing_key, dedup_key) is opened twice."""
    pd_port = refused_port.getsockname()[1]  # PagerDuty is down: connection refused
    pd_url = f"http://127.0.0.1:{pd_port}"
    count = 30
    fh = await firehouse(settings=drill_settings(
        tmp_path, "a", count, pagerduty={"url": pd_url, "timeout_seconds": 5}, **UNDAMPED))
    targets = oracle(fh)
    firing = [drill_alert("a", i) for i in range(count)]
    to_resolve = set(range(0, count, 3))
    # One chain of notifications per alert: its firing, then (for some) its resolution,
    # sent only once the firing was answered 200 (as Alertmanager would, a group later).
    chains: list[list[Notification]] = [
        [webhook_json(a)] + ([webhook_json(resolved(a))] if i in to_resolve else [])
        for i, a in enumerate(firing)
    ]
    left: list[list[Notification]] = [[] for _ in chains]  # what the crash left unanswered
    answered = 0
    kill_now = asyncio.Event()
    semaphore = asyncio.Semaphore(4)

    async def run_chain(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal answered
        steps = chains[index]
        async with semaphore:
            for step, body in enumerate(steps):
                status = await post(session, fh, body)
                if status != 200:
                    assert status == 0, f"answered {status}:\n{fh.logs()}"
                    left[index] = steps[step:]
                    return
                answered += 1
                if answered >= 15:
                    kill_now.set()

    async def killer() -> None:
        await kill_now.wait()
        await fh.kill9()

    async with aiohttp.ClientSession() as session:
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(run_chain(session, i) for i in range(count)))
        await kill_task
    assert fh.killed
    unanswered = sum(len(steps) for steps in left)
    assert 0 < unanswered < sum(len(c) for c in chains), "the kill did not land mid-way"

    await fh.start()  # same state file, same port

    async def resend(steps: list[Notification]) -> None:
        for body in steps:  # a group's notifications go out one after the other
            await redeliver(fh, [body])

    # Alertmanager re-sends what was not answered, each chain in its order.
    await asyncio.gather(*(resend(steps) for steps in left if steps))

    pd = PagerDutyStandIn(port=pd_port)
    pd.set_mode(500)
    phases = time.monotonic()
    try:
        refused_port.close()  # PagerDuty comes back on its port
        await pd.start()

        async def answered_at_least(status: int, n: int, seconds: float) -> bool:
            refused = [r for r in pd.received if r.status == status]
            return len(refused) >= n and time.monotonic() - phases >= seconds

        await eventually(lambda: answered_at_least(500, 10, 2.0), 20.0, pd.dump)
        pd.set_mode(429, retry_after=1)
        phases = time.monotonic()
        await eventually(lambda: answered_at_least(429, 10, 2.0), 20.0, pd.dump)
        pd.set_mode("ok")

        found = await stored(fh)
        closed = {alert_fingerprint(firing[i]) for i in to_resolve}
        by_alert = expected_keys(fh, found, firing, targets, closed)
        triggers = set().union(*by_alert.values())
        resolves = set().union(*(by_alert[fp] for fp in sorted(closed)))

        async def all_delivered() -> bool:
            nonlocal found
            found = await stored(fh)
            return (
                triggers <= set(accepted(pd, "trigger"))
                and resolves <= set(accepted(pd, "resolve"))
                and found.outbox.get("pending", 0) == 0
            )

        await eventually(
            all_delivered,
            DELIVERY_TIMEOUT,
            lambda: f"outbox {found.outbox}; received:\n{pd.dump()}",
        )
        assert found.outbox.get("dead", 0) == 0, found.outbox
        assert len(found.incidents_by_alert) == count
        assert_one_page_per_key(pd, triggers)
        assert set(accepted(pd, "resolve")) == resolves, pd.dump()
        assert_in_order(pd)
        for key in triggers:
            want = "resolved" if key in resolves else "triggered"
            assert pd.state(*key) == want, (key, pd.dump())
        assert_retry_after_honoured(pd, 1.0)
    finally:
        await pd.stop()


def assert_retry_after_honoured(pd: PagerDutyStandIn, retry_after: float) -> None:
    """After a 429 with Retry-After, the same event is not tried again sooner."""
    requests = event_requests(pd)
    refused = 0
    for index, request in enumerate(requests):
        if request.status != 429:
            continue
        refused += 1
        assert request.body is not None
        key = (request.body["routing_key"], request.body["dedup_key"])
        for later in requests[index + 1 :]:
            assert later.body is not None
            if (later.body["routing_key"], later.body["dedup_key"]) == key:
                waited = later.at - request.at
                assert waited >= retry_after - 0.1, (
                    f"{key} retried {waited:.2f}s after a 429 with Retry-After {retry_after:g}"
                )
                break
    assert refused, "no 429 was answered: the phase did not happen"


@pytest.mark.parametrize("signal", ["SIGKILL", "SIGTERM"])
async def test_crash_while_webhooks_are_processed_opens_each_incident_once(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, signal: str, tmp_path: Path
) -> None:
    """Notifications (each twice, as an Alertmanager HA pair sends them, some grouped) are
    hammered at Firehouse, which is killed -9 (or stopped with SIGTERM) at a random moment,
    three times over. Every notification not answered 200 is re-sent: each alert ends with
    exactly one incident and each of its targets with exactly one dedup key, opened once."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    count = 40
    fh = await firehouse(settings=drill_settings(tmp_path, "b", count))
    crash = fh.kill9 if signal == "SIGKILL" else fh.stop
    # A graceful stop refuses new webhooks with 503 (Alertmanager retries) while it drains.
    allowed = (0, 200) if signal == "SIGKILL" else (0, 200, 503)
    targets = oracle(fh)
    alerts = [drill_alert("b", i) for i in range(count)]
    notifications = [webhook_json(a) for a in alerts for _copy in range(2)]
    notifications += [webhook_json(*alerts[i : i + 3]) for i in range(0, count, 5)]
    pending: list[Notification] = []
    kills = 0

    for _round in range(3):
        # What the last crash left unanswered, and every notification again (repeats of a
        # group and HA copies keep coming), in a random order.
        bodies = pending + notifications
        rng.shuffle(bodies)
        # Crash once a random number of notifications were answered, others in flight.
        statuses = await hammer(fh, bodies, rng.randrange(1, len(bodies) // 2), rng, crash)
        for status in statuses:
            assert status in allowed, f"answered {status} (seed {seed}):\n{fh.logs()}"
        assert not fh.running
        if signal == "SIGKILL":
            kills += fh.killed
        else:
            assert fh.returncode == 0, f"SIGTERM exit status {fh.returncode}:\n{fh.logs()}"
            assert not fh.killed, f"did not stop within {fh.stop_timeout}s:\n{fh.logs()}"
            kills += 1
        pending = [b for b, s in zip(bodies, statuses, strict=True) if s != 200]
        await fh.start()

    assert kills == 3
    await redeliver(fh, pending)

    # What PagerDuty must end up with: every target of every alert, one key each.
    found = await stored(fh)
    wanted = {alert_fingerprint(a): targets(a) for a in alerts}
    total = sum(len(t) for t in wanted.values())

    async def delivered() -> bool:
        nonlocal found
        found = await stored(fh)
        return len(set(accepted(pagerduty, "trigger"))) >= total and not found.outbox.get(
            "pending", 0
        )

    await eventually(
        delivered,
        DELIVERY_TIMEOUT,
        lambda: f"seed {seed}; outbox {found.outbox}; received:\n{pagerduty.dump()}",
    )
    assert len(found.pages) == count, f"seed {seed}: {len(found.pages)} incidents for {count}"
    keys = expected_keys(fh, found, alerts, targets)

    # The stand-in's view: per (alert, target), exactly one dedup key was ever triggered.
    alert_of_incident = {
        incident: fp for fp, incidents in found.incidents_by_alert.items() for incident in incidents
    }
    dedup_keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    for routing_key, dedup_key in accepted(pagerduty, "trigger"):
        _prefix, incident, target, _step = dedup_key.split("/")
        assert incident in alert_of_incident, f"seed {seed}: PagerDuty got unknown {incident}"
        assert fh.key(target) == routing_key
        dedup_keys[alert_of_incident[incident], target].add(dedup_key)
    assert set(dedup_keys) == {(fp, t) for fp, ts in wanted.items() for t in ts}
    several = {k: v for k, v in dedup_keys.items() if len(v) != 1}
    assert not several, f"seed {seed}: several dedup keys for one page: {several}"
    assert_one_page_per_key(pagerduty, set().union(*keys.values()))
    assert found.outbox.get("dead", 0) == 0, found.outbox


async def test_graceful_restart_resumes_delivery_without_duplicates(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, tmp_path: Path
) -> None:
    """With PagerDuty answering 500, events wait in the outbox with attempts counted; after a
    SIGTERM and a new start on the same state, PagerDuty recovers and every event is
    delivered exactly once (a graceful stop must not resend anything)."""
    pagerduty.set_mode(500)
    fh = await firehouse(settings=drill_settings(tmp_path, "c", 10, **UNDAMPED))
    targets = oracle(fh)
    alerts = [drill_alert("c", i) for i in range(10)]
    async with aiohttp.ClientSession() as session:
        for a in alerts:
            assert await post(session, fh, webhook_json(a)) == 200
        assert await post(session, fh, webhook_json(resolved(alerts[0]))) == 200

    async def all_tried() -> bool:
        outbox = await get_json(fh, "/api/v1/outbox?state=pending&limit=1000")
        triggers = [e for e in outbox["events"] if e["action"] == "trigger"]
        return bool(triggers) and all(e["attempts"] > 0 for e in triggers)

    await eventually(all_tried, 10.0, pagerduty.dump)
    outbox = await get_json(fh, "/api/v1/outbox?limit=1000")
    assert outbox["counts"].get("delivered", 0) == 0, outbox["counts"]
    events = len(outbox["events"])
    assert events == outbox["counts"]["pending"]
    assert all("server_error" in e["last_error"] for e in outbox["events"] if e["attempts"])

    status = await fh.stop()
    assert status == 0, f"SIGTERM exit status {status}:\n{fh.logs()}"
    assert not fh.killed
    await fh.start()
    pagerduty.set_mode("ok")

    found = await stored(fh)
    keys = expected_keys(fh, found, alerts, targets, {alert_fingerprint(alerts[0])})
    resolves = keys[alert_fingerprint(alerts[0])]

    async def delivered() -> bool:
        nonlocal found
        found = await stored(fh)
        return found.outbox.get("pending", 0) == 0

    await eventually(delivered, DELIVERY_TIMEOUT, lambda: f"{found.outbox}\n{pagerduty.dump()}")
    assert found.outbox == {"delivered": events}, found.outbox
    triggers = accepted(pagerduty, "trigger")
    assert sorted(triggers) == sorted(set().union(*keys.values())), pagerduty.dump()
    assert sorted(accepted(pagerduty, "resolve")) == sorted(resolves), pagerduty.dump()
    delivered_twice = len([r for r in pagerduty.received if r.status == 202]) - events
    assert delivered_twice == 0, f"{delivered_twice} event(s) delivered twice:\n{pagerduty.dump()}"
    assert {r.status for r in pagerduty.received} == {202, 500}
    assert_one_page_per_key(pagerduty, set(triggers))
    assert_in_order(pagerduty)


async def test_sigterm_during_a_hung_delivery_exits_cleanly_and_sends_after_restart(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, tmp_path: Path
) -> None:
    """PagerDuty accepts the connection and never answers: a SIGTERM during that attempt
    still exits 0 within the stop timeout, the event stays pending (not delivered, not
    dead), and the next start delivers it once."""
    pagerduty.set_mode("hang")
    fh = await firehouse(settings=drill_settings(tmp_path, "d", 1))
    targets = oracle(fh)
    first = drill_alert("d", 0)
    async with aiohttp.ClientSession() as session:
        assert await post(session, fh, webhook_json(first)) == 200
    pages = len(targets(first))

    def hung() -> int:
        return len([r for r in pagerduty.received if r.injected])

    async def all_hanging() -> bool:
        return hung() >= pages

    await eventually(all_hanging, 10.0, pagerduty.dump)
    started = time.monotonic()
    status = await fh.stop()
    assert status == 0, f"SIGTERM exit status {status}:\n{fh.logs()}"
    assert not fh.killed
    assert time.monotonic() - started < fh.stop_timeout
    pagerduty.set_mode("ok")
    await fh.start()

    found = await stored(fh)
    keys = expected_keys(fh, found, [first], targets)[alert_fingerprint(first)]

    async def delivered() -> bool:
        nonlocal found
        found = await stored(fh)
        return found.outbox.get("pending", 0) == 0

    await eventually(delivered, DELIVERY_TIMEOUT, lambda: f"{found.outbox}\n{pagerduty.dump()}")
    assert found.outbox == {"delivered": pages}, found.outbox
    assert sorted(accepted(pagerduty, "trigger")) == sorted(keys), pagerduty.dump()
    assert_one_page_per_key(pagerduty, keys)
