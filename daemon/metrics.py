"""Prometheus metrics, registered on an injected registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from daemon.pagerduty import OUTCOMES


class Metrics:
    """Every metric Firehouse exports; names are firehouse_<noun>_<unit>, labels closed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series double the exposition and say nothing an SRE needs. This is
        # a process-wide switch of prometheus_client (it has no per-registry one), and the
        # library leaves this function unannotated.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "firehouse_webhooks", "Webhook requests by outcome.", ["outcome"], registry=r)
        self.webhook_seconds = Histogram(
            "firehouse_webhook_duration_seconds", "Time to answer a webhook, commit included.",
            registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.alerts = Counter(
            "firehouse_alerts_received", "Alerts received, by status.", ["status"], registry=r)
        self.alerts_rejected = Counter(
            "firehouse_alerts_rejected", "Malformed alerts skipped inside accepted webhooks.",
            registry=r)
        self.incidents_opened = Counter(
            "firehouse_incidents_opened", "Incidents opened, by whether the service is mapped.",
            ["mapped"], registry=r)
        self.incidents_resolved = Counter(
            "firehouse_incidents_resolved", "Incidents resolved.", registry=r)
        self.incidents_open = Gauge(
            "firehouse_incidents_open", "Incidents currently open.", registry=r)
        self.events_sent = Counter(
            "firehouse_events_sent", "Delivery attempts to PagerDuty, by action and outcome.",
            ["action", "outcome"], registry=r)
        for outcome in OUTCOMES:
            for action in ("trigger", "resolve"):
                self.events_sent.labels(action, outcome)
        self.events_dry_run = Counter(
            "firehouse_events_dry_run", "Events logged instead of sent (dry-run).", registry=r)
        self.delivery_seconds = Histogram(
            "firehouse_event_delivery_seconds", "Duration of one delivery attempt.", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.outbox = Gauge(
            "firehouse_outbox_events", "Outbox rows by state.", ["state"], registry=r)
        self.outbox_overdue = Gauge(
            "firehouse_outbox_overdue_events",
            "Events undelivered for longer than pagerduty.overdue_after_seconds (still retried).",
            registry=r)
        self.outbox_oldest_pending = Gauge(
            "firehouse_outbox_oldest_pending_age_seconds",
            "Age of the oldest event still waiting for delivery.", registry=r)
        self.reload_ok = Gauge(
            "firehouse_config_last_reload_successful",
            "Whether the last configuration reload succeeded.", registry=r)
        self.reload_time = Gauge(
            "firehouse_config_last_reload_success_timestamp_seconds",
            "Time of the last successful configuration reload.", registry=r)
        self.config_info = Gauge(
            "firehouse_config_info", "Hash of the active configuration.", ["digest"], registry=r)
        self.dry_run = Gauge(
            "firehouse_dry_run", "1 when events are logged instead of sent.", registry=r)
        self.services = Gauge(
            "firehouse_dependency_map_services", "Services in the active dependency map.",
            registry=r)
        self.rules = Gauge("firehouse_rules", "Rules in the active configuration.", registry=r)

    def set_config(self, digest: str, dry_run: bool, services: int, rules: int, now: float
                   ) -> None:
        """Record a configuration that was just activated."""
        self.reload_ok.set(1)
        self.reload_time.set(now)
        self.config_info.clear()
        self.config_info.labels(digest).set(1)
        self.dry_run.set(1 if dry_run else 0)
        self.services.set(services)
        self.rules.set(rules)
