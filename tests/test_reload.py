"""Hot reload: built in a worker thread, swapped in one step, never blocking or losing a webhook.

SIGHUP and POST /-/reload share `Firehouse.reload`; a bad file keeps the running configuration
and says so in the log (file:line) and in firehouse_config_last_reload_successful.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.graphgen import write as write_generated_map
from daemon.app import Firehouse
from daemon.cli import logfmt_value
from daemon.config import Config, load_config
from daemon.maps import map_files
from daemon.rules import rule_files
from tests.conftest import FirehouseFactory, sqlite_only
from tests.helpers import (
    ROOT,
    alert,
    body,
    config_env,
    env_var,
    free_port,
    target_names,
    wait_until,
    write_settings,
)
from tests.pagerduty_standin import PagerDutyStandIn
from tests.procs import MAPS_DIR, FirehouseProcess
from tests.test_server import Running, serving

SHIPPED_RULES = ROOT / "rules" / "00-example.yaml"
# Sorted before 00-example.yaml, so that it is evaluated before the shipped catch-all.
DATABASES = "00-databases.yaml"
# A misspelt component (line 4): it would never match, so the reload must be refused.
BROKEN_RULE = """\
rules:
  - name: database faults bring in management
    when:
      component: dbsm
    page: [senior_management]
    continue: true
"""
FIXED_RULE = BROKEN_RULE.replace("dbsm", "dbms")
BROKEN_PROBLEM = ("{file}:4: rules[0].when.component: no service of the dependency maps has "
                  "this component: the rule would never match; did you mean 'dbms'? (got 'dbsm')")
# Whom a critical alert on the payments database pages under the shipped rules (the tier-1
# rule's business updates go to the business line), and with FIXED_RULE in front of them
# (senior management is ops-management).
OLD_TARGETS = frozenset({"checkout-owner", "dba-oncall", "command-center", "business-line"})
NEW_TARGETS = OLD_TARGETS | {"ops-management"}


def pg_alert(name: str, status: str = "firing") -> bytes:
    """A notification with one critical alert on the payments database."""
    return body(alert({"alertname": name, "service": "postgres-payments",
                       "severity": "critical"}, status=status))


def shipped_rules_in(directory: Path) -> Path:
    """A rules directory holding a copy of the shipped rules."""
    directory.mkdir()
    shutil.copy(SHIPPED_RULES, directory / SHIPPED_RULES.name)
    return directory


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition."""
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in:\n{text}"
    return float(found.group(1))


def reloaded_message(trigger: str, new: Config, old: Config, changed: Path) -> str:
    """The log message of a successful reload that changed one file."""
    return (f"configuration reloaded ({trigger}): digest {new.digest} (was {old.digest}); "
            f"read {len(new.files)} file(s): {', '.join(new.files)}; changed: {changed}")


class GatedLoad:
    """load_config that, done or failed, waits in its worker thread until `gate` is set: a
    reload that takes as long as a test needs. Counts calls and how many ran at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self.started = 0
        self.waiting = 0  # loads done (or failed) and held at the gate
        self.running = 0
        self.most_at_once = 0

    def __call__(self, path: Path | None, env: Mapping[str, str] | None = None) -> Config:
        with self._lock:
            self.started += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return load_config(path, env)
        finally:
            with self._lock:
                self.waiting += 1
            # Bounded, so that a failing test cannot leave the thread behind for good.
            self.gate.wait(timeout=10)
            with self._lock:
                self.running -= 1

    async def held(self) -> None:
        """Wait until a load has read every file and waits at the gate."""
        async def waiting() -> bool:
            return self.waiting >= 1
        await wait_until(waiting, what="a reload held at the gate")


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedLoad]:
    """Reloads go through a GatedLoad (opened at teardown at the latest)."""
    load = GatedLoad()
    monkeypatch.setattr("daemon.app.load_config", load)
    yield load
    load.gate.set()


@dataclass(frozen=True)
class Sent:
    """One webhook: when it was sent and answered, and the answer."""

    started: float
    finished: float
    status: int
    answer: Any


class Poster:
    """Posts a new critical alert on the payments database, one after another, until stopped;
    each is resolved before the next, so that (without flap damping) each opens an incident
    of its own, decided by the configuration of its time."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.sent: list[Sent] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            started = time.monotonic()
            status, answer = await self.running.post(pg_alert(f"Load{number}"))
            self.sent.append(Sent(started, time.monotonic(), status, answer))
            resolved, _ = await self.running.post(pg_alert(f"Load{number}", "resolved"))
            assert resolved == 200
            await asyncio.sleep(0.002)

    async def answered(self, count: int) -> None:
        """Wait until `count` more webhooks have been answered."""
        target = len(self.sent) + count

        async def enough() -> bool:
            return len(self.sent) >= target
        await wait_until(enough, what=f"{target} webhooks answered")

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def paged_targets(pd: PagerDutyStandIn) -> dict[str, set[str]]:
    """Incident id -> the targets its trigger events went to, from dedup keys
    (firehouse/{incident}/{target}/{severity or business update})."""
    targets: dict[str, set[str]] = {}
    for event in pd.events:
        if event["event_action"] == "trigger":
            _, incident, target, _ = event["dedup_key"].split("/")
            targets.setdefault(incident, set()).add(target)
    return targets


