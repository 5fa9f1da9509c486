"""The PostgreSQL store's schema and statements: its tables (the SQLite store's, column for
column, plus the decision version and the outbox's leases), the versioned migrations that
create them, and every statement `daemon/store/postgres.py` runs.

Only constants are formatted into the statements; values always go in as parameters.
"""

from __future__ import annotations

from daemon.store import PENDING
from daemon.store.rows import URGENCY

# The columns of each table in the SQLite store's order: its row helpers index them.
INCIDENT_COLUMNS = ("id", "status", "opened_at", "updated_at", "resolved_at", "severity",
                    "title", "doc")
ALERT_COLUMNS = ("incident_id", "fingerprint", "status", "starts_at", "ends_at", "first_seen",
                 "last_seen", "service", "severity", "generator_url", "labels", "annotations")
RESOLUTION_COLUMNS = ("fingerprint", "starts_at", "at")
TIMELINE_COLUMNS = ("id", "incident_id", "at", "kind", "message")
OUTBOX_COLUMNS = ("id", "incident_id", "target", "routing_key", "dedup_key", "action", "body",
                  "priority", "state", "attempts", "created_at", "next_attempt_at", "done_at",
                  "last_status", "last_error")
CHANGE_COLUMNS = ("id", "service", "at", "received_at", "summary", "who", "version", "links")
# The decision version that last wrote a row; `version` is taken by the changes table (the
# version a change deployed), so all three tables that carry it use this name.
STAMP = "decision_version"

INCIDENT_LIST = ", ".join(INCIDENT_COLUMNS)
ALERT_LIST = ", ".join(ALERT_COLUMNS)
OUTBOX_LIST = ", ".join(OUTBOX_COLUMNS)
CHANGE_LIST = ", ".join(CHANGE_COLUMNS)
A_ALERT_LIST = ", ".join(f"a.{c}" for c in ALERT_COLUMNS)

INITIAL_SCHEMA = f"""
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE decision_clock (
    id integer PRIMARY KEY CHECK (id = 1), version bigint NOT NULL
);
INSERT INTO decision_clock VALUES (1, 0);
CREATE TABLE incidents (
    id text PRIMARY KEY, status text NOT NULL, opened_at double precision NOT NULL,
    updated_at double precision NOT NULL, resolved_at double precision,
    severity text NOT NULL, title text NOT NULL, doc text NOT NULL,
    {STAMP} bigint NOT NULL DEFAULT 0
);
CREATE INDEX incidents_by_status ON incidents (status, updated_at);
CREATE INDEX incidents_by_opened ON incidents (opened_at);
CREATE INDEX incidents_by_version ON incidents ({STAMP});
CREATE TABLE alerts (
    incident_id text NOT NULL, fingerprint text NOT NULL, status text NOT NULL,
    starts_at double precision, ends_at double precision,
    first_seen double precision NOT NULL, last_seen double precision NOT NULL,
    service text, severity text NOT NULL, generator_url text NOT NULL,
    labels text NOT NULL, annotations text NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
);
CREATE TABLE resolutions (
    fingerprint text PRIMARY KEY, starts_at double precision, at double precision NOT NULL,
    {STAMP} bigint NOT NULL DEFAULT 0
);
CREATE INDEX resolutions_by_time ON resolutions (at);
CREATE INDEX resolutions_by_version ON resolutions ({STAMP});
CREATE TABLE timeline (
    id bigserial PRIMARY KEY, incident_id text NOT NULL, at double precision NOT NULL,
    kind text NOT NULL, message text NOT NULL
);
CREATE INDEX timeline_by_incident ON timeline (incident_id, id);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY, incident_id text NOT NULL, target text NOT NULL,
    routing_key text NOT NULL, dedup_key text NOT NULL, action text NOT NULL,
    body text NOT NULL, priority integer NOT NULL, state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0, created_at double precision NOT NULL,
    next_attempt_at double precision NOT NULL, done_at double precision,
    last_status integer, last_error text,
    lease_owner text, lease_until double precision
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_key ON outbox (dedup_key, id);
CREATE INDEX outbox_by_incident ON outbox (incident_id, id);
CREATE INDEX outbox_pending_by_urgency
    ON outbox ({URGENCY} DESC, id, next_attempt_at) WHERE state = '{PENDING}';
-- Whether an event is the head of its dedup key (no earlier one pending) is asked of every
-- candidate that due_events and next_attempt_at look at.
CREATE INDEX outbox_pending_by_key ON outbox (dedup_key, id) WHERE state = '{PENDING}';
CREATE TABLE changes (
    id text PRIMARY KEY, service text NOT NULL, at double precision NOT NULL,
    received_at double precision, summary text NOT NULL, who text NOT NULL,
    version text NOT NULL, links text NOT NULL,
    {STAMP} bigint NOT NULL DEFAULT 0
);
CREATE INDEX changes_by_time ON changes (at);
CREATE INDEX changes_by_service ON changes (service, at);
CREATE INDEX changes_by_version ON changes ({STAMP});
"""  # noqa: S608

