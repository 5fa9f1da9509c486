"""Shared fixtures: the stores, the PagerDuty stand-in and factories of real processes.

Every test that keeps state runs once per store backend: ``backend`` is parametrised over
"sqlite" (a file in the test's tmp_path) and "postgres" (a schema of its own in a database
made for this pytest run, dropped at its end). ``store``, ``new_store``, ``database_url``
and the ``firehouse`` process factory all follow it. Without a reachable PostgreSQL the
"postgres" tests are skipped, or fail under FIREHOUSE_REQUIRE_E2E=1 (CI), as the
end-to-end tests are without their binaries.

Teardown order is the reverse of the data flow -- Prometheus, Alertmanager, Firehouse,
then the stand-in -- because each factory fixture depends on the next one downstream.
Every process a factory started is stopped at teardown, whether the test passed or not;
when the test failed, the tails of their logs are printed (pytest shows them under
"Captured stdout teardown").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from daemon.config import Config
from daemon.store import Store
from daemon.store.sqlite import SqliteStore
from tests.helpers import make_config
from tests.pagerduty_standin import PagerDutyStandIn
from tests.procs import (
    ALERTMANAGER_BINARY,
    PROMETHEUS_BINARY,
    REQUIRE_E2E_ENV,
    AlertmanagerProcess,
    FirehouseProcess,
    ManagedProcess,
    PrometheusProcess,
    require_binary,
)

_UNSET: Any = object()
_T = TypeVar("_T")

BACKENDS = ("sqlite", "postgres")
# For a test of the SQLite file itself (WAL, pragmas...) that uses a store fixture.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])
# The server the "postgres" tests use: a database `test` there lets us create others.
POSTGRES_ENV = "FIREHOUSE_TEST_POSTGRES"
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
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
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pagerduty: PagerDutyStandIn,
    database_urls: Callable[[], str],
) -> AsyncIterator[FirehouseFactory]:
    """Start Firehouse processes sending to the ``pagerduty`` stand-in.

    ``await firehouse(token="s3cret")`` returns a ready `FirehouseProcess`; with
    ``start=False`` it is only configured (call ``.start()``). A Firehouse that does not
    exit 0 on SIGTERM at teardown fails the test (a kill9() before teardown is fine).
    Each process keeps its state in a store of the test's ``backend`` of its own (its
    SQLite file, or a fresh PostgreSQL schema), kept across its restarts.
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
        proc = FirehouseProcess(
            workdir,
            pagerduty.url,
            token=token,
            settings=settings,
            env=env,
            database_url=database_urls(),
        )
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


# --------------------------------------------------------------------------- stores


def _blocking(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on an event loop of its own in another thread: usable
    from any fixture, whether or not the test's loop is running in this thread."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(make())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="postgres-admin")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _with_database(dsn: str, database: str) -> str:
    """``dsn`` naming another database on the same server (no query)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", ""))


class PostgresDatabase:
    """A database of its own for this pytest run; every store in it gets a fresh schema."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.schemas: set[str] = set()

    def new_schema(self) -> str:
        """Create an empty schema; the DSN of a store that keeps everything in it."""
        schema = f"t_{secrets.token_hex(6)}"
        _blocking(lambda: _execute(self.dsn, f'CREATE SCHEMA "{schema}"'))
        self.schemas.add(schema)
        return f"{self.dsn}?search_path={schema}"

    def drop_schema(self, dsn: str) -> None:
        """Drop the schema of a DSN from `new_schema` with all it holds."""
        schema = urlsplit(dsn).query.removeprefix("search_path=")
        assert schema in self.schemas, dsn
        # A store still connected and inside a transaction would hold a lock: say so.
        _blocking(lambda: _execute(self.dsn, "SET lock_timeout = '10s'",
                                   f'DROP SCHEMA "{schema}" CASCADE'))
        self.schemas.discard(schema)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresDatabase]:
    """A fresh database ``fh_test_<random>`` on the test PostgreSQL for this run, dropped
    (FORCE) at its end. Skips -- or fails, under FIREHOUSE_REQUIRE_E2E=1 -- when PostgreSQL
    cannot be reached."""
    admin = os.environ.get(POSTGRES_ENV) or POSTGRES_ADMIN_DSN
    name = f"fh_test_{secrets.token_hex(6)}"
    try:
        _blocking(lambda: _execute(admin, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        parts = urlsplit(admin)
        reason = (
            f"PostgreSQL at {parts.hostname}:{parts.port or 5432} (database "
            f"{parts.path.lstrip('/')!r}) is not usable: {type(exc).__name__}: {exc}; start it "
            f"(scripts/test does: pg_ctlcluster <version> main start) or point {POSTGRES_ENV} "
            f"at another server to run the tests on the PostgreSQL store"
        )
        if os.environ.get(REQUIRE_E2E_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_E2E_ENV}=1 requires them", pytrace=False)
        pytest.skip(reason)
    try:
        yield PostgresDatabase(_with_database(admin, name))
    finally:
        _blocking(lambda: _execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store every store-keeping fixture of the test uses: "sqlite" or "postgres"."""
    name: str = request.param
    return name


@pytest.fixture
def database_urls(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Make a fresh, empty database for one store: ``""`` under SQLite (the store's file is
    its database), else the DSN of a new PostgreSQL schema; dropped after the test."""
    if backend != "postgres":
        yield lambda: ""
        return
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    made: list[str] = []

    def make() -> str:
        made.append(database.new_schema())
        return made[-1]

    try:
        yield make
    finally:
        for dsn in made:
            database.drop_schema(dsn)


@pytest.fixture
def database_url(database_urls: Callable[[], str]) -> str:
    """The test's database: ``""`` under SQLite (the state file), else a PostgreSQL DSN
    (for ``database.url`` / FIREHOUSE_DATABASE_URL) of a fresh schema."""
    return database_urls()


class NewStore(Protocol):
    def __call__(self, *mixins: type) -> Any: ...


@pytest.fixture
def new_store(backend: str, tmp_path: Path, database_url: str) -> NewStore:
    """Build (not open) a store on the test's database -- each call the same one, as a
    restarted Firehouse would: ``tmp_path / "state.db"`` or the test's PostgreSQL schema.
    ``mixins`` go in front of the backend's class (test doubles that override methods)."""

    def new(*mixins: type) -> Any:
        base: type
        if backend == "sqlite":
            base, where = SqliteStore, tmp_path / "state.db"
        else:
            from daemon.store.postgres import PostgresStore  # noqa: PLC0415

            base, where = PostgresStore, database_url
        cls = type("".join(m.__name__ for m in mixins) + base.__name__, (*mixins, base), {})
        return cls(where) if mixins else base(where)

    return new


# Shared by the unit tests of the engine, store, outbox, client and server.


@pytest.fixture(scope="module")
def config() -> Config:
    """The repository's configuration with a routing key for every target."""
    return make_config()


@pytest.fixture
async def store(new_store: NewStore) -> AsyncIterator[Store]:
    """An open store of the test's backend on a fresh, empty database."""
    opened = new_store()
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
