"""PagerDuty v3 webhooks: signature verification and parsing into `PagerDutyUpdate`. Pure.

PagerDuty signs each delivery with every secret of the webhook subscription (several during
a rotation): `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>[,v1=...]`.
The payload is `{"event": {id, event_type, resource_type, occurred_at, agent, client,
data}}`; for incident events `data` is the incident, whose `incident_key` is the dedup key
Firehouse triggered it with (Events API v2). Field reference: PagerDuty/developer-docs,
docs/webhooks/01-Overview.md and 04-Signatures.md; real samples in tests/fixtures/pagerduty/.

PagerDuty drops a delivery answered with a 4xx and retries a 5xx, so parsing is strict only
where Firehouse depends on a field, and tolerant of fields it does not use.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from daemon.alerts import json_object, kind, parse_time
from daemon.decide import PagerDutyUpdate
from daemon.errors import PayloadError

SIGNATURE_HEADER = "X-PagerDuty-Signature"
# The incident events that change what Firehouse knows about one of its pages. Others
# (incident.triggered: Firehouse sent it; incident.annotated, responders, status updates,
# service.*, the pagey.ping test event) are answered 200 and otherwise ignored.
HANDLED_EVENT_TYPES = frozenset({
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reassigned",
    "incident.delegated",
    "incident.escalated",
    "incident.reopened",
    "incident.priority_updated",
})
_VERSION = b"v1="


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """Whether any v1 signature in the `X-PagerDuty-Signature` header is the HMAC-SHA256 of
    `body` under any of `secrets`; every pair is compared in constant time."""
    if not header or not secrets:
        return False
    # Header values are untrusted: bytes that are not UTF-8 arrive as surrogates, and must
    # mean "wrong signature", not an error.
    raw = header.encode("utf-8", "surrogateescape")
    given = [part.strip()[len(_VERSION):].lower() for part in raw.split(b",")
             if part.strip().startswith(_VERSION)]
    expected = [hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
                for secret in secrets]
    matched = False
    # No early exit: how long this takes says nothing about which comparison matched.
    for signature in given:
        for digest in expected:
            matched |= hmac.compare_digest(signature, digest)
    return matched


def parse(body: bytes) -> PagerDutyUpdate | None:
    """The update a webhook body carries, or None for an event type Firehouse does not act
    on; raises `PayloadError` naming the field when the body is malformed."""
    data = json_object(body)
    event = _object(data, "event", "event")
    event_type = _string(event, "event_type", "event.event_type")
    if event_type not in HANDLED_EVENT_TYPES:
        return None
    incident = _object(event, "data", "event.data")
    return PagerDutyUpdate(
        event_id=_string(event, "id", "event.id"),
        event_type=event_type,
        occurred_at=_time(event, "occurred_at", "event.occurred_at"),
        dedup_key=_optional_string(incident, "incident_key", "event.data.incident_key"),
        pd_incident=_string(incident, "id", "event.data.id"),
        url=_optional_string(incident, "html_url", "event.data.html_url"),
        agent=_reference_name(event.get("agent"), "event.agent"),
        detail=_detail(event_type, incident),
    )


def _detail(event_type: str, incident: dict[str, Any]) -> str:
    """What changed, in a few words, for the event types that say more than their name."""
    if event_type in ("incident.reassigned", "incident.escalated", "incident.delegated"):
        assignees = incident.get("assignees")
        if assignees is not None and not isinstance(assignees, list):
            raise PayloadError(f"field 'event.data.assignees' must be a list, got "
                               f"{kind(assignees)}")
        names = [_reference_name(a, f"event.data.assignees[{i}]")
                 for i, a in enumerate(assignees or [])]
        detail = "assigned to " + (", ".join(n for n in names if n) or "nobody")
        if event_type == "incident.delegated":
            policy = _reference_name(incident.get("escalation_policy"),
                                     "event.data.escalation_policy")
            detail = f"escalation policy {policy or '(unknown)'}, {detail}"
        return detail
    if event_type == "incident.priority_updated":
        priority = _reference_name(incident.get("priority"), "event.data.priority")
        return f"priority {priority}" if priority else "priority removed"
    if event_type == "incident.resolved":
        reason = incident.get("resolve_reason")
        # An incident merged into another is resolved in PagerDuty, but its alerts live on
        # in the other one: say so, so that it is not taken for a fix.
        if isinstance(reason, dict) and reason.get("type") == "merge_resolve_reason":
            into = _reference_name(reason.get("incident"), "event.data.resolve_reason.incident")
            return f"merged into {into or 'another incident'}"
    return ""


def _reference_name(value: Any, path: str) -> str:
    """A PagerDuty reference object's human name (`summary`, else `id`); "" for null."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise PayloadError(f"field {path!r} must be an object or null, got {kind(value)}")
    return (_optional_string(value, "summary", f"{path}.summary")
            or _optional_string(value, "id", f"{path}.id"))


def _object(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise PayloadError(f"field {path!r} is missing")
    if not isinstance(value, dict):
        raise PayloadError(f"field {path!r} must be an object, got {kind(value)}")
    return value


def _string(obj: dict[str, Any], key: str, path: str) -> str:
    value = _optional_string(obj, key, path)
    if not value:
        raise PayloadError(f"field {path!r} is missing")
    return value


def _optional_string(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"field {path!r} must be a string, got {kind(value)}")
    # A lone surrogate (a `\ud800` escape) is valid JSON but cannot be stored as UTF-8:
    # replaced by U+FFFD, as daemon.alerts does.
    return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _time(obj: dict[str, Any], key: str, path: str) -> datetime:
    value = _string(obj, key, path)
    try:
        parsed = parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"field {path!r} is not an ISO 8601 time with a time zone: "
                           f"{value!r:.60}") from exc
    if parsed is None:
        raise PayloadError(f"field {path!r} is the zero time: {value!r:.60}")
    return parsed


