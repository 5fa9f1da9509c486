"""The pure decision core: no I/O, an explicit `now`, the repository's maps and rules."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timedelta
from typing import Any

import pytest

from daemon.alerts import parse_body
from daemon.config import Config
from daemon.decide import (
    DEDUP_KEY_LIMIT,
    RESOLVE,
    SUMMARY_LIMIT,
    TRIGGER,
    Deadlines,
    Decision,
    OutboundEvent,
    State,
    apply,
    business_summary,
    decide,
    dedup_key,
    evolve,
    map_severity,
    tick,
)
from daemon.rules import Rule
from tests.helpers import (
    FIXTURES,
    NOW,
    STARTED,
    alert,
    make_config,
    resolved,
    routing_key,
    undamped,
    webhook,
)
from tests.pagerduty_standin import EVENT_PATH, validate

SEVERITY_LABELS = ("severity", "priority")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@pytest.fixture(scope="module")
def config() -> Config:
    """The repository's settings, maps and rules, with a routing key for every target."""
    return make_config()


@pytest.fixture(scope="module")
def immediate(config: Config) -> Config:
    """The repository's configuration with flap damping off."""
    return undamped(config)


def pg_lag(starts_at: datetime = STARTED) -> dict[str, Any]:
    """A replication-lag warning on the payments database (tier 1, under checkout)."""
    labels = {"alertname": "PostgresReplicationLag", "service": "postgres-payments",
              "severity": "warning", "instance": "pg-payments-1:9187"}
    return alert(labels, annotations={"summary": "replica 40s behind"}, starts_at=starts_at)


def triggers(decision: Decision) -> list[OutboundEvent]:
    """The trigger events of a decision."""
    return [e for e in decision.events if e.action == TRIGGER]


def technical(decision: Decision) -> list[OutboundEvent]:
    """The trigger events of a decision that page people, not the business line's updates."""
    return [e for e in triggers(decision) if e.target != "business-line"]


def assert_business_update(event: OutboundEvent, incident_id: str, number: int,
                           severity: str = "critical", salt: str = "") -> None:
    """`event` is the business line's plain-language update number `number`."""
    assert event.action == TRIGGER
    assert event.target == "business-line"
    assert event.routing_key == routing_key("business-line", salt)
    assert event.dedup_key == f"firehouse/{incident_id}/business-line/update-{number}"
    details = event.body["payload"]["custom_details"]
    assert details["paged_as"] == ["business_line"]
    assert details["reason"] == "business update"
    assert event.body["payload"]["severity"] == severity
    assert "labels" not in details


def resolves(decision: Decision) -> list[OutboundEvent]:
    """The resolve events of a decision."""
    return [e for e in decision.events if e.action == RESOLVE]


def final_update(decision: Decision, incident_id: str, number: int, salt: str = ""
                 ) -> OutboundEvent:
    """The business line's last update in a closing decision, checked: "Recovered: ..." at
    info, then resolved in the same decision, its trigger first (order per dedup key)."""
    (event,) = [e for e in triggers(decision)
                if e.target == "business-line" and e.incident_id == incident_id]
    assert_business_update(event, incident_id, number, severity="info", salt=salt)
    assert event.body["payload"]["summary"].startswith("Recovered:")
    same_key = [e.action for e in decision.events if e.dedup_key == event.dedup_key]
    assert same_key == [TRIGGER, RESOLVE]
    return event


def step(state: State, decision: Decision) -> State:
    """The state once `decision` is stored, as the dispatcher advances it."""
    return apply(state, decision)


class TestMapSeverity:
    @pytest.mark.parametrize(
        ("labels", "expected"),
        [
            ({"severity": "page"}, "critical"),
            ({"severity": "major"}, "error"),
            ({"severity": "exception"}, "error"),
            ({"severity": " WARNING "}, "warning"),
            ({"severity": "info"}, "info"),
            ({}, "error"),
            ({"severity": "purple"}, "critical"),
            ({"severity": "", "priority": "P0"}, "critical"),
        ],
        ids=["page", "major", "exception", "case-and-space", "info", "missing", "unknown",
             "empty-falls-back-to-priority"],
    )
    def test_words_map_to_pagerduty_severities(
        self, labels: dict[str, str], expected: str
    ) -> None:
        """Severity words seen in the wild map to PagerDuty's four values, erring upward."""
        assert map_severity(labels, SEVERITY_LABELS) == expected


