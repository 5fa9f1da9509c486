"""Replicas on one database agree on how they page, or the odd one out stands aside.

A replica decides pages with its own routing keys: one in dry-run (a pod whose secret was
not mounted, someone debugging against the production database) stores its pages without
keys, and they are logged, never sent, whichever replica delivers them. So every replica
writes a heartbeat row saying whether it is in dry-run and which configuration it runs
(`decision_digest`), and reads the others'. A dry-run replica that sees one paging for real
refuses to decide anything -- webhooks, PagerDuty's updates, changes and the clock get a
503 or wait -- and its outbox sends nothing, until it is given its keys or the others are
gone; it reports not ready, so a load balancer sends its webhooks to the others. Replicas
paging for real that crashed keep it aside too, for a day (FORGOTTEN_AFTER): a database
paged from stays so until its replicas stop cleanly. A replica paging for real that sees
dry-run ones says so. Differing configurations are expected during a rollout, so they are
only reported (each replica decides by its own rules).

`judge` is pure; `ClusterWatch` is the worker that feeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from daemon.config import Config
from daemon.errors import StoreError
from daemon.metrics import Metrics
from daemon.store import Replica, SharedStore

log = logging.getLogger("firehouse.cluster")

HEARTBEAT_SECONDS = 5.0  # between heartbeats
# A replica unseen for this long is not counted: three heartbeats missed.
SEEN_WITHIN = 3 * HEARTBEAT_SECONDS + 1.0
SHOWN = 3  # replicas named in a message
# Rows older than this are deleted; until then, a live replica that did not stop cleanly
# keeps dry-run ones aside (see `judge`).
FORGOTTEN_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What this replica makes of the others: `refusal`, why it must decide nothing (None:
    it may); `warnings`, what to log; the counts, for metrics."""

    refusal: str | None
    warnings: tuple[str, ...]
    live: int
    dry_run: int
    configurations: int


def decision_digest(config: Config) -> str:
    """A hash of what decides pages: the settings, but not where this replica listens, keeps
    a file or logs, or where its maps and rules are (which may differ between replicas),
    and the maps' and rules' contents. Whether it runs in dry-run is told apart."""
    settings = replace(config.settings, listen_host="", listen_port=0, state=Path(),
                       log_level="", source="", dry_run=False, rules=(), dependency_maps=())
    sha = hashlib.sha256(repr(settings).encode())
    for file_hash in sorted(h for name, h in config.files.items()
                            if name != config.settings.source):
        sha.update(file_hash.encode())
    return sha.hexdigest()[:16]


def _named(replicas: Sequence[Replica]) -> str:
    shown = ", ".join(r.id for r in replicas[:SHOWN])
    return shown + (f" and {len(replicas) - SHOWN} more" if len(replicas) > SHOWN else "")


def judge(me: Replica, peers: Sequence[Replica], now: float) -> Verdict:
    """How this replica stands among `peers`: the others' rows, those seen within
    SEEN_WITHIN of `now` counted as running. A replica paging for real that did not stop
    cleanly (its row is left, unseen) still keeps a dry-run one aside: the database is a
    live one, and its replicas may be back any moment."""
    recent = [r for r in peers if r.seen_at >= now - SEEN_WITHIN]
    everyone = [me, *recent]
    live = [r for r in recent if not r.dry_run]
    dry = [r for r in recent if r.dry_run]
    gone = [r for r in peers if not r.dry_run and r.seen_at < now - SEEN_WITHIN]
    refusal = None
    warnings: list[str] = []
    if me.dry_run and (live or gone):
        if live:
            why = (f"{len(live)} replica(s) on the same database page for real "
                   f"({_named(live)})")
        else:
            why = (f"this database is paged from: replica(s) that page for real were here "
                   f"and did not stop cleanly ({_named(gone)}, last seen "
                   f"{round(now - max(r.seen_at for r in gone))}s ago)")
        refusal = (f"this replica is in dry-run, but {why}: it takes no webhooks and "
                   "decides nothing, since the pages it decided would be logged, never "
                   "sent. Give it the routing keys (and dry_run: false), or stop it")
    elif not me.dry_run and dry:
        warnings.append(
            f"{len(dry)} replica(s) on the same database are in dry-run ({_named(dry)}): "
            "they refuse webhooks and decide nothing while this one pages for real. Give "
            "them the routing keys (and dry_run: false), or stop them")
    digests = sorted({r.digest for r in everyone})
    if len(digests) > 1:
        by_digest = {d: [r for r in everyone if r.digest == d] for d in digests}
        shown = "; ".join(f"{d} on {_named(rs)}" for d, rs in by_digest.items())
        warnings.append(
            f"replicas on the same database run {len(digests)} different configurations "
            f"({shown}): each decides by its own rules, maps and targets. Expected during a "
            "rollout; otherwise give them the same files and environment")
    return Verdict(refusal, tuple(warnings), live=len(live) + (not me.dry_run),
                   dry_run=len(dry) + me.dry_run, configurations=len(digests))


class ClusterWatch:
    """Heartbeats every HEARTBEAT_SECONDS, judging the others each time; `on_change` is
    told when the refusal changes (the app stands the dispatcher and the outbox aside or
    back), and messages are logged when they change."""

    def __init__(self, store: SharedStore, me: Callable[[], Replica], metrics: Metrics,
                 on_change: Callable[[str | None], None]) -> None:
        self.store = store
        self.me = me  # read afresh each time: a reload may change the mode or configuration
        self.metrics = metrics
        self.on_change = on_change
        self.refusal: str | None = None
        self._said: tuple[str, ...] = ()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to return."""
        self._stop.set()

    async def check(self) -> Verdict:
        """One heartbeat and judgement; StoreError when the store could not be written (the
        last judgement stands: the store probe makes this replica not ready meanwhile)."""
        me = self.me()
        now = time.time()
        peers = await self.store.heartbeat(me, now, FORGOTTEN_AFTER)
        verdict = judge(me, peers, now)
        self.metrics.cluster_replicas.labels("live").set(verdict.live)
        self.metrics.cluster_replicas.labels("dry_run").set(verdict.dry_run)
        self.metrics.cluster_configurations.set(verdict.configurations)
        self.metrics.cluster_refusing.set(verdict.refusal is not None)
        said = ((verdict.refusal,) if verdict.refusal else ()) + verdict.warnings
        if said != self._said:
            for message in said:
                if message not in self._said:
                    (log.error if message == verdict.refusal else log.warning)("%s", message)
            if self._said and not said:
                log.info("the replicas on this database agree again on how they page")
            self._said = said
        if verdict.refusal != self.refusal:
            was, self.refusal = self.refusal, verdict.refusal
            if was is not None and verdict.refusal is None:
                log.info("no replica on this database pages for real any more (or this one "
                         "now does): deciding again")
            self.on_change(verdict.refusal)
        return verdict

    async def run(self) -> None:
        """Check until stopped; a failed heartbeat is logged and tried again."""
        while not self._stop.is_set():
            try:
                await self.check()
            except StoreError as exc:
                log.debug("heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HEARTBEAT_SECONDS)

    async def leave(self) -> None:
        """Remove this replica's row on a clean stop; a failure is only logged (the row is
        then as a crashed replica's: no longer counted as running after SEEN_WITHIN, but a
        live one's keeps dry-run replicas aside until FORGOTTEN_AFTER)."""
        try:
            await self.store.leave(self.me().id)
        except StoreError as exc:
            log.warning("could not tell the other replicas this one stops: %s", exc)
