"""Rows as both stores keep them (SQLite and PostgreSQL share their tables column for
column): times as epoch seconds, documents as JSON text; and how they become the engine's
records and the API's JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from daemon.decide import (
    OPEN,
    RESOLVE,
    TRIGGER,
    AlertRecord,
    Change,
    Deadlines,
    Incident,
    trigger_priority,
)
from daemon.decide.bodies import encode_event
from daemon.store import DEAD, DRY_RUN, PENDING, StoredEvent

# The order in which pending events go out when they cannot all go at once (a backlog, a
# routing key out of budget): the most urgent first, resolves with critical triggers (a
# resolve frees a responder), then the oldest. Indexed over pending rows only, so that
# picking the next events reads them in order instead of sorting every pending row.
URGENCY = f"(CASE WHEN action = '{RESOLVE}' THEN {trigger_priority('critical')} ELSE priority END)"

# A page's delivery (the `delivery` of each page in the API) is that of one of the outbox
# events of its dedup key: the first one still pending, if any (a resolve waits behind its
# trigger: the trigger is what is being sent), else the latest (the resolve, once there is
# one): so that a page PagerDuty still has open because its resolve was refused, or is
# still being sent, does not read as resolved. Both stores order the rows of a key alike.
PAGE_ACTIONS = (TRIGGER, RESOLVE)
DELIVERY_COLUMNS = "dedup_key, id, action, state, attempts, last_status, last_error"
DELIVERY_ORDER = (f"(CASE WHEN state = '{PENDING}' THEN 0 ELSE 1 END), "
                  f"(CASE WHEN state = '{PENDING}' THEN id ELSE -id END)")


def delivery_json(row: Sequence[Any]) -> dict[str, Any]:
    """A page's delivery as the API shows it, from a row of DELIVERY_COLUMNS: which event
    (`action`, `event_id`), its `state` and `attempts`, and PagerDuty's last answer while it
    is dead or being retried."""
    _key, ident, action, state, attempts, status, error = row
    delivery: dict[str, Any] = {"action": action, "state": state, "event_id": ident,
                                "attempts": attempts}
    if error and state in (DEAD, PENDING):
        delivery["last_error"] = error
        delivery["last_status"] = status
    return delivery


# Open incidents with events that were logged in dry-run and never sent; `{limit}` is the
# store's placeholder for how many at most.
DRY_RUN_INCIDENTS = (
    "SELECT DISTINCT o.incident_id FROM outbox o JOIN incidents i ON i.id = o.incident_id "  # noqa: S608
    f"WHERE o.state = '{DRY_RUN}' AND i.status = '{OPEN}' ORDER BY o.incident_id LIMIT {{limit}}")


def json_text(value: Any) -> str:
    """A document as the stores keep it: JSON text, by the events' orjson encoder (the
    writer thread holds the GIL while it encodes; json.dumps takes ten times as long)."""
    return encode_event(value).decode()


def epoch(value: datetime | None) -> float | None:
    """A time as the stores keep it: epoch seconds (None stays None)."""
    return value.timestamp() if value is not None else None


def from_epoch(value: float | None) -> datetime | None:
    """Epoch seconds as a UTC time (None stays None)."""
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def need_from_epoch(value: float) -> datetime:
    """Epoch seconds of a column that is never NULL, as a UTC time."""
    return datetime.fromtimestamp(value, UTC)


def change_from_row(row: tuple[Any, ...]) -> Change:
    return Change(
        id=row[0], service=row[1], at=need_from_epoch(row[2]), received_at=from_epoch(row[3]),
        summary=row[4], who=row[5], version=row[6],
        links=tuple((href, text) for href, text in json.loads(row[7])),
    )


def incident_from_row(row: tuple[Any, ...], alerts: dict[str, AlertRecord]) -> Incident:
    return Incident(
        id=row[0], status=row[1], opened_at=need_from_epoch(row[2]),
        updated_at=need_from_epoch(row[3]),
        resolved_at=from_epoch(row[4]), severity=row[5], title=row[6],
        alerts=MappingProxyType(alerts), **Incident.fields_from_doc(json.loads(row[7])),
    )


def incident_json(row: Sequence[Any], doc: dict[str, Any],
                  deliveries: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """An incident row (and its decoded document) as the API shows it, with what the
    outbox says of each page's delivery (by dedup key); both stores share it."""
    for page in doc["pages"]:
        del page["routing_key"]
        # Whether PagerDuty has the page's latest word (DELIVERY_ORDER): `status` alone
        # says "triggered" for a page it refused (a dead letter) or that still waits in the
        # outbox, and "resolved" for one whose resolve it refused. None: no longer in the
        # outbox (delivered or dry-run rows are deleted after their retention).
        page["delivery"] = deliveries.get(page["dedup_key"])
    status = row[1]
    phase = status
    if status == OPEN:
        phase = ("resolving" if doc.get("quiet_since") else
                 "stale" if doc.get("stale_since") else
                 "acknowledged" if doc.get("acknowledged_at") else "open")
    deadlines = doc.get("deadlines") or Deadlines().to_json()
    return {
        "id": row[0], "status": status, "phase": phase,
        "opened_at": need_from_epoch(row[2]).isoformat(),
        "updated_at": need_from_epoch(row[3]).isoformat(),
        "resolved_at": resolved.isoformat() if (resolved := from_epoch(row[4])) else None,
        "severity": row[5], "title": row[6],
        # Incidents stored before deadlines existed have none.
        "deadlines": deadlines, **doc,
        "root_causes": doc.get("impact", {}).get("root_causes", []),
        "clock": {
            **deadlines,
            "acknowledged_at": doc.get("acknowledged_at"),
            "fired": doc.get("fired", []),
            "business_updated_at": doc.get("business_updated_at"),
        },
    }


def alert_from_row(row: tuple[Any, ...]) -> AlertRecord:
    return AlertRecord(
        fingerprint=row[1], status=row[2], starts_at=from_epoch(row[3]), ends_at=from_epoch(row[4]),
        first_seen=need_from_epoch(row[5]), last_seen=need_from_epoch(row[6]), service=row[7],
        severity=row[8], generator_url=row[9],
        labels=MappingProxyType(json.loads(row[10])),
        annotations=MappingProxyType(json.loads(row[11])),
    )


def alert_json(alert: AlertRecord) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint, "status": alert.status, "name": alert.name,
        "service": alert.service, "severity": alert.severity,
        "labels": dict(alert.labels), "annotations": dict(alert.annotations),
        "starts_at": alert.starts_at.isoformat() if alert.starts_at else None,
        "ends_at": alert.ends_at.isoformat() if alert.ends_at else None,
        "first_seen": alert.first_seen.isoformat(), "last_seen": alert.last_seen.isoformat(),
        "generator_url": alert.generator_url,
    }


def event_from_row(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        id=row[0], incident_id=row[1], target=row[2], routing_key=row[3], dedup_key=row[4],
        action=row[5], body=json.loads(row[6]), priority=row[7], state=row[8], attempts=row[9],
        created_at=need_from_epoch(row[10]), next_attempt_at=need_from_epoch(row[11]),
        last_error=row[14] or "",
    )
