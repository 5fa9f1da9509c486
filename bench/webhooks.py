"""Alertmanager-shaped webhook bodies for the webhook benchmark (`python -m bench`).

The stream models what Alertmanager sends with `group_by: [alertname, service]`: each
notification is one group (one alert name on one service of the generated map) with 10
alerts that differ by instance. Stream `s` cycles through `groups` groups; the k-th
webhook of the stream is round r = k // groups of group g = k % groups and carries

* 2 new alerts (instances 2r, 2r+1);
* 6 repeats of alerts still firing (instances 2r-6 … 2r-1, sent in the last 3 rounds);
* 2 resolved alerts (instances 2r-8, 2r-7, sent 4 rounds ago).

Firehouse makes all alerts on one service one incident (one per fire): a group's first
webhook opens its incident (unless its service is connected to another failing one), and
later ones add and resolve alerts of it, paging nobody, since about 8 always fire. The
benchmark counts events from the outbox, not from this model. `fire` and `spread` (below)
build webhooks that open new incidents, for time to page and memory. The stream is written
in Lua too (`webhooks.lua`) for wrk, which builds every body when it sends it: a rotating
set of pre-generated bodies would turn the "new" alerts of its second pass into stale
repeats.

Every alert's summary annotation carries `[bench <fingerprint>]`; Firehouse copies that
annotation into the summary of each trigger it sends, which is how a page is matched with
the webhook that caused it.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

ALERTS = ("HighErrorRate", "HighLatencyP99", "PodCrashLooping", "DiskWillFillIn4Hours",
          "TargetDown", "ReplicationLagHigh", "QueueBacklogGrowing", "CertificateExpiresSoon")
SEVERITIES = ("critical", "warning", "warning", "error")
NEW, REPEAT, RESOLVED = 2, 6, 2
PER_WEBHOOK = NEW + REPEAT + RESOLVED
TOKEN = re.compile(r"\[bench ([0-9a-f]{16})\]")
EXTERNAL_URL = "http://alertmanager.monitoring.svc:9093"
_WRAP = 1 << 24  # instances below 0 (first rounds) wrap to numbers never sent as new


def rfc3339(moment: float) -> str:
    """A Unix time as Alertmanager writes it (second precision is enough here)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def group_of(stream: int, group: int, services: int) -> tuple[str, str, str]:
    """(alertname, service, severity) of a group; the same formula as in webhooks.lua.

    Services are drawn from the newest tenth of the generated map: front services that
    hardly depend on one another, so that the stream is many separate fires (each opening
    its own incident and pages), as a day of unrelated alerts is. Alerts drawn from the
    whole map would soon all join the one fire of its core services."""
    n = stream * 7919 + group
    front = max(1, services // 10)
    service = f"svc-{services - 1 - (n * 2654435761) % 4294967296 % front:06d}"
    return ALERTS[n % len(ALERTS)], service, SEVERITIES[n % len(SEVERITIES)]


def fingerprint(stream: int, group: int, instance: int, nonce: str) -> str:
    """16 hex digits, unique per (stream, group, instance) within a run."""
    return f"{stream:02x}{group:04x}{instance % _WRAP:06x}{nonce}"


def alert(stream: int, group: int, instance: int, *, nonce: str, services: int,
          starts_at: str, ends_at: str | None, name: str | None = None) -> dict[str, Any]:
    """One alert as Alertmanager sends it in a webhook."""
    group_name, service, severity = group_of(stream, group, services)
    instance %= _WRAP
    return alert_on(service, name or group_name, severity, instance,
                    fingerprint(stream, group, instance, nonce), starts_at=starts_at,
                    ends_at=ends_at)


def alert_on(service: str, name: str, severity: str, instance: int, fp: str, *,
             starts_at: str, ends_at: str | None) -> dict[str, Any]:
    """One alert on `service` (instance `instance`, fingerprint `fp`)."""
    host = f"{service}-{instance:x}"
    return {
        "status": "firing" if ends_at is None else "resolved",
        "labels": {
            "alertname": name, "service": service, "severity": severity,
            "instance": f"{host}.prod.svc.cluster.local:8080", "job": service,
            "namespace": "prod", "pod": f"{host}-7c9f8d6b5-x2x4q",
            "cluster": "prod-eu-west-1", "region": "eu-west-1", "env": "production",
            "prometheus": "monitoring/k8s",
        },
        "annotations": {
            "summary": f"{name} on {host} [bench {fp}]",
            "description": (f"{name} has been active on {host} ({service}) for more than 5 "
                            "minutes: the value is above its threshold; see the dashboard "
                            "and the runbook before restarting anything."),
            "runbook_url": f"https://runbooks.example.com/alerts/{name}",
            "dashboard": f"https://grafana.example.com/d/svc/{service}?var-instance={host}",
        },
        "startsAt": starts_at,
        "endsAt": ends_at or "0001-01-01T00:00:00Z",
        "generatorURL": ("http://prometheus-k8s-0.monitoring.svc:9090/graph?g0.expr="
                         f"{name}%7Bservice%3D%22{service}%22%7D&g0.tab=1"),
        "fingerprint": fp,
    }


def webhook(stream: int, k: int, *, groups: int, nonce: str, services: int, starts_at: str,
            now: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """The k-th webhook of a stream, and the fingerprints of the alerts it opens when the
    stream has been sent from k = 0."""
    group, r = k % groups, k // groups
    ends_at = rfc3339(time.time() if now is None else now)
    alerts = [alert(stream, group, i, nonce=nonce, services=services, starts_at=starts_at,
                    ends_at=None) for i in range(2 * r, 2 * r + 2)]
    alerts += [alert(stream, group, i, nonce=nonce, services=services, starts_at=starts_at,
                     ends_at=None) for i in range(2 * r - 6, 2 * r)]
    alerts += [alert(stream, group, i, nonce=nonce, services=services, starts_at=starts_at,
                     ends_at=ends_at) for i in range(2 * r - 8, 2 * r - 6)]
    # New alerts, plus (first rounds only) repeats of instances never sent before.
    opened = [a["fingerprint"] for a in alerts[:NEW]]
    if r == 0:
        opened += [a["fingerprint"] for a in alerts[NEW:NEW + REPEAT]]
    name, service, severity = group_of(stream, group, services)
    firing = any(a["status"] == "firing" for a in alerts)
    body = {
        "receiver": "firehouse",
        "status": "firing" if firing else "resolved",
        "alerts": alerts,
        "groupLabels": {"alertname": name, "service": service},
        "commonLabels": {"alertname": name, "service": service, "severity": severity,
                         "job": service, "namespace": "prod", "cluster": "prod-eu-west-1",
                         "region": "eu-west-1", "env": "production",
                         "prometheus": "monitoring/k8s"},
        "commonAnnotations": {"runbook_url": f"https://runbooks.example.com/alerts/{name}"},
        "externalURL": EXTERNAL_URL,
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}", service="{service}"}}',
        "truncatedAlerts": 0,
    }
    return body, opened


def outage(first: int, count: int, *, nonce: str, services: int, starts_at: str) -> bytes:
    """One notification of `count` new firing alerts (numbers first … first + count - 1 of
    this run) spread over the map: what Alertmanager sends for a wide outage (a network
    partition, say) when it groups on alertname only."""
    alerts = []
    for i in range(first, first + count):
        alerts.append(alert(0x90, i % 4096, i // 4096, nonce=nonce, services=services,
                            starts_at=starts_at, ends_at=None, name="TargetDown"))
    return json.dumps({
        "receiver": "firehouse", "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": "TargetDown"},
        "commonLabels": {"alertname": "TargetDown", "namespace": "prod",
                         "cluster": "prod-eu-west-1", "region": "eu-west-1",
                         "env": "production", "prometheus": "monitoring/k8s"},
        "commonAnnotations": {}, "externalURL": EXTERNAL_URL, "version": "4",
        "groupKey": '{}:{alertname="TargetDown"}', "truncatedAlerts": 0,
    }).encode()


