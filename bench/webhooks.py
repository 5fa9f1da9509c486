"""Alertmanager-shaped webhook bodies for the webhook benchmark (`python -m bench`).

The stream models what Alertmanager sends with `group_by: [alertname, service]`: each
notification is one group (one alert name on one service of the generated map) with 10
alerts that differ by instance. Stream `s` cycles through `groups` groups; the k-th
webhook of the stream is round r = k // groups of group g = k % groups and carries

* 2 new alerts (instances 2r, 2r+1): each opens an incident;
* 6 repeats of alerts still firing (instances 2r-6 … 2r-1, opened in the last 3 rounds);
* 2 resolved alerts (instances 2r-8, 2r-7, opened 4 rounds ago): each resolves its incident.

So in the steady state every webhook opens 2 incidents and resolves 2, and the number of
open incidents stays at about 8 per group. In the first 4 rounds of a group, repeats of
instances that were never sent open incidents too, and resolutions of them are
recognised as such (cheap). The same model is written in Lua (`webhooks.lua`) for wrk,
which builds every body when it sends it: a rotating set of pre-generated bodies would
turn the "new" alerts of its second pass into stale repeats that page nobody.

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
    """(alertname, service, severity) of a group; the same formula as in webhooks.lua."""
    n = stream * 7919 + group
    service = f"svc-{(n * 2654435761) % 4294967296 % services:06d}"
    return ALERTS[n % len(ALERTS)], service, SEVERITIES[n % len(SEVERITIES)]


def fingerprint(stream: int, group: int, instance: int, nonce: str) -> str:
    """16 hex digits, unique per (stream, group, instance) within a run."""
    return f"{stream:02x}{group:04x}{instance % _WRAP:06x}{nonce}"


def alert(stream: int, group: int, instance: int, *, nonce: str, services: int,
          starts_at: str, ends_at: str | None, name: str | None = None) -> dict[str, Any]:
    """One alert as Alertmanager sends it in a webhook."""
    group_name, service, severity = group_of(stream, group, services)
    name = name or group_name
    instance %= _WRAP
    fp = fingerprint(stream, group, instance, nonce)
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


def outage_fingerprints(first: int, count: int, nonce: str) -> list[str]:
    """The fingerprints of the alerts of `outage(first, count, …)`."""
    return [fingerprint(0x90, i % 4096, i // 4096, nonce) for i in range(first, first + count)]
