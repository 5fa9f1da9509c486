"""End to end, with real processes: (Prometheus →) Alertmanager → Firehouse → PagerDuty stand-in.

Alertmanager and Prometheus are Debian's binaries; Firehouse runs as ``python -m daemon``
with the repository's rules and dependency maps. Without the binaries these tests skip,
or fail under FIREHOUSE_REQUIRE_E2E=1 (see tests/procs.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.conftest import AlertmanagerFactory, FirehouseFactory, PrometheusFactory
from tests.pagerduty_standin import Body, PagerDutyStandIn
from tests.procs import FirehouseProcess, am_alert, rfc3339

pytestmark = pytest.mark.e2e

DELIVERY_TIMEOUT = 20.0  # Alertmanager group_wait 1s, group_interval 2s: normally ~1-3 s
PROMETHEUS_TIMEOUT = 30.0  # Prometheus' first rule evaluation alone takes 5-8 s
TOKEN = "e2e-webhook-token-3f9c2a71"  # a test credential


# --------------------------------------------------------------------------- helpers


def is_trigger(routing_key: str) -> Callable[[Body], bool]:
    return lambda b: b["event_action"] == "trigger" and b["routing_key"] == routing_key


def is_resolve(routing_key: str, dedup_key: str) -> Callable[[Body], bool]:
    return lambda b: (
        b["event_action"] == "resolve"
        and b["routing_key"] == routing_key
        and b["dedup_key"] == dedup_key
    )


def pairs(pagerduty: PagerDutyStandIn, action: str) -> set[tuple[str, str]]:
    """(routing_key, dedup_key) of every accepted event with this action."""
    return {
        (b["routing_key"], b["dedup_key"])
        for b in pagerduty.events
        if b.get("event_action") == action
    }


async def eventually(
    condition: Callable[[], bool], timeout: float, what: Callable[[], str]
) -> None:
    """Wait until ``condition()`` holds; fail with ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what()}")
        await asyncio.sleep(0.05)


def assert_clean(pagerduty: PagerDutyStandIn) -> None:
    """Every request was spec-valid and no dedup key ever opened a second PagerDuty alert."""
    assert pagerduty.invalid == [], pagerduty.dump()
    opened = pagerduty.incidents_opened
    assert opened, pagerduty.dump()
    assert set(opened.values()) == {1}, f"a dedup key was opened twice: {opened}"


def targets_of(fh: FirehouseProcess, bodies: list[Body]) -> list[str]:
    return sorted(fh.targets_by_key.get(b["routing_key"], "?") for b in bodies)


async def post_webhook(
    fh: FirehouseProcess, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.post(fh.webhook_url, json=body, headers=headers or {}) as response,
    ):
        await response.read()
        return response.status, dict(response.headers)


# --------------------------------------------------------------------------- tests


async def test_database_warning_pages_at_tier1_severity_and_resolves(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, alertmanager: AlertmanagerFactory
) -> None:
    """A warning on postgres-payments sent through Alertmanager pages dba-oncall and the
    command center at critical with its checkout impact, and the business line with a plain
    summary; when it ends, the business line hears it is recovering, and once the flap
    damping has passed the clock resolves exactly the pages that were sent."""
    damping = 3.0
    fh = await firehouse(settings={"incidents": {"flap_damping_seconds": damping}})
    am = await alertmanager(fh)
    labels = {
        "alertname": "PostgresReplicationLag",
        "service": "postgres-payments",
        "severity": "warning",
    }
    started = datetime.now(UTC) - timedelta(seconds=30)
    annotations = {"summary": "replica 42 s behind"}
    await am.post_alerts([am_alert(labels, starts_at=started, annotations=annotations)])

    dba = await pagerduty.wait_for(is_trigger(fh.key("dba-oncall")), DELIVERY_TIMEOUT)
    command = await pagerduty.wait_for(is_trigger(fh.key("command-center")), DELIVERY_TIMEOUT)
    for body in (dba, command):
        payload = body["payload"]
        assert payload["severity"] == "critical", body  # tier-1 checkout hangs on it
        details = payload["custom_details"]
        assert "online-checkout" in details["business_services"], details
        assert "online-checkout" in details["impact"]["business_services"], details
        assert details["mapped"] is True
        assert details["alert"] == "PostgresReplicationLag"
        assert details["service"] == "postgres-payments"
        assert details["alert_severity"] == "warning"
        assert body["dedup_key"], body
    assert dba["dedup_key"] != command["dedup_key"]
    assert "technical_lead" in dba["payload"]["custom_details"]["paged_as"]
    assert "incident_lead" in command["payload"]["custom_details"]["paged_as"]
    business = await pagerduty.wait_for(is_trigger(fh.key("business-line")), DELIVERY_TIMEOUT)
    details = business["payload"]["custom_details"]
    assert details["paged_as"] == ["business_line"], details
    assert details["reason"] == "business update", details
    assert business["dedup_key"].endswith("/business-line/update-1"), business
    assert business["payload"]["summary"].startswith("Possible disruption of online-checkout")
    assert "labels" not in details

    ended = datetime.now(UTC) - timedelta(seconds=1)
    await am.post_alerts(
        [am_alert(labels, starts_at=started, ends_at=ended, annotations=annotations)]
    )
    recovering = await pagerduty.wait_for(
        lambda b: b["event_action"] == "trigger"
        and b["dedup_key"].endswith("/business-line/update-2"),
        DELIVERY_TIMEOUT,
    )
    quiet_at = time.monotonic()
    assert recovering["payload"]["summary"].startswith("Recovering: online-checkout")
    # Damped: the people's pages stay up until the damping has passed.
    assert pagerduty.state(dba["routing_key"], dba["dedup_key"]) == "triggered"
    for body in (dba, command):
        await pagerduty.wait_for(
            is_resolve(body["routing_key"], body["dedup_key"]), DELIVERY_TIMEOUT
        )
    assert time.monotonic() - quiet_at >= damping - 1.0
    # Every page of the incident (the service lead's too) is resolved, and nothing else is.
    await eventually(
        lambda: pairs(pagerduty, "resolve") == pairs(pagerduty, "trigger"),
        DELIVERY_TIMEOUT,
        lambda: f"resolves do not match triggers:\n{pagerduty.dump()}",
    )
    for routing_key, dedup_key in pairs(pagerduty, "trigger"):
        assert pagerduty.state(routing_key, dedup_key) == "resolved"
    assert_clean(pagerduty)


