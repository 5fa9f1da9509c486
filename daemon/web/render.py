"""HTML of the command-center pages, from the API's incident JSON.

Everything that came from an alert (labels, annotations, URLs) or a deploy tool is untrusted:
every text goes through `escape`, and a link is only made of an http(s) URL. The pages are
whole documents on first load and `fragment`s (the inside of `<main>`) when the page's
script polls for updates.

Pure: no I/O; `now` is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from daemon.graph import DEGRADED, DOWN, SEVERITIES, ServiceGraph
from daemon.web.blast import (
    FAILING,
    HEALTHY,
    RECOVERED,
    ROOT,
    ROOT_RECOVERED,
    Picture,
    blast_radius,
    edge_swatch,
    svg,
)
from daemon.web.blast import swatch as state_swatch
from daemon.web.text import escape

# A page's status once a responder resolved it in PagerDuty (daemon.decide.model).
RESOLVED_IN_PAGERDUTY = "resolved in PagerDuty"
BOARD, BUSINESS, INCIDENT = "board", "business", "incident"
_NAV = ((BOARD, "/", "Board"), (BUSINESS, "/business", "Business"))
_ROLE_NAMES = {"technical_lead": "technical lead", "service_lead": "service lead",
               "incident_lead": "incident lead", "senior_management": "senior management",
               "business_line": "business line"}
_LEGEND = ((ROOT, "root cause: double octagon"), (FAILING, "failing: octagon"),
           (DOWN, "down: box, hatched"), (DEGRADED, "degraded: dashed pill, dotted"),
           (HEALTHY, "healthy dependency of a root cause"))
# Only on a picture that has them: most never do.
_LEGEND_RECOVERED = ((ROOT_RECOVERED, "root cause, recovered: green double octagon, ticked"),
                     (RECOVERED, "recovered: green octagon, ticked (its alerts all resolved)"))
# Recovered services an incident page names at most (a wide outage can recover hundreds).
RECOVERED_SHOWN = 12


@dataclass(frozen=True, slots=True)
class BusinessStatus:
    """One incident as the business line sees it: plain words, no hosts, no labels."""

    severity: str
    business_services: tuple[str, ...]
    text: str
    since: datetime
    until: datetime | None = None


# --------------------------------------------------------------------------- the document


def document(title: str, body: str, *, current: str, live: str | None) -> str:
    """A whole page around a fragment; `live` is the URL the script polls, if any."""
    here = ' aria-current="page"'
    links = "".join(f'<a href="{href}"{here if key == current else ""}>{text}</a>'
                    for key, href, text in _NAV)
    polled = f' data-live="{escape(live)}"' if live else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/app.js" defer></script></head>\n'
        '<body><header class="top"><a class="brand" href="/">Firehouse</a>'
        f'<nav aria-label="Pages">{links}</nav>'
        '<p id="live-status" class="live-status" role="status" aria-live="polite">'
        f"{'connecting…' if live else 'not live'}</p></header>\n"
        f'<main id="live"{polled}>{body}</main></body></html>\n'
    )


def message(title: str, text: str) -> str:
    """A page that only says something (not found, credentials needed)."""
    return document(title, f'<div class="live-root"><h1>{escape(title)}</h1>'
                    f'<p class="message">{escape(text)}</p></div>', current="", live=None)


def _root(title: str, inner: str) -> str:
    return f'<div class="live-root" data-title="{escape(title)}">{inner}</div>'


# --------------------------------------------------------------------------- the board


def board_title(incidents: Sequence[Mapping[str, Any]]) -> str:
    """The browser tab's title: how many are open and the worst severity."""
    if not incidents:
        return "All clear — Firehouse"
    worst = max(incidents, key=_severity_rank)["severity"]
    return f"({len(incidents)}) {str(worst).upper()} — Firehouse"


# Cards the board shows at most: in a wide outage (hundreds of incidents) every screen's
# poll rendered them all each second (~1 MB and ~50 ms of CPU for 700), and nobody reads
# past the first screens; the rest are counted and linked.
BOARD_CARDS = 100


