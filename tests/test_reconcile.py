"""Tests of daemon.reconcile: the Alertmanager API client and the stale-incident worker.

The client is tested against local aiohttp servers (every failure it must name) and a real
Alertmanager 0.25; the worker with a fake dispatcher and injected engine steps; and the
whole path, end to end, with real processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web

from daemon.config import Config
from daemon.decide import RESOLVED, Decision, State, apply, decide
from daemon.errors import ReconcileError, StoreError
from daemon.metrics import Metrics
from daemon.reconcile import (
    ALERTS_PATH,
    STATUS_PATH,
    AlertmanagerClient,
    Reconciler,
    newly_resolved,
)
from tests.conftest import AlertmanagerFactory, FirehouseFactory
from tests.helpers import FIXTURES, NOW, alert, free_port, wait_until, webhook
from tests.pagerduty_standin import PagerDutyStandIn
from tests.procs import AlertmanagerProcess, FirehouseProcess, am_alert, rfc3339

CAPTURED = FIXTURES / "captured-am-0.25"
WAIT = 30.0  # generous bound for conditions polled in the end-to-end tests; never asserted
LATER = NOW + timedelta(hours=1)

Step = Callable[[Config, State, datetime], Decision]


# --------------------------------------------------------------------------- helpers


@dataclass
class FakeAlertmanager:
    """A local HTTP server standing in for Alertmanager's `GET /api/v2/alerts` and
    `GET /api/v2/status` (up for years, unless told otherwise)."""

    status: int = 200
    body: str = "[]"
    hang: bool = False
    requests: list[web.Request] = field(default_factory=list)
    status_body: str | None = '{"uptime": "2020-01-01T00:00:00.000Z"}'  # None: 404
    url: str = ""
    _runner: web.AppRunner | None = None

    def answer(self, *fingerprints: str) -> None:
        """Answer with one gettableAlert-shaped object per fingerprint."""
        self.body = json.dumps([
            {"fingerprint": fp, "labels": {"alertname": "X"}, "status": {"state": "active"},
             "startsAt": "2024-05-01T11:55:00Z", "endsAt": "2024-05-01T12:05:00Z",
             "updatedAt": "2024-05-01T11:55:00Z", "annotations": {}, "receivers": []}
            for fp in fingerprints
        ])

    def up_since(self, moment: datetime) -> None:
        """Answer the status of an Alertmanager started at `moment`, as 0.25 words it."""
        self.status_body = json.dumps({"cluster": {"status": "disabled"},
                                       "uptime": rfc3339(moment)})

    async def _status(self, request: web.Request) -> web.Response:
        if self.status_body is None:
            return web.Response(status=404, text="404 page not found")
        return web.Response(text=self.status_body, content_type="application/json")

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if self.hang:
            await asyncio.Event().wait()
        return web.Response(status=self.status, text=self.body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(ALERTS_PATH, self._handle)
        app.router.add_get(STATUS_PATH, self._status)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake_am() -> AsyncIterator[FakeAlertmanager]:
    """A started fake Alertmanager."""
    server = FakeAlertmanager()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def other_am() -> AsyncIterator[FakeAlertmanager]:
    """A second fake Alertmanager, for HA pairs."""
    server = FakeAlertmanager()
    await server.start()
    yield server
    await server.stop()


def refused_url() -> str:
    """A local URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def captured_alerts(*names: str) -> list[dict[str, Any]]:
    """The alerts of captured Alertmanager 0.25 webhooks, with the fingerprints it gave."""
    found = []
    for name in names:
        found.extend(json.loads((CAPTURED / name).read_text(encoding="utf-8"))["alerts"])
    return found


def with_settings(config: Config, **changes: Any) -> Config:
    """`config` with some settings changed."""
    return replace(config, settings=replace(config.settings, **changes))


class FakeDispatcher:
    """Runs steps on its state at a fixed time and records what they decided."""

    def __init__(self, config: Config, state: State | None = None,
                 error: Exception | None = None, now: datetime = NOW) -> None:
        self.config = config
        self.state = state or State()
        self.error = error
        self.now = now
        self.refusal: str | None = None
        self.decisions: list[Decision] = []

    async def run(self, step: Step) -> Decision:
        decision = step(self.config, self.state, self.now)
        if self.error is not None:
            raise self.error
        self.decisions.append(decision)
        self.state = apply(self.state, decision)
        return decision


@dataclass
class FakeEngine:
    """Stand-ins for decide.stale_fingerprints and decide.reconcile that record their calls."""

    stale: tuple[str, ...] = ()
    decision: Callable[[State, datetime], Decision] | None = None
    calls: list[tuple[tuple[str, ...], frozenset[str] | None]] = field(default_factory=list)

    def stale_fingerprints(self, config: Config, state: State, now: datetime
                           ) -> tuple[str, ...]:
        return self.stale

    def reconcile(self, checked: tuple[str, ...], present: frozenset[str] | None,
                  config: Config, state: State, now: datetime) -> Decision:
        self.calls.append((checked, present))
        return self.decision(state, now) if self.decision else Decision(now=now)


