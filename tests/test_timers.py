"""What comes back from outside, in the pure engine: PagerDuty's word on a page, and
Alertmanager's answer about alerts that went quiet (daemon/decide/timers.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from daemon.config import Config
from daemon.decide import (
    ACKNOWLEDGED,
    RESOLVED,
    RESOLVED_IN_PAGERDUTY,
    TRIGGERED,
    Incident,
    PagerDutyUpdate,
    State,
    apply,
    decide,
    earliest_deadline,
    next_deadline,
    on_pagerduty,
    reconcile,
    stale_fingerprints,
    tick,
)
from tests.helpers import NOW, alert, make_config, undamped, webhook

ACK_WITHIN = timedelta(minutes=5)  # the shipped tier-1 rule's
STALE = timedelta(hours=4, minutes=15)  # the default stale window


@pytest.fixture(scope="module")
def config() -> Config:
    """The repository's settings, maps and rules."""
    return make_config()


def payments_lag() -> dict[str, object]:
    """A warning on the payments database: a tier-1 incident, four pages."""
    return alert({"alertname": "PostgresReplicationLag", "service": "postgres-payments",
                  "severity": "warning"})


def opened(config: Config) -> tuple[State, Incident]:
    """The state with the payments incident open, and the incident."""
    state = apply(State(), decide(webhook(payments_lag()), config, State(), NOW))
    (incident,) = state.open.values()
    return state, incident


def page_key(incident: Incident, target: str) -> str:
    """The dedup key of the incident's page on `target`."""
    (page,) = [p for p in incident.pages if p.target == target]
    return page.dedup_key


def update(kind: str, key: str, *, event_id: str = "", at: datetime = NOW,
           agent: str = "Ann Example", detail: str = "") -> PagerDutyUpdate:
    """What a PagerDuty v3 webhook says."""
    return PagerDutyUpdate(event_id=event_id or f"{kind}-{key}", event_type=f"incident.{kind}",
                           occurred_at=at, dedup_key=key, agent=agent, detail=detail)


def step(config: Config, state: State, said: PagerDutyUpdate, at: datetime = NOW
         ) -> tuple[State, Incident]:
    decision = on_pagerduty(said, config, state, at)
    state = apply(state, decision)
    return state, state.open[next(iter(state.open))]


