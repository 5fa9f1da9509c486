"""The PostgreSQL store: several Firehouse replicas on one database, none of them special.

Decisions are serialised across the replicas by the row lock of `decision_clock`: a
decision is made under it (`exclusive`), and each transaction that writes decisions bumps
the clock's version and stamps it on every incident, resolution and change it wrote, so
that a replica catches up on what the others decided by reading what carries a newer
version (`delta`), and hears that there is something to read by LISTEN/NOTIFY.

The outbox is shared: an event handed out by `due_events` is leased to this replica for
`lease_seconds`, so that each event is sent by one replica at a time; a replica that stops
hands its leases back, one that dies leaves them to run out. Whatever frees an event for
another replica (a lease handed back, a retry recorded, a finished event with the next of
its dedup key behind it) is announced on the channel, so that the others do not sleep
until a lease that no longer holds would have run out.

The tables are the SQLite store's, column for column and in the same order (the helpers
of daemon/store/rows.py read both), with times as epoch seconds and JSON documents as
text; the columns this store adds come last. Every statement names its tables without a
schema: the schema is the connection's `search_path` (`?search_path=...` in the DSN).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import asyncpg

from daemon.changes import change_json
from daemon.decide import (
    OPEN,
    RESOLVE,
    AlertRecord,
    Decision,
    State,
    trigger_priority,
)
from daemon.errors import OutboxConflict, StoreError, StoreUnreachable
from daemon.store import (
    DEAD,
    DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_RETRIED,
    DRY_RUN,
    PENDING,
    Attempt,
    Delta,
    MarksByRecord,
    Replica,
    StoredEvent,
    pgsql,
)
from daemon.store.rows import (
    DELIVERY_COLUMNS,
    DELIVERY_ORDER,
    DRY_RUN_INCIDENTS,
    PAGE_ACTIONS,
    alert_from_row,
    alert_json,
    change_from_row,
    delivery_json,
    epoch,
    event_from_row,
    from_epoch,
    incident_from_row,
    incident_json,
    json_text,
    need_from_epoch,
)

log = logging.getLogger("firehouse.store.postgres")

CONNECT_TIMEOUT = 5.0  # seconds to open a connection: an unreachable server fails fast
COMMAND_TIMEOUT = 10.0  # seconds for a statement, waiting for the decision lock included
ACQUIRE_TIMEOUT = 10.0  # seconds to wait for a free connection of the pool
MIGRATION_TIMEOUT = 300.0  # a migration may rewrite a large table; others wait for it
POOL_SIZE = (1, 8)
# A session left idle inside a transaction -- a replica frozen or cut off while holding
# the decision lock -- is ended by the server after this, so that the others can decide
# again instead of waiting for TCP to notice (hours).
IDLE_IN_TRANSACTION_MS = 30_000
LISTEN_HEARTBEAT = 15.0  # seconds between checks that a quiet listener is still connected
RECONNECT_DELAYS = (1.0, 30.0)  # the listener's backoff: first and longest wait
# pg_advisory_lock(class, key) serialises migrations; the key is the schema's hash, so that
# Firehouses in different schemas of one database do not wait for each other.
MIGRATION_LOCK_CLASS = 0x46484D47  # "FHMG"
APPLICATION_NAME_LIMIT = 63  # PostgreSQL truncates longer names

# Errors of the database or of the way to it; anything else is a bug or bad data.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
    TimeoutError)
# Of those, the ones that say the database cannot be reached or is going away, rather than
# that it refused what was written.
_OUTAGES: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError)


def describe_dsn(dsn: str) -> str:
    """`dsn` as it can be shown in messages and logs: without its password (in the user
    part or as a query parameter)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        return "(a PostgreSQL DSN that is not a postgresql:// URL)"
    user_part, _, hosts = parts.netloc.rpartition("@")
    user = user_part.partition(":")[0]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if "password" not in k.lower()])
    return (f"{parts.scheme}://{user + '@' if user else ''}{hosts}{parts.path}"
            f"{'?' + query if query else ''}")


def default_owner() -> str:
    """This process's name on its leases: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def channel_of(schema: str) -> str:
    """The NOTIFY channel of the Firehouse in `schema` (a database has one namespace)."""
    return "firehouse_" + hashlib.sha256(schema.encode()).hexdigest()[:20]


@contextlib.contextmanager
def translated(where: str, doing: str, *, connecting: bool = False) -> Iterator[None]:
    """Turn every error of the database, or of the way to it, into a StoreError that names
    the database and what was being done; `connecting`: a malformed DSN too (its message
    does not repeat the DSN)."""
    errors: tuple[type[BaseException], ...] = (
        (*DATABASE_ERRORS, ValueError) if connecting else DATABASE_ERRORS)
    try:
        yield
    except errors as exc:
        problem = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            problem = f"timed out ({problem})" if str(exc) else "timed out"
        kind = StoreUnreachable if isinstance(exc, _OUTAGES) else StoreError
        raise kind(f"state database {where}: {doing}: {problem}") from exc


def pg_text(value: str) -> str:
    """A string PostgreSQL can store: `text` refuses NUL, which an alert's labels may carry
    into plain columns (SQLite keeps it). Swapped for U+FFFD rather than failing the
    webhook on every retry."""
    return value.replace("\x00", "\ufffd")


def _optional_text(value: str | None) -> str | None:
    return None if value is None else pg_text(value)


async def tables_with_rows(conn: Any, tables: Sequence[str]) -> list[str]:
    """Those of `tables` (names this code gives, never input) that hold a row."""
    return [table for table in tables
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")]  # noqa: S608


def row_count(status: str) -> int:
    """The row count of a command status such as `DELETE 3` or `INSERT 0 3`."""
    return int(status.rsplit(" ", 1)[-1])


def _session_settings(dsn: str, application_name: str) -> dict[str, str]:
    """Settings for every session, unless the DSN sets them (it wins)."""
    given = {key for key, _ in parse_qsl(urlsplit(dsn).query)}
    wanted = {
        "application_name": application_name.encode()[:APPLICATION_NAME_LIMIT].decode(
            errors="ignore"),
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
    }
    return {key: value for key, value in wanted.items() if key not in given}


def _urgency(event: StoredEvent) -> int:
    """An event's rank in delivery order (URGENCY in Python)."""
    return trigger_priority("critical") if event.action == RESOLVE else event.priority