# Services that no dependency of the shipped map links: an alert on each is an incident
# of its own (alerts on related services join one incident).
UNRELATED = ("postgres-payments", "nightly-reports")


def open_incidents(config: Config, *names: str) -> tuple[State, list[str]]:
    """A state with an open incident for each alert named in `names` (at most two); their
    fingerprints."""
    alerts = [alert({"alertname": name, "service": service}, fingerprint=f"fp-{name}")
              for name, service in zip(names, UNRELATED, strict=False)]
    decision = decide(webhook(*alerts), config, State(), NOW)
    state = apply(State(), decision)
    return state, [a["fingerprint"] for a in alerts]


def alert_status(dispatcher: FakeDispatcher, fingerprint: str) -> str:
    """The status of an alert of an open incident; RESOLVED once it is not in one."""
    ident = dispatcher.state.by_fingerprint.get(fingerprint)
    if ident is None or ident not in dispatcher.state.open:
        return RESOLVED
    return dispatcher.state.open[ident].alerts[fingerprint].status


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of a metric sample (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --------------------------------------------------------------------------- the client


class TestAlertmanagerClient:
    """AlertmanagerClient against local servers: answers, and every failure named."""

    async def test_asks_for_alerts_in_every_state(self, fake_am: FakeAlertmanager,
                                                  session: aiohttp.ClientSession) -> None:
        """The fingerprints of the answer are returned; silenced, inhibited and unprocessed
        alerts are asked for too."""
        fake_am.answer("10fd2ebfb5d5241b", "07c2a4f70865d635")
        client = AlertmanagerClient([fake_am.url + "/"], session, 5.0)
        assert await client.fingerprints() == {"10fd2ebfb5d5241b", "07c2a4f70865d635"}
        query = dict(fake_am.requests[0].query)
        assert query == {"active": "true", "silenced": "true", "inhibited": "true",
                         "unprocessed": "true"}

    async def test_empty_answer(self, fake_am: FakeAlertmanager,
                                session: aiohttp.ClientSession) -> None:
        """An Alertmanager with no alerts answers an empty set, not an error."""
        client = AlertmanagerClient([fake_am.url], session, 5.0)
        assert await client.fingerprints() == frozenset()

    async def test_bearer_token(self, fake_am: FakeAlertmanager,
                                session: aiohttp.ClientSession) -> None:
        """A bearer token is sent in the Authorization header."""
        client = AlertmanagerClient([fake_am.url], session, 5.0, bearer_token="am-t0ken")
        await client.fingerprints()
        assert fake_am.requests[0].headers["Authorization"] == "Bearer am-t0ken"

    async def test_basic_auth(self, fake_am: FakeAlertmanager,
                              session: aiohttp.ClientSession) -> None:
        """Basic credentials are sent as HTTP basic authentication."""
        client = AlertmanagerClient([fake_am.url], session, 5.0, basic_auth=("fh", "pa55"))
        await client.fingerprints()
        assert fake_am.requests[0].headers["Authorization"] == "Basic Zmg6cGE1NQ=="

    async def test_connection_refused(self, session: aiohttp.ClientSession) -> None:
        """Nothing listening is a ReconcileError saying the connection was refused."""
        url = refused_url()
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([url], session, 5.0).fingerprints()
        assert str(caught.value) == f"{url}: connection refused"
        assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)

    async def test_timeout(self, fake_am: FakeAlertmanager,
                           session: aiohttp.ClientSession) -> None:
        """A server that never answers is a ReconcileError naming the timeout."""
        fake_am.hang = True
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([fake_am.url], session, 0.2).fingerprints()
        assert str(caught.value) == f"{fake_am.url}: no answer within 0.2s"

    async def test_http_error(self, fake_am: FakeAlertmanager,
                              session: aiohttp.ClientSession) -> None:
        """A non-200 answer is a ReconcileError with the status and the body, on one line."""
        fake_am.status, fake_am.body = 500, "failed to get alerts:\n  context canceled"
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([fake_am.url], session, 5.0).fingerprints()
        assert str(caught.value) == (
            f"{fake_am.url}: HTTP 500: 'failed to get alerts: context canceled'")

    async def test_not_json(self, fake_am: FakeAlertmanager,
                            session: aiohttp.ClientSession) -> None:
        """An answer that is not JSON (a proxy's login page) is a ReconcileError."""
        fake_am.body = "<html>please log in</html>"
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([fake_am.url], session, 5.0).fingerprints()
        assert str(caught.value) == (
            f"{fake_am.url}: the answer is not JSON: '<html>please log in</html>'")

    async def test_not_a_list(self, fake_am: FakeAlertmanager,
                              session: aiohttp.ClientSession) -> None:
        """JSON that is not a list of alerts (API v1's envelope) is a ReconcileError."""
        fake_am.body = '{"status": "success", "data": []}'
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([fake_am.url], session, 5.0).fingerprints()
        assert str(caught.value) == f"{fake_am.url}: the answer is not a list of alerts but " \
            "an object"

    @pytest.mark.parametrize("item", [{"labels": {}}, {"fingerprint": 42}, {"fingerprint": ""},
                                      "10fd2ebfb5d5241b"])
    async def test_alert_without_fingerprint(self, fake_am: FakeAlertmanager,
                                             session: aiohttp.ClientSession, item: Any) -> None:
        """An alert without a non-empty string fingerprint makes the whole answer unusable:
        guessing would resolve an alert that is still firing."""
        fake_am.body = json.dumps([{"fingerprint": "07c2a4f70865d635"}, item])
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([fake_am.url], session, 5.0).fingerprints()
        assert str(caught.value) == (f"{fake_am.url}: alert 1 of 2 has no string fingerprint: "
                                     f"{json.dumps(item)!r}")


