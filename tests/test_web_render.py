"""The command-center pages' HTML and the blast-radius SVG, rendered without a server."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from html import escape
from html.parser import HTMLParser
from typing import Any

import pytest

from daemon.config import Config
from daemon.decide import State, apply, decide
from daemon.graph import DEGRADED, DOWN
from daemon.store import Store
from daemon.web import render
from daemon.web.blast import (
    FAILING,
    HEALTHY,
    RECOVERED,
    ROOT,
    ROOT_RECOVERED,
    STYLE,
    blast_radius,
    svg,
)
from tests.helpers import NOW, alert, resolved, undamped, webhook

SVG_NS = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"


def incident_json(**changes: Any) -> dict[str, Any]:
    """An incident as `GET /api/v1/incidents/{id}` answers it, with untrusted alert values."""
    opened = NOW - timedelta(minutes=4)
    data: dict[str, Any] = {
        "id": "abc123", "status": "open", "phase": "open", "severity": "critical",
        "opened_at": opened.isoformat(), "updated_at": opened.isoformat(), "resolved_at": None,
        "title": f"[CRITICAL] PostgresDown on postgres-payments: {EVIL}",
        "services": ["postgres-payments", "payments"], "mapped": True,
        "impact": {"business_services": ["online-checkout"], "root_causes_total": 1,
                   "why": [f"checkout is down because {EVIL}"]},
        "root_causes": [{"services": ["postgres-payments"], "takes_down": 2}],
        "external_url": "http://alertmanager.example:9093",
        "pages": [
            {"target": "dba-oncall", "roles": ["technical_lead"], "dedup_key": "k1",
             "severity": "critical", "status": "acknowledged", "reason": "opened",
             "at": opened.isoformat(), "acknowledged_by": f"Ann {EVIL}"},
            {"target": "command-center", "roles": ["incident_lead"], "dedup_key": "k2",
             "severity": "critical", "status": "triggered", "reason": "opened",
             "at": opened.isoformat(), "acknowledged_by": ""},
        ],
        "clock": {"ack_by": (opened + timedelta(minutes=5)).isoformat(),
                  "resolve_by": (opened + timedelta(hours=1)).isoformat(),
                  "escalate_to": ["senior_management"], "business_updates_every": None,
                  "acknowledged_at": None, "fired": [], "business_updated_at": None},
        "alerts": [{
            "fingerprint": "f1", "status": "firing", "name": f"PostgresDown{EVIL}",
            "service": "postgres-payments", "severity": "warning",
            "labels": {"alertname": "PostgresDown", "instance": EVIL, EVIL: "key"},
            "annotations": {"summary": f"pg down {EVIL}"},
            "starts_at": (opened - timedelta(minutes=3)).isoformat(), "ends_at": None,
            "first_seen": opened.isoformat(), "last_seen": opened.isoformat(),
            "generator_url": "javascript:alert(1)",
        }, {
            "fingerprint": "f2", "status": "firing", "name": "HighErrors",
            "service": "payments", "severity": "critical", "labels": {}, "annotations": {},
            "starts_at": None, "ends_at": None, "first_seen": opened.isoformat(),
            "last_seen": opened.isoformat(),
            "generator_url": "http://prometheus.example/graph?g0.expr=a%3Cb&x=\"y\"",
        }],
        "timeline": [{"at": opened.isoformat(), "kind": "opened",
                      "message": f"PostgresDown opened the incident {EVIL}"}],
    }
    data.update(changes)
    return data


class _Tags(HTMLParser):
    """The start tags and hrefs of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs.extend(v or "" for k, v in attrs if k == "href")


