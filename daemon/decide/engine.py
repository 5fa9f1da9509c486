"""Alerts into incidents: correlation on the dependency map, paging everyone needed at once,
escalation on growth, flap-damped resolution.

One incident per fire: an alert joins the open incident whose failing services it is
connected to (one depends on the other); an alert connected to several merges them. The
incident is then assessed once per decision: its impact over all firing alerts, the rules
of each alert against that impact, and the pages that are owed — new targets, and a new
dedup key for every target when the severity goes up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from daemon.alerts import Alert, Webhook
from daemon.config import Config
from daemon.decide.bodies import business_summary, impact_summary, resolve_body, title, trigger_body
from daemon.decide.model import (
    BUSINESS_UPDATE,
    FIRING,
    GREW,
    MERGED,
    OPEN,
    OPENED,
    RESOLVE,
    RESOLVE_PRIORITY,
    RESOLVED,
    TRIGGER,
    AlertRecord,
    Deadlines,
    Decision,
    Explanation,
    Incident,
    Note,
    OutboundEvent,
    Page,
    State,
    _not_after,
    clean,
    dedup_key,
    evolve,
    incident_id,
    locate,
    map_severity,
    trigger_priority,
    zulu,
)
from daemon.decide.rollback import rollback_candidates
from daemon.graph import Impact, Service, ServiceGraph, higher, severity_rank
from daemon.rules import Outcome, Subject, evaluate

BUSINESS_LINE = "business_line"


def decide(webhook: Webhook, config: Config, state: State, now: datetime) -> Decision:
    """Decide, alert by alert, what a notification changes; the top-level status is ignored.
    A payload that Alertmanager truncated resolves nothing: it is not the whole group."""
    work = Work(config, state, now, webhook.external_url)
    # Alertmanager sends an alert once per notification; a hand-made payload may repeat
    # one, and its last copy is its latest word.
    last = {alert.fingerprint: index for index, alert in enumerate(webhook.alerts)}
    for index, alert in enumerate(webhook.alerts):
        if last[alert.fingerprint] != index:
            work.explain(alert, None, alert.labels.get("service"),
                         "superseded by a later copy in the same notification")
        elif alert.firing:
            work.fire(alert)
        elif webhook.truncated_alerts:
            work.explain(alert, None, alert.labels.get("service"),
                         "resolution ignored: the payload was truncated")
        else:
            work.resolve(alert)
    return work.decision()


def apply(state: State, decision: Decision) -> State:
    """The state after a decision was stored."""
    open_ = dict(state.open)
    by_fp = dict(state.by_fingerprint)
    by_service = dict(state.by_service)
    resolved = dict(state.resolved)
    advance(open_, by_fp, by_service, resolved, decision)
    changes = state.changes + decision.changes if decision.changes else state.changes
    return State(MappingProxyType(open_), MappingProxyType(by_fp), MappingProxyType(resolved),
                 changes, MappingProxyType(by_service))


def advance(open_: dict[str, Incident], by_fp: dict[str, str], by_service: dict[str, str],
            resolved: dict[str, datetime | None], decision: Decision) -> None:
    """`apply` in place, on maps the caller owns: costs what the decision changed, not the
    size of the state (the dispatcher's live state; `apply` works on copies)."""
    added: dict[str, list[str]] = {}
    if decision.records is not None:
        for ident, record in decision.records:
            added.setdefault(ident, []).append(record.fingerprint)
    for incident in decision.incidents:
        previous = open_.get(incident.id)
        if previous is not None and incident.status == OPEN and decision.records is not None:
            # An open incident only gains alerts, so those the decision set are all that
            # can be new to the index; the others already point to it.
            by_fp.update(dict.fromkeys(added.get(incident.id, ()), incident.id))
            if incident.services != previous.services or incident.mapped != previous.mapped:
                _reindex_services(by_service, previous, incident)
            open_[incident.id] = incident
            continue
        if previous is not None:
            for fp in previous.alerts:
                if by_fp.get(fp) == incident.id:
                    del by_fp[fp]
            for name in previous.services:
                if by_service.get(name) == incident.id:
                    del by_service[name]
        if incident.status == OPEN:
            open_[incident.id] = incident
            by_fp.update(dict.fromkeys(incident.alerts, incident.id))
            if incident.mapped:
                by_service.update(dict.fromkeys(incident.services, incident.id))
        else:
            open_.pop(incident.id, None)
    seen_now: dict[str, dict[str, AlertRecord]] = {}
    for incident_id_, fp in decision.seen:
        seen = open_.get(incident_id_)
        if seen is not None and decision.now is not None and fp in seen.alerts:
            # One copy of an incident's alerts however many of them were seen again.
            seen_now.setdefault(incident_id_, {})[fp] = evolve(seen.alerts[fp],
                                                               last_seen=decision.now)
    for incident_id_, records in seen_now.items():
        seen = open_[incident_id_]
        open_[incident_id_] = evolve(seen, alerts=with_records(seen.alerts, records))
    resolved.update(decision.resolutions)


def _reindex_services(by_service: dict[str, str], previous: Incident, incident: Incident
                      ) -> None:
    for name in previous.services:
        if by_service.get(name) == incident.id:
            del by_service[name]
    if incident.mapped:
        by_service.update(dict.fromkeys(incident.services, incident.id))


def with_records(alerts: Mapping[str, AlertRecord], records: Mapping[str, AlertRecord]
                 ) -> Mapping[str, AlertRecord]:
    """`alerts` with `records` set (new ones last), as a new read-only mapping."""
    # A proxy's copy() is the dict's own (a block copy); dict(proxy) goes key by key, which
    # is 50 times slower, and incidents can hold tens of thousands of alerts.
    copy = alerts.copy() if isinstance(alerts, MappingProxyType) else dict(alerts)
    copy.update(records)
    return MappingProxyType(copy)


class Work:
    """Accumulates one decision over the state; shared by every engine step, never kept.

    Reads go through to the state; what the decision changes is kept aside, so that a step
    costs what it changes, not the size of the state.
    """

    def __init__(self, config: Config, state: State, now: datetime,
                 external_url: str = "") -> None:
        self.config = config
        self.settings = config.settings
        self.graph: ServiceGraph = config.graph
        self.state = state
        self.now = now
        self.external_url = external_url
        self.changed: dict[str, Incident] = {}
        self.fp_index: dict[str, str | None] = {}
        self.service_index: dict[str, str | None] = {}
        self.seen: list[tuple[str, str]] = []
        self.timeline: list[Note] = []
        self.events: list[OutboundEvent] = []
        self.explanations: list[Explanation] = []
        self.resolutions: dict[str, datetime | None] = {}
        # Incidents opened in this decision -> the alert that opened them: the others
        # assessed with it joined it, though it pages for the first time.
        self.openers: dict[str, str] = {}
        # Incident -> fingerprints to (re-)assess at the end of the decision.
        self.touched: dict[str, set[str]] = {}
        self._rollback: dict[tuple[str, tuple[str, ...], tuple[str, ...]],
                             list[dict[str, Any]]] = {}
        # Incidents whose last business update no longer says where things stand: it said
        # "Recovering" and an alert fired again, or it was about one of two merged fires.
        self.business_stale: set[str] = set()
        # Alert records set by this decision, for the store: (incident, fingerprint) -> record.
        self.records: dict[tuple[str, str], AlertRecord] = {}
        # Fingerprints set on an incident since it was last put, for its index.
        self._unindexed: dict[str, list[str]] = {}
        # The failing services as a bitset (`failing_mask`), once something asked for it.
        self._failing: int | None = None
        # The labels any rule's matchers read (sorted: a stable key for `_Assessment.add`).
        self.matched_labels = config.matched_labels

    # -- reading and writing the state --------------------------------------------------

    def incident(self, ident: str) -> Incident:
        """An open incident as this decision has left it."""
        return self.changed.get(ident) or self.state.open[ident]

    def put(self, incident: Incident) -> None:
        """Record a changed incident and keep the indexes in step with it."""
        previous = self.changed.get(incident.id) or self.state.open.get(incident.id)
        unindexed = self._unindexed.pop(incident.id, ())
        if previous is not None and previous.status == OPEN and incident.status == OPEN:
            # An open incident only gains alerts (through `set_records`), so only those it
            # gained can be new to the index: the others point to it already. This keeps a
            # step on an incident with thousands of alerts from costing thousands.
            self.fp_index.update(dict.fromkeys(unindexed, incident.id))
            before = len(previous.services)
            if incident.mapped == previous.mapped \
                    and incident.services[:before] == previous.services:
                # Its services only grew too (the usual case): index the new ones.
                if incident.mapped:
                    self._index_services(incident.services[before:], incident.id)
            else:
                self._unindex_services(previous)
                if incident.mapped:
                    self._index_services(incident.services, incident.id)
            if previous.quiet_since is not None and incident.quiet_since is None:
                self.business_stale.add(incident.id)
            self.changed[incident.id] = incident
            return
        if previous is not None:
            for fp in previous.alerts:
                if self.incident_of(fp) == previous.id:
                    self.fp_index[fp] = None
            self._unindex_services(previous)
        if incident.status == OPEN:
            self.fp_index.update(dict.fromkeys(incident.alerts, incident.id))
            if incident.mapped:
                self._index_services(incident.services, incident.id)
            if previous is not None and previous.quiet_since is not None \
                    and incident.quiet_since is None:
                self.business_stale.add(incident.id)
        self.changed[incident.id] = incident

    def _index_services(self, names: Iterable[str], ident: str) -> None:
        names = tuple(names)
        self.service_index.update(dict.fromkeys(names, ident))
        if self._failing is not None:
            self._failing |= self.graph.mask(names) or 0

    def _unindex_services(self, previous: Incident) -> None:
        """The services `previous` was failing in are no longer its."""
        gone = [name for name in previous.services
                if self.incident_of_service(name) == previous.id]
        self.service_index.update(dict.fromkeys(gone, None))
        if self._failing is not None and gone:
            self._failing &= ~(self.graph.mask(gone) or 0)

    def failing_mask(self) -> int | None:
        """The failing services as a bitset over the map (None when it has no bitsets),
        built on first use and kept in step by every change to the service index."""
        if self._failing is None:
            kept = self.state.failing
            if kept is None or kept[0] is not self.graph:
                self._failing = self.graph.mask(self.failing_services())
            else:
                # The state's, with what this step changed so far.
                changed = self.service_index
                gone = self.graph.mask(n for n, i in changed.items() if i is None) or 0
                came = self.graph.mask(n for n, i in changed.items() if i is not None) or 0
                self._failing = kept[1] & ~gone | came
        return self._failing

    def set_records(self, incident: Incident, *records: AlertRecord
                    ) -> Mapping[str, AlertRecord]:
        """The incident's alerts with `records` set; the caller puts the incident with them.
        Every change to an incident's alerts goes through here (the store writes these)."""
        for record in records:
            self.records[(incident.id, record.fingerprint)] = record
        self._unindexed.setdefault(incident.id, []).extend(r.fingerprint for r in records)
        return with_records(incident.alerts, {r.fingerprint: r for r in records})

    def started_at(self, incident: Incident) -> datetime:
        """`incident.started_at`, from what this step changed rather than every alert.

        `started` is never later than the start of any alert the incident had when it was
        set (at its last assessment or merge), and an alert's start changes only through
        `set_records`, in a step that assesses the incident.
        """
        if incident.started is None:
            return incident.started_at
        starts = [r.starts_at for (ident, _), r in self.records.items()
                  if ident == incident.id and r.starts_at is not None]
        return min([incident.started, *starts])

    def incident_of(self, fingerprint: str) -> str | None:
        """The open incident an alert belongs to."""
        if fingerprint in self.fp_index:
            return self.fp_index[fingerprint]
        return self.state.by_fingerprint.get(fingerprint)

    def incident_of_service(self, name: str) -> str | None:
        """The open incident a mapped service is failing in."""
        if name in self.service_index:
            return self.service_index[name]
        return self.state.by_service.get(name)

    def failing_services(self) -> dict[str, str]:
        """Every mapped service failing in an open incident, with that incident."""
        found = {name: ident for name, ident in self.state.by_service.items()
                 if name not in self.service_index}
        found.update((n, i) for n, i in self.service_index.items() if i is not None)
        return found

    def note(self, incident: Incident | str, kind: str, message: str) -> None:
        """Write a timeline entry."""
        ident = incident if isinstance(incident, str) else incident.id
        self.timeline.append(Note(ident, self.now, kind, message))

    def decision(self) -> Decision:
        """Assess what was touched and return everything this step decided."""
        for ident, fingerprints in list(self.touched.items()):
            self.assess(ident, fingerprints)
        return Decision(
            incidents=tuple(self.changed.values()), seen=tuple(self.seen),
            timeline=tuple(self.timeline), events=tuple(self.events),
            resolutions=tuple(self.resolutions.items()),
            explanations=tuple(self.explanations), now=self.now,
            records=tuple((ident, record) for (ident, _), record in self.records.items()),
        )

    def explain(self, alert: Alert, service: Service | None, label: str | None, action: str,
                **extra: Any) -> None:
        """Say how an alert was handled, for `firehouse explain`, `test` and the logs."""
        self.explanations.append(Explanation(
            fingerprint=alert.fingerprint, alertname=alert.name, status=alert.status,
            service=service.name if service else label, mapped=service is not None,
            action=action, **extra,
        ))

    # -- firing alerts -------------------------------------------------------------------

    def fire(self, alert: Alert) -> None:
        """A firing alert: a repeat, a flap inside damping, a new member of a fire, or a new
        fire."""
        service, label = locate(alert.labels, self.graph, self.settings.service_labels)
        existing = self.incident_of(alert.fingerprint)
        if existing is not None:
            self._fire_again(alert, service, label, existing)
            return
        known, resolved_start = self._last_resolution(alert.fingerprint)
        if known and _not_after(alert.starts_at, resolved_start):
            # Occurrences of one alert never overlap: a firing that started no later than a
            # resolved occurrence is a late copy (HA peer, retry), not a new fire. Without a
            # startsAt there is no telling, and paging again is the cheaper mistake.
            self.explain(alert, service, label, "stale repeat of a resolved alert")
            return
        record = AlertRecord(
            fingerprint=alert.fingerprint, status=FIRING, labels=alert.labels,
            annotations=alert.annotations, starts_at=alert.starts_at, ends_at=None,
            generator_url=alert.generator_url, service=service.name if service else label,
            severity=map_severity(alert.labels, self.settings.severity_labels),
            first_seen=self.now, last_seen=self.now,
        )
        joined = self._connected(service.name) if service is not None else []
        if service is None or not joined:
            ident = self._open(record, service)
            self.note(ident, "opened", f"{clean(record.name)} on "
                      f"{clean(record.service or 'an unknown service')} opened the incident")
        else:
            ident = joined[0]
            for other in joined[1:]:
                self._merge(ident, other)
            incident = self.incident(ident)
            alerts = self.set_records(incident, record)
            services = incident.services
            if service.name not in services:
                services = (*services, service.name)
            self.put(evolve(incident, alerts=alerts, services=services,
                            updated_at=self.now, quiet_since=None))
            self.note(ident, "alert_joined", f"{clean(record.name)} on {service.name} "
                      "joined: it is connected to the failing services")
        self.touched.setdefault(ident, set()).add(alert.fingerprint)
        self.resolutions.pop(alert.fingerprint, None)

    def _fire_again(self, alert: Alert, service: Service | None, label: str | None,
                    ident: str) -> None:
        incident = self.incident(ident)
        record = incident.alerts[alert.fingerprint]
        if (record.status != FIRING and record.ends_at is not None
                and _not_after(alert.starts_at, record.starts_at)):
            # A late copy of the firing of an occurrence that has since resolved (the
            # incident is waiting out its flap damping): it must not wake the incident.
            self.explain(alert, service, label, "stale repeat of a resolved alert",
                         incident_id=ident)
            return
        severity = map_severity(alert.labels, self.settings.severity_labels)
        if record.status == FIRING and severity_rank(severity) > severity_rank(record.severity):
            # Only a sender that sets its own fingerprints can do this (Alertmanager's hash
            # the labels): the same alert, now worse, is the same fire, assessed again.
            alerts = self.set_records(incident, evolve(
                record, labels=alert.labels, annotations=alert.annotations,
                severity=severity, last_seen=self.now))
            self.put(evolve(incident, alerts=alerts, updated_at=self.now,
                            stale_since=None))
            self.note(ident, "alert_worse", f"{clean(record.name)} is now {severity} (was "
                      f"{record.severity})")
            self.touched.setdefault(ident, set()).add(alert.fingerprint)
            self.explain(alert, service, label, "severity rose", incident_id=ident)
            return
        if record.status == FIRING:
            self.seen.append((ident, alert.fingerprint))
            if incident.stale_since is not None:
                self.put(evolve(incident, stale_since=None, updated_at=self.now))
                self.note(ident, "refreshed", "Alertmanager sent the alerts again: no "
                          "longer stale")
            self.explain(alert, service, label, "already open", incident_id=ident)
            return
        # A new occurrence while the incident waits out its flap damping: the same fire.
        alerts = self.set_records(incident, evolve(
            record, status=FIRING, starts_at=alert.starts_at, ends_at=None,
            labels=alert.labels, annotations=alert.annotations, last_seen=self.now))
        self.put(evolve(incident, alerts=alerts, quiet_since=None,
                        updated_at=self.now))
        self.note(ident, "alert_fired_again", f"{clean(record.name)} fired again; the "
                  "incident continues")
        self.touched.setdefault(ident, set()).add(alert.fingerprint)

    def _connected(self, name: str) -> list[str]:
        """Open incidents with a failing service connected to `name`, oldest first."""
        own = self.incident_of_service(name)
        if own is not None:
            found = {own}
        else:
            related = self.graph.related(name)
            failing = self.failing_mask()
            if failing is not None:
                # One big-integer AND: only the connected services that fail are visited.
                found = {i for r in related.among(failing)
                         if (i := self.incident_of_service(r)) is not None}
            # Without bitsets, whichever side is smaller is walked: a few failing services,
            # or a service with few connections in a map with many failing.
            elif len(self.state.by_service) + len(self.service_index) <= len(related):
                found = {i for f, i in self.failing_services().items() if f in related}
            else:
                found = {i for r in related if (i := self.incident_of_service(r)) is not None}
        return sorted(found, key=lambda i: (self.incident(i).opened_at, i))

    def _open(self, record: AlertRecord, service: Service | None) -> str:
        ident = incident_id(record.fingerprint, self.now)
        self.records[(ident, record.fingerprint)] = record
        self.openers[ident] = record.fingerprint
        self.put(Incident(
            id=ident, status=OPEN, opened_at=self.now, updated_at=self.now, resolved_at=None,
            severity=record.severity, title="", services=(record.service,)
            if record.service else (), mapped=service is not None,
            alerts=MappingProxyType({record.fingerprint: record}), pages=(),
            impact=MappingProxyType({}), rules=(), external_url=self.external_url,
        ))
        return ident

    def _merge(self, keep_id: str, other_id: str) -> None:
        """Two fires found connected are one: the later joins the earlier, with its alerts,
        its pages (resolved with the incident) and its clock."""
        keep, other = self.incident(keep_id), self.incident(other_id)
        acknowledged = [a for a in (keep.acknowledged_at, other.acknowledged_at) if a]
        merged = evolve(
            keep,
            alerts=self.set_records(keep, *other.alerts.values()),
            services=tuple(dict.fromkeys((*keep.services, *other.services))),
            pages=keep.pages + other.pages,
            rules=tuple(dict.fromkeys((*keep.rules, *other.rules))),
            deadlines=keep.deadlines.tighter(other.deadlines),
            severity=higher(keep.severity, other.severity) or keep.severity,
            acknowledged_at=min(acknowledged) if acknowledged else None,
            fired=tuple(dict.fromkeys((*keep.fired, *other.fired))),
            # The fire is as old as the older of the two, even when the alert that began
            # it has since fired again with a later start.
            started=min(keep.started_at, other.started_at),
            updated_at=self.now, quiet_since=None,
        )
        # Its pages move with its alerts: the incident that keeps them resolves them.
        self.put(evolve(other, status=MERGED, merged_into=keep_id, resolved_at=self.now,
                        updated_at=self.now, pages=()))
        self.put(merged)
        self.note(other_id, "merged", f"merged into incident {keep_id}: a new alert connects "
                  "their failing services")
        self.note(keep_id, "merged", f"incident {other_id} merged in "
                  f"({len(other.alerts)} alert(s), {len(other.pages)} page(s))")
        self.touched.setdefault(keep_id, set()).update(other.alerts)
        self.touched.pop(other_id, None)
        self.business_stale.add(keep_id)

    # -- assessment -----------------------------------------------------------------------

    def assess(self, ident: str, fingerprints: Iterable[str]) -> None:
        """Recompute an incident's impact over its firing alerts, evaluate the rules of its
        new alerts (of all, when the failing set changed), and page what is owed."""
        incident = self.incident(ident)
        firing = incident.firing
        if not firing:
            return
        failing = sorted({a.service for a in firing
                          if a.service is not None and a.service in self.graph.services})
        impact = self.graph.impact(failing)
        wanted = set(fingerprints)
        if list(incident.impact.get("failing", ())) != failing:
            wanted = {a.fingerprint for a in firing}
        verdict = _Assessment(incident)
        for record in firing:
            if record.fingerprint in wanted:
                verdict.add(self, record, impact)
        summary = impact_summary(impact)
        first = not incident.pages
        updated = evolve(
            incident, started=self.started_at(incident),
            severity=verdict.severity, impact=summary, rules=tuple(verdict.rules),
            deadlines=verdict.deadlines, updated_at=self.now,
            services=tuple(dict.fromkeys((*incident.services, *failing))),
        )
        updated = evolve(updated, title=title(updated, verdict.severity))
        if not first and (grown := _growth(incident.impact, summary)):
            self.note(ident, "grew", "impact grew: " + "; ".join(grown))
        if first:
            text = verdict.deadlines.describe(self.now)
            self.note(ident, "assessed", f"{clean(updated.title)} (rules: "
                      f"{', '.join(updated.rules)})" + (f"; deadlines: {text}" if text else ""))
        rose = not first and severity_rank(verdict.severity) > severity_rank(incident.severity)
        if rose:
            self.note(ident, "escalated", f"severity rose from {incident.severity} to "
                      f"{verdict.severity}")
        self._page(updated, verdict.targets, first)
        has_business = any(p.reason == BUSINESS_UPDATE for p in updated.pages)
        if verdict.business or has_business:
            before = list(incident.impact.get("business_services", ()))
            if not has_business or rose or ident in self.business_stale \
                    or before != list(summary["business_services"]):
                self.business_update(self.incident(ident), loud=True)
        opener = self.openers.get(ident)
        for record, outcome in verdict.outcomes:
            # Only the alert that opened the incident opened it: another alert of the same
            # notification that correlated with it (or an incident merged into it) joined.
            opened = first and opener in (None, record.fingerprint)
            self.explanations.append(Explanation(
                fingerprint=record.fingerprint, alertname=record.name, status=record.status,
                service=record.service, mapped=record.service in self.graph.services,
                action="opened" if opened else "joined", incident_id=ident,
                severity=outcome.severity, impact=impact, outcome=outcome,
                deadlines=verdict.deadlines,
            ))

    def _page(self, incident: Incident, targets: dict[str, list[str]], first: bool) -> None:
        """Page every target not yet paged at the incident's severity, all in this step."""
        pages = list(incident.pages)
        new_pages: list[Page] = []
        severity = incident.severity
        for target, roles in targets.items():
            mine = [p for p in pages if p.target == target and p.reason != BUSINESS_UPDATE]
            best = max((severity_rank(p.severity) for p in mine), default=-1)
            if mine and best >= severity_rank(severity):
                # Paged at this severity already: a role it now holds too is written down.
                for i, page in enumerate(pages):
                    if page in mine and set(roles) - set(page.roles):
                        pages[i] = evolve(page, roles=tuple(dict.fromkeys(
                            (*page.roles, *roles))))
                continue
            new_pages.append(Page(target, tuple(roles or ("incident_lead",)),
                                  dedup_key(incident.id, target, severity), severity,
                                  self.routing_key(target), reason=OPENED if first else GREW,
                                  at=self.now))
        incident = evolve(incident, pages=(*pages, *new_pages))
        self.put(incident)
        for page in new_pages:
            self.send_trigger(incident, page)

    def routing_key(self, target: str) -> str:
        """The target's routing key; empty in dry-run."""
        found = self.settings.targets.get(target)
        return found.routing_key if found and not self.settings.dry_run else ""

    def resolve_roles(self, roles: Iterable[str], service: Service | None, impact: Impact
                      ) -> dict[str, tuple[str, ...]]:
        """Resolve roles to targets; each target is paged once, naming all its roles."""
        result: dict[str, list[str]] = {}
        for role in roles:
            for target in self.targets_of(role, service, impact):
                result.setdefault(target, [])
                if role not in result[target]:
                    result[target].append(role)
        if not result:
            # Never drop: whoever else is missing, the command center hears of it.
            incident_lead = self.config.target_for_role("incident_lead") or "command-center"
            result[incident_lead] = ["incident_lead"]
        return {target: tuple(r) for target, r in result.items()}

    def targets_of(self, role: str, service: Service | None, impact: Impact | None
                   ) -> list[str]:
        """The targets a role (or a target named directly) stands for."""
        if role == "technical_lead":
            return [service.owners["technical_lead"]] if service is not None else []
        if role == "service_lead":
            found = []
            if service is not None and "service_lead" in service.owners:
                found.append(service.owners["service_lead"])
            if impact is not None:
                found.extend(t for t in _business_leads(self.graph, impact) if t not in found)
            return found
        if role in self.settings.targets:
            return [role]
        target = self.config.target_for_role(role)
        return [target] if target else []

    # -- sending ------------------------------------------------------------------------

    def send_trigger(self, incident: Incident, page: Page) -> None:
        """Queue a page's trigger and say so on the timeline."""
        body = trigger_body(incident, page, self.now, self.rollback(incident))
        self.events.append(OutboundEvent(
            incident.id, page.target, page.routing_key, page.dedup_key, TRIGGER,
            MappingProxyType(body), priority=trigger_priority(page.severity)))
        self.note(incident, "paged", f"paged {page.target} as {', '.join(page.roles)} at "
                  f"{page.severity} ({page.reason})")

    def send_resolves(self, incident: Incident, pages: Iterable[Page]) -> Incident:
        """Queue a resolve for each page, through the routing key its trigger used."""
        done = {p.dedup_key for p in pages}
        for page in pages:
            self.events.append(OutboundEvent(
                incident.id, page.target, page.routing_key, page.dedup_key, RESOLVE,
                MappingProxyType(resolve_body(page)), priority=RESOLVE_PRIORITY))
        return evolve(incident, pages=tuple(
            evolve(p, status=RESOLVED) if p.dedup_key in done else p for p in incident.pages))

    def rollback(self, incident: Incident) -> list[dict[str, Any]]:
        """Recent changes on the incident's root causes, their dependencies and its other
        failing services."""
        if not self.state.changes:
            return []
        causes = tuple(s for c in incident.impact.get("root_causes", ())
                       for s in c.get("services", ())) or incident.services
        # The same for every page an incident sends in this step: walked once.
        key = (incident.id, causes, incident.services)
        found = self._rollback.get(key)
        if found is None:
            window = timedelta(hours=self.settings.changes_window_hours)
            found = self._rollback[key] = rollback_candidates(
                self.state.changes, causes, self.graph, incident.started_at, self.now, window,
                failing=incident.services)
        return found

    def business_update(self, incident: Incident, *, loud: bool = False) -> Incident:
        """Tell the business line where things stand: a fresh PagerDuty alert on its own
        routing key replaces the previous update, so it always shows the current state.

        News (the first update, more business services hit, a higher severity, a fire
        flaring up again) goes out at the incident's severity; routine updates, recovery
        and the end at `info`, which PagerDuty services usually route at low urgency.
        """
        target = self.config.target_for_role(BUSINESS_LINE)
        if target is None:
            return incident
        previous = [p for p in incident.pages if p.reason == BUSINESS_UPDATE and p.open]
        if previous:
            incident = self.send_resolves(incident, previous)
        number = sum(1 for p in incident.pages if p.reason == BUSINESS_UPDATE) + 1
        page = Page(target, (BUSINESS_LINE,), dedup_key(incident.id, target, f"update-{number}"),
                    incident.severity if loud else "info", self.routing_key(target),
                    reason=BUSINESS_UPDATE, at=self.now)
        incident = evolve(incident, pages=(*incident.pages, page),
                          business_updated_at=self.now)
        self.put(incident)
        self.send_trigger(incident, page)
        self.note(incident, "business_update", business_summary(incident, self.now))
        return incident

    # -- resolving ------------------------------------------------------------------------

    def resolve(self, alert: Alert) -> None:
        """A resolved alert; the incident resolves once every alert stayed resolved for the
        flap damping time."""
        service, label = locate(alert.labels, self.graph, self.settings.service_labels)
        existing = self.incident_of(alert.fingerprint)
        if existing is None:
            known, resolved_start = self._last_resolution(alert.fingerprint)
            if known and (alert.starts_at is None
                          or _not_after(alert.starts_at, resolved_start)):
                self.explain(alert, service, label, "already resolved")
            else:
                # Remembered, so that a late copy of its firing notification pages nobody.
                self.resolutions[alert.fingerprint] = alert.starts_at
                self.explain(alert, service, label, "resolution of an alert never seen firing")
            return
        incident = self.incident(existing)
        record = incident.alerts[alert.fingerprint]
        if record.status == RESOLVED:
            self.seen.append((existing, alert.fingerprint))
            self.explain(alert, service, label, "already resolved", incident_id=existing)
            return
        if (alert.ends_at is not None and record.starts_at is not None
                and alert.ends_at < record.starts_at):
            # A late copy (HA peer, retry) of the resolution of an earlier occurrence: it
            # ended before the open occurrence began, so the open one's pages must stay up.
            # (startsAt cannot tell: Alertmanager keeps the earliest start when it merges
            # copies of an alert, so a genuine resolution may carry an earlier startsAt.)
            self.explain(alert, service, label, "stale resolution of an earlier occurrence",
                         incident_id=existing)
            return
        self.resolve_record(incident, record, alert.ends_at, f"{clean(record.name)} resolved")
        self.explain(alert, service, label, "resolved", incident_id=existing)

    def resolve_record(self, incident: Incident, record: AlertRecord,
                       ends_at: datetime | None, message: str, *, confirmed: bool = True
                       ) -> None:
        """Mark one alert of an incident resolved; quiet or close the incident when it was
        the last one firing.

        A resolution Alertmanager did not send (`confirmed=False`: it merely no longer had
        the alert) is not remembered as the end of that occurrence, and its end stays
        unknown: after an Alertmanager restart the same occurrence comes back with the same
        startsAt, and that must page again, not pass for a late copy.
        """
        if confirmed:
            self.resolutions[record.fingerprint] = record.starts_at
        alerts = self.set_records(incident, evolve(
            record, status=RESOLVED, ends_at=(ends_at or self.now) if confirmed else None,
            last_seen=self.now))
        incident = evolve(incident, alerts=alerts, updated_at=self.now)
        self.note(incident, "alert_resolved", message)
        if incident.is_firing:
            self.put(incident)
            return
        damping = self.settings.flap_damping
        if damping <= 0:
            self.close(incident)
            return
        self.put(evolve(incident, quiet_since=self.now))
        self.note(incident, "quiet", "all alerts resolved; the incident resolves at "
                  f"{zulu(self.now + timedelta(seconds=damping))} unless one fires again")
        if any(p.reason == BUSINESS_UPDATE for p in incident.pages):
            self.business_update(self.incident(incident.id))

    def close(self, incident: Incident) -> None:
        """Resolve the incident: a resolve for every page it triggered."""
        incident = evolve(incident, status=RESOLVED, resolved_at=self.now,
                          updated_at=self.now, quiet_since=None)
        if any(p.reason == BUSINESS_UPDATE for p in incident.pages):
            # The business line hears the end in words too: a last update, resolved below
            # with every other page (its trigger is delivered first: order per dedup key).
            incident = self.business_update(incident)
        owed = [p for p in incident.pages if p.open]
        incident = self.send_resolves(incident, owed)
        self.put(incident)
        self.note(incident, "resolved", f"incident resolved; {len(owed)} page(s) resolved")

    def _last_resolution(self, fingerprint: str) -> tuple[bool, datetime | None]:
        """Whether a resolution of the alert is remembered, and when that occurrence began."""
        if fingerprint in self.resolutions:
            return True, self.resolutions[fingerprint]
        if fingerprint in self.state.resolved:
            return True, self.state.resolved[fingerprint]
        return False, None


class _Assessment:
    """What the rules of an incident's alerts ask for, united: severity, targets with their
    roles, rules matched, deadlines, business updates."""

    def __init__(self, incident: Incident) -> None:
        self.severity: str = incident.severity if incident.pages else ""
        self.opened_at = incident.opened_at
        self.rules = list(incident.rules)
        self.deadlines = incident.deadlines
        self.business = False
        self.outcomes: list[tuple[AlertRecord, Outcome]] = []
        # Outcomes already united, by what the rules read of an alert (see `add`).
        self._seen: dict[tuple[Any, ...], Outcome] = {}
        # Everyone already paged stays in: a severity rise pages them again.
        self.targets: dict[str, list[str]] = {}
        for page in incident.pages:
            if page.reason != BUSINESS_UPDATE:
                self._add(page.target, page.roles)

    def _add(self, target: str, roles: Iterable[str]) -> None:
        have = self.targets.setdefault(target, [])
        have.extend(r for r in roles if r not in have)

    def add(self, work: Work, record: AlertRecord, impact: Impact) -> None:
        """Evaluate the rules for one alert against the incident's impact."""
        # The rules read of an alert only its service, its severity and the labels their
        # matchers name (the impact is the incident's): alerts alike in those (a group's
        # instances) have the same outcome, and uniting it again changes nothing, so it is
        # evaluated and united once per assessment.
        labels = record.labels
        key = (record.service, record.severity,
               *[labels.get(name) for name in work.matched_labels])
        known = self._seen.get(key)
        if known is not None:
            self.outcomes.append((record, known))
            return
        service = work.graph.services.get(record.service or "")
        potential = higher(record.severity, impact.severity) or record.severity
        outcome = evaluate(work.config.rules, Subject(labels, service, impact, record.severity),
                           potential)
        self._seen[key] = outcome
        self.outcomes.append((record, outcome))
        self.severity = higher(self.severity or None, outcome.severity) or outcome.severity
        self.rules.extend(r.name for r in outcome.matched if r.name not in self.rules)
        self.deadlines = self.deadlines.tighter(Deadlines.of(outcome, self.opened_at))
        self.business |= (outcome.business_updates is not None
                          or BUSINESS_LINE in outcome.roles)
        roles = [r for r in outcome.roles if r != BUSINESS_LINE]
        for target, held in work.resolve_roles(roles, service, impact).items():
            self._add(target, held)


def _growth(before: Any, after: Any) -> list[str]:
    """How the impact grew, in words; empty when it did not."""
    grown = []
    new_business = [b for b in after["business_services"]
                    if b not in before.get("business_services", ())]
    if new_business:
        grown.append(f"business services now hit: {', '.join(new_business)}")
    tier, old_tier = after["most_critical_tier"], before.get("most_critical_tier")
    if tier is not None and (old_tier is None or tier < old_tier):
        grown.append(f"tier {tier} now hit")
    if after["down_total"] > before.get("down_total", 0):
        grown.append(f"{after['down_total']} service(s) down, was {before.get('down_total', 0)}")
    return grown


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
