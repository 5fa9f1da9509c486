"""The command-center pages, served by the daemon itself: the board (`/`), one incident's
blast radius and timeline (`/incidents/{id}`) and the business line's view (`/business`).

Read-only views of what the API shows. Each page is a whole document on first load; its
script (static/app.js) then polls the same URL with `?fragment=1` every second and swaps
the new content in, so a webhook shows within about two seconds without a reload.

Authentication is the API's (bearer token or basic auth, when configured), but a browser
can only answer a basic-auth challenge: with only a bearer token configured, people cannot
sign in, and the 401 page says so. `web.open: true` opens these pages without credentials,
as /metrics is; the API stays behind authentication.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.changes import rollback_candidates
from daemon.decide.bodies import business_summary
from daemon.errors import StoreError
from daemon.server import APP_KEY, Handler, authorized, warn_rejected
from daemon.web import render

if TYPE_CHECKING:
    from daemon.app import Firehouse

# How many recently resolved incidents the board and the business view list.
RESOLVED_SHOWN = 10
OPEN_LIMIT = 1000
_STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css",
                 "favicon.svg": "image/svg+xml"}
# Scripts and styles only from the daemon: an alert value that got through escaping could
# still not run anything.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def add_routes(app: web.Application) -> None:
    """Register the pages and their static files on the daemon's application."""
    app.router.add_get("/", board)
    app.router.add_get("/business", business)
    app.router.add_get("/incidents/{id}", incident)
    app.router.add_get("/static/{name}", static)


def page_auth(handler: Handler) -> Handler:
    """Wrap a page so that it answers 401 without credentials the API would accept (unless
    `web.open`), challenging the browser for basic auth when that is configured."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        settings = request.app[APP_KEY].config.settings
        if settings.web_open or authorized(request, settings.bearer_token, settings.basic_auth):
            return await handler(request)
        warn_rejected(request, "without valid credentials")
        if settings.basic_auth is not None:
            challenge = 'Basic realm="firehouse", charset="UTF-8"'
            text = "Sign in with the user name and password configured in auth.basic_auth."
        else:
            challenge = 'Bearer realm="firehouse"'
            text = ("This Firehouse accepts only a bearer token (auth.bearer_token), which a "
                    "browser cannot send. Set auth.basic_auth so that people can sign in, or "
                    "web.open: true to open these read-only pages without credentials.")
        return _html(render.message("Sign in to Firehouse", text), status=401,
                     headers={"WWW-Authenticate": challenge})
    return wrapped


@page_auth
async def board(request: web.Request) -> web.StreamResponse:
    """Open incidents, most severe first, and the recently resolved."""
    firehouse = request.app[APP_KEY]
    now = firehouse.dispatcher.clock()
    try:
        current = await firehouse.store.list_incidents("open", OPEN_LIMIT)
        resolved = await firehouse.store.list_incidents("resolved", RESOLVED_SHOWN)
        merged = await firehouse.store.list_incidents("merged", RESOLVED_SHOWN)
    except StoreError:
        return _unavailable()
    # The recently closed, resolved or merged into another, newest first as the store lists.
    resolved = sorted([*resolved, *merged], key=lambda i: str(i["opened_at"]),
                      reverse=True)[:RESOLVED_SHOWN]
    # When each fire started (its earliest alert) and which of its services recovered (all
    # their alerts resolved) are known to the engine's state; the list does not carry the
    # alerts.
    open_ = firehouse.dispatcher.state.open
    started = {i: found.started_at for i, found in open_.items()}
    recovered = {i["id"]: render.recovered_services((a.service, a.status, a.ends_at)
                                                    for a in found.alerts.values())
                 for i in current if (found := open_.get(i["id"])) is not None}
    fragment = render.board(current, resolved, started, now, recovered)
    return _page(request, render.board_title(current), fragment, render.BOARD)


@page_auth
async def incident(request: web.Request) -> web.StreamResponse:
    """One incident: blast radius, pages, rollback candidates, alerts and timeline."""
    firehouse = request.app[APP_KEY]
    now = firehouse.dispatcher.clock()
    try:
        data = await firehouse.store.get_incident(request.match_info["id"])
    except StoreError:
        return _unavailable()
    if data is None:
        return _html(render.message("No such incident", "Firehouse knows no incident with "
                                    "this id; it may have been cleaned up."), status=404)
    picture = render.incident_picture(firehouse.config.graph, data)
    start = render.started_at(data)
    fragment = render.incident(data, picture, _rollback(firehouse, data, start, now),
                               start, now)
    return _page(request, render.incident_title(data), fragment, render.INCIDENT)


@page_auth
async def business(request: web.Request) -> web.StreamResponse:
    """The business line's view: what is hurt, in plain words, without hosts or labels."""
    firehouse = request.app[APP_KEY]
    now = firehouse.dispatcher.clock()
    try:
        resolved = await firehouse.store.list_incidents("resolved", RESOLVED_SHOWN)
    except StoreError:
        return _unavailable()
    # The words sent to the business line (business_summary), with the next update it
    # was promised.
    current = [
        render.BusinessStatus(found.severity,
                              tuple(found.impact.get("business_services", ())),
                              business_summary(found, found.business_updated_at),
                              found.started_at)
        for found in firehouse.dispatcher.state.open.values()
    ]
    recovered = []
    for item in resolved:
        hit = tuple((item.get("impact") or {}).get("business_services") or ())
        closed = render.parse_time(item.get("resolved_at"))
        if hit and closed is not None:
            recovered.append(render.BusinessStatus(
                item["severity"], hit, render.recovered_text(hit, closed, now), closed))
    fragment = render.business(current, recovered, now)
    return _page(request, render.business_title(current), fragment, render.BUSINESS)


@page_auth
async def static(request: web.Request) -> web.StreamResponse:
    """The pages' script and stylesheet, shipped in the package."""
    name = request.match_info["name"]
    content_type = _STATIC_TYPES.get(name)
    if content_type is None:
        raise web.HTTPNotFound
    return web.Response(body=_static_file(name), content_type=content_type,
                        charset="utf-8", headers={**_HEADERS, "Cache-Control": "no-cache"})


@functools.cache
def _static_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _rollback(firehouse: Firehouse, data: dict[str, Any], start: datetime, now: datetime
              ) -> list[dict[str, Any]]:
    """The engine's rollback candidates (daemon/decide/engine.py) at `now`, or at the
    resolution of a closed incident."""
    causes = [s for cause in data.get("root_causes") or () for s in cause.get("services", ())]
    until = render.parse_time(data.get("resolved_at")) or now
    window = timedelta(hours=firehouse.config.settings.changes_window_hours)
    return rollback_candidates(firehouse.dispatcher.state.changes,
                               causes or data.get("services", ()), firehouse.config.graph,
                               start, until, window, failing=data.get("services", ()))


def _page(request: web.Request, title: str, fragment: str, current: str) -> web.Response:
    """The fragment alone for the page's script (`?fragment=1`), else the whole page."""
    if request.query.get("fragment"):
        return _html(fragment)
    return _html(render.document(title, fragment, current=current,
                                 live=f"{request.path}?fragment=1"))


def _unavailable() -> web.Response:
    return _html(render.message("Store unavailable", "Firehouse could not read its store; "
                                "this page retries by itself."), status=503)


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={**_HEADERS, **(headers or {})})
