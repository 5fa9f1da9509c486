"""The pure decision core: from a notification, the configuration and the current state,
decide which incidents open or resolve and which PagerDuty events to send.

No I/O and no clock reads: `now` is an argument, so every decision can be replayed and
unit-tested. The server, the store and the workers only carry decisions out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from daemon.alerts import Alert, Webhook
from daemon.config import Config
from daemon.graph import DEGRADED, DOWN, SEVERITIES, Impact, Service, ServiceGraph, higher
from daemon.rules import Outcome, Subject, evaluate, format_duration

TRIGGER = "trigger"
RESOLVE = "resolve"
OPEN = "open"
RESOLVED = "resolved"
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
CLIENT = "Firehouse"
SUMMARY_ROLES = frozenset({"senior_management", "business_line"})
_TOP = 10
RESOLVE_PRIORITY = 0

# Words seen in the wild for severity, mapped to PagerDuty's four values.
SEVERITY_WORDS: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys(("critical", "crit", "page", "pager", "emergency", "emerg", "alert",
                     "fatal", "disaster", "urgent", "p0", "p1", "sev0", "sev1", "s1"),
                    "critical"),
    **dict.fromkeys(("error", "err", "major", "exception", "high", "p2", "sev2", "s2"),
                    "error"),
    **dict.fromkeys(("warning", "warn", "minor", "medium", "average", "moderate", "p3", "sev3",
                     "s3"), "warning"),
    **dict.fromkeys(("info", "informational", "information", "notice", "low", "none", "debug",
                     "ok", "p4", "p5", "sev4", "sev5", "s4", "s5"), "info"),
})
MISSING_SEVERITY = "error"
UNKNOWN_SEVERITY = "critical"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """What Firehouse remembers of one alert of an incident."""

    fingerprint: str
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime | None
    ends_at: datetime | None
    generator_url: str
    service: str | None
    severity: str
    first_seen: datetime
    last_seen: datetime

    @property
    def name(self) -> str:
        """The alert's `alertname`."""
        return self.labels.get("alertname", "(no alertname)")


@dataclass(frozen=True, slots=True)
class Page:
    """One PagerDuty alert Firehouse triggered for an incident, on one target."""

    target: str
    roles: tuple[str, ...]
    dedup_key: str
    severity: str
    routing_key: str = field(repr=False)
    status: str = "triggered"