class TestDecideFiring:
    def test_warning_on_tier1_database_pages_every_role_at_critical(self, config: Config) -> None:
        """A warning on postgres-payments pages DBA, command center, checkout owner at critical,
        and the tier-1 rule's business updates tell the business line."""
        decision = decide(webhook(pg_lag()), config, State(), NOW)

        (incident,) = decision.incidents
        sent = technical(decision)
        assert sorted(e.target for e in sent) == ["checkout-owner", "command-center", "dba-oncall"]
        assert {e.body["payload"]["severity"] for e in sent} == {"critical"}
        assert all(e.routing_key == routing_key(e.target) for e in sent)
        assert {e.dedup_key for e in sent} == {f"firehouse/{incident.id}/{t}/critical" for t in
                                               ("checkout-owner", "command-center", "dba-oncall")}
        assert {e.body["payload"]["custom_details"]["reason"] for e in sent} == {"opened"}
        (business,) = [e for e in triggers(decision) if e not in sent]
        assert_business_update(business, incident.id, 1)
        assert incident.severity == "critical"
        assert incident.mapped
        assert sent[0].body["payload"]["custom_details"]["alert_severity"] == "warning"

    def test_unmapped_alert_pages_only_the_command_center_flagged(self, config: Config) -> None:
        """An alert on a service in no map pages only the command center, flagged unmapped."""
        labels = {"alertname": "DiskFull", "service": "mystery-box", "severity": "warning"}
        decision = decide(webhook(alert(labels)), config, State(), NOW)

        (event,) = triggers(decision)
        assert event.target == "command-center"
        assert event.body["payload"]["severity"] == "warning"
        assert event.body["payload"]["custom_details"]["unmapped"] is True
        assert "UNMAPPED" in event.body["payload"]["summary"]
        assert not decision.incidents[0].mapped

    def test_same_webhook_twice_triggers_once(self, config: Config) -> None:
        """The same notification again (HA peer, repeat) triggers nothing new."""
        first = decide(webhook(pg_lag()), config, State(), NOW)
        later = NOW + timedelta(seconds=30)
        second = decide(webhook(pg_lag()), config, step(State(), first), later)

        assert len(technical(first)) == 3
        assert len(triggers(first)) == 4  # and the business line's update
        assert second.events == ()
        assert second.incidents == ()
        assert [e.action for e in second.explanations] == ["already open"]

    def test_mixed_payload_is_decided_per_alert(self, config: Config) -> None:
        """A mixed notification opens and resolves each alert by its own status."""
        old = alert({"alertname": "CartSlow", "service": "cart", "severity": "warning"})
        state = step(State(), decide(webhook(old), config, State(), NOW))
        new = pg_lag()

        # Alertmanager's top-level status says "resolved" here; only the alerts count.
        decision = decide(webhook(new, resolved(old), status="resolved"), undamped(config),
                          state, NOW + timedelta(minutes=1))

        actions = {(e.alertname, e.action) for e in decision.explanations}
        assert actions == {("PostgresReplicationLag", "opened"), ("CartSlow", "resolved")}
        (cart_incident,) = state.open.values()
        # cart and postgres-payments are not connected: two fires, two incidents.
        (pg_incident,) = [i for i in decision.incidents if i.id != cart_incident.id]
        assert {e.incident_id for e in technical(decision)} == {pg_incident.id}
        assert len(technical(decision)) == 3
        # The pg incident's first business update, and the cart incident's last one: the
        # business line hears that it is over, at info, and that page is resolved at once.
        closing = final_update(decision, cart_incident.id, 2)
        assert len(triggers(decision)) == 5
        assert {e.dedup_key for e in resolves(decision)} == {
            p.dedup_key for p in cart_incident.pages} | {closing.dedup_key}

    def test_real_mixed_fixture_is_decided_per_alert(self, config: Config) -> None:
        """In the real mixed payload each firing alert opens and each resolved one is remembered."""
        raw = (FIXTURES / "am_issue1051_mixed_firing_and_resolved.json").read_bytes()
        notification = parse_body(raw)
        decision = decide(notification, config, State(), NOW)

        by_fp = {e.fingerprint: e.action for e in decision.explanations}
        for item in notification.alerts:
            expected = "opened" if item.firing else "resolution of an alert never seen firing"
            assert by_fp[item.fingerprint] == expected
        assert {fp for fp, _ in decision.resolutions} == {
            a.fingerprint for a in notification.alerts if not a.firing}