REPLICAS_SCHEMA = """
CREATE TABLE replicas (
    id text PRIMARY KEY, dry_run boolean NOT NULL, digest text NOT NULL,
    seen_at double precision NOT NULL
);
"""

# (version, description, SQL), in order. A migration is never edited once released: a
# change of schema is a new one. Each runs in its own transaction.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "incidents, alerts, resolutions, timeline, outbox with leases, changes, "
        "decision clock", INITIAL_SCHEMA),
    (2, "replicas: each one's mode and configuration, for the others to compare",
     REPLICAS_SCHEMA),
)

# Each replica's row, written by its own heartbeat: the others compare modes and
# configurations with it (daemon/cluster.py). Rows of replicas long gone are deleted.
UPSERT_REPLICA = (
    "INSERT INTO replicas VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET "
    "dry_run = excluded.dry_run, digest = excluded.digest, seen_at = excluded.seen_at")
FORGET_REPLICAS = "DELETE FROM replicas WHERE seen_at < $1"
PEERS = "SELECT id, dry_run, digest, seen_at FROM replicas WHERE id <> $1 ORDER BY id"
LEAVE = "DELETE FROM replicas WHERE id = $1"

# Text orders as SQLite's BINARY collation does (byte order), not as the database's locale.
CHANGES_OLDEST_FIRST = 'at, received_at NULLS FIRST, id COLLATE "C"'
ALERTS_BY_INCIDENT = 'a.incident_id, a.first_seen, a.fingerprint COLLATE "C"'
# The head of a dedup key: no earlier event of that key is pending (on outbox `o`).
HEAD = (f"NOT EXISTS (SELECT 1 FROM outbox p WHERE p.dedup_key = o.dedup_key "  # noqa: S608
         f"AND p.state = '{PENDING}' AND p.id < o.id)")
# Events of skipped keys ($n: routing keys, $n+1: dedup keys), on outbox `o`.
NOT_SKIPPED = "o.routing_key <> ALL({}::text[]) AND o.dedup_key <> ALL({}::text[])"

LOCK_CLOCK = "SELECT version FROM decision_clock WHERE id = 1 FOR UPDATE"
READ_CLOCK = "SELECT version FROM decision_clock WHERE id = 1"
# Bumps the clock and tells every listener, at commit, in one round trip.
ADVANCE_CLOCK = ("WITH bumped AS (UPDATE decision_clock SET version = version + 1 "
                  "WHERE id = 1 RETURNING version) "
                  "SELECT version, pg_notify($1, version::text) FROM bumped")
NOTIFY_CLOCK = "SELECT pg_notify($1, version::text) FROM decision_clock WHERE id = 1"

# Only constants are formatted into the statements below; values go in as parameters.
DUE = f"""
WITH picked AS (
    SELECT o.id AS picked_id FROM outbox o
    WHERE o.state = '{PENDING}' AND o.next_attempt_at <= $1
      AND (o.lease_owner IS NULL OR o.lease_owner = $2 OR o.lease_until < $1)
      AND {NOT_SKIPPED.format("$3", "$4")} AND {HEAD}
    ORDER BY {URGENCY} DESC, o.id
    LIMIT $5
    FOR UPDATE OF o SKIP LOCKED
)
UPDATE outbox SET lease_owner = $2, lease_until = $6 FROM picked WHERE id = picked_id
RETURNING {OUTBOX_LIST}
"""  # noqa: S608
# An event leased by another replica becomes claimable when both it is due and the lease
# has run out (GREATEST ignores the NULL of an event leased by nobody, or by this replica).
NEXT_CLAIMABLE = f"""
SELECT MIN(GREATEST(o.next_attempt_at,
                    CASE WHEN o.lease_owner <> $1 THEN o.lease_until END))
FROM outbox o
WHERE o.state = '{PENDING}' AND {NOT_SKIPPED.format("$2", "$3")} AND {HEAD}
"""  # noqa: S608
# An outcome counts only while its event is pending: a replica whose lease ran out while it
# was sending may report after another replica finished the event; the first report wins.
RECORD_DONE = f"""
UPDATE outbox SET state = u.state, done_at = u.at, attempts = attempts + 1,
    last_status = u.status, last_error = u.error, lease_owner = NULL, lease_until = NULL
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::integer[], $5::text[])
    AS u(event_id, state, at, status, error)
WHERE outbox.id = u.event_id AND outbox.state = '{PENDING}'
RETURNING outbox.id, outbox.dedup_key
"""  # noqa: S608
RECORD_RETRY = f"""
UPDATE outbox SET attempts = attempts + 1, next_attempt_at = u.at, last_status = u.status,
    last_error = u.error, lease_owner = NULL, lease_until = NULL
FROM unnest($1::bigint[], $2::float8[], $3::integer[], $4::text[])
    AS u(event_id, at, status, error)
WHERE outbox.id = u.event_id AND outbox.state = '{PENDING}'
RETURNING outbox.id
"""  # noqa: S608
RELEASE_LEASES = (f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL "  # noqa: S608
                   f"WHERE lease_owner = $1 AND state = '{PENDING}'")
