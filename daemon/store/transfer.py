"""Moving a Firehouse from its SQLite file to PostgreSQL (`firehouse migrate --from-sqlite`).

Everything the file holds is copied in one transaction, under the decision lock, stamped
with one new decision version: replicas already running hear of it and catch up on every
imported incident as on any decision. Outbox events keep their ids and states, so that
what was delivered is not sent again and what was pending is sent by the replicas.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.errors import StoreError
from daemon.store.pgsql import (
    ALERT_COLUMNS,
    CHANGE_COLUMNS,
    INCIDENT_COLUMNS,
    OUTBOX_COLUMNS,
    RESOLUTION_COLUMNS,
    STAMP,
    TIMELINE_COLUMNS,
)
from daemon.store.postgres import (
    MIGRATION_TIMEOUT,
    PostgresStore,
    as_columns,
    pg_text,
    row_count,
    tables_with_rows,
    translated,
)
from daemon.store.sqlite import MOVED_TO, SCHEMA_VERSION, lock_state_file

__all__ = ["import_sqlite", "used_tables"]

# Table -> its columns, in copying order; the tables whose rows carry the decision version.
TABLES: dict[str, tuple[str, ...]] = {
    "incidents": INCIDENT_COLUMNS,
    "alerts": ALERT_COLUMNS,
    "resolutions": RESOLUTION_COLUMNS,
    "timeline": TIMELINE_COLUMNS,
    "outbox": OUTBOX_COLUMNS,
    "changes": CHANGE_COLUMNS,
}
STAMPED = frozenset({"incidents", "resolutions", "changes"})
# Tables an older file may lack (created by later versions, IF NOT EXISTS).
OPTIONAL = frozenset({"changes"})
# The rows a fresh cluster may already hold without holding anything of the file's kind:
# a resolved notification of an alert never seen is remembered as a resolution, and a
# change may have been posted. Those are merged (resolutions: the later one wins; changes:
# an id already there is the same change); any incident, timeline note or outbox event
# means the cluster has been deciding, and the import is refused.
_EMPTY_NEEDED = ("incidents", "timeline", "outbox")
_MERGE_RESOLUTIONS = f"""
INSERT INTO resolutions (fingerprint, starts_at, at, {STAMP})
SELECT u.*, $4::bigint FROM unnest($1::text[], $2::float8[], $3::float8[]) AS u
ON CONFLICT (fingerprint) DO UPDATE SET starts_at = excluded.starts_at, at = excluded.at,
    {STAMP} = excluded.{STAMP}
WHERE excluded.at > resolutions.at
"""  # noqa: S608
_MERGE_CHANGES = f"""
INSERT INTO changes ({", ".join(CHANGE_COLUMNS)}, {STAMP})
SELECT u.*, $9::bigint FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[],
    $5::text[], $6::text[], $7::text[], $8::text[]) AS u
ON CONFLICT (id) DO NOTHING
"""  # noqa: S608
# Serial columns whose values were copied: the next id drawn must come after them.
_SEQUENCES = ("timeline", "outbox")


async def import_sqlite(path: Path, target: PostgresStore) -> dict[str, int]:
    """Copy everything the Firehouse SQLite file `path` holds into `target` (open and
    migrated) in one transaction; rows written per table. StoreError, changing nothing,
    when the file is not a Firehouse database or is newer than this Firehouse, or when the
    target has been deciding already (holds incidents or outbox events)."""
    # A Firehouse still running on the file would go on deciding and sending what the
    # replicas now decide and send too: refused, and none can start on it meanwhile.
    lock = await asyncio.to_thread(lambda: lock_state_file(path) if path.is_file() else None)
    try:
        rows = await asyncio.to_thread(read_sqlite, path)
        where = target.where
        async with target.exclusive() as held:
            conn = held.connection
            with translated(where, f"importing {path}"):
                await _refuse_unless_empty(conn, where)
                version = await held.advance()
                counts = {table: await _copy(conn, table, rows[table], version)
                          for table in TABLES}
                for table in _SEQUENCES:
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                        f"coalesce(max(id), 0) + 1, false) FROM {table}")
        await asyncio.to_thread(_mark_moved, path, where)
    finally:
        if lock is not None:
            os.close(lock)
    return counts


def _mark_moved(path: Path, where: str) -> None:
    """Mark the file as moved to `where`: a Firehouse started on it refuses to."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MOVED_TO, where))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"copied, but could not mark {path} as moved ({exc}): do not start "
                         "a Firehouse on it again") from exc


def read_sqlite(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a Firehouse SQLite file, read-only and in one snapshot (a Firehouse
    may still be running on it: its lock file is neither needed nor taken)."""
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")
        _check_schema(conn, path)
        present = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = set(TABLES) - OPTIONAL - present
        if missing:
            raise StoreError(f"{path} is not a Firehouse state database (no "
                             f"{', '.join(sorted(missing))} table)")
        return {table: conn.execute(
                    f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid"  # noqa: S608
                ).fetchall() if table in present else []
                for table, columns in TABLES.items()}
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a Firehouse state database: {exc}") from exc
    finally:
        conn.close()


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as exc:  # no meta table
        raise StoreError(f"{path} is not a Firehouse state database ({exc})") from exc
    if row is None:
        raise StoreError(f"{path} is not a Firehouse state database (no schema version)")
    if int(row[0]) > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {row[0]}, newer than this Firehouse "
                         f"({SCHEMA_VERSION}): import it with that version")


async def used_tables(target: PostgresStore) -> list[str]:
    """The tables of `target` (open) whose rows make `import_sqlite` refuse it: none for a
    database no Firehouse has decided in yet."""
    return await target.tables_with_rows(_EMPTY_NEEDED, "looking for incidents")


async def _refuse_unless_empty(conn: Any, where: str) -> None:
    used = await tables_with_rows(conn, _EMPTY_NEEDED)
    if used:
        raise StoreError(f"state database {where} already holds {used[0]} rows: a "
                         "SQLite file can only be imported into a Firehouse database "
                         "that has not been used yet; import it into a fresh one (an empty "
                         "database or schema), or resolve the pages of its open incidents "
                         "in PagerDuty by hand")


async def _copy(conn: Any, table: str, rows: Sequence[tuple[Any, ...]], version: int) -> int:
    """Write `rows` of `table`; how many were written."""
    if not rows:
        return 0
    values = [tuple(pg_text(v) if isinstance(v, str) else v for v in row) for row in rows]
    if table == "resolutions":
        return row_count(await conn.execute(_MERGE_RESOLUTIONS, *as_columns(values), version))
    if table == "changes":
        return row_count(await conn.execute(_MERGE_CHANGES, *as_columns(values), version))
    columns = TABLES[table]
    if table in STAMPED:
        values = [(*row, version) for row in values]
        columns = (*columns, STAMP)
    # COPY: the alerts and the outbox's delivered rows may number hundreds of thousands.
    await conn.copy_records_to_table(table, records=values, columns=columns,
                                     timeout=MIGRATION_TIMEOUT)
    return len(values)

