"""What the engine sends: PagerDuty event bodies, cut to PagerDuty's limits, and the plain
words of the business line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from itertools import islice
from types import MappingProxyType
from typing import Any

import orjson

from daemon.decide.model import (
    ACK_MISSED,
    BUSINESS_UPDATE,
    CLIENT,
    OPENED,
    RESOLVE,
    RESOLVE_MISSED,
    SUMMARY_LIMIT,
    SUMMARY_ROLES,
    TRIGGER,
    AlertRecord,
    Incident,
    Page,
    clean,
    cut,
)
from daemon.graph import DEGRADED, DOWN, Impact

_TOP = 10
_ALERTS_SHOWN = 20
EVENT_LIMIT = 500_000  # PagerDuty refuses events over 512 KB; leave room for the routing key
_VALUE_LIMIT = 1024
# What json.dumps would refuse or write otherwise orjson refuses (TypeError), not converts.
_ORJSON_STRICT = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                  | orjson.OPT_PASSTHROUGH_SUBCLASS)


def impact_summary(impact: Impact) -> Mapping[str, Any]:
    """The impact, small enough for a page: top entries with totals, root causes, and the
    chains that explain the most critical impacted services. Built once per impact."""
    if impact.summary is None:
        impact.summary = MappingProxyType(_summarise(impact))
    return impact.summary


def _summarise(impact: Impact) -> dict[str, Any]:
    return {
        "failing": list(impact.failing),
        "most_critical_tier": impact.most_critical_tier,
        "business_services": list(impact.business_services),
        "tier_counts": {str(k): v for k, v in impact.tier_counts.items()},
        "impacted_total": impact.impacted_total,
        "down_total": impact.down_total,
        "degraded_total": impact.degraded_total,
        "down": [s.name for s in impact.top(_TOP, DOWN)],
        "degraded": [s.name for s in impact.top(_TOP, DEGRADED)],
        "root_causes": [c.to_json() for c in impact.root_causes[:_TOP]],
        "root_causes_total": len(impact.root_causes),
        "why": [s.explain() for s in impact.top(5)],
        "implied_severity": impact.severity,
    }


def main_alert(incident: Incident) -> AlertRecord:
    """The alert a page leads with: a firing one on the top root cause, else the first."""
    firing = incident.firing or tuple(incident.alerts.values())
    causes = [s for c in incident.impact.get("root_causes", ()) for s in c.get("services", ())]
    if causes:
        first: dict[str | None, AlertRecord] = {}
        for alert in firing:
            first.setdefault(alert.service, alert)
        for cause in causes:
            if cause in first:
                return first[cause]
    return firing[0]


def title(incident: Incident, severity: str, graph_business: Sequence[str] = ()) -> str:
    """The page's one-line summary: severity, the leading alert, its spread, its impact."""
    record = main_alert(incident)
    where = record.service or "unknown service"
    text = f"[{severity.upper()}] {record.name} on {where}"
    others = len(incident.alerts) - 1
    if others:
        text += f" and {others} more alert(s)"
    hit = incident.impact.get("impacted_total", 0)
    failing = incident.impact.get("failing", ())
    if not incident.mapped:
        text += " (UNMAPPED: not in any dependency map)"
    elif hit or len(failing) > 1:
        business = ", ".join(incident.impact.get("business_services", ())) \
            or "no business service"
        # The failing services are not counted among those they hit: with several failing,
        # both are said, so the count never shrinks as the fire spreads.
        spread = [f"{len(failing)} services failing"] if len(failing) > 1 else []
        if hit:
            spread.append(f"impacts {hit} {'more' if spread else 'service(s)'}")
        text += (f" — {', '.join(spread)}, tier "
                 f"{incident.impact.get('most_critical_tier')}, {business}")
    detail = record.annotations.get("summary") or record.annotations.get("description")
    if detail:
        text += f": {detail}"
    return cut(clean(text), SUMMARY_LIMIT)