class TestDecideResolving:
    def test_resolve_reaches_every_dedup_key_through_the_same_routing_keys(
        self, config: Config
    ) -> None:
        """A resolve reaches each page through its trigger's routing key, even after a rotation."""
        opened = decide(webhook(pg_lag()), config, State(), NOW)
        rotated = undamped(make_config(salt="rotated"))

        decision = decide(webhook(resolved(pg_lag())), rotated, step(State(), opened),
                          NOW + timedelta(minutes=10))

        (incident,) = decision.incidents
        assert incident.status == "resolved"
        # The business line's last word is new: it goes through the current routing key.
        final = final_update(decision, incident.id, 2, salt="rotated")
        assert triggers(decision) == [final]
        pages = {(e.dedup_key, e.routing_key) for e in triggers(opened)}
        pages.add((final.dedup_key, final.routing_key))
        assert {(e.dedup_key, e.routing_key) for e in resolves(decision)} == pages

    def test_resolve_after_damping_uses_the_same_routing_keys(self, config: Config) -> None:
        """With damping on, the clock's resolves also go through the triggers' routing keys."""
        opened = decide(webhook(pg_lag()), config, State(), NOW)
        rotated = make_config(salt="rotated")
        state = step(State(), opened)
        state = step(state, decide(webhook(resolved(pg_lag())), rotated, state,
                                   NOW + timedelta(minutes=10)))
        # Going quiet replaced the business update (resolving update 1, triggering update 2,
        # on the new key); the people's pages stay up.
        recovering = state.open[opened.incidents[0].id].pages[-1]
        assert recovering.routing_key == routing_key("business-line", "rotated")
        assert recovering.severity == "info"

        closed = tick(rotated, state, NOW + timedelta(minutes=15))

        final = final_update(closed, opened.incidents[0].id, 3, salt="rotated")
        assert triggers(closed) == [final]
        pages = {(e.dedup_key, e.routing_key) for e in technical(opened)}
        pages.add((recovering.dedup_key, recovering.routing_key))
        pages.add((final.dedup_key, final.routing_key))
        assert {(e.dedup_key, e.routing_key) for e in resolves(closed)} == pages

    def test_resolve_event_carries_only_action_and_dedup_key(self, immediate: Config) -> None:
        """A resolve event's body is exactly event_action and dedup_key."""
        opened = decide(webhook(pg_lag()), immediate, State(), NOW)
        decision = decide(webhook(resolved(pg_lag())), immediate, step(State(), opened), NOW)

        # The three technical pages, the first business update, and the final one.
        final_update(decision, opened.incidents[0].id, 2)
        assert len(resolves(decision)) == 4 + 1
        for event in resolves(decision):
            assert dict(event.body) == {"event_action": "resolve", "dedup_key": event.dedup_key}

    def test_late_duplicate_of_firing_after_resolve_opens_nothing(self, immediate: Config
                                                                  ) -> None:
        """A late copy of the firing (same startsAt) after its resolve opens nothing."""
        state = step(State(), decide(webhook(pg_lag()), immediate, State(), NOW))
        state = step(state, decide(webhook(resolved(pg_lag())), immediate, state, NOW))
        assert state.open == {}

        late = decide(webhook(pg_lag()), immediate, state, NOW + timedelta(seconds=5))

        assert late.events == ()
        assert late.incidents == ()
        assert [e.action for e in late.explanations] == ["stale repeat of a resolved alert"]

    def test_late_duplicate_of_firing_inside_damping_does_not_wake_the_incident(
        self, config: Config
    ) -> None:
        """A late copy of the firing while the incident waits out its damping keeps it quiet."""
        state = step(State(), decide(webhook(pg_lag()), config, State(), NOW))
        state = step(state, decide(webhook(resolved(pg_lag())), config, state, NOW))
        (quiet,) = state.open.values()
        assert quiet.quiet_since == NOW

        late = decide(webhook(pg_lag()), config, state, NOW + timedelta(seconds=5))

        assert late.events == ()
        assert late.incidents == ()
        assert [e.action for e in late.explanations] == ["stale repeat of a resolved alert"]

    def test_refire_with_new_starts_at_opens_a_new_incident(self, immediate: Config) -> None:
        """A re-fire with a new startsAt after the incident resolved opens a new incident
        under new dedup keys."""
        first = decide(webhook(pg_lag()), immediate, State(), NOW)
        state = step(State(), first)
        state = step(state, decide(webhook(resolved(pg_lag())), immediate, state, NOW))

        again = decide(webhook(pg_lag(starts_at=NOW + timedelta(minutes=1))), immediate, state,
                       NOW + timedelta(minutes=2))

        assert len(technical(again)) == 3
        assert len(triggers(again)) == 4
        (incident,) = again.incidents
        assert incident.id != first.incidents[0].id
        old_keys = {e.dedup_key for e in triggers(first)}
        assert not old_keys & {e.dedup_key for e in triggers(again)}

    def test_late_resolve_of_an_earlier_occurrence_keeps_the_new_one_open(
        self, config: Config
    ) -> None:
        """A late resolve of an earlier occurrence leaves the current one's pages up."""
        state = step(State(), decide(webhook(pg_lag()), config, State(), NOW))
        state = step(state, decide(webhook(resolved(pg_lag())), config, state, NOW))
        later = pg_lag(starts_at=NOW + timedelta(minutes=1))
        state = step(state, decide(webhook(later), config, state, NOW + timedelta(minutes=2)))

        stale = decide(webhook(resolved(pg_lag())), config, state, NOW + timedelta(minutes=3))

        assert stale.events == ()
        assert len(step(state, stale).open) == 1

    def test_resolve_with_an_earlier_merged_starts_at_still_resolves(
        self, immediate: Config
    ) -> None:
        """A resolve whose startsAt moved earlier (Alertmanager merged an HA copy) resolves."""
        opened = decide(webhook(pg_lag(starts_at=STARTED + timedelta(seconds=5))), immediate,
                        State(), NOW)
        state = step(State(), opened)
        merged = resolved(pg_lag(starts_at=STARTED))

        closed = decide(webhook(merged), immediate, state, NOW + timedelta(minutes=1))

        final = final_update(closed, opened.incidents[0].id, 2)
        assert sorted(e.dedup_key for e in closed.events if e.action == "resolve") == sorted(
            [*(e.dedup_key for e in triggers(opened)), final.dedup_key])
        assert step(state, closed).open == {}

    def test_resolution_of_an_alert_never_seen_is_remembered(self, config: Config) -> None:
        """A resolve of an alert never seen is remembered, so its late firing pages nobody."""
        decision = decide(webhook(resolved(pg_lag())), config, State(), NOW)
        state = step(State(), decision)

        assert decision.events == ()
        assert [starts for _, starts in decision.resolutions] == [STARTED]
        late = decide(webhook(pg_lag()), config, state, NOW + timedelta(seconds=5))
        assert late.events == ()

    def test_firing_older_than_a_remembered_resolution_opens_nothing(
        self, config: Config
    ) -> None:
        """A firing that began before the last resolved occurrence opens nothing."""
        newer = pg_lag(starts_at=STARTED + timedelta(minutes=2))
        state = step(State(), decide(webhook(resolved(newer)), config, State(), NOW))

        late = decide(webhook(pg_lag()), config, state, NOW + timedelta(seconds=5))

        assert late.events == ()