def tags(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def render_incident(config: Config, data: dict[str, Any]) -> str:
    """The incident's page as the server renders it, picture and all."""
    picture = render.incident_picture(config.graph, data)
    return render.incident(data, picture, [], render.started_at(data), NOW)


class TestEscaping:
    def test_alert_values_never_become_markup(self, config: Config) -> None:
        """A `<script>` in labels, annotations, names, titles and timeline is shown as text."""
        html = render_incident(config, incident_json())

        assert "<script" not in html
        assert "script" not in tags(html).tags
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    def test_control_and_bidi_characters_never_reach_the_page(self, config: Config) -> None:
        """A NUL, an escape sequence, a carriage return or a right-to-left override in a label
        value would make the page lie (or hide what follows): each shows as U+FFFD."""
        hidden = "a\x00b\x1b[31mc\rd\u202eevil\u2066e\x85f"
        data = incident_json()
        data["title"] = hidden
        data["alerts"][0]["labels"] = {"instance": hidden}
        data["alerts"][0]["annotations"] = {"summary": hidden}
        html = render_incident(config, data) + render.board([data], [], {}, NOW)

        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", html)
        assert "a\ufffdb\ufffd[31mc\ufffdd\ufffdevil\ufffde\ufffdf" in html

    def test_the_board_escapes_titles_and_acknowledgers(self) -> None:
        """The board shows an incident's title and who acknowledged as text."""
        html = render.board([incident_json()], [], {}, NOW)

        assert "<script" not in html
        assert html.count("&lt;script&gt;") == 2

    def test_only_http_urls_become_links(self, config: Config) -> None:
        """A javascript: generatorURL is not linked; an http one is, with its quotes escaped."""
        hrefs = tags(render_incident(config, incident_json())).hrefs

        assert not any(h.lower().startswith("javascript") for h in hrefs)
        assert "http://prometheus.example/graph?g0.expr=a%3Cb&x=\"y\"" in hrefs
        assert "http://alertmanager.example:9093" in hrefs

    def test_whole_page_has_one_script_from_the_daemon(self) -> None:
        """The document loads only its own script and stylesheet."""
        page = render.document(f"t {EVIL}", "<p>x</p>", current=render.BOARD, live="/?x=1")

        assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>']
        assert "<title>t &lt;script&gt;" in page


class TestBlastRadius:
    def test_states_of_failing_root_down_degraded_and_context(self, config: Config) -> None:
        """The root cause, failing, down and degraded services and healthy dependencies of the
        root cause are all drawn, each in its state."""
        picture = blast_radius(config.graph, ["postgres-payments", "payments", "kafka"])
        states = {n.name: n.state for n in picture.nodes}

        assert states["postgres-payments"] == ROOT
        assert states["kafka"] == ROOT
        assert states["payments"] == FAILING
        assert states["checkout"] == DOWN
        assert states["orders"] == DEGRADED
        assert states["volume-storage"] == HEALTHY
        assert set(picture.roots) == {"postgres-payments", "kafka"}

    def test_columns_run_from_root_cause_to_dependents(self, config: Config) -> None:
        """A service is drawn right of everything it depends on."""
        picture = blast_radius(config.graph, ["postgres-payments", "payments"])
        x = {n.name: n.x for n in picture.nodes}

        assert x["volume-storage"] < x["postgres-payments"] < x["payments"] < x["checkout"]

    def test_each_state_has_its_own_colour_and_shape(self, config: Config) -> None:
        """Octagon (doubled for a root cause), hatched box, dotted dashed pill and a thin box:
        the state reads without colour, and the word is written too."""
        picture = blast_radius(config.graph, ["postgres-payments", "payments", "kafka"])
        root = ET.fromstring(svg(picture, "Blast radius"))
        groups = {g.get("data-service"): g for g in root.iter(f"{SVG_NS}g")
                  if g.get("data-service")}

        def shapes(name: str) -> list[ET.Element]:
            return [e for e in groups[name] if e.tag in (f"{SVG_NS}polygon", f"{SVG_NS}rect",
                                                         f"{SVG_NS}circle")]

        def text(name: str) -> str:
            return " ".join(t.text or "" for t in groups[name].iter(f"{SVG_NS}text"))

        root_shapes = shapes("postgres-payments")
        assert [e.tag for e in root_shapes[:2]] == [f"{SVG_NS}polygon"] * 2
        assert root_shapes[0].get("fill") == STYLE[ROOT][0]
        assert "ROOT CAUSE" in text("postgres-payments")
        failing = shapes("payments")
        assert failing[0].tag == f"{SVG_NS}polygon"
        assert failing[1].get("fill") == "#ffffff"  # the badge, not a second outline
        assert failing[0].get("fill") == STYLE[FAILING][0]
        down = shapes("checkout")
        assert down[0].tag == f"{SVG_NS}rect"
        assert down[0].get("rx") is None
        assert down[0].get("fill") == STYLE[DOWN][0]
        assert down[1].get("fill") == "url(#fh-hatch)"
        assert "DOWN" in text("checkout")
        degraded = shapes("orders")
        assert degraded[0].get("rx") == str(64 // 2)
        assert degraded[0].get("stroke-dasharray")
        assert degraded[1].get("fill") == "url(#fh-dots)"
        assert "DEGRADED" in text("orders")
        assert shapes("volume-storage")[0].get("fill") == STYLE[HEALTHY][0]
        fills = {STYLE[s][0] for s in (ROOT, FAILING, DOWN, DEGRADED, HEALTHY)}
        assert len(fills) == 5

    def test_edges_carrying_the_failure_are_highlighted(self, config: Config) -> None:
        """The edges along the chain from the root cause to each impacted service are drawn
        as carrying the failure; the healthy context's edges are plain."""
        picture = blast_radius(config.graph, ["postgres-payments", "payments"])
        root = ET.fromstring(svg(picture, "Blast radius"))
        edges = {(p.get("data-from"), p.get("data-to")): p.get("class") or ""
                 for p in root.iter(f"{SVG_NS}path") if p.get("data-from")}

        assert "edge-carry" in edges[("postgres-payments", "payments")].split()
        assert "edge-carry" in edges[("payments", "checkout")].split()
        assert "edge-plain" in edges[("volume-storage", "postgres-payments")].split()

    def test_large_impacts_are_capped_and_say_so(self, config: Config) -> None:
        """Failing core network: everything is impacted; the picture stays bounded."""
        picture = blast_radius(config.graph, ["core-network"])

        assert 1 < len(picture.nodes) <= 1 + 40 + 8
        assert picture.hidden >= 0
        assert picture.roots == ("core-network",)

    def test_more_impacted_services_than_reasons_say_how_many_more(
        self, config: Config
    ) -> None:
        """The page lists the incident's top reasons and says how many impacted services
        it leaves out, and where to see them all."""
        data = incident_json()
        data["impact"] = {**data["impact"], "impacted_total": 26,
                          "failing": ["postgres-payments", "payments"],
                          "why": [f"s{n} is down because payments is failing"
                                  for n in range(5)]}
        html = render_incident(config, data)

        assert "and 21 more impacted service(s)" in html
        assert "firehouse impact postgres-payments payments --format json" in html
        assert 'href="/api/v1/incidents/abc123"' in html

    def test_unknown_services_draw_nothing(self, config: Config) -> None:
        """An incident on services no map knows has no picture."""
        picture = blast_radius(config.graph, ["not-a-service"])

        assert picture.nodes == ()
        html = render.incident(incident_json(services=["not-a-service"], mapped=False),
                               picture, [], NOW, NOW)
        assert "No dependency map knows not-a-service" in html


class TestBoard:
    def test_most_severe_first_with_facts(self) -> None:
        """Open incidents are ordered by severity; each shows its business services, clock,
        deadline, root cause and who acknowledged."""
        warning = incident_json(id="w", severity="warning")
        critical = incident_json(id="c")
        html = render.board([warning, critical], [], {}, NOW)

        assert html.index('data-incident="c"') < html.index('data-incident="w"')
        assert "online-checkout" in html
        assert 'data-since="' in html
        assert "acknowledge by" in html
        assert 'data-until="' in html
        assert "postgres-payments" in html
        assert "✔ acknowledged" in html
        assert "✖ not acknowledged" in html
        assert "1 of 2 targets acknowledged" in html
        assert 'data-title="(2) CRITICAL — Firehouse"' in html

    def test_resolved_are_listed_below(self) -> None:
        """Resolved incidents appear in their own table, with how long they lasted."""
        done = incident_json(id="r", status="resolved", phase="resolved",
                             resolved_at=NOW.isoformat())
        html = render.board([], [done], {}, NOW)

        assert "No open incidents." in html
        assert 'id="resolved-h"' in html
        assert 'data-incident="r"' in html
        assert "7m 00s" in html  # from its earliest alert's start, three minutes before it opened

    def test_missed_deadline_says_escalated(self) -> None:
        """A fired acknowledgement deadline is written out with whom it escalated to."""
        data = incident_json()
        data["clock"] = {**data["clock"], "fired": ["ack"]}
        html = render.board([data], [], {}, NOW)

        assert "ack deadline missed; escalated to senior management" in html
        assert "resolve by" in html


class TestDelivery:
    """A page PagerDuty refused, or that still waits to be sent, never reads as merely
    unacknowledged."""

    @staticmethod
    def with_delivery(delivery: dict[str, Any] | None) -> dict[str, Any]:
        data = incident_json()
        data["pages"][1] = {**data["pages"][1], "delivery": delivery}
        return data

    def test_a_dead_letter_says_not_delivered_with_the_reason(self, config: Config) -> None:
        """The board and the incident page say "not delivered" with PagerDuty's reason and
        how to send it again."""
        data = self.with_delivery({"state": "dead", "event_id": 7, "attempts": 1,
                                   "last_error": f"client_error: Invalid {EVIL}",
                                   "last_status": 400})

        for html in (render.board([data], [], {}, NOW), render_incident(config, data)):
            assert (f"✖ not delivered: client_error: Invalid {escape(EVIL)} (HTTP 400)"
                    in html)
            assert "POST /api/v1/outbox/7/retry" in html
            assert "✖ not acknowledged" not in html
            assert "<script" not in html
        assert "1 not delivered" in render.board([data], [], {}, NOW)

    @pytest.mark.parametrize(("delivery", "text"), [
        ({"state": "pending", "event_id": 7, "attempts": 0}, "… waiting to be sent</span>"),
        ({"state": "pending", "event_id": 7, "attempts": 3, "last_status": 503,
          "last_error": "server_error: busy"},
         "… waiting to be sent (retrying)</span> <small>server_error: busy (HTTP 503)"),
    ])
    def test_a_page_still_in_the_outbox_is_waiting(self, delivery: dict[str, Any],
                                                   text: str) -> None:
        """A pending page reads "waiting to be sent", "(retrying)" after a failed try."""
        html = render.board([self.with_delivery(delivery)], [], {}, NOW)

        assert text in html
        assert "✖ not acknowledged" not in html

    @pytest.mark.parametrize("delivery", [
        None, {"state": "delivered", "event_id": 7, "attempts": 1}])
    def test_a_delivered_page_is_not_acknowledged_yet(self, delivery: dict[str, Any] | None
                                                      ) -> None:
        """Delivered (or cleaned up from the outbox), a triggered page is unacknowledged."""
        html = render.board([self.with_delivery(delivery)], [], {}, NOW)

        assert "✖ not acknowledged" in html
        assert "not delivered" not in html
        assert "waiting to be sent" not in html


class TestUndeliveredResolve:
    """An incident resolved here whose resolve PagerDuty refused, or has not been sent yet,
    is still open in PagerDuty: the board's "Recently resolved" and the incident page say
    so as loudly as they say it of a page's trigger."""

    @staticmethod
    def resolved_with(delivery: dict[str, Any] | None) -> dict[str, Any]:
        data = incident_json(id="r", status="resolved", phase="resolved",
                             resolved_at=NOW.isoformat())
        data["pages"] = [{**page, "status": "resolved", "delivery": {
            "action": "resolve", "state": "delivered", "event_id": 3, "attempts": 1}}
            for page in data["pages"]]
        data["pages"][1] = {**data["pages"][1], "delivery": delivery}
        return data

    def test_a_refused_resolve_says_not_delivered_and_still_open(self, config: Config
                                                                 ) -> None:
        data = self.resolved_with({"action": "resolve", "state": "dead", "event_id": 8,
                                   "attempts": 1, "last_status": 400,
                                   "last_error": f"client_error: Invalid {EVIL}"})

        board = render.board([], [data], {}, NOW)
        page = render_incident(config, data)

        row = re.search(r'<tr data-incident="r"[^>]*>.*?</tr>', board, re.S)
        assert row is not None
        assert 'class="undelivered"' in row.group(0)
        for html in (row.group(0), page):
            assert (f"✖ resolve not delivered: client_error: Invalid {escape(EVIL)} (HTTP 400)"
                    in html)
            assert "still open in PagerDuty" in html
            assert "POST /api/v1/outbox/8/retry" in html
            assert "command-center" in html
            assert "<script" not in html
        assert "<dt>PagerDuty</dt>" in page

    @pytest.mark.parametrize(("delivery", "text"), [
        ({"action": "resolve", "state": "pending", "event_id": 8, "attempts": 0},
         "… resolve waiting to be sent</span>"),
        ({"action": "resolve", "state": "pending", "event_id": 8, "attempts": 2,
          "last_status": 503, "last_error": "server_error: busy"},
         "… resolve waiting to be sent (retrying)</span> <small>still open in PagerDuty; "
         "server_error: busy (HTTP 503)"),
        ({"action": "trigger", "state": "pending", "event_id": 7, "attempts": 2,
          "last_status": 503, "last_error": "server_error: busy"},
         "… waiting to be sent (retrying)</span> <small>server_error: busy (HTTP 503)"),
    ])
    def test_a_resolve_still_in_the_outbox_is_waiting(self, config: Config,
                                                      delivery: dict[str, Any], text: str
                                                      ) -> None:
        data = self.resolved_with(delivery)

        for html in (render.board([], [data], {}, NOW), render_incident(config, data)):
            assert text in html

    @pytest.mark.parametrize("delivery", [
        None, {"action": "resolve", "state": "delivered", "event_id": 8, "attempts": 1}])
    def test_a_delivered_resolve_shows_nothing_more(self, config: Config,
                                                    delivery: dict[str, Any] | None) -> None:
        data = self.resolved_with(delivery)

        board = render.board([], [data], {}, NOW)
        page = render_incident(config, data)

        assert "undelivered" not in board
        assert "<dt>PagerDuty</dt>" not in page
        for html in (board, page):
            assert "not delivered" not in html
            assert "waiting to be sent" not in html

    def test_an_open_incident_keeps_a_resolved_page_whose_resolve_is_refused(self) -> None:
        """A page Firehouse resolved while the incident goes on (a superseded business
        update) leaves the card once PagerDuty has the resolve, not before."""
        dead = {"action": "resolve", "state": "dead", "event_id": 9, "attempts": 1,
                "last_error": "client_error: refused"}
        pages = [page_json("biz", ["business_line"], 3, status="resolved", delivery=dead),
                 page_json("biz", ["business_line"], 1),
                 page_json("ops", ["incident_lead"], 3, status="resolved", delivery={
                     "action": "resolve", "state": "delivered", "event_id": 4, "attempts": 1}),
                 page_json("ops", ["incident_lead"], 1, status="acknowledged")]
        html = render.board([incident_json(pages=pages)], [], {}, NOW)

        biz = next(v for v in TestBoardPages.board_pages(html) if "<small>biz</small>" in v)
        assert "✖ not acknowledged" in biz
        assert "✖ resolve not delivered: client_error: refused" in biz
        assert "1 of 2 targets acknowledged" in html
        assert "1 not delivered" in html
        assert html.count("resolve not delivered") == 1


class TestBusiness:
    def test_plain_words_only(self) -> None:
        """The business view shows the sentence it is given and the business services."""
        status = render.BusinessStatus("critical", ("online-checkout",),
                                       "Possible disruption of online-checkout.", NOW)
        html = render.business([status], [], NOW)

        assert "online-checkout" in html
        assert "Possible disruption" in html
        assert "All business services are working normally." not in html

    def test_all_clear(self) -> None:
        """With nothing open, the business view says all is well."""
        assert "All business services are working normally." in render.business([], [], NOW)

    def test_only_technical_incidents_are_not_called_normal(self) -> None:
        """With only technical incidents open, the view says no business service is known
        to be affected, not that all work normally above the incident's card."""
        status = render.BusinessStatus("warning", (), "A technical incident.", NOW)
        html = render.business([status], [], NOW)

        assert "All business services are working normally." not in html
        assert "No business service is known to be affected" in html
        assert "Technical incident" in html


class TestWording:
    @pytest.mark.parametrize(("seconds", "clock", "span"), [
        (5, "0:00:05", "5s"), (192, "0:03:12", "3m 12s"), (3909, "1:05:09", "1h 05m"),
        (2 * 86400 + 3 * 3600, "2d 3:00:00", "2d 3h")])
    def test_durations(self, seconds: int, clock: str, span: str) -> None:
        """Stopwatch and short durations read as app.js writes them."""
        assert render.elapsed(timedelta(seconds=seconds)) == clock
        assert render._span(timedelta(seconds=seconds)) == span

    def test_next_deadline_skips_acknowledged_and_fired(self) -> None:
        """An acknowledged incident's next deadline is its resolve-by."""
        data = incident_json()
        data["clock"] = {**data["clock"], "acknowledged_at": NOW.isoformat()}
        found = render.next_deadline(data)

        assert found is not None
        assert found[0] == "resolve"


def page_json(target: str, roles: list[str], minutes_ago: int, **changes: Any) -> dict[str, Any]:
    """A page as the API lists it, `minutes_ago` before NOW."""
    page: dict[str, Any] = {
        "target": target, "roles": roles, "dedup_key": f"{target}-{minutes_ago}",
        "severity": "error", "status": "triggered", "reason": "opened",
        "at": (NOW - timedelta(minutes=minutes_ago)).isoformat(), "acknowledged_by": "",
        "delivery": None}
    page.update(changes)
    return page


class TestBoardPages:
    """After merges, severity rises and missed deadlines an incident holds several pages
    per target: the board shows one line per target and counts targets."""

    @staticmethod
    def board_pages(html: str) -> list[str]:
        return re.findall(r'<li class="page [^"]*">(.*?)</li>', html)

    def test_one_line_per_target_acknowledged_by_any_page(self, config: Config) -> None:
        """An ack of the older page acknowledges the target; the incident page keeps
        every page."""
        pages = [
            page_json("dba-oncall", ["technical_lead"], 4, status="acknowledged",
                      acknowledged_by="Ann"),
            page_json("dba-oncall", ["technical_lead"], 1, severity="critical",
                      reason="severity rose"),
            page_json("execs", ["senior_management"], 4, reason="summary"),
            page_json("execs", ["senior_management"], 3, reason="ack deadline missed"),
            page_json("execs", ["senior_management"], 2, reason="resolve deadline missed",
                      status="resolved in PagerDuty", acknowledged_by="Bob"),
            page_json("command-center", ["incident_lead"], 4),
        ]
        data = incident_json(pages=pages)
        html = render.board([data], [], {}, NOW)

        lines = self.board_pages(html)
        assert len(lines) == 3
        assert "2 of 3 targets acknowledged" in html
        dba = next(line for line in lines if "dba-oncall" in line)
        assert "✔ acknowledged" in dba
        assert "by Ann" in dba
        assert "CRITICAL" in dba  # the newest page's severity
        assert "(2 pages)" in dba
        execs = next(line for line in lines if "execs" in line)
        assert "✔ resolved in PagerDuty" in execs
        assert "(3 pages)" in execs
        lead = next(line for line in lines if "command-center" in line)
        assert "✖ not acknowledged" in lead

        full = render_incident(config, data)
        assert full.count('<tr class="page ') == 6
        assert "severity rose" in full

    def test_separate_role_sets_are_separate_lines(self) -> None:
        pages = [page_json("ops", ["technical_lead"], 2),
                 page_json("ops", ["incident_lead"], 1)]
        html = render.board([incident_json(pages=pages)], [], {}, NOW)

        assert len(self.board_pages(html)) == 2
        assert "0 of 2 targets acknowledged" in html

    def test_newest_dead_or_pending_page_decides(self) -> None:
        """Unacknowledged, a target reads as its newest page: not delivered, waiting or
        not acknowledged; an older dead page does not count once a newer one went out."""
        dead = {"state": "dead", "event_id": 9, "attempts": 1, "last_error": "refused"}
        pending = {"state": "pending", "event_id": 10, "attempts": 0}
        pages = [
            page_json("a", ["technical_lead"], 3),
            page_json("a", ["technical_lead"], 1, delivery=dead),
            page_json("b", ["incident_lead"], 3),
            page_json("b", ["incident_lead"], 1, delivery=pending),
            page_json("c", ["service_lead"], 3, delivery=dead),
            page_json("c", ["service_lead"], 1),
        ]
        html = render.board([incident_json(pages=pages)], [], {}, NOW)

        assert "0 of 3 targets acknowledged" in html
        assert "1 not delivered" in html
        a, b, c = (next(v for v in self.board_pages(html) if f"<small>{t}</small>" in v)
                   for t in "abc")
        assert "✖ not delivered" in a
        assert "waiting to be sent" in b
        assert "✖ not acknowledged" in c
        assert "not delivered" not in c

    def test_a_single_target_says_target(self) -> None:
        pages = [page_json("a", ["technical_lead"], 1, status="acknowledged")]
        html = render.board([incident_json(pages=pages)], [], {}, NOW)

        assert "1 of 1 target acknowledged" in html


class TestWideOutage:
    def test_the_board_shows_the_most_severe_and_counts_the_rest(self) -> None:
        """Hundreds of incidents: the first BOARD_CARDS cards by severity, then a count
        and a link to the API for the others."""
        extra = 7
        many = [incident_json(id=f"w{k:04d}", severity="warning")
                for k in range(render.BOARD_CARDS + extra)]
        many.append(incident_json(id="crit", severity="critical"))
        html = render.board(many, [], {}, NOW)

        assert html.count('<article class="incident') == render.BOARD_CARDS
        assert 'data-incident="crit"' in html
        assert f'<span class="count">{len(many)}</span>' in html
        assert f"and {extra + 1} more open incidents" in html
        assert "/api/v1/incidents?status=open&limit=1000" in tags(html).hrefs


class TestMerged:
    @staticmethod
    def merged() -> dict[str, Any]:
        return incident_json(id="old1", status="merged", phase="merged",
                             merged_into="keep2", resolved_at=NOW.isoformat())

    def test_incident_page_says_merged_into_with_a_link(self, config: Config) -> None:
        html = render_incident(config, self.merged())

        assert 'Merged into incident <a href="/incidents/keep2">keep2</a>' in html
        assert "Lasted" not in html
        assert "<dt>Resolved</dt>" not in html
        assert "/incidents/keep2" in tags(html).hrefs

    def test_a_merged_incidents_pages_say_where_they_went(self, config: Config) -> None:
        """A merged incident hands its pages to the one it joined: its page says so rather
        than "nobody was paged"."""
        html = render_incident(config, {**self.merged(), "pages": []})

        assert "Nobody was paged" not in html
        assert 'Its pages moved to incident <a href="/incidents/keep2">keep2</a>' in html

    def test_merged_into_is_escaped(self, config: Config) -> None:
        html = render_incident(config, {**self.merged(), "merged_into": EVIL})

        assert "<script" not in html

    def test_board_recent_list_says_merged(self) -> None:
        html = render.board([], [self.merged()], {}, NOW)

        assert 'merged into <a href="/incidents/keep2">keep2</a>' in html
        assert "4m 00s" not in html  # no "lasted" for a merged incident

    def test_the_board_and_the_incident_page_agree_on_how_long_it_lasted(
        self, config: Config
    ) -> None:
        """Both count from when the fire started (its earliest alert, kept as `started`),
        not from when Firehouse opened the incident; the board's list has no alerts."""
        done = incident_json(status="resolved", phase="resolved", resolved_at=NOW.isoformat())
        done["started"] = (NOW - timedelta(minutes=7)).isoformat()  # the alert's start
        listed = {k: v for k, v in done.items() if k != "alerts"}

        page = render_incident(config, done)
        board = render.board([], [listed], {}, NOW)

        assert "<dt>Lasted</dt><dd>7m 00s" in page
        assert "<td>7m 00s</td>" in board
        assert "4m 00s" not in board  # since it opened: four minutes

    def test_a_resolved_incident_still_says_lasted(self, config: Config) -> None:
        done = incident_json(status="resolved", phase="resolved", resolved_at=NOW.isoformat())
        html = render_incident(config, done)

        assert "Lasted" in html
        assert "Merged into" not in html


class _Nesting(HTMLParser):
    """Fails on a `<time>` inside a `<time>`."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.nested = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "time":
            self.nested |= self.depth > 0
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "time":
            self.depth -= 1


def test_no_time_inside_a_time(config: Config) -> None:
    """The timeline and rollback candidates hold one `<time>` each, not one in another."""
    rollback = [{"at": NOW.isoformat(), "service": "postgres-payments",
                 "relation": "root cause", "summary": "deploy", "links": []}]
    data = incident_json()
    html = render.incident(data, blast_radius(config.graph, data["services"]), rollback,
                           render.started_at(data), NOW)
    html += render.board([data], [incident_json(id="r", status="resolved",
                                                resolved_at=NOW.isoformat())], {}, NOW)
    parser = _Nesting()
    parser.feed(html)

    assert html.count("<time") == html.count("</time>") > 0
    assert not parser.nested
    assert parser.depth == 0


def firing(name: str, service: str, severity: str = "error") -> dict[str, Any]:
    """A firing alert on a service of the example map."""
    return alert({"alertname": name, "service": service, "severity": severity})


async def engine_incident(store: Store, config: Config, *notifications: list[dict[str, Any]]
                          ) -> dict[str, Any]:
    """The API's JSON of the incident the first notification opened, after the engine
    decided every notification (a minute apart) and the store kept each decision."""
    state = State()
    ident = ""
    for minute, alerts in enumerate(notifications):
        decision = decide(webhook(*alerts), config, state, NOW + timedelta(minutes=minute))
        await store.commit(decision)
        state = apply(state, decision)
        ident = ident or decision.incidents[0].id
    data = await store.get_incident(ident)
    assert data is not None
    return data


def node_states(html: str) -> dict[str, str]:
    """Each service drawn in a page's blast-radius picture, with its state."""
    return dict(re.findall(r'<g class="node [^"]*" data-service="([^"]+)" '
                           r'data-state="([^"]+)"', html))


def roots_list(html: str) -> str:
    found = re.search(r'<dt>Probable root cause</dt><dd><ul class="roots">(.*?)</ul>', html)
    assert found is not None
    return found.group(1)


class TestRecovered:
    """An incident's impact is assessed again only when an alert joins or fires (or a merge):
    a service whose alerts all resolved since is shown recovered, never failing, and a
    service the impact no longer counts is not drawn failing."""

    async def test_a_service_resolved_before_a_join_is_not_drawn_failing(
        self, store: Store, config: Config
    ) -> None:
        """catalog resolves, then storefront joins: the picture draws failing what the API's
        impact says fails, not every service that ever failed in the incident."""
        catalog = firing("CatalogSlow", "catalog")
        data = await engine_incident(store, config, [catalog], [firing("CartErrors", "cart")],
                                     [resolved(catalog)],
                                     [firing("StorefrontErrors", "storefront", "critical")])
        html = render_incident(config, data)

        assert "catalog" in data["services"]
        assert sorted(data["impact"]["failing"]) == ["cart", "storefront"]
        drawn = node_states(html)
        assert {n for n, s in drawn.items() if s in (ROOT, FAILING)} == {"cart", "storefront"}
        assert drawn.get("catalog") in (None, HEALTHY, DOWN, DEGRADED)
        assert "catalog: failing" not in html
        assert re.search(r"<dt>Recovered</dt><dd>.*<b>catalog</b>.*</dd>", html)

    async def test_a_recovered_root_cause_is_drawn_and_listed_recovered(
        self, store: Store, config: Config
    ) -> None:
        """postgres-catalog, the root cause, resolves while catalog fails: no alert joined,
        so the API keeps it as root cause; the page marks it recovered, draws it as a
        recovered root cause (green, ticked, the word written), and says what still fails
        and that what it took down is as last assessed."""
        database = firing("PostgresDown", "postgres-catalog", "critical")
        data = await engine_incident(store, config, [database],
                                     [firing("CatalogSlow", "catalog")], [resolved(database)])
        html = render_incident(config, data)

        assert data["phase"] == "open"
        assert data["root_causes"][0]["services"] == ["postgres-catalog"]
        drawn = node_states(html)
        assert drawn["postgres-catalog"] == ROOT_RECOVERED
        assert drawn["catalog"] == FAILING
        assert drawn["storefront"] == DOWN  # as last assessed, and the page says so
        roots = roots_list(html)
        assert ('<li class="cause-recovered"><b>postgres-catalog</b> '
                '<span class="recovered-mark">✔ recovered</span> <small>at <time') in roots
        assert "takes down" not in roots
        assert '<li class="still-failing"><small>still failing:</small> <b>catalog</b>' in roots
        assert "Recovered since the impact was last assessed" in html
        assert "postgres-catalog (recovered)" in html  # the picture's description
        assert "root cause, recovered: green double octagon, ticked" in html

        node = self.node(config, data, "postgres-catalog")
        polygons = [e for e in node if e.tag == f"{SVG_NS}polygon"]
        assert polygons[0].get("fill") == STYLE[ROOT_RECOVERED][0]
        assert polygons[1].get("fill") == "none"  # the double outline of a root cause
        assert [e.tag for e in node].count(f"{SVG_NS}polyline") == 1  # the tick
        assert "RECOVERED ROOT" in " ".join(t.text or "" for t in node.iter(f"{SVG_NS}text"))
        assert "root cause, recovered" in (node.findtext(f"{SVG_NS}title") or "")

    async def test_a_recovered_failing_service_is_drawn_recovered(
        self, store: Store, config: Config
    ) -> None:
        """auth resolves while postgres-users, its root cause, still fails: auth is drawn
        recovered in its place; the root cause stays a root cause, nothing "still failing"
        is added."""
        auth = firing("AuthErrors", "auth")
        data = await engine_incident(store, config,
                                     [firing("PostgresDown", "postgres-users", "critical")],
                                     [auth], [resolved(auth)])
        html = render_incident(config, data)

        drawn = node_states(html)
        assert drawn["auth"] == RECOVERED
        assert drawn["postgres-users"] == ROOT
        assert "recovered" not in roots_list(html)
        assert "still failing" not in html
        node = self.node(config, data, "auth")
        outline = node.find(f"{SVG_NS}polygon")  # an octagon, as when it failed
        assert outline is not None
        assert outline.get("fill") == STYLE[RECOVERED][0]
        assert "RECOVERED" in " ".join(t.text or "" for t in node.iter(f"{SVG_NS}text"))
        assert len({STYLE[s][0] for s in STYLE}) == len(STYLE)

    async def test_all_alerts_resolved_while_damping_everything_is_recovered(
        self, store: Store, config: Config
    ) -> None:
        """Every alert resolved, the incident waits out flap damping: each root cause reads
        recovered, and nothing is said to be still failing."""
        database = firing("PostgresDown", "postgres-catalog", "critical")
        catalog = firing("CatalogSlow", "catalog")
        data = await engine_incident(store, config, [database, catalog],
                                     [resolved(database), resolved(catalog)])
        html = render_incident(config, data)

        assert data["phase"] == "resolving"
        drawn = node_states(html)
        assert (drawn["postgres-catalog"], drawn["catalog"]) == (ROOT_RECOVERED, RECOVERED)
        assert "✔ recovered" in roots_list(html)
        assert "still failing" not in html

    async def test_a_resolved_incident_is_drawn_as_last_assessed(
        self, store: Store, config: Config
    ) -> None:
        """Once resolved, the page shows the fire as it was, with no "recovered" marks: the
        whole incident says it is over."""
        database = firing("PostgresDown", "postgres-catalog", "critical")
        catalog = firing("CatalogSlow", "catalog")
        data = await engine_incident(store, undamped(config), [database, catalog],
                                     [resolved(database), resolved(catalog)])
        html = render_incident(config, data)

        assert data["status"] == "resolved"
        drawn = node_states(html)
        assert (drawn["postgres-catalog"], drawn["catalog"]) == (ROOT, FAILING)
        assert "recovered" not in roots_list(html)
        assert "<dt>Recovered</dt>" not in html

    async def test_the_board_marks_a_recovered_root_cause(self, store: Store, config: Config
                                                          ) -> None:
        """The board's card (whose list has no alerts) marks the root cause recovered from
        what the server found in the incident's alerts, and says what still fails."""
        database = firing("PostgresDown", "postgres-catalog", "critical")
        data = await engine_incident(store, config, [database],
                                     [firing("CatalogSlow", "catalog")], [resolved(database)])
        listed = {k: v for k, v in data.items() if k != "alerts"}

        before = render.board([listed], [], {}, NOW)
        html = render.board([listed], [], {}, NOW, {data["id"]: render.recovered_of(data)})

        assert "recovered" not in before
        assert "<b>postgres-catalog</b> <span class=\"recovered-mark\">✔ recovered" in html
        assert "still failing:</small> <b>catalog</b>" in html

    def test_a_cycle_root_cause_says_which_of_it_recovered(self) -> None:
        """A root cause of several services (a cycle) is recovered once all of them are;
        before, the list says which did."""
        data = incident_json(root_causes=[{"services": ["a", "b"], "takes_down": 3}])
        data["alerts"] = [
            {**data["alerts"][1], "fingerprint": "fa", "service": "a", "status": "resolved",
             "ends_at": NOW.isoformat()},
            {**data["alerts"][1], "fingerprint": "fb", "service": "b"}]
        partly = render.incident(data, None, [], NOW, NOW)
        data["alerts"][1] = {**data["alerts"][1], "status": "resolved"}
        whole = render.incident(data, None, [], NOW, NOW)

        assert "<b>a &lt;-&gt; b</b> <small>(a recovered)</small> <small>takes down 3" in partly
        assert "<b>a &lt;-&gt; b</b> <span class=\"recovered-mark\">✔ recovered" in whole

    def test_recovered_services_need_every_alert_resolved(self) -> None:
        """A service is recovered when none of its alerts fires, as of its latest end."""
        early, late = NOW - timedelta(minutes=5), NOW - timedelta(minutes=1)
        found = render.recovered_services([
            ("db", "resolved", early), ("db", "resolved", late), ("db", "resolved", None),
            ("api", "resolved", late), ("api", "firing", None), (None, "resolved", late)])

        assert found == {"db": late}

    @staticmethod
    def node(config: Config, data: dict[str, Any], service: str) -> ET.Element:
        picture = render.incident_picture(config.graph, data)
        assert picture is not None
        root = ET.fromstring(svg(picture, "Blast radius"))
        return next(g for g in root.iter(f"{SVG_NS}g") if g.get("data-service") == service)