# ------------------------------------------------------------------ one fire per webhook


def unrelated_services(graph: Any) -> list[str]:
    """Mapped services no two of which are connected (neither depends on the other, directly
    or not: `ServiceGraph.related`), newest first: alerts on them are separate fires. Greedy
    from the newest service of the generated map (its front); about 4,000 of 10,000."""
    chosen: list[str] = []
    blocked: set[str] = set()
    for name in sorted(graph.services, reverse=True):
        if name not in blocked:
            chosen.append(name)
            blocked.update(graph.related(name))
    return chosen


def unmapped_service(n: int, nonce: str) -> str:
    """A service name no map knows: its alerts are never correlated."""
    return f"unmapped-{nonce}-{n:06d}"


def fire(stream: int, k: int, service: str, *, nonce: str, starts_at: str) -> dict[str, Any]:
    """The first notification of a new fire: 10 firing alerts (instances) of one alert name
    on `service`, which no open incident involves. They are one incident (all alerts on one
    service are), paged once."""
    name, severity = ALERTS[k % len(ALERTS)], SEVERITIES[k % len(SEVERITIES)]
    group, base = k % 65536, (k // 65536) * PER_WEBHOOK
    alerts = [alert_on(service, name, severity, base + i,
                       fingerprint(stream, group, base + i, nonce), starts_at=starts_at,
                       ends_at=None) for i in range(PER_WEBHOOK)]
    return {
        "receiver": "firehouse", "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": name, "service": service},
        "commonLabels": {"alertname": name, "service": service, "severity": severity,
                         "job": service, "namespace": "prod", "cluster": "prod-eu-west-1",
                         "region": "eu-west-1", "env": "production",
                         "prometheus": "monitoring/k8s"},
        "commonAnnotations": {"runbook_url": f"https://runbooks.example.com/alerts/{name}"},
        "externalURL": EXTERNAL_URL, "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}", service="{service}"}}',
        "truncatedAlerts": 0,
    }


def spread(stream: int, k: int, services: list[str], *, nonce: str, starts_at: str) -> bytes:
    """One notification of new firing alerts, one on each of `services` (grouped on alertname
    only): with services no open incident involves, each alert opens an incident."""
    alerts = [alert_on(service, "TargetDown", "critical", k,
                       fingerprint(stream, (k * PER_WEBHOOK + i) % 65536,
                                   (k * PER_WEBHOOK + i) // 65536, nonce),
                       starts_at=starts_at, ends_at=None)
              for i, service in enumerate(services)]
    return json.dumps({
        "receiver": "firehouse", "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": "TargetDown"},
        "commonLabels": {"alertname": "TargetDown", "namespace": "prod",
                         "cluster": "prod-eu-west-1", "region": "eu-west-1",
                         "env": "production", "prometheus": "monitoring/k8s"},
        "commonAnnotations": {}, "externalURL": EXTERNAL_URL, "version": "4",
        "groupKey": '{}:{alertname="TargetDown"}', "truncatedAlerts": 0,
    }).encode()


def incident_of_key(dedup_key: str) -> str:
    """The incident id in a dedup key `firehouse/<incident>/<target>/<step>` ("" if hashed)."""
    parts = dedup_key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "firehouse" else ""
