"""The command-center model of the decision engine: one incident per fire, correlated on the
dependency map; pages per severity step; escalation on growth; flap-damped resolution."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from daemon.alerts import parse_webhook
from daemon.config import Config
from daemon.decide import (
    MERGED,
    RESOLVE,
    TRIGGER,
    Change,
    Decision,
    Incident,
    OutboundEvent,
    State,
    apply,
    business_summary,
    decide,
    next_deadline,
    tick,
)
from daemon.rules import Clock, Rule
from tests.helpers import (
    NOW,
    STARTED,
    alert,
    make_config,
    resolved,
    routing_key,
    undamped,
    webhook,
    webhook_json,
)

DAMPING = timedelta(seconds=300)  # the default flap damping


@pytest.fixture(scope="module")
def config() -> Config:
    """The repository's settings, maps and rules: flap damping at its default."""
    config = make_config()
    assert config.settings.flap_damping == DAMPING.total_seconds()
    return config


def payments_lag(starts_at: datetime = STARTED) -> dict[str, Any]:
    """A warning on the payments database (tier 2, under the tier-1 checkout)."""
    return alert({"alertname": "PostgresReplicationLag", "service": "postgres-payments",
                  "severity": "warning"}, starts_at=starts_at)


def orders_down() -> dict[str, Any]:
    """The orders database is down (tier 1, under checkout; not connected to payments')."""
    return alert({"alertname": "PostgresDown", "service": "postgres-orders",
                  "severity": "critical"})


def checkout_errors() -> dict[str, Any]:
    """Checkout fails: it depends on both databases."""
    return alert({"alertname": "CheckoutErrors", "service": "checkout", "severity": "critical"})


def switch_errors() -> dict[str, Any]:
    """Errors on the core switches (core-network: every service depends on it)."""
    return alert({"alertname": "SwitchPortErrors", "job": "snmp-core-switches",
                  "severity": "warning"})


def since(started: datetime) -> str:
    """How the business line's words say when a disruption began."""
    return f"since {started:%Y-%m-%d %H:%M} UTC"


def report_late(starts_at: datetime = STARTED) -> dict[str, Any]:
    """A late nightly report (tier-4 batch job reading from postgres-orders)."""
    return alert({"alertname": "NightlyReportLate", "service": "nightly-reports",
                  "severity": "warning"}, starts_at=starts_at)


def events(decision: Decision) -> list[tuple[str, str, str]]:
    """(action, target, dedup key) of every event, in order."""
    return [(e.action, e.target, e.dedup_key) for e in decision.events]


def pages(decision: Decision) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """(target, dedup key, severity, reason, roles) of every trigger of a decision."""
    return {(e.target, e.dedup_key, e.body["payload"]["severity"],
             e.body["payload"]["custom_details"]["reason"],
             tuple(e.body["payload"]["custom_details"]["paged_as"]))
            for e in decision.events if e.action == TRIGGER}


def key(incident: Incident | str, target: str, step: str = "critical") -> str:
    """The dedup key of an incident's page on `target` at `step`."""
    ident = incident if isinstance(incident, str) else incident.id
    return f"firehouse/{ident}/{target}/{step}"


def run(config: Config, state: State, *alerts: dict[str, Any], at: datetime = NOW
        ) -> tuple[Decision, State]:
    """Decide one notification and return the decision and the state after it."""
    decision = decide(webhook(*alerts), config, state, at)
    return decision, apply(state, decision)


def only(state: State) -> Incident:
    """The one open incident."""
    (incident,) = state.open.values()
    return incident


def resolve_events(decision: Decision) -> list[OutboundEvent]:
    """The resolve events of a decision."""
    return [e for e in decision.events if e.action == RESOLVE]