def board(incidents: Sequence[Mapping[str, Any]], resolved: Sequence[Mapping[str, Any]],
          started: Mapping[str, datetime], now: datetime,
          recovered: Mapping[str, Mapping[str, datetime | None]] | None = None) -> str:
    """Open incidents most severe first (longest burning first among equals), at most
    BOARD_CARDS of them, then the recently resolved. `started` maps an incident id to when
    its fire started; `recovered`, to its services whose alerts all resolved (the list of
    incidents does not carry their alerts), as `recovered_services` finds them."""
    recovered = recovered or {}
    ordered = sorted(incidents, key=lambda i: (-_severity_rank(i), _start(i, started)))
    parts = [f'<section aria-labelledby="open-h"><h1 id="open-h">Open incidents '
             f'<span class="count">{len(ordered)}</span></h1>']
    if ordered:
        parts.append('<ol class="incidents">')
        parts.extend(f"<li>{_card(i, _start(i, started), recovered.get(str(i['id']), {}), now)}"
                     "</li>" for i in ordered[:BOARD_CARDS])
        parts.append("</ol>")
        if len(ordered) > BOARD_CARDS:
            parts.append(f'<p class="quiet more">and {len(ordered) - BOARD_CARDS} more open '
                         "incidents, less severe or younger: all of them in "
                         '<a href="/api/v1/incidents?status=open&amp;limit=1000">the API</a>'
                         ".</p>")
    else:
        parts.append('<p class="all-clear">No open incidents.</p>')
    parts.append("</section>")
    parts.append(_resolved_table(resolved, now))
    return _root(board_title(incidents), "".join(parts))


def _card(incident: Mapping[str, Any], start: datetime,
          recovered: Mapping[str, datetime | None], now: datetime) -> str:
    ident = str(incident["id"])
    severity = str(incident["severity"])
    facts = [
        _fact("Burning for", f"{_since(start, now)} <small>since {_time(start, now)}</small>",
              "clock"),
        _fact("Next deadline", _deadline(incident, now)),
        _fact("Probable root cause", _roots(incident, recovered, now)),
        _fact("Paged", _pages_list(incident.get("pages", ())), "paged"),
    ]
    return (
        f'<article class="incident sev-{_token(severity)}" data-incident="{escape(ident)}" '
        f'aria-labelledby="inc-{escape(ident)}">'
        f'<header><p class="badges">{_badges(incident)}</p>'
        f'<h2 id="inc-{escape(ident)}"><a href="/incidents/{escape(ident)}">'
        f"{escape(_what(incident))}</a></h2></header>"
        f'<dl class="facts">{"".join(facts)}</dl>'
        f'<p class="title">{escape(str(incident.get("title", "")))}</p></article>'
    )


def _resolved_table(resolved: Sequence[Mapping[str, Any]], now: datetime) -> str:
    head = ('<section aria-labelledby="resolved-h"><h2 id="resolved-h">Recently resolved'
            "</h2>")
    if not resolved:
        return head + '<p class="quiet">Nothing resolved recently.</p></section>'
    rows = []
    for item in resolved:
        # From when the fire started, as the incident's own page counts it.
        opened = started_at(item)
        closed = parse_time(item.get("resolved_at")) or opened
        ident = escape(str(item["id"]))
        merged = _merged_into(item)
        # A merged incident was not resolved: its alerts live on in the other one.
        ended = (f'<span class="merged-into">merged into {_incident_link(merged)}</span>'
                 if merged is not None else _time(closed, now))
        stuck = _undelivered(item.get("pages", ()))
        marked = ' class="undelivered"' if stuck else ""
        rows.append(
            f'<tr data-incident="{ident}"{marked}>'
            f'<td>{_severity(str(item["severity"]))}</td>'
            f'<td><a href="/incidents/{ident}">{escape(_what(item))}</a>'
            f"{_undelivered_list(stuck)}</td>"
            f"<td>{_time(opened, now)}</td><td>{ended}</td>"
            f"<td>{'' if merged is not None else _span(closed - opened)}</td></tr>")
    return (head + '<div class="scroll"><table class="resolved"><thead><tr>'
            '<th scope="col">Severity</th><th scope="col">What</th><th scope="col">Started</th>'
            '<th scope="col">Resolved</th><th scope="col">Lasted</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></section>')


# --------------------------------------------------------------------------- one incident


def incident_title(incident: Mapping[str, Any]) -> str:
    """The browser tab's title of an incident page."""
    return f"{str(incident['severity']).upper()} {_what(incident)} — Firehouse"


