"""Helpers that run real processes for end-to-end tests: Firehouse, Alertmanager, Prometheus.

Every process gets its own directory (config, state, stdout/stderr files), a free port on
127.0.0.1, and is waited for on its readiness endpoint. All waiting is ``async`` (polling
with ``asyncio.sleep``) so that in-process servers on the test's event loop -- the
PagerDuty stand-in above all -- keep answering while a process starts or shuts down.

External binaries are found with ``shutil.which``; when one is missing, ``require_binary``
skips the test naming the Debian package, or fails it when ``FIREHOUSE_REQUIRE_E2E=1``
(set in CI, where a silently skipped end-to-end suite would prove nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = REPO_ROOT / "rules"
MAPS_DIR = REPO_ROOT / "dependency_maps"
SETTINGS_FILE = REPO_ROOT / "firehouse.yml"

REQUIRE_E2E_ENV = "FIREHOUSE_REQUIRE_E2E"
ALERTMANAGER_BINARY = ("prometheus-alertmanager", "prometheus-alertmanager")
PROMETHEUS_BINARY = ("prometheus", "prometheus")
ROUTING_KEY_CHARS = 32
LOCALHOST = "127.0.0.1"

# Ports handed out in this test process: never hand out the same one twice, even before
# its first owner has bound it.
_ports_given: set[int] = set()


# --------------------------------------------------------------------------- small helpers


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free on ``host`` now and was not handed out before in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("no free port found in 100 tries")


def require_binary(name: str, package: str) -> str:
    """The absolute path of ``name``; skip (or fail under FIREHOUSE_REQUIRE_E2E=1) if absent."""
    found = shutil.which(name)
    if found:
        return found
    reason = (
        f"{name!r} not found on PATH: install the Debian package {package!r}"
        f" (apt-get install {package}) to run the end-to-end tests"
    )
    if os.environ.get(REQUIRE_E2E_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_E2E_ENV}=1 requires them", pytrace=False)
    pytest.skip(reason)


def routing_key(target: str) -> str:
    """A deterministic, distinct 32-character routing key for a target (PagerDuty's length)."""
    key = hashlib.sha256(f"firehouse-e2e/{target}".encode()).hexdigest()[:ROUTING_KEY_CHARS]
    assert len(key) == ROUTING_KEY_CHARS
    return key


def routing_key_env(target: str) -> str:
    """The environment variable Firehouse reads a target's routing key from by default."""
    return "FIREHOUSE_ROUTING_KEY_" + re.sub(r"[^A-Z0-9]", "_", target.upper())


def rfc3339(moment: datetime) -> str:
    """An RFC 3339 UTC timestamp as Alertmanager's API expects it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without FIREHOUSE_* settings and proxies, plus extra."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FIREHOUSE_")
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = f"{LOCALHOST},localhost"
    env.update(extra or {})
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that it is empty or missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} not found)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"({path.name} is empty)"


async def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """The HTTP status of ``GET url``; None if nothing answered."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


# --------------------------------------------------------------------------- base class


class ManagedProcess:
    """A child process with stdout/stderr in files, a readiness URL and a clean stop."""

    name = "process"
    ready_path = "/-/ready"
    start_timeout = 15.0
    stop_timeout = 15.0
    port_retries = 3  # a free port can be taken by someone else before the child binds it

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._port_chosen = port is None
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False  # the last run ended by kill9(), not by stop()
        self.starts = 0
        self._files: list[IO[bytes]] = []

    # -- to be provided by subclasses

    def configure(self) -> None:
        """Write the configuration files for ``self.port`` (again, if the port changes)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env()

    # -- common

    @property
    def url(self) -> str:
        """Base URL of the process' HTTP server."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def logs(self, lines: int = 40) -> str:
        """Tails of stderr and stdout, for error messages."""
        return (
            f"--- {self.name} stderr ({self.stderr_path}) ---\n{tail(self.stderr_path, lines)}\n"
            f"--- {self.name} stdout ({self.stdout_path}) ---\n{tail(self.stdout_path, lines)}"
        )

    async def start(self) -> None:
        """Start the process (again, after stop/kill9) and wait until it reports ready.

        On its first start, a process whose port was chosen here and turned out to be
        taken meanwhile is moved to another free port; a restart keeps its port.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        for attempt in range(1, self.port_retries + 1):
            offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
            self._spawn()
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop()
                taken = "address already in use" in self._stderr_since(offset).lower()
                if not (
                    taken
                    and self._port_chosen
                    and self.starts == attempt
                    and attempt < self.port_retries
                ):
                    raise
                self.port = free_port()
                self.configure()
            else:
                return

    def _spawn(self) -> None:
        self._close_files()
        self.starts += 1
        self.killed = False
        files: list[IO[bytes]] = [self.stdout_path.open("ab"), self.stderr_path.open("ab")]
        self._files = files
        marker = f"=== start #{self.starts} at {rfc3339(datetime.now(UTC))}: {self.command()}\n"
        for file in files:
            file.write(marker.encode())
            file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=files[0],
            stderr=files[1],
            cwd=self.workdir,
            env=self.env(),
            start_new_session=True,  # a Ctrl-C on pytest does not hit it before teardown
        )

    def _stderr_since(self, offset: int) -> str:
        with self.stderr_path.open("rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Poll the readiness URL until it answers 200; raise with the logs if it does not."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last: int | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with status {self.returncode} before becoming ready"
                    f" on {self.url}{self.ready_path}\n{self.logs()}"
                )
            last = await http_status(self.url + self.ready_path, timeout=1.0)
            if last == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not ready within {timeout:g}s: GET {self.url}{self.ready_path}"
            f" answered {last if last is not None else 'nothing'}\n{self.logs()}"
        )

    async def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit status."""
        timeout = self.stop_timeout if timeout is None else timeout
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if not await self._wait(timeout):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                self.killed = True
                await self._wait(5.0)
        self._close_files()
        return self.returncode

    async def kill9(self) -> int | None:
        """SIGKILL the process (a crash: no cleanup at all) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            self.killed = True
            await self._wait(5.0)
        self._close_files()
        return self.returncode

    async def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _close_files(self) -> None:
        for file in self._files:
            file.close()
        self._files = []


# --------------------------------------------------------------------------- Firehouse


def repo_settings() -> dict[str, Any]:
    """The repository's firehouse.yml, parsed (targets, roles, labels)."""
    data = yaml.safe_load(SETTINGS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), SETTINGS_FILE
    return data


class FirehouseProcess(ManagedProcess):
    """``python -m daemon run --config <tmp settings>`` against the repo's rules and maps.

    Every target of the repository's firehouse.yml gets a distinct 32-character routing key
    through ``FIREHOUSE_ROUTING_KEY_<NAME>``; ``routing_keys`` maps target -> key. The state
    is the SQLite file ``state_path``, or with ``database_url`` that PostgreSQL database
    (``database: {url: ...}`` in the settings).
    """

    name = "firehouse"

    def __init__(
        self,
        workdir: Path,
        pagerduty_url: str,
        *,
        token: str | None = None,
        port: int | None = None,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        database_url: str = "",
    ) -> None:
        super().__init__(workdir, port)
        self.pagerduty_url = pagerduty_url
        self.token = token
        self.database_url = database_url
        self.state_path = workdir / "firehouse.db"
        self.settings_path = workdir / "firehouse.yml"
        self._base = repo_settings()
        self.routing_keys = {target: routing_key(target) for target in self._base["targets"]}
        assert len(set(self.routing_keys.values())) == len(self.routing_keys)
        self.targets_by_key = {key: target for target, key in self.routing_keys.items()}
        self._overrides = dict(settings or {})
        self._extra_env = dict(env or {})
        self.settings_document: dict[str, Any] = {}
        self.configure()

    def configure(self) -> None:
        """Write the settings file (``settings_document``; extra ``settings`` win)."""
        base = self._base
        document: dict[str, Any] = {
            "listen": f"{LOCALHOST}:{self.port}",
            "state": str(self.state_path),
            "rules": [str(RULES_DIR)],
            "dependency_maps": [str(MAPS_DIR)],
            "pagerduty": {"url": self.pagerduty_url, "timeout_seconds": 5},
            "service_labels": base.get("service_labels", ["service", "job"]),
            "severity_labels": base.get("severity_labels", ["severity", "priority"]),
            "dry_run": False,
            "roles": base["roles"],
            "targets": {target: {} for target in base["targets"]},
            "log_level": "debug",
        }
        if self.token:
            document["auth"] = {"bearer_token": self.token}
        if self.database_url:
            document["database"] = {"url": self.database_url}
        document.update(self._overrides)
        self.settings_document = document
        self.settings_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "daemon", "run", "--config", str(self.settings_path)]

    def env(self) -> dict[str, str]:
        keys = {routing_key_env(t): k for t, k in self.routing_keys.items()}
        # Run from a scratch directory: the package must come from the repository.
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        return child_env({**keys, "PYTHONPATH": pythonpath, **self._extra_env})

    @property
    def webhook_url(self) -> str:
        """Where Alertmanager posts notifications."""
        return f"{self.url}/webhook/alertmanager"

    async def notify(self, session: aiohttp.ClientSession, body: Mapping[str, Any],
                     timeout: float) -> int:
        """POST one notification as Alertmanager does: its status, 0 when nothing answered
        (the process died, or hung past `timeout`)."""
        try:
            async with session.post(
                self.webhook_url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    def key(self, target: str) -> str:
        """The routing key of a target."""
        return self.routing_keys[target]


# --------------------------------------------------------------------------- Alertmanager


class AlertmanagerProcess(ManagedProcess):
    """Debian's prometheus-alertmanager, routing everything to one Firehouse webhook."""

    name = "alertmanager"

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        *,
        token: str | None = None,
        port: int | None = None,
        route: Mapping[str, Any] | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.binary = binary or require_binary(*ALERTMANAGER_BINARY)
        self.config_path = workdir / "alertmanager.yml"
        self.storage_path = workdir / "data"
        webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
        if token:
            webhook["http_config"] = {"authorization": {"credentials": token}}
        self.config: dict[str, Any] = {
            "route": {
                "receiver": "firehouse",
                "group_by": ["alertname", "service"],
                "group_wait": "1s",
                "group_interval": "2s",
                "repeat_interval": "1h",
                **(route or {}),
            },
            "receivers": [{"name": "firehouse", "webhook_configs": [webhook]}],
        }
        self.configure()

    def configure(self) -> None:
        text = yaml.safe_dump(self.config, sort_keys=False)
        self.config_path.write_text(text, encoding="utf-8")

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage_path}",
            f"--web.listen-address={LOCALHOST}:{self.port}",
            f"--web.external-url={self.url}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]

    async def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST alerts to ``/api/v2/alerts`` as a Prometheus server would."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(f"{self.url}/api/v2/alerts", json=list(alerts)) as response,
        ):
            text = await response.text()
            if response.status != 200:
                raise AssertionError(
                    f"Alertmanager answered {response.status} to POST /api/v2/alerts: {text}"
                )