class TestPagerDutyUpdates:
    def test_acknowledgement_marks_the_page_and_stops_the_ack_deadline(
        self, config: Config
    ) -> None:
        """An acknowledgement of one page marks it, records who, and meets the deadline."""
        state, incident = opened(config)
        key = page_key(incident, "dba-oncall")
        at = NOW + timedelta(minutes=1)

        decision = on_pagerduty(update("acknowledged", key, at=at), config, state, at)
        state = apply(state, decision)
        (after,) = state.open.values()

        (page,) = [p for p in after.pages if p.dedup_key == key]
        assert (page.status, page.acknowledged_by) == (ACKNOWLEDGED, "Ann Example")
        assert after.acknowledged_at == at
        assert [(n.kind, n.message) for n in decision.timeline] == [
            ("pagerduty_acknowledged",
             "dba-oncall page (critical) acknowledged in PagerDuty by Ann Example")]
        assert decision.events == ()
        missed = tick(config, state, NOW + ACK_WITHIN)
        assert [e for e in missed.events if e.action == "trigger"] == []

    def test_a_repeated_delivery_changes_nothing(self, config: Config) -> None:
        """PagerDuty retries a webhook: the same event id is applied once."""
        state, incident = opened(config)
        said = update("acknowledged", page_key(incident, "dba-oncall"), event_id="E1")
        state, _ = step(config, state, said)

        again = on_pagerduty(said, config, state, NOW + timedelta(seconds=5))

        assert not again.changes_anything

    def test_an_unknown_dedup_key_changes_nothing(self, config: Config) -> None:
        """A webhook about an alert Firehouse did not trigger (or forgot) matches nothing."""
        state, _ = opened(config)

        decision = on_pagerduty(update("acknowledged", "someone-elses-key"), config, state, NOW)

        assert not decision.changes_anything

    def test_resolved_in_pagerduty_keeps_the_incident_open_while_alerts_fire(
        self, config: Config
    ) -> None:
        """Someone resolves a page in PagerDuty: the page says so, the fire is still burning,
        and the person answered, so the acknowledgement deadline is met."""
        state, incident = opened(config)
        key = page_key(incident, "command-center")

        decision = on_pagerduty(update("resolved", key), config, state, NOW)
        state = apply(state, decision)

        (after,) = state.open.values()
        (page,) = [p for p in after.pages if p.dedup_key == key]
        assert page.status == RESOLVED_IN_PAGERDUTY
        assert after.acknowledged_at == NOW
        assert decision.timeline[0].message.endswith(
            "; 1 alert(s) still firing, the incident stays open")

    def test_unacknowledging_one_page_while_another_was_resolved_keeps_it_answered(
        self, config: Config
    ) -> None:
        """Acknowledged, another page resolved in PagerDuty, then the first unacknowledged:
        someone still answered, so no escalation; the page no longer names who held it."""
        state, incident = opened(config)
        dba, center = page_key(incident, "dba-oncall"), page_key(incident, "command-center")
        state, _ = step(config, state, update("acknowledged", dba))
        state, _ = step(config, state, update("resolved", center))

        state, after = step(config, state, update("unacknowledged", dba))

        (page,) = [p for p in after.pages if p.dedup_key == dba]
        assert (page.status, page.acknowledged_by) == (TRIGGERED, "")
        assert after.acknowledged_at == NOW
        missed = tick(config, state, NOW + ACK_WITHIN)
        assert [e.target for e in missed.events if e.action == "trigger"] == []

    def test_unacknowledging_the_only_held_page_restarts_the_clock(
        self, config: Config
    ) -> None:
        """When no page is held any more, the acknowledgement deadline counts again."""
        state, incident = opened(config)
        dba = page_key(incident, "dba-oncall")
        state, _ = step(config, state, update("acknowledged", dba))

        state, after = step(config, state, update("unacknowledged", dba))

        assert after.acknowledged_at is None
        assert next_deadline(config, state) == NOW + ACK_WITHIN
        missed = tick(config, state, NOW + ACK_WITHIN)
        assert [e.target for e in missed.events if e.action == "trigger"] == ["ops-management"]

    def test_reassignment_is_written_on_the_timeline_only(self, config: Config) -> None:
        """A reassignment is news for the timeline; it changes no page."""
        state, incident = opened(config)
        key = page_key(incident, "dba-oncall")

        decision = on_pagerduty(update("reassigned", key, detail="assigned to Bob"), config,
                                state, NOW)

        (after,) = decision.incidents
        assert after.pages == incident.pages
        assert decision.timeline[0].message == (
            "dba-oncall page (critical) reassigned in PagerDuty by Ann Example: "
            "assigned to Bob")