def incident(data: Mapping[str, Any], picture: Picture | None,
             rollback: Sequence[Mapping[str, Any]], start: datetime, now: datetime) -> str:
    """An incident's page: its facts, blast radius, pages, rollback candidates, alerts and
    timeline."""
    severity = str(data["severity"])
    is_open = data.get("status") == "open"
    merged = _merged_into(data)
    recovered = recovered_of(data)
    if merged is not None:
        # Not resolved: its alerts live on in the incident it was merged into.
        facts = [_fact("Opened", _time(start, now), "clock")]
    else:
        facts = [_fact("Burning for" if is_open else "Lasted",
                       (_since(start, now) if is_open else
                        _span((parse_time(data.get("resolved_at")) or now) - start))
                       + f" <small>since {_time(start, now)}</small>", "clock")]
    if merged is None and is_open:
        facts.append(_fact("Next deadline", _deadline(data, now)))
    elif merged is None:
        facts.append(_fact("Resolved", _time(parse_time(data.get("resolved_at")) or now, now)))
        stuck = _undelivered(data.get("pages", ()))
        if stuck:
            facts.append(_fact("PagerDuty", _undelivered_list(stuck), "undelivered"))
    facts.append(_fact("Probable root cause", _roots(data, recovered, now)))
    if recovered:
        facts.append(_fact("Recovered", _recovered_list(recovered, now), "back"))
    external = _link(str(data.get("external_url") or ""), "Open in Alertmanager")
    head = (
        '<nav class="crumbs" aria-label="Back"><a href="/">← Board</a></nav>'
        f'<header class="incident-head sev-{_token(severity)}">'
        f'<p class="badges">{_badges(data)}</p><h1>{escape(_what(data))}</h1>'
        + (f'<p class="merged-into"><strong>Merged into incident {_incident_link(merged)}'
           "</strong></p>" if merged is not None else "")
        + f'<p class="title">{escape(str(data.get("title", "")))}</p>'
        f'<dl class="facts">{"".join(facts)}</dl>'
        + (f'<p class="links">{external}</p>' if external else "") + "</header>"
    )
    main = (_blast_section(data, picture) + _pages_section(data, now)
            + _rollback_section(rollback, now) + _alerts_section(data, now))
    side = _timeline_section(data, now)
    return _root(incident_title(data),
                 f'{head}<div class="incident-grid"><div class="col-main">{main}</div>'
                 f'<div class="col-side">{side}</div></div>')


def _blast_section(data: Mapping[str, Any], picture: Picture | None) -> str:
    head = '<section aria-labelledby="blast-h"><h2 id="blast-h">Blast radius</h2>'
    if picture is None or not picture.nodes:
        services = ", ".join(str(s) for s in data.get("services", ()))
        return (head + f'<p class="quiet">No dependency map knows {escape(services)}: '
                "there is no blast radius to draw.</p></section>")
    back = [n.name for n in picture.nodes if n.state in (ROOT_RECOVERED, RECOVERED)]
    shown = [*_LEGEND, *(e for e in _LEGEND_RECOVERED
                         if any(n.state == e[0] for n in picture.nodes))]
    legend = "".join(f"<li>{state_swatch(state)} {escape(text)}</li>" for state, text in shown)
    legend += (f'<li>{edge_swatch("carry")} carries the failure</li>'
               f'<li>{edge_swatch("carry-soft")} carries a degradation (soft dependency)</li>'
               f'<li>{edge_swatch("plain")} other dependency</li>')
    hidden = (f'<p class="quiet">{picture.hidden} more impacted service(s) not drawn.</p>'
              if picture.hidden else "")
    impact = data.get("impact") or {}
    why = impact.get("why", ())
    more = int(impact.get("impacted_total") or 0) - len(why)
    why_list = ("<ul class=\"why\">" + "".join(f"<li>{escape(str(w))}</li>" for w in why)
                + "</ul>") if why else ""
    if why and more > 0:
        # The incident keeps the top few; the whole list is the map's, on the command line.
        failing = " ".join(str(s) for s in impact.get("failing") or data.get("services", ()))
        why_list += (f'<p class="quiet why-more">and {more} more impacted service(s) — '
                     f"every one with its chain: <code>firehouse impact {escape(failing)} "
                     f"--format json</code>; totals in "
                     f'<a href="/api/v1/incidents/{escape(str(data["id"]))}">the API</a>.</p>')
    # The impact is assessed again only when an alert joins or fires: what a recovered
    # service took down is drawn as it was, and the picture says so rather than guess.
    note = (f'<p class="quiet recovered-note">✔ Recovered since the impact was last '
            f"assessed, every alert on it resolved: {escape(', '.join(back))}. The impact is "
            "assessed again when an alert joins or fires; until then, what is drawn down or "
            "degraded because of it is as it was then.</p>") if back else ""
    return (head + f'<div class="blast scroll">{svg(picture, "Blast radius: " + _what(data))}'
            f'</div>{hidden}{note}<ul class="legend" aria-label="Legend">{legend}</ul>'
            f"{why_list}</section>")