class TestCorrelation:
    def test_a_connected_alert_joins_the_open_incident(self, config: Config) -> None:
        """A checkout alert after a payments database warning joins its incident and pages
        only checkout's technical lead, who was not paged yet."""
        _, state = run(config, State(), payments_lag())
        incident = only(state)

        joined, state = run(config, state, checkout_errors(), at=NOW + timedelta(minutes=1))

        assert pages(joined) == {("shop-app-oncall", key(incident, "shop-app-oncall"),
                                  "critical", "impact grew", ("technical_lead",))}
        assert [e.routing_key for e in joined.events] == [routing_key("shop-app-oncall")]
        assert list(state.open) == [incident.id]
        assert only(state).services == ("postgres-payments", "checkout")
        # Checkout is failing now, no longer merely hit: the title counts it either way.
        assert incident.title.startswith("[CRITICAL] PostgresReplicationLag on "
                                         "postgres-payments — impacts 2 service(s), tier 1")
        assert only(state).title.startswith(
            "[CRITICAL] PostgresReplicationLag on postgres-payments and 1 more alert(s) — "
            "2 services failing, impacts ")
        assert {e.alertname: e.incident_id for e in joined.explanations} == {
            "PostgresReplicationLag": incident.id, "CheckoutErrors": incident.id}

    def test_related_alerts_in_one_notification_make_one_incident(self, config: Config) -> None:
        """Three alerts on connected services in one webhook open one incident, paging each
        target once."""
        decision, state = run(config, State(), payments_lag(), checkout_errors())

        incident = only(state)
        assert [i.id for i in decision.incidents] == [incident.id]
        assert pages(decision) == {
            ("dba-oncall", key(incident, "dba-oncall"), "critical", "opened",
             ("technical_lead",)),
            ("shop-app-oncall", key(incident, "shop-app-oncall"), "critical", "opened",
             ("technical_lead",)),
            ("checkout-owner", key(incident, "checkout-owner"), "critical", "opened",
             ("service_lead",)),
            ("command-center", key(incident, "command-center"), "critical", "opened",
             ("incident_lead",)),
            ("business-line", key(incident, "business-line", "update-1"), "critical",
             "business update", ("business_line",)),
        }

    def test_an_alert_joining_an_incident_of_the_same_notification_is_explained_as_joined(
        self, config: Config
    ) -> None:
        """The first alert of a webhook opens the incident; a connected one later in the
        same webhook joined it, and its explanation says so, with the incident's impact
        (as it would had it come in a notification of its own)."""
        payments = alert({"alertname": "A1", "service": "frontend-xyz", "job": "payments-api",
                          "severity": "critical"})
        checkout = alert({"alertname": "A2", "service": "", "job": "checkout-api",
                          "severity": "critical"})

        decision, state = run(config, State(), payments, checkout)

        incident = only(state)
        assert [(e.alertname, e.service, e.action, e.incident_id)
                for e in decision.explanations] == [
            ("A1", "payments", "opened", incident.id),
            ("A2", "checkout", "joined", incident.id),
        ]
        impact = config.graph.impact(["checkout", "payments"])
        for explanation in decision.explanations:
            assert explanation.impact is not None
            assert explanation.impact.failing == impact.failing == ("checkout", "payments")
            assert explanation.impact.business_services == ("online-checkout",)
        # Separately, the second would have joined with that same impact.
        _, alone = run(config, State(), payments)
        joined, _ = run(config, alone, checkout, at=NOW + timedelta(minutes=1))
        (later,) = [e for e in joined.explanations if e.alertname == "A2"]
        assert later.action == "joined"
        assert later.impact is not None
        assert later.impact.failing == impact.failing

    def test_an_alert_connected_to_two_incidents_merges_them_into_the_oldest(
        self, config: Config
    ) -> None:
        """Checkout depends on both databases: its alert merges the later incident into the
        earlier one, which keeps every page and replaces both business updates with one."""
        _, state = run(config, State(), payments_lag())
        first = only(state)
        _, state = run(config, state, orders_down(), at=NOW + timedelta(minutes=1))
        (second,) = [i for i in state.open.values() if i.id != first.id]

        merged, state = run(config, state, checkout_errors(), at=NOW + timedelta(minutes=2))

        assert list(state.open) == [first.id]
        kept = only(state)
        gone = next(i for i in merged.incidents if i.id == second.id)
        assert (gone.status, gone.merged_into) == (MERGED, first.id)
        assert gone.pages == ()  # they moved to the incident that absorbed it
        assert set(kept.alerts) == set(first.alerts) | set(second.alerts) | {
            parse_webhook(webhook_json(checkout_errors())).alerts[0].fingerprint}
        assert kept.services == ("postgres-payments", "postgres-orders", "checkout")
        assert {p.dedup_key for p in (*first.pages, *second.pages)} < {
            p.dedup_key for p in kept.pages}
        assert events(merged) == [
            (TRIGGER, "shop-app-oncall", key(first, "shop-app-oncall")),
            (RESOLVE, "business-line", key(first, "business-line", "update-1")),
            (RESOLVE, "business-line", key(second, "business-line", "update-1")),
            (TRIGGER, "business-line", key(first, "business-line", "update-3")),
        ]
        # The merge is news to the business line: at the incident's severity.
        assert ("business-line", key(first, "business-line", "update-3"), "critical",
                "business update", ("business_line",)) in pages(merged)
        # Both incidents' pages stay open until the merged one resolves.
        assert sum(1 for p in kept.pages if p.open) == 1 + 3 + 3 + 1

    def test_a_merged_incident_is_as_old_as_the_oldest_fire(self, config: Config) -> None:
        """A merge keeps the earliest start of either fire, even when the alert that began
        the absorbed one has since fired again with a later start."""
        orders = alert({"alertname": "PostgresDown", "service": "postgres-orders",
                        "severity": "critical"}, starts_at=STARTED + timedelta(minutes=1))
        _, state = run(config, State(), orders)
        first = only(state)
        _, state = run(config, state, payments_lag(), at=NOW + timedelta(minutes=1))
        _, state = run(config, state, resolved(payments_lag()), at=NOW + timedelta(minutes=2))
        flared = payments_lag(starts_at=NOW + timedelta(minutes=3))
        _, state = run(config, state, flared, at=NOW + timedelta(minutes=3))
        later = alert({"alertname": "CheckoutErrors", "service": "checkout",
                       "severity": "critical"}, starts_at=NOW + timedelta(minutes=4))

        merged, state = run(config, state, later, at=NOW + timedelta(minutes=4))

        assert list(state.open) == [first.id]
        assert only(state).started_at == STARTED
        (update,) = [e for e in merged.events
                     if e.action == TRIGGER and e.target == "business-line"]
        assert since(STARTED) in update.body["payload"]["summary"]

    def test_unmapped_alerts_each_open_their_own_incident(self, config: Config) -> None:
        """Two alerts on services no map knows open two incidents, each paging the command
        center at the alert's own severity."""
        mystery = alert({"alertname": "DiskFull", "service": "mystery-box",
                         "severity": "warning"})
        ftp = alert({"alertname": "DiskFull", "service": "legacy-ftp", "severity": "error"})

        decision, state = run(config, State(), mystery, ftp)

        assert len(state.open) == 2
        by_service = {i.services: i for i in state.open.values()}
        box, legacy = by_service[("mystery-box",)], by_service[("legacy-ftp",)]
        assert not box.mapped
        assert not legacy.mapped
        assert pages(decision) == {
            ("command-center", key(box, "command-center", "warning"), "warning", "opened",
             ("incident_lead",)),
            ("command-center", key(legacy, "command-center", "error"), "error", "opened",
             ("incident_lead",)),
        }