# -- writing decisions ---------------------------------------------------------------------


@dataclass(slots=True)
class _Rows:
    """The rows a batch of decisions writes, merged so that each table takes one statement
    and the outcome is that of writing the decisions one after the other: a later write of
    a row replaces an earlier one, and `seen` updates a record written earlier in the batch
    in place."""

    incidents: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    alerts: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    touched: dict[tuple[str, str], float] = field(default_factory=dict)
    seen_incidents: set[str] = field(default_factory=set)
    resolutions: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    timeline: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    changes: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def of(cls, decisions: Sequence[Decision]) -> _Rows:
        rows = cls()
        for decision in decisions:
            rows.add(decision)
        return rows

    def add(self, decision: Decision) -> None:
        now = epoch(decision.now) or 0.0
        for incident in decision.incidents:
            self.incidents[incident.id] = (
                incident.id, incident.status, epoch(incident.opened_at),
                epoch(incident.updated_at), epoch(incident.resolved_at), incident.severity,
                pg_text(incident.title), json_text(incident.to_doc()))
        # Only the alerts the decision set, when it says which: the others of its incidents
        # are stored already, and an incident can hold thousands.
        records = decision.records if decision.records is not None else [
            (incident.id, a) for incident in decision.incidents for a in incident.alerts.values()]
        for incident_id, alert in records:
            key = (incident_id, pg_text(alert.fingerprint))
            self.alerts[key] = _alert_row(incident_id, alert)
            self.touched.pop(key, None)
        for incident_id, fingerprint in decision.seen:
            key = (incident_id, pg_text(fingerprint))
            self.seen_incidents.add(incident_id)
            if key in self.alerts:
                row = self.alerts[key]
                self.alerts[key] = (*row[:6], now, *row[7:])
            else:
                self.touched[key] = now
        for fingerprint, starts in decision.resolutions:
            self.resolutions[pg_text(fingerprint)] = (pg_text(fingerprint), epoch(starts), now)
        self.timeline.extend((n.incident_id, epoch(n.at), n.kind, pg_text(n.message))
                             for n in decision.timeline)
        self.outbox.extend((e.incident_id, e.target, e.routing_key, e.dedup_key, e.action,
                            json_text(dict(e.body)), e.priority, now)
                           for e in decision.events)
        self.changes.extend((c.id, c.service, epoch(c.at), epoch(c.received_at), c.summary, c.who,
                             c.version, json_text([list(link) for link in c.links]))
                            for c in decision.changes)

    async def write(self, conn: Any, version: int) -> None:
        """Write the rows on `conn`, stamping `version`: one statement per table."""
        if self.incidents:
            await conn.execute(pgsql.UPSERT_INCIDENTS, *as_columns(self.incidents.values()),
                               version)
        if self.alerts:
            await conn.execute(pgsql.UPSERT_ALERTS, *as_columns(self.alerts.values()))
        if self.touched:
            await conn.execute(pgsql.TOUCH_ALERTS, *as_columns(
                [(*key, at) for key, at in self.touched.items()]))
        # Incidents written carry the version already; a seen-only one gets it here, so
        # that other replicas pick up its alerts' new last_seen.
        stamped = sorted(self.seen_incidents.difference(self.incidents))
        if stamped:
            await conn.execute(pgsql.STAMP_INCIDENTS, stamped, version)
        if self.resolutions:
            await conn.execute(pgsql.UPSERT_RESOLUTIONS, *as_columns(self.resolutions.values()),
                               version)
        if self.timeline:
            await conn.execute(pgsql.INSERT_TIMELINE, *as_columns(self.timeline))
        if self.outbox:
            await conn.execute(pgsql.INSERT_OUTBOX, *as_columns(self.outbox))
        if self.changes:
            await conn.execute(pgsql.INSERT_CHANGES, *as_columns(self.changes), version)


def _alert_row(incident_id: str, alert: AlertRecord) -> tuple[Any, ...]:
    return (incident_id, pg_text(alert.fingerprint), alert.status, epoch(alert.starts_at),
            epoch(alert.ends_at), epoch(alert.first_seen), epoch(alert.last_seen),
            _optional_text(alert.service), pg_text(alert.severity), pg_text(alert.generator_url),
            json_text(dict(alert.labels)), json_text(dict(alert.annotations)))