class TestHighAvailability:
    """Several URLs: an alert counts as present if any reachable Alertmanager has it."""

    async def test_union_of_answers(self, fake_am: FakeAlertmanager,
                                    other_am: FakeAlertmanager,
                                    session: aiohttp.ClientSession) -> None:
        """Every member is asked; an alert one of them has is present."""
        fake_am.answer("a", "b")
        other_am.answer("b", "c")
        client = AlertmanagerClient([fake_am.url, other_am.url], session, 5.0)
        assert await client.fingerprints() == {"a", "b", "c"}

    async def test_one_member_down(self, fake_am: FakeAlertmanager,
                                   session: aiohttp.ClientSession,
                                   caplog: pytest.LogCaptureFixture) -> None:
        """With one member refusing connections, the other's answer counts, and the failure
        is logged."""
        fake_am.answer("a")
        down = refused_url()
        client = AlertmanagerClient([down, fake_am.url], session, 5.0)
        with caplog.at_level(logging.WARNING, "firehouse.reconcile"):
            assert await client.fingerprints() == {"a"}
        assert [r.fields for r in caplog.records] == [  # type: ignore[attr-defined]
            {"error": f"{down}: connection refused"}]

    async def test_one_member_broken(self, fake_am: FakeAlertmanager,
                                     other_am: FakeAlertmanager,
                                     session: aiohttp.ClientSession) -> None:
        """A member answering garbage is skipped like one that is down."""
        fake_am.answer("a")
        other_am.status = 503
        client = AlertmanagerClient([other_am.url, fake_am.url], session, 5.0)
        assert await client.fingerprints() == {"a"}

    async def test_all_members_down(self, fake_am: FakeAlertmanager,
                                    session: aiohttp.ClientSession) -> None:
        """Only when every member fails is it a ReconcileError, naming each failure."""
        fake_am.status = 500
        down = refused_url()
        with pytest.raises(ReconcileError) as caught:
            await AlertmanagerClient([down, fake_am.url], session, 5.0).fingerprints()
        assert str(caught.value) == (f"{down}: connection refused; {fake_am.url}: HTTP 500: "
                                     "'[]'")


