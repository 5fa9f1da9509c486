"""The HTTP edge: a real Firehouse on a free port, with the PagerDuty stand-in behind it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from daemon.alerts import parse_body
from daemon.app import Firehouse
from daemon.config import load_config
from daemon.decide import OPEN, Decision, State, decide
from daemon.errors import StoreError
from daemon.store import Store
from daemon.store.sqlite import SqliteStore
from tests.conftest import NewStore
from tests.helpers import (
    NOW,
    PAGERDUTY_FIXTURES,
    SETTINGS,
    ZERO_TIME,
    BeforeWrite,
    alert,
    body,
    config_env,
    env_var,
    fixture_files,
    free_port,
    make_config,
    pagerduty_webhook,
    resolved,
    routing_key,
    sign_pagerduty,
    target_names,
    wait_until,
    write_settings,
)
from tests.pagerduty_standin import PagerDutyStandIn

JSON = {"Content-Type": "application/json"}
TOKEN = "s3cret-bearer-token"
USER, PASSWORD = "alertmanager", "hunter2"


class FlakyStore(BeforeWrite):
    """In front of a store class: writes fail while `failing` is set, as a full disk would."""

    failing = False

    async def before_write(self, decision: Decision) -> None:
        """Fail like a broken disk, or let the decision be written."""
        if self.failing:
            raise StoreError(f"could not write to {type(self).__name__}: disk I/O error")


class Running:
    """A started Firehouse and how to reach it."""

    def __init__(self, firehouse: Firehouse, session: aiohttp.ClientSession) -> None:
        self.firehouse = firehouse
        self.session = session
        self.url = f"http://127.0.0.1:{firehouse.port}"

    async def post(self, data: bytes, headers: dict[str, str] | None = None,
                   path: str = "/webhook/alertmanager") -> tuple[int, Any]:
        """POST to Firehouse; the status and the decoded JSON answer."""
        async with self.session.post(self.url + path, data=data,
                                     headers=JSON if headers is None else headers) as response:
            return response.status, await response.json()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """GET from Firehouse; the status and the body text."""
        async with self.session.get(self.url + path, headers=headers) as response:
            return response.status, await response.text()

    async def drained(self) -> None:
        """Wait until the outbox holds nothing pending."""
        async def empty() -> bool:
            return (await self.firehouse.store.outbox_counts()).get("pending", 0) == 0
        await wait_until(empty, what="empty outbox")


@asynccontextmanager
async def serving(tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
                  settings: Path = SETTINGS, store: Store | None = None, *,
                  dry_run: bool = False) -> AsyncIterator[Running]:
    """Firehouse started on 127.0.0.1:0 with routing keys (none in `dry_run`), paging the
    stand-in; its state in PostgreSQL at `database_url`, or when that is empty in a file in
    `tmp_path`."""
    env = config_env(pagerduty_url=pd.url, state=tmp_path / "state.db",
                     listen="127.0.0.1:0", database_url=database_url, dry_run=dry_run)
    firehouse = Firehouse(load_config(settings, env=env), settings, store=store, env=env)
    await firehouse.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(firehouse, session)
    finally:
        await firehouse.stop()


def pg_down() -> bytes:
    """A notification with one critical alert on the payments database (three pages)."""
    return body(alert({"alertname": "PostgresDown", "service": "postgres-payments",
                       "severity": "critical"}))


def basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestWebhook:
    @pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
    async def test_every_real_payload_is_accepted_and_paged_validly(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn, path: Path
    ) -> None:
        """Each real payload is accepted and pages each firing alert's targets with valid events."""
        raw = path.read_bytes()
        notification = parse_body(raw)
        expected = decide(notification, make_config(), State(), NOW)
        opened = [i for i in expected.incidents if i.status == OPEN]
        # Every firing alert is in exactly one incident; only mapped ones share one.
        members = [fp for i in opened for fp in i.alerts]
        assert sorted(members) == sorted({a.fingerprint for a in notification.alerts
                                          if a.firing})
        assert all(len(i.alerts) == 1 for i in opened if not i.mapped)

        async with serving(tmp_path, database_url, pd) as firehouse:
            status, answer = await firehouse.post(raw)
            await firehouse.drained()

        assert status == 200, answer
        assert answer["events"] == len(expected.events)
        assert pd.invalid == []
        assert {r.status for r in pd.received} <= {202}
        sent = [b for b in pd.events if b["event_action"] == "trigger"]
        assert len(sent) == sum(len(i.pages) for i in opened)
        for event in sent:
            # firehouse/{incident}/{target}/{severity or business update}
            target = event["dedup_key"].split("/")[2]
            assert event["routing_key"] == routing_key(target)

    @pytest.mark.parametrize(
        ("data", "field"),
        [(b"{this is not json", "JSON"), (b'{"receiver": "web", "status": "firing"}', "'alerts'"),
         (b'{"alerts": [], "truncatedAlerts": -1}', "'truncatedAlerts'")],
        ids=["not-json", "no-alerts", "bad-truncated"],
    )
    async def test_malformed_body_is_400_naming_the_field(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn, data: bytes, field: str
    ) -> None:
        """A body that can never be processed is answered 400 with a message naming the problem."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            status, answer = await firehouse.post(data)

        assert status == 400
        assert field in answer["error"]

    async def test_plain_text_is_415(self, tmp_path: Path, database_url: str,
                                     pd: PagerDutyStandIn) -> None:
        """A body sent as text/plain is refused with 415."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            status, answer = await firehouse.post(pg_down(), {"Content-Type": "text/plain"})

        assert status == 415
        assert "application/json" in answer["error"]

    async def test_body_above_the_limit_is_413(self, tmp_path: Path, database_url: str,
                                               pd: PagerDutyStandIn) -> None:
        """A body larger than max_body_bytes is refused with 413; a smaller one is accepted."""
        settings = write_settings(tmp_path, max_body_bytes=2048)
        huge = body(alert({"alertname": "Big", "service": "cart"},
                          annotations={"description": "x" * 4096}))

        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            too_big, answer = await firehouse.post(huge)
            fine, _ = await firehouse.post(pg_down())

        assert too_big == 413
        assert "2048" in answer["error"]
        assert fine == 200

    @pytest.mark.parametrize(
        ("authorization", "expected"),
        [(None, 401), (f"Bearer {TOKEN}", 200), ("Bearer wrong-token", 401),
         (basic(USER, PASSWORD), 200), (basic(USER, "wrong"), 401), ("Basic !!!", 401)],
        ids=["none", "bearer", "bad-bearer", "basic", "bad-basic", "garbled-basic"],
    )
    async def test_credentials_are_required(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, authorization: str | None, expected: int
    ) -> None:
        """With auth configured, a webhook needs the bearer token or the basic credentials."""
        settings = write_settings(tmp_path, auth={
            "bearer_token": TOKEN, "basic_auth": {"username": USER, "password": PASSWORD}})
        headers = dict(JSON)
        if authorization is not None:
            headers["Authorization"] = authorization

        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, _ = await firehouse.post(pg_down(), headers)
            api_status, _ = await firehouse.get("/api/v1/incidents", headers)

        assert status == expected
        assert api_status == expected

    async def test_rejected_credentials_are_counted_and_logged(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A webhook refused for its credentials is counted and logged, since Alertmanager
        drops it."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN})
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            with caplog.at_level(logging.WARNING, logger="firehouse.server"):
                for _ in range(3):
                    status, _ = await firehouse.post(
                        pg_down(), {**JSON, "Authorization": "Bearer wrong"})
            _, metrics = await firehouse.get("/metrics")

        assert status == 401
        assert 'firehouse_webhooks_total{outcome="unauthorized"} 3.0' in metrics
        warnings = [r.getMessage() for r in caplog.records
                    if "without valid credentials" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited
        assert "path=/webhook/alertmanager" in warnings[0]

    @pytest.mark.parametrize("protect", [False, True])
    async def test_metrics_are_open_unless_protected(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn, protect: bool
    ) -> None:
        """/metrics is open by default, like health and readiness; `auth.protect_metrics`
        puts it behind the webhook's credentials, never the health endpoints."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN,
                                                  "protect_metrics": protect})
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            bare, _ = await firehouse.get("/metrics")
            with_token, text = await firehouse.get(
                "/metrics", {"Authorization": f"Bearer {TOKEN}"})
            health = [(await firehouse.get(p))[0] for p in ("/-/healthy", "/-/ready")]

        assert bare == (401 if protect else 200)
        assert with_token == 200
        assert "firehouse_incidents_open" in text
        assert health == [200, 200]

    async def test_a_malformed_alert_is_answered_and_still_paged(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
    ) -> None:
        """An alert Alertmanager would never resend (the notification is answered 200) is
        not dropped: paged on the service it names, flagged, the reason in its summary;
        sent again, it is the same alert, paging no one twice."""
        broken = {"status": "firing", "startsAt": "not-a-date", "endsAt": ZERO_TIME,
                  "labels": {"alertname": "DnsDown", "service": "dns",
                             "severity": "critical", "shard": 3}}
        data = json.dumps({"receiver": "r", "status": "firing", "alerts": [broken]}).encode()
        async with serving(tmp_path, database_url, pd) as firehouse:
            status, answer = await firehouse.post(data)
            again, repeated = await firehouse.post(data)
            await firehouse.drained()

        assert (status, again) == (200, 200)
        reason = "alerts[0]: field labels.shard must be a string, got int"  # the first
        assert answer["rejected"] == [reason]
        assert answer["events"] > 0
        assert repeated["events"] == 0
        triggers = [e for e in pd.events if e["event_action"] == "trigger"]
        assert {e["routing_key"] for e in triggers} >= {
            routing_key("network-oncall"), routing_key("command-center")}
        technical = [e for e in triggers
                     if e["payload"]["custom_details"].get("alert") == "DnsDown"]
        assert technical
        for event in technical:
            details = event["payload"]["custom_details"]
            assert details["labels"]["firehouse_malformed"] == "true"
            assert "shard" not in details["labels"]  # not a string: not read
            assert reason in details["annotations"]["summary"]
            assert reason in event["payload"]["summary"]

    async def test_replayed_body_pages_once(self, tmp_path: Path, database_url: str,
                                            pd: PagerDutyStandIn) -> None:
        """The same notification sent twice (an HA pair) opens each PagerDuty alert once."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            first, one = await firehouse.post(pg_down())
            second, two = await firehouse.post(pg_down())
            await firehouse.drained()

        assert (first, second) == (200, 200)
        # Three people and the business line's update (the tier-1 rule asks for updates).
        assert (one["events"], two["events"]) == (4, 0)
        assert len(pd.events) == 4
        assert sorted(pd.incidents_opened.values()) == [1, 1, 1, 1]
        assert sum(1 for e in pd.events if e["dedup_key"].endswith("/business-line/update-1")
                   and e["payload"]["custom_details"]["reason"] == "business update") == 1

    async def test_store_failure_is_503_and_the_retry_pages(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn
    ) -> None:
        """A failed commit is answered 503, and the retry, once the disk is back, pages."""
        store = new_store(FlakyStore)
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            store.failing = True
            refused, answer = await firehouse.post(pg_down())
            store.failing = False
            accepted, retried = await firehouse.post(pg_down())
            await firehouse.drained()
            _, metrics = await firehouse.get("/metrics")

        assert refused == 503
        assert "retry" in answer["error"]
        assert accepted == 200
        assert len(retried["incidents_opened"]) == 1
        assert len(pd.events) == 4  # three people and the business line
        assert 'firehouse_webhooks_total{outcome="store_error"} 1.0' in metrics

    async def test_not_accepting_is_503_and_not_ready(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """While not accepting (starting or stopping) webhooks get 503 and readiness fails."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            firehouse.firehouse.accepting = False
            status, _ = await firehouse.post(pg_down())
            ready, _ = await firehouse.get("/-/ready")
            healthy, _ = await firehouse.get("/-/healthy")

        assert (status, ready, healthy) == (503, 503, 200)


class BrokenDiskStore:
    """In front of a store class: a store whose database refuses every write while broken,
    as a full disk would. SQLite: the store's own connection turns query-only. PostgreSQL:
    the store's schema is renamed away (reads fail too), and back."""

    def __init__(self, where: Any) -> None:
        super().__init__(where)
        self.where = where
        self.broken = False

    async def set_broken(self, broken: bool) -> None:
        """Refuse (or allow again) every write."""
        if isinstance(self, SqliteStore):
            await self._run(lambda: self.conn.execute(f"PRAGMA query_only={int(broken)}"))
        elif broken != self.broken:
            dsn = urlsplit(self.where)
            schema = dsn.query.removeprefix("search_path=")
            renames = (schema, f"{schema}_broken")
            old, new = renames if broken else reversed(renames)
            conn = await asyncpg.connect(urlunsplit(dsn._replace(query="")))
            try:
                await conn.execute(f'ALTER SCHEMA "{old}" RENAME TO "{new}"')
            finally:
                await conn.close()
        self.broken = broken

    async def probed_at(self) -> Any:
        """The time of the store's last committed probe (`meta.probed_at`), or None."""
        if isinstance(self, SqliteStore):
            return await self._run(lambda: self.conn.execute(
                "SELECT value FROM meta WHERE key = 'probed_at'").fetchone())
        conn = await asyncpg.connect(self.where)
        try:
            return await conn.fetchval("SELECT value FROM meta WHERE key = 'probed_at'")
        finally:
            await conn.close()

    async def close(self) -> None:
        if self.broken:
            await self.set_broken(False)  # the schema is dropped by its name after the test
        await super().close()  # type: ignore[misc]


class HangingProbeStore:
    """In front of a store class: probes hang while `hang` is set (a database that stopped
    answering without closing its connections), and a hung probe takes `linger` seconds to
    give up once cancelled (the driver cancelling the query and cleaning its connection up
    with a database that still does not answer)."""

    hang = False
    linger = 0.0

    async def probe(self, now: Any) -> None:
        if self.hang:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                await asyncio.sleep(self.linger)
                raise
        await super().probe(now)  # type: ignore[misc]


class CountingProbeStore:
    """In front of a store class: counts the probes."""

    probes = 0

    async def probe(self, now: Any) -> None:
        self.probes += 1
        await super().probe(now)  # type: ignore[misc]


async def timed_ready(firehouse: Running) -> tuple[int, float]:
    """GET /-/ready: its status and how long it took to answer (seconds)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await firehouse.get("/-/ready")
    return status, loop.time() - started


async def sample_readiness(firehouse: Running, since: float, seconds: float
                           ) -> list[tuple[float, int, float]]:
    """GET /-/ready every 50 ms until `seconds` after the loop time `since`: (time since,
    status, how long it took) each."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, int, float]] = []
    while (elapsed := loop.time() - since) < seconds:
        seen.append((elapsed, *await timed_ready(firehouse)))
        await asyncio.sleep(0.05)
    return seen


def assert_503_at_once_within(seen: list[tuple[float, int, float]], bound: float) -> None:
    """Every readiness check answered at once; 503 from within `bound` of the hang, and
    from then on."""
    slowest = max(took for _, _, took in seen)
    assert slowest < 0.2, f"a readiness check took {slowest:.2f}s: {seen}"
    first_503 = next((since for since, status, _ in seen if status == 503), None)
    assert first_503 is not None, seen
    assert first_503 <= bound + 0.2, f"503 only {first_503:.2f}s after the hang: {seen}"
    assert {status for since, status, _ in seen if since >= first_503} == {503}, seen


class TestStoreHealth:
    async def test_failed_write_makes_readiness_fail_until_a_write_succeeds(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn
    ) -> None:
        """After a write to the store fails, /-/ready says so until a write succeeds again."""
        store = new_store(BrokenDiskStore)
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            await store.set_broken(True)
            refused, _ = await firehouse.post(pg_down())
            not_ready, _ = await firehouse.get("/-/ready")
            await store.set_broken(False)
            accepted, _ = await firehouse.post(pg_down())
            ready, _ = await firehouse.get("/-/ready")

        assert (refused, not_ready, accepted, ready) == (503, 503, 200, 200)

    async def test_metrics_are_served_through_an_outage_of_the_store(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn,
        backend: str
    ) -> None:
        """While the store refuses writes (and, on PostgreSQL, reads) /metrics still answers,
        with firehouse_store_up 0; once a write succeeds again, 1. The API answers a read
        the store cannot make with 503, not 500."""
        store = new_store(BrokenDiskStore)
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            _, before = await firehouse.get("/metrics")
            await store.set_broken(True)
            await firehouse.post(pg_down())
            during_status, during = await firehouse.get("/metrics")
            api_status, api = await firehouse.get("/api/v1/incidents")
            await store.set_broken(False)
            await firehouse.post(pg_down())
            _, after = await firehouse.get("/metrics")

        assert during_status == 200
        assert "firehouse_webhooks_total" in during
        assert ["firehouse_store_up 1.0" in text for text in (before, during, after)] == [
            True, False, True]
        assert "firehouse_store_up 0.0" in during
        if backend == "postgres":  # reads fail too (SQLite's broken disk still reads)
            assert api_status == 503
            assert "state store unavailable" in api
        else:
            assert api_status == 200

    @pytest.mark.parametrize("backend", ["postgres"])  # only a shared store is probed so
    async def test_a_store_that_hangs_makes_readiness_fail_until_it_answers(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn,
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A database that hangs instead of refusing fails no write (none is tried) and sets
        no error. Readiness answers at once all along, from the background probe's last
        outcome: 503 once a probe has gone unanswered for STORE_PROBE_TIMEOUT (within the
        probe interval plus timeout of the hang, however long the hung probe then takes to
        give up), until a probe is answered again."""
        from daemon import server  # noqa: PLC0415

        monkeypatch.setattr(server, "STORE_PROBE_TIMEOUT", 0.3)
        monkeypatch.setattr(server, "STORE_PROBE_SECONDS", 0.5)
        bound = 0.3 + 0.5
        store = new_store(HangingProbeStore)
        store.linger = 2.0
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            before = await timed_ready(firehouse)
            store.hang = True
            hung_at = asyncio.get_running_loop().time()
            seen = await sample_readiness(firehouse, hung_at, bound + 3.0)
            store.hang = False

            async def ready_again() -> bool:
                return (await timed_ready(firehouse))[0] == 200

            await wait_until(ready_again, 10.0, "ready again once probes are answered")

        assert before[0] == 200
        assert_503_at_once_within(seen, bound)

    @pytest.mark.parametrize("backend", ["postgres"])
    async def test_a_hung_postgresql_turns_readiness_503_within_the_bound(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The real thing: PostgreSQL stops answering (every byte to and from it held, its
        connections open). Every /-/ready answers at once, and says 503 within the probe
        interval plus the probe timeout; /-/healthy stays 200. Once PostgreSQL answers
        again, readiness comes back."""
        from daemon import server  # noqa: PLC0415
        from tests.test_postgres import Proxy, through  # noqa: PLC0415

        monkeypatch.setattr(server, "STORE_PROBE_TIMEOUT", 0.5)
        monkeypatch.setattr(server, "STORE_PROBE_SECONDS", 1.0)
        bound = 0.5 + 1.0
        proxy = Proxy(free_port(), database_url)
        await proxy.start()
        try:
            async with serving(tmp_path, through(proxy.port, database_url), pd) as firehouse:
                before = await timed_ready(firehouse)
                proxy.freeze()
                hung_at = asyncio.get_running_loop().time()
                seen = await sample_readiness(firehouse, hung_at, bound + 3.0)
                healthy, _ = await firehouse.get("/-/healthy")
                proxy.thaw()

                async def ready_again() -> bool:
                    return (await timed_ready(firehouse))[0] == 200

                await wait_until(ready_again, 30.0, "ready again once PostgreSQL answers")
        finally:
            proxy.thaw()
            await proxy.stop()

        assert (before[0], healthy) == (200, 200)
        assert_503_at_once_within(seen, bound)

    async def test_readiness_comes_back_without_a_webhook_once_the_disk_is_fixed(
        self, tmp_path: Path, database_url: str, new_store: NewStore,
        pd: PagerDutyStandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the store is unhealthy, it is probed in the background with a committed
        write: fixing the disk makes the daemon ready again though no webhook gets through
        (a load balancer gated on readiness would send none)."""
        monkeypatch.setattr("daemon.server.STORE_PROBE_SECONDS", 0.1)
        store = new_store(BrokenDiskStore)
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            await store.set_broken(True)
            refused, _ = await firehouse.post(pg_down())
            still_broken, _ = await firehouse.get("/-/ready")
            await store.set_broken(False)

            async def fixed() -> bool:
                return (await firehouse.get("/-/ready"))[0] == 200

            await wait_until(fixed, 10.0, "ready once the disk is fixed")
            probed = await store.probed_at()

        assert (refused, still_broken) == (503, 503)
        assert probed is not None

    async def test_readiness_checks_never_probe_the_store_themselves(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn,
        monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A burst of readiness checks on a broken store probes nothing: they answer from
        the background probe's last outcome, which runs on its own schedule."""
        monkeypatch.setattr("daemon.server.STORE_PROBE_SECONDS", 3600.0)
        store = new_store(CountingProbeStore, BrokenDiskStore)
        async with serving(tmp_path, database_url, pd, store=store) as firehouse:
            await store.set_broken(True)
            await firehouse.post(pg_down())
            probes = store.probes
            answers = [await timed_ready(firehouse) for _ in range(20)]
            await store.set_broken(False)
            for _ in range(5):  # what they answer now depends on other writes, not on them
                await timed_ready(firehouse)
            probes_after = store.probes

        assert {status for status, _ in answers} == {503}
        assert probes_after == probes

class TestDeadLetters:
    async def test_a_refused_page_shows_and_is_sent_again_with_the_rotated_key(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """Pages PagerDuty refused read "not delivered" in the API, the timeline and the
        board; once the routing key is rotated, POST /api/v1/outbox/{id}/retry sends one
        with the new key; retrying it again is a 409, an unknown event a 404."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            pd.set_mode(400)
            _, answer = await firehouse.post(pg_down())
            (incident_id,) = answer["incidents_opened"]
            await firehouse.drained()
            _, refused = await firehouse.get(f"/api/v1/incidents/{incident_id}")
            _, board = await firehouse.get("/")
            pd.set_mode("ok")
            rotated = routing_key("dba-oncall", "rotated")
            assert firehouse.firehouse.env is not None
            firehouse.firehouse.env[env_var("dba-oncall")] = rotated
            reloaded, _ = await firehouse.post(b"", path="/-/reload")
            (dead,) = [p["delivery"] for p in json.loads(refused)["pages"]
                       if p["target"] == "dba-oncall"]
            retried, requeued = await firehouse.post(
                b"", path=f"/api/v1/outbox/{dead['event_id']}/retry")
            await firehouse.drained()
            again, conflict = await firehouse.post(
                b"", path=f"/api/v1/outbox/{dead['event_id']}/retry")
            missing, _ = await firehouse.post(b"", path="/api/v1/outbox/999999/retry")
            _, after = await firehouse.get(f"/api/v1/incidents/{incident_id}")
            # The page now remembers the rotated key: its resolve will go where the trigger
            # went.
            (remembered,) = [p.routing_key for p in firehouse.firehouse.dispatcher.state.open[
                incident_id].pages if p.target == "dba-oncall"]

        pages = json.loads(refused)["pages"]
        assert {p["delivery"]["state"] for p in pages} == {"dead"}
        assert "client_error" in dead["last_error"]
        assert dead["last_status"] == 400
        notes = [n["message"] for n in json.loads(refused)["timeline"]
                 if n["kind"] == "delivery_failed"]
        assert len(notes) == len(pages)
        assert any("to dba-oncall (HTTP 400" in n for n in notes)
        assert "✖ not delivered: client_error" in board
        assert (reloaded, retried, again, missing) == (200, 200, 409, 404)
        assert [e["state"] for e in requeued["requeued"]] == ["pending"]
        assert "not dead" in conflict["error"]
        assert pd.state(rotated, dead_key(pages, "dba-oncall")) == "triggered"
        delivered = {p["target"]: p["delivery"]["state"] for p in json.loads(after)["pages"]}
        assert delivered["dba-oncall"] == "delivered"
        assert {n["kind"] for n in json.loads(after)["timeline"]} >= {"delivery_retried",
                                                                     "rekeyed"}
        assert remembered == rotated
        assert rotated not in after

    async def test_a_refused_resolve_shows_the_page_still_open_in_pagerduty(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """The incident resolves, but PagerDuty refuses the resolves (400): each page's
        `delivery` in the API is its resolve's, dead with PagerDuty's reason, not the
        trigger's "delivered"; the board lists the incident under "Recently resolved" with
        "resolve not delivered", and so does the incident page."""
        settings = write_settings(tmp_path, incidents={"flap_damping_seconds": 0})
        firing = alert({"alertname": "PostgresDown", "service": "postgres-payments",
                        "severity": "critical"})
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            _, answer = await firehouse.post(body(firing))
            (incident_id,) = answer["incidents_opened"]
            await firehouse.drained()
            pd.set_mode(400)
            status, _ = await firehouse.post(body(resolved(firing)))
            await firehouse.drained()
            _, one = await firehouse.get(f"/api/v1/incidents/{incident_id}")
            _, listed = await firehouse.get("/api/v1/incidents?status=resolved")
            _, board = await firehouse.get("/")
            _, page = await firehouse.get(f"/incidents/{incident_id}")

        incident = json.loads(one)
        assert status == 200
        assert incident["status"] == "resolved"
        pages = incident["pages"]
        assert {p["status"] for p in pages} == {"resolved"}
        assert {p["delivery"]["action"] for p in pages} == {"resolve"}
        assert {p["delivery"]["state"] for p in pages} == {"dead"}
        assert {p["delivery"]["last_status"] for p in pages} == {400}
        assert [p["delivery"] for p in json.loads(listed)["incidents"][0]["pages"]] == [
            p["delivery"] for p in pages]
        resolves = {e["id"] for e in incident["events"] if e["action"] == "resolve"}
        assert {p["delivery"]["event_id"] for p in pages} <= resolves
        recently = board.split('id="resolved-h"', 1)[1]
        assert "✖ resolve not delivered: client_error" in recently
        assert "still open in PagerDuty" in recently
        assert "✖ resolve not delivered: client_error" in page

    async def test_retry_needs_the_api_credentials(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """POST /api/v1/outbox/{id}/retry is behind the API's authentication."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN})
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            denied, _ = await firehouse.post(b"", path="/api/v1/outbox/1/retry")
            allowed, _ = await firehouse.post(b"", {"Authorization": f"Bearer {TOKEN}"},
                                              path="/api/v1/outbox/1/retry")

        assert (denied, allowed) == (401, 404)


def dead_key(pages: list[dict[str, Any]], target: str) -> str:
    """The dedup key of `target`'s page."""
    (key,) = [p["dedup_key"] for p in pages if p["target"] == target]
    return str(key)


class TestListLimits:
    @pytest.mark.parametrize("path", ["/api/v1/incidents", "/api/v1/outbox",
                                      "/api/v1/changes"])
    @pytest.mark.parametrize("limit", ["abc", "-1", "0", "1001", "2.5", ""])
    async def test_a_bad_limit_is_400_naming_the_range(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn, path: str, limit: str
    ) -> None:
        """A limit that is not a whole number from 1 to 1000 is refused, never replaced."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            status, text = await firehouse.get(f"{path}?limit={limit}")

        assert status == 400
        assert json.loads(text)["error"] == (
            f"limit must be a whole number from 1 to 1000, got {json.dumps(limit)}")

    async def test_a_good_limit_is_used(self, tmp_path: Path, database_url: str,
                                        pd: PagerDutyStandIn) -> None:
        """limit=1 lists one incident; the bounds 1 and 1000 are accepted."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            await firehouse.post(pg_down())
            await firehouse.post(body(alert({"alertname": "Down", "service": "legacy-x",
                                             "severity": "critical"})))
            one = await firehouse.get("/api/v1/incidents?limit=1")
            most = await firehouse.get("/api/v1/incidents?limit=1000")

        assert (one[0], most[0]) == (200, 200)
        assert len(json.loads(one[1])["incidents"]) == 1
        assert len(json.loads(most[1])["incidents"]) == 2


class TestEndpoints:
    async def test_health_metrics_and_api(self, tmp_path: Path, database_url: str,
                                          pd: PagerDutyStandIn) -> None:
        """Health, readiness, metrics, incidents and outbox answer, never showing a routing key."""
        async with serving(tmp_path, database_url, pd) as firehouse:
            healthy = await firehouse.get("/-/healthy")
            ready = await firehouse.get("/-/ready")
            _, answer = await firehouse.post(pg_down())
            await firehouse.drained()
            (incident_id,) = answer["incidents_opened"]
            metrics = await firehouse.get("/metrics")
            listed = await firehouse.get("/api/v1/incidents?status=open")
            one = await firehouse.get(f"/api/v1/incidents/{incident_id}")
            missing = await firehouse.get("/api/v1/incidents/nope")
            outbox = await firehouse.get("/api/v1/outbox")
            bad_filter = await firehouse.get("/api/v1/outbox?state=lost")

        assert healthy[0] == ready[0] == 200
        assert metrics[0] == 200
        assert 'firehouse_webhooks_total{outcome="accepted"} 1.0' in metrics[1]
        assert 'firehouse_outbox_events{state="delivered"} 4.0' in metrics[1]
        assert [i["id"] for i in json.loads(listed[1])["incidents"]] == [incident_id]
        assert {n["kind"] for n in json.loads(one[1])["timeline"]} >= {"opened", "paged"}
        assert missing[0] == 404
        assert json.loads(outbox[1])["counts"] == {"delivered": 4}
        assert bad_filter[0] == 400
        for text in (listed[1], one[1], outbox[1], metrics[1]):
            for target in target_names():
                assert routing_key(target) not in text

    async def test_reload_keeps_the_old_config_when_the_new_one_is_bad(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """POST /-/reload applies a valid file and refuses a broken one, keeping the old config."""
        settings = write_settings(tmp_path)
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            good, reloaded = await firehouse.post(b"", path="/-/reload")
            digest = firehouse.firehouse.config.digest
            settings.write_text(settings.read_text() + "\nno_such_setting: 1\n")
            bad, refused = await firehouse.post(b"", path="/-/reload")
            still = firehouse.firehouse.config.digest
            status, _ = await firehouse.post(pg_down())
            _, metrics = await firehouse.get("/metrics")

        assert (good, reloaded["config_digest"]) == (200, digest)
        assert bad == 400
        assert any("no_such_setting" in p for p in refused["problems"])
        assert still == digest
        assert status == 200
        assert "firehouse_config_last_reload_successful 0.0" in metrics

    async def test_reload_warns_about_settings_that_need_a_restart(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reload that changes a restart-only setting warns that the old value stays in force."""
        settings = write_settings(tmp_path, max_body_bytes=2048)
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            write_settings(tmp_path, max_body_bytes=1 << 20)
            status, _ = await firehouse.post(b"", path="/-/reload")
            big = body(alert({"alertname": "Big"}, annotations={"description": "x" * 4096}))
            too_big, _ = await firehouse.post(big)

        assert status == 200
        assert "max_body_bytes changes only on restart; still using 2048" in caplog.text
        assert too_big == 413


PD_SECRET = "pd-subscription-secret-for-the-route-tests"
PD_PATH = "/webhook/pagerduty"


def with_pagerduty_webhook(tmp_path: Path, secrets: list[str] | None, **changes: Any) -> Path:
    """The repository's settings with `pagerduty.webhook_secret` set (None: left unset)."""
    pagerduty: dict[str, Any] = {"url": "https://events.pagerduty.com"}
    if secrets is not None:
        pagerduty["webhook_secret"] = secrets
    return write_settings(tmp_path, pagerduty=pagerduty, **changes)


def signed(data: bytes, secret: str = PD_SECRET) -> dict[str, str]:
    """Headers as PagerDuty sends a v3 webhook signed with `secret`."""
    return {**JSON, "X-PagerDuty-Signature": sign_pagerduty(data, secret)}


async def open_incident(firehouse: Running) -> str:
    """Open the payments-database incident and return the dedup key of its page to the
    database's technical lead."""
    status, answer = await firehouse.post(pg_down())
    assert status == 200, answer
    (incident_id,) = answer["incidents_opened"]
    _, text = await firehouse.get(f"/api/v1/incidents/{incident_id}")
    (key,) = [p["dedup_key"] for p in json.loads(text)["pages"] if p["target"] == "dba-oncall"]
    assert isinstance(key, str)
    return key


class TestPagerDutyWebhook:
    async def test_signed_acknowledgement_of_a_page_is_accepted_and_matched(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A signed incident.acknowledged for one of Firehouse's pages is decided and answered
        200, saying that it matched; one for a key Firehouse never sent matches nothing."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            key = await open_incident(firehouse)
            ack = pagerduty_webhook("incident.acknowledged", key, agent="Ann Oncall")
            status, answer = await firehouse.post(ack, signed(ack), path=PD_PATH)
            other = pagerduty_webhook("incident.acknowledged", "someone-elses-key")
            other_status, unmatched = await firehouse.post(other, signed(other), path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert status == 200, answer
        assert answer == {"status": "success", "event_type": "incident.acknowledged",
                          "dedup_key": key, "matched": True}
        assert other_status == 200
        assert unmatched["matched"] is False
        assert 'firehouse_pagerduty_webhooks_total{outcome="accepted"} 2.0' in metrics

    async def test_real_pagerduty_delivery_with_its_own_signature(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """Bodies and signatures a PagerDuty account sent are accepted under its secret: the
        test ping is ignored, the acknowledgement decided (no page of ours: unmatched)."""
        signatures = json.loads((PAGERDUTY_FIXTURES / "signatures.json").read_text())
        settings = with_pagerduty_webhook(tmp_path, ["an-old-secret", signatures["secret"]])
        answers = {}
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            for name in ("aldaviva_pagey.ping.json", "aldaviva_incident.acknowledged.json"):
                headers = {**JSON, "X-PagerDuty-Signature":
                           signatures["x-pagerduty-signature"][name]}
                answers[name] = await firehouse.post((PAGERDUTY_FIXTURES / name).read_bytes(),
                                                     headers, path=PD_PATH)

        assert answers["aldaviva_pagey.ping.json"] == (200, {
            "status": "ignored", "reason": "Firehouse does not act on this event type"})
        assert answers["aldaviva_incident.acknowledged.json"] == (200, {
            "status": "success", "event_type": "incident.acknowledged",
            "dedup_key": "dfead9d88e0649e8b7dee514b1875756", "matched": False})

    @pytest.mark.parametrize("signature", [
        None, "", "v1=" + "0" * 64, "garbage", "v1=\u00e9", "sha256=abc",
    ], ids=["unsigned", "empty", "forged", "garbage", "non-ascii", "other-scheme"])
    async def test_bad_signature_is_401_and_decides_nothing(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, monkeypatch: pytest.MonkeyPatch,
        signature: str | None
    ) -> None:
        """Without a signature made with a configured secret, the webhook is refused with 401
        before it is parsed, and the engine is not run."""
        def must_not_run(*args: Any) -> Decision:
            raise AssertionError("the engine ran on an unauthenticated webhook")

        monkeypatch.setattr("daemon.server.on_pagerduty", must_not_run)
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        ack = pagerduty_webhook("incident.acknowledged", "firehouse/x/dba-oncall")
        headers = dict(JSON)
        if signature is not None:
            headers["X-PagerDuty-Signature"] = signature
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(ack, headers, path=PD_PATH)
            wrong_secret, _ = await firehouse.post(ack, signed(ack, "not-the-secret"),
                                                   path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert (status, wrong_secret) == (401, 401)
        assert "X-PagerDuty-Signature" in answer["error"]
        assert 'firehouse_pagerduty_webhooks_total{outcome="unauthorized"} 2.0' in metrics

    async def test_rejections_are_logged_at_most_every_10s(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A burst of forged webhooks is counted, and logged once."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        ack = pagerduty_webhook("incident.acknowledged", "firehouse/x/dba-oncall")
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            with caplog.at_level(logging.WARNING, logger="firehouse.server"):
                for _ in range(3):
                    await firehouse.post(ack, signed(ack, "forged"), path=PD_PATH)

        warnings = [r.getMessage() for r in caplog.records
                    if "without a valid X-PagerDuty-Signature" in r.getMessage()]
        assert len(warnings) == 1
        assert "path=/webhook/pagerduty" in warnings[0]

    async def test_not_configured_is_403_saying_how(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """Without a webhook secret the route refuses everything with 403, naming the setting
        and the variable to set."""
        settings = with_pagerduty_webhook(tmp_path, None)
        ack = pagerduty_webhook("incident.acknowledged", "firehouse/x/dba-oncall")
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(ack, signed(ack), path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert status == 403
        assert "pagerduty.webhook_secret" in answer["error"]
        assert "$FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET" in answer["error"]
        assert 'firehouse_pagerduty_webhooks_total{outcome="unconfigured"} 1.0' in metrics

    async def test_body_above_the_limit_is_413(self, tmp_path: Path, database_url: str,
                                               pd: PagerDutyStandIn
                                               ) -> None:
        """A webhook larger than max_body_bytes is refused with 413, signed or not."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET], max_body_bytes=2048)
        huge = pagerduty_webhook("incident.reassigned", "firehouse/x/dba-oncall",
                                 assignees=["x" * 4096])
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(huge, signed(huge), path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert status == 413
        assert "2048" in answer["error"]
        assert 'firehouse_pagerduty_webhooks_total{outcome="invalid"} 1.0' in metrics

    async def test_signed_malformed_body_is_400_naming_the_field(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """A correctly signed body that is not a usable event is refused with 400 and the
        parser's message."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        broken = b'{"event": {"event_type": "incident.resolved", "id": "E1"}}'
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(broken, signed(broken), path=PD_PATH)

        assert (status, answer["error"]) == (400, "field 'event.data' is missing")

    async def test_incident_without_incident_key_is_ignored(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """An incident event without an incident_key cannot be one of Firehouse's pages: it is
        answered 200, ignored, and counted as such."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        keyless = pagerduty_webhook("incident.resolved", None)
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(keyless, signed(keyless), path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert (status, answer["status"]) == (200, "ignored")
        assert "incident_key" in answer["reason"]
        assert 'firehouse_pagerduty_webhooks_total{outcome="ignored"} 1.0' in metrics

    async def test_webhook_credentials_do_not_apply(self, tmp_path: Path, database_url: str,
                                                    pd: PagerDutyStandIn
                                                    ) -> None:
        """With a bearer token configured for Alertmanager, a signed PagerDuty webhook without
        it is still accepted: the signature is its authentication."""
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET], auth={"bearer_token": TOKEN})
        ack = pagerduty_webhook("incident.acknowledged", "firehouse/x/dba-oncall")
        async with serving(tmp_path, database_url, pd, settings) as firehouse:
            status, answer = await firehouse.post(ack, signed(ack), path=PD_PATH)

        assert (status, answer["status"]) == (200, "success")

    async def test_store_failure_is_503_so_pagerduty_retries(
        self, tmp_path: Path, database_url: str, new_store: NewStore, pd: PagerDutyStandIn
    ) -> None:
        """When the decision on an acknowledgement cannot be stored, the answer is 503."""
        store = new_store(FlakyStore)
        settings = with_pagerduty_webhook(tmp_path, [PD_SECRET])
        async with serving(tmp_path, database_url, pd, settings, store=store) as firehouse:
            key = await open_incident(firehouse)
            ack = pagerduty_webhook("incident.acknowledged", key)
            store.failing = True
            refused, answer = await firehouse.post(ack, signed(ack), path=PD_PATH)
            store.failing = False
            retried, accepted = await firehouse.post(ack, signed(ack), path=PD_PATH)
            _, metrics = await firehouse.get("/metrics")

        assert (refused, retried) == (503, 200)
        assert "retry" in answer["error"]
        assert accepted["matched"] is True
        assert 'firehouse_pagerduty_webhooks_total{outcome="error"} 1.0' in metrics


class TestDryRunState:
    async def test_keys_added_to_a_dry_run_state_warn_naming_its_open_incidents(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
        caplog: pytest.LogCaptureFixture
    ) -> None:
        """A Firehouse given keys on a state whose open incidents were decided in dry-run
        says so at start, naming them: their new pages would go out about incidents
        PagerDuty never saw."""
        async with serving(tmp_path, database_url, pd, dry_run=True) as firehouse:
            status, answer = await firehouse.post(pg_down())
            await firehouse.drained()
        assert status == 200
        (opened,) = answer["incidents_opened"]

        with caplog.at_level(logging.WARNING, logger="firehouse"):
            async with serving(tmp_path, database_url, pd):
                pass

        warnings = [r.getMessage() for r in caplog.records
                    if "decided in dry-run" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert opened in warnings[0]
        # Advice that fits the store: a fresh file, or a fresh database.
        assert ("fresh database" if database_url else "fresh file") in warnings[0]

    async def test_a_state_that_paged_for_real_gives_no_such_warning(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
        caplog: pytest.LogCaptureFixture
    ) -> None:
        async with serving(tmp_path, database_url, pd) as firehouse:
            status, _ = await firehouse.post(pg_down())
            await firehouse.drained()
        assert status == 200

        with caplog.at_level(logging.WARNING, logger="firehouse"):
            async with serving(tmp_path, database_url, pd):
                pass

        assert not [r for r in caplog.records if "decided in dry-run" in r.getMessage()]