class TestDedupKey:
    def test_dedup_key_is_bounded_and_stable(self) -> None:
        """A dedup key is at most 255 characters and fixed by incident, target and step."""
        long_target = "t" * 300
        assert len(dedup_key("0123456789abcdef", long_target)) <= DEDUP_KEY_LIMIT
        assert dedup_key("abc", long_target) == dedup_key("abc", long_target)
        assert dedup_key("abc", "dba-oncall") == dedup_key("abc", "dba-oncall")
        assert dedup_key("abc", "dba-oncall") != dedup_key("abc", "command-center")
        assert dedup_key("abc", "dba-oncall", "critical") == "firehouse/abc/dba-oncall/critical"
        assert dedup_key("abc", "dba-oncall", "warning") != dedup_key("abc", "dba-oncall",
                                                                     "critical")
        assert len(dedup_key("abc", long_target, "critical")) <= DEDUP_KEY_LIMIT

    def test_dedup_keys_survive_from_trigger_to_resolve(self, immediate: Config) -> None:
        """The keys a decision triggers are the keys its incident's resolve events use."""
        opened = decide(webhook(pg_lag()), immediate, State(), NOW)
        closing = decide(webhook(resolved(pg_lag())), immediate, step(State(), opened), NOW)

        final = final_update(closing, opened.incidents[0].id, 2)
        assert sorted(e.dedup_key for e in (*triggers(opened), final)) == sorted(
            e.dedup_key for e in resolves(closing))
        assert all(len(e.dedup_key) <= DEDUP_KEY_LIMIT for e in opened.events)