class TestReloadInProcess:
    """Firehouse.reload on an in-process daemon, with webhooks arriving all along."""

    async def test_broken_rules_keep_the_old_config_while_webhooks_flow(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn, gated: GatedLoad,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A refused reload loses no webhook and no page; the fixed file takes effect next."""
        caplog.set_level(logging.INFO, logger="firehouse")
        rules = shipped_rules_in(tmp_path / "rules")
        settings = write_settings(tmp_path, rules=[str(rules)],
                                  incidents={"flap_damping_seconds": 0})
        databases = rules / DATABASES
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            firehouse = running.firehouse
            old = firehouse.config
            poster = Poster(running)
            poster.start()
            await poster.answered(3)

            databases.write_text(BROKEN_RULE, encoding="utf-8")
            refused = asyncio.create_task(running.post(b"", path="/-/reload"))
            await gated.held()
            # The loop keeps deciding, on the old configuration, while the reload is built.
            await poster.answered(5)
            assert not refused.done()
            gated.gate.set()
            bad_status, bad_answer = await refused
            await poster.answered(5)
            _, bad_metrics = await running.get("/metrics")

            databases.write_text(FIXED_RULE, encoding="utf-8")
            fix_started = time.monotonic()
            good_status, good_answer = await running.post(b"", path="/-/reload")
            fix_done = time.monotonic()
            # One more than asserted below: the first may have started before fix_done.
            await poster.answered(6)
            _, good_metrics = await running.get("/metrics")
            await poster.stop()
            new = firehouse.config
            # Each incident's triggers, then as many resolves.
            await pagerduty.wait_for_count(2 * sum(s.answer["events"] for s in poster.sent))
            await running.drained()

        assert (bad_status, bad_answer["problems"]) == (400, [BROKEN_PROBLEM.format(
            file=databases)])
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [f"reload (POST /-/reload) failed; keeping configuration {old.digest}:"
                          f"\n{BROKEN_PROBLEM.format(file=databases)}"]
        assert metric(bad_metrics, "firehouse_config_last_reload_successful") == 0
        assert f'firehouse_config_info{{digest="{old.digest}"}} 1.0' in bad_metrics

        assert (good_status, good_answer["config_digest"]) == (200, new.digest)
        assert new.digest != old.digest
        assert reloaded_message("POST /-/reload", new, old, databases) in caplog.messages
        assert metric(good_metrics, "firehouse_config_last_reload_successful") == 1
        assert metric(good_metrics,
                      "firehouse_config_last_reload_success_timestamp_seconds") >= time.time() - 60
        assert f'firehouse_config_info{{digest="{new.digest}"}} 1.0' in good_metrics
        assert f'digest="{old.digest}"' not in good_metrics

        assert [s.status for s in poster.sent] == [200] * len(poster.sent)
        assert pagerduty.invalid == []
        paged = paged_targets(pagerduty)
        before = [s for s in poster.sent if s.finished < fix_started]
        after = [s for s in poster.sent if s.started > fix_done]
        assert len(before) >= 13
        assert len(after) >= 5
        for sent in poster.sent:
            (incident,) = sent.answer["incidents_opened"]
            assert sent.answer["events"] == len(paged[incident])
            if sent.finished < fix_started:
                assert paged[incident] == OLD_TARGETS
            elif sent.started > fix_done:
                assert paged[incident] == NEW_TARGETS
            else:  # in flight while the new configuration was swapped in: either
                assert paged[incident] in (OLD_TARGETS, NEW_TARGETS)

    async def test_concurrent_reloads_run_one_after_the_other(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn, gated: GatedLoad,
    ) -> None:
        """A reload asked for during another waits for it, then reads the files again."""
        rules = shipped_rules_in(tmp_path / "rules")
        settings = write_settings(tmp_path, rules=[str(rules)])
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            first = asyncio.create_task(running.post(b"", path="/-/reload"))
            await gated.held()
            (rules / DATABASES).write_text(FIXED_RULE, encoding="utf-8")
            second = asyncio.create_task(running.post(b"", path="/-/reload"))
            await asyncio.sleep(0.2)
            waiting = gated.started
            gated.gate.set()
            (_, one), (_, two) = await asyncio.gather(first, second)
            final = running.firehouse.config.digest

        assert waiting == 1
        assert (gated.started, gated.most_at_once) == (2, 1)
        assert one["config_digest"] != two["config_digest"] == final

    async def test_active_config_is_frozen_and_a_replaced_one_is_freed(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn,
    ) -> None:
        """The active configuration is kept out of the garbage collector's passes (frozen),
        and one that a reload replaced is still collected: nothing of it is kept."""
        rules = shipped_rules_in(tmp_path / "rules")
        settings = write_settings(tmp_path, rules=[str(rules)])
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            old = weakref.ref(running.firehouse.config.graph)
            assert gc.get_freeze_count() > 0
            frozen_before = gc.get_freeze_count()
            (rules / DATABASES).write_text(FIXED_RULE, encoding="utf-8")
            status, _ = await running.post(b"", path="/-/reload")
            assert status == 200
            assert running.firehouse.config.graph is not old()
            gc.collect()
            assert old() is None
            assert gc.get_freeze_count() > 0
            # Frozen afresh, not on top of what the last freeze held.
            assert gc.get_freeze_count() < 2 * frozen_before

    async def test_sighup_path_logs_and_keeps_a_bad_file_out(
        self, tmp_path: Path, database_url: str,
        pagerduty: PagerDutyStandIn, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """request_reload (what SIGHUP calls) reloads in the background; a bad file is logged."""
        caplog.set_level(logging.INFO, logger="firehouse")
        rules = shipped_rules_in(tmp_path / "rules")
        settings = write_settings(tmp_path, rules=[str(rules)])
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            firehouse = running.firehouse
            old = firehouse.config
            (rules / DATABASES).write_text(BROKEN_RULE, encoding="utf-8")
            await firehouse.request_reload("SIGHUP")
            refused = firehouse.config
            (rules / DATABASES).write_text(FIXED_RULE, encoding="utf-8")
            await firehouse.request_reload("SIGHUP")
            new = firehouse.config

        assert refused is old
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
            f"reload (SIGHUP) failed; keeping configuration {old.digest}:\n"
            f"{BROKEN_PROBLEM.format(file=rules / DATABASES)}"]
        assert reloaded_message("SIGHUP", new, old, rules / DATABASES) in caplog.messages

    async def test_an_unexpected_failure_counts_as_failed(
        self, tmp_path: Path, database_url: str,
        pagerduty: PagerDutyStandIn, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A reload that crashes (a bug, not a bad file) keeps the old config and sets 0."""
        def crash(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
            raise RuntimeError("boom")

        async with serving(tmp_path, database_url, pagerduty, write_settings(tmp_path)) as running:
            old = running.firehouse.config
            monkeypatch.setattr("daemon.app.load_config", crash)
            await running.firehouse.request_reload("SIGHUP")
            _, metrics = await running.get("/metrics")
            still = running.firehouse.config

        assert still is old
        assert metric(metrics, "firehouse_config_last_reload_successful") == 0
        (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
        assert record.getMessage() == (f"reload (SIGHUP) failed unexpectedly; keeping "
                                       f"configuration {old.digest}")
        assert record.exc_info is not None

    async def test_stop_abandons_a_reload_in_progress(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn, gated: GatedLoad,
    ) -> None:
        """Stopping does not wait for a reload still being built; nothing is swapped in."""
        settings = write_settings(tmp_path)
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            firehouse = running.firehouse
            old = firehouse.config
            task = firehouse.request_reload("SIGHUP")
            await gated.held()
        gated.gate.set()
        assert task.cancelled()
        assert firehouse.config is old

    async def test_health_answers_while_a_large_map_loads(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn,
    ) -> None:
        """While a 5000-service map is parsed and checked, /-/healthy keeps answering."""
        maps = tmp_path / "maps"
        write_generated_map(5000, maps)
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - name: everyone\n    page: [technical_lead, incident_lead]\n",
                         encoding="utf-8")
        # The generated map's owners; app-oncall shares the shop team's routing key.
        targets: dict[str, Any] = {name: {} for name in target_names()}
        targets["app-oncall"] = {"routing_key_env": env_var("shop-app-oncall")}
        settings = write_settings(tmp_path, dependency_maps=[str(maps)], rules=[str(rules)],
                                  targets=targets)
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            reload = asyncio.create_task(running.post(b"", path="/-/reload"))
            answered_during: list[float] = []
            while not reload.done():
                started = time.monotonic()
                status, _ = await running.get("/-/healthy")
                assert status == 200
                if not reload.done():
                    answered_during.append(time.monotonic() - started)
            status, answer = await reload
            _, metrics = await running.get("/metrics")

        assert status == 200, answer
        assert len(answered_during) >= 10, answered_during
        assert metric(metrics, "firehouse_dependency_map_services") == 5000
        assert metric(metrics, "firehouse_config_last_reload_successful") == 1


class TestSighupProcess:
    """SIGHUP on a real `firehouse run`."""

    async def test_sighup_reloads_and_a_broken_file_keeps_it_running(
        self, tmp_path: Path, firehouse: FirehouseFactory,
    ) -> None:
        """SIGHUP swaps in a good file (new digest) and refuses a broken one, still ready."""
        rules = shipped_rules_in(tmp_path / "rules")
        process = await firehouse(settings={"rules": [str(rules)]})
        databases = rules / DATABASES
        async with aiohttp.ClientSession() as session:
            old_digest = await self.digest(session, process)

            databases.write_text(FIXED_RULE, encoding="utf-8")
            await self.hup(process)
            new_digest = await self.wait_for_digest(session, process, lambda d: d != old_digest)
            good = await self.scrape(session, process)

            databases.write_text(BROKEN_RULE, encoding="utf-8")
            await self.hup(process)

            async def refused() -> bool:
                text = await self.scrape(session, process)
                return metric(text, "firehouse_config_last_reload_successful") == 0
            await wait_until(refused, what="the broken reload refused")
            still = await self.digest(session, process)
            async with session.get(f"{process.url}/-/ready") as response:
                ready = response.status
            async with session.post(process.webhook_url, data=pg_alert("AfterBrokenReload"),
                                    headers={"Content-Type": "application/json"}) as response:
                webhook = response.status, await response.json()

        assert metric(good, "firehouse_config_last_reload_successful") == 1
        assert new_digest != old_digest
        assert (still, ready, process.running) == (new_digest, 200, True)
        # The last good configuration decides: management is paged too.
        assert webhook[0] == 200
        assert webhook[1]["events"] == len(NEW_TARGETS)
        log = process.stderr_path.read_text(encoding="utf-8")
        files = [process.settings_path, *map_files([MAPS_DIR]), *rule_files([rules])]
        reloaded = (f"configuration reloaded (SIGHUP): digest {new_digest} (was {old_digest}); "
                    f"read {len(files)} file(s): {', '.join(map(str, files))}; "
                    f"changed: {databases}")
        failed = (f"reload (SIGHUP) failed; keeping configuration {new_digest}:\n"
                  f"{BROKEN_PROBLEM.format(file=databases)}")
        assert "msg=\"SIGHUP received: reloading configuration\"" in log
        assert f"msg={logfmt_value(reloaded)}" in log
        assert f"level=ERROR logger=firehouse msg={logfmt_value(failed)}" in log

    @staticmethod
    async def hup(process: FirehouseProcess) -> None:
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)

    @staticmethod
    async def scrape(session: aiohttp.ClientSession, process: FirehouseProcess) -> str:
        async with session.get(f"{process.url}/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def digest(self, session: aiohttp.ClientSession, process: FirehouseProcess) -> str:
        """The digest of firehouse_config_info, the active configuration."""
        found = re.findall(r'^firehouse_config_info\{digest="([0-9a-f]+)"\} 1\.0$',
                           await self.scrape(session, process), re.MULTILINE)
        assert len(found) == 1, found
        return str(found[0])

    async def wait_for_digest(self, session: aiohttp.ClientSession, process: FirehouseProcess,
                              wanted: Any) -> str:
        """Poll /metrics until the digest satisfies `wanted`; return it."""
        seen: list[str] = []

        async def check() -> bool:
            seen.append(await self.digest(session, process))
            return bool(wanted(seen[-1]))
        await wait_until(check, what="the digest to change")
        return seen[-1]


class TestRestartOnlySettings:
    """A reload compares settings read only at start with what the process runs with, not
    with what the previous reload read, and names them as the settings file does."""

    async def test_a_reverted_change_is_no_change(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """`state` and `listen` changed, reloaded (POST /-/reload), then reverted and reloaded
        (SIGHUP's path): the first warns of the values in use, the second says nothing, and
        the process keeps its file and its port all along."""
        port, other_port = free_port(), free_port()
        used, other = tmp_path / "data" / "firehouse.db", tmp_path / "data" / "other.db"
        settings = write_settings(tmp_path, state="data/firehouse.db",
                                  listen=f"127.0.0.1:{port}")
        original = settings.read_text(encoding="utf-8")
        env = config_env(pagerduty_url=pagerduty.url, database_url=database_url)
        firehouse = Firehouse(load_config(settings, env=env), settings, env=env)
        await firehouse.start()
        try:
            async with aiohttp.ClientSession() as session:
                running = Running(firehouse, session)
                write_settings(tmp_path, state="data/other.db", listen=f"127.0.0.1:{other_port}")
                changed, _ = await running.post(b"", path="/-/reload")
                warned = restart_warnings(caplog)
                caplog.clear()
                settings.write_text(original, encoding="utf-8")
                await firehouse.request_reload("SIGHUP")
                reverted = restart_warnings(caplog)
                healthy, _ = await running.get("/-/healthy")
                kept = firehouse.config.settings
        finally:
            await firehouse.stop()

        assert changed == 200
        assert warned == [
            f"setting state changes only on restart; still using {used} (not {other})",
            f"setting listen changes only on restart; still using 127.0.0.1:{port} "
            f"(not 127.0.0.1:{other_port})",
        ]
        assert reverted == []
        assert (firehouse.port, healthy) == (port, 200)
        assert (kept.state, kept.listen_port) == (used, port)

    async def test_a_change_kept_through_reloads_is_said_each_time(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Until the restart, every reload says the value in force is still the first."""
        settings = write_settings(tmp_path, max_body_bytes=2048)
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            write_settings(tmp_path, max_body_bytes=4096)
            await running.post(b"", path="/-/reload")
            write_settings(tmp_path, max_body_bytes=8192)
            await running.post(b"", path="/-/reload")

        assert restart_warnings(caplog) == [
            "setting max_body_bytes changes only on restart; still using 2048 (not 4096)",
            "setting max_body_bytes changes only on restart; still using 2048 (not 8192)",
        ]


def restart_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "only on restart" in r.getMessage()]


class TestReloadAgreesWithCheck:
    """`firehouse check`, a start and a reload validate the same way: what one refuses, the
    others refuse too, with the same problem."""

    @sqlite_only
    @pytest.mark.parametrize("shared", [False, True], ids=["sqlite", "database.url"])
    async def test_a_lease_no_longer_than_the_pagerduty_timeout(
        self, tmp_path: Path, database_url: str, pagerduty: PagerDutyStandIn, shared: bool,
    ) -> None:
        """`database.lease_seconds: 5` (PagerDuty's timeout is 10 s): fine on SQLite, where
        there are no leases, for both; refused by both once `database.url` is set."""
        database: dict[str, Any] = {"lease_seconds": 5}
        if shared:
            # Never connected to: the settings are refused before anything is.
            database["url"] = "postgresql://firehouse@127.0.0.1:9/firehouse"
        settings = write_settings(tmp_path)
        async with serving(tmp_path, database_url, pagerduty, settings) as running:
            write_settings(tmp_path, database=database)
            status, answer = await running.post(b"", path="/-/reload")
        env = {**config_env(pagerduty_url=pagerduty.url, state=tmp_path / "state.db"),
               "PATH": os.environ.get("PATH", "")}
        check = subprocess.run(
            [sys.executable, "-m", "daemon", "check", "--config", str(settings)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)

        line = settings.read_text(encoding="utf-8").splitlines().index("  lease_seconds: 5")
        problem = (f"{settings}:{line + 1}: database.lease_seconds: must be longer than "
                   "pagerduty.timeout_seconds (10) with database.url set: an event still "
                   "being sent when its lease runs out is sent again by another replica "
                   "(got 5)")
        if shared:
            assert (status, answer["problems"]) == (400, [problem])
            assert (check.returncode, check.stdout) == (1, f"FAILED: 1 problem(s)\n  {problem}\n")
        else:
            assert status == 200, answer
            assert check.returncode == 0, check.stdout