def trigger_body(incident: Incident, page: Page, now: datetime,
                 rollback: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A trigger for one page: technical detail for technical roles, a plain summary for
    senior management and the business line (unless a missed deadline escalated to them).

    A summary page names no service, host or link: its `source` (which PagerDuty requires)
    is Firehouse itself, and it has no `client_url` to Alertmanager and no `links`."""
    record = main_alert(incident)
    # Management and the business line get words, not the technical page, unless a missed
    # deadline escalated to them.
    summary_only = set(page.roles) <= SUMMARY_ROLES \
        and page.reason not in (ACK_MISSED, RESOLVE_MISSED)
    details: dict[str, Any] = {
        "firehouse_incident": incident.id,
        "paged_as": list(page.roles),
        "reason": page.reason,
        "mapped": incident.mapped,
        "business_services": list(incident.impact.get("business_services", [])),
    }
    payload: dict[str, Any] = {
        "summary": incident.title,
        "source": "firehouse" if summary_only else record.service or "firehouse",
        "severity": page.severity,
        "timestamp": (record.starts_at or now).isoformat(),
    }
    if page.reason not in (OPENED, BUSINESS_UPDATE):
        payload["summary"] = cut(clean(f"[{page.reason.upper()}] {incident.title}"),
                                 SUMMARY_LIMIT)
    if summary_only:
        # Only the business line gets the updates that "next update by" promises.
        said_now = now if "business_line" in page.roles else None
        payload["summary"] = cut(clean(business_summary(incident, said_now)), SUMMARY_LIMIT)
    else:
        details.update({
            "alert": record.name,
            "service": record.service,
            "alert_severity": record.severity,
            "impact": dict(incident.impact),
            "rules": list(incident.rules),
            "labels": dict(record.labels),
            "annotations": dict(record.annotations),
            "alerts_total": len(incident.alerts),
            "alerts": [_alert_line(a) for a in islice(incident.alerts.values(), _ALERTS_SHOWN)],
        })
        if rollback:
            details["rollback_candidates"] = list(rollback)
        if not incident.mapped:
            details["unmapped"] = True
        payload["class"] = record.name
        payload["component"] = record.service or "unknown"
    payload["custom_details"] = details
    body: dict[str, Any] = {
        "event_action": TRIGGER,
        "dedup_key": page.dedup_key,
        "payload": payload,
        "client": CLIENT,
    }
    if not summary_only:
        if incident.external_url.startswith(("http://", "https://")):
            body["client_url"] = incident.external_url
        links = [{"href": a.generator_url, "text": f"{cut(clean(a.name), 200)} (alert source)"}
                 for a in islice(incident.alerts.values(), 5)
                 if a.generator_url.startswith(("http://", "https://"))]
        if links:
            body["links"] = links
    return fit_event(body)


def _alert_line(alert: AlertRecord) -> dict[str, Any]:
    return {
        "alert": alert.name, "service": alert.service, "severity": alert.severity,
        "status": alert.status,
        "starts_at": alert.starts_at.isoformat() if alert.starts_at else None,
        "summary": alert.annotations.get("summary", ""),
        "generator_url": alert.generator_url,
    }


def resolve_body(page: Page) -> dict[str, Any]:
    """A resolve carries only what PagerDuty needs: it must never fail on presentation."""
    return {"event_action": RESOLVE, "dedup_key": page.dedup_key}


def encode_event(body: Mapping[str, Any]) -> bytes:
    """An event as it is sent: compact UTF-8 JSON by orjson (a tenth of json.dumps' CPU).
    What orjson would write otherwise than json or not at all (datetimes, dataclasses,
    subclasses, integers past 64 bits, lone surrogates) goes through json.dumps."""
    try:
        return orjson.dumps(body, option=_ORJSON_STRICT)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(body).encode()


def event_size(body: Mapping[str, Any]) -> int:
    """Bytes of the event as it is sent (`encode_event`), before the routing key."""
    return len(encode_event(body))


def fit_event(body: dict[str, Any]) -> dict[str, Any]:
    """The event, cut to fit PagerDuty's size limit instead of being refused whole: first long
    label and annotation values, then the alert list, annotations, labels, impact. What was
    cut is said in `custom_details.firehouse_truncated`; summary, severity and links stay."""
    if event_size(body) <= EVENT_LIMIT:
        return body
    details = dict(body["payload"]["custom_details"])
    cuts: list[str] = []
    steps = (
        ("long label and annotation values cut to 1024 characters", _cut_values),
        ("alert list left out", lambda d: d.pop("alerts", None)),
        ("annotations left out", lambda d: d.pop("annotations", None)),
        ("labels left out", lambda d: d.pop("labels", None)),
        ("impact details left out", lambda d: d.pop("impact", None)),
        ("rollback candidates left out", lambda d: d.pop("rollback_candidates", None)),
    )
    for reason, step in steps:
        step(details)
        cuts.append(reason)
        candidate = {**body, "payload": {**body["payload"], "custom_details": {
            **details, "firehouse_truncated": "; ".join(cuts)}}}
        if event_size(candidate) <= EVENT_LIMIT:
            return candidate
    payload = {k: v for k, v in body["payload"].items() if k != "custom_details"}
    payload["custom_details"] = {"firehouse_truncated": "all details left out to fit 512 KB"}
    return {**body, "payload": payload}


def truncations(body: Mapping[str, Any]) -> tuple[str, ...]:
    """What was cut from an event to fit PagerDuty's limits: "summary" (cut to
    SUMMARY_LIMIT, ending in an ellipsis) and/or "details" (`fit_event`'s cuts)."""
    payload = body.get("payload")
    if not isinstance(payload, Mapping):
        return ()
    found: list[str] = []
    summary = payload.get("summary")
    if isinstance(summary, str) and len(summary) == SUMMARY_LIMIT and summary.endswith("…"):
        found.append("summary")
    details = payload.get("custom_details")
    if isinstance(details, Mapping) and "firehouse_truncated" in details:
        found.append("details")
    return tuple(found)


def _cut_values(details: dict[str, Any]) -> None:
    for key in ("labels", "annotations"):
        values = details.get(key)
        if isinstance(values, dict):
            details[key] = {cut(str(k), _VALUE_LIMIT): cut(str(v), _VALUE_LIMIT)
                            for k, v in values.items()}
    alerts = details.get("alerts")
    if isinstance(alerts, list):
        details["alerts"] = [{k: cut(v, _VALUE_LIMIT) if isinstance(v, str) else v
                              for k, v in a.items()} for a in alerts]


def _clock(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def business_summary(incident: Incident, now: datetime | None = None) -> str:
    """Plain language for the business line and management: which business services, since
    when, the current state, when the next update comes. No labels, no hosts."""
    business = list(incident.impact.get("business_services", []))
    since = _clock(incident.started_at)
    what = ", ".join(business) or "the technical incident"
    if incident.status != "open":
        return f"Recovered: {what} back to normal (disrupted since {since})."
    if incident.quiet_since is not None:
        return (f"Recovering: {what} disrupted since {since}; the alerts have cleared and "
                f"the technical teams are confirming.")
    acked = " and are working on it" if incident.acknowledged_at else ""
    text = (f"Possible disruption of {', '.join(business)} since {since} "
            f"(severity {incident.severity}). The technical teams have been paged{acked}."
            if business else
            f"Technical incident under investigation since {since} (severity "
            f"{incident.severity}); no business service is known to be affected.")
    every = incident.deadlines.business_updates_every
    if every and now is not None:
        text += f" Next update by {_clock(now + timedelta(seconds=every))}."
    return text