class TestSummary:
    def test_long_annotation_is_cut_to_pagerduty_limit(self, config: Config) -> None:
        """The 4,955-character annotation pages with a spec-valid summary of <= 1024 characters."""
        raw = (FIXTURES / "prometheus_bot_v3_very_long_annotation.json").read_bytes()
        decision = decide(parse_body(raw), config, State(), NOW)

        assert triggers(decision)
        for event in triggers(decision):
            summary = event.body["payload"]["summary"]
            assert len(summary) <= SUMMARY_LIMIT
            assert summary.endswith("…")
            body = {**event.body, "routing_key": event.routing_key}
            assert validate(EVENT_PATH, body) == []

    def test_control_characters_in_labels_do_not_reach_the_summary(self, config: Config) -> None:
        """Control characters in labels and annotations never reach a summary."""
        labels = {"alertname": "Disk\x00Full\r\nFAKE: all clear\x1b[0m", "service": "bad\x85svc",
                  "severity": "critical"}
        item = alert(labels, annotations={"summary": "line one\nline two\ttabbed\x7f"})
        decision = decide(webhook(item), config, State(), NOW)

        assert triggers(decision)
        for event in triggers(decision):
            assert not _CONTROL.search(event.body["payload"]["summary"])
        for note in decision.timeline:
            assert not _CONTROL.search(note.message)

    @pytest.mark.parametrize(("role", "target"), [("senior_management", "ops-management"),
                                                  ("business_line", "business-line")])
    def test_summary_roles_get_plain_summary_without_labels(
        self, config: Config, role: str, target: str
    ) -> None:
        """Management and the business line get the plain summary, without labels or links."""
        first = Rule(name="summary roles too", page=(role, "technical_lead"))
        with_role = dataclasses.replace(config, rules=(first,))
        labels = {"alertname": "PostgresDown", "service": "postgres-payments",
                  "severity": "critical", "instance": "pg-payments-1:9187"}
        decision = decide(webhook(alert(labels)), with_role, State(), NOW)

        by_target = {e.target: e for e in triggers(decision)}
        plain = by_target[target].body
        assert plain["payload"]["summary"] == business_summary(decision.incidents[0])
        assert "online-checkout" in plain["payload"]["summary"]
        # Since the alert started, not since Firehouse heard of it.
        assert f"since {STARTED:%Y-%m-%d %H:%M} UTC" in plain["payload"]["summary"]
        assert "pg-payments-1" not in json.dumps(dict(plain), ensure_ascii=False)
        assert "labels" not in plain["payload"]["custom_details"]
        assert "links" not in plain
        technical = by_target["dba-oncall"].body
        assert technical["payload"]["custom_details"]["labels"]["instance"] == "pg-payments-1:9187"
        assert (technical["payload"]["source"], technical["client_url"]) == (
            "postgres-payments", "http://alertmanager:9093")

    @pytest.mark.parametrize(("role", "target"), [("senior_management", "ops-management"),
                                                  ("business_line", "business-line")])
    def test_summary_pages_name_no_service_and_link_nowhere(
        self, config: Config, role: str, target: str
    ) -> None:
        """A summary page's source is Firehouse, not the failing service, and it has no
        client_url to Alertmanager: plain words only, and still a valid event."""
        first = Rule(name="summary roles too", page=(role, "technical_lead"))
        with_role = dataclasses.replace(config, rules=(first,))
        labels = {"alertname": "PostgresDown", "service": "postgres-payments",
                  "severity": "critical"}
        decision = decide(webhook(alert(labels)), with_role, State(), NOW)

        plain = next(e for e in triggers(decision) if e.target == target).body
        assert plain["payload"]["source"] == "firehouse"
        assert "client_url" not in plain
        text = json.dumps(dict(plain), ensure_ascii=False)
        assert "postgres-payments" not in text
        assert "alertmanager" not in text
        assert validate(EVENT_PATH, {**plain, "routing_key": routing_key(target)}) == []


