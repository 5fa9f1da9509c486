"""The HTTP edge: a real Firehouse on a free port, with the PagerDuty stand-in behind it."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.alerts import parse_body
from daemon.app import Firehouse
from daemon.config import load_config
from daemon.decide import OPEN, Decision, State, decide
from daemon.errors import StoreError
from daemon.store import Store
from daemon.store.sqlite import SqliteStore
from tests.helpers import (
    NOW,
    SETTINGS,
    alert,
    body,
    config_env,
    fixture_files,
    make_config,
    routing_key,
    target_names,
    wait_until,
    write_settings,
)
from tests.pagerduty_standin import PagerDutyStandIn

JSON = {"Content-Type": "application/json"}
TOKEN = "s3cret-bearer-token"
USER, PASSWORD = "alertmanager", "hunter2"


class FlakyStore(SqliteStore):
    """A SQLite store whose commits fail while `failing` is set, as a full disk would."""

    failing = False

    async def commit(self, decision: Decision) -> None:
        """Fail like a broken disk, or commit for real."""
        if self.failing:
            raise StoreError(f"could not write to {self.path}: disk I/O error")
        await super().commit(decision)


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
async def serving(tmp_path: Path, pd: PagerDutyStandIn, settings: Path = SETTINGS,
                  store: Store | None = None) -> AsyncIterator[Running]:
    """Firehouse started on 127.0.0.1:0 with routing keys, paging the stand-in."""
    env = config_env(pagerduty_url=pd.url, state=tmp_path / "state.db",
                     listen="127.0.0.1:0")
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
        self, tmp_path: Path, pd: PagerDutyStandIn, path: Path
    ) -> None:
        """Each real payload is accepted and pages each firing alert's targets with valid events."""
        raw = path.read_bytes()
        notification = parse_body(raw)
        expected = decide(notification, make_config(), State(), NOW)
        opened = [i for i in expected.incidents if i.status == OPEN]
        assert len(opened) == len({a.fingerprint for a in notification.alerts if a.firing})

        async with serving(tmp_path, pd) as firehouse:
            status, answer = await firehouse.post(raw)
            await firehouse.drained()

        assert status == 200, answer
        assert answer["events"] == len(expected.events)
        assert pd.invalid == []
        assert {r.status for r in pd.received} <= {202}
        sent = [b for b in pd.events if b["event_action"] == "trigger"]
        assert len(sent) == sum(len(i.pages) for i in opened)
        for event in sent:
            assert event["routing_key"] == routing_key(event["dedup_key"].rsplit("/", 1)[1])

    @pytest.mark.parametrize(
        ("data", "field"),
        [(b"{this is not json", "JSON"), (b'{"receiver": "web", "status": "firing"}', "'alerts'"),
         (b'{"alerts": [], "truncatedAlerts": -1}', "'truncatedAlerts'")],
        ids=["not-json", "no-alerts", "bad-truncated"],
    )
    async def test_malformed_body_is_400_naming_the_field(
        self, tmp_path: Path, pd: PagerDutyStandIn, data: bytes, field: str
    ) -> None:
        """A body that can never be processed is answered 400 with a message naming the problem."""
        async with serving(tmp_path, pd) as firehouse:
            status, answer = await firehouse.post(data)

        assert status == 400
        assert field in answer["error"]

    async def test_plain_text_is_415(self, tmp_path: Path, pd: PagerDutyStandIn) -> None:
        """A body sent as text/plain is refused with 415."""
        async with serving(tmp_path, pd) as firehouse:
            status, answer = await firehouse.post(pg_down(), {"Content-Type": "text/plain"})

        assert status == 415
        assert "application/json" in answer["error"]

    async def test_body_above_the_limit_is_413(self, tmp_path: Path, pd: PagerDutyStandIn) -> None:
        """A body larger than max_body_bytes is refused with 413; a smaller one is accepted."""
        settings = write_settings(tmp_path, max_body_bytes=2048)
        huge = body(alert({"alertname": "Big", "service": "cart"},
                          annotations={"description": "x" * 4096}))

        async with serving(tmp_path, pd, settings) as firehouse:
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
        self, tmp_path: Path, pd: PagerDutyStandIn, authorization: str | None, expected: int
    ) -> None:
        """With auth configured, a webhook needs the bearer token or the basic credentials."""
        settings = write_settings(tmp_path, auth={
            "bearer_token": TOKEN, "basic_auth": {"username": USER, "password": PASSWORD}})
        headers = dict(JSON)
        if authorization is not None:
            headers["Authorization"] = authorization

        async with serving(tmp_path, pd, settings) as firehouse:
            status, _ = await firehouse.post(pg_down(), headers)
            api_status, _ = await firehouse.get("/api/v1/incidents", headers)

        assert status == expected
        assert api_status == expected

    async def test_rejected_credentials_are_counted_and_logged(
        self, tmp_path: Path, pd: PagerDutyStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A webhook refused for its credentials is counted and logged, since Alertmanager
        drops it."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN})
        async with serving(tmp_path, pd, settings) as firehouse:
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

    async def test_replayed_body_pages_once(self, tmp_path: Path, pd: PagerDutyStandIn) -> None:
        """The same notification sent twice (an HA pair) opens each PagerDuty alert once."""
        async with serving(tmp_path, pd) as firehouse:
            first, one = await firehouse.post(pg_down())
            second, two = await firehouse.post(pg_down())
            await firehouse.drained()

        assert (first, second) == (200, 200)
        assert (one["events"], two["events"]) == (3, 0)
        assert len(pd.events) == 3
        assert sorted(pd.incidents_opened.values()) == [1, 1, 1]

    async def test_store_failure_is_503_and_the_retry_pages(
        self, tmp_path: Path, pd: PagerDutyStandIn
    ) -> None:
        """A failed commit is answered 503, and the retry, once the disk is back, pages."""
        store = FlakyStore(tmp_path / "state.db")
        async with serving(tmp_path, pd, store=store) as firehouse:
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
        assert len(pd.events) == 3
        assert 'firehouse_webhooks_total{outcome="store_error"} 1.0' in metrics

    async def test_not_accepting_is_503_and_not_ready(
        self, tmp_path: Path, pd: PagerDutyStandIn
    ) -> None:
        """While not accepting (starting or stopping) webhooks get 503 and readiness fails."""
        async with serving(tmp_path, pd) as firehouse:
            firehouse.firehouse.accepting = False
            status, _ = await firehouse.post(pg_down())
            ready, _ = await firehouse.get("/-/ready")
            healthy, _ = await firehouse.get("/-/healthy")

        assert (status, ready, healthy) == (503, 503, 200)


class BrokenDiskStore(SqliteStore):
    """A SQLite store whose transactions fail at the disk while `failing` is set."""

    failing = False

    def _write(self, decisions: list[Decision]) -> None:
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        super()._write(decisions)


class TestStoreHealth:
    async def test_failed_write_makes_readiness_fail_until_a_write_succeeds(
        self, tmp_path: Path, pd: PagerDutyStandIn
    ) -> None:
        """After a write to the store fails, /-/ready says so until a write succeeds again."""
        store = BrokenDiskStore(tmp_path / "state.db")
        async with serving(tmp_path, pd, store=store) as firehouse:
            store.failing = True
            refused, _ = await firehouse.post(pg_down())
            not_ready, _ = await firehouse.get("/-/ready")
            store.failing = False
            accepted, _ = await firehouse.post(pg_down())
            ready, _ = await firehouse.get("/-/ready")

        assert (refused, not_ready, accepted, ready) == (503, 503, 200, 200)


class TestEndpoints:
    async def test_health_metrics_and_api(self, tmp_path: Path, pd: PagerDutyStandIn) -> None:
        """Health, readiness, metrics, incidents and outbox answer, never showing a routing key."""
        async with serving(tmp_path, pd) as firehouse:
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
        assert 'firehouse_outbox_events{state="delivered"} 3.0' in metrics[1]
        assert [i["id"] for i in json.loads(listed[1])["incidents"]] == [incident_id]
        assert {n["kind"] for n in json.loads(one[1])["timeline"]} >= {"opened", "paged"}
        assert missing[0] == 404
        assert json.loads(outbox[1])["counts"] == {"delivered": 3}
        assert bad_filter[0] == 400
        for text in (listed[1], one[1], outbox[1], metrics[1]):
            for target in target_names():
                assert routing_key(target) not in text

    async def test_reload_keeps_the_old_config_when_the_new_one_is_bad(
        self, tmp_path: Path, pd: PagerDutyStandIn
    ) -> None:
        """POST /-/reload applies a valid file and refuses a broken one, keeping the old config."""
        settings = write_settings(tmp_path)
        async with serving(tmp_path, pd, settings) as firehouse:
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
        self, tmp_path: Path, pd: PagerDutyStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reload that changes a restart-only setting warns that the old value stays in force."""
        settings = write_settings(tmp_path, max_body_bytes=2048)
        async with serving(tmp_path, pd, settings) as firehouse:
            write_settings(tmp_path, max_body_bytes=1 << 20)
            status, _ = await firehouse.post(b"", path="/-/reload")
            big = body(alert({"alertname": "Big"}, annotations={"description": "x" * 4096}))
            too_big, _ = await firehouse.post(big)

        assert status == 200
        assert "max_body_bytes changes only on restart; still using 2048" in caplog.text
        assert too_big == 413
