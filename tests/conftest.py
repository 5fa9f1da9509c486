"""Shared fixtures: the PagerDuty stand-in and factories of real processes.

Teardown order is the reverse of the data flow -- Prometheus, Alertmanager, Firehouse,
then the stand-in -- because each factory fixture depends on the next one downstream.
Every process a factory started is stopped at teardown, whether the test passed or not;
when the test failed, the tails of their logs are printed (pytest shows them under
"Captured stdout teardown").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from daemon.config import Config
from daemon.store.sqlite import SqliteStore
from tests.helpers import make_config
from tests.pagerduty_standin import PagerDutyStandIn
from tests.procs import (
    ALERTMANAGER_BINARY,
    PROMETHEUS_BINARY,
    AlertmanagerProcess,
    FirehouseProcess,
    ManagedProcess,
    PrometheusProcess,
    require_binary,
)

_UNSET: Any = object()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


async def _stop_all(request: pytest.FixtureRequest, procs: list[ManagedProcess]) -> list[str]:
    """Stop every process (last started first); returns the unclean exits of Firehouse."""
    unclean: list[str] = []
    failed = _test_failed(request)
    for proc in reversed(procs):
        was_running = proc.running
        status = await proc.stop()
        if failed:
            print(f"\n{proc.logs(60)}")
        if was_running and isinstance(proc, FirehouseProcess) and (proc.killed or status != 0):
            unclean.append(
                f"{proc.name} on port {proc.port} did not exit cleanly on SIGTERM "
                f"(status {status}, killed={proc.killed})\n{proc.logs()}"
            )
    return unclean


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def pagerduty() -> AsyncIterator[PagerDutyStandIn]:
    """A started PagerDuty Events API v2 stand-in on a free local port."""
    async with PagerDutyStandIn() as standin:
        yield standin


class FirehouseFactory(Protocol):
    def __call__(
        self,
        *,
        token: str | None = None,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> Awaitable[FirehouseProcess]: ...


@pytest.fixture
async def firehouse(
    request: pytest.FixtureRequest, tmp_path: Path, pagerduty: PagerDutyStandIn
) -> AsyncIterator[FirehouseFactory]:
    """Start Firehouse processes sending to the ``pagerduty`` stand-in.

    ``await firehouse(token="s3cret")`` returns a ready `FirehouseProcess`; with
    ``start=False`` it is only configured (call ``.start()``). A Firehouse that does not
    exit 0 on SIGTERM at teardown fails the test (a kill9() before teardown is fine).
    """
    procs: list[ManagedProcess] = []

    async def start(
        *,
        token: str | None = None,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> FirehouseProcess:
        workdir = tmp_path / f"firehouse-{len(procs) + 1}"
        proc = FirehouseProcess(workdir, pagerduty.url, token=token, settings=settings, env=env)
        procs.append(proc)
        if start:
            await proc.start()
        return proc

    try:
        yield start
    finally:
        unclean = await _stop_all(request, procs)
    if unclean:
        pytest.fail("\n\n".join(unclean), pytrace=False)


AlertmanagerFactory = Callable[..., Awaitable[AlertmanagerProcess]]


@pytest.fixture
async def alertmanager(
    request: pytest.FixtureRequest, tmp_path: Path, firehouse: FirehouseFactory
) -> AsyncIterator[AlertmanagerFactory]:
    """Start Alertmanagers that send every alert to one Firehouse.

    ``await alertmanager(fh)`` uses ``fh.token`` as the webhook's bearer credentials;
    ``token=`` overrides it (None: no credentials), ``route=`` overrides route settings.
    Skips (or fails, under FIREHOUSE_REQUIRE_E2E=1) when the binary is missing.
    """
    binary = require_binary(*ALERTMANAGER_BINARY)
    procs: list[ManagedProcess] = []

    async def start(
        target: FirehouseProcess,
        *,
        token: str | None = _UNSET,
        route: Mapping[str, Any] | None = None,
    ) -> AlertmanagerProcess:
        workdir = tmp_path / f"alertmanager-{len(procs) + 1}"
        proc = AlertmanagerProcess(
            workdir,
            target.webhook_url,
            token=target.token if token is _UNSET else token,
            route=route,
            binary=binary,
        )
        procs.append(proc)
        await proc.start()
        return proc

    try:
        yield start
    finally:
        await _stop_all(request, procs)


PrometheusFactory = Callable[..., Awaitable[PrometheusProcess]]


@pytest.fixture
async def prometheus(
    request: pytest.FixtureRequest, tmp_path: Path, alertmanager: AlertmanagerFactory
) -> AsyncIterator[PrometheusFactory]:
    """Start Prometheus servers: ``await prometheus(am, rules)`` with a rule-file mapping.

    Skips (or fails, under FIREHOUSE_REQUIRE_E2E=1) when the binary is missing.
    """
    binary = require_binary(*PROMETHEUS_BINARY)
    procs: list[ManagedProcess] = []

    async def start(am: AlertmanagerProcess, rules: Mapping[str, Any]) -> PrometheusProcess:
        workdir = tmp_path / f"prometheus-{len(procs) + 1}"
        proc = PrometheusProcess(workdir, am.url, rules, binary=binary)
        procs.append(proc)
        await proc.start()
        return proc

    try:
        yield start
    finally:
        await _stop_all(request, procs)


# Shared by the unit tests of the engine, store, outbox, client and server.


@pytest.fixture(scope="module")
def config() -> Config:
    """The repository's configuration with a routing key for every target."""
    return make_config()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open store on a fresh database file."""
    opened = SqliteStore(tmp_path / "state.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def pd(pagerduty: PagerDutyStandIn) -> PagerDutyStandIn:
    """The PagerDuty stand-in on a free local port (short name)."""
    return pagerduty


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession() as opened:
        yield opened
