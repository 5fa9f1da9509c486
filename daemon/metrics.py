"""Prometheus metrics, registered on an injected registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from daemon.pagerduty import OUTCOMES

# Outcomes of a round of the reconciler (daemon/reconcile.py): Alertmanager answered, none
# of its URLs answered, no URL is configured, or the round failed (a bug, the store).
STALE_CHECK_OUTCOMES = ("ok", "unreachable", "unconfigured", "error")
# Outcomes of a request to POST /webhook/pagerduty (daemon/pdwebhook.py): stored, an event
# Firehouse does not act on, a bad or missing signature, a malformed or oversized body, no
# secret configured, or not stored (the store, shutting down: PagerDuty retries).
PAGERDUTY_WEBHOOK_OUTCOMES = ("accepted", "ignored", "unauthorized", "invalid", "unconfigured",
                              "error")
# Why the outbox holds a routing key's events back (daemon/outbox.py): its budget per minute
# is spent, or PagerDuty answered 429.
SHAPED_REASONS = ("budget", "rate_limited")
# What was cut from an event to fit PagerDuty's limits (daemon/decide/bodies.py).
TRUNCATED_PARTS = ("summary", "details")

# Why a page went out beyond an incident's first ones (the engine's page reasons, as labels).
ESCALATION_REASONS = ("impact_grew", "not_acknowledged_in_time", "not_resolved_in_time")

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
        self.pagerduty_webhooks = Counter(
            "firehouse_pagerduty_webhooks", "PagerDuty v3 webhook requests by outcome.",
            ["outcome"], registry=r)
        for outcome in PAGERDUTY_WEBHOOK_OUTCOMES:
            self.pagerduty_webhooks.labels(outcome)
        self.alerts = Counter(
            "firehouse_alerts_received", "Alerts received, by status.", ["status"], registry=r)
        self.alerts_rejected = Counter(
            "firehouse_alerts_rejected",
            "Malformed alerts inside accepted webhooks, each paged as far as it could be read.",
            registry=r)
        self.incidents_opened = Counter(
            "firehouse_incidents_opened", "Incidents opened, by whether the service is mapped.",
            ["mapped"], registry=r)
        self.incidents_resolved = Counter(
            "firehouse_incidents_resolved", "Incidents resolved.", registry=r)
        self.incidents_open = Gauge(
            "firehouse_incidents_open", "Incidents currently open.", registry=r)
        self.clock_ticks = Counter(
            "firehouse_clock_ticks", "Clock ticks that changed an incident.", registry=r)
        self.escalations = Counter(
            "firehouse_escalations", "Pages sent beyond an incident's first ones, by reason.",
            ["reason"], registry=r)
        for reason in ESCALATION_REASONS:
            self.escalations.labels(reason)
        self.incidents_merged = Counter(
            "firehouse_incidents_merged", "Incidents merged into another one that an alert "
            "connected them to.", registry=r)
        self.changes_received = Counter(
            "firehouse_changes_received", "Changes posted to /api/v1/changes, by outcome.",
            ["outcome"], registry=r)
        for outcome in ("accepted", "duplicate", "invalid"):
            self.changes_received.labels(outcome)
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
        self.outbox_shaped = Counter(
            "firehouse_outbox_shaped", "Times a routing key began holding its events back: its "
            "budget (pagerduty.rate_limit_per_minute) was spent, or PagerDuty answered 429.",
            ["reason"], registry=r)
        for reason in SHAPED_REASONS:
            self.outbox_shaped.labels(reason)
        self.outbox_shaped_keys = Gauge(
            "firehouse_outbox_shaped_routing_keys",
            "Routing keys holding their events back now (budget spent, or after a 429).",
            registry=r)
        self.events_truncated = Counter(
            "firehouse_events_truncated", "Events cut to fit PagerDuty's limits, by what was "
            "cut: the summary (1,024 characters) or custom details (512 KB).", ["what"],
            registry=r)
        for what in TRUNCATED_PARTS:
            self.events_truncated.labels(what)
        self.outbox_overdue = Gauge(
            "firehouse_outbox_overdue_events",
            "Events undelivered for longer than pagerduty.overdue_after_seconds (still retried).",
            registry=r)
        self.store_up = Gauge(
            "firehouse_store_up",
            "1 while the state store answers (its last write, and this scrape's read, "
            "succeeded); 0 while it does not: webhooks are then answered 503.", registry=r)
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
        self.stale_checks = Counter(
            "firehouse_stale_checks",
            "Rounds that checked stale alerts against Alertmanager's API, by outcome.",
            ["outcome"], registry=r)
        for outcome in STALE_CHECK_OUTCOMES:
            self.stale_checks.labels(outcome)
        self.stale_alerts_resolved = Counter(
            "firehouse_stale_alerts_resolved",
            "Stale alerts resolved because Alertmanager no longer has them.", registry=r)
        self.incidents_stale = Gauge(
            "firehouse_incidents_stale",
            "Open incidents flagged stale: alerts not refreshed for alertmanager.stale_after "
            "that Alertmanager could not be asked about.", registry=r)
        # On a shared store (PostgreSQL) only: see daemon/cluster.py.
        self.cluster_replicas = Gauge(
            "firehouse_cluster_replicas",
            "Replicas on this database seen lately (this one included), by mode: live pages "
            "for real, dry_run only logs. A dry-run replica stands aside while a live one "
            "is seen.", ["mode"], registry=r)
        self.cluster_configurations = Gauge(
            "firehouse_cluster_configurations",
            "Distinct configurations among the replicas on this database seen lately (what "
            "decides pages: settings, maps and rules, not where each listens or logs): more "
            "than 1 outside a rollout means they decide by different rules, maps or "
            "targets.", registry=r)
        self.cluster_refusing = Gauge(
            "firehouse_cluster_refusing",
            "1 while this replica, in dry-run, refuses to decide because another on the same "
            "database pages for real.", registry=r)

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