class TestReconcile:
    def test_only_alerts_quiet_past_the_window_are_stale(self, config: Config) -> None:
        """An alert last seen longer ago than the stale window is asked about; a fresher one
        is not."""
        state, incident = opened(config)
        (fingerprint,) = incident.alerts

        assert stale_fingerprints(config, state, NOW + STALE) == ()
        assert stale_fingerprints(config, state, NOW + STALE + timedelta(seconds=1)) == (
            fingerprint,)

    def test_an_alert_alertmanager_still_has_is_refreshed(self, config: Config) -> None:
        """Present in Alertmanager: last seen now, the incident stays open, nothing sent."""
        state, incident = opened(config)
        (fingerprint,) = incident.alerts
        later = NOW + STALE + timedelta(minutes=1)

        decision = reconcile((fingerprint,), frozenset({fingerprint}), config, state, later)
        state = apply(state, decision)

        assert decision.events == ()
        assert state.open[incident.id].alerts[fingerprint].last_seen == later
        assert stale_fingerprints(config, state, later) == ()

    def test_an_alert_alertmanager_no_longer_has_is_resolved(self, config: Config) -> None:
        """Missing from Alertmanager: the alert resolves (flap damping then closes the
        incident), with the reason on the timeline."""
        state, incident = opened(config)
        (fingerprint,) = incident.alerts
        later = NOW + STALE + timedelta(minutes=1)

        decision = reconcile((fingerprint,), frozenset(), undamped(config), state, later)

        (closed,) = decision.incidents
        assert closed.status == RESOLVED
        assert "PostgresReplicationLag resolved: Alertmanager no longer has it and no " \
               "resolve arrived" in [n.message for n in decision.timeline]
        resolved_keys = {e.dedup_key for e in decision.events if e.action == "resolve"}
        assert {p.dedup_key for p in incident.pages} <= resolved_keys

    def test_the_alert_coming_back_after_a_reconciled_resolution_pages_again(
        self, config: Config
    ) -> None:
        """Alertmanager restarted and forgot the alert, so it was resolved unasked; when
        Prometheus sends it again with the same startsAt, it is a fire, not a late copy."""
        quick = undamped(config)
        state, incident = opened(quick)
        (fingerprint,) = incident.alerts
        later = NOW + STALE + timedelta(minutes=1)
        state = apply(state, reconcile((fingerprint,), frozenset(), quick, state, later))
        assert state.open == {}

        back = decide(webhook(payments_lag()), quick, state, later + timedelta(minutes=1))

        assert [e.action for e in back.explanations] == ["opened"]
        assert {e.target for e in back.events if e.action == "trigger"} == {
            "dba-oncall", "checkout-owner", "command-center", "business-line"}

    def test_unreachable_alertmanager_flags_the_incident_stale_once(
        self, config: Config
    ) -> None:
        """Alertmanager cannot be asked: the incident stays open, flagged stale on the
        timeline once, never silently closed."""
        state, incident = opened(config)
        (fingerprint,) = incident.alerts
        later = NOW + STALE + timedelta(minutes=1)

        first = reconcile((fingerprint,), None, config, state, later)
        state = apply(state, first)
        again = reconcile((fingerprint,), None, config, state, later + timedelta(minutes=1))

        assert state.open[incident.id].stale_since == later
        assert [n.kind for n in first.timeline] == ["stale"]
        assert first.events == ()
        assert not again.changes_anything

    def test_a_webhook_refresh_during_the_question_wins(self, config: Config) -> None:
        """Refreshed by a webhook while Alertmanager was being asked: a stale "missing"
        answer does not resolve it."""
        state, incident = opened(config)
        (fingerprint,) = incident.alerts
        later = NOW + STALE + timedelta(minutes=1)
        refreshed = dataclasses.replace(
            incident, alerts={fingerprint: dataclasses.replace(
                incident.alerts[fingerprint], last_seen=later)})
        state = dataclasses.replace(state, open={incident.id: refreshed})

        decision = reconcile((fingerprint,), frozenset(), config, state, later)

        assert not decision.changes_anything


class TestRepeatedInOnePayload:
    def test_the_last_copy_of_an_alert_in_a_notification_wins(self, config: Config) -> None:
        """One notification carrying an alert firing and then resolved opens nothing: its
        last copy says it is over (and never leaves an incident without pages)."""
        firing = payments_lag()
        over = {**firing, "status": "resolved", "endsAt": NOW.isoformat()}

        decision = decide(webhook(firing, over), config, State(), NOW)

        assert decision.incidents == ()
        assert decision.events == ()
        assert [e.action for e in decision.explanations] == [
            "superseded by a later copy in the same notification",
            "resolution of an alert never seen firing"]

    def test_resolved_then_firing_opens_the_incident(self, config: Config) -> None:
        """The other way round, the alert is firing: it pages."""
        firing = payments_lag()
        over = {**firing, "status": "resolved", "endsAt": NOW.isoformat()}

        decision = decide(webhook(over, firing), config, State(), NOW)

        (incident,) = decision.incidents
        assert incident.title.startswith("[CRITICAL] PostgresReplicationLag")
        assert len([e for e in decision.events if e.action == "trigger"]) == 4


class TestEarliestDeadline:
    def test_only_the_given_open_incidents_count(self, config: Config) -> None:
        """The earliest deadline of some incidents (what the clock learns after a commit):
        an open one owes its acknowledgement; the same incident closed owes nothing."""
        state, incident = opened(config)

        assert earliest_deadline(config, [incident]) == NOW + ACK_WITHIN
        assert earliest_deadline(config, [incident]) == next_deadline(config, state)
        closed = dataclasses.replace(incident, status=RESOLVED)
        assert earliest_deadline(config, [closed]) is None
        assert earliest_deadline(config, []) is None