@pytest.mark.e2e
class TestRealAlertmanager:
    """The client against Debian's Alertmanager 0.25, fed through its own API."""

    @staticmethod
    async def started(firehouse: FirehouseFactory,
                      alertmanager: AlertmanagerFactory) -> AlertmanagerProcess:
        # Alertmanager needs a webhook URL; this Firehouse is never started (its
        # notifications fail, which does not matter here).
        fh = await firehouse(start=False)
        return await alertmanager(fh)

    async def test_fingerprints_are_the_webhooks(self, firehouse: FirehouseFactory,
                                                 alertmanager: AlertmanagerFactory,
                                                 session: aiohttp.ClientSession) -> None:
        """For the labels of captured webhooks, the API gives the fingerprints that
        Alertmanager put in those webhooks: the two identify alerts the same way."""
        am = await self.started(firehouse, alertmanager)
        captured = captured_alerts("01_api_firing.json", "09_group_of_3_firing.json",
                                   "12_amtool_firing.json")
        now = datetime.now(UTC)
        await am.post_alerts([am_alert(a["labels"], starts_at=now) for a in captured])
        client = AlertmanagerClient([am.url], session, 5.0)
        assert await client.fingerprints() == {a["fingerprint"] for a in captured}

    async def test_silenced_alert_is_present(self, firehouse: FirehouseFactory,
                                             alertmanager: AlertmanagerFactory,
                                             session: aiohttp.ClientSession) -> None:
        """A silenced alert is still firing: it is listed (state suppressed) and present."""
        am = await self.started(firehouse, alertmanager)
        (captured,) = captured_alerts("12_amtool_firing.json")
        now = datetime.now(UTC)
        await am.post_alerts([am_alert(captured["labels"], starts_at=now)])
        silence = {
            "matchers": [{"name": "alertname", "value": "AmtoolTest", "isRegex": False}],
            "startsAt": rfc3339(now), "endsAt": rfc3339(now + timedelta(hours=1)),
            "createdBy": "test_reconcile", "comment": "silenced on purpose",
        }
        async with session.post(f"{am.url}/api/v2/silences", json=silence) as response:
            assert response.status == 200, await response.text()

        async def suppressed() -> bool:
            async with session.get(f"{am.url}{ALERTS_PATH}") as response:
                alerts = await response.json()
            return [a["status"]["state"] for a in alerts] == ["suppressed"]

        await wait_until(suppressed, WAIT, "the alert suppressed by the silence")
        client = AlertmanagerClient([am.url], session, 5.0)
        assert await client.fingerprints() == {captured["fingerprint"]}

    async def test_expired_alert_is_absent(self, firehouse: FirehouseFactory,
                                           alertmanager: AlertmanagerFactory,
                                           session: aiohttp.ClientSession) -> None:
        """An alert whose endsAt has passed is no longer listed, although Alertmanager
        still keeps it: that is how a missing resolve is recognised."""
        am = await self.started(firehouse, alertmanager)
        gone, kept = captured_alerts("01_api_firing.json", "12_amtool_firing.json")
        now = datetime.now(UTC)
        await am.post_alerts([
            am_alert(gone["labels"], starts_at=now - timedelta(minutes=5),
                     ends_at=now - timedelta(seconds=1)),
            am_alert(kept["labels"], starts_at=now),
        ])
        client = AlertmanagerClient([am.url], session, 5.0)
        assert await client.fingerprints() == {kept["fingerprint"]}


# --------------------------------------------------------------------------- the worker


