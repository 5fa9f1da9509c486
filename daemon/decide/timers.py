"""The incident clock and what comes back from outside: deadlines that escalate, flap damping
that ends, business updates that fall due, acknowledgements from PagerDuty, and alerts that
Alertmanager no longer has."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from daemon.config import Config
from daemon.decide.engine import Work
from daemon.decide.model import (
    ACK_MISSED,
    ACKNOWLEDGED,
    FIRING,
    OPEN,
    RESOLVE_MISSED,
    RESOLVED_IN_PAGERDUTY,
    TRIGGERED,
    Decision,
    Incident,
    Page,
    PagerDutyUpdate,
    State,
    clean,
    dedup_key,
    evolve,
    zulu,
)

_PAGERDUTY_EVENTS_KEPT = 50
LEAD_ROLES = frozenset({"technical_lead", "service_lead"})


def _stale_after(config: Config) -> float:
    return config.settings.stale_after


def _business_due(incident: Incident) -> datetime | None:
    every = incident.deadlines.business_updates_every
    if not every or incident.business_updated_at is None:
        return None
    return incident.business_updated_at + timedelta(seconds=every)


def _due(incident: Incident, damping: timedelta) -> list[tuple[datetime, str]]:
    """What the clock owes an open incident, with when."""
    if incident.quiet_since is not None:
        return [(incident.quiet_since + damping, "resolve")]
    due = []
    deadlines = incident.deadlines
    if deadlines.ack_by and incident.acknowledged_at is None and "ack" not in incident.fired:
        due.append((deadlines.ack_by, "ack"))
    if deadlines.resolve_by and "resolve" not in incident.fired:
        due.append((deadlines.resolve_by, "resolve_by"))
    business = _business_due(incident)
    if business is not None:
        due.append((business, "business"))
    return due


def next_deadline(config: Config, state: State) -> datetime | None:
    """When `tick` next has something to do; None when nothing is pending."""
    return earliest_deadline(config, state.open.values())


def earliest_deadline(config: Config, incidents: Iterable[Incident]) -> datetime | None:
    """The earliest thing `tick` owes any of these incidents (closed ones owe nothing)."""
    damping = timedelta(seconds=config.settings.flap_damping)
    return min((at for incident in incidents if incident.status == OPEN
                for at, _ in _due(incident, damping)), default=None)


def tick(config: Config, state: State, now: datetime) -> Decision:
    """What the clock changes at `now`: missed deadlines escalate (once each), damped
    incidents resolve, business updates go out."""
    work = Work(config, state, now)
    damping = timedelta(seconds=config.settings.flap_damping)
    for incident in state.open.values():
        for at, what in _due(incident, damping):
            if at > now:
                continue
            current = work.incident(incident.id)
            if current.status != OPEN:
                break
            if what == "resolve":
                work.close(current)
            elif what == "ack":
                _escalate(work, current, "ack", ACK_MISSED,
                          f"not acknowledged by {zulu(at)}")
            elif what == "resolve_by":
                _escalate(work, current, "resolve", RESOLVE_MISSED,
                          f"not resolved by {zulu(at)}")
            else:
                work.business_update(current)
    return work.decision()


def _escalate(work: Work, incident: Incident, timer: str, reason: str, said: str) -> None:
    """Page the deadline's escalation targets, once, with the technical detail."""
    targets: dict[str, list[str]] = {}
    # A lead role escalates to the leads of the probable root causes (of every failing
    # service when there are none).
    causes = [s for c in incident.impact.get("root_causes", ()) for s in c.get("services", ())]
    services = [work.graph.services[s] for s in causes or incident.services
                if s in work.graph.services]
    impact = work.graph.impact(s.name for s in services)
    for name in incident.deadlines.escalate_to:
        found = [t for service in services for t in work.targets_of(name, service, impact)] \
            if name in LEAD_ROLES else work.targets_of(name, None, None)
        for target in dict.fromkeys(found):
            roles = targets.setdefault(target, [])
            if name not in roles:
                roles.append(name)
    if incident.deadlines.escalate_to and not targets:
        # The rules asked for someone and no one was found (a lead role on an unmapped
        # incident, a role no target stands for): never escalate into the void.
        lead = work.config.target_for_role("incident_lead") or "command-center"
        targets[lead] = ["incident_lead"]
    pages = tuple(
        Page(target, tuple(roles), dedup_key(incident.id, target,
                                             f"{incident.severity}/{timer}-missed"),
             incident.severity, work.routing_key(target), reason=reason, at=work.now)
        for target, roles in targets.items()
    )
    incident = evolve(incident, fired=(*incident.fired, timer),
                      pages=(*incident.pages, *pages), updated_at=work.now)
    work.put(incident)
    whom = ", ".join(targets) or "nobody (the rules name no escalation)"
    work.note(incident, "deadline", f"{said}: escalated to {whom}")
    for page in pages:
        work.send_trigger(incident, page)


