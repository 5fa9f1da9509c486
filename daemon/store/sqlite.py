"""The embedded SQLite store: WAL, synchronous=FULL, one writer thread with group commit.

Every call runs on one dedicated thread that owns the connection. Decisions that arrive
while a transaction is being written are written together in the next one, so the cost of
an fsync is shared by every webhook waiting on it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from daemon.changes import change_json
from daemon.decide import (
    OPEN,
    RESOLVE,
    AlertRecord,
    Decision,
    Incident,
    State,
)
from daemon.errors import OutboxConflict, StoreError
from daemon.store import (
    DEAD,
    DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_RETRIED,
    DRY_RUN,
    PENDING,
    Attempt,
    MarksByRecord,
    StoredEvent,
)
from daemon.store.rows import (
    DELIVERY_COLUMNS,
    DELIVERY_ORDER,
    DRY_RUN_INCIDENTS,
    PAGE_ACTIONS,
    URGENCY,
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

log = logging.getLogger("firehouse.store.sqlite")
T = TypeVar("T")

# Bumped only by a change that an older Firehouse cannot run on (it refuses a newer version).
# New tables (changes) are created IF NOT EXISTS and ignored by older versions, so they
# leave it alone: rolling Firehouse itself back must keep working.
SCHEMA_VERSION = 1
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, opened_at REAL NOT NULL,
    updated_at REAL NOT NULL, resolved_at REAL, severity TEXT NOT NULL, title TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents (status, updated_at);
CREATE TABLE IF NOT EXISTS alerts (
    incident_id TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL,
    starts_at REAL, ends_at REAL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    service TEXT, severity TEXT NOT NULL, generator_url TEXT NOT NULL,
    labels TEXT NOT NULL, annotations TEXT NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
);
CREATE TABLE IF NOT EXISTS resolutions (
    fingerprint TEXT PRIMARY KEY, starts_at REAL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timeline (
    id INTEGER PRIMARY KEY, incident_id TEXT NOT NULL, at REAL NOT NULL,
    kind TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timeline_by_incident ON timeline (incident_id, id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, incident_id TEXT NOT NULL, target TEXT NOT NULL,
    routing_key TEXT NOT NULL, dedup_key TEXT NOT NULL, action TEXT NOT NULL,
    body TEXT NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL, done_at REAL, last_status INTEGER, last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_by_key ON outbox (dedup_key, id);
CREATE INDEX IF NOT EXISTS outbox_by_incident ON outbox (incident_id, id);
CREATE INDEX IF NOT EXISTS outbox_pending_by_urgency
    ON outbox ({URGENCY} DESC, id, next_attempt_at) WHERE state = '{PENDING}';
CREATE TABLE IF NOT EXISTS changes (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, at REAL NOT NULL, received_at REAL,
    summary TEXT NOT NULL, who TEXT NOT NULL, version TEXT NOT NULL, links TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (at);
CREATE INDEX IF NOT EXISTS changes_by_service ON changes (service, at);
"""


# An incident's events, for the API and the incident page; along `outbox_by_incident`, so
# that it does not read the whole outbox (delivered events are kept for hours).
INCIDENT_EVENTS = "SELECT * FROM outbox WHERE incident_id = ? ORDER BY id"

# meta key: where `firehouse migrate --from-sqlite` copied this file (it is not used again).
MOVED_TO = "moved_to"