class TestEscalation:
    def test_severity_rise_pages_everyone_again_and_resolves_every_key_at_the_end(
        self, config: Config
    ) -> None:
        """A late report at warning, then its database down: every target gets a new page at
        critical with a new key; at the end every key, old and new, is resolved through the
        routing key its trigger used."""
        opened, state = run(config, State(), report_late())
        incident = only(state)
        assert events(opened) == [(TRIGGER, "data-oncall",
                                   key(incident, "data-oncall", "warning"))]

        grew, state = run(config, state, orders_down(), at=NOW + timedelta(minutes=1))

        assert pages(grew) == {
            ("data-oncall", key(incident, "data-oncall"), "critical", "impact grew",
             ("technical_lead",)),
            ("dba-oncall", key(incident, "dba-oncall"), "critical", "impact grew",
             ("technical_lead",)),
            ("checkout-owner", key(incident, "checkout-owner"), "critical", "impact grew",
             ("service_lead",)),
            ("command-center", key(incident, "command-center"), "critical", "impact grew",
             ("incident_lead",)),
            ("business-line", key(incident, "business-line", "update-1"), "critical",
             "business update", ("business_line",)),
        }
        assert resolve_events(grew) == []  # the warning page stays up
        assert only(state).severity == "critical"
        assert [n.message for n in grew.timeline if n.kind == "escalated"] == [
            "severity rose from warning to critical"]

        rotated = make_config(salt="rotated")
        quiet, state = run(rotated, state, resolved(report_late()), resolved(orders_down()),
                           at=NOW + timedelta(minutes=2))
        closed = tick(rotated, state, NOW + timedelta(minutes=2) + DAMPING)

        recovering = key(incident, "business-line", "update-2")
        assert events(quiet) == [
            (RESOLVE, "business-line", key(incident, "business-line", "update-1")),
            (TRIGGER, "business-line", recovering),
        ]
        # The business line's last update ("Recovered", at info) goes out and is resolved
        # with every other page, its trigger first.
        final = key(incident, "business-line", "update-3")
        assert pages(closed) == {("business-line", final, "info", "business update",
                                  ("business_line",))}
        assert [e for e in events(closed) if e[2] == final] == [
            (TRIGGER, "business-line", final), (RESOLVE, "business-line", final)]
        (last_word,) = [e for e in closed.events if e.action == TRIGGER]
        assert last_word.routing_key == routing_key("business-line", "rotated")
        assert last_word.body["payload"]["summary"].startswith("Recovered:")
        assert {(e.target, e.dedup_key, e.routing_key) for e in resolve_events(closed)} == {
            ("data-oncall", key(incident, "data-oncall", "warning"), routing_key("data-oncall")),
            ("data-oncall", key(incident, "data-oncall"), routing_key("data-oncall")),
            ("dba-oncall", key(incident, "dba-oncall"), routing_key("dba-oncall")),
            ("checkout-owner", key(incident, "checkout-owner"), routing_key("checkout-owner")),
            ("command-center", key(incident, "command-center"), routing_key("command-center")),
            ("business-line", recovering, routing_key("business-line", "rotated")),
            ("business-line", final, routing_key("business-line", "rotated")),
        }
        assert len(closed.events) == 1 + 7
        assert apply(state, closed).open == {}

    def test_senior_management_paged_on_growth_gets_the_plain_summary(
        self, config: Config
    ) -> None:
        """Senior management, paged when a network fault joins the fire, gets the plain
        summary, not the technical page; a missed acknowledgement then pages it with the
        technical detail."""
        _, state = run(config, State(), payments_lag())
        incident = only(state)

        grew, state = run(config, state, switch_errors(), at=NOW + timedelta(minutes=1))

        (management,) = [e for e in grew.events if e.target == "ops-management"]
        assert management.dedup_key == key(incident, "ops-management")
        payload = management.body["payload"]
        assert payload["custom_details"]["reason"] == "impact grew"
        assert payload["custom_details"]["paged_as"] == ["senior_management"]
        # The same words as the business line's, without the "next update" it alone gets.
        assert payload["summary"] == business_summary(only(state))
        assert "Next update" not in payload["summary"]
        assert payload["summary"].startswith("Possible disruption of customer-login, "
                                             "online-checkout, product-search")
        assert not {"labels", "annotations", "alerts", "impact"} & set(payload["custom_details"])
        assert "links" not in management.body
        assert payload["source"] == "firehouse"
        assert "client_url" not in management.body

        missed = tick(config, state, NOW + timedelta(minutes=5))

        (escalated,) = [e for e in missed.events if e.target == "ops-management"]
        assert escalated.dedup_key == key(incident, "ops-management", "critical/ack-missed")
        details = escalated.body["payload"]["custom_details"]
        assert details["reason"] == "not acknowledged in time"
        assert details["labels"]["alertname"] == "SwitchPortErrors"  # the root cause's
        assert escalated.body["payload"]["summary"].startswith("[NOT ACKNOWLEDGED IN TIME] ")
        # Escalated, it gets the technical page whole: the failing service, the link back.
        assert escalated.body["payload"]["source"] == "core-network"
        assert escalated.body["client_url"] == "http://alertmanager:9093"

    def test_a_severity_rise_pages_senior_management_the_summary_again(
        self, config: Config
    ) -> None:
        """When the severity rises, senior management is paged again at the new severity,
        still with the plain summary: firehouse as source, no link to Alertmanager."""
        loud = dataclasses.replace(config, rules=(
            Rule(name="management hears of all", page=("senior_management", "technical_lead")),))
        _, state = run(loud, State(), report_late())
        incident = only(state)
        worse = alert({"alertname": "NightlyReportFailed", "service": "nightly-reports",
                       "severity": "critical"})

        rose, state = run(loud, state, worse, at=NOW + timedelta(minutes=1))

        (management,) = [e for e in rose.events if e.target == "ops-management"]
        assert management.dedup_key == key(incident, "ops-management", "critical")
        payload = management.body["payload"]
        assert payload["summary"] == business_summary(only(state))
        assert payload["source"] == "firehouse"
        assert not {"labels", "alerts", "impact"} & set(payload["custom_details"])
        assert not {"client_url", "links"} & set(management.body)
        (technical,) = [e for e in rose.events if e.target == "data-oncall"]
        assert technical.body["payload"]["source"] == "nightly-reports"

    @pytest.mark.parametrize(("role", "target"), [("technical_lead", "dba-oncall"),
                                                  ("service_lead", "checkout-owner")])
    def test_a_missed_acknowledgement_pages_the_root_cause_lead(
        self, config: Config, role: str, target: str
    ) -> None:
        """`escalate_to: [technical_lead]` (or service_lead) pages the lead of the probable
        root cause, the payments database under a failing checkout, and nobody else."""
        rule = Rule(name="the command center first", page=("incident_lead",),
                    clock=Clock(ack_within=timedelta(minutes=10), escalate_to=(role,)))
        leads = dataclasses.replace(config, rules=(rule,))
        opened, state = run(leads, State(), payments_lag(), checkout_errors())
        incident = only(state)
        assert pages(opened) == {("command-center", key(incident, "command-center"),
                                  "critical", "opened", ("incident_lead",))}
        assert [c["services"] for c in incident.impact["root_causes"]] == [
            ["postgres-payments"]]

        missed = tick(leads, state, NOW + timedelta(minutes=10))

        assert pages(missed) == {(target, key(incident, target, "critical/ack-missed"),
                                  "critical", "not acknowledged in time", (role,))}
        assert [n.message for n in missed.timeline if n.kind == "deadline"] == [
            f"not acknowledged by 2024-05-01T12:10:00.250000Z: escalated to {target}"]


    def test_a_lead_role_that_finds_no_one_escalates_to_the_incident_lead(
        self, config: Config
    ) -> None:
        """`escalate_to: [technical_lead]` on an unmapped incident (no lead is known) pages
        the incident lead instead of escalating to nobody."""
        rule = Rule(name="everything", page=("incident_lead",),
                    clock=Clock(ack_within=timedelta(minutes=10),
                                escalate_to=("technical_lead",)))
        leads = dataclasses.replace(config, rules=(rule,))
        _, state = run(leads, State(), alert({"alertname": "DiskFull",
                                              "service": "mystery-box", "severity": "error"}))
        incident = only(state)

        missed = tick(leads, state, NOW + timedelta(minutes=10))

        assert pages(missed) == {("command-center",
                                  key(incident, "command-center", "error/ack-missed"),
                                  "error", "not acknowledged in time", ("incident_lead",))}
        assert [n.message for n in missed.timeline if n.kind == "deadline"] == [
            "not acknowledged by 2024-05-01T12:10:00.250000Z: escalated to command-center"]