def on_pagerduty(update: PagerDutyUpdate, config: Config, state: State, now: datetime
                 ) -> Decision:
    """What a PagerDuty webhook (acknowledged, resolved, reassigned...) changes, matched to
    the page by its dedup key; a repeat of an event already applied changes nothing."""
    work = Work(config, state, now)
    found = _page_of(state, update.dedup_key) if update.dedup_key else None
    if found is None:
        return work.decision()
    incident, page = found
    if update.event_id and update.event_id in incident.pagerduty_events:
        return work.decision()
    who = clean(update.agent) or "someone"
    kind = update.event_type.removeprefix("incident.")
    status = {"acknowledged": ACKNOWLEDGED, "unacknowledged": TRIGGERED,
              "resolved": RESOLVED_IN_PAGERDUTY, "reopened": TRIGGERED}.get(kind, page.status)
    changed = evolve(page, status=status,
                     acknowledged_by=who if status == ACKNOWLEDGED else
                     "" if status == TRIGGERED else page.acknowledged_by)
    pages = tuple(changed if p.dedup_key == page.dedup_key else p for p in incident.pages)
    acknowledged_at = incident.acknowledged_at
    if status in (ACKNOWLEDGED, RESOLVED_IN_PAGERDUTY) and acknowledged_at is None:
        # A person answered: the acknowledgement deadline is met.
        acknowledged_at = update.occurred_at
    elif status == TRIGGERED and not any(p.status in (ACKNOWLEDGED, RESOLVED_IN_PAGERDUTY)
                                         for p in pages):
        # No one holds any page any more: the acknowledgement deadline counts again.
        acknowledged_at = None
    events = (*incident.pagerduty_events, update.event_id)[-_PAGERDUTY_EVENTS_KEPT:]
    work.put(evolve(incident, pages=pages, acknowledged_at=acknowledged_at,
                    pagerduty_events=events if update.event_id else incident.pagerduty_events,
                    updated_at=now))
    message = f"{page.target} page ({page.severity}) {kind} in PagerDuty by {who}"
    if update.detail:
        message += f": {clean(update.detail)}"
    if status == RESOLVED_IN_PAGERDUTY and incident.firing:
        message += f"; {len(incident.firing)} alert(s) still firing, the incident stays open"
    work.note(incident, f"pagerduty_{kind}", message)
    return work.decision()


def rekey(dedup_key_: str, routing_key: str, config: Config, state: State, now: datetime
          ) -> Decision:
    """A dead-lettered trigger was sent again with its target's current routing key: the
    page remembers it, so that its resolve goes where the trigger went."""
    work = Work(config, state, now)
    found = _page_of(state, dedup_key_)
    if found is None or found[1].routing_key == routing_key:
        return work.decision()
    incident, page = found
    work.put(evolve(incident, updated_at=now, pages=tuple(
        evolve(p, routing_key=routing_key) if p.dedup_key == dedup_key_ else p
        for p in incident.pages)))
    work.note(incident, "rekeyed", f"{page.target} page re-sent with the target's current "
              "routing key; its resolve will use it too")
    return work.decision()


def _page_of(state: State, key: str) -> tuple[Incident, Page] | None:
    for incident in state.open.values():
        for page in incident.pages:
            if page.dedup_key == key:
                return incident, page
    return None


def stale_fingerprints(config: Config, state: State, now: datetime) -> tuple[str, ...]:
    """Firing alerts of open incidents not refreshed for longer than the stale window."""
    cutoff = now - timedelta(seconds=_stale_after(config))
    return tuple(a.fingerprint for incident in state.open.values()
                 if incident.quiet_since is None
                 for a in incident.firing if a.last_seen < cutoff)


def reconcile(checked: tuple[str, ...], present: frozenset[str] | None, config: Config,
              state: State, now: datetime) -> Decision:
    """Resolve the `checked` alerts that Alertmanager no longer has (`present`: the
    fingerprints it has); None when it could not be asked: the incidents are flagged stale,
    never silently left open or closed."""
    work = Work(config, state, now)
    cutoff = now - timedelta(seconds=_stale_after(config))
    for fingerprint in checked:
        ident = work.incident_of(fingerprint)
        if ident is None:
            continue
        incident = work.incident(ident)
        record = incident.alerts.get(fingerprint)
        if record is None or record.status != FIRING or record.last_seen >= cutoff:
            # Resolved meanwhile, or refreshed by a webhook while Alertmanager was asked:
            # the fresher word wins.
            continue
        if present is None:
            if incident.stale_since is None:
                work.put(evolve(incident, stale_since=now, updated_at=now))
                work.note(incident, "stale", f"{clean(record.name)} not refreshed since "
                          f"{zulu(record.last_seen)} and Alertmanager could not be asked; the "
                          "incident stays open until it can be")
        elif fingerprint in present:
            work.seen.append((ident, fingerprint))
            if incident.stale_since is not None:
                work.put(evolve(incident, stale_since=None, updated_at=now))
                work.note(incident, "refreshed", "Alertmanager still has the alerts")
        else:
            work.resolve_record(incident, record, None, f"{clean(record.name)} resolved: "
                                "Alertmanager no longer has it and no resolve arrived",
                                confirmed=False)
    return work.decision()
