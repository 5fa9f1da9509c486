"""Tests of daemon.pdwebhook: PagerDuty v3 webhook signatures and payloads.

The `aldaviva_*` fixtures are bodies a PagerDuty account sent, with the signatures it sent
(tests/fixtures/pagerduty/README.md): verification is checked against PagerDuty's own
output, not only against our own signing.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.decide import PagerDutyUpdate
from daemon.errors import PayloadError
from daemon.pdwebhook import HANDLED_EVENT_TYPES, parse, verify
from tests.helpers import NOW, PAGERDUTY_FIXTURES, pagerduty_webhook, sign_pagerduty

SIGNED = json.loads((PAGERDUTY_FIXTURES / "signatures.json").read_text(encoding="utf-8"))
REAL_SECRET: str = SIGNED["secret"]
REAL_SIGNATURES: dict[str, str] = SIGNED["x-pagerduty-signature"]
SECRET = "c2VjcmV0LW9mLXRoZS1zdWJzY3JpcHRpb24tZm9yLXRlc3Rz"
OLD_SECRET = "b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dC1vZi1zZXJ2aWNl"
KEY = "firehouse/d8a1ee42f87be406/dba-oncall"


def fixture(name: str) -> bytes:
    """A PagerDuty payload fixture, byte for byte."""
    return (PAGERDUTY_FIXTURES / name).read_bytes()


def mutated(change: Any, event_type: str = "incident.acknowledged") -> bytes:
    """A valid body for `event_type` with `change(event)` applied to its decoded event."""
    data = json.loads(pagerduty_webhook(event_type, KEY))
    change(data["event"])
    return json.dumps(data).encode()


class TestVerify:
    @pytest.mark.parametrize("name", sorted(REAL_SIGNATURES))
    def test_signature_pagerduty_sent_is_accepted(self, name: str) -> None:
        """The signature PagerDuty sent with a real body verifies under the subscription's
        secret."""
        assert verify(fixture(name), REAL_SIGNATURES[name], [REAL_SECRET])

    def test_signature_of_another_body_is_refused(self) -> None:
        """A real signature replayed with a different body does not verify."""
        header = REAL_SIGNATURES["aldaviva_incident.acknowledged.json"]
        assert not verify(fixture("aldaviva_incident.resolved.json"), header, [REAL_SECRET])

    def test_one_changed_byte_is_refused(self) -> None:
        """Changing a single byte of a signed body (a space) breaks the signature."""
        body = fixture("aldaviva_incident.acknowledged.json")
        header = REAL_SIGNATURES["aldaviva_incident.acknowledged.json"]
        assert not verify(body.replace(b'"Ben"', b'"Ben "'), header, [REAL_SECRET])

    def test_other_secret_is_refused(self) -> None:
        """A body signed with another secret does not verify."""
        body = pagerduty_webhook("incident.acknowledged", KEY)
        assert not verify(body, sign_pagerduty(body, OLD_SECRET), [SECRET])

    def test_rotation_any_signature_against_any_secret(self) -> None:
        """During a rotation PagerDuty sends one signature per secret; one match suffices,
        whichever secret Firehouse has."""
        body = pagerduty_webhook("incident.resolved", KEY)
        both = f"{sign_pagerduty(body, OLD_SECRET)},{sign_pagerduty(body, SECRET)}"
        assert verify(body, both, [SECRET])
        assert verify(body, both, [OLD_SECRET])
        assert verify(body, sign_pagerduty(body, SECRET), [OLD_SECRET, SECRET])
        assert not verify(body, both, ["a-third-secret"])

    def test_spaces_around_signatures_and_uppercase_hex(self) -> None:
        """Signatures separated by ', ' and written in uppercase hex still verify."""
        body = pagerduty_webhook("incident.resolved", KEY)
        digest = sign_pagerduty(body, SECRET).removeprefix("v1=")
        assert verify(body, f"v1=deadbeef, v1={digest.upper()} ", [SECRET])

    @pytest.mark.parametrize("header", [None, ""])
    def test_missing_header_is_refused(self, header: str | None) -> None:
        """Without the header, nothing verifies."""
        assert not verify(pagerduty_webhook("incident.resolved", KEY), header, [SECRET])

    def test_no_secret_accepts_nothing(self) -> None:
        """With no secret configured, even a signature made with an empty key is refused."""
        body = pagerduty_webhook("incident.resolved", KEY)
        assert not verify(body, sign_pagerduty(body, ""), [])

    @pytest.mark.parametrize("garbage", [
        "garbage", "v1=", "v1", ",,,", "v0={digest}", "sha256={digest}", "{digest}",
        "v1={digest}0", "v1= {digest}x", "v1=\u00e9\u00e9", "v1=\udcff\udcfe", "v1=" + "a" * 5000,
    ], ids=["word", "empty-v1", "no-equals", "commas", "v0", "sha256-prefix", "bare-hex",
            "longer", "suffixed", "non-ascii", "not-utf8", "huge"])
    def test_garbage_header_is_refused_without_error(self, garbage: str) -> None:
        """A header that is not a v1 signature of the body is refused, never an exception;
        the right digest under another version or prefix counts for nothing."""
        body = pagerduty_webhook("incident.resolved", KEY)
        digest = sign_pagerduty(body, SECRET).removeprefix("v1=")
        assert not verify(body, garbage.format(digest=digest), [SECRET])

    def test_every_pair_is_compared_in_constant_time(self, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
        """Each signature is compared with each secret's digest by hmac.compare_digest, with
        no early exit after a match (the time taken says nothing about which matched)."""
        body = pagerduty_webhook("incident.resolved", KEY)
        header = f"{sign_pagerduty(body, SECRET)},v1=00,v1=11"
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b)

        # daemon.pdwebhook looks compare_digest up on the hmac module at each call.
        monkeypatch.setattr(hmac, "compare_digest", spy)
        assert verify(body, header, [SECRET, OLD_SECRET])
        assert len(calls) == 3 * 2
        assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


class TestParse:
    def test_real_acknowledgement(self) -> None:
        """A real incident.acknowledged gives PagerDuty's event id and time, the incident's
        incident_key as dedup key, its id and URL, and who acknowledged."""
        assert parse(fixture("aldaviva_incident.acknowledged.json")) == PagerDutyUpdate(
            event_id="01FKZSRAQJLP9S3OPM2VALGUPJ",
            event_type="incident.acknowledged",
            occurred_at=datetime(2025, 4, 7, 3, 47, 13, 546000, tzinfo=UTC),
            dedup_key="dfead9d88e0649e8b7dee514b1875756",
            pd_incident="Q2CKYRLH85UNN4",
            url="https://aldaviva.pagerduty.com/incidents/Q2CKYRLH85UNN4",
            agent="Ben",
        )

    def test_real_resolution(self) -> None:
        """A real incident.resolved with no assignees left parses, with no detail."""
        update = parse(fixture("aldaviva_incident.resolved.json"))
        assert update is not None
        assert (update.event_type, update.dedup_key, update.agent, update.detail) == (
            "incident.resolved", "dfead9d88e0649e8b7dee514b1875756", "Ben", "")

    def test_documented_priority_update(self) -> None:
        """PagerDuty's documented incident.priority_updated gives the new priority."""
        update = parse(fixture("developer_docs_incident.priority_updated.json"))
        assert update == PagerDutyUpdate(
            event_id="5ac64822-4adc-4fda-ade0-410becf0de4f",
            event_type="incident.priority_updated",
            occurred_at=datetime(2020, 10, 2, 18, 45, 22, 169000, tzinfo=UTC),
            dedup_key="d3640fbd41094207a1c11e58e46b1662",
            pd_incident="PGR0VU2",
            url="https://acme.pagerduty.com/incidents/PGR0VU2",
            agent="Tenex Engineer",
            detail="priority P1",
        )

    @pytest.mark.parametrize("name", [
        "aldaviva_incident.triggered.json", "aldaviva_incident.annotated.json",
        "aldaviva_pagey.ping.json", "developer_docs_service.updated.json",
    ])
    def test_events_firehouse_does_not_act_on_are_none(self, name: str) -> None:
        """Triggers (Firehouse sent them), notes, PagerDuty's test ping and service events
        parse to None."""
        assert parse(fixture(name)) is None

    @pytest.mark.parametrize("event_type", sorted(HANDLED_EVENT_TYPES))
    def test_every_handled_type(self, event_type: str) -> None:
        """Each handled event type parses to an update carrying its type, dedup key, agent
        and time."""
        update = parse(pagerduty_webhook(event_type, KEY, agent="Ann Oncall",
                                         incident_id="Q1X2Y3"))
        assert update is not None
        assert (update.event_type, update.dedup_key, update.agent, update.occurred_at) == (
            event_type, KEY, "Ann Oncall", NOW)
        assert (update.pd_incident, update.url) == (
            "Q1X2Y3", "https://acme.pagerduty.com/incidents/Q1X2Y3")

    def test_handled_types(self) -> None:
        """The handled types are the incident changes the brief names, plus delegation."""
        assert {
            "incident.acknowledged", "incident.unacknowledged", "incident.resolved",
            "incident.reassigned", "incident.escalated", "incident.reopened",
            "incident.priority_updated", "incident.delegated",
        } == HANDLED_EVENT_TYPES

    @pytest.mark.parametrize(("event_type", "detail"), [
        ("incident.reassigned", "assigned to Ann, Bob"),
        ("incident.escalated", "assigned to Ann, Bob"),
        ("incident.delegated", "escalation policy Default, assigned to Ann, Bob"),
        ("incident.acknowledged", ""),
        ("incident.reopened", ""),
    ])
    def test_detail_names_the_new_assignees(self, event_type: str, detail: str) -> None:
        """Reassignments, escalations and delegations say who the incident is assigned to."""
        update = parse(pagerduty_webhook(event_type, KEY, assignees=("Ann", "Bob")))
        assert update is not None
        assert update.detail == detail

    def test_reassigned_to_nobody(self) -> None:
        """A reassignment with no assignee says so rather than leaving the detail empty."""
        update = parse(pagerduty_webhook("incident.reassigned", KEY, assignees=()))
        assert update is not None
        assert update.detail == "assigned to nobody"

    def test_priority_removed(self) -> None:
        """A priority update to no priority says it was removed."""
        update = parse(pagerduty_webhook("incident.priority_updated", KEY, priority=None))
        assert update is not None
        assert update.detail == "priority removed"

    def test_merge_is_told_apart_from_a_fix(self) -> None:
        """An incident resolved by merging it into another says which one."""
        def merge(event: dict[str, Any]) -> None:
            event["data"]["resolve_reason"] = {
                "type": "merge_resolve_reason",
                "incident": {"id": "PABC123", "summary": "[#7] Disk full",
                             "type": "incident_reference"}}
        update = parse(mutated(merge, "incident.resolved"))
        assert update is not None
        assert update.detail == "merged into [#7] Disk full"

    def test_null_agent(self) -> None:
        """An event PagerDuty did by itself (agent null) has no agent."""
        update = parse(pagerduty_webhook("incident.unacknowledged", KEY, agent=None))
        assert update is not None
        assert update.agent == ""

    @pytest.mark.parametrize("key", [None, ""])
    def test_without_incident_key_the_dedup_key_is_empty(self, key: str | None) -> None:
        """An incident without an incident_key parses, with an empty dedup key (it cannot be
        matched; the server ignores it)."""
        update = parse(pagerduty_webhook("incident.acknowledged", key))
        assert update is not None
        assert update.dedup_key == ""

    def test_lone_surrogate_is_replaced(self) -> None:
        """A lone surrogate escape in a name (valid JSON, not storable as UTF-8) becomes
        U+FFFD."""
        body = pagerduty_webhook("incident.acknowledged", KEY, agent="X").replace(
            b'"summary":"X"', b'"summary":"A\\ud800B"')
        update = parse(body)
        assert update is not None
        assert update.agent == "A\ufffdB"
        update.agent.encode("utf-8")

    def test_unknown_extra_fields_are_ignored(self) -> None:
        """Fields PagerDuty may add later do not break parsing."""
        def extra(event: dict[str, Any]) -> None:
            event["new_field"] = {"x": 1}
            event["data"]["incident_type"] = {"name": "incident_default"}
        update = parse(mutated(extra))
        assert update is not None
        assert update.dedup_key == KEY

    @pytest.mark.parametrize(("change", "message"), [
        (lambda e: e.pop("id"), "field 'event.id' is missing"),
        (lambda e: e.update(id=7), "field 'event.id' must be a string, got int"),
        (lambda e: e.pop("data"), "field 'event.data' is missing"),
        (lambda e: e.update(data=[]), "field 'event.data' must be an object, got list"),
        (lambda e: e.pop("occurred_at"), "field 'event.occurred_at' is missing"),
        (lambda e: e.update(occurred_at="yesterday"),
         "field 'event.occurred_at' is not an ISO 8601 time with a time zone: 'yesterday'"),
        (lambda e: e.update(occurred_at="2024-05-01T12:00:00"),
         "field 'event.occurred_at' is not an ISO 8601 time with a time zone: "
         "'2024-05-01T12:00:00'"),
        (lambda e: e.update(occurred_at="0001-01-01T00:00:00Z"),
         "field 'event.occurred_at' is the zero time: '0001-01-01T00:00:00Z'"),
        (lambda e: e["data"].pop("id"), "field 'event.data.id' is missing"),
        (lambda e: e["data"].update(incident_key=42),
         "field 'event.data.incident_key' must be a string, got int"),
        (lambda e: e["data"].update(html_url=["x"]),
         "field 'event.data.html_url' must be a string, got list"),
        (lambda e: e.update(agent="Ben"), "field 'event.agent' must be an object or null, got str"),
        (lambda e: e["agent"].update(summary=1),
         "field 'event.agent.summary' must be a string, got int"),
    ], ids=["no-id", "numeric-id", "no-data", "list-data", "no-time", "bad-time", "naive-time",
            "zero-time", "no-incident-id", "numeric-key", "list-url", "string-agent",
            "numeric-agent-name"])
    def test_malformed_event_names_the_field(self, change: Any, message: str) -> None:
        """A handled event missing a field Firehouse needs, or with one of the wrong type, is
        a PayloadError naming the field."""
        with pytest.raises(PayloadError) as caught:
            parse(mutated(change))
        assert str(caught.value) == message

    def test_assignees_not_a_list(self) -> None:
        """A reassignment whose assignees are not a list names the field."""
        def change(event: dict[str, Any]) -> None:
            event["data"]["assignees"] = "Ann"
        with pytest.raises(PayloadError) as caught:
            parse(mutated(change, "incident.reassigned"))
        assert str(caught.value) == "field 'event.data.assignees' must be a list, got str"

    @pytest.mark.parametrize(("body", "message"), [
        (b"[]", "body must be a JSON object, got list"),
        (b"null", "body must be a JSON object, got null"),
        (b"{}", "field 'event' is missing"),
        (b'{"event": "incident.acknowledged"}', "field 'event' must be an object, got str"),
        (b'{"event": {}}', "field 'event.event_type' is missing"),
        (b'{"event": {"event_type": ["incident.resolved"]}}',
         "field 'event.event_type' must be a string, got list"),
    ])
    def test_malformed_envelope_names_the_field(self, body: bytes, message: str) -> None:
        """An envelope without an event object and its type is a PayloadError naming it."""
        with pytest.raises(PayloadError) as caught:
            parse(body)
        assert str(caught.value) == message

    @pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe{", b"[" * 100_000])
    def test_not_json(self, body: bytes) -> None:
        """A body that is not JSON (or nested too deep to decode) is a PayloadError."""
        with pytest.raises(PayloadError, match=r"^body is not valid JSON: "):
            parse(body)

    def test_ignored_type_is_not_checked_further(self) -> None:
        """An event Firehouse ignores needs only its type: a ping without data is None."""
        assert parse(b'{"event": {"event_type": "pagey.ping"}}') is None