def unmoved_incidents(path: Path) -> int:
    """How many open incidents a state file left behind holds, unless `firehouse migrate
    --from-sqlite` moved it (0 then, and for a missing or unreadable file); read-only, no
    lock: a Firehouse may hold it."""
    if not path.is_file():
        return 0
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if conn.execute("SELECT 1 FROM meta WHERE key = ?", (MOVED_TO,)).fetchone():
                return 0
            opened: int = conn.execute(
                "SELECT count(*) FROM incidents WHERE status = ?", (OPEN,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not a state file: nothing to say about it
    return opened


def open_incident_ids(path: Path, limit: int) -> list[str]:
    """The ids of the first `limit` open incidents of a state file, oldest first (their
    pages' dedup keys start `firehouse/<id>/`); read-only, no lock, [] for a missing or
    unreadable file."""
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return [row[0] for row in conn.execute(
                "SELECT id FROM incidents WHERE status = ? ORDER BY opened_at, id LIMIT ?",
                (OPEN, limit))]
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def lock_state_file(path: Path) -> int:
    """Take the exclusive lock beside a state file (its descriptor: closing it releases the
    lock); StoreError naming the holder's pid when a Firehouse holds it."""
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {lock}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"state database {path} is in use by another Firehouse "
                         f"(pid {holder}, lock {lock}); run one process per state "
                         "file") from exc
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class SqliteStore(MarksByRecord):
    """The default store: one SQLite file on local disk, owned by one process."""

    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Decision, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self.healthy = True

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the connection's thread; SQLite and OS errors become StoreError."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection; use it only from the store's thread."""
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    async def open(self) -> None:
        """Open or create the database; a corrupt or unreadable file stops start-up."""
        await self._run(self._open)

    def _open(self) -> None:
        self._lock()
        conn = self._connect()
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            raise
        self._conn = conn

    def _lock(self) -> None:
        """Hold an exclusive lock beside the database for as long as it is open: two
        processes deciding on one file would page twice and leave incidents open."""
        self._lock_fd = lock_state_file(self.path)

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created private before SQLite touches it: SQLite gives its -wal and -shm files
            # the database's mode, and all three hold routing keys.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # FULL: a commit that answered Alertmanager 200 survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path} is unusable: {exc}") from exc
        if check != "ok":
            raise StoreError(f"state database {self.path} is corrupt: {check}")
        if mode != "wal":
            log.warning("state database %s: journal mode is %s, not wal (file system without "
                        "shared memory?); commits stay durable but are slower", self.path, mode)
        try:
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path} is unusable: {exc}") from exc
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"state database {self.path} has schema version {row[0]}, "
                             f"newer than this Firehouse ({SCHEMA_VERSION})")
        moved = conn.execute("SELECT value FROM meta WHERE key = ?", (MOVED_TO,)).fetchone()
        if moved is not None:
            # Its incidents and pending events live on there: deciding and sending them here
            # too would page twice.
            raise StoreError(f"state database {self.path} was moved to {moved[0]} by "
                             "`firehouse migrate --from-sqlite`: set database.url (or "
                             "FIREHOUSE_DATABASE_URL) to that database, or remove the file "
                             "to start afresh on SQLite")
        for path in (self.path, *(self.path.with_name(self.path.name + s)
                                   for s in ("-wal", "-shm"))):
            try:
                if path.exists():
                    path.chmod(0o600)  # files made by an older version may be readable
            except OSError:
                log.warning("could not restrict permissions of %s", path)

    async def close(self) -> None:
        """Finish pending writes and close the connection."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        self._executor.shutdown(wait=True)

    # -- decisions -------------------------------------------------------------------------

    async def commit(self, decision: Decision) -> None:
        """Write a decision durably; concurrent decisions share one transaction."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((decision, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._run(self._write, [d for d, _ in batch])
            except Exception as exc:  # every failure is answered below, none is lost
                if len(batch) == 1:
                    self._fail(batch, exc)
                    continue
                # One bad decision must not fail the webhooks it happened to share a
                # transaction with: write them one by one, failing only those that fail.
                for decision, future in batch:
                    try:
                        await self._run(self._write, [decision])
                    except Exception as single:
                        self._fail([(decision, future)], single)
                    else:
                        self.healthy = True
                        if not future.done():
                            future.set_result(None)
            else:
                self.healthy = True
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def _fail(self, batch: list[tuple[Decision, asyncio.Future[None]]], exc: Exception) -> None:
        self.healthy = False
        if not isinstance(exc, StoreError):
            # A bug, not the disk; still a StoreError for the callers, so that the webhook
            # is answered 503 (retried) and the engine state is reloaded.
            log.error("unexpected error writing to %s: %r", self.path, exc)
        error = exc if isinstance(exc, StoreError) else StoreError(
            f"could not write to {self.path}: {exc!r}")
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _write(self, decisions: list[Decision]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for decision in decisions:
                self._write_one(conn, decision)
            conn.execute("COMMIT")
        except BaseException:
            # Some failures (disk full, I/O error) have rolled back already.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_one(conn: sqlite3.Connection, decision: Decision) -> None:
        now = epoch(decision.now) or 0.0
        if decision.incidents:
            conn.executemany(
                "INSERT OR REPLACE INTO incidents VALUES (?,?,?,?,?,?,?,?)",
                [(incident.id, incident.status, epoch(incident.opened_at),
                  epoch(incident.updated_at), epoch(incident.resolved_at), incident.severity,
                  incident.title, json_text(incident.to_doc())) for incident in decision.incidents],
            )
        # Only the alerts the decision set, when it says which: the others of its incidents
        # are stored already, and an incident can hold thousands.
        records = decision.records if decision.records is not None else [
            (incident.id, a) for incident in decision.incidents for a in incident.alerts.values()]
        if records:
            conn.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(incident_id, a.fingerprint, a.status, epoch(a.starts_at), epoch(a.ends_at),
                  epoch(a.first_seen), epoch(a.last_seen), a.service, a.severity, a.generator_url,
                  json_text(dict(a.labels)), json_text(dict(a.annotations)))
                 for incident_id, a in records],
            )
        if decision.seen:
            conn.executemany(
                "UPDATE alerts SET last_seen=? WHERE incident_id=? AND fingerprint=?",
                [(now, incident_id, fp) for incident_id, fp in decision.seen],
            )
        if decision.resolutions:
            conn.executemany(
                "INSERT OR REPLACE INTO resolutions VALUES (?,?,?)",
                [(fp, epoch(starts), now) for fp, starts in decision.resolutions],
            )
        if decision.timeline:
            conn.executemany(
                "INSERT INTO timeline (incident_id, at, kind, message) VALUES (?,?,?,?)",
                [(n.incident_id, epoch(n.at), n.kind, n.message) for n in decision.timeline],
            )
        if decision.events:
            conn.executemany(
                "INSERT INTO outbox (incident_id, target, routing_key, dedup_key, action, body,"
                " priority, state, created_at, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(e.incident_id, e.target, e.routing_key, e.dedup_key, e.action,
                  json_text(dict(e.body)), e.priority, PENDING, now, now)
                 for e in decision.events],
            )
        if decision.changes:
            # A repeated id is the same change (the engine skips it; this makes sure).
            conn.executemany(
                "INSERT OR IGNORE INTO changes VALUES (?,?,?,?,?,?,?,?)",
                [(c.id, c.service, epoch(c.at), epoch(c.received_at), c.summary, c.who, c.version,
                  json_text([list(link) for link in c.links])) for c in decision.changes],
            )

    # -- engine state ----------------------------------------------------------------------

    async def load_state(self, now: datetime, retention_seconds: float, *,
                         changes_seconds: float = 86400.0) -> State:
        """Open incidents with their alerts, resolutions younger than the retention, and
        changes made within `changes_seconds` (oldest first)."""
        return await self._run(self._load_state, now.timestamp() - retention_seconds,
                               now.timestamp() - changes_seconds)

    def _load_state(self, cutoff: float, changes_cutoff: float) -> State:
        conn = self.conn
        incidents: dict[str, Incident] = {}
        rows = conn.execute(
            "SELECT id, status, opened_at, updated_at, resolved_at, severity, title, doc "
            "FROM incidents WHERE status = ?", (OPEN,)).fetchall()
        alerts: dict[str, dict[str, AlertRecord]] = {}
        for row in conn.execute(
            "SELECT a.* FROM alerts a JOIN incidents i ON i.id = a.incident_id "
            "WHERE i.status = ?", (OPEN,)):
            alerts.setdefault(row[0], {})[row[1]] = alert_from_row(row)
        for row in rows:
            incidents[row[0]] = incident_from_row(row, alerts.get(row[0], {}))
        by_fp = {fp: i.id for i in incidents.values() for fp in i.alerts}
        by_service = {name: i.id for i in incidents.values() if i.mapped for name in i.services}
        resolved = {
            fp: from_epoch(starts) for fp, starts in conn.execute(
                "SELECT fingerprint, starts_at FROM resolutions WHERE at >= ?", (cutoff,))
        }
        changes = tuple(change_from_row(row) for row in conn.execute(
            "SELECT * FROM changes WHERE at >= ? ORDER BY at, received_at, id",
            (changes_cutoff,)))
        return State(MappingProxyType(incidents), MappingProxyType(by_fp),
                     MappingProxyType(resolved), changes=changes,
                     by_service=MappingProxyType(by_service))

    # -- outbox ----------------------------------------------------------------------------

    async def due_events(self, now: datetime, limit: int, *,
                         skip_routing_keys: Collection[str] = (),
                         skip_dedup_keys: Collection[str] = ()) -> list[StoredEvent]:
        """Pending events that are due, at most one per dedup key (the oldest pending one),
        most urgent first (resolves rank with critical triggers), of no key skipped."""
        skip, args = _skipping(skip_routing_keys, skip_dedup_keys)
        # Walks the partial index in delivery order and stops at `limit` (the planner would
        # rather range over outbox_due and sort every due row: 40 ms with 20,000 pending); a
        # resolve waits while an earlier event of its dedup key is pending. Only constants
        # and placeholders are formatted into the statements.
        sql = ("SELECT * FROM outbox o INDEXED BY outbox_pending_by_urgency "  # noqa: S608
               f"WHERE o.state = '{PENDING}' AND o.next_attempt_at <= ? {skip} "
               f"AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.dedup_key = o.dedup_key "
               f"AND p.state = '{PENDING}' AND p.id < o.id) ORDER BY {URGENCY} DESC, o.id "
               "LIMIT ?")
        rows = await self._run(lambda: self.conn.execute(
            sql, (now.timestamp(), *args, limit)).fetchall())
        return [event_from_row(r) for r in rows]

    async def next_attempt_at(self, *, skip_routing_keys: Collection[str] = (),
                              skip_dedup_keys: Collection[str] = ()) -> datetime | None:
        """When the earliest pending event (of no key skipped) becomes due."""
        skip, args = _skipping(skip_routing_keys, skip_dedup_keys)
        # Only events not held back behind an earlier one of the same key: a resolve that
        # is due while its trigger waits for a retry must not make the worker spin.
        sql = (f"SELECT MIN(o.next_attempt_at) FROM outbox o WHERE o.state = '{PENDING}' "  # noqa: S608
               f"{skip} AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.dedup_key = o.dedup_key "
               f"AND p.state = '{PENDING}' AND p.id < o.id)")
        row = await self._run(lambda: self.conn.execute(sql, args).fetchone())
        return from_epoch(row[0])

    async def record(self, attempts: Sequence[Attempt]) -> None:
        """Record the outcomes of many delivery attempts in one transaction (one fsync)."""
        try:
            await self._run(self._record, list(attempts))
        except StoreError:
            self.healthy = False
            raise
        self.healthy = True

    def _record(self, attempts: list[Attempt]) -> None:
        done = [(a.state, a.at.timestamp(), a.status, a.error or None, a.event_id)
                for a in attempts if a.state != PENDING]
        retried = [(a.at.timestamp(), a.status, a.error, a.event_id)
                   for a in attempts if a.state == PENDING]
        assert all(a.state in (PENDING, DELIVERED, DRY_RUN, DEAD) for a in attempts)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "UPDATE outbox SET state=?, done_at=?, attempts=attempts+1, last_status=?, "
                "last_error=? WHERE id=?", done)
            conn.executemany(
                "UPDATE outbox SET attempts=attempts+1, next_attempt_at=?, last_status=?, "
                "last_error=? WHERE id=?", retried)
            for attempt in attempts:
                if attempt.note:
                    _note_on_event(conn, attempt.event_id, attempt.at, DELIVERY_FAILED,
                                   attempt.note)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def probe(self, now: datetime) -> None:
        """Write and commit one small row (`meta.probed_at`), setting `healthy` by the
        outcome: a store that failed a write (a full disk) is ready again once this works."""
        def run() -> None:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)",
                             (now.isoformat(),))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        try:
            await self._run(run)
        except StoreError:
            self.healthy = False
            raise
        self.healthy = True

    async def requeue(self, event_id: int, routing_keys: Mapping[str, str], now: datetime
                      ) -> list[StoredEvent] | None:
        """Put a dead letter back to pending (attempts reset, due now, its target's current
        routing key), and with it the later dead events of its dedup key, so that a
        trigger's resolve follows it; notes the retry on the incident. One transaction."""
        def run() -> list[StoredEvent] | None:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = _requeue(conn, event_id, routing_keys, now)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return found
        return await self._run(run)

    async def oldest_pending_at(self) -> datetime | None:
        """When the oldest event still waiting for delivery was created."""
        row = await self._run(lambda: self.conn.execute(
            "SELECT MIN(created_at) FROM outbox WHERE state = ?", (PENDING,)).fetchone())
        return from_epoch(row[0])

    async def overdue_events(self, created_before: datetime, limit: int) -> list[StoredEvent]:
        """Events still pending that were created before `created_before`, oldest first."""
        rows = await self._run(lambda: self.conn.execute(
            "SELECT * FROM outbox WHERE state = ? AND created_at < ? ORDER BY id LIMIT ?",
            (PENDING, created_before.timestamp(), limit)).fetchall())
        return [event_from_row(r) for r in rows]

    async def cleanup(self, delivered_before: datetime, resolutions_before: datetime) -> int:
        """Delete delivered and dry-run rows done before the first cutoff, changes made
        before it, and remembered resolutions older than the second; dead letters stay until
        someone looks."""
        def run() -> int:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                gone = conn.execute(
                    "DELETE FROM outbox WHERE state IN (?, ?) AND done_at < ?",
                    (DELIVERED, DRY_RUN, delivered_before.timestamp())).rowcount
                gone += conn.execute("DELETE FROM resolutions WHERE at < ?",
                                     (resolutions_before.timestamp(),)).rowcount
                gone += conn.execute("DELETE FROM changes WHERE at < ?",
                                     (delivered_before.timestamp(),)).rowcount
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return int(gone)
        return await self._run(run)

    async def dry_run_incidents(self, limit: int) -> list[str]:
        """Open incidents with events logged in dry-run (never sent), at most `limit` ids."""
        rows = await self._run(lambda: self.conn.execute(
            DRY_RUN_INCIDENTS.format(limit="?"), (limit,)).fetchall())
        return [row[0] for row in rows]

    async def outbox_counts(self) -> dict[str, int]:
        """Number of outbox rows per state."""
        rows = await self._run(lambda: self.conn.execute(
            "SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        return dict(rows)

    async def list_events(self, state: str | None, limit: int) -> list[StoredEvent]:
        """Outbox rows, newest first, optionally of one state."""
        def run() -> list[StoredEvent]:
            if state is None:
                rows = self.conn.execute(
                    "SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self.conn.execute(
                    "SELECT * FROM outbox WHERE state=? ORDER BY id DESC LIMIT ?",
                    (state, limit)).fetchall()
            return [event_from_row(r) for r in rows]
        return await self._run(run)

    # -- API -------------------------------------------------------------------------------

    async def list_incidents(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Incidents as JSON-ready dicts, newest first."""
        def run() -> list[dict[str, Any]]:
            sql = ("SELECT id, status, opened_at, updated_at, resolved_at, severity, title, doc "
                   "FROM incidents")
            args: tuple[Any, ...] = ()
            if status is not None:
                sql += " WHERE status = ?"
                args = (status,)
            rows = self.conn.execute(sql + " ORDER BY opened_at DESC LIMIT ?",
                                     (*args, limit)).fetchall()
            return [_incident_json(self.conn, r) for r in rows]
        return await self._run(run)

    async def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        """One incident with alerts, pages and timeline."""
        def run() -> dict[str, Any] | None:
            conn = self.conn
            row = conn.execute(
                "SELECT id, status, opened_at, updated_at, resolved_at, severity, title, doc "
                "FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                return None
            result = _incident_json(conn, row)
            result["alerts"] = [
                alert_json(alert_from_row(a)) for a in conn.execute(
                    "SELECT * FROM alerts WHERE incident_id = ? ORDER BY first_seen",
                    (incident_id,))
            ]
            result["timeline"] = [
                {"at": need_from_epoch(at).isoformat(), "kind": kind, "message": message}
                for at, kind, message in conn.execute(
                    "SELECT at, kind, message FROM timeline WHERE incident_id = ? ORDER BY id",
                    (incident_id,))
            ]
            result["events"] = [
                {"id": e.id, "target": e.target, "action": e.action, "dedup_key": e.dedup_key,
                 "state": e.state, "attempts": e.attempts, "last_error": e.last_error}
                for e in (event_from_row(r) for r in conn.execute(
                    INCIDENT_EVENTS, (incident_id,)))
            ]
            return result
        return await self._run(run)

    async def list_changes(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Changes as JSON-ready dicts, newest first, optionally of one service."""
        def run() -> list[dict[str, Any]]:
            sql = "SELECT * FROM changes"
            args: tuple[Any, ...] = ()
            if service is not None:
                sql += " WHERE service = ?"
                args = (service,)
            rows = self.conn.execute(sql + " ORDER BY at DESC, received_at DESC, id LIMIT ?",
                                     (*args, limit)).fetchall()
            return [change_json(change_from_row(r)) for r in rows]
        return await self._run(run)


def _skipping(routing_keys: Collection[str], dedup_keys: Collection[str]
              ) -> tuple[str, tuple[str, ...]]:
    """The SQL terms (on outbox `o`) and arguments that leave out events of these keys."""
    skip = ""
    if routing_keys:
        skip += f"AND o.routing_key NOT IN ({','.join('?' * len(routing_keys))}) "
    if dedup_keys:
        skip += f"AND o.dedup_key NOT IN ({','.join('?' * len(dedup_keys))}) "
    return skip, (*routing_keys, *dedup_keys)


def _holder(conn: sqlite3.Connection, incident_id: str) -> str:
    """The incident that holds `incident_id`'s pages now: a merged incident's pages moved
    to the one it was merged into (followed a few steps, never round a loop)."""
    seen = {incident_id}
    for _ in range(8):
        row = conn.execute("SELECT json_extract(doc, '$.merged_into') FROM incidents "
                           "WHERE id = ?", (incident_id,)).fetchone()
        if row is None or not row[0] or row[0] in seen:
            break
        incident_id = str(row[0])
        seen.add(incident_id)
    return incident_id


def _note_on_event(conn: sqlite3.Connection, event_id: int, at: datetime, kind: str,
                   message: str) -> None:
    """A timeline note on the incident holding the page of outbox event `event_id`."""
    row = conn.execute("SELECT incident_id FROM outbox WHERE id = ?", (event_id,)).fetchone()
    if row is not None:
        conn.execute("INSERT INTO timeline (incident_id, at, kind, message) VALUES (?,?,?,?)",
                     (_holder(conn, row[0]), at.timestamp(), kind, message))


def _requeue(conn: sqlite3.Connection, event_id: int, routing_keys: Mapping[str, str],
             now: datetime) -> list[StoredEvent] | None:
    row = conn.execute("SELECT * FROM outbox WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    event = event_from_row(row)
    if event.state != DEAD:
        raise OutboxConflict(f"event {event_id} is {event.state}, not dead: only a dead "
                             "letter can be retried")
    if event.target not in routing_keys:
        raise OutboxConflict(f"target {event.target!r} of event {event_id} is no longer in "
                             "the settings: there is no routing key to send it with")
    later = [event_from_row(r) for r in conn.execute(
        "SELECT * FROM outbox WHERE dedup_key = ? AND id > ? ORDER BY id",
        (event.dedup_key, event_id))]
    if any(e.action == RESOLVE and e.state in (DELIVERED, DRY_RUN) for e in later):
        # A trigger sent now would open a PagerDuty alert that nothing resolves.
        raise OutboxConflict(f"PagerDuty has already been sent the resolve of {event.dedup_key}"
                             f" (a later event): event {event_id} is not worth sending now")
    events = [event, *(e for e in later if e.state == DEAD)]
    key = routing_keys[event.target]
    conn.executemany(
        "UPDATE outbox SET state=?, routing_key=?, attempts=0, next_attempt_at=?, done_at=NULL,"
        " last_status=NULL, last_error=NULL WHERE id=?",
        [(PENDING, key, now.timestamp(), e.id) for e in events])
    changed = " with the target's new routing key" if key != event.routing_key else ""
    _note_on_event(conn, event_id, now, DELIVERY_RETRIED,
                   f"re-sending the {event.action} to {event.target}{changed} on request "
                   f"(outbox event {', '.join(str(e.id) for e in events)})")
    return [event_from_row(r) for r in conn.execute(
        f"SELECT * FROM outbox WHERE id IN ({','.join('?' * len(events))}) ORDER BY id",  # noqa: S608
        [e.id for e in events])]


def _deliveries(conn: sqlite3.Connection, dedup_keys: Collection[str]
                ) -> dict[str, dict[str, Any]]:
    """Per dedup key, the delivery of its page's latest word still in the outbox (see
    `rows.DELIVERY_ORDER`: the first of its events still pending, else its latest: the
    resolve once there is one); delivered and dry-run rows are deleted after
    `delivered_retention_hours`."""
    found: dict[str, dict[str, Any]] = {}
    for key in dedup_keys:
        row = conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE dedup_key = ? "  # noqa: S608
            f"AND action IN ({','.join('?' * len(PAGE_ACTIONS))}) "
            f"ORDER BY {DELIVERY_ORDER} LIMIT 1", (key, *PAGE_ACTIONS)).fetchone()
        if row is not None:
            found[key] = delivery_json(row)
    return found


def _incident_json(conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
    doc = json.loads(row[7])
    return incident_json(row, doc, _deliveries(conn, [page["dedup_key"] for page in doc["pages"]]))
