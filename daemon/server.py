"""The HTTP edge: routes, authentication, limits, and translation of errors to statuses.

Alertmanager drops a notification on any 4xx and retries on 5xx, so: a body that can never
be processed is a 4xx naming the problem; a failure on our side (the store) is a 503 so
that Alertmanager retries; 200 is sent only after the decision is durable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.alerts import parse_body
from daemon.changes import change_json, parse_change, record_change
from daemon.decide import on_pagerduty, rekey
from daemon.errors import ConfigError, OutboxConflict, PayloadError, StandingAside, StoreError
from daemon.outbox import utcnow
from daemon.pdwebhook import SIGNATURE_HEADER, parse, verify
from daemon.store import PENDING, Store, StoredEvent

if TYPE_CHECKING:
    from daemon.app import Firehouse

log = logging.getLogger("firehouse.server")
APP_KEY: web.AppKey[Firehouse] = web.AppKey("firehouse")
MAX_BODY_KEY = web.AppKey("max_body", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A missing Content-Type reads as application/octet-stream; old senders omit it.
_JSON_TYPES = ("application/json", "application/octet-stream")
BIG_BODY = 1 << 20  # bytes: about 1,000 alerts
LIMIT_MAX = 1000  # items a list endpoint answers at most (`?limit=`)
# The store is probed in the background, a probe starting every STORE_PROBE_SECONDS (start
# to start) and counting as failed once it has taken STORE_PROBE_TIMEOUT: a database that
# hangs turns readiness to 503 within their sum (8 s), whatever the probe's own clean-up
# then takes; readiness itself only reads the last outcome.
STORE_PROBE_SECONDS = 5.0
STORE_PROBE_TIMEOUT = 3.0


def error(status: int, message: str) -> web.Response:
    """A JSON error body naming the problem."""
    return web.json_response({"status": "error", "error": message}, status=status)


def bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 to raise, with the body `error` gives."""
    return web.HTTPBadRequest(text=json.dumps({"status": "error", "error": message}),
                              content_type="application/json")


def authorized(request: web.Request, token: str, basic: tuple[str, str] | None) -> bool:
    """Whether the request carries the configured bearer token or basic credentials."""
    if not token and basic is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    # Header values are untrusted: bytes that are not UTF-8 arrive as surrogates, and must
    # mean "wrong credentials", not an error.
    given = value.strip().encode("utf-8", "surrogateescape")
    if token and scheme.lower() == "bearer":
        return hmac.compare_digest(given, token.encode())
    if basic is not None and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(given, validate=True).decode()
        except (binascii.Error, ValueError):
            return False
        user, _, password = decoded.partition(":")
        ok_user = hmac.compare_digest(user.encode(), basic[0].encode())
        ok_password = hmac.compare_digest(password.encode(), basic[1].encode())
        return ok_user and ok_password
    return False


def warn_rejected(request: web.Request, why: str) -> None:
    """Log a request refused for its credentials, at most once every 10 seconds."""
    firehouse = request.app[APP_KEY]
    now = time.monotonic()
    if now - firehouse.last_auth_warning > 10.0:
        firehouse.last_auth_warning = now
        log.warning("rejected request %s path=%s remote=%s (further rejections within 10s "
                    "are counted, not logged)", why, request.path, request.remote)