@dataclass(frozen=True, slots=True)
class Deadlines:
    """What the matched rules' `clock` and `business_updates` ask of an incident, for the
    incident clock (coming): nothing acts on them yet."""

    ack_by: datetime | None = None
    resolve_by: datetime | None = None
    # Roles or target names, as the rules give them: resolved to targets when one fires.
    escalate_to: tuple[str, ...] = ()
    business_updates_every: int | None = None  # seconds

    @classmethod
    def of(cls, outcome: Outcome, opened_at: datetime) -> Deadlines:
        """The deadlines of an incident opened at `opened_at` on the rules' outcome."""
        clock = outcome.clock
        every = outcome.business_updates
        return cls(
            ack_by=opened_at + clock.ack_within if clock and clock.ack_within else None,
            resolve_by=(opened_at + clock.resolve_within
                        if clock and clock.resolve_within else None),
            escalate_to=clock.escalate_to if clock else (),
            business_updates_every=int(every.total_seconds()) if every else None,
        )

    def describe(self, opened_at: datetime) -> str:
        """One line for the timeline and `firehouse explain`; "" when there is nothing."""
        parts = []
        if self.ack_by is not None:
            parts.append(f"ack by {_time(self.ack_by)} "
                         f"({format_duration(self.ack_by - opened_at)})")
        if self.resolve_by is not None:
            parts.append(f"resolve by {_time(self.resolve_by)} "
                         f"({format_duration(self.resolve_by - opened_at)})")
        if self.escalate_to:
            parts.append(f"if missed escalate to {', '.join(self.escalate_to)}")
        text = ", ".join(parts)
        if self.business_updates_every is not None:
            every = format_duration(timedelta(seconds=self.business_updates_every))
            text += f"{'; ' if text else ''}business updates every {every}"
        return text

    def to_json(self) -> dict[str, Any]:
        """As stored in the incident document and shown by the API."""
        return {
            "ack_by": self.ack_by.isoformat() if self.ack_by else None,
            "resolve_by": self.resolve_by.isoformat() if self.resolve_by else None,
            "escalate_to": list(self.escalate_to),
            "business_updates_every": self.business_updates_every,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Deadlines:
        """The inverse of `to_json`."""
        ack, resolve = doc.get("ack_by"), doc.get("resolve_by")
        return cls(
            ack_by=datetime.fromisoformat(ack) if ack else None,
            resolve_by=datetime.fromisoformat(resolve) if resolve else None,
            escalate_to=tuple(doc.get("escalate_to", ())),
            business_updates_every=doc.get("business_updates_every"),
        )


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Incident:
    """One fire, with its alerts, its impact and the pages sent for it."""

    id: str
    status: str
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    severity: str
    title: str
    services: tuple[str, ...]
    mapped: bool
    alerts: Mapping[str, AlertRecord]
    pages: tuple[Page, ...]
    impact: Mapping[str, Any]
    rules: tuple[str, ...]
    external_url: str = ""
    deadlines: Deadlines = Deadlines()


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    """An event for PagerDuty, written to the outbox in the decision's transaction."""

    incident_id: str
    target: str
    routing_key: str = field(repr=False)
    dedup_key: str = ""
    action: str = TRIGGER
    body: Mapping[str, Any] = field(default_factory=dict)
    # Higher is sent first when the outbox has a backlog: new pages by severity, then resolves.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Note:
    """A timeline entry: something that happened, or something Firehouse did."""

    incident_id: str
    at: datetime
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """How one alert was handled, for `firehouse explain` and the logs."""

    fingerprint: str
    alertname: str
    status: str
    service: str | None
    mapped: bool
    action: str
    incident_id: str | None = None
    severity: str | None = None
    impact: Impact | None = None
    outcome: Outcome | None = None
    deadlines: Deadlines | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A deploy or configuration change posted to Firehouse (`POST /api/v1/changes`)."""

    id: str
    service: str
    summary: str
    at: datetime
    who: str = ""
    version: str = ""
    links: tuple[tuple[str, str], ...] = ()  # (href, text)
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PagerDutyUpdate:
    """What a PagerDuty v3 webhook said about one of the alerts Firehouse triggered."""

    event_id: str
    event_type: str  # incident.acknowledged, incident.resolved, incident.reassigned, ...
    occurred_at: datetime
    dedup_key: str  # PagerDuty's incident_key: the dedup key Firehouse triggered with
    pd_incident: str = ""  # PagerDuty's incident id
    url: str = ""  # PagerDuty's html_url of the incident
    agent: str = ""  # who did it, as PagerDuty names them
    detail: str = ""  # e.g. the new assignees of a reassignment


@dataclass(frozen=True, slots=True)
class State:
    """What the engine needs to know: open incidents, recently resolved alerts and recent
    changes (oldest first)."""

    open: Mapping[str, Incident] = field(default_factory=dict)
    by_fingerprint: Mapping[str, str] = field(default_factory=dict)
    resolved: Mapping[str, datetime | None] = field(default_factory=dict)
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one notification: what to store and what to send."""

    incidents: tuple[Incident, ...] = ()
    seen: tuple[tuple[str, str], ...] = ()
    timeline: tuple[Note, ...] = ()
    events: tuple[OutboundEvent, ...] = ()
    resolutions: tuple[tuple[str, datetime | None], ...] = ()
    explanations: tuple[Explanation, ...] = ()
    now: datetime | None = None
    changes: tuple[Change, ...] = ()

    @property
    def changes_anything(self) -> bool:
        """Whether the decision has anything to store."""
        return bool(self.incidents or self.seen or self.events or self.timeline
                    or self.resolutions or self.changes)


def map_severity(labels: Mapping[str, str], severity_labels: Iterable[str]) -> str:
    """PagerDuty severity of an alert from its labels, erring upward on what is unknown."""
    for label in severity_labels:
        raw = labels.get(label)
        if raw is not None and raw.strip():
            return SEVERITY_WORDS.get(raw.strip().lower(), UNKNOWN_SEVERITY)
    return MISSING_SEVERITY


def locate(labels: Mapping[str, str], graph: ServiceGraph, service_labels: Iterable[str]
           ) -> tuple[Service | None, str | None]:
    """The map service an alert is about, and the name it was labelled with."""
    first: str | None = None
    for label in service_labels:
        value = labels.get(label)
        if not value:
            continue
        first = first or value
        service = graph.resolve(value)
        if service is not None:
            return service, value
    return None, first


def clean(text: str) -> str:
    """Untrusted text made safe for one line: control characters folded to spaces."""
    return _CONTROL.sub(" ", text).strip()


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def trigger_priority(severity: str) -> int:
    """Outbox priority of a trigger: critical pages first, every page before any resolve."""
    return RESOLVE_PRIORITY + 1 + SEVERITIES.index(severity)


def dedup_key(incident_id: str, target: str) -> str:
    """The stable PagerDuty dedup key of an incident's page on one target."""
    key = f"firehouse/{incident_id}/{target}"
    if len(key) > DEDUP_KEY_LIMIT:
        key = "firehouse/" + hashlib.sha256(key.encode()).hexdigest()
    return key


def incident_id(fingerprint: str, opened_at: datetime) -> str:
    """A short, stable id for an incident opened at `opened_at` by the alert `fingerprint`."""
    return hashlib.sha256(f"{fingerprint}@{opened_at.isoformat()}".encode()).hexdigest()[:16]


def decide(webhook: Webhook, config: Config, state: State, now: datetime) -> Decision:
    """Decide, alert by alert, what a notification changes; the top-level status is ignored."""
    work = _Work(config, state, now, webhook.external_url)
    for alert in webhook.alerts:
        if alert.firing:
            work.fire(alert)
        else:
            work.resolve(alert)
    return work.decision()


def on_pagerduty(update: PagerDutyUpdate, config: Config, state: State, now: datetime
                 ) -> Decision:
    """What a PagerDuty webhook (acknowledged, resolved, reassigned...) changes."""
    return Decision(now=now)  # TODO(engine)


def tick(config: Config, state: State, now: datetime) -> Decision:
    """What the clock changes at `now`: missed deadlines, damped resolutions, business
    updates."""
    return Decision(now=now)  # TODO(engine)


def next_deadline(config: Config, state: State) -> datetime | None:
    """When `tick` next has something to do; None when nothing is pending."""
    return None  # TODO(engine)


def stale_fingerprints(config: Config, state: State, now: datetime) -> tuple[str, ...]:
    """Firing alerts of open incidents not refreshed for longer than the stale window."""
    return ()  # TODO(engine)


def reconcile(checked: tuple[str, ...], present: frozenset[str] | None, config: Config,
              state: State, now: datetime) -> Decision:
    """Resolve the `checked` alerts that Alertmanager no longer has (`present`: the
    fingerprints it has); None when it could not be asked: the incidents are flagged stale."""
    return Decision(now=now)  # TODO(engine)


def apply(state: State, decision: Decision) -> State:
    """The state after a decision was stored."""
    open_ = dict(state.open)
    by_fp = dict(state.by_fingerprint)
    resolved = dict(state.resolved)
    for incident in decision.incidents:
        if incident.status == OPEN:
            open_[incident.id] = incident
            by_fp.update(dict.fromkeys(incident.alerts, incident.id))
        else:
            open_.pop(incident.id, None)
            for fp in incident.alerts:
                if by_fp.get(fp) == incident.id:
                    del by_fp[fp]
    for incident_id_, fp in decision.seen:
        seen = open_.get(incident_id_)
        if seen is not None and decision.now is not None and fp in seen.alerts:
            alerts = dict(seen.alerts)
            alerts[fp] = replace(alerts[fp], last_seen=decision.now)
            open_[incident_id_] = replace(seen, alerts=MappingProxyType(alerts))
    resolved.update(decision.resolutions)
    return State(MappingProxyType(open_), MappingProxyType(by_fp), MappingProxyType(resolved))


class _Work:
    """Accumulates one decision; a helper of `decide`, never shared."""

    def __init__(self, config: Config, state: State, now: datetime, external_url: str) -> None:
        self.config = config
        self.settings = config.settings
        # Read through to the state; what this decision changes is kept aside, so that a
        # webhook costs what it changes, not the size of the state.
        self.open = state.open
        self.state_by_fp = state.by_fingerprint
        self.fp_added: dict[str, str] = {}
        self.fp_removed: set[str] = set()
        self.resolved = state.resolved
        self.now = now
        self.external_url = external_url
        self.changed: dict[str, Incident] = {}
        self.seen: list[tuple[str, str]] = []
        self.timeline: list[Note] = []
        self.events: list[OutboundEvent] = []
        self.explanations: list[Explanation] = []
        self.resolutions: dict[str, datetime | None] = {}

    def decision(self) -> Decision:
        return Decision(
            incidents=tuple(self.changed.values()), seen=tuple(self.seen),
            timeline=tuple(self.timeline), events=tuple(self.events),
            resolutions=tuple(self.resolutions.items()),
            explanations=tuple(self.explanations), now=self.now,
        )

    def _explain(self, alert: Alert, service: Service | None, label: str | None, action: str,
                 **extra: Any) -> None:
        self.explanations.append(Explanation(
            fingerprint=alert.fingerprint, alertname=alert.name, status=alert.status,
            service=service.name if service else label, mapped=service is not None,
            action=action, **extra,
        ))

    def fire(self, alert: Alert) -> None:
        graph = self.config.graph
        service, label = locate(alert.labels, graph, self.settings.service_labels)
        existing = self._incident_of(alert.fingerprint)
        if existing is not None:
            self.seen.append((existing, alert.fingerprint))
            self._explain(alert, service, label, "already open", incident_id=existing)
            return
        known, resolved_start = self._last_resolution(alert.fingerprint)
        if known and _not_after(alert.starts_at, resolved_start):
            # Occurrences of one alert never overlap: a firing that started no later than a
            # resolved occurrence is a late copy (HA peer, retry), not a new fire. Without a
            # startsAt there is no telling, and paging again is the cheaper mistake.
            self._explain(alert, service, label, "stale repeat of a resolved alert")
            return
        self._open(alert, service, label)

    def _incident_of(self, fingerprint: str) -> str | None:
        """The open incident an alert belongs to, as this decision has left it."""
        if fingerprint in self.fp_removed:
            return None
        return self.fp_added.get(fingerprint) or self.state_by_fp.get(fingerprint)

    def _last_resolution(self, fingerprint: str) -> tuple[bool, datetime | None]:
        """Whether a resolution of the alert is remembered, and when that occurrence began."""
        if fingerprint in self.resolutions:
            return True, self.resolutions[fingerprint]
        if fingerprint in self.resolved:
            return True, self.resolved[fingerprint]
        return False, None

    def resolve(self, alert: Alert) -> None:
        service, label = locate(alert.labels, self.config.graph, self.settings.service_labels)
        existing = self._incident_of(alert.fingerprint)
        if existing is None:
            known, resolved_start = self._last_resolution(alert.fingerprint)
            if known and (alert.starts_at is None
                          or _not_after(alert.starts_at, resolved_start)):
                self._explain(alert, service, label, "already resolved")
            else:
                # Remembered, so that a late copy of its firing notification pages nobody.
                self.resolutions[alert.fingerprint] = alert.starts_at
                self._explain(alert, service, label, "resolution of an alert never seen firing")
            return
        incident = self.changed.get(existing) or self.open[existing]
        alerts = dict(incident.alerts)
        record = alerts[alert.fingerprint]
        if (alert.ends_at is not None and record.starts_at is not None
                and alert.ends_at < record.starts_at):
            # A late copy (HA peer, retry) of the resolution of an earlier occurrence: it
            # ended before the open occurrence began, so the open one's pages must stay up.
            # (startsAt cannot tell: Alertmanager keeps the earliest start when it merges
            # copies of an alert, so a genuine resolution may carry an earlier startsAt.)
            self._explain(alert, service, label, "stale resolution of an earlier occurrence",
                          incident_id=existing)
            return
        self.resolutions[alert.fingerprint] = alert.starts_at
        alerts[alert.fingerprint] = replace(
            record, status=RESOLVED, ends_at=alert.ends_at or self.now, last_seen=self.now)
        self.timeline.append(Note(incident.id, self.now, "alert_resolved",
                                  f"{clean(record.name)} resolved"))
        if all(a.status == RESOLVED for a in alerts.values()):
            pages = tuple(replace(p, status=RESOLVED) for p in incident.pages)
            incident = replace(incident, status=RESOLVED, resolved_at=self.now,
                               updated_at=self.now, alerts=MappingProxyType(alerts), pages=pages)
            for page in incident.pages:
                self.events.append(OutboundEvent(
                    incident.id, page.target, page.routing_key, page.dedup_key, RESOLVE,
                    MappingProxyType({"event_action": RESOLVE, "dedup_key": page.dedup_key}),
                    priority=RESOLVE_PRIORITY,
                ))
            self.timeline.append(Note(incident.id, self.now, "resolved",
                                      f"incident resolved; {len(pages)} page(s) resolved"))
            for fp in alerts:
                if self._incident_of(fp) == incident.id:
                    self.fp_added.pop(fp, None)
                    self.fp_removed.add(fp)
        else:
            incident = replace(incident, updated_at=self.now, alerts=MappingProxyType(alerts))
        self.changed[incident.id] = incident
        self._explain(alert, service, label, "resolved", incident_id=incident.id)

    def _open(self, alert: Alert, service: Service | None, label: str | None) -> None:
        graph = self.config.graph
        alert_severity = map_severity(alert.labels, self.settings.severity_labels)
        impact = graph.impact([service.name] if service else [])
        potential = higher(alert_severity, impact.severity) or alert_severity
        subject = Subject(alert.labels, service, impact)
        outcome = evaluate(self.config.rules, subject, potential)
        severity = outcome.severity
        ident = incident_id(alert.fingerprint, self.now)
        targets = self._targets(outcome.roles, service, impact)
        record = AlertRecord(
            fingerprint=alert.fingerprint, status="firing", labels=alert.labels,
            annotations=alert.annotations, starts_at=alert.starts_at, ends_at=None,
            generator_url=alert.generator_url, service=service.name if service else label,
            severity=alert_severity, first_seen=self.now, last_seen=self.now,
        )
        title = self._title(record, service, impact, severity)
        summary = impact_summary(impact)
        pages = tuple(
            Page(target, roles, dedup_key(ident, target), severity,
                 self._routing_key(target))
            for target, roles in targets.items()
        )
        incident = Incident(
            id=ident, status=OPEN, opened_at=self.now, updated_at=self.now, resolved_at=None,
            severity=severity, title=title,
            services=(record.service,) if record.service else (), mapped=service is not None,
            alerts=MappingProxyType({alert.fingerprint: record}), pages=pages,
            impact=summary, rules=tuple(r.name for r in outcome.matched),
            external_url=self.external_url, deadlines=Deadlines.of(outcome, self.now),
        )
        self.changed[ident] = incident
        self.fp_added[alert.fingerprint] = ident
        self.fp_removed.discard(alert.fingerprint)
        opened = f"{clean(title)} (rules: {', '.join(incident.rules)})"
        deadlines = incident.deadlines.describe(self.now)
        if deadlines:
            opened += f"; deadlines: {deadlines}"
        self.timeline.append(Note(ident, self.now, "opened", opened))
        for page in pages:
            body = fit_event(self._trigger_body(incident, record, page, service))
            self.events.append(OutboundEvent(
                ident, page.target, page.routing_key, page.dedup_key, TRIGGER,
                MappingProxyType(body), priority=trigger_priority(severity),
            ))
            self.timeline.append(Note(ident, self.now, "paged",
                                      f"paged {page.target} as {', '.join(page.roles)} "
                                      f"at {page.severity}"))
        self._explain(alert, service, label, "opened", incident_id=ident, severity=severity,
                      impact=impact, outcome=outcome, deadlines=incident.deadlines)

    def _routing_key(self, target: str) -> str:
        found = self.settings.targets.get(target)
        return found.routing_key if found and not self.settings.dry_run else ""

    def _targets(self, roles: Iterable[str], service: Service | None, impact: Impact
                 ) -> dict[str, tuple[str, ...]]:
        """Resolve roles to targets; each target is paged once, naming all its roles."""
        result: dict[str, list[str]] = {}
        graph = self.config.graph
        for role in roles:
            found: list[str] = []
            if role == "technical_lead" and service is not None:
                found.append(service.owners["technical_lead"])
            elif role == "service_lead":
                if service is not None and "service_lead" in service.owners:
                    found.append(service.owners["service_lead"])
                found.extend(_business_leads(graph, impact))
            elif role in self.settings.targets:
                found.append(role)
            else:
                target = self.config.target_for_role(role)
                if target:
                    found.append(target)
            for target in found:
                result.setdefault(target, [])
                if role not in result[target]:
                    result[target].append(role)
        if not result:
            # Never drop: whoever else is missing, the command center hears of it.
            incident_lead = self.config.target_for_role("incident_lead") or "command-center"
            result[incident_lead] = ["incident_lead"]
        return {target: tuple(r) for target, r in result.items()}

    def _title(self, record: AlertRecord, service: Service | None, impact: Impact,
               severity: str) -> str:
        where = record.service or "unknown service"
        text = f"[{severity.upper()}] {record.name} on {where}"
        if service is None:
            text += " (UNMAPPED: not in any dependency map)"
        elif impact.impacted_total:
            business = ", ".join(impact.business_services) or "no business service"
            text += (f" — impacts {impact.impacted_total} service(s), tier "
                     f"{impact.most_critical_tier}, {business}")
        detail = record.annotations.get("summary") or record.annotations.get("description")
        if detail:
            text += f": {detail}"
        return cut(clean(text), SUMMARY_LIMIT)

    def _trigger_body(self, incident: Incident, record: AlertRecord, page: Page,
                      service: Service | None) -> dict[str, Any]:
        summary_only = set(page.roles) <= SUMMARY_ROLES
        details: dict[str, Any] = {
            "firehouse_incident": incident.id,
            "paged_as": list(page.roles),
            "mapped": incident.mapped,
            "business_services": list(incident.impact.get("business_services", [])),
        }
        payload: dict[str, Any] = {
            "summary": incident.title,
            "source": record.service or "firehouse",
            "severity": page.severity,
            "timestamp": (record.starts_at or self.now).isoformat(),
        }
        if summary_only:
            payload["summary"] = cut(clean(business_summary(incident)), SUMMARY_LIMIT)
        else:
            details.update({
                "alert": record.name,
                "service": record.service,
                "alert_severity": record.severity,
                "impact": dict(incident.impact),
                "rules": list(incident.rules),
                "labels": dict(record.labels),
                "annotations": dict(record.annotations),
            })
            if not incident.mapped:
                details["unmapped"] = True
            payload["class"] = record.name
            payload["component"] = record.service or "unknown"
            if service is not None:
                payload["group"] = service.business_service or service.component
        payload["custom_details"] = details
        body: dict[str, Any] = {
            "event_action": TRIGGER,
            "dedup_key": page.dedup_key,
            "payload": payload,
            "client": CLIENT,
        }
        if self.external_url.startswith(("http://", "https://")):
            body["client_url"] = self.external_url
        if record.generator_url.startswith(("http://", "https://")) and not summary_only:
            body["links"] = [{"href": record.generator_url, "text": "Alert source"}]
        return body


def _not_after(start: datetime | None, resolved_start: datetime | None) -> bool:
    """Whether an occurrence that began at `start` is known to have ended."""
    return start is not None and resolved_start is not None and start <= resolved_start


def _business_leads(graph: ServiceGraph, impact: Impact) -> list[str]:
    """The service lead of each business service hit: the one on its most critical service."""
    leads: list[str] = []
    for business in impact.business_services:
        carriers = sorted(
            (s.tier, s.name) for s in graph.services.values()
            if s.business_service == business and "service_lead" in s.owners
        )
        if carriers:
            lead = graph.services[carriers[0][1]].owners["service_lead"]
            if lead not in leads:
                leads.append(lead)
    return leads


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


EVENT_LIMIT = 500_000  # PagerDuty refuses events over 512 KB; leave room for the routing key
_VALUE_LIMIT = 1024


def event_size(body: Mapping[str, Any]) -> int:
    """Bytes of the event as it is sent (JSON, non-ASCII escaped)."""
    return len(json.dumps(body))


def fit_event(body: dict[str, Any]) -> dict[str, Any]:
    """The event, cut to fit PagerDuty's size limit instead of being refused whole: first long
    label and annotation values, then annotations, then labels. What was cut is said in
    `custom_details.firehouse_truncated`; the summary, severity and links always stay."""
    if event_size(body) <= EVENT_LIMIT:
        return body
    details = dict(body["payload"]["custom_details"])
    cuts: list[str] = []
    steps = (
        ("long label and annotation values cut to 1024 characters", _cut_values),
        ("annotations left out", lambda d: d.pop("annotations", None)),
        ("labels left out", lambda d: d.pop("labels", None)),
        ("impact details left out", lambda d: d.pop("impact", None)),
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


def _cut_values(details: dict[str, Any]) -> None:
    for key in ("labels", "annotations"):
        values = details.get(key)
        if isinstance(values, dict):
            details[key] = {cut(str(k), _VALUE_LIMIT): cut(str(v), _VALUE_LIMIT)
                            for k, v in values.items()}


def business_summary(incident: Incident) -> str:
    """A plain-language line for the business line and management: no labels, no hosts."""
    business = list(incident.impact.get("business_services", []))
    # Since the fire started (the earliest alert), not since Firehouse heard of it.
    starts = [a.starts_at for a in incident.alerts.values() if a.starts_at is not None]
    since = min(starts, default=incident.opened_at).strftime("%Y-%m-%d %H:%M UTC")
    if business:
        return (f"Possible disruption of {', '.join(business)} since {since} "
                f"(severity {incident.severity}). The technical teams have been paged.")
    return (f"Technical incident under investigation since {since} (severity "
            f"{incident.severity}); no business service is known to be affected.")