class TestFlapDamping:
    def test_all_alerts_resolved_waits_for_the_damping(self, config: Config) -> None:
        """The last alert resolving makes the incident quiet; the clock resolves it once the
        damping has passed, not before."""
        _, state = run(config, State(), report_late())
        incident = only(state)

        quiet, state = run(config, state, resolved(report_late()), at=NOW)

        assert quiet.events == ()
        assert only(state).quiet_since == NOW
        assert next_deadline(config, state) == NOW + DAMPING
        assert tick(config, state, NOW + DAMPING - timedelta(seconds=1)).events == ()
        closed = tick(config, state, NOW + DAMPING)
        assert events(closed) == [(RESOLVE, "data-oncall",
                                   key(incident, "data-oncall", "warning"))]
        assert dict(closed.events[0].body) == {
            "event_action": "resolve", "dedup_key": key(incident, "data-oncall", "warning")}
        (done,) = closed.incidents
        assert (done.status, done.resolved_at) == ("resolved", NOW + DAMPING)
        assert apply(state, closed).open == {}
        assert next_deadline(config, apply(state, closed)) is None

    def test_firing_again_inside_the_damping_continues_the_incident(
        self, config: Config
    ) -> None:
        """An alert firing again (newer startsAt) inside the damping continues the same
        incident without paging anyone again; the damping restarts from its next quiet."""
        _, state = run(config, State(), report_late())
        incident = only(state)
        _, state = run(config, state, resolved(report_late()), at=NOW)

        again_at = NOW + timedelta(minutes=2)
        again, state = run(config, state, report_late(starts_at=again_at - timedelta(seconds=30)),
                           at=again_at)

        assert again.events == ()
        assert list(state.open) == [incident.id]
        assert only(state).quiet_since is None
        assert [e.action for e in again.explanations] == ["joined"]
        assert next_deadline(config, state) == incident.deadlines.ack_by
        assert tick(config, state, NOW + DAMPING).events == ()

        later = again_at + timedelta(minutes=1)
        _, state = run(config, state, resolved(report_late(starts_at=again_at
                                                           - timedelta(seconds=30)), later),
                       at=later)
        assert next_deadline(config, state) == later + DAMPING
        closed = tick(config, state, later + DAMPING)
        assert events(closed) == [(RESOLVE, "data-oncall",
                                   key(incident, "data-oncall", "warning"))]

    def test_business_line_hears_recovering_and_firing_again(self, config: Config) -> None:
        """When the business line was engaged, going quiet replaces its update with a
        "Recovering" one, and firing again replaces that with the current state."""
        _, state = run(config, State(), payments_lag())
        incident = only(state)

        quiet, state = run(config, state, resolved(payments_lag()), at=NOW)
        assert events(quiet) == [
            (RESOLVE, "business-line", key(incident, "business-line", "update-1")),
            (TRIGGER, "business-line", key(incident, "business-line", "update-2")),
        ]
        assert quiet.events[1].body["payload"]["summary"].startswith("Recovering:")
        # Recovery is not news: it goes out at info; the flare-up below is, at critical.
        assert pages(quiet) == {("business-line", key(incident, "business-line", "update-2"),
                                 "info", "business update", ("business_line",))}

        again, state = run(config, state, payments_lag(starts_at=NOW + timedelta(seconds=30)),
                           at=NOW + timedelta(minutes=1))

        assert events(again) == [
            (RESOLVE, "business-line", key(incident, "business-line", "update-2")),
            (TRIGGER, "business-line", key(incident, "business-line", "update-3")),
        ]
        assert again.events[1].body["payload"]["summary"].startswith(
            "Possible disruption of online-checkout")
        assert pages(again) == {("business-line", key(incident, "business-line", "update-3"),
                                 "critical", "business update", ("business_line",))}
        assert only(state).quiet_since is None

    def test_the_business_line_is_told_the_first_start_after_a_flap(
        self, config: Config
    ) -> None:
        """An alert firing again inside the damping starts later, but the business line's
        update still dates the disruption from its first start, and so does the last one."""
        _, state = run(config, State(), payments_lag())
        _, state = run(config, state, resolved(payments_lag()), at=NOW)
        flared = payments_lag(starts_at=NOW + timedelta(seconds=30))

        again, state = run(config, state, flared, at=NOW + timedelta(minutes=1))

        (update,) = [e for e in again.events if e.action == TRIGGER]
        assert update.body["payload"]["summary"].startswith(
            f"Possible disruption of online-checkout {since(STARTED)} (severity critical)")
        assert only(state).started_at == STARTED

        ended = NOW + timedelta(minutes=2)
        _, state = run(config, state, resolved(flared, ended), at=ended)
        closed = tick(config, state, ended + DAMPING)

        (last,) = [e for e in closed.events if e.action == TRIGGER]
        assert last.body["payload"]["summary"] == (
            f"Recovered: online-checkout back to normal (disrupted {since(STARTED)}).")

    def test_no_damping_resolves_at_once(self, config: Config) -> None:
        """With flap damping 0 the incident resolves with its last alert."""
        immediate = undamped(config)
        _, state = run(immediate, State(), report_late())
        incident = only(state)

        closed, state = run(immediate, state, resolved(report_late()), at=NOW)

        assert events(closed) == [(RESOLVE, "data-oncall",
                                   key(incident, "data-oncall", "warning"))]
        assert state.open == {}