def require_auth(handler: Handler) -> Handler:
    """Wrap a handler so that it answers 401 without valid credentials."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        firehouse = request.app[APP_KEY]
        settings = firehouse.config.settings
        if not authorized(request, settings.bearer_token, settings.basic_auth):
            # Alertmanager drops a notification answered 401: make that visible here.
            if request.path == "/webhook/alertmanager":
                firehouse.metrics.webhooks.labels("unauthorized").inc()
            return unauthorized(request)
        return await handler(request)
    return wrapped


def unauthorized(request: web.Request) -> web.Response:
    """The 401 for a request without valid credentials, logged at most every 10 s."""
    warn_rejected(request, "without valid credentials")
    return web.json_response(
        {"status": "error", "error": "missing or invalid credentials"}, status=401,
        headers={"WWW-Authenticate": 'Bearer realm="firehouse"'},
    )


@require_auth
async def alertmanager_webhook(request: web.Request) -> web.Response:
    """Accept one Alertmanager notification; 200 only once its decision is stored."""
    firehouse = request.app[APP_KEY]
    metrics = firehouse.metrics
    started = time.perf_counter()
    if (refused := not_serving(firehouse)) is not None:
        metrics.webhooks.labels("unavailable").inc()
        return error(503, refused)
    if request.content_type not in _JSON_TYPES:
        metrics.webhooks.labels("unsupported_media_type").inc()
        return error(415, f"Content-Type must be application/json, got {request.content_type}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.webhooks.labels("too_large").inc()
        return error(413, f"body larger than {request.app[MAX_BODY_KEY]} bytes")
    try:
        # A big body is parsed off the event loop, which keeps answering meanwhile.
        webhook = (await asyncio.to_thread(parse_body, body) if len(body) > BIG_BODY
                   else parse_body(body))
    except PayloadError as exc:
        metrics.webhooks.labels("bad_request").inc()
        log.warning("rejected webhook: %s", json.dumps(str(exc)))
        return error(400, str(exc))
    metrics.alerts.labels("firing").inc(sum(1 for a in webhook.alerts if a.firing))
    metrics.alerts.labels("resolved").inc(sum(1 for a in webhook.alerts if not a.firing))
    if webhook.rejected:
        metrics.alerts_rejected.inc(len(webhook.rejected))
        for rejected in webhook.rejected:
            log.warning("malformed alert, paged as far as it could be read: %s",
                        json.dumps(rejected.reason))
    try:
        decision = await firehouse.dispatcher.handle(webhook)
    except StandingAside as exc:  # it began to, since the check above
        metrics.webhooks.labels("unavailable").inc()
        return error(503, f"{exc}; retry at another replica")
    except StoreError as exc:
        metrics.webhooks.labels("store_error").inc()
        log.error("could not store decision: %s", exc)  # noqa: TRY400 - the message says it all
        return error(503, "could not store the decision; retry")
    metrics.webhooks.labels("accepted").inc()
    metrics.webhook_seconds.observe(time.perf_counter() - started)
    opened = sorted({e.incident_id for e in decision.explanations
                     if e.action == "opened" and e.incident_id is not None})
    return web.json_response({
        "status": "success",
        "alerts": len(webhook.alerts),
        "rejected": [r.reason for r in webhook.rejected],
        "incidents_opened": opened,
        "events": len(decision.events),
    })


async def pagerduty_webhook(request: web.Request) -> web.Response:
    """Accept one PagerDuty v3 webhook (acknowledged, resolved, reassigned...); 200 only
    once its decision is stored. The signature is the authentication, not the webhook's
    bearer token or basic auth: PagerDuty sends neither.

    PagerDuty drops a delivery answered with a 4xx and retries a 5xx (5 attempts in about
    20 minutes), as Alertmanager does.
    """
    firehouse = request.app[APP_KEY]
    outcomes = firehouse.metrics.pagerduty_webhooks
    secrets = firehouse.config.settings.pagerduty_webhook_secrets
    if not secrets:
        outcomes.labels("unconfigured").inc()
        return error(403, "PagerDuty webhooks are not configured: set pagerduty.webhook_secret "
                     "(or $FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET) to the secret of the v3 webhook "
                     "subscription")
    if (refused := not_serving(firehouse)) is not None:
        outcomes.labels("error").inc()
        return error(503, refused)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        outcomes.labels("invalid").inc()
        return error(413, f"body larger than {request.app[MAX_BODY_KEY]} bytes")
    if not verify(body, request.headers.get(SIGNATURE_HEADER), secrets):
        outcomes.labels("unauthorized").inc()
        warn_rejected(request, f"without a valid {SIGNATURE_HEADER}")
        return error(401, f"missing or invalid {SIGNATURE_HEADER}: no v1 signature matches "
                     "a configured pagerduty.webhook_secret")
    try:
        update = parse(body)
    except PayloadError as exc:
        outcomes.labels("invalid").inc()
        log.warning("rejected PagerDuty webhook: %s", json.dumps(str(exc)))
        return error(400, str(exc))
    if update is None:
        outcomes.labels("ignored").inc()
        return web.json_response({"status": "ignored",
                                  "reason": "Firehouse does not act on this event type"})
    if not update.dedup_key:
        # Every incident Firehouse triggers has one: this incident is someone else's.
        outcomes.labels("ignored").inc()
        log.info("ignored PagerDuty %s of incident %s: it has no incident_key, so it is no "
                 "page of Firehouse's", update.event_type, json.dumps(update.pd_incident))
        return web.json_response({"status": "ignored", "event_type": update.event_type,
                                  "reason": "no incident_key: not an incident Firehouse "
                                  "triggered"})
    try:
        decision = await firehouse.dispatcher.run(
            lambda config, state, now: on_pagerduty(update, config, state, now))
    except StoreError as exc:
        outcomes.labels("error").inc()
        log.error("could not store decision: %s", exc)  # noqa: TRY400 - the message says it all
        return error(503, "could not store the decision; retry")
    outcomes.labels("accepted").inc()
    return web.json_response({
        "status": "success",
        "event_type": update.event_type,
        "dedup_key": update.dedup_key,
        "matched": bool(decision.timeline),
    })


async def healthy(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    """Readiness: webhooks are accepted, the store's last write succeeded and its last
    probe was answered in time (see `StoreProbe`). Answered at once from what is known:
    never waits for the store."""
    firehouse = request.app[APP_KEY]
    if firehouse.accepting and firehouse.store.healthy and firehouse.probe.answers:
        if firehouse.dispatcher.refusal is not None:
            return web.Response(text=f"Not ready: {firehouse.dispatcher.refusal}.\n",
                                status=503)
        return web.Response(text="Ready.\n")
    return web.Response(text="Not ready.\n", status=503)


def not_serving(firehouse: Firehouse) -> str | None:
    """Why inputs are answered 503 now, or None when they are taken."""
    if not firehouse.accepting:
        return "shutting down or not ready; retry"
    if firehouse.dispatcher.refusal is not None:
        return f"{firehouse.dispatcher.refusal}; retry at another replica"
    return None


class StoreProbe:
    """Probes the store for readiness in the background, with a small committed write.

    A store that failed a write is probed so: a load balancer that waits for readiness
    sends no webhook whose write would show that the disk is fixed. A shared store
    (PostgreSQL) is probed so even while healthy: the database can go away while this
    replica has nothing to write, and Alertmanager must then be sent to a replica that can
    store its webhooks.

    A probe starts every STORE_PROBE_SECONDS (start to start), and one not answered within
    STORE_PROBE_TIMEOUT counts as failed at that moment (`answers` False), though it may
    take much longer to give up (a connection to a hung database is cancelled and cleaned
    up with the driver's own timeouts); no other probe starts until it has, and readiness
    stays 503 meanwhile. So a database that hangs is seen within STORE_PROBE_SECONDS +
    STORE_PROBE_TIMEOUT."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.answers = True  # whether the last probe was answered in time (or none was due)
        self.probes = 0  # probes started
        self._stop = asyncio.Event()
        self._probing: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Ask the loop to return."""
        self._stop.set()

    def due(self) -> bool:
        """Whether the store is to be probed now."""
        return not self.store.healthy or self.store.shared

    async def run(self) -> None:
        """Probe until stopped; a probe still out when stopped is cancelled."""
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                if self.due():
                    await self.probe()
                left = STORE_PROBE_SECONDS - (time.monotonic() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, left))
        finally:
            if self._probing is not None:
                self._probing.cancel()

    async def probe(self) -> None:
        """One probe, waited for STORE_PROBE_TIMEOUT at most; none while the last one is
        still out (`answers` stays False)."""
        if self._probing is not None and not self._probing.done():
            return
        was_ready = self.store.healthy and self.answers
        self.probes += 1
        task = asyncio.create_task(self.store.probe(utcnow()), name="store probe")
        self._probing = task
        task.add_done_callback(_consume)
        await asyncio.wait({task}, timeout=STORE_PROBE_TIMEOUT)
        if not task.done():
            # A hang sets no `healthy`: remembered until a probe is answered again.
            if self.answers:
                log.warning("the store did not answer a probe within %gs: not ready",
                            STORE_PROBE_TIMEOUT)
            self.answers = False
            task.cancel()
            return
        error = task.exception() if not task.cancelled() else None
        if error is None:
            self.answers = True
            if not was_ready and self.store.healthy:
                log.info("the store accepts writes again: ready")
        elif isinstance(error, StoreError):
            # Refused in time: the store answered, and `healthy` says how (the failure was
            # logged where it happened).
            self.answers = True
        else:
            if self.answers:
                log.error("probing the store failed unexpectedly: not ready", exc_info=error)
            self.answers = False


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve a probe's outcome, so that one given up on is never reported as unread."""
    if not task.cancelled():
        task.exception()


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition of the injected registry; behind the API's credentials when
    `auth.protect_metrics` is set."""
    firehouse = request.app[APP_KEY]
    settings = firehouse.config.settings
    if settings.protect_metrics and not authorized(request, settings.bearer_token,
                                                   settings.basic_auth):
        return unauthorized(request)
    try:
        await firehouse.refresh_gauges()
    except StoreError as exc:
        # The other metrics are what an operator needs most during an outage of the store:
        # they are served, with the store's gauges at their last values and store_up 0.
        firehouse.metrics.store_up.set(0)
        log.warning("metrics: the store's gauges are stale: %s", exc)
    else:
        firehouse.metrics.store_up.set(
            1 if firehouse.store.healthy and firehouse.probe.answers else 0)
    body = generate_latest(firehouse.metrics.registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


@require_auth
async def reload(request: web.Request) -> web.Response:
    """Reload settings, maps and rules as SIGHUP does; the old configuration stays if the new
    one is bad. Answered once this request's reload is done (after any reload before it)."""
    try:
        config = await request.app[APP_KEY].reload("POST /-/reload")
    except ConfigError as exc:
        return web.json_response(
            {"status": "error", "error": "configuration rejected; the previous one is still "
             "active", "problems": [str(p) for p in exc.problems]}, status=400)
    return web.json_response({"status": "success", "config_digest": config.digest})


@require_auth
async def incidents(request: web.Request) -> web.Response:
    """Incidents, open and recently closed, newest first: `?status=open|resolved|merged`,
    `?limit=N`."""
    status = request.query.get("status")
    if status not in (None, "open", "resolved", "merged"):
        return error(400, "status must be open, resolved or merged")
    limit = _limit(request)
    items = await request.app[APP_KEY].store.list_incidents(status, limit)
    return web.json_response({"incidents": items})


@require_auth
async def incident(request: web.Request) -> web.Response:
    """One incident with its alerts, pages, events and timeline."""
    found = await request.app[APP_KEY].store.get_incident(request.match_info["id"])
    if found is None:
        return error(404, "no such incident")
    return web.json_response(found)


@require_auth
async def outbox(request: web.Request) -> web.Response:
    """Outbox rows, newest first: `?state=pending|delivered|dead|dry_run`."""
    store = request.app[APP_KEY].store
    state = request.query.get("state")
    if state not in (None, "pending", "delivered", "dead", "dry_run"):
        return error(400, "state must be pending, delivered, dead or dry_run")
    events = await store.list_events(state, _limit(request))
    settings = request.app[APP_KEY].config.settings
    overdue_before = utcnow() - timedelta(seconds=settings.overdue_after)
    overdue = await store.overdue_events(overdue_before, 1000)
    return web.json_response({
        "counts": await store.outbox_counts(),
        "overdue": [e.id for e in overdue],
        "events": [{**_event_json(e), "overdue": e.state == PENDING
                    and e.created_at < overdue_before} for e in events],
    })


@require_auth
async def retry_event(request: web.Request) -> web.Response:
    """Send a dead letter again once its cause is fixed (a rotated routing key): back to
    pending, attempts reset, with its target's routing key from the current settings, and
    the later dead events of its dedup key with it (a trigger's resolve). 404 for no such
    event, 409 for one that cannot be retried (not dead, target gone, already resolved)."""
    firehouse = request.app[APP_KEY]
    event_id = int(request.match_info["id"])
    settings = firehouse.config.settings
    # As the engine pages (decide/engine.py, routing_key): no key in dry-run.
    keys = {name: "" if settings.dry_run else target.routing_key
            for name, target in settings.targets.items()}
    try:
        events = await firehouse.store.requeue(event_id, keys, utcnow())
    except OutboxConflict as exc:
        return error(409, str(exc))
    except StoreError as exc:
        log.error("could not requeue event %d: %s", event_id, exc)  # noqa: TRY400 - the message says it all
        return error(503, "could not write to the store; retry")
    if events is None:
        return error(404, f"no outbox event {event_id}")
    for event in events:
        if event.action == "trigger" and event.incident_id:
            # The page remembers the key its trigger now goes to: its resolve follows it.
            await firehouse.dispatcher.run(partial(rekey, event.dedup_key, event.routing_key))
    if firehouse.deliverer is not None:
        firehouse.deliverer.wake()
    log.info("dead letter requeued on request", extra={"fields": {
        "events": ",".join(str(e.id) for e in events), "target": events[0].target,
        "dedup_key": events[0].dedup_key}})
    return web.json_response({"status": "success",
                              "requeued": [_event_json(e) for e in events]})


@require_auth
async def post_change(request: web.Request) -> web.Response:
    """Record a deploy or configuration change from a pipeline: 201 once it is stored, 200
    with `duplicate: true` for an id already recorded, 400 naming every bad field."""
    firehouse = request.app[APP_KEY]
    received = firehouse.metrics.changes_received
    if (refused := not_serving(firehouse)) is not None:
        return error(503, refused)
    if request.content_type not in _JSON_TYPES:
        received.labels("invalid").inc()
        return error(415, f"Content-Type must be application/json, got {request.content_type}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        received.labels("invalid").inc()
        return error(413, f"body larger than {request.app[MAX_BODY_KEY]} bytes")
    dispatcher = firehouse.dispatcher
    try:
        change = parse_change(body, dispatcher.config.graph, dispatcher.clock())
    except PayloadError as exc:
        received.labels("invalid").inc()
        log.warning("rejected change: %s", json.dumps(str(exc)))
        return error(400, str(exc))
    try:
        decision = await dispatcher.run(
            lambda config, state, now: record_change(change, config, state, now))
    except StoreError as exc:
        log.error("could not store change: %s", exc)  # noqa: TRY400 - the message says it all
        return error(503, "could not store the change; retry")
    if not decision.changes:
        received.labels("duplicate").inc()
        stored = next((c for c in dispatcher.state.changes if c.id == change.id), change)
        return web.json_response({**change_json(stored), "duplicate": True})
    received.labels("accepted").inc()
    log.info("change recorded", extra={"fields": {
        "id": change.id, "service": change.service, "summary": change.summary,
        "notes": len(decision.timeline)}})
    return web.json_response({**change_json(change), "duplicate": False}, status=201)


@require_auth
async def changes(request: web.Request) -> web.Response:
    """Recorded changes, newest first: `?service=NAME` (a map name or alias), `?limit=N`."""
    firehouse = request.app[APP_KEY]
    service = request.query.get("service") or None
    if service is not None:
        found = firehouse.config.graph.resolve(service)
        service = found.name if found is not None else service
    items = await firehouse.store.list_changes(service, _limit(request))  # 503: middleware
    return web.json_response({"changes": items})


def _event_json(event: StoredEvent) -> dict[str, Any]:
    return {
        "id": event.id, "incident_id": event.incident_id, "target": event.target,
        "dedup_key": event.dedup_key, "action": event.action, "state": event.state,
        "attempts": event.attempts, "created_at": event.created_at.isoformat(),
        "next_attempt_at": event.next_attempt_at.isoformat(), "last_error": event.last_error,
        "body": event.body,
    }


def _limit(request: web.Request) -> int:
    """`?limit=`, 100 when absent; anything but a whole number from 1 to LIMIT_MAX is a 400
    (raised), never quietly another number."""
    given = request.query.get("limit", "100")
    try:
        limit = int(given)
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIMIT_MAX:
        raise bad_request(f"limit must be a whole number from 1 to {LIMIT_MAX}, "
                          f"got {json.dumps(given)}")
    return limit


@web.middleware
async def store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A read the store cannot answer (its database unreachable) is a 503 saying so, for
    every endpoint that has no answer of its own for it: a reader retries, rather than
    taking a 500 for a bug."""
    try:
        return await handler(request)
    except StoreError as exc:
        log.error("%s %s: the state store could not answer: %s",  # noqa: TRY400 - it says all
                  request.method, request.path, exc)
        return error(503, "state store unavailable; retry")


def make_app(firehouse: Firehouse) -> web.Application:
    """The aiohttp application, its routes and limits."""
    max_body = firehouse.config.settings.max_body_bytes
    app = web.Application(client_max_size=max_body, middlewares=[store_unavailable])
    app[APP_KEY] = firehouse
    app[MAX_BODY_KEY] = max_body
    app.router.add_post("/webhook/alertmanager", alertmanager_webhook)
    app.router.add_post("/webhook/pagerduty", pagerduty_webhook)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/v1/incidents", incidents)
    app.router.add_get("/api/v1/incidents/{id}", incident)
    app.router.add_get("/api/v1/outbox", outbox)
    app.router.add_post(r"/api/v1/outbox/{id:\d{1,18}}/retry", retry_event)
    app.router.add_post("/api/v1/changes", post_change)
    app.router.add_get("/api/v1/changes", changes)
    # The pages build on this module (its auth and APP_KEY): imported here, not at the top.
    from daemon.web import add_routes  # noqa: PLC0415
    add_routes(app)
    return app
