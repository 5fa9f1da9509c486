"""Incident scenarios through the public HTTP interface, on a clock the test moves.

A real Firehouse listens on a free port and pages the PagerDuty stand-in; Alertmanager's
notifications are posted as Alertmanager sends them, and PagerDuty's acknowledgements as
signed v3 webhooks. Only the engine's clock is fake: the test advances it and wakes the
clock worker. Assertions are on what PagerDuty received and on the incidents API.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from daemon.alerts import fingerprint
from daemon.app import Firehouse
from daemon.config import load_config
from daemon.decide import next_deadline
from tests.helpers import (
    alert,
    config_env,
    pagerduty_webhook,
    resolved,
    routing_key,
    sign_pagerduty,
    target_names,
    wait_until,
    webhook_json,
    write_settings,
)
from tests.pagerduty_standin import PagerDutyStandIn

TOKEN = "scenario-bearer-token"
SECRET = "c2NlbmFyaW8tc3Vic2NyaXB0aW9uLXNlY3JldA"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAMPING = 300
TARGET_OF = {routing_key(t): t for t in target_names()}

# Alerts as the example shop's exporters label them.
DB_WARNING = {"alertname": "PostgresReplicationLag", "service": "postgres-payments",
              "severity": "warning", "instance": "pg-payments-1:9187"}
PAYMENTS_ERRORS = {"alertname": "PaymentsErrorRate", "service": "payments",
                   "severity": "warning"}
STORAGE_LATENCY = {"alertname": "CephWriteLatencyHigh", "service": "volume-storage",
                   "severity": "warning"}
INDEXER_LAG = {"alertname": "SearchIndexerLag", "service": "search-indexer",
               "severity": "warning"}
INDEXER_ERRORS = {"alertname": "SearchIndexerErrors", "service": "search-indexer",
                  "severity": "warning"}
REPORT_LATE = {"alertname": "NightlyReportLate", "service": "nightly-reports",
               "severity": "warning"}

Page = tuple[str, str, str, tuple[str, ...]]  # target, dedup key, severity, roles


class FakeClock:
    """The engine's clock: stands still until the test advances it.

    It starts two hours behind the wall clock. The outbox worker sends an event once its
    creation time (engine time) is past by the wall clock, and the housekeeper and the stale
    check compare engine times with the wall clock: behind, but by less than any retention
    or staleness window, every worker behaves as in production.
    """

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def __call__(self) -> datetime:
        return self.now


class Station:
    """A running Firehouse on a fake clock, with the PagerDuty stand-in it pages."""

    def __init__(self, firehouse: Firehouse, session: aiohttp.ClientSession,
                 clock: FakeClock, pd: PagerDutyStandIn) -> None:
        self.firehouse = firehouse
        self.session = session
        self.clock = clock
        self.pd = pd
        self.url = f"http://127.0.0.1:{firehouse.port}"
        self.mark = len(pd.events)

    async def notify(self, *alerts: Mapping[str, Any], truncated: int = 0) -> dict[str, Any]:
        """Post one Alertmanager notification; its answer, once everything it sent arrived."""
        data = webhook_json(*alerts)
        data["truncatedAlerts"] = truncated
        async with self.session.post(f"{self.url}/webhook/alertmanager", json=data,
                                     headers=AUTH) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status == 200, answer
        await self.settle()
        return answer

    async def pagerduty(self, body: bytes, signature: str) -> tuple[int, dict[str, Any]]:
        """Post one PagerDuty v3 webhook with its signature header."""
        headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": signature}
        async with self.session.post(f"{self.url}/webhook/pagerduty", data=body,
                                     headers=headers) as response:
            answer: dict[str, Any] = await response.json()
            status = response.status
        await self.settle()
        return status, answer

    async def advance(self, **delta: float) -> None:
        """Move the clock on, let the clock worker act, and wait for what it sent."""
        self.clock.now += timedelta(**delta)
        assert self.firehouse.timekeeper is not None
        self.firehouse.timekeeper.wake()
        await self.settle()

    async def settle(self) -> None:
        """Wait until nothing is due by the committed state and nothing waits in the outbox.

        The committed state, not the dispatcher's: a decision is applied in memory before its
        commit writes its events to the outbox."""
        firehouse = self.firehouse

        async def idle() -> bool:
            committed = await firehouse.store.load_state(
                self.clock.now, firehouse.dispatcher.retention_seconds, changes_seconds=0)
            due = next_deadline(firehouse.dispatcher.config, committed)
            if due is not None and due <= self.clock.now:
                return False
            return (await firehouse.store.outbox_counts()).get("pending", 0) == 0

        await wait_until(idle, timeout=30.0, what="clock and outbox idle")

    def sent(self) -> list[dict[str, Any]]:
        """The events PagerDuty accepted since the last call."""
        events = self.pd.events
        new, self.mark = events[self.mark:], len(events)
        return new

    async def incidents(self) -> list[dict[str, Any]]:
        """GET /api/v1/incidents."""
        async with self.session.get(f"{self.url}/api/v1/incidents", headers=AUTH) as response:
            assert response.status == 200
            found: list[dict[str, Any]] = (await response.json())["incidents"]
            return found

    async def incident(self, ident: str) -> dict[str, Any]:
        """GET /api/v1/incidents/{id}."""
        async with self.session.get(f"{self.url}/api/v1/incidents/{ident}",
                                    headers=AUTH) as response:
            assert response.status == 200
            found: dict[str, Any] = await response.json()
            return found


@asynccontextmanager
async def running(tmp_path: Path, database_url: str, pd: PagerDutyStandIn, clock: FakeClock
                  ) -> AsyncIterator[Station]:
    """Firehouse on 127.0.0.1:0 with routing keys, a bearer token, a PagerDuty webhook
    secret and 300 s of flap damping; its state in PostgreSQL at `database_url`, or when
    that is empty in `tmp_path` (a second call restarts it)."""
    settings = write_settings(tmp_path, incidents={"flap_damping_seconds": DAMPING})
    env = {**config_env(pagerduty_url=pd.url, state=tmp_path / "state.db",
                        listen="127.0.0.1:0", token=TOKEN, database_url=database_url),
           "FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET": SECRET}
    firehouse = Firehouse(load_config(settings, env=env), settings, env=env, clock=clock)
    await firehouse.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Station(firehouse, session, clock, pd)
    finally:
        await firehouse.stop()
    assert pd.invalid == [], pd.dump()


def firing(labels: Mapping[str, str], starts_at: datetime) -> dict[str, Any]:
    """A firing alert as Alertmanager sends it, with Alertmanager's fingerprint."""
    return alert(labels, starts_at=starts_at, fingerprint=fingerprint(labels))