class TestEventSize:
    def test_huge_annotations_are_cut_to_fit(self, config: Config) -> None:
        """A trigger whose annotations exceed 512 KB is cut to fit, never refused whole."""
        from daemon.decide import EVENT_LIMIT, event_size  # noqa: PLC0415

        huge = alert({"alertname": "HugeAnn", "service": "checkout", "severity": "warning"},
                     annotations={"description": "trace\n" * 120_000, "summary": "short"})
        decision = decide(webhook(huge), config, State(), NOW)

        assert len(technical(decision)) == 3
        (business,) = [e for e in triggers(decision) if e.target == "business-line"]
        assert_business_update(business, decision.incidents[0].id, 1)
        assert "annotations" not in business.body["payload"]["custom_details"]
        for event in technical(decision):
            body = dict(event.body)
            assert event_size(body) <= EVENT_LIMIT
            details = body["payload"]["custom_details"]
            assert details["firehouse_truncated"] == (
                "long label and annotation values cut to 1024 characters")
            assert len(details["annotations"]["description"]) == 1024
            assert details["annotations"]["summary"] == "short"
            assert body["payload"]["severity"] == "critical"

    def test_thousands_of_labels_are_left_out(self, config: Config) -> None:
        """A trigger with too many labels to fit keeps its summary and drops the label dump."""
        from daemon.decide import EVENT_LIMIT, event_size  # noqa: PLC0415

        labels = {"alertname": "Wide", "service": "checkout"}
        labels.update({f"label_{i:05d}": "x" * 100 for i in range(6000)})
        decision = decide(webhook(alert(labels)), config, State(), NOW)

        assert len(technical(decision)) == 3
        for event in triggers(decision):
            assert event_size(dict(event.body)) <= EVENT_LIMIT
        for event in technical(decision):
            body = dict(event.body)
            details = body["payload"]["custom_details"]
            assert "labels" not in details
            assert details["firehouse_truncated"].endswith("labels left out")
            assert "Wide on checkout" in body["payload"]["summary"]


class TestDeadlines:
    """The incident records the deadlines of its matched rules' clocks, from `now`."""

    def test_tier_one_database_alert(self, config: Config) -> None:
        """Tier-1 (5m, 1h, updates every 30m) and the default (15m, 4h, senior management)
        merge to the tightest deadlines, counted from the decision's `now`."""
        decision = decide(webhook(pg_lag()), config, State(), NOW)
        (incident,) = decision.incidents
        assert incident.deadlines == Deadlines(
            ack_by=NOW + timedelta(minutes=5), resolve_by=NOW + timedelta(hours=1),
            escalate_to=("senior_management",), business_updates_every=1800,
        )
        (explanation,) = decision.explanations
        assert explanation.deadlines == incident.deadlines

    def test_opened_note_mentions_the_deadlines(self, config: Config) -> None:
        """The timeline's `assessed` note ends with the deadlines, in words."""
        decision = decide(webhook(pg_lag()), config, State(), NOW)
        (opened,) = [n for n in decision.timeline if n.kind == "opened"]
        assert opened.message == "PostgresReplicationLag on postgres-payments opened the incident"
        (note,) = [n for n in decision.timeline if n.kind == "assessed"]
        assert note.message.endswith(
            "(rules: tier-1 impact brings in the service lead, call the fire department "
            "first); deadlines: ack by 2024-05-01T12:05:00.250000Z (5m), resolve by "
            "2024-05-01T13:00:00.250000Z (1h), if missed escalate to senior_management; "
            "business updates every 30m")

    def test_unmapped_alert_has_only_an_ack_deadline(self, config: Config) -> None:
        """A clock without resolve_within leaves resolve_by unset."""
        unmapped = alert({"alertname": "DiskFilling", "service": "legacy-ftp",
                          "severity": "warning"})
        (incident,) = decide(webhook(unmapped), config, State(), NOW).incidents
        assert incident.deadlines == Deadlines(ack_by=NOW + timedelta(minutes=30),
                                               escalate_to=("senior_management",))

    def test_rules_without_clock(self, config: Config) -> None:
        """Rules that set no clock give empty deadlines and an `assessed` note without them."""
        bare = dataclasses.replace(config, rules=(Rule("all", page=("incident_lead",)),))
        decision = decide(webhook(pg_lag()), bare, State(), NOW)
        (incident,) = decision.incidents
        assert incident.deadlines == Deadlines()
        (note,) = [n for n in decision.timeline if n.kind == "assessed"]
        assert note.message.endswith("(rules: all)")

    def test_json_round_trip(self) -> None:
        """to_json and from_json are inverses, with and without deadlines."""
        full = Deadlines(NOW, NOW + timedelta(hours=4), ("senior_management", "dba-oncall"),
                         1800)
        for deadlines in (full, Deadlines()):
            assert Deadlines.from_json(json.loads(json.dumps(deadlines.to_json()))) == deadlines


