"""The store: incidents, timelines and the outbox, written in one transaction per decision."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeGuard

from daemon.decide import Change, Decision, Incident, State

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
DRY_RUN = "dry_run"
# The timeline note of a dead letter (Attempt.note) and of an operator's retry.
DELIVERY_FAILED = "delivery_failed"
DELIVERY_RETRIED = "delivery_retried"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An outbox row: an event to deliver, with its delivery state."""

    id: int
    incident_id: str
    target: str
    routing_key: str
    dedup_key: str
    action: str
    body: dict[str, Any]
    priority: int
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one delivery attempt ended, to be recorded: `state` DELIVERED, DRY_RUN or DEAD
    ends the event at `at`; PENDING keeps it for another attempt at `at`. A `note` is
    written, in the same transaction, to the timeline of the incident that holds the
    event's page now (kind DELIVERY_FAILED)."""

    event_id: int
    state: str
    at: datetime
    status: int
    error: str = ""
    note: str = ""


class MarksByRecord:
    """The single-outcome marks of a store, each a `record` of one attempt."""

    async def record(self, attempts: Sequence[Attempt]) -> None:
        raise NotImplementedError

    async def mark_delivered(self, event_id: int, now: datetime, state: str, status: int) -> None:
        """Record a delivery (or a dry-run) as done."""
        assert state in (DELIVERED, DRY_RUN)
        await self.record([Attempt(event_id, state, now, status)])

    async def mark_retry(self, event_id: int, next_at: datetime, status: int, error: str) -> None:
        """Record a failed attempt to be retried at `next_at`."""
        await self.record([Attempt(event_id, PENDING, next_at, status, error)])

    async def mark_dead(self, event_id: int, now: datetime, status: int, error: str) -> None:
        """Record a permanent failure: kept, visible, never retried blindly."""
        await self.record([Attempt(event_id, DEAD, now, status, error)])