class TestRepeats:
    def test_a_truncated_payload_resolves_nothing(self, config: Config) -> None:
        """Resolved alerts in a payload Alertmanager truncated are ignored: it is not the
        whole group."""
        immediate = undamped(config)
        _, state = run(immediate, State(), report_late())
        body = webhook_json(resolved(report_late()))
        body["truncatedAlerts"] = 3

        decision = decide(parse_webhook(body), immediate, state, NOW)

        assert decision.events == ()
        assert decision.incidents == ()
        assert decision.resolutions == ()
        assert [e.action for e in decision.explanations] == [
            "resolution ignored: the payload was truncated"]
        assert apply(state, decision) == state

    def test_the_same_notification_twice_changes_only_last_seen(self, config: Config) -> None:
        """A repeat of a notification (HA peer, repeat_interval) sends nothing and only moves
        its alerts' last_seen."""
        first, state = run(config, State(), payments_lag(), checkout_errors())
        later = NOW + timedelta(seconds=30)

        second, after = run(config, state, payments_lag(), checkout_errors(), at=later)

        incident = only(state)
        assert second.events == ()
        assert second.incidents == ()
        assert second.timeline == ()
        assert second.resolutions == ()
        assert sorted(second.seen) == sorted((incident.id, fp) for fp in incident.alerts)
        assert [e.action for e in second.explanations] == ["already open", "already open"]
        changed = only(after)
        assert {fp: a.last_seen for fp, a in changed.alerts.items()} == dict.fromkeys(
            incident.alerts, later)
        unchanged = {fp: dataclasses.replace(a, last_seen=later)
                     for fp, a in incident.alerts.items()}
        assert changed == dataclasses.replace(incident, alerts=unchanged)
        assert len(first.events) == 5


class TestRollbackCandidates:
    def test_every_technical_page_carries_the_recent_changes(self, config: Config) -> None:
        """A change on the failing database before the fire rides on every technical
        trigger as the last known stable point; the summary pages carry none."""
        change = Change(id="db-1", service="postgres-payments", summary="raise max_wal_size",
                        at=STARTED - timedelta(minutes=8), who="dba")
        state = State(changes=(change,))

        decision, _ = run(config, state, payments_lag())

        details = {e.target: e.body["payload"]["custom_details"]
                   for e in decision.events if e.action == TRIGGER}
        assert set(details) == {"dba-oncall", "checkout-owner", "command-center",
                                "business-line"}
        for target in ("dba-oncall", "checkout-owner", "command-center"):
            (candidate,) = details[target]["rollback_candidates"]
            assert (candidate["id"], candidate["relation"], candidate["last_before_incident"]
                    ) == ("db-1", "root cause", True)
        assert "rollback_candidates" not in details["business-line"]