# Whether an event of these dedup keys is still pending: one that waited behind an event
# just finished, and that any replica may now send.
PENDING_OF_KEYS = (f"SELECT EXISTS (SELECT 1 FROM outbox WHERE dedup_key = ANY($1::text[]) "  # noqa: S608
                   f"AND state = '{PENDING}')")

UPSERT_INCIDENTS = f"""
INSERT INTO incidents ({INCIDENT_LIST}, {STAMP})
SELECT u.*, $9::bigint FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[],
    $5::float8[], $6::text[], $7::text[], $8::text[]) AS u
ON CONFLICT (id) DO UPDATE SET status = excluded.status, opened_at = excluded.opened_at,
    updated_at = excluded.updated_at, resolved_at = excluded.resolved_at,
    severity = excluded.severity, title = excluded.title, doc = excluded.doc,
    {STAMP} = excluded.{STAMP}
"""  # noqa: S608
UPSERT_ALERTS = f"""
INSERT INTO alerts ({ALERT_LIST})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[],
    $6::float8[], $7::float8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
ON CONFLICT (incident_id, fingerprint) DO UPDATE SET status = excluded.status,
    starts_at = excluded.starts_at, ends_at = excluded.ends_at,
    first_seen = excluded.first_seen, last_seen = excluded.last_seen,
    service = excluded.service, severity = excluded.severity,
    generator_url = excluded.generator_url, labels = excluded.labels,
    annotations = excluded.annotations
"""  # noqa: S608
TOUCH_ALERTS = """
UPDATE alerts SET last_seen = u.at
FROM unnest($1::text[], $2::text[], $3::float8[]) AS u(incident_id, fingerprint, at)
WHERE alerts.incident_id = u.incident_id AND alerts.fingerprint = u.fingerprint
"""
STAMP_INCIDENTS = f"UPDATE incidents SET {STAMP} = $2 WHERE id = ANY($1::text[])"  # noqa: S608
UPSERT_RESOLUTIONS = f"""
INSERT INTO resolutions (fingerprint, starts_at, at, {STAMP})
SELECT u.*, $4::bigint FROM unnest($1::text[], $2::float8[], $3::float8[]) AS u
ON CONFLICT (fingerprint) DO UPDATE SET starts_at = excluded.starts_at, at = excluded.at,
    {STAMP} = excluded.{STAMP}
"""  # noqa: S608
# WITH ORDINALITY ... ORDER BY: ids are drawn in the decisions' order (a trigger before
# the resolve that follows it on its dedup key).
INSERT_TIMELINE = """
INSERT INTO timeline (incident_id, at, kind, message)
SELECT incident_id, at, kind, message
FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[]) WITH ORDINALITY
    AS u(incident_id, at, kind, message, n)
ORDER BY n
"""
INSERT_OUTBOX = f"""
INSERT INTO outbox (incident_id, target, routing_key, dedup_key, action, body, priority,
    state, created_at, next_attempt_at)
SELECT incident_id, target, routing_key, dedup_key, action, body, priority,
    '{PENDING}', at, at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::integer[], $8::float8[]) WITH ORDINALITY
    AS u(incident_id, target, routing_key, dedup_key, action, body, priority, at, n)
ORDER BY n
"""  # noqa: S608
# A repeated id is the same change (the engine skips it; this makes sure).
INSERT_CHANGES = f"""
INSERT INTO changes ({CHANGE_LIST}, {STAMP})
SELECT u.*, $9::bigint FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[],
    $5::text[], $6::text[], $7::text[], $8::text[]) AS u
ON CONFLICT (id) DO NOTHING
"""  # noqa: S608