def am_alert(
    labels: Mapping[str, str],
    *,
    starts_at: datetime,
    ends_at: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
    generator_url: str = "http://prometheus.example:9090/graph",
) -> dict[str, Any]:
    """One alert as Alertmanager's ``POST /api/v2/alerts`` takes it."""
    alert: dict[str, Any] = {
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": rfc3339(starts_at),
        "generatorURL": generator_url,
    }
    if ends_at is not None:
        alert["endsAt"] = rfc3339(ends_at)
    return alert


# --------------------------------------------------------------------------- Prometheus


class PrometheusProcess(ManagedProcess):
    """Debian's prometheus: scrapes itself, evaluates one rule file, alerts one Alertmanager."""

    name = "prometheus"
    start_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        alertmanager_url: str,
        rules: Mapping[str, Any],
        *,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.binary = binary or require_binary(*PROMETHEUS_BINARY)
        self.config_path = workdir / "prometheus.yml"
        self.rules_path = workdir / "rules.yml"
        self.storage_path = workdir / "data"
        self.alertmanager_host = alertmanager_url.split("://", 1)[-1].rstrip("/")
        self.rules_path.write_text(yaml.safe_dump(dict(rules), sort_keys=False), encoding="utf-8")
        self.configure()

    def configure(self) -> None:
        am_targets = [{"targets": [self.alertmanager_host]}]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(self.rules_path)],
            "alerting": {"alertmanagers": [{"static_configs": am_targets}]},
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"{LOCALHOST}:{self.port}"]}],
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address={LOCALHOST}:{self.port}",
            f"--web.external-url={self.url}",
            # The first evaluation usually runs before the notifier has discovered the
            # Alertmanager (discovery syncs every 5 s); that send is dropped, and the default
            # resend delay (1m) would hold the next one back for a minute.
            "--rules.alert.resend-delay=1s",
            "--log.level=debug",
        ]