def as_columns(rows: Collection[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows turned into one array per column, for `unnest`."""
    return [list(column) for column in zip(*rows, strict=True)]


# -- reading -------------------------------------------------------------------------------


async def _read_version(conn: Any) -> int:
    return int(await conn.fetchval(pgsql.READ_CLOCK))


async def _read_alerts(conn: Any, where: str, arg: Any) -> dict[str, dict[str, AlertRecord]]:
    """The alerts of the incidents `where` (a condition on incidents `i`) selects, by
    incident, in the order they were first seen (the order the engine added them)."""
    alerts: dict[str, dict[str, AlertRecord]] = {}
    for row in await conn.fetch(
            f"SELECT {pgsql.A_ALERT_LIST} FROM alerts a JOIN incidents i ON i.id = a.incident_id "  # noqa: S608
            f"WHERE {where} ORDER BY {pgsql.ALERTS_BY_INCIDENT}", arg):
        alerts.setdefault(row[0], {})[row[1]] = alert_from_row(row)
    return alerts


async def _read_state(conn: Any, cutoff: float, changes_cutoff: float) -> State:
    """The SQLite store's `_load_state`, on `conn`."""
    rows = await conn.fetch(f"SELECT {pgsql.INCIDENT_LIST} FROM incidents WHERE status = $1", OPEN)  # noqa: S608
    alerts = await _read_alerts(conn, "i.status = $1", OPEN)
    incidents = {row[0]: incident_from_row(row, alerts.get(row[0], {})) for row in rows}
    by_fp = {fp: i.id for i in incidents.values() for fp in i.alerts}
    by_service = {name: i.id for i in incidents.values() if i.mapped for name in i.services}
    resolved = {row[0]: from_epoch(row[1]) for row in await conn.fetch(
        "SELECT fingerprint, starts_at FROM resolutions WHERE at >= $1", cutoff)}
    changes = tuple(change_from_row(row) for row in await conn.fetch(
        f"SELECT {pgsql.CHANGE_LIST} FROM changes WHERE at >= $1 "  # noqa: S608
        f"ORDER BY {pgsql.CHANGES_OLDEST_FIRST}",
        changes_cutoff))
    return State(MappingProxyType(incidents), MappingProxyType(by_fp),
                 MappingProxyType(resolved), changes=changes,
                 by_service=MappingProxyType(by_service))


async def _read_delta(conn: Any, since: int) -> Delta:
    """What carries a version after `since`, and the clock's version, on `conn`."""
    version = await _read_version(conn)
    rows = await conn.fetch(
        f"SELECT {pgsql.INCIDENT_LIST} FROM incidents WHERE {pgsql.STAMP} > $1 "  # noqa: S608
        f"ORDER BY {pgsql.STAMP}, id", since)
    alerts = await _read_alerts(conn, f"i.{pgsql.STAMP} > $1", since)
    resolutions = await conn.fetch(
        f"SELECT fingerprint, starts_at FROM resolutions WHERE {pgsql.STAMP} > $1 "  # noqa: S608
        f"ORDER BY {pgsql.STAMP}, fingerprint", since)
    changes = await conn.fetch(
        f"SELECT {pgsql.CHANGE_LIST} FROM changes WHERE {pgsql.STAMP} > $1 "  # noqa: S608
        f"ORDER BY {pgsql.CHANGES_OLDEST_FIRST}",
        since)
    return Delta(
        version=version,
        incidents=tuple(incident_from_row(row, alerts.get(row[0], {})) for row in rows),
        resolutions=tuple((row[0], from_epoch(row[1])) for row in resolutions),
        changes=tuple(change_from_row(row) for row in changes),
    )


# -- the store -----------------------------------------------------------------------------


class PostgresExclusive:
    """The `Exclusive` of a PostgresStore: a transaction on one connection that holds the
    row lock of `decision_clock`, the cluster-wide decision lock."""

    def __init__(self, store: PostgresStore, connection: Any, version: int) -> None:
        self.connection = connection
        self.version = version
        self.wrote = False
        self._store = store

    async def delta(self, since: int) -> Delta:
        """What was committed after `since`, read in this transaction (under the lock no
        other decision can commit, so each statement sees the same decisions)."""
        with translated(self._store.where, "reading what other replicas decided"):
            return await _read_delta(self.connection, since)

    async def write(self, decisions: Sequence[Decision]) -> int:
        """Write decisions in this transaction under one new version (returned)."""
        rows = _Rows.of(decisions)
        try:
            with translated(self._store.where, "writing decisions"):
                version = await self.advance()
                await rows.write(self.connection, version)
        except StoreError:
            self._store.healthy = False
            raise
        return version

    async def advance(self) -> int:
        """Bump the decision clock in this transaction (listeners hear of the new version
        when it commits); the version."""
        self.version = int(await self.connection.fetchval(pgsql.ADVANCE_CLOCK, self._store.channel))
        self.wrote = True
        return self.version


class PostgresStore(MarksByRecord):
    """A store on PostgreSQL that several Firehouse replicas share (`SharedStore`)."""

    shared = True

    def __init__(self, dsn: str, *, lease_seconds: float = 30.0,
                 owner: str | None = None) -> None:
        self.dsn = dsn
        self.where = describe_dsn(dsn)
        self.lease_seconds = lease_seconds
        self.owner = owner or default_owner()
        self.healthy = True
        self.channel = ""  # known once open: it depends on the schema
        self.migrations_applied: list[int] = []  # by the last open()
        self._pool: Any = None
        self._pending: list[tuple[Decision, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[int], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening = False  # the listener's connection is up (for its backoff)

    # -- connections -------------------------------------------------------------------------

    def _settings(self, role: str) -> dict[str, str]:
        return _session_settings(self.dsn, f"firehouse{role} {self.owner}")

    async def open(self) -> None:
        """Connect, and bring the schema up to date; StoreError when the database cannot
        be reached, or holds a schema newer than this Firehouse."""
        with translated(self.where, "connecting", connecting=True):
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=POOL_SIZE[0], max_size=POOL_SIZE[1],
                timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                server_settings=self._settings(""))
        try:
            self.migrations_applied = await self.migrate()
        except BaseException:
            await self._close_pool()
            raise
        if self.migrations_applied:
            log.info("state database %s: applied migrations %s", self.where,
                     self.migrations_applied)
        if self._callbacks:
            self._listener = asyncio.create_task(self._listen_forever(),
                                                 name="firehouse-postgres-listener")

    async def migrate(self) -> list[int]:
        """Apply the migrations the database lacks, each in its own transaction, holding
        an advisory lock so that replicas starting together apply each once; the versions
        applied. StoreError for a database migrated by a newer Firehouse. Works before
        `open` too (on a connection of its own)."""
        known = pgsql.MIGRATIONS[-1][0]
        async with self._migration_session() as conn:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise StoreError(f"state database {self.where}: no schema to create tables "
                                 "in (the search_path names none that exists)")
            self.channel = channel_of(schema)
            await conn.execute("SELECT pg_advisory_lock($1, hashtext(current_schema()))",
                               MIGRATION_LOCK_CLASS, timeout=MIGRATION_TIMEOUT)
            try:
                return await self._apply_migrations(conn, known)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext(current_schema()))",
                                   MIGRATION_LOCK_CLASS)

    @contextlib.asynccontextmanager
    async def _migration_session(self) -> AsyncIterator[Any]:
        """A connection of the pool, or of its own before `open`."""
        doing = "migrating the schema"
        if self._pool is not None:
            async with self._session(doing) as conn:
                yield conn
            return
        with translated(self.where, doing, connecting=True):
            conn = await _connect(self.dsn, server_settings=self._settings(""))
            try:
                yield conn
            finally:
                conn.terminate()

    async def _apply_migrations(self, conn: Any, known: int) -> list[int]:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS firehouse_migrations (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at double precision NOT NULL)")
        done = {int(v) for v in await conn.fetchval(
            "SELECT coalesce(array_agg(version), '{}') FROM firehouse_migrations")}
        if done and max(done) > known:
            raise StoreError(f"state database {self.where} has schema version {max(done)}, "
                             f"newer than this Firehouse ({known})")
        applied = []
        for version, description, sql in pgsql.MIGRATIONS:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql, timeout=MIGRATION_TIMEOUT)
                await conn.execute("INSERT INTO firehouse_migrations VALUES ($1, $2, $3)",
                                   version, description, time.time())
            applied.append(version)
        return applied

    def _open_pool(self) -> Any:
        if self._pool is None:
            raise StoreError(f"state database {self.where} is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _acquired(self, doing: str) -> AsyncIterator[Any]:
        """A connection of the pool, for the body only; errors of the body are its own."""
        pool = self._open_pool()
        with translated(self.where, doing):
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
        try:
            yield conn
        finally:
            try:
                await pool.release(conn)
            except DATABASE_ERRORS as exc:
                # Handing back a connection resets it, which a hung database does not
                # answer either (asyncpg then closes it): what the body did or raised
                # stands, not this.
                log.debug("state database %s: a connection was closed instead of handed "
                          "back: %s", self.where, exc or type(exc).__name__)

    @contextlib.asynccontextmanager
    async def _session(self, doing: str) -> AsyncIterator[Any]:
        """A connection of the pool; database errors in the body become StoreError."""
        async with self._acquired(doing) as conn:
            with translated(self.where, doing):
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self, doing: str, *, snapshot: bool = False) -> AsyncIterator[Any]:
        """A connection in a transaction, committed when the body ends without error;
        `snapshot`: read-only, every statement reading the same snapshot."""
        async with self._session(doing) as conn:
            if snapshot:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    yield conn
            else:
                async with conn.transaction():
                    yield conn

    async def _written(self, doing: str, write: Callable[[Any], Awaitable[None]]) -> None:
        """Run `write(conn)` in a transaction, setting `healthy` by the outcome."""
        try:
            async with self._transaction(doing) as conn:
                await write(conn)
        except StoreError:
            self.healthy = False
            raise
        self.healthy = True

    async def close(self) -> None:
        """Finish pending commits, hand this replica's leases back (the others send those
        events at once instead of when the leases run out), stop listening, disconnect."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            try:
                await self._release_leases()
            except StoreError as exc:
                log.warning("could not hand back the outbox leases of %s (they run out in "
                            "%ss): %s", self.owner, self.lease_seconds, exc)
            await self._close_pool()

    async def _release_leases(self) -> None:
        async with self._transaction("handing back outbox leases") as conn:
            released = row_count(await conn.execute(pgsql.RELEASE_LEASES, self.owner))
            if released:
                await conn.execute(pgsql.NOTIFY_CLOCK, self.channel)

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
        except DATABASE_ERRORS as exc:
            log.warning("state database %s: closing: %s", self.where, exc or type(exc).__name__)
            pool.terminate()
        except asyncio.CancelledError:
            pool.terminate()
            raise

    # -- decisions ---------------------------------------------------------------------------

    def exclusive(self) -> AbstractAsyncContextManager[PostgresExclusive]:
        """Begin a transaction and take the cluster-wide decision lock (waiting for it, at
        most COMMAND_TIMEOUT seconds)."""
        return self._exclusive()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[PostgresExclusive]:
        async with self._acquired("taking the decision lock") as conn:
            transaction = conn.transaction()
            try:
                with translated(self.where, "taking the decision lock"):
                    await transaction.start()
                    try:
                        version = await conn.fetchval(pgsql.LOCK_CLOCK)
                    except BaseException:
                        await _rollback(transaction)
                        raise
            except StoreError:
                # No decision can be written: readiness says so at once, not at the next
                # probe (which makes the store healthy again once writes work).
                self.healthy = False
                raise
            held = PostgresExclusive(self, conn, int(version))
            try:
                yield held
            except BaseException:
                await _rollback(transaction)
                raise
            try:
                with translated(self.where, "committing decisions"):
                    await transaction.commit()
            except StoreError:
                self.healthy = False
                raise
            if held.wrote:
                self.healthy = True

    async def commit(self, decision: Decision) -> None:
        """Write a decision durably under the decision lock; decisions committed while a
        transaction is being written share the next one."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((decision, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _write_batch(self, decisions: list[Decision]) -> None:
        async with self.exclusive() as held:
            await held.write(decisions)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write_batch([d for d, _ in batch])
            except Exception as exc:  # every failure is answered below, none is lost
                if len(batch) == 1 or isinstance(exc, StoreUnreachable):
                    # Retrying one by one would only wait for the outage once per decision.
                    self._fail(batch, exc)
                    continue
                # One bad decision must not fail the webhooks it happened to share a
                # transaction with: write them one by one, failing only those that fail.
                for decision, future in batch:
                    try:
                        await self._write_batch([decision])
                    except Exception as single:
                        self._fail([(decision, future)], single)
                    else:
                        _resolve(future)
            else:
                for _, future in batch:
                    _resolve(future)

    def _fail(self, batch: list[tuple[Decision, asyncio.Future[None]]], exc: Exception) -> None:
        self.healthy = False
        if not isinstance(exc, StoreError):
            # A bug or data PostgreSQL refuses, not the database; still a StoreError for the
            # callers, so that the webhook is answered 503 and the engine state reloaded.
            log.error("unexpected error writing to %s: %r", self.where, exc)
        error = exc if isinstance(exc, StoreError) else StoreError(
            f"could not write to {self.where}: {exc!r}")
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    # -- engine state ------------------------------------------------------------------------

    async def load_state(self, now: datetime, retention_seconds: float, *,
                         changes_seconds: float = 86400.0) -> State:
        """Open incidents with their alerts, resolutions younger than the retention, and
        changes made within `changes_seconds` (oldest first)."""
        state, _ = await self.load_versioned(now, retention_seconds,
                                             changes_seconds=changes_seconds)
        return state

    async def load_versioned(self, now: datetime, retention_seconds: float, *,
                             changes_seconds: float = 86400.0) -> tuple[State, int]:
        """`load_state`, with the version it is current to, read in one snapshot."""
        async with self._transaction("loading the engine state", snapshot=True) as conn:
            version = await _read_version(conn)
            state = await _read_state(conn, now.timestamp() - retention_seconds,
                                      now.timestamp() - changes_seconds)
        return state, version

    async def delta(self, since: int) -> Delta:
        """What was committed after `since`, read in one snapshot without the lock."""
        async with self._transaction("reading what other replicas decided",
                                     snapshot=True) as conn:
            return await _read_delta(conn, since)

    # -- listening ---------------------------------------------------------------------------

    def listen(self, callback: Callable[[int], None]) -> None:
        """Call `callback(version)` on every commit of a decision and every change of the
        outbox another replica may want to act on, by any replica, and once after every
        (re)connection of the listener. Set before `open`."""
        self._callbacks.append(callback)

    def _tell(self, version: int) -> None:
        for callback in self._callbacks:
            try:
                callback(version)
            except Exception:  # one listener's bug must not stop the others hearing
                log.exception("listener of %s failed", self.where)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            version = int(payload)
        except ValueError:
            log.warning("ignoring a notification %r on %s", payload, self.channel)
            return
        self._tell(version)

    async def _listen_forever(self) -> None:
        """Hold a dedicated connection listening on the channel; reconnect when it is lost,
        waiting longer after each failure (a connection that worked resets the wait)."""
        first, longest = RECONNECT_DELAYS
        delay = first
        while True:
            self._listening = False
            problem = "connection lost"
            try:
                await self._listen_once()
            except Exception as exc:  # whatever it was, listening must resume
                problem = str(exc) or type(exc).__name__
            if self._listening:
                delay = first
            log.warning("listener on %s: %s; reconnecting in %.0fs", self.where, problem,
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _listen_once(self) -> None:
        """Listen until the connection is lost (a heartbeat finds a silent loss)."""
        with translated(self.where, "listening for other replicas' commits", connecting=True):
            conn = await _connect(self.dsn, server_settings=self._settings("-listen"))
        lost = asyncio.Event()
        try:
            with translated(self.where, "listening for other replicas' commits"):
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(self.channel, self._on_notification)
                self._listening = True
                # Read after LISTEN, so that nothing committed in between goes unheard.
                self._tell(await _read_version(conn))
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_HEARTBEAT)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1")
        finally:
            conn.terminate()

    # -- outbox ------------------------------------------------------------------------------

    async def due_events(self, now: datetime, limit: int, *,
                         skip_routing_keys: Collection[str] = (),
                         skip_dedup_keys: Collection[str] = ()) -> list[StoredEvent]:
        """Pending events that are due, at most one per dedup key (the oldest pending one),
        most urgent first (resolves rank with critical triggers), of no key skipped, and not
        leased by another replica whose lease still runs; leased to this replica for
        `lease_seconds` from `now`."""
        async with self._session("reading due outbox events") as conn:
            rows = await conn.fetch(pgsql.DUE, now.timestamp(), self.owner, list(skip_routing_keys),
                                    list(skip_dedup_keys), limit,
                                    now.timestamp() + self.lease_seconds)
        events = [event_from_row(r) for r in rows]
        events.sort(key=lambda e: (-_urgency(e), e.id))  # RETURNING keeps no order
        return events

    async def next_attempt_at(self, *, skip_routing_keys: Collection[str] = (),
                              skip_dedup_keys: Collection[str] = ()) -> datetime | None:
        """When the earliest pending event (of no key skipped) becomes due and free for
        this replica to take: for one leased by another replica, not before its lease
        runs out."""
        async with self._session("reading the outbox") as conn:
            at = await conn.fetchval(pgsql.NEXT_CLAIMABLE, self.owner, list(skip_routing_keys),
                                     list(skip_dedup_keys))
        return from_epoch(at)

    async def record(self, attempts: Sequence[Attempt]) -> None:
        """Record the outcomes of many delivery attempts in one transaction, handing their
        leases back; an outcome for an event no longer pending (finished by another
        replica after this one's lease ran out) is ignored, with its note.

        Every replica is told (at commit) when an outcome frees something for the others:
        a retry gives its event back (due at its retry time, not when the lease would have
        run out), and a finished event lets the next event of its dedup key go (a resolve
        waiting behind its trigger). Without this, the others would sleep until the lease
        they last saw ran out -- this replica may be stopping, and send neither."""
        assert all(a.state in (PENDING, DELIVERED, DRY_RUN, DEAD) for a in attempts)
        done = [(a.event_id, a.state, a.at.timestamp(), a.status, a.error or None)
                for a in attempts if a.state != PENDING]
        retried = [(a.event_id, a.at.timestamp(), a.status, a.error)
                   for a in attempts if a.state == PENDING]

        async def write(conn: Any) -> None:
            recorded: set[int] = set()
            finished: set[str] = set()  # the dedup keys of the events finished here
            if done:
                for row in await conn.fetch(pgsql.RECORD_DONE, *as_columns(done)):
                    recorded.add(row[0])
                    finished.add(row[1])
            given_back = False
            if retried:
                rows = await conn.fetch(pgsql.RECORD_RETRY, *as_columns(retried))
                recorded.update(r[0] for r in rows)
                given_back = bool(rows)
            for attempt in attempts:
                if attempt.note and attempt.event_id in recorded:
                    await _note_on_event(conn, attempt.event_id, attempt.at, DELIVERY_FAILED,
                                         attempt.note)
            if given_back or (finished and await conn.fetchval(pgsql.PENDING_OF_KEYS,
                                                               sorted(finished))):
                await conn.execute(pgsql.NOTIFY_CLOCK, self.channel)

        await self._written("recording delivery outcomes", write)

    async def probe(self, now: datetime) -> None:
        """Write and commit one small row (`meta.probed_at`), setting `healthy` by the
        outcome: a store that failed a write is ready again once this works."""
        async def write(conn: Any) -> None:
            await conn.execute("INSERT INTO meta VALUES ('probed_at', $1) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                               now.isoformat())

        await self._written("probing", write)

    async def heartbeat(self, me: Replica, now: float, horizon: float) -> list[Replica]:
        """Write this replica's row (mode, configuration, `seen_at` now), delete the rows
        unseen for `horizon`, and read the others."""
        async with self._transaction("telling the other replicas what this one is") as conn:
            await conn.execute(pgsql.UPSERT_REPLICA, me.id, me.dry_run, me.digest, now)
            await conn.execute(pgsql.FORGET_REPLICAS, now - horizon)
            rows = await conn.fetch(pgsql.PEERS, me.id)
        return [Replica(r["id"], r["dry_run"], r["digest"], r["seen_at"]) for r in rows]

    async def leave(self, replica_id: str) -> None:
        """Delete this replica's row, so the others stop counting it now."""
        async with self._transaction("leaving the replicas") as conn:
            await conn.execute(pgsql.LEAVE, replica_id)

    async def requeue(self, event_id: int, routing_keys: Mapping[str, str], now: datetime
                      ) -> list[StoredEvent] | None:
        """Put a dead letter back to pending (attempts reset, due now, its target's current
        routing key, leased to nobody), and with it the later dead events of its dedup key,
        so that a trigger's resolve follows it; notes the retry on the incident. One
        transaction; every replica is told."""
        async with self._transaction("re-queueing a dead letter") as conn:
            found = await _requeue(conn, event_id, routing_keys, now)
            if found:
                await conn.execute(pgsql.NOTIFY_CLOCK, self.channel)
        return found

    async def tables_with_rows(self, tables: Sequence[str], doing: str) -> list[str]:
        """Those of `tables` (names this code gives, never input) that hold a row."""
        async with self._session(doing) as conn:
            return await tables_with_rows(conn, tables)

    async def oldest_pending_at(self) -> datetime | None:
        """When the oldest event still waiting for delivery was created."""
        async with self._session("reading the outbox") as conn:
            at = await conn.fetchval("SELECT MIN(created_at) FROM outbox WHERE state = $1",
                                     PENDING)
        return from_epoch(at)

    async def overdue_events(self, created_before: datetime, limit: int) -> list[StoredEvent]:
        """Events still pending that were created before `created_before`, oldest first."""
        async with self._session("reading the outbox") as conn:
            rows = await conn.fetch(
                f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE state = $1 AND created_at < $2 "  # noqa: S608
                "ORDER BY id LIMIT $3", PENDING, created_before.timestamp(), limit)
        return [event_from_row(r) for r in rows]

    async def cleanup(self, delivered_before: datetime, resolutions_before: datetime) -> int:
        """Delete delivered and dry-run rows done before the first cutoff, changes made
        before it, and remembered resolutions older than the second; dead letters stay until
        someone looks."""
        async with self._transaction("cleaning up") as conn:
            gone = row_count(await conn.execute(
                "DELETE FROM outbox WHERE state IN ($1, $2) AND done_at < $3",
                DELIVERED, DRY_RUN, delivered_before.timestamp()))
            gone += row_count(await conn.execute("DELETE FROM resolutions WHERE at < $1",
                                              resolutions_before.timestamp()))
            gone += row_count(await conn.execute("DELETE FROM changes WHERE at < $1",
                                              delivered_before.timestamp()))
        return gone

    async def dry_run_incidents(self, limit: int) -> list[str]:
        """Open incidents with events logged in dry-run (never sent), at most `limit` ids."""
        async with self._session("reading dry-run incidents") as conn:
            rows = await conn.fetch(DRY_RUN_INCIDENTS.format(limit="$1"), limit)
        return [row[0] for row in rows]

    async def outbox_counts(self) -> dict[str, int]:
        """Number of outbox rows per state."""
        async with self._session("counting the outbox") as conn:
            rows = await conn.fetch("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        return {row[0]: int(row[1]) for row in rows}

    async def list_events(self, state: str | None, limit: int) -> list[StoredEvent]:
        """Outbox rows, newest first, optionally of one state."""
        async with self._session("reading the outbox") as conn:
            rows = await conn.fetch(
                f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE ($1::text IS NULL OR state = $1) "  # noqa: S608
                "ORDER BY id DESC LIMIT $2", _optional_text(state), limit)
        return [event_from_row(r) for r in rows]

    # -- API ---------------------------------------------------------------------------------

    async def list_incidents(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Incidents as JSON-ready dicts, newest first."""
        async with self._transaction("reading incidents", snapshot=True) as conn:
            rows = await conn.fetch(
                f"SELECT {pgsql.INCIDENT_LIST} FROM incidents "  # noqa: S608
                "WHERE ($1::text IS NULL OR status = $1) "
                "ORDER BY opened_at DESC, id LIMIT $2", _optional_text(status), limit)
            docs = [json.loads(row[7]) for row in rows]
            deliveries = await _deliveries(
                conn, [page["dedup_key"] for doc in docs for page in doc["pages"]])
        return [incident_json(row, doc, deliveries) for row, doc in zip(rows, docs, strict=True)]

    async def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        """One incident with alerts, pages and timeline."""
        incident_id = pg_text(incident_id)  # as it would have been stored (NUL swapped)
        async with self._transaction("reading an incident", snapshot=True) as conn:
            row = await conn.fetchrow(f"SELECT {pgsql.INCIDENT_LIST} FROM incidents WHERE id = $1",  # noqa: S608
                                      incident_id)
            if row is None:
                return None
            doc = json.loads(row[7])
            result = incident_json(row, doc, await _deliveries(
                conn, [page["dedup_key"] for page in doc["pages"]]))
            alerts = await conn.fetch(
                f"SELECT {pgsql.ALERT_LIST} FROM alerts WHERE incident_id = $1 "  # noqa: S608
                'ORDER BY first_seen, fingerprint COLLATE "C"', incident_id)
            timeline = await conn.fetch(
                "SELECT at, kind, message FROM timeline WHERE incident_id = $1 ORDER BY id",
                incident_id)
            events = await conn.fetch(
                f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE incident_id = $1 ORDER BY id",  # noqa: S608
                incident_id)
        result["alerts"] = [alert_json(alert_from_row(a)) for a in alerts]
        result["timeline"] = [
            {"at": need_from_epoch(at).isoformat(), "kind": kind, "message": message}
            for at, kind, message in timeline
        ]
        result["events"] = [
            {"id": e.id, "target": e.target, "action": e.action, "dedup_key": e.dedup_key,
             "state": e.state, "attempts": e.attempts, "last_error": e.last_error}
            for e in map(event_from_row, events)
        ]
        return result

    async def list_changes(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Changes as JSON-ready dicts, newest first, optionally of one service."""
        async with self._session("reading changes") as conn:
            rows = await conn.fetch(
                f"SELECT {pgsql.CHANGE_LIST} FROM changes WHERE ($1::text IS NULL OR service = $1) "  # noqa: S608
                'ORDER BY at DESC, received_at DESC NULLS LAST, id COLLATE "C" LIMIT $2',
                _optional_text(service), limit)
        return [change_json(change_from_row(r)) for r in rows]


async def _connect(dsn: str, *, server_settings: dict[str, str]) -> Any:
    """A connection of its own (not the pool's), with the pool's timeouts."""
    return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                                 server_settings=server_settings)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _rollback(transaction: Any) -> None:
    """Roll back, ignoring a connection that is already gone (the server rolled back)."""
    with contextlib.suppress(*DATABASE_ERRORS):
        await transaction.rollback()


async def _holder(conn: Any, incident_id: str) -> str:
    """The incident that holds `incident_id`'s pages now: a merged incident's pages moved
    to the one it was merged into (followed a few steps, never round a loop)."""
    seen = {incident_id}
    for _ in range(8):
        merged_into = await conn.fetchval(
            "SELECT doc::jsonb ->> 'merged_into' FROM incidents WHERE id = $1", incident_id)
        if not merged_into or merged_into in seen:
            break
        incident_id = str(merged_into)
        seen.add(incident_id)
    return incident_id


async def _note_on_event(conn: Any, event_id: int, at: datetime, kind: str,
                         message: str) -> None:
    """A timeline note on the incident holding the page of outbox event `event_id`."""
    incident_id = await conn.fetchval("SELECT incident_id FROM outbox WHERE id = $1", event_id)
    if incident_id is not None:
        await conn.execute(
            "INSERT INTO timeline (incident_id, at, kind, message) VALUES ($1, $2, $3, $4)",
            await _holder(conn, incident_id), at.timestamp(), kind, pg_text(message))


async def _requeue(conn: Any, event_id: int, routing_keys: Mapping[str, str],
                   now: datetime) -> list[StoredEvent] | None:
    # Locked: two operators retrying one letter through two replicas requeue it once.
    row = await conn.fetchrow(f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE id = $1 FOR UPDATE",  # noqa: S608
                              event_id)
    if row is None:
        return None
    event = event_from_row(row)
    if event.state != DEAD:
        raise OutboxConflict(f"event {event_id} is {event.state}, not dead: only a dead "
                             "letter can be retried")
    if event.target not in routing_keys:
        raise OutboxConflict(f"target {event.target!r} of event {event_id} is no longer in "
                             "the settings: there is no routing key to send it with")
    later = [event_from_row(r) for r in await conn.fetch(
        f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE dedup_key = $1 AND id > $2 ORDER BY id "  # noqa: S608
        "FOR UPDATE", event.dedup_key, event_id)]
    if any(e.action == RESOLVE and e.state in (DELIVERED, DRY_RUN) for e in later):
        # A trigger sent now would open a PagerDuty alert that nothing resolves.
        raise OutboxConflict(f"PagerDuty has already been sent the resolve of {event.dedup_key}"
                             f" (a later event): event {event_id} is not worth sending now")
    ids = [event.id, *(e.id for e in later if e.state == DEAD)]
    key = routing_keys[event.target]
    await conn.execute(
        "UPDATE outbox SET state = $1, routing_key = $2, attempts = 0, next_attempt_at = $3, "
        "done_at = NULL, last_status = NULL, last_error = NULL, lease_owner = NULL, "
        "lease_until = NULL WHERE id = ANY($4::bigint[])", PENDING, key, now.timestamp(), ids)
    changed = " with the target's new routing key" if key != event.routing_key else ""
    await _note_on_event(conn, event_id, now, DELIVERY_RETRIED,
                         f"re-sending the {event.action} to {event.target}{changed} on request "
                         f"(outbox event {', '.join(str(i) for i in ids)})")
    return [event_from_row(r) for r in await conn.fetch(
        f"SELECT {pgsql.OUTBOX_LIST} FROM outbox WHERE id = ANY($1::bigint[]) ORDER BY id", ids)]  # noqa: S608


async def _deliveries(conn: Any, dedup_keys: Collection[str]) -> dict[str, dict[str, Any]]:
    """Per dedup key, the delivery of its page's latest word still in the outbox (see
    `rows.DELIVERY_ORDER`: the first of its events still pending, else its latest: the
    resolve once there is one); delivered and dry-run rows are deleted after
    `delivered_retention_hours`."""
    if not dedup_keys:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for row in await conn.fetch(
            f"SELECT DISTINCT ON (dedup_key) {DELIVERY_COLUMNS} FROM outbox "  # noqa: S608
            "WHERE dedup_key = ANY($1::text[]) AND action = ANY($2::text[]) "
            f"ORDER BY dedup_key, {DELIVERY_ORDER}",
            list(set(dedup_keys)), list(PAGE_ACTIONS)):
        found[row[0]] = delivery_json(row)
    return found