def _pages_section(data: Mapping[str, Any], now: datetime) -> str:
    pages = data.get("pages", ())
    head = '<section aria-labelledby="pages-h"><h2 id="pages-h">Paged</h2>'
    if not pages:
        merged = _merged_into(data)
        if merged is not None:
            # Its pages moved with its alerts: they are resolved or escalated from there.
            return (head + f'<p class="quiet">Its pages moved to incident '
                    f"{_incident_link(merged)}, with its alerts.</p></section>")
        return head + '<p class="quiet">Nobody was paged.</p></section>'
    rows = "".join(
        f'<tr class="page page-{_token(str(p.get("status", "")))}">'
        f"<td>{escape(_roles(p.get('roles', ())))}</td><td>{escape(str(p['target']))}</td>"
        f"<td>{_severity(str(p.get('severity', '')))}</td>"
        f"<td>{_ack(p)}</td><td>{escape(str(p.get('reason', '')))}</td>"
        f"<td>{_time(parse_time(p.get('at')), now) if p.get('at') else ''}</td></tr>"
        for p in pages)
    return (head + '<div class="scroll"><table class="pages"><thead><tr>'
            '<th scope="col">Role</th><th scope="col">Target</th><th scope="col">Severity</th>'
            '<th scope="col">PagerDuty</th><th scope="col">Why</th><th scope="col">At</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></div></section>")


def _rollback_section(rollback: Sequence[Mapping[str, Any]], now: datetime) -> str:
    head = ('<section aria-labelledby="rollback-h"><h2 id="rollback-h">Rollback candidates'
            "</h2>")
    if not rollback:
        return (head + '<p class="quiet">No recorded change on the root causes or their '
                "dependencies in the window.</p></section>")
    items = []
    for change in rollback:
        links = " ".join(link for ln in change.get("links", ())
                         if (link := _link(str(ln.get("href", "")),
                                           str(ln.get("text") or ln.get("href", "")))))
        who = change.get("who")
        extra = ", ".join(escape(part) for part in (
            str(change.get("version") or ""), f"by {who}" if who else "") if part)
        flag = ('<strong class="flag">last change before the incident started</strong> '
                if change.get("last_before_incident") else "")
        items.append(
            f'<li class="change">{flag}{_time(parse_time(change["at"]), now)} '
            f"<b>{escape(str(change['service']))}</b> "
            f"<small>({escape(str(change.get('relation', '')))})</small>: "
            f"{escape(str(change.get('summary', '')))}"
            + (f" <small>{extra}</small>" if extra else "")
            + (f" {links}" if links else "") + "</li>")
    return head + f'<ul class="changes">{"".join(items)}</ul></section>'


def _alerts_section(data: Mapping[str, Any], now: datetime) -> str:
    alerts = data.get("alerts", ())
    head = '<section aria-labelledby="alerts-h"><h2 id="alerts-h">Alerts</h2>'
    if not alerts:
        return head + '<p class="quiet">No alerts.</p></section>'
    items = []
    for alert in alerts:
        labels = "".join(
            f"<li><code>{escape(str(k))}={escape(str(v))}</code></li>"
            for k, v in sorted(alert.get("labels", {}).items()))
        notes = "".join(
            f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>"
            for k, v in sorted(alert.get("annotations", {}).items()))
        source = _link(str(alert.get("generator_url") or ""), "source")
        status = str(alert.get("status", ""))
        started = parse_time(alert.get("starts_at")) or parse_time(alert["first_seen"])
        items.append(
            f'<li class="alert alert-{_token(status)}"><p class="alert-head">'
            f'<b>{escape(str(alert.get("name", "")))}</b> on '
            f'{escape(str(alert.get("service") or "(no service)"))} '
            f'{_severity(str(alert.get("severity", "")))} <span class="status">'
            f"{escape(status.upper())}</span> <small>since {_time(started, now)}</small>"
            + (f" {source}" if source else "") + "</p>"
            f'<ul class="labels" aria-label="Labels">{labels}</ul>'
            + (f'<dl class="annotations">{notes}</dl>' if notes else "") + "</li>")
    return head + f'<ul class="alerts">{"".join(items)}</ul></section>'


def _timeline_section(data: Mapping[str, Any], now: datetime) -> str:
    entries = data.get("timeline", ())
    items = "".join(
        f'<li class="entry entry-{_token(str(e.get("kind", "")))}">'
        f'{_time(parse_time(e["at"]), now, seconds=True)} '
        f'<span class="kind">{escape(str(e.get("kind", "")))}</span> '
        f'<span class="text">{escape(str(e.get("message", "")))}</span></li>'
        for e in reversed(entries))
    return ('<section aria-labelledby="timeline-h"><h2 id="timeline-h">Timeline '
            '<small>(newest first)</small></h2>'
            f'<ol class="timeline" reversed>{items}</ol></section>')


# --------------------------------------------------------------------------- business line


def business(current: Sequence[BusinessStatus], recovered: Sequence[BusinessStatus],
             now: datetime) -> str:
    """The business line's view: plain sentences, most severe first."""
    ordered = sorted(current, key=lambda s: (-_rank(s.severity), s.since))
    parts = ['<section aria-labelledby="business-h"><h1 id="business-h">Business services'
             "</h1>"]
    if not ordered:
        parts.append('<p class="all-clear">All business services are working normally.</p>')
    elif not any(s.business_services for s in ordered):
        # Only technical incidents: nothing known hurts a business service, but "working
        # normally" above a card of an open incident would read as a contradiction.
        parts.append('<p class="all-clear">No business service is known to be affected; '
                     f"{len(ordered)} technical incident(s) open.</p>")
    if ordered:
        parts.append('<ul class="business">')
        parts.extend(
            f'<li class="biz sev-{_token(s.severity)}"><p class="biz-what">'
            f'{escape(", ".join(s.business_services) or "Technical incident")}</p>'
            f'<p class="biz-text">{escape(s.text)}</p><p class="biz-since">Disrupted for '
            f"{_since(s.since, now)}</p></li>" for s in ordered)
        parts.append("</ul>")
    parts.append("</section>")
    if recovered:
        parts.append('<section aria-labelledby="recovered-h"><h2 id="recovered-h">Recovered'
                     '</h2><ul class="business recovered">')
        parts.extend(f'<li class="biz"><p class="biz-text">{escape(s.text)}</p></li>'
                     for s in recovered)
        parts.append("</ul></section>")
    return _root(business_title(current), "".join(parts))


def business_title(current: Sequence[BusinessStatus]) -> str:
    """The browser tab's title of the business view."""
    hit = [s for s in current if s.business_services]
    return f"({len(hit)}) Business status — Firehouse" if hit else "Business status — Firehouse"


def recovered_text(business_services: Sequence[str], until: datetime, now: datetime) -> str:
    """What the business line reads about a resolved incident."""
    return (f"Recovered: {', '.join(business_services)} back to normal at "
            f"{_plain_time(until, now)}.")


# --------------------------------------------------------------------------- pieces


def incident_picture(graph: ServiceGraph, data: Mapping[str, Any]) -> Picture | None:
    """An incident's blast radius: its impact's failing services as the API shows them (not
    every service that ever failed in it), those whose alerts all resolved since drawn
    recovered; None for an incident on services no map knows."""
    if not data.get("mapped", True):
        return None
    return blast_radius(graph, failing_services(data), recovered_of(data))


def failing_services(data: Mapping[str, Any]) -> list[str]:
    """The services an incident's impact found failing when it was last assessed (the API's
    `impact.failing`): what its picture draws failing or recovered. An incident stored
    without one falls back to its services, every one that ever failed in it."""
    impact = data.get("impact") or {}
    if "failing" in impact:
        return [str(s) for s in impact["failing"]]
    return [str(s) for s in data.get("services", ())]


def recovered_services(alerts: Iterable[tuple[str | None, str, datetime | None]]
                       ) -> dict[str, datetime | None]:
    """From the (service, status, ends_at) of an incident's alerts: each service none of
    whose alerts fires any longer, with when the last of them ended (None: unknown)."""
    firing: set[str] = set()
    ended: dict[str, datetime | None] = {}
    for service, status, ends_at in alerts:
        if service is None:
            continue
        if status == "firing":
            firing.add(service)
        elif service not in ended or (ends_at is not None and (
                (last := ended[service]) is None or ends_at > last)):
            ended[service] = ends_at
    return {service: at for service, at in ended.items() if service not in firing}


def recovered_of(data: Mapping[str, Any]) -> dict[str, datetime | None]:
    """`recovered_services` of an open incident, from its alerts in the API's JSON. None of
    a closed one: its fire is over (resolved) or goes on in another incident (merged), and
    its page shows it as it was last assessed."""
    if data.get("status") != "open":
        return {}
    return recovered_services((str(a["service"]) if a.get("service") else None,
                               str(a.get("status", "")), parse_time(a.get("ends_at")))
                              for a in data.get("alerts", ()))


def started_at(data: Mapping[str, Any]) -> datetime:
    """When an incident's fire started: its earliest alert's start (the alerts it has, and
    the earliest it ever had: `started`), else when it opened."""
    starts = [t for a in data.get("alerts", ()) if (t := parse_time(a.get("starts_at")))]
    if (started := parse_time(data.get("started"))) is not None:
        starts.append(started)
    return min(starts, default=_need_time(data["opened_at"]))


def next_deadline(data: Mapping[str, Any]) -> tuple[str, datetime] | None:
    """The clock's next deadline on an open incident, with what it asks, as the clock
    worker sees it (daemon/decide/timers.py); None when nothing is pending."""
    clock = data.get("clock") or {}
    fired = clock.get("fired") or ()
    due: list[tuple[datetime, str]] = []
    ack = parse_time(clock.get("ack_by"))
    if ack and not clock.get("acknowledged_at") and "ack" not in fired:
        due.append((ack, "acknowledge"))
    resolve = parse_time(clock.get("resolve_by"))
    if resolve and "resolve" not in fired:
        due.append((resolve, "resolve"))
    updated = parse_time(clock.get("business_updated_at"))
    every = clock.get("business_updates_every")
    if updated and every:
        due.append((updated + timedelta(seconds=int(every)), "business update"))
    if not due:
        return None
    at, what = min(due)
    return what, at


def _deadline(data: Mapping[str, Any], now: datetime) -> str:
    if data.get("quiet_since"):
        return "alerts cleared; confirming before resolving"
    missed = [f"{what} deadline missed" for what in (data.get("clock") or {}).get("fired", ())]
    found = next_deadline(data)
    text = ""
    if found is not None:
        what, at = found
        text = (f"{escape(what)} by {_time(at, now)} — "
                f'<span class="countdown{" overdue" if at < now else ""}" '
                f'data-until="{at.isoformat()}">{_until(at, now)}</span>')
    if missed:
        escalate = (data.get("clock") or {}).get("escalate_to") or ()
        note = ", ".join(missed) + (f"; escalated to {_roles(escalate)}" if escalate else "")
        text += f'{"<br>" if text else ""}<span class="missed">{escape(note)}</span>'
    return text or "none"


def _roots(data: Mapping[str, Any], recovered: Mapping[str, datetime | None],
           now: datetime) -> str:
    """The probable root causes as last assessed, each marked recovered once its alerts all
    resolved; when every one listed has, what still fails."""
    causes = data.get("root_causes") or ()
    if not causes:
        return "unknown"
    items = []
    all_back = True
    for cause in causes:
        names = [str(s) for s in cause.get("services", ())]
        back = [n for n in names if n in recovered]
        whole = bool(names) and len(back) == len(names)
        all_back &= whole
        if whole:
            # What it took down is as it was when it failed: left out, not to read as now.
            at = max((t for n in names if (t := recovered[n]) is not None), default=None)
            items.append(f'<li class="cause-recovered"><b>{escape(" <-> ".join(names))}</b> '
                         '<span class="recovered-mark">✔ recovered</span>'
                         + (f" <small>at {_time(at, now)}</small>" if at else "") + "</li>")
            continue
        partly = f" <small>({escape(', '.join(back))} recovered)</small>" if back else ""
        items.append(f'<li><b>{escape(" <-> ".join(names))}</b>{partly}'
                     + (f" <small>takes down {int(cause['takes_down'])}</small>"
                        if cause.get("takes_down") is not None else "") + "</li>")
    total = (data.get("impact") or {}).get("root_causes_total", len(causes))
    more = f"<li><small>and {int(total) - len(causes)} more</small></li>" if total > len(
        causes) else ""
    still = [s for s in failing_services(data) if s not in recovered] if all_back else []
    if still:
        # The root causes recovered, the fire did not: say what still burns.
        shown = ", ".join(still[:3]) + (f" and {len(still) - 3} more" if len(still) > 3
                                        else "")
        more += (f'<li class="still-failing"><small>still failing:</small> '
                 f"<b>{escape(shown)}</b></li>")
    return f'<ul class="roots">{"".join(items)}{more}</ul>'


def _recovered_list(recovered: Mapping[str, datetime | None], now: datetime) -> str:
    """The services of an incident whose alerts all resolved, latest first."""
    floor = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(recovered, key=lambda s: (recovered[s] or floor, s), reverse=True)
    items = "".join(
        f'<li><span class="recovered-mark">✔</span> <b>{escape(name)}</b>'
        + (f" <small>at {_time(at, now)}</small>" if (at := recovered[name]) else "")
        + "</li>" for name in ordered[:RECOVERED_SHOWN])
    if len(ordered) > RECOVERED_SHOWN:
        items += f"<li><small>and {len(ordered) - RECOVERED_SHOWN} more</small></li>"
    return f'<ul class="roots recovered-services">{items}</ul>'


def _pages_list(pages: Iterable[Mapping[str, Any]]) -> str:
    """One line per target and role set: an incident holds several pages per target after
    merges, severity rises and missed deadlines (the incident page lists them all)."""
    pages = list(pages)
    # Pages Firehouse resolved itself (a superseded business update) are history, once
    # PagerDuty has their resolve.
    pages = [p for p in pages if p.get("status") != "resolved" or _undelivered([p])] or pages
    if not pages:
        return "nobody"
    groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for page in pages:
        key = (str(page["target"]), tuple(str(r) for r in page.get("roles", ())))
        groups.setdefault(key, []).append(page)
    lines = []
    acked = dead = 0
    for (target, roles), group in groups.items():
        newest = _newest(group)
        answered = _answered(group)
        shown = answered or newest
        # An older page of the target whose resolve PagerDuty lacks is still open there.
        unresolved = [p for p in _undelivered(group) if p is not shown
                      and _action(p) == "resolve"]
        if answered is not None:
            acked += 1
        if (answered is None and _delivery(newest) == "dead") or any(
                _delivery(p) == "dead" for p in unresolved):
            dead += 1
        status = str(shown.get("status", ""))
        state = _ack(shown) + "".join(f"<br>{_ack(p)}" for p in unresolved)
        more = f" <small>({len(group)} pages)</small>" if len(group) > 1 else ""
        lines.append(
            f'<li class="page page-{_token(status)}">{state} '
            f"{escape(_roles(roles))} <small>{escape(target)}</small> "
            f"{_severity(str(newest.get('severity', '')))}{more}</li>")
    lost = f' <span class="ack dead">{dead} not delivered</span>' if dead else ""
    noun = "target" if len(groups) == 1 else "targets"
    return (f'<p class="ack-count">{acked} of {len(groups)} {noun} acknowledged{lost}</p>'
            f'<ul class="paged">{"".join(lines)}</ul>')


def _newest(group: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The latest page of a target (the last listed among equal or missing times)."""
    floor = datetime.min.isoformat()
    order = max(range(len(group)),
                key=lambda i: (_sortable_time(group[i].get("at")) or floor, i))
    return group[order]


def _sortable_time(value: Any) -> str | None:
    found = parse_time(value)
    return found.astimezone(UTC).replace(tzinfo=None).isoformat() if found else None


def _answered(group: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """A page of the target someone acknowledged, else one resolved in PagerDuty."""
    for status in ("acknowledged", RESOLVED_IN_PAGERDUTY):
        found = [p for p in group if p.get("status") == status]
        if found:
            return _newest(found)
    return None


def _delivery(page: Mapping[str, Any]) -> str:
    """The outbox state of a page's latest event (`delivery.state` in the API), or ""."""
    return str((page.get("delivery") or {}).get("state") or "")


def _action(page: Mapping[str, Any]) -> str:
    """Which event of the page `delivery` is about: "trigger" (also when the API does not
    say) or "resolve"."""
    return str((page.get("delivery") or {}).get("action") or "trigger")


def _undelivered(pages: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pages whose latest event PagerDuty does not have: refused (dead) or still
    waiting in the outbox. On a resolved incident, a page PagerDuty still has open."""
    return [p for p in pages if _delivery(p) in ("dead", "pending")]


def _undelivered_list(pages: Sequence[Mapping[str, Any]]) -> str:
    """Each undelivered page with its target, as loud as on an open incident's card."""
    if not pages:
        return ""
    items = "".join(f"<li><small>{escape(str(p.get('target', '')))}:</small> {_ack(p)}</li>"
                    for p in pages)
    return f'<ul class="undelivered">{items}</ul>'


def _ack(page: Mapping[str, Any]) -> str:
    """Whether PagerDuty has the page and whether someone acknowledged it: a page PagerDuty
    refused or that still waits to be sent must not read as merely unacknowledged."""
    status = str(page.get("status", ""))
    delivery = page.get("delivery") or {}
    state = _delivery(page)
    error = str(delivery.get("last_error") or "")
    if delivery.get("last_status"):
        error += f" (HTTP {int(delivery['last_status'])})"
    if _action(page) == "resolve" and state in ("dead", "pending"):
        # Resolved here, but not in PagerDuty: the alert there stays open until it is.
        return _resolve_not_out(state, error, int(delivery.get("event_id") or 0))
    if status == RESOLVED_IN_PAGERDUTY:
        who = page.get("acknowledged_by")
        return ('<span class="ack yes">✔ resolved in PagerDuty</span>'
                + (f" <small>by {escape(str(who))}</small>" if who else ""))
    if status == "acknowledged":
        who = page.get("acknowledged_by")
        return ('<span class="ack yes">✔ acknowledged</span>'
                + (f" <small>by {escape(str(who))}</small>" if who else ""))
    if state == "dead":
        retry = f"POST /api/v1/outbox/{int(delivery.get('event_id') or 0)}/retry"
        return (f'<span class="ack dead">✖ not delivered: {escape(error or "refused")}</span>'
                f" <small>fix the cause, then <code>{retry}</code></small>")
    if state == "pending" and error:
        return ('<span class="ack waiting">… waiting to be sent (retrying)</span> '
                f"<small>{escape(error)}</small>")
    if state == "pending":
        return '<span class="ack waiting">… waiting to be sent</span>'
    if status == "triggered":
        dry = " <small>(dry-run: logged, not sent)</small>" if state == "dry_run" else ""
        return f'<span class="ack no">✖ not acknowledged</span>{dry}'
    return f'<span class="ack done">{escape(status)}</span>'


def _resolve_not_out(state: str, error: str, event_id: int) -> str:
    """A resolve PagerDuty refused, or that still waits to be sent."""
    if state == "dead":
        return (f'<span class="ack dead">✖ resolve not delivered: '
                f'{escape(error or "refused")}</span> <small>still open in PagerDuty; fix the '
                f"cause, then <code>POST /api/v1/outbox/{event_id}/retry</code></small>")
    if error:
        return ('<span class="ack waiting">… resolve waiting to be sent (retrying)</span> '
                f"<small>still open in PagerDuty; {escape(error)}</small>")
    return ('<span class="ack waiting">… resolve waiting to be sent</span> '
            "<small>still open in PagerDuty</small>")


def _merged_into(data: Mapping[str, Any]) -> str | None:
    """The id of the incident a merged incident was merged into; None when not merged."""
    if data.get("status") != "merged":
        return None
    return str(data.get("merged_into") or "")


def _incident_link(ident: str) -> str:
    if not ident:
        return "another incident"
    return f'<a href="/incidents/{escape(quote(ident, safe=""))}">{escape(ident)}</a>'


def _badges(data: Mapping[str, Any]) -> str:
    phase = str(data.get("phase") or data.get("status") or "")
    mapped = "" if data.get("mapped", True) else ' <span class="phase">UNMAPPED</span>'
    return (f'{_severity(str(data["severity"]))} <span class="phase phase-{_token(phase)}">'
            f"{escape(phase.upper())}</span>{mapped}")


def _severity(severity: str) -> str:
    return f'<span class="sev sev-{_token(severity)}">{escape(severity.upper())}</span>'


def _what(data: Mapping[str, Any]) -> str:
    """The business services hit, else the failing services."""
    business = (data.get("impact") or {}).get("business_services") or ()
    if business:
        return ", ".join(str(b) for b in business)
    services = [str(s) for s in data.get("services", ())]
    return ", ".join(services[:3]) + (f" and {len(services) - 3} more" if len(services) > 3
                                       else "") or "unknown service"


def _fact(term: str, value: str, cls: str = "") -> str:
    return (f'<div class="fact{" " + cls if cls else ""}"><dt>{escape(term)}</dt>'
            f"<dd>{value}</dd></div>")


def _roles(roles: Iterable[str]) -> str:
    return ", ".join(_ROLE_NAMES.get(str(r), str(r)) for r in roles)


def _link(url: str, text: str) -> str:
    """A link to an http(s) URL; nothing for any other scheme (javascript:, data:...)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    if scheme not in ("http", "https"):
        return ""
    return (f'<a class="out" href="{escape(url)}" rel="noopener noreferrer">'
            f"{escape(text)}</a>")


def _token(value: str) -> str:
    """A class-name-safe token of a closed-set value (severity, status, kind)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-"
                   for c in value.lower()) or "none"


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _severity_rank(incident: Mapping[str, Any]) -> int:
    return _rank(str(incident.get("severity", "")))


def _start(incident: Mapping[str, Any], started: Mapping[str, datetime]) -> datetime:
    found = started.get(str(incident["id"]))
    if found is not None:
        return found
    return _need_time(incident["opened_at"])


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from the API's JSON; None for none."""
    if not value:
        return None
    return datetime.fromisoformat(str(value))


def _need_time(value: Any) -> datetime:
    found = parse_time(value)
    if found is None:
        raise ValueError("a time the API always gives is missing")
    return found


def _since(start: datetime, now: datetime) -> str:
    """A ticking stopwatch (the page's script advances it every second)."""
    return (f'<span class="elapsed" data-since="{start.isoformat()}">'
            f"{elapsed(now - start)}</span>")


def _until(at: datetime, now: datetime) -> str:
    left = at - now
    return f"in {_span(left)}" if left >= timedelta(0) else f"{_span(-left)} overdue"


def elapsed(value: timedelta) -> str:
    """A stopwatch reading: `1:05:09`, `2d 3:00:00` (app.js writes the same)."""
    seconds = max(0, int(value.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


def _span(value: timedelta) -> str:
    """A short duration: `45s`, `3m 12s`, `1h 05m`, `2d 3h` (app.js writes the same)."""
    seconds = max(0, int(value.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _time(at: datetime | None, now: datetime, *, seconds: bool = False) -> str:
    """A UTC time in a `<time>` element, with the date when it is not today."""
    if at is None:
        return ""
    return f'<time datetime="{at.isoformat()}">{_plain_time(at, now, seconds=seconds)}</time>'


def _plain_time(at: datetime, now: datetime, *, seconds: bool = False) -> str:
    utc = at.astimezone(now.tzinfo)
    clock = utc.strftime("%H:%M:%S" if seconds else "%H:%M")
    if utc.date() != now.date():
        clock = f"{utc.strftime('%d %b')} {clock}"
    return f"{clock} UTC"