class TestReconciler:
    """The worker with a fake dispatcher: the real engine steps, or recording stand-ins."""

    @staticmethod
    def worker(dispatcher: FakeDispatcher, session: aiohttp.ClientSession,
               engine: FakeEngine | None = None, metrics: Metrics | None = None) -> Reconciler:
        if engine is None:
            return Reconciler(dispatcher, session, metrics or Metrics(),
                              clock=lambda: dispatcher.now)
        return Reconciler(dispatcher, session, metrics or Metrics(),
                          clock=lambda: dispatcher.now, stale=engine.stale_fingerprints,
                          reconcile=engine.reconcile)

    @staticmethod
    def quiet_for_an_hour(config: Config, *names: str, **settings: Any
                          ) -> tuple[FakeDispatcher, list[str]]:
        """A dispatcher an hour after incidents for `names` opened (stale after a minute)."""
        state, fps = open_incidents(config, *names)
        changed = with_settings(config, stale_after=60.0, **settings)
        return FakeDispatcher(changed, state, now=LATER), fps

    async def test_nothing_stale(self, config: Config, fake_am: FakeAlertmanager,
                                 session: aiohttp.ClientSession) -> None:
        """With no stale alert, Alertmanager is not asked and nothing is decided."""
        state, _ = open_incidents(config, "A")
        dispatcher = FakeDispatcher(with_settings(config, alertmanager_urls=(fake_am.url,)),
                                    state)
        assert await self.worker(dispatcher, session).check() is None
        assert fake_am.requests == []
        assert dispatcher.decisions == []

    async def test_what_the_engine_is_given(self, config: Config, fake_am: FakeAlertmanager,
                                            session: aiohttp.ClientSession) -> None:
        """The stale fingerprints, and what Alertmanager has, go to the engine: outcome ok."""
        state, fps = open_incidents(config, "A", "B")
        dispatcher = FakeDispatcher(with_settings(config, alertmanager_urls=(fake_am.url,)),
                                    state)
        fake_am.answer(fps[0], "someone-else")
        engine, metrics = FakeEngine(stale=tuple(fps)), Metrics()
        assert await self.worker(dispatcher, session, engine, metrics).check() == "ok"
        assert engine.calls == [(tuple(fps), frozenset({fps[0], "someone-else"}))]
        assert sample(metrics, "firehouse_stale_checks_total", outcome="ok") == 1

    async def test_missing_alerts_are_resolved(self, config: Config,
                                               fake_am: FakeAlertmanager,
                                               session: aiohttp.ClientSession,
                                               caplog: pytest.LogCaptureFixture) -> None:
        """An alert Alertmanager no longer has is resolved and counted; one it has is
        refreshed, and so no longer stale."""
        dispatcher, fps = self.quiet_for_an_hour(config, "A", "B",
                                                 alertmanager_urls=(fake_am.url,))
        fake_am.answer(fps[0])
        metrics = Metrics()
        worker = self.worker(dispatcher, session, metrics=metrics)
        with caplog.at_level(logging.INFO, "firehouse.reconcile"):
            assert await worker.check() == "ok"
        assert sample(metrics, "firehouse_stale_alerts_resolved_total") == 1
        records = {fp: dispatcher.state.open[dispatcher.state.by_fingerprint[fp]].alerts[fp]
                   for fp in fps if fp in dispatcher.state.by_fingerprint}
        assert records[fps[0]].last_seen == LATER
        assert fps[1] not in records or records[fps[1]].status == RESOLVED
        (record,) = caplog.records
        assert record.fields == {  # type: ignore[attr-defined]
            "outcome": "ok", "alerts": 2, "incidents": 2, "resolved": 1}
        assert await worker.check() is None  # nothing stale any more

    async def test_alertmanager_unreachable(self, config: Config,
                                            session: aiohttp.ClientSession,
                                            caplog: pytest.LogCaptureFixture) -> None:
        """When no Alertmanager answers, the incidents get a "stale" note and stay open:
        outcome unreachable, and the gauge counts them."""
        url = refused_url()
        dispatcher, _ = self.quiet_for_an_hour(config, "A", "B", alertmanager_urls=(url,))
        metrics = Metrics()
        with caplog.at_level(logging.WARNING, "firehouse.reconcile"):
            assert await self.worker(dispatcher, session, metrics=metrics).check() == (
                "unreachable")
        (decision,) = dispatcher.decisions
        assert [note.kind for note in decision.timeline] == ["stale", "stale"]
        assert len(dispatcher.state.open) == 2
        assert sample(metrics, "firehouse_stale_checks_total", outcome="unreachable") == 1
        assert sample(metrics, "firehouse_incidents_stale") == 2
        (record,) = caplog.records
        assert record.fields == {  # type: ignore[attr-defined]
            "outcome": "unreachable", "alerts": 2, "incidents": 2, "resolved": 0,
            "error": f"{url}: connection refused"}

    async def test_unconfigured_warns_once(self, config: Config,
                                           session: aiohttp.ClientSession,
                                           caplog: pytest.LogCaptureFixture) -> None:
        """Without a URL, stale incidents are flagged, with one warning that says how to fix
        it, however many rounds."""
        dispatcher, _ = self.quiet_for_an_hour(config, "A")
        metrics = Metrics()
        worker = self.worker(dispatcher, session, metrics=metrics)
        with caplog.at_level(logging.WARNING, "firehouse.reconcile"):
            assert await worker.check() == "unconfigured"
            assert await worker.check() == "unconfigured"
        assert sample(metrics, "firehouse_stale_checks_total", outcome="unconfigured") == 2
        assert sample(metrics, "firehouse_incidents_stale") == 1
        warnings = [r.getMessage() for r in caplog.records
                    if "alertmanager.url" in r.getMessage()]
        assert len(warnings) == 1
        assert "FIREHOUSE_ALERTMANAGER_URL" in warnings[0]

    async def test_gauge_clears_once_answered(self, config: Config,
                                              fake_am: FakeAlertmanager,
                                              session: aiohttp.ClientSession) -> None:
        """The stale gauge drops back to 0 once Alertmanager answers that it has the alert."""
        dispatcher, fps = self.quiet_for_an_hour(config, "A",
                                                 alertmanager_urls=(refused_url(),))
        metrics = Metrics()
        worker = self.worker(dispatcher, session, metrics=metrics)
        await worker.check()
        assert sample(metrics, "firehouse_incidents_stale") == 1
        dispatcher.config = with_settings(dispatcher.config, alertmanager_urls=(fake_am.url,))
        fake_am.answer(*fps)
        assert await worker.check() == "ok"
        assert sample(metrics, "firehouse_incidents_stale") == 0

    async def test_loop_survives_failures(self, config: Config,
                                          session: aiohttp.ClientSession,
                                          caplog: pytest.LogCaptureFixture) -> None:
        """A round that fails (an engine bug, a store error) is logged and counted as error,
        and the next round runs."""
        state, fps = open_incidents(config, "A")
        fast = with_settings(config, stale_check_interval=0.01)
        dispatcher = FakeDispatcher(fast, state, error=StoreError("disk full"))
        rounds = 0
        metrics = Metrics()
        worker: Reconciler

        def stale(config: Config, state: State, now: datetime) -> tuple[str, ...]:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                raise RuntimeError("engine bug")
            if rounds == 3:
                worker.stop()
            return tuple(fps)

        worker = Reconciler(dispatcher, session, metrics, clock=lambda: NOW, stale=stale,
                            reconcile=FakeEngine().reconcile)
        with caplog.at_level(logging.ERROR, "firehouse.reconcile"):
            await asyncio.wait_for(worker.run(), WAIT)
        assert rounds == 3
        assert sample(metrics, "firehouse_stale_checks_total", outcome="error") == 3
        assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == [
            "engine bug", "disk full", "disk full"]

    async def test_stop_abandons_a_hanging_question(self, config: Config,
                                                    fake_am: FakeAlertmanager,
                                                    session: aiohttp.ClientSession) -> None:
        """stop() returns the loop while Alertmanager hangs; nothing is decided on a
        question never answered."""
        state, fps = open_incidents(config, "A")
        fake_am.hang = True
        slow = with_settings(config, alertmanager_urls=(fake_am.url,), alertmanager_timeout=60.0)
        dispatcher = FakeDispatcher(slow, state)
        engine = FakeEngine(stale=tuple(fps))
        worker = self.worker(dispatcher, session, engine)
        task = asyncio.create_task(worker.run())

        async def asked() -> bool:
            return bool(fake_am.requests)

        await wait_until(asked, WAIT, "Alertmanager asked")
        worker.stop()
        await asyncio.wait_for(task, WAIT)
        assert engine.calls == []
        assert dispatcher.decisions == []


    async def test_just_restarted_alertmanager_proves_nothing(
            self, config: Config, fake_am: FakeAlertmanager, session: aiohttp.ClientSession,
            caplog: pytest.LogCaptureFixture) -> None:
        """An Alertmanager up for less than restart_grace may lack alerts that still fire:
        they are neither resolved nor flagged, and wait (said once per restart, at INFO);
        once it has been up that long and still lacks them, they are resolved."""
        dispatcher, fps = self.quiet_for_an_hour(config, "A", "B",
                                                 alertmanager_urls=(fake_am.url,),
                                                 alertmanager_restart_grace=300.0)
        fake_am.answer(fps[0])
        fake_am.up_since(datetime.now(UTC) - timedelta(seconds=10))
        metrics = Metrics()
        worker = self.worker(dispatcher, session, metrics=metrics)
        with caplog.at_level(logging.INFO, "firehouse.reconcile"):
            assert await worker.check() == "ok"
            assert await worker.check() == "ok"  # B, still stale: the same restart
            fake_am.up_since(datetime.now(UTC) - timedelta(seconds=5))
            assert await worker.check() == "ok"  # another restart
        restarts = [r for r in caplog.records if "restarted recently" in r.getMessage()]
        assert [r.fields["alertmanager"] for r in restarts] == [  # type: ignore[attr-defined]
            fake_am.url, fake_am.url]
        assert [r.fields for r in caplog.records  # type: ignore[attr-defined]
                if r.getMessage() == "stale check"] == [
            {"outcome": "ok", "alerts": 2, "incidents": 2, "resolved": 0, "waiting": 1},
            {"outcome": "ok", "alerts": 1, "incidents": 1, "resolved": 0, "waiting": 1},
            {"outcome": "ok", "alerts": 1, "incidents": 1, "resolved": 0, "waiting": 1}]
        assert [n for d in dispatcher.decisions for n in d.timeline] == []
        waiting = dispatcher.state.open[dispatcher.state.by_fingerprint[fps[1]]]
        assert alert_status(dispatcher, fps[1]) != RESOLVED
        assert waiting.stale_since is None
        assert sample(metrics, "firehouse_stale_alerts_resolved_total") == 0

        fake_am.up_since(datetime.now(UTC) - timedelta(seconds=301))
        assert await worker.check() == "ok"
        assert sample(metrics, "firehouse_stale_alerts_resolved_total") == 1
        assert alert_status(dispatcher, fps[1]) == RESOLVED

    async def test_ha_member_up_long_enough_proves_absence(
            self, config: Config, fake_am: FakeAlertmanager, other_am: FakeAlertmanager,
            session: aiohttp.ClientSession) -> None:
        """In an HA pair, what neither member has is resolved when one of them has been up
        for restart_grace, although the other just restarted; with that one unreachable,
        the just restarted one proves nothing and the alert waits."""
        fake_am.up_since(datetime.now(UTC))
        for urls, resolved in (((fake_am.url, other_am.url), 1),
                               ((fake_am.url, refused_url()), 0)):
            dispatcher, (fp,) = self.quiet_for_an_hour(config, "A", alertmanager_urls=urls)
            metrics = Metrics()
            assert await self.worker(dispatcher, session, metrics=metrics).check() == "ok"
            assert sample(metrics, "firehouse_stale_alerts_resolved_total") == resolved, urls
            assert (alert_status(dispatcher, fp) == RESOLVED) == bool(resolved)
            assert sample(metrics, "firehouse_incidents_stale") == 0

    async def test_unreadable_uptime_warns_once(self, config: Config,
                                                fake_am: FakeAlertmanager,
                                                session: aiohttp.ClientSession,
                                                caplog: pytest.LogCaptureFixture) -> None:
        """An Alertmanager whose uptime cannot be read (no status, no RFC 3339 uptime)
        is trusted as before: what it lacks is resolved; one warning says so, not one a
        round."""
        dispatcher, fps = self.quiet_for_an_hour(config, "A", "B",
                                                 alertmanager_urls=(fake_am.url,))
        fake_am.answer(fps[1])
        fake_am.status_body = None
        metrics = Metrics()
        worker = self.worker(dispatcher, session, metrics=metrics)
        with caplog.at_level(logging.WARNING, "firehouse.reconcile"):
            assert await worker.check() == "ok"
            dispatcher.now += timedelta(hours=1)
            fake_am.answer()
            fake_am.status_body = '{"uptime": "yesterday"}'
            assert await worker.check() == "ok"
        assert sample(metrics, "firehouse_stale_alerts_resolved_total") == 2
        (record,) = caplog.records
        assert "uptime" in record.getMessage()
        assert record.fields == {  # type: ignore[attr-defined]
            "alertmanager": fake_am.url,
            "error": f"{fake_am.url}: HTTP 404: '404 page not found'"}