async def test_bearer_token_admits_alertmanager_and_rejects_anonymous_posts(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, alertmanager: AlertmanagerFactory
) -> None:
    """With a bearer token configured, Alertmanager sending that token gets its alert paged
    while a direct POST without it, or with a wrong one, is answered 401 and pages nobody."""
    fh = await firehouse(token=TOKEN)
    am = await alertmanager(fh)  # sends fh.token as `authorization: {credentials: ...}`
    labels = {"alertname": "CheckoutErrorRate", "service": "checkout", "severity": "warning"}
    await am.post_alerts([am_alert(labels, starts_at=datetime.now(UTC))])
    trigger = await pagerduty.wait_for(is_trigger(fh.key("shop-app-oncall")), DELIVERY_TIMEOUT)
    assert trigger["payload"]["custom_details"]["alert"] == "CheckoutErrorRate"

    intruder = {
        "version": "4",
        "status": "firing",
        "receiver": "firehouse",
        "groupKey": '{}:{alertname="IntruderAlert"}',
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "IntruderAlert",
                    "service": "checkout",
                    "severity": "critical",
                },
                "annotations": {},
                "startsAt": rfc3339(datetime.now(UTC)),
            }
        ],
    }
    status, headers = await post_webhook(fh, intruder)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _ = await post_webhook(fh, intruder, {"Authorization": "Bearer not-the-token"})
    assert status == 401

    # Nothing of the rejected notifications reached the store.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(
            f"{fh.url}/api/v1/incidents", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        assert response.status == 200
        incidents = (await response.json())["incidents"]
    titles = [i["title"] for i in incidents]
    assert len(incidents) == 1, titles
    assert "CheckoutErrorRate" in titles[0]
    assert not any(
        "IntruderAlert" in str(b.get("payload", {}).get("summary")) for b in pagerduty.events
    ), pagerduty.dump()
    assert_clean(pagerduty)


async def test_alert_on_unmapped_service_pages_the_command_center(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory, alertmanager: AlertmanagerFactory
) -> None:
    """An alert on a service no dependency map knows still pages the command center, at the
    alert's own severity, marked unmapped."""
    fh = await firehouse()
    am = await alertmanager(fh)
    labels = {"alertname": "MysteryDiskFull", "service": "totally-unknown", "severity": "warning"}
    await am.post_alerts([am_alert(labels, starts_at=datetime.now(UTC))])

    body = await pagerduty.wait_for(is_trigger(fh.key("command-center")), DELIVERY_TIMEOUT)
    payload = body["payload"]
    details = payload["custom_details"]
    assert details["unmapped"] is True, details
    assert details["mapped"] is False, details
    assert details["service"] == "totally-unknown"
    assert payload["severity"] == "warning"
    assert "UNMAPPED" in payload["summary"]
    await asyncio.sleep(0.5)  # events of one decision are sent together: let any others land
    triggers = [b for b in pagerduty.events if b["event_action"] == "trigger"]
    assert targets_of(fh, triggers) == ["command-center"], pagerduty.dump()
    assert_clean(pagerduty)


async def test_prometheus_rule_pages_through_the_whole_chain(
    pagerduty: PagerDutyStandIn,
    firehouse: FirehouseFactory,
    alertmanager: AlertmanagerFactory,
    prometheus: PrometheusFactory,
) -> None:
    """A firing Prometheus rule on checkout travels Prometheus → Alertmanager → Firehouse and
    pages shop-app-oncall at critical, checkout being tier 1."""
    fh = await firehouse()
    am = await alertmanager(fh)
    rules = {
        "groups": [
            {
                "name": "e2e",
                "interval": "1s",
                "rules": [
                    {
                        "alert": "CheckoutAlwaysFiring",
                        "expr": "vector(1)",
                        "for": "0s",
                        "labels": {"service": "checkout", "severity": "warning"},
                        "annotations": {"summary": "end-to-end test rule"},
                    }
                ],
            }
        ],
    }
    prom = await prometheus(am, rules)

    body = await pagerduty.wait_for(is_trigger(fh.key("shop-app-oncall")), PROMETHEUS_TIMEOUT)
    payload = body["payload"]
    assert payload["severity"] == "critical", body
    details = payload["custom_details"]
    assert details["alert"] == "CheckoutAlwaysFiring"
    assert details["service"] == "checkout"
    assert details["alert_severity"] == "warning"
    assert "online-checkout" in details["business_services"]
    assert details["annotations"] == {"summary": "end-to-end test rule"}
    assert body["links"][0]["href"].startswith(prom.url), body  # Prometheus' generatorURL
    assert_clean(pagerduty)
