"""The pure decision core: from an input (an Alertmanager notification, a tick of the clock,
a PagerDuty update, a change), the configuration and the current state, decide which
incidents open, grow, escalate or resolve, and which PagerDuty events to send.

No I/O and no clock reads: `now` is an argument, so every decision can be replayed and
unit-tested. The server, the store and the workers only carry decisions out.
"""

from daemon.decide.bodies import (
    EVENT_LIMIT,
    business_summary,
    event_size,
    fit_event,
    impact_summary,
    trigger_body,
)
from daemon.decide.engine import BUSINESS_LINE, Work, advance, apply, decide, with_records
from daemon.decide.model import (
    ACK_MISSED,
    ACKNOWLEDGED,
    BUSINESS_UPDATE,
    DEDUP_KEY_LIMIT,
    FIRING,
    GREW,
    MERGED,
    OPEN,
    OPENED,
    RESOLVE,
    RESOLVE_MISSED,
    RESOLVED,
    RESOLVED_IN_PAGERDUTY,
    SUMMARY_LIMIT,
    TRIGGER,
    TRIGGERED,
    AlertRecord,
    Change,
    Deadlines,
    Decision,
    Explanation,
    Incident,
    Note,
    OutboundEvent,
    Page,
    PagerDutyUpdate,
    State,
    clean,
    cut,
    dedup_key,
    incident_id,
    locate,
    map_severity,
    trigger_priority,
)
from daemon.decide.timers import (
    next_deadline,
    on_pagerduty,
    reconcile,
    rekey,
    stale_fingerprints,
    tick,
)

__all__ = [
    "ACKNOWLEDGED", "ACK_MISSED", "BUSINESS_LINE", "BUSINESS_UPDATE", "DEDUP_KEY_LIMIT",
    "EVENT_LIMIT", "FIRING", "GREW", "MERGED", "OPEN", "OPENED", "RESOLVE", "RESOLVED",
    "RESOLVED_IN_PAGERDUTY", "RESOLVE_MISSED", "SUMMARY_LIMIT", "TRIGGER", "TRIGGERED",
    "AlertRecord", "Change", "Deadlines", "Decision", "Explanation", "Incident", "Note",
    "OutboundEvent", "Page", "PagerDutyUpdate", "State", "Work", "advance", "apply",
    "business_summary", "clean", "cut", "decide", "dedup_key", "event_size", "fit_event",
    "impact_summary", "incident_id", "locate", "map_severity", "next_deadline", "on_pagerduty",
    "reconcile", "rekey", "stale_fingerprints", "tick", "trigger_body", "trigger_priority",
    "with_records",
]