class Store(Protocol):
    """Durable state of Firehouse. `commit` returns only once the decision is on disk.

    `shared` is False for a store one process owns (SQLite: a lock file refuses a second),
    True for one that several replicas share (PostgreSQL): see `SharedStore`.
    """

    shared: bool

    @property
    def healthy(self) -> bool:
        """Whether the last write succeeded (readiness reports it)."""

    async def open(self) -> None:
        """Open (creating or migrating) the store; raises StoreError if it is unusable."""

    async def close(self) -> None:
        """Flush and close."""

    async def load_state(self, now: datetime, retention_seconds: float, *,
                         changes_seconds: float = 86400.0) -> State:
        """Open incidents, remembered resolutions and the changes made within
        `changes_seconds` (oldest first), for the engine."""

    async def commit(self, decision: Decision) -> None:
        """Write a decision durably, in one transaction."""

    async def due_events(self, now: datetime, limit: int, *,
                         skip_routing_keys: Collection[str] = (),
                         skip_dedup_keys: Collection[str] = ()) -> list[StoredEvent]:
        """Pending events that are due, at most one per dedup key (the oldest pending one),
        most urgent first (resolves rank with critical triggers), of no key skipped."""

    async def next_attempt_at(self, *, skip_routing_keys: Collection[str] = (),
                              skip_dedup_keys: Collection[str] = ()) -> datetime | None:
        """When the earliest pending event (of no key skipped) becomes due."""

    async def record(self, attempts: Sequence[Attempt]) -> None:
        """Record the outcomes of many delivery attempts in one transaction."""

    async def mark_delivered(self, event_id: int, now: datetime, state: str, status: int) -> None:
        """Record a delivery (or a dry-run) as done."""

    async def mark_retry(self, event_id: int, next_at: datetime, status: int, error: str) -> None:
        """Record a failed attempt that will be retried at `next_at`."""

    async def mark_dead(self, event_id: int, now: datetime, status: int, error: str) -> None:
        """Record a permanent failure (dead letter)."""

    async def probe(self, now: datetime) -> None:
        """Write and commit one small row, setting `healthy` by the outcome; raises
        StoreError when it fails (readiness probes a store that failed a write)."""

    async def requeue(self, event_id: int, routing_keys: Mapping[str, str], now: datetime
                      ) -> list[StoredEvent] | None:
        """Put a dead letter back to pending, due now, attempts reset, with its target's
        routing key from `routing_keys` (target -> key), and with it the later dead events
        of its dedup key; a DELIVERY_RETRIED note on its incident; one transaction. The
        events requeued; None for no such event; OutboxConflict when it cannot be."""

    async def oldest_pending_at(self) -> datetime | None:
        """When the oldest event still waiting for delivery was created."""

    async def overdue_events(self, created_before: datetime, limit: int) -> list[StoredEvent]:
        """Events still pending that were created before `created_before`, oldest first."""

    async def cleanup(self, delivered_before: datetime, resolutions_before: datetime) -> int:
        """Delete delivered and dry-run outbox rows done before the first cutoff, changes
        made before it, and remembered resolutions older than the second; dead letters stay.
        How many rows."""

    async def dry_run_incidents(self, limit: int) -> list[str]:
        """Open incidents with events logged in dry-run (never sent), at most `limit` ids."""

    async def outbox_counts(self) -> dict[str, int]:
        """Number of outbox rows per state."""

    async def list_events(self, state: str | None, limit: int) -> list[StoredEvent]:
        """Outbox rows, newest first, optionally of one state."""

    async def list_incidents(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Incidents as JSON-ready dicts, newest first."""

    async def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        """One incident with its alerts, pages and timeline, as a JSON-ready dict."""

    async def list_changes(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Changes as JSON-ready dicts, newest first, optionally of one service."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What was committed after a decision version, for a replica to catch up on: every
    incident written since (whole, with all its alerts, whatever its status), the
    resolutions remembered since and the changes recorded since (oldest first)."""

    version: int
    incidents: tuple[Incident, ...] = ()
    resolutions: tuple[tuple[str, datetime | None], ...] = ()
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class Replica:
    """What a replica tells the others on a shared store: whether it pages for real, and
    which configuration it decides by (`cluster.decision_digest`); when it last said so
    (epoch seconds)."""

    id: str
    dry_run: bool
    digest: str
    seen_at: float = 0.0


class Exclusive(Protocol):
    """A transaction holding the cluster-wide decision lock: one at a time across every
    replica. Committed when its context exits without error, rolled back otherwise."""

    version: int  # the version of the last committed decision, read under the lock

    async def delta(self, since: int) -> Delta:
        """What was committed after `since`, read in this transaction."""

    async def write(self, decisions: Sequence[Decision]) -> int:
        """Write decisions in this transaction, under one new version (returned). Their
        incidents (and the incidents of their `seen`) carry it, so that `delta` finds them."""


class SharedStore(Store, Protocol):
    """A store several replicas share. Decisions are made under `exclusive()`, on a state
    caught up to its version; outbox reads lease their events to this replica."""

    owner: str  # this replica's name, on its leases and its heartbeat row

    def exclusive(self) -> AbstractAsyncContextManager[Exclusive]:
        """Begin a transaction and take the cluster-wide decision lock (waiting for it)."""

    async def load_versioned(self, now: datetime, retention_seconds: float, *,
                             changes_seconds: float = 86400.0) -> tuple[State, int]:
        """`load_state`, with the version it is current to, read in one snapshot."""

    async def delta(self, since: int) -> Delta:
        """What was committed after `since`, read in one snapshot without the lock."""

    async def heartbeat(self, me: Replica, now: float, horizon: float) -> list[Replica]:
        """Say what this replica is (its row's `seen_at` becomes `now`), forget replicas
        unseen since `now - horizon`, and read the others."""

    async def leave(self, replica_id: str) -> None:
        """Remove this replica's row: it stops (the others stop counting it at once)."""

    def listen(self, callback: Callable[[int], None]) -> None:
        """Call `callback(version)` whenever any replica commits a decision or puts events
        in the outbox, and once after every (re)connection of the listener (something may
        have been missed meanwhile). Set before `open`."""


def is_shared(store: Store) -> TypeGuard[SharedStore]:
    """Whether several replicas share `store` (decisions then take its lock)."""
    return store.shared