class TestOutcomesSharedWithinAnIncident:
    def test_alerts_differing_in_a_matched_label_each_get_their_rules(
        self, config: Config, tmp_path: Any
    ) -> None:
        """The rules are evaluated once per kind of alert in an incident, the kind being what
        the rules read (service, severity, the labels their matchers name): two alerts that
        differ only in such a label each get their own outcome, so both pages go out."""
        from daemon.rules import load_rules  # noqa: PLC0415

        path = tmp_path / "rules.yaml"
        path.write_text(
            "rules:\n"
            "  - name: the database team's alerts also page the incident lead\n"
            "    match: 'team=\"db\"'\n"
            "    page: [incident_lead]\n"
            "    continue: true\n"
            "  - name: everything pages the technical lead\n"
            "    page: [technical_lead]\n", encoding="utf-8")
        rules, problems = load_rules([path], set(config.settings.targets))
        assert problems == []
        custom = dataclasses.replace(config, rules=rules)
        first = {"alertname": "PaymentsErrors", "service": "payments", "severity": "warning"}
        alerts = [alert({**first, "instance": f"app-{n}", "team": "app"}) for n in range(3)]
        alerts.append(alert({**first, "instance": "db-0", "team": "db"}))

        decision = decide(webhook(*alerts), custom, State(), NOW)

        assert config.target_for_role("incident_lead") in {e.target for e in decision.events}
        alone = decide(webhook(*alerts[:3]), custom, State(), NOW)
        assert config.target_for_role("incident_lead") not in {e.target for e in alone.events}


class TestEvolve:
    """`evolve`, the engine's fast `dataclasses.replace`, copies records exactly."""

    def test_same_record_as_replace_for_every_kind(self, config: Config) -> None:
        """Every record the engine replaces comes out as `dataclasses.replace` makes it,
        changed fields set, the others shared, the original untouched."""
        decision = decide(webhook(alert({"alertname": "PaymentsDown", "service": "payments",
                                         "severity": "critical"})), config, State(), NOW)
        incident = decision.incidents[0]
        record = next(iter(incident.alerts.values()))
        later = NOW + timedelta(minutes=1)
        cases: list[tuple[Any, dict[str, Any]]] = [
            (incident, {"updated_at": later, "quiet_since": later, "fired": ("ack",)}),
            (record, {"status": "resolved", "last_seen": later}),
            (incident.pages[0], {"status": "acknowledged", "acknowledged_by": "ana"}),
            (incident.deadlines, {}),
            (State(), {"changes": ()}),
        ]
        for original, changes in cases:
            copy = evolve(original, **changes)
            assert copy == dataclasses.replace(original, **changes)
            assert copy is not original
            assert type(copy) is type(original)
        assert evolve(incident, title="other").alerts is incident.alerts
        assert incident.updated_at == NOW

    def test_unknown_field_is_a_type_error(self, config: Config) -> None:
        """A misspelt field fails as with `dataclasses.replace`, and only slotted records
        without checks in `__post_init__` are copied this way."""
        with pytest.raises(TypeError, match="updatedAt"):
            evolve(Deadlines(), updatedAt=NOW)

        @dataclasses.dataclass(frozen=True)
        class Plain:
            x: int

        with pytest.raises(TypeError, match="slotted"):
            evolve(Plain(1), x=2)