class TestNewlyResolved:
    """newly_resolved counts what a decision resolves, not what was resolved before."""

    def test_counts_only_alerts_firing_before(self, config: Config) -> None:
        """An alert resolved by the decision counts; the same alert already resolved in the
        state before does not."""
        before, (fp,) = open_incidents(config, "A")
        gone = alert({"alertname": "A", "service": "postgres-payments"}, status="resolved",
                     fingerprint=fp)
        decision = decide(webhook(gone), config, before, NOW)
        after = apply(before, decision)
        assert newly_resolved((fp,), before, decision) == 1
        assert newly_resolved((fp,), after, decision) == 0
        assert newly_resolved(("another",), before, decision) == 0


# --------------------------------------------------------------------------- end to end

async def get_json(fh: FirehouseProcess, path: str) -> Any:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(fh.url + path) as response):
        assert response.status == 200, await response.text()
        return await response.json()


async def metric(fh: FirehouseProcess, name: str) -> float:
    """One sample of Firehouse's /metrics (`name` with its labels, as exposed); 0 if absent."""
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(fh.url + "/metrics") as response):
        text = await response.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def stale_setup(firehouse: FirehouseFactory, alertmanager: AlertmanagerFactory,
                      restart_grace: float = 0.0
                      ) -> tuple[FirehouseProcess, AlertmanagerProcess]:
    """A Firehouse checking stale alerts (2 s window, every 0.5 s) against a real
    Alertmanager that never sends resolves (`send_resolved: false`); by default, one just
    started proves absence at once (the restart grace has a test of its own)."""
    # Mutated below: the settings are written when Firehouse is configured, after
    # Alertmanager (which needs Firehouse's webhook URL) has its own URL.
    section: dict[str, Any] = {"stale_after": "2s", "check_interval": 0.5,
                               "restart_grace": restart_grace}
    # Without flap damping, an incident whose last alert resolves closes at once: the
    # damping has tests of its own.
    fh = await firehouse(start=False, settings={"alertmanager": section,
                                                "incidents": {"flap_damping_seconds": 0}})
    am = await alertmanager(fh)
    am.config["receivers"][0]["webhook_configs"][0]["send_resolved"] = False
    am.configure()
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.post(f"{am.url}/-/reload") as response):
        assert response.status == 200, await response.text()
    section["url"] = am.url
    fh.configure()
    await fh.start()
    return fh, am