def triggers(events: Iterable[Mapping[str, Any]]) -> list[Page]:
    """Each trigger as (target, dedup key, severity, roles paged), sorted."""
    return sorted(
        (TARGET_OF[e["routing_key"]], e["dedup_key"], e["payload"]["severity"],
         tuple(e["payload"]["custom_details"]["paged_as"]))
        for e in events if e["event_action"] == "trigger")


def resolves(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Each resolve as (target, dedup key), sorted."""
    return sorted((TARGET_OF[e["routing_key"]], e["dedup_key"])
                  for e in events if e["event_action"] == "resolve")


def page(ident: str, target: str, step: str, severity: str, *roles: str) -> Page:
    """The trigger Firehouse sends for an incident's page on `target` at `step`."""
    return (target, f"firehouse/{ident}/{target}/{step}", severity, roles)


def kinds(incident: Mapping[str, Any]) -> list[str]:
    """The kinds of an incident's timeline entries, in order."""
    return [entry["kind"] for entry in incident["timeline"]]


def only_incident(incidents: list[dict[str, Any]]) -> dict[str, Any]:
    """The single incident of a listing."""
    assert len(incidents) == 1, [i["id"] for i in incidents]
    return incidents[0]


class TestOneFire:
    async def test_database_warning_pages_checkout_at_critical_grows_and_resolves_once(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A warning on the payments database pages checkout's whole response at critical at
        once, grows with the fire, and resolves each triggered key once after flap damping."""
        clock = FakeClock()
        t0 = clock.now
        async with running(tmp_path, database_url, pd, clock) as station:
            answer = await station.notify(firing(DB_WARNING, t0 - timedelta(minutes=1)))
            [ident] = answer["incidents_opened"]
            assert answer["events"] == 4  # one decision pages every role at once
            opened = [
                page(ident, "business-line", "update-1", "critical", "business_line"),
                page(ident, "checkout-owner", "critical", "critical", "service_lead"),
                page(ident, "command-center", "critical", "critical", "incident_lead"),
                page(ident, "dba-oncall", "critical", "critical", "technical_lead"),
            ]
            assert triggers(station.sent()) == opened

            # payments depends on the database: the same fire; only its own lead is new.
            await station.advance(minutes=1)
            answer = await station.notify(
                firing(DB_WARNING, t0 - timedelta(minutes=1)),
                firing(PAYMENTS_ERRORS, station.clock.now - timedelta(seconds=30)))
            assert answer["incidents_opened"] == []
            grew = [page(ident, "shop-app-oncall", "critical", "critical", "technical_lead")]
            assert triggers(sent := station.sent()) == grew
            assert resolves(sent) == []

            # The database's storage: login and search are hit too; their leads join, and
            # the business line gets a fresh update that replaces the first.
            await station.advance(minutes=1)
            storage = firing(STORAGE_LATENCY, station.clock.now - timedelta(seconds=30))
            answer = await station.notify(storage)
            assert answer["incidents_opened"] == []
            sent = station.sent()
            spread = [
                page(ident, "business-line", "update-2", "critical", "business_line"),
                page(ident, "login-owner", "critical", "critical", "service_lead"),
                page(ident, "search-owner", "critical", "critical", "service_lead"),
                page(ident, "storage-oncall", "critical", "critical", "technical_lead"),
            ]
            assert triggers(sent) == spread
            assert resolves(sent) == [("business-line",
                                       f"firehouse/{ident}/business-line/update-1")]
            listed = only_incident(await station.incidents())
            assert listed["id"] == ident
            assert listed["severity"] == "critical"
            assert set(listed["impact"]["business_services"]) == {
                "online-checkout", "customer-login", "product-search"}

            # Everything resolves: nothing is stood down before the damping has passed.
            await station.advance(minutes=1)
            ended = station.clock.now
            await station.notify(
                resolved(firing(DB_WARNING, t0 - timedelta(minutes=1)), ended),
                resolved(firing(PAYMENTS_ERRORS, t0 + timedelta(seconds=30)), ended),
                resolved(storage, ended))
            sent = station.sent()
            # "Recovering" is not news: at info.
            recovering = page(ident, "business-line", "update-3", "info", "business_line")
            assert triggers(sent) == [recovering]
            assert resolves(sent) == [("business-line",
                                       f"firehouse/{ident}/business-line/update-2")]
            assert (await station.incident(ident))["phase"] == "resolving"
            await station.advance(seconds=DAMPING - 1)
            assert station.sent() == []

            # The end: the business line's last update, at info, stood down with every page.
            await station.advance(seconds=1)
            closing = station.sent()
            last = page(ident, "business-line", "update-4", "info", "business_line")
            assert triggers(closing) == [last]
            final = next(e for e in closing if e["event_action"] == "trigger")
            assert final["payload"]["summary"].startswith("Recovered:")
            assert [e["event_action"] for e in closing if e["dedup_key"] == last[1]] == [
                "trigger", "resolve"]
            # Updates 1 and 2 were stood down when replaced; everything else is now.
            open_pages = [*opened[1:], *grew, *spread[1:], recovering, last]
            assert resolves(closing) == sorted((target, key) for target, key, _, _ in open_pages)
            shown = await station.incident(ident)

        everything = pd.events
        triggered = Counter((e["routing_key"], e["dedup_key"]) for e in everything
                            if e["event_action"] == "trigger")
        stood_down = Counter((e["routing_key"], e["dedup_key"]) for e in everything
                             if e["event_action"] == "resolve")
        assert set(stood_down) == set(triggered)
        assert set(stood_down.values()) == {1}
        assert set(pd.incidents_opened.values()) == {1}
        assert all(pd.state(*key) == "resolved" for key in triggered)
        assert shown["status"] == "resolved"
        assert {p["status"] for p in shown["pages"]} == {"resolved"}
        assert {"opened", "assessed", "paged", "business_update", "alert_joined", "grew",
                "alert_resolved", "quiet", "resolved"} <= set(kinds(shown))
        assert kinds(shown)[-1] == "resolved"


class TestSeverity:
    async def test_critical_alert_on_a_warned_service_repages_every_target_at_critical(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A critical alert on a service already warned about joins its incident and pages
        every target again under a new dedup key at critical."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            warning = firing(REPORT_LATE, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(warning))["incidents_opened"]
            assert triggers(station.sent()) == [
                page(ident, "data-oncall", "warning", "warning", "technical_lead")]

            await station.advance(minutes=2)
            critical = firing({**REPORT_LATE, "severity": "critical"},
                              clock.now - timedelta(seconds=30))
            answer = await station.notify(warning, critical)
            assert answer["incidents_opened"] == []
            assert triggers(station.sent()) == [
                page(ident, "command-center", "critical", "critical", "incident_lead"),
                page(ident, "data-oncall", "critical", "critical", "technical_lead"),
            ]
            listed = only_incident(await station.incidents())
            assert listed["severity"] == "critical"
            assert "escalated" in kinds(await station.incident(ident))

    async def test_warning_turned_critical_on_one_fingerprint_repages_at_critical(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An alert whose severity label rises on the same fingerprint stays one incident
        and pages every target again under a new dedup key at critical."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            starts = clock.now - timedelta(minutes=1)
            warning = firing(REPORT_LATE, starts)
            [ident] = (await station.notify(warning))["incidents_opened"]
            assert triggers(station.sent()) == [
                page(ident, "data-oncall", "warning", "warning", "technical_lead")]

            await station.advance(minutes=2)
            critical = {**warning, "labels": {**REPORT_LATE, "severity": "critical"}}
            answer = await station.notify(critical)
            assert answer["incidents_opened"] == []
            assert triggers(station.sent()) == [
                page(ident, "command-center", "critical", "critical", "incident_lead"),
                page(ident, "data-oncall", "critical", "critical", "technical_lead"),
            ]
            assert only_incident(await station.incidents())["severity"] == "critical"


class TestDelivery:
    async def test_same_notification_twice_pages_once(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A notification delivered twice (an HA pair, a retry) sends nothing the second
        time: each key opens one PagerDuty alert."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            database = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            first = await station.notify(database)
            second = await station.notify(database)
            assert len(triggers(station.sent())) == 4

        assert first["events"] == 4
        assert second["events"] == 0
        assert second["incidents_opened"] == []
        assert len(pd.incidents_opened) == 4
        assert set(pd.incidents_opened.values()) == {1}

    async def test_mixed_group_resolves_only_its_resolved_alert(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A notification with one firing and one resolved alert of the same fire resolves
        that alert only: the incident stays open and no page is stood down."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            lag = firing(INDEXER_LAG, clock.now - timedelta(minutes=2))
            errors = firing(INDEXER_ERRORS, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(lag, errors))["incidents_opened"]
            assert len(triggers(station.sent())) == 2

            await station.advance(minutes=1)
            answer = await station.notify(lag, resolved(errors, clock.now))
            assert answer["events"] == 0
            assert station.sent() == []
            shown = await station.incident(ident)
            assert shown["phase"] == "open"
            assert {a["name"]: a["status"] for a in shown["alerts"]} == {
                "SearchIndexerLag": "firing", "SearchIndexerErrors": "resolved"}
            assert kinds(shown)[-1] == "alert_resolved"

            await station.advance(seconds=DAMPING + 1)
            assert station.sent() == []
            assert (await station.incident(ident))["status"] == "open"

    async def test_truncated_group_resolves_nothing(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """Resolved alerts in a notification Alertmanager truncated resolve nothing, even past
        the damping; the full group's resolution later does."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            lag = firing(INDEXER_LAG, clock.now - timedelta(minutes=2))
            errors = firing(INDEXER_ERRORS, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(lag, errors))["incidents_opened"]
            opened = triggers(station.sent())
            assert opened == [
                page(ident, "command-center", "warning", "warning", "incident_lead"),
                page(ident, "data-oncall", "warning", "warning", "technical_lead"),
            ]

            await station.advance(minutes=1)
            answer = await station.notify(resolved(lag, clock.now), truncated=1)
            assert answer["events"] == 0
            await station.advance(seconds=DAMPING + 1)
            assert station.sent() == []
            shown = await station.incident(ident)
            assert shown["phase"] == "open"
            assert {a["status"] for a in shown["alerts"]} == {"firing"}
            assert "alert_resolved" not in kinds(shown)

            await station.notify(resolved(lag, clock.now), resolved(errors, clock.now))
            await station.advance(seconds=DAMPING)
            assert resolves(station.sent()) == [(target, key) for target, key, _, _ in opened]


class TestFlapping:
    async def test_alert_firing_again_inside_damping_is_the_same_fire(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An alert that resolves and fires again within the damping continues its incident
        without a page; once it stays resolved past the damping, each page resolves once."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            first = firing(INDEXER_LAG, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(first))["incidents_opened"]
            opened = triggers(station.sent())
            assert len(opened) == 2

            await station.advance(minutes=1)
            await station.notify(resolved(first, clock.now))
            await station.advance(minutes=1)
            again = firing(INDEXER_LAG, clock.now - timedelta(seconds=10))
            answer = await station.notify(again)
            assert answer["incidents_opened"] == []
            assert answer["events"] == 0
            # Past the end of the first damping: the fire is burning again, nothing resolves.
            await station.advance(seconds=DAMPING)
            assert station.sent() == []
            shown = await station.incident(ident)
            assert shown["phase"] == "open"
            assert kinds(shown).count("alert_fired_again") == 1

            await station.notify(resolved(again, clock.now))
            await station.advance(seconds=DAMPING)
            assert resolves(station.sent()) == [(target, key) for target, key, _, _ in opened]
            await station.advance(hours=1)
            assert station.sent() == []
            assert only_incident(await station.incidents())["status"] == "resolved"

        assert set(pd.incidents_opened.values()) == {1}

    async def test_business_line_hears_when_a_recovering_fire_flares_up_again(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """When a tier-1 fire that the business line was told is recovering fires again
        within the damping, the business line gets a fresh update saying it is disrupted."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            first = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(first))["incidents_opened"]
            station.sent()
            await station.advance(minutes=1)
            await station.notify(resolved(first, clock.now))
            recovering = station.sent()
            assert triggers(recovering) == [
                page(ident, "business-line", "update-2", "info", "business_line")]
            update = next(e for e in recovering if e["event_action"] == "trigger")
            assert update["payload"]["summary"].startswith("Recovering:")

            await station.advance(minutes=1)
            await station.notify(firing(DB_WARNING, clock.now - timedelta(seconds=10)))
            sent = station.sent()
            assert triggers(sent) == [
                page(ident, "business-line", "update-3", "critical", "business_line")]
            assert resolves(sent) == [("business-line",
                                       f"firehouse/{ident}/business-line/update-2")]
            update = next(e for e in sent if e["event_action"] == "trigger")
            assert update["payload"]["summary"].startswith(
                "Possible disruption of online-checkout")


class TestClock:
    async def test_unacknowledged_incident_escalates_once_across_a_restart(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An incident nobody acknowledged within ack_within pages senior management once:
        not again later, nor after a restart on the same state."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            database = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(database))["incidents_opened"]
            station.sent()
            await station.advance(minutes=4, seconds=59)
            assert station.sent() == []

            await station.advance(seconds=1)
            escalated = station.sent()
            assert triggers(escalated) == [page(ident, "ops-management", "critical/ack-missed",
                                                "critical", "senior_management")]
            assert escalated[0]["payload"]["custom_details"]["reason"] == \
                "not acknowledged in time"
            await station.advance(minutes=10)
            assert station.sent() == []
            assert (await station.incident(ident))["clock"]["fired"] == ["ack"]

        async with running(tmp_path, database_url, pd, clock) as station:
            await station.advance(minutes=1)
            assert station.sent() == []
            shown = await station.incident(ident)
            assert kinds(shown).count("deadline") == 1

        assert pd.incidents_opened[(routing_key("ops-management"),
                                    f"firehouse/{ident}/ops-management/critical/ack-missed")] == 1

    async def test_acknowledged_incident_does_not_escalate(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An acknowledgement from PagerDuty marks the page acknowledged, and the incident's
        acknowledgement deadline then passes without escalation."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            database = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(database))["incidents_opened"]
            station.sent()
            dba = f"firehouse/{ident}/dba-oncall/critical"
            await station.advance(minutes=2)
            body = pagerduty_webhook("incident.acknowledged", dba, occurred_at=clock.now)
            status, answer = await station.pagerduty(body, sign_pagerduty(body, SECRET))
            assert (status, answer["matched"]) == (200, True)
            shown = await station.incident(ident)
            assert shown["phase"] == "acknowledged"
            assert {p["dedup_key"]: p["status"] for p in shown["pages"]}[dba] == "acknowledged"

            await station.advance(minutes=10)
            assert station.sent() == []
            shown = await station.incident(ident)
            assert shown["clock"]["fired"] == []
            assert "deadline" not in kinds(shown)
            assert "pagerduty_acknowledged" in kinds(shown)

    async def test_forged_acknowledgement_is_refused_and_changes_nothing(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An acknowledgement signed with another secret is refused with 401: the page stays
        unacknowledged and the deadline still escalates."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            database = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(database))["incidents_opened"]
            station.sent()
            before = await station.incident(ident)
            dba = f"firehouse/{ident}/dba-oncall/critical"
            await station.advance(minutes=2)
            body = pagerduty_webhook("incident.acknowledged", dba, occurred_at=clock.now)
            status, _ = await station.pagerduty(body, sign_pagerduty(body, "not-the-secret"))
            assert status == 401
            after = await station.incident(ident)
            assert after["pages"] == before["pages"]
            assert after["timeline"] == before["timeline"]
            assert after["phase"] == "open"

            await station.advance(minutes=3)
            assert triggers(station.sent()) == [page(ident, "ops-management",
                                                     "critical/ack-missed", "critical",
                                                     "senior_management")]

    async def test_business_line_is_updated_every_interval(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """After the tier-1 rule's 30-minute interval the business line gets a new update
        under a new dedup key, and the previous update is resolved."""
        clock = FakeClock()
        async with running(tmp_path, database_url, pd, clock) as station:
            database = firing(DB_WARNING, clock.now - timedelta(minutes=1))
            [ident] = (await station.notify(database))["incidents_opened"]
            station.sent()
            await station.advance(minutes=29, seconds=59)
            business = routing_key("business-line")
            assert [e for e in station.sent() if e["routing_key"] == business] == []

            await station.advance(seconds=1)
            sent = [e for e in station.sent() if e["routing_key"] == business]
            # A routine update is not news: at info.
            assert triggers(sent) == [
                page(ident, "business-line", "update-2", "info", "business_line")]
            assert resolves(sent) == [("business-line",
                                       f"firehouse/{ident}/business-line/update-1")]
            update = next(e for e in sent if e["event_action"] == "trigger")
            assert update["payload"]["summary"].startswith(
                "Possible disruption of online-checkout")
            assert "business_update" in kinds(await station.incident(ident))
