"""Changes and rollback candidates: parsing, the pure step that records a change, the store,
the HTTP routes, and a real Firehouse sending the Change Event to the PagerDuty stand-in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.app import Firehouse
from daemon.changes import (
    change_json,
    content_id,
    parse_change,
    record_change,
    rollback_candidates,
)
from daemon.config import Config, load_config
from daemon.decide import Change, Decision, State, apply, decide
from daemon.errors import PayloadError
from daemon.graph import ServiceGraph
from daemon.store import Store
from tests.conftest import FirehouseFactory, NewStore
from tests.helpers import NOW, SETTINGS, alert, config_env, make_config, routing_key, webhook
from tests.pagerduty_standin import CHANGE_PATH, PagerDutyStandIn, validate

DAY = 24 * 3600.0
HOUR = timedelta(hours=1)
TOKEN = "changes-test-token-5d1e"  # a test credential


def raw(**fields: Any) -> bytes:
    """A change body as a deploy pipeline posts it."""
    return json.dumps(fields).encode()


def parse(graph: ServiceGraph, **fields: Any) -> Change:
    """A change parsed as of NOW."""
    return parse_change(raw(**fields), graph, NOW)


def problem(graph: ServiceGraph, body: bytes) -> str:
    """The message of the PayloadError that parsing `body` must raise."""
    with pytest.raises(PayloadError) as caught:
        parse_change(body, graph, NOW)
    return str(caught.value)


def change(service: str, at: datetime, ident: str | None = None, summary: str = "deploy",
           **extra: Any) -> Change:
    """A parsed-looking change on a service of the example map."""
    return Change(id=ident or f"{service}@{at.isoformat()}", service=service, summary=summary,
                  at=at, received_at=at, **extra)


@pytest.fixture(scope="module")
def graph(config: Config) -> ServiceGraph:
    """The shipped example map (dependency_maps/example-shop.yaml)."""
    return config.graph


class TestParse:
    def test_minimal_change_takes_defaults(self, graph: ServiceGraph) -> None:
        """Service and summary suffice: the time is now and the id a hash of the content."""
        parsed = parse(graph, service="payments", summary="deploy payments 1.4.2")

        assert parsed == Change(
            id=parsed.id, service="payments", summary="deploy payments 1.4.2", at=NOW,
            received_at=NOW)
        assert parsed.id == content_id(parsed)
        assert len(parsed.id) == 32

    def test_every_field(self, graph: ServiceGraph) -> None:
        """Every field is kept; the timestamp is normalised to UTC."""
        parsed = parse(graph, service="payments", summary="deploy", who="ci@example.com",
                       version="1.4.2", id="build-220", timestamp="2024-05-01T13:30:00+02:00",
                       links=[{"href": "https://ci.example.com/220", "text": "build 220"},
                              {"href": "http://git.example.com/c/abc"}])

        assert parsed == Change(
            id="build-220", service="payments", summary="deploy",
            at=datetime(2024, 5, 1, 11, 30, tzinfo=UTC), who="ci@example.com",
            version="1.4.2", received_at=NOW,
            links=(("https://ci.example.com/220", "build 220"),
                   ("http://git.example.com/c/abc", "")))

    def test_alias_resolves_to_the_map_name(self, graph: ServiceGraph) -> None:
        """A service named by an alias (as alerts' job labels do) is stored under its name."""
        assert parse(graph, service="postgres-exporter-payments",
                     summary="vacuum settings").service == "postgres-payments"

    def test_unknown_service_suggests_the_closest_name(self, graph: ServiceGraph) -> None:
        """A misspelt service is refused with the name it probably meant."""
        assert problem(graph, raw(service="paymnets", summary="x")) == (
            "field 'service' names no service of the dependency maps: 'paymnets'; "
            "did you mean 'payments'?")

    def test_unknown_service_without_anything_close(self, graph: ServiceGraph) -> None:
        """A service like nothing in the map is refused without a guess."""
        assert problem(graph, raw(service="zzzzzzzz", summary="x")) == (
            "field 'service' names no service of the dependency maps: 'zzzzzzzz'")

    def test_a_retry_of_the_same_post_has_the_same_id(self, graph: ServiceGraph) -> None:
        """Without an id, the same content at the same time is the same change, and another
        time is another change."""
        at = "2024-05-01T11:00:00Z"
        one = parse(graph, service="payments", summary="deploy", timestamp=at)
        again = parse_change(raw(service="payments", summary="deploy", timestamp=at), graph,
                             NOW + HOUR)
        later = parse(graph, service="payments", summary="deploy",
                      timestamp="2024-05-01T11:05:00Z")

        assert one.id == again.id
        assert later.id != one.id

    def test_a_little_clock_skew_is_accepted(self, graph: ServiceGraph) -> None:
        """A timestamp up to 5 minutes ahead of Firehouse's clock is taken as given."""
        ahead = NOW + timedelta(minutes=4, seconds=59)
        assert parse(graph, service="payments", summary="x",
                     timestamp=ahead.isoformat()).at == ahead

    @pytest.mark.parametrize(("fields", "message"), [
        ({"summary": "x"}, "field 'service' is missing"),
        ({"service": 7, "summary": "x"}, "field 'service' must be a string, got int"),
        ({"service": "payments"}, "field 'summary' is missing"),
        ({"service": "payments", "summary": " \n"}, "field 'summary' must not be empty"),
        ({"service": "payments", "summary": "x" * 1025},
         "field 'summary' is longer than 1024 characters (got 1025)"),
        ({"service": "payments", "summary": ["x"]},
         "field 'summary' must be a string, got list"),
        ({"service": "payments", "summary": "x", "timestamp": 1714564800},
         "field 'timestamp' must be an RFC 3339 string, got int"),
        ({"service": "payments", "summary": "x", "timestamp": "yesterday"},
         "field 'timestamp' is not an RFC 3339 time with an offset (e.g. 2024-05-01T12:00:00Z):"
         " 'yesterday'"),
        ({"service": "payments", "summary": "x", "timestamp": "2024-05-01T12:00:00"},
         "field 'timestamp' is not an RFC 3339 time with an offset (e.g. 2024-05-01T12:00:00Z):"
         " '2024-05-01T12:00:00'"),
        ({"service": "payments", "summary": "x", "timestamp": "2024-13-01T12:00:00Z"},
         "field 'timestamp' is not an RFC 3339 time with an offset (e.g. 2024-05-01T12:00:00Z):"
         " '2024-13-01T12:00:00Z'"),
        ({"service": "payments", "summary": "x", "timestamp": "2024-05-01T12:06:00Z"},
         "field 'timestamp' is more than 5 minutes in the future: '2024-05-01T12:06:00Z'"),
        ({"service": "payments", "summary": "x", "who": "w" * 257},
         "field 'who' is longer than 256 characters (got 257)"),
        ({"service": "payments", "summary": "x", "who": "ci\nbot"},
         "field 'who' must be one line without control characters: 'ci\\nbot'"),
        ({"service": "payments", "summary": "x", "version": 2},
         "field 'version' must be a string, got int"),
        ({"service": "payments", "summary": "x", "id": ""}, "field 'id' must not be empty"),
        ({"service": "payments", "summary": "x", "id": "i" * 129},
         "field 'id' is longer than 128 characters (got 129)"),
        ({"service": "payments", "summary": "x", "links": "https://ci.example.com"},
         "field 'links' must be a list of {href, text} objects, got str"),
        ({"service": "payments", "summary": "x", "links": ["https://ci.example.com"]},
         "field 'links[0]' must be an object with href and text, got str"),
        ({"service": "payments", "summary": "x", "links": [{"text": "ci"}]},
         "field 'links[0].href' is missing"),
        ({"service": "payments", "summary": "x", "links": [{"href": "ftp://ci.example.com"}]},
         "field 'links[0].href' must be an http:// or https:// URL: 'ftp://ci.example.com'"),
        ({"service": "payments", "summary": "x",
          "links": [{"href": "https://ci.example.com", "url": "x"}]},
         "field 'links[0].url' is unknown (known: href, text)"),
        ({"service": "payments", "summary": "x",
          "links": [{"href": "https://ci.example.com"}] * 21},
         "field 'links' has 21 links, more than 20"),
        ({"service": "payments", "summary": "x", "serivce": "payments"},
         "field 'serivce' is unknown; did you mean 'service'?"),
        ({"service": "payments", "summary": "x", "severity": "high"},
         "field 'severity' is unknown (known: service, summary, timestamp, who, version, "
         "links, id)"),
    ], ids=lambda v: v if isinstance(v, str) else None)
    def test_bad_field_is_named_with_its_value(self, graph: ServiceGraph,
                                               fields: dict[str, Any], message: str) -> None:
        """Each bad field is refused with a message naming it and, where useful, its value."""
        assert problem(graph, raw(**fields)) == message

    def test_every_problem_is_reported_at_once(self, graph: ServiceGraph) -> None:
        """A body with several problems names all of them in one error."""
        body = raw(service="paymnets", summary="", who=3, links=[{"href": "mailto:x"}],
                   colour="red")
        assert problem(graph, body) == (
            "field 'colour' is unknown (known: service, summary, timestamp, who, version, "
            "links, id); "
            "field 'service' names no service of the dependency maps: 'paymnets'; did you "
            "mean 'payments'?; "
            "field 'summary' must not be empty; "
            "field 'who' must be a string, got int; "
            "field 'links[0].href' must be an http:// or https:// URL: 'mailto:x'")

    @pytest.mark.parametrize(("body", "message"), [
        (b"{not json", "body is not valid JSON: Expecting property name enclosed in double "
                       "quotes: line 1 column 2 (char 1)"),
        (b"[]", "body must be a JSON object, got list"),
        (b'{"service": "payments", "summary": "\\ud800"}',
         "field 'summary' is not valid Unicode text (a lone surrogate): '\\ud800'"),
    ], ids=["not-json", "not-an-object", "lone-surrogate"])
    def test_unusable_body(self, graph: ServiceGraph, body: bytes, message: str) -> None:
        """A body that is no JSON object, or holds text no store can keep, is refused."""
        assert problem(graph, body) == message


class TestRecordChange:
    def test_sends_a_spec_valid_change_event_to_the_technical_lead(self, config: Config
                                                                    ) -> None:
        """The change becomes one Change Event on the technical lead's routing key, valid
        against PagerDuty's spec once the client adds the key."""
        posted = parse(config.graph, service="postgres-exporter-payments", summary="raise "
                       "max_connections to 400", who="dba-bot", version="pg-conf 12",
                       id="conf-12", links=[{"href": "https://git.example.com/c/12",
                                             "text": "diff"}, {"href": "https://ci/12"}])

        decision = record_change(posted, config, State(), NOW)

        assert decision.changes == (posted,)
        assert decision.now == NOW
        (event,) = decision.events
        assert (event.incident_id, event.target, event.action, event.dedup_key) == (
            "", "dba-oncall", "change", "change/conf-12")
        assert event.routing_key == routing_key("dba-oncall")
        assert dict(event.body) == {
            "payload": {
                "summary": "raise max_connections to 400",
                "timestamp": NOW.isoformat(),
                "source": "firehouse",
                "custom_details": {"service": "postgres-payments", "who": "dba-bot",
                                   "version": "pg-conf 12", "change_id": "conf-12"},
            },
            "links": [{"href": "https://git.example.com/c/12", "text": "diff"},
                      {"href": "https://ci/12"}],
        }
        assert "routing_key" not in event.body
        sent = {**event.body, "routing_key": event.routing_key}
        assert validate(CHANGE_PATH, sent) == []

    def test_dry_run_sends_no_routing_key(self) -> None:
        """In dry-run the event carries no routing key, so the outbox only logs it."""
        dry = make_config(dry_run=True)
        decision = record_change(parse(dry.graph, service="payments", summary="x"), dry,
                                 State(), NOW)
        assert [e.routing_key for e in decision.events] == [""]

    def test_notes_on_open_incidents_it_may_explain(self, config: Config) -> None:
        """Open incidents on the changed service or on a service depending on it get a
        timeline note; unrelated ones do not."""
        fire = decide(webhook(
            alert({"alertname": "PaymentsErrors", "service": "payments", "severity": "error"}),
            alert({"alertname": "SearchSlow", "service": "search", "severity": "warning"}),
        ), config, State(), NOW - HOUR)
        state = apply(State(), fire)
        by_service = {i.services[0]: i.id for i in state.open.values()}
        assert set(by_service) == {"payments", "search"}

        on_db = record_change(parse(config.graph, service="postgres-payments",
                                    summary="failover\nto replica", version="16.2",
                                    who="dba"), config, state, NOW)
        on_app = record_change(parse(config.graph, service="payments", summary="deploy 1.4"),
                               config, state, NOW)
        unrelated = record_change(parse(config.graph, service="nightly-reports",
                                        summary="new report"), config, state, NOW)

        assert [(n.incident_id, n.at, n.kind, n.message) for n in on_db.timeline] == [
            (by_service["payments"], NOW, "change", "change on postgres-payments (a dependency "
             "of payments): failover to replica (version 16.2, by dba)")]
        assert [(n.incident_id, n.message) for n in on_app.timeline] == [
            (by_service["payments"], "change on payments: deploy 1.4")]
        assert unrelated.timeline == ()
        assert len(unrelated.events) == 1

    def test_a_known_id_changes_nothing(self, config: Config) -> None:
        """Posting a change whose id is already known (a retry) stores and sends nothing."""
        posted = parse(config.graph, service="payments", summary="deploy", id="build-7")
        state = State(changes=(posted,))
        repeat = parse(config.graph, service="payments", summary="deploy again", id="build-7")

        decision = record_change(repeat, config, state, NOW)

        assert decision == Decision(now=NOW)
        assert not decision.changes_anything


class TestRollbackCandidates:
    STARTED = NOW - timedelta(minutes=5)

    def candidates(self, graph: ServiceGraph, changes: list[Change], services: list[str],
                   limit: int = 10) -> list[tuple[str, str, bool]]:
        found = rollback_candidates(changes, services, graph, self.STARTED, NOW,
                                    window=timedelta(hours=24), limit=limit)
        return [(c["id"], c["relation"], c["last_before_incident"]) for c in found]

    def test_root_causes_and_their_dependencies_newest_first(self, graph: ServiceGraph
                                                              ) -> None:
        """Changes on the root cause and on what it depends on (hard or soft, transitively)
        come newest first; those on its dependents or outside the window do not; the last one
        before the incident started is flagged."""
        changes = [
            change("payments", NOW - 30 * HOUR, "too-old"),
            change("core-network", NOW - 2 * HOUR, "network"),  # via dns, transitively
            change("payments", NOW - HOUR, "app"),
            change("postgres-payments", NOW - timedelta(minutes=30), "db"),
            change("checkout", NOW - timedelta(minutes=10), "dependent"),  # depends on payments
            change("kafka", NOW - timedelta(minutes=1), "soft-dependency"),
            change("payments", NOW + timedelta(minutes=1), "future"),
        ]

        assert self.candidates(graph, changes, ["payments"]) == [
            ("soft-dependency", "dependency of payments", False),
            ("db", "dependency of payments", True),
            ("app", "root cause", False),
            ("network", "dependency of payments", False),
        ]

    def test_the_change_on_a_failing_service_stays_a_suspect_when_the_fire_spreads(
        self, graph: ServiceGraph
    ) -> None:
        """The database changed, its alert opened the incident, then the core network failed
        and became the root cause: the database change (and the checkout deploy, also
        failing) stay candidates, marked failing, next to the network's."""
        changes = [
            change("postgres-payments", self.STARTED - timedelta(minutes=8), "db-config"),
            change("checkout", NOW - timedelta(minutes=2), "checkout-deploy"),
            change("core-network", NOW - HOUR, "network"),
            change("search", NOW - timedelta(minutes=1), "unrelated"),
        ]

        found = rollback_candidates(changes, ["core-network"], graph, self.STARTED, NOW,
                                    timedelta(hours=24),
                                    failing=["postgres-payments", "checkout", "core-network"])

        assert [(c["id"], c["relation"], c["last_before_incident"]) for c in found] == [
            ("checkout-deploy", "failing", False),
            ("db-config", "failing", True),
            ("network", "root cause", False),
        ]

    def test_candidate_is_json_ready(self, graph: ServiceGraph) -> None:
        """Each candidate is the change as the API shows it, with its relation and flag."""
        found = change("postgres-payments", NOW - HOUR, "db", who="dba", version="16.2",
                       links=(("https://ci/1", "build"),))

        (candidate,) = rollback_candidates([found], ["payments"], graph, self.STARTED, NOW,
                                           window=timedelta(hours=24))

        assert candidate == {**change_json(found), "relation": "dependency of payments",
                             "last_before_incident": True}
        assert json.loads(json.dumps(candidate)) == candidate

    def test_nearest_root_cause_names_the_dependency(self, graph: ServiceGraph) -> None:
        """With several root causes, a shared dependency is named after the nearest one, and
        a root cause that another depends on is still a root cause."""
        changes = [change("postgres-payments", NOW - HOUR, "db"),
                   change("payments", NOW - 2 * HOUR, "app")]

        assert self.candidates(graph, changes, ["checkout", "payments"]) == [
            ("db", "dependency of payments", True),
            ("app", "root cause", False),
        ]

    def test_aliases_name_root_causes_too(self, graph: ServiceGraph) -> None:
        """A root cause given by an alias finds the changes on its service."""
        changes = [change("payments", NOW - HOUR, "app")]
        assert self.candidates(graph, changes, ["payments-api"]) == [
            ("app", "root cause", True)]

    def test_the_limit_keeps_the_last_change_before_the_incident(self, graph: ServiceGraph
                                                                  ) -> None:
        """When more changes came after the start than the limit allows, the last known
        stable point is still offered, last."""
        changes = [change("payments", NOW - HOUR, "before"),
                   *(change("payments", NOW - timedelta(minutes=m), f"after-{m}")
                     for m in (1, 2, 3))]

        assert self.candidates(graph, changes, ["payments"], limit=2) == [
            ("after-1", "root cause", False),
            ("before", "root cause", True),
        ]

    def test_nothing_before_the_incident_flags_nothing(self, graph: ServiceGraph) -> None:
        """Only changes after the start: none is the last stable point."""
        changes = [change("payments", NOW - timedelta(minutes=1), "after")]
        assert self.candidates(graph, changes, ["payments"]) == [
            ("after", "root cause", False)]

    def test_window_bounds_the_search(self, graph: ServiceGraph) -> None:
        """A change older than the window is no candidate."""
        changes = [change("payments", NOW - 2 * HOUR, "old")]
        found = rollback_candidates(changes, ["payments"], graph, self.STARTED, NOW,
                                    window=timedelta(hours=1))
        assert found == []


class TestStore:
    async def test_round_trip(self, new_store: NewStore, config: Config) -> None:
        """A recorded change is in the engine state after a restart, oldest first, and only
        while it is inside the window."""
        early = parse(config.graph, service="payments", summary="deploy 1.3", id="b1",
                      timestamp=(NOW - 3 * HOUR).isoformat(), who="ci", version="1.3",
                      links=[{"href": "https://ci/1", "text": "build"}])
        late = parse(config.graph, service="cart", summary="deploy cart", id="b2")
        before = new_store()
        await before.open()
        await before.commit(record_change(late, config, State(), NOW))
        await before.commit(record_change(early, config, State(), NOW))
        await before.close()

        after = new_store()
        await after.open()
        try:
            loaded = await after.load_state(NOW, DAY)
            recent = await after.load_state(NOW, DAY, changes_seconds=3600)
        finally:
            await after.close()

        assert loaded.changes == (early, late)
        assert recent.changes == (late,)

    async def test_a_repeated_id_keeps_the_first(self, store: Store, config: Config
                                                 ) -> None:
        """Storing a change id twice keeps the first version of it."""
        first = parse(config.graph, service="payments", summary="first", id="same")
        second = parse(config.graph, service="payments", summary="second", id="same")
        await store.commit(Decision(now=NOW, changes=(first,)))
        await store.commit(Decision(now=NOW, changes=(second,)))

        assert (await store.load_state(NOW, DAY)).changes == (first,)

    async def test_list_changes_newest_first_by_service(self, store: Store,
                                                        config: Config) -> None:
        """The API lists changes newest first, all or those of one service."""
        made = [change("payments", NOW - 2 * HOUR, "a"), change("cart", NOW - HOUR, "b"),
                change("payments", NOW, "c")]
        await store.commit(Decision(now=NOW, changes=tuple(made)))

        assert [c["id"] for c in await store.list_changes(None, 10)] == ["c", "b", "a"]
        assert await store.list_changes("payments", 1) == [change_json(made[2])]
        assert await store.list_changes("checkout", 10) == []

    async def test_notes_reach_the_incident_timeline(self, store: Store,
                                                     config: Config) -> None:
        """The note on a related incident is stored in the change's transaction."""
        fire = decide(webhook(alert({"alertname": "PaymentsErrors", "service": "payments"})),
                      config, State(), NOW - HOUR)
        await store.commit(fire)
        state = apply(State(), fire)
        await store.commit(record_change(parse(config.graph, service="payments",
                                               summary="deploy 1.4"), config, state, NOW))

        (incident_id,) = state.open
        incident = await store.get_incident(incident_id)
        assert incident is not None
        assert [(t["kind"], t["message"]) for t in incident["timeline"]
                if t["kind"] == "change"] == [("change", "change on payments: deploy 1.4")]

    async def test_cleanup_forgets_changes_past_the_retention(self, store: Store
                                                              ) -> None:
        """Cleanup deletes changes made before the delivered-event cutoff, keeps the rest."""
        await store.commit(Decision(now=NOW, changes=(
            change("payments", NOW - 200 * HOUR, "old"), change("payments", NOW - HOUR, "new"))))

        removed = await store.cleanup(NOW - 168 * HOUR, NOW - 24 * HOUR)

        assert removed >= 1
        assert [c["id"] for c in await store.list_changes(None, 10)] == ["new"]


@asynccontextmanager
async def serving(tmp_path: Path, database_url: str, pd: PagerDutyStandIn, token: str = ""
                  ) -> AsyncIterator[tuple[Firehouse, str]]:
    """An in-process Firehouse on a free port, paging the stand-in; with its base URL. Its
    state: `database_url` (PostgreSQL), or when that is empty a file in `tmp_path`."""
    env = config_env(pagerduty_url=pd.url, state=tmp_path / "state.db", listen="127.0.0.1:0",
                     token=token or None, database_url=database_url)
    firehouse = Firehouse(load_config(SETTINGS, env=env), SETTINGS, env=env)
    await firehouse.start()
    try:
        yield firehouse, f"http://127.0.0.1:{firehouse.port}"
    finally:
        await firehouse.stop()


def counted(firehouse: Firehouse, outcome: str) -> float:
    """firehouse_changes_received_total{outcome}."""
    value = firehouse.metrics.registry.get_sample_value(
        "firehouse_changes_received_total", {"outcome": outcome})
    assert value is not None
    return float(value)


class TestRoutes:
    async def test_post_then_list(self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
                                  session: aiohttp.ClientSession) -> None:
        """A posted change is answered 201 with the change, a repeat 200 `duplicate`, and
        both are counted; the list shows it once."""
        async with serving(tmp_path, database_url, pd) as (firehouse, url):
            body = {"service": "checkout-api", "summary": "deploy 2.0", "id": "b-20"}
            async with session.post(f"{url}/api/v1/changes", json=body) as response:
                assert response.status == 201
                created = await response.json()
            async with session.post(f"{url}/api/v1/changes",
                                    json={**body, "summary": "deploy 2.0 (retry)"}) as response:
                assert response.status == 200
                repeated = await response.json()
            async with session.get(f"{url}/api/v1/changes?service=checkout-api") as response:
                listed = await response.json()
            accepted, duplicate = counted(firehouse, "accepted"), counted(firehouse, "duplicate")

        assert created["service"] == "checkout"
        assert created["duplicate"] is False
        assert repeated == {**created, "duplicate": True}  # the stored change, not the retry
        assert [c["id"] for c in listed["changes"]] == ["b-20"]
        assert (accepted, duplicate) == (1.0, 1.0)

    async def test_bad_change_is_400_and_stores_nothing(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
        session: aiohttp.ClientSession
    ) -> None:
        """A bad change is refused naming the problem, counted invalid, and leaves no trace."""
        async with serving(tmp_path, database_url, pd) as (firehouse, url):
            async with session.post(f"{url}/api/v1/changes",
                                    json={"service": "paymnets", "summary": "x"}) as response:
                status, answer = response.status, await response.json()
            async with session.post(f"{url}/api/v1/changes", data=b"service=payments",
                                    headers={"Content-Type": "text/plain"}) as response:
                unsupported = response.status
            stored = await firehouse.store.list_changes(None, 10)
            invalid = counted(firehouse, "invalid")

        assert status == 400
        assert answer == {"status": "error", "error": "field 'service' names no service of the "
                          "dependency maps: 'paymnets'; did you mean 'payments'?"}
        assert unsupported == 415
        assert stored == []
        assert invalid == 2.0

    async def test_credentials_are_required_when_configured(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
        session: aiohttp.ClientSession
    ) -> None:
        """With a bearer token set, posting or listing changes without it is 401."""
        async with serving(tmp_path, database_url, pd, token=TOKEN) as (firehouse, url):
            body = {"service": "payments", "summary": "x"}
            async with session.post(f"{url}/api/v1/changes", json=body) as response:
                anonymous = response.status
            async with session.get(f"{url}/api/v1/changes") as response:
                listing = response.status
            async with session.post(f"{url}/api/v1/changes", json=body,
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                allowed = response.status
            stored = await firehouse.store.list_changes(None, 10)

        assert (anonymous, listing, allowed) == (401, 401, 201)
        assert len(stored) == 1


@pytest.mark.e2e
async def test_posted_change_reaches_the_technical_lead(
    pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory
) -> None:
    """A deploy pipeline's change, posted to a real Firehouse, reaches PagerDuty as a
    spec-valid Change Event on the technical lead's routing key."""
    fh = await firehouse(token=TOKEN)
    body = {"service": "postgres-exporter-payments", "summary": "raise max_connections",
            "who": "dba-bot", "version": "pg-conf 12", "id": "conf-12",
            "links": [{"href": "https://git.example.com/c/12", "text": "diff"}]}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.post(f"{fh.url}/api/v1/changes", json=body,
                     headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        assert response.status == 201, await response.text()
        answer = await response.json()
    assert answer["service"] == "postgres-payments"

    sent = await pagerduty.wait_for(lambda b: b["routing_key"] == fh.key("dba-oncall"),
                                    path=CHANGE_PATH)

    assert sent["payload"]["summary"] == "raise max_connections"
    assert sent["payload"]["custom_details"] == {
        "service": "postgres-payments", "who": "dba-bot", "version": "pg-conf 12",
        "change_id": "conf-12"}
    assert sent["links"] == body["links"]
    assert validate(CHANGE_PATH, sent) == []
    assert pagerduty.invalid == [], pagerduty.dump()
    assert pagerduty.events == []  # a change pages nobody
