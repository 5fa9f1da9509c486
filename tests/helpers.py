"""Builders shared by the unit and component tests: configs, alerts, webhooks, waiting.

Configs are always built from the repository's `firehouse.yml` (or a copy of it with a few
settings changed) and an explicit environment, so that the machine's environment never
leaks into a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from daemon.alerts import Webhook, parse_webhook
from daemon.config import Config, load_config
from daemon.decide import Decision

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "firehouse.yml"
FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"
PAGERDUTY_FIXTURES = ROOT / "tests" / "fixtures" / "pagerduty"
NOW = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
STARTED = NOW - timedelta(minutes=5)
ZERO_TIME = "0001-01-01T00:00:00Z"


def target_names() -> list[str]:
    """The PagerDuty targets defined in the repository's settings file."""
    return list(yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))["targets"])


def routing_key(target: str, salt: str = "") -> str:
    """A fake, 32-character routing key for a target (PagerDuty's length)."""
    return hashlib.md5(f"{salt}{target}".encode(), usedforsecurity=False).hexdigest()


def env_var(target: str) -> str:
    """The environment variable that carries a target's routing key by default."""
    return "FIREHOUSE_ROUTING_KEY_" + target.upper().replace("-", "_").replace(".", "_")


def config_env(
    *,
    dry_run: bool = False,
    salt: str = "",
    pagerduty_url: str | None = None,
    state: Path | None = None,
    listen: str | None = None,
    token: str | None = None,
    database_url: str | None = None,
) -> dict[str, str]:
    """An explicit environment: routing keys for every target (unless dry-run) and overrides;
    a non-empty `database_url` keeps the state in PostgreSQL instead of the file `state`."""
    env = {"FIREHOUSE_DRY_RUN": "true" if dry_run else "false"}
    if not dry_run:
        env.update({env_var(t): routing_key(t, salt) for t in target_names()})
    if pagerduty_url is not None:
        env["FIREHOUSE_PAGERDUTY_URL"] = pagerduty_url
    if state is not None:
        env["FIREHOUSE_STATE"] = str(state)
    if database_url:
        env["FIREHOUSE_DATABASE_URL"] = database_url
    if listen is not None:
        env["FIREHOUSE_LISTEN"] = listen
    if token is not None:
        env["FIREHOUSE_WEBHOOK_TOKEN"] = token
    return env


def make_config(settings: Path = SETTINGS, **env: Any) -> Config:
    """Load the full configuration from `settings` with `config_env(**env)`."""
    return load_config(settings, env=config_env(**env))


def undamped(config: Config) -> Config:
    """`config` with flap damping off: an incident resolves as soon as its last alert does."""
    return dataclasses.replace(config, settings=dataclasses.replace(config.settings,
                                                                    flap_damping=0))


def write_settings(directory: Path, **changes: Any) -> Path:
    """A copy of the repository's settings in `directory`, with top-level keys changed."""
    data = yaml.safe_load(SETTINGS.read_text(encoding="utf-8"))
    data["rules"] = [str(ROOT / "rules")]
    data["dependency_maps"] = [str(ROOT / "dependency_maps")]
    data["state"] = str(directory / "state.db")
    data.update(changes)
    path = directory / "firehouse.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def rfc3339(value: datetime) -> str:
    """A time as Alertmanager writes it."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert(
    labels: Mapping[str, str],
    *,
    status: str = "firing",
    starts_at: datetime | None = STARTED,
    ends_at: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """One alert as Alertmanager's webhook JSON has it (fingerprint computed if not given)."""
    if status == "resolved" and ends_at is None:
        ends_at = NOW
    data: dict[str, Any] = {
        "status": status,
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": rfc3339(starts_at) if starts_at else ZERO_TIME,
        "endsAt": rfc3339(ends_at) if ends_at else ZERO_TIME,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
    }
    if fingerprint is not None:
        data["fingerprint"] = fingerprint
    return data


def resolved(firing: Mapping[str, Any], ends_at: datetime = NOW) -> dict[str, Any]:
    """The resolved notification of a firing alert: same labels and startsAt."""
    return {**firing, "status": "resolved", "endsAt": rfc3339(ends_at)}


def webhook_json(*alerts: Mapping[str, Any], status: str | None = None) -> dict[str, Any]:
    """A webhook v4 envelope around `alerts`; the status is computed unless given."""
    if status is None:
        status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "receiver": "firehouse",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="test"}',
        "truncatedAlerts": 0,
    }