async def opened_incident(fh: FirehouseProcess) -> dict[str, Any]:
    """The one incident Firehouse has opened, once it has."""
    found: list[dict[str, Any]] = []

    async def opened() -> bool:
        found[:] = (await get_json(fh, "/api/v1/incidents?status=open"))["incidents"]
        return bool(found)

    await wait_until(opened, WAIT, "an incident opened through Alertmanager")
    assert len(found) == 1, found
    incident: dict[str, Any] = await get_json(fh, f"/api/v1/incidents/{found[0]['id']}")
    return incident


@pytest.mark.e2e
class TestStaleEndToEnd:
    """Real Alertmanager -> real Firehouse -> PagerDuty stand-in, with resolves lost.

    Needs the engine (decide.stale_fingerprints and decide.reconcile): the acceptance test
    of the whole feature, worker and engine together.
    """

    LABELS: ClassVar[dict[str, str]] = {
        "alertname": "StaleReplicationLag", "service": "postgres-payments", "severity": "warning"}

    async def test_alert_gone_from_alertmanager_is_resolved(
        self, pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory,
        alertmanager: AlertmanagerFactory, session: aiohttp.ClientSession,
    ) -> None:
        """While Alertmanager has the alert, stale checks keep the incident open; once the
        alert ends there and no resolve is sent, Firehouse resolves it and its pages."""
        fh, am = await stale_setup(firehouse, alertmanager)
        started = datetime.now(UTC)
        await am.post_alerts([am_alert(self.LABELS, starts_at=started)])
        incident = await opened_incident(fh)
        (fingerprint,) = [a["fingerprint"] for a in incident["alerts"]]
        # The webhook's fingerprint is the API's.
        assert await AlertmanagerClient([am.url], session, 5.0).fingerprints() == {fingerprint}

        async def confirmed_twice() -> bool:
            return await metric(fh, 'firehouse_stale_checks_total{outcome="ok"}') >= 2

        await wait_until(confirmed_twice, WAIT, "two stale checks answered by Alertmanager")
        still = await get_json(fh, f"/api/v1/incidents/{incident['id']}")
        assert still["status"] == "open", still

        await am.post_alerts([am_alert(self.LABELS, starts_at=started,
                                       ends_at=datetime.now(UTC))])

        async def resolved() -> bool:
            found = await get_json(fh, f"/api/v1/incidents/{incident['id']}")
            return bool(found["status"] == "resolved")

        await wait_until(resolved, WAIT, "the incident resolved by the stale check")
        assert await metric(fh, "firehouse_stale_alerts_resolved_total") == 1
        triggers = {(b["routing_key"], b["dedup_key"]) for b in pagerduty.events
                    if b["event_action"] == "trigger"}
        assert triggers
        for routing_key, dedup_key in triggers:
            await pagerduty.wait_for(
                lambda b, k=routing_key, d=dedup_key: (
                    b["event_action"] == "resolve" and b["routing_key"] == k
                    and b["dedup_key"] == d), WAIT)

    async def test_alertmanager_down_flags_the_incident_stale(
        self, pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory,
        alertmanager: AlertmanagerFactory,
    ) -> None:
        """With Alertmanager gone, the incident gets a "stale" timeline note, is counted in
        the metrics, and stays open."""
        fh, am = await stale_setup(firehouse, alertmanager)
        await am.post_alerts([am_alert(self.LABELS, starts_at=datetime.now(UTC))])
        incident = await opened_incident(fh)
        await am.stop()
        found: dict[str, Any] = {}

        async def flagged() -> bool:
            found.update(await get_json(fh, f"/api/v1/incidents/{incident['id']}"))
            return any(note["kind"] == "stale" for note in found["timeline"])

        await wait_until(flagged, WAIT, 'a "stale" note on the incident')
        assert found["status"] == "open", found
        assert await metric(fh, 'firehouse_stale_checks_total{outcome="unreachable"}') >= 1
        assert await metric(fh, "firehouse_incidents_stale") == 1
        assert not [b for b in pagerduty.events if b["event_action"] == "resolve"]

    async def test_restarted_alertmanager_proves_nothing_until_grace(
        self, pagerduty: PagerDutyStandIn, firehouse: FirehouseFactory,
        alertmanager: AlertmanagerFactory, session: aiohttp.ClientSession,
    ) -> None:
        """A restarted Alertmanager has forgotten a still-firing alert until Prometheus
        sends it again: for restart_grace, the stale checks that find it missing leave
        the incident and its pages alone; once Alertmanager has been up that long and
        still lacks the alert (no Prometheus here re-sends it), the incident resolves."""
        grace = 8.0
        fh, am = await stale_setup(firehouse, alertmanager, restart_grace=grace)
        await am.post_alerts([am_alert(self.LABELS, starts_at=datetime.now(UTC))])
        incident = await opened_incident(fh)
        ok = 'firehouse_stale_checks_total{outcome="ok"}'
        await am.stop()
        await am.start()
        async with session.get(am.url + "/api/v2/status") as response:
            started = datetime.fromisoformat((await response.json())["uptime"])
        assert await AlertmanagerClient([am.url], session, 5.0).fingerprints() == set()
        checks = await metric(fh, ok)

        still: dict[str, Any] = {}

        async def checked_twice() -> bool:
            still.update(await get_json(fh, f"/api/v1/incidents/{incident['id']}"))
            return still["status"] != "open" or await metric(fh, ok) >= checks + 2

        # Two rounds that asked about the stale alert, and found it missing.
        await wait_until(checked_twice, WAIT, "two stale checks after the restart")
        assert still["status"] == "open", still
        assert not [b for b in pagerduty.events if b["event_action"] == "resolve"]

        async def resolved() -> bool:
            still.update(await get_json(fh, f"/api/v1/incidents/{incident['id']}"))
            return bool(still["status"] == "resolved")

        await wait_until(resolved, WAIT, "the incident resolved once the grace is over")
        resolved_at = datetime.fromisoformat(still["resolved_at"])
        assert (resolved_at - started).total_seconds() >= grace, (started, resolved_at)
        assert await metric(fh, "firehouse_stale_alerts_resolved_total") == 1