def webhook(*alerts: Mapping[str, Any], status: str | None = None) -> Webhook:
    """A parsed webhook around `alerts`."""
    return parse_webhook(webhook_json(*alerts, status=status))


def body(*alerts: Mapping[str, Any], status: str | None = None) -> bytes:
    """A webhook body as Alertmanager sends it."""
    return json.dumps(webhook_json(*alerts, status=status)).encode()


def fixture_files() -> list[Path]:
    """Every real Alertmanager payload under tests/fixtures/alertmanager/."""
    return sorted(FIXTURES.rglob("*.json"))


def pagerduty_webhook(
    event_type: str,
    dedup_key: str | None,
    *,
    agent: str | None = "Tenex Engineer",
    occurred_at: datetime = NOW,
    incident_id: str = "PGR0VU2",
    assignees: Sequence[str] = ("User 123",),
    priority: str | None = "P1",
    event_id: str | None = None,
) -> bytes:
    """A PagerDuty v3 webhook body about an incident whose `incident_key` is `dedup_key`
    (None: null), shaped as PagerDuty's documented example and sent compact, as PagerDuty
    sends it. `agent` None is a null agent (PagerDuty itself); the event id is derived from
    the arguments unless given."""
    data = json.loads((PAGERDUTY_FIXTURES / "developer_docs_incident.priority_updated.json")
                      .read_text(encoding="utf-8"))
    event = data["event"]
    event["id"] = event_id or str(uuid.uuid5(
        uuid.NAMESPACE_URL, f"{event_type}/{dedup_key}/{incident_id}/{occurred_at.isoformat()}"))
    event["event_type"] = event_type
    event["occurred_at"] = (occurred_at.astimezone(UTC).isoformat(timespec="milliseconds")
                            .replace("+00:00", "Z"))
    if agent is None:
        event["agent"] = None
    else:
        event["agent"]["summary"] = agent
    incident = event["data"]
    incident["id"] = incident_id
    incident["self"] = f"https://api.pagerduty.com/incidents/{incident_id}"
    incident["html_url"] = f"https://acme.pagerduty.com/incidents/{incident_id}"
    incident["incident_key"] = dedup_key
    incident["status"] = {"incident.acknowledged": "acknowledged",
                          "incident.resolved": "resolved"}.get(event_type, "triggered")
    template = incident["assignees"][0]
    incident["assignees"] = [{**template, "id": f"PU{index:05d}", "summary": name}
                             for index, name in enumerate(assignees)]
    if priority is None:
        incident["priority"] = None
    else:
        incident["priority"]["summary"] = priority
    return json.dumps(data, separators=(",", ":")).encode()


def sign_pagerduty(body: bytes, secret: str) -> str:
    """The X-PagerDuty-Signature PagerDuty sends with `body` for one subscription secret
    (join several with "," for a rotation)."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def free_port() -> int:
    """A local TCP port that nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `check` until it is true; fail the test after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s") from None


class BeforeWrite:
    """In front of a store class (conftest's ``new_store(BeforeWriteSubclass)``): runs
    `before_write` before every decision is written, on either backend -- in `commit` on a
    store of its own (SQLite), in the writes under `exclusive()` on a shared one
    (PostgreSQL) -- which may wait, or fail the write by raising."""

    async def before_write(self, decision: Decision) -> None:
        """Called before `decision` is written; raise to fail the write."""

    async def commit(self, decision: Decision) -> None:
        await self.before_write(decision)
        await super().commit(decision)  # type: ignore[misc]

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[Any]:
        async with super().exclusive() as txn:  # type: ignore[misc]
            yield _HookedWrites(txn, self)


class _HookedWrites:
    """A shared store's `Exclusive` whose `write` passes each decision to `before_write`."""

    def __init__(self, txn: Any, store: BeforeWrite) -> None:
        self._txn, self._store = txn, store

    @property
    def version(self) -> int:
        version: int = self._txn.version
        return version

    async def delta(self, since: int) -> Any:
        return await self._txn.delta(since)

    async def write(self, decisions: Sequence[Decision]) -> int:
        for decision in decisions:
            await self._store.before_write(decision)
        version: int = await self._txn.write(decisions)
        return version
