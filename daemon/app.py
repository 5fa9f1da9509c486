"""Firehouse assembled: configuration, store, dispatcher, outbox worker and HTTP server,
started and stopped in named stages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from daemon.clock import Timekeeper
from daemon.cluster import ClusterWatch, decision_digest
from daemon.config import Config, Settings, dry_run_state_warning, load_config
from daemon.decide import Decision
from daemon.dispatch import Dispatcher
from daemon.errors import ConfigError, StoreError
from daemon.metrics import Metrics
from daemon.outbox import Deliverer, Housekeeper, utcnow
from daemon.pagerduty import PagerDutyClient
from daemon.reconcile import Reconciler
from daemon.server import StoreProbe, make_app
from daemon.store import Replica, SharedStore, Store, is_shared
from daemon.store.sqlite import SqliteStore, open_incident_ids, unmoved_incidents

log = logging.getLogger("firehouse")
# Settings built into the store, the socket, the HTTP app or the PagerDuty client at start.
UNMOVED_SHOWN = 5  # open incidents of an unmovable SQLite file the warning names
RESTART_ONLY = ("state", "database_url", "database_lease", "listen_host", "listen_port",
                "max_body_bytes", "pagerduty_url", "pagerduty_timeout")


def make_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL, shared by replicas, when `database.url` is
    set; else the SQLite file `state`, owned by this process."""
    if settings.database_url:
        from daemon.store.postgres import PostgresStore  # noqa: PLC0415 - only when used

        return PostgresStore(settings.database_url, lease_seconds=settings.database_lease)
    return SqliteStore(settings.state)


def describe_store(settings: Settings) -> str:
    """Where the state is kept, for the log (never a password)."""
    if settings.database_url:
        from daemon.store.postgres import describe_dsn  # noqa: PLC0415 - only when used

        return f"PostgreSQL {describe_dsn(settings.database_url)} (shared by replicas)"
    return f"SQLite {settings.state}"


class Firehouse:
    """The running daemon: owns the store, the workers and the listening socket."""

    def __init__(self, config: Config, config_path: Path | None, store: Store | None = None,
                 metrics: Metrics | None = None, env: Mapping[str, str] | None = None, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env  # what reloads read instead of os.environ, when given
        self.metrics = metrics or Metrics()
        self.store: Store = store or make_store(config.settings)
        self.accepting = False
        self.last_auth_warning = 0.0
        self.probe = StoreProbe(self.store)  # readiness: whether the store answers
        self.session: aiohttp.ClientSession | None = None
        self.deliverer: Deliverer | None = None
        self.housekeeper: Housekeeper | None = None
        self.reconciler: Reconciler | None = None
        self.timekeeper: Timekeeper | None = None
        self.cluster: ClusterWatch | None = None  # on a shared store only
        self._tasks: list[asyncio.Task[None]] = []
        # Reloads run one at a time (see `reload`); SIGHUP's run as tasks kept here.
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self.runner: web.AppRunner | None = None
        # The engine's `now`: a test may drive it (the workers' own pacing stays real).
        self.dispatcher = Dispatcher(self.store, config, self.metrics, clock, self._committed)
        if is_shared(self.store):
            self.store.listen(self._notified)
        self.port = 0

    def _notified(self, version: int) -> None:
        """Another replica (or this one) committed: catch up, and look for events to send."""
        self.dispatcher.notified(version)
        if self.deliverer is not None:
            self.deliverer.wake()

    def _committed(self, decision: Decision) -> None:
        if self.deliverer is not None and decision.events:
            self.deliverer.wake()
        if self.timekeeper is not None:
            self.timekeeper.consider(decision.incidents)

    async def reload(self, trigger: str) -> Config:
        """Build and validate the new configuration completely, then swap it in.

        The one path of SIGHUP and POST /-/reload (`trigger` names which, for the log).
        Loading runs in a worker thread: a large map takes seconds to parse and check, and
        webhooks must keep being answered meanwhile. Reloads are serialised, not coalesced:
        a request that arrives during a reload waits for it, then reloads again, so that
        every caller gets a configuration read after it asked (an edit saved just after the
        first reload started is not missed).
        """
        async with self._reload_lock:
            old = self.config
            try:
                config = await asyncio.to_thread(load_config, self.config_path, self.env)
            except ConfigError as exc:
                self.metrics.reload_ok.set(0)
                # The problems are the message; a traceback would only bury them.
                log.error("reload (%s) failed; keeping configuration %s:\n%s",  # noqa: TRY400
                          trigger, old.digest, exc)
                raise
            except Exception:
                # A bug, not a bad file: the gauge must still say that this reload failed.
                self.metrics.reload_ok.set(0)
                log.exception("reload (%s) failed unexpectedly; keeping configuration %s",
                              trigger, old.digest)
                raise
            # Compared with what this process runs with (the active settings keep the values
            # it started with), so that a reverted change is no change.
            for key, using, wanted in old.settings.changed_in(config.settings, RESTART_ONLY):
                log.warning("setting %s changes only on restart; still using %s (not %s)",
                            key, using, wanted)
            config = config.keeping(old.settings, RESTART_ONLY)
            # No await from here on: the next webhook decides on either the old or the new
            # configuration, never on a mixture.
            self._activate(config)
        changed = [f for f, h in config.files.items() if old.files.get(f) != h]
        changed += [f"{f} (removed)" for f in old.files if f not in config.files]
        log.info("configuration reloaded (%s): digest %s (was %s); read %d file(s): %s; "
                 "changed: %s", trigger, config.digest, old.digest, len(config.files),
                 ", ".join(config.files) or "none", ", ".join(changed) or "none")
        del old  # collected now, not kept frozen
        freeze_long_lived()
        return config

    def request_reload(self, trigger: str) -> asyncio.Task[None]:
        """Start a reload in the background (for SIGHUP, which has nobody to answer)."""
        async def run() -> None:
            # `reload` has logged and counted every failure; nobody waits for this task.
            with contextlib.suppress(Exception):
                await self.reload(trigger)

        task = asyncio.create_task(run(), name=f"reload ({trigger})")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        return task

    def _activate(self, config: Config) -> None:
        self.config = config
        self.dispatcher.swap_config(config)
        if self.timekeeper is not None:
            self.timekeeper.wake()  # the new rules may set other deadlines
        for warning in config.warnings:
            log.warning("%s", warning)
        self.metrics.set_config(config.digest, config.settings.dry_run,
                                len(config.graph.services), len(config.rules), time.time())

    async def start(self) -> None:
        """Open the store, load state, start the workers, then listen; undone on failure."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.config.settings
        await self.store.open()
        if settings.database_url:
            left = await asyncio.to_thread(unmoved_incidents, settings.state)
            if left:
                log.warning("%s", await self._unmoved_advice(settings.state, left))
        await self.dispatcher.load()
        if not settings.dry_run:
            await self._warn_of_dry_run_incidents()
        self._activate(self.config)
        freeze_long_lived()
        self.session = aiohttp.ClientSession()
        client = PagerDutyClient(settings.pagerduty_url, self.session, settings.pagerduty_timeout)
        self.deliverer = Deliverer(
            self.store, client, self.metrics,
            rate_limit=lambda: self.config.settings.pagerduty_rate_limit,
            # Sent before their lease runs out: another replica may take them after it.
            ready_for=settings.database_lease - settings.pagerduty_timeout
            if is_shared(self.store) else None)
        self._tasks.append(asyncio.create_task(self.deliverer.run(), name="outbox"))
        self.housekeeper = Housekeeper(self.store, self.metrics, lambda: self.config.settings,
                                       after_cleanup=self.dispatcher.refresh)
        self._tasks.append(asyncio.create_task(self.housekeeper.run(), name="housekeeping"))
        self.timekeeper = Timekeeper(self.dispatcher, self.metrics, self.dispatcher.clock)
        self._tasks.append(asyncio.create_task(self.timekeeper.run(), name="clock"))
        # Asks Alertmanager about stale incidents; reads the settings afresh each round.
        self.reconciler = Reconciler(self.dispatcher, self.session, self.metrics)
        self._tasks.append(asyncio.create_task(self.reconciler.run(), name="reconciler"))
        self._tasks.append(asyncio.create_task(self.probe.run(), name="store probe"))
        if is_shared(self.store):
            await self._join_cluster(self.store)
        self.runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=10.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.listen_host, settings.listen_port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.accepting = True
        mode = f"sending to {settings.pagerduty_url}"
        if settings.dry_run:
            keyed = sum(1 for t in settings.targets.values() if t.routing_key)
            why = "dry_run is set" if keyed else "no target has a routing key"
            mode = f"DRY-RUN ({why}: events are logged, not sent)"
        log.info("listening on http://%s:%d, %d services, %d rules, %s, state in %s",
                 settings.listen_host, self.port, len(self.config.graph.services),
                 len(self.config.rules), mode, describe_store(settings))

    async def _join_cluster(self, store: SharedStore) -> None:
        """Heartbeat with the other replicas (daemon/cluster.py); the first heartbeat comes
        before any webhook is taken, so a dry-run replica never decides beside live ones."""
        self.cluster = ClusterWatch(
            store, lambda: Replica(store.owner, self.config.settings.dry_run,
                                   decision_digest(self.config)),
            self.metrics, self._stand_aside)
        try:
            await self.cluster.check()
        except StoreError as exc:
            log.warning("could not compare this replica with the others yet: %s", exc)
        self._tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))

    def _stand_aside(self, refusal: str | None) -> None:
        """Decide and send nothing while `refusal` says why; take up again when None."""
        self.dispatcher.refusal = refusal
        if self.deliverer is not None:
            self.deliverer.standing_aside = refusal is not None
            self.deliverer.wake()
        if refusal is None and self.timekeeper is not None:
            self.timekeeper.wake()

    async def _warn_of_dry_run_incidents(self) -> None:
        """Sending for real on a state decided in dry-run: its open incidents' pages were
        only logged (and their resolves will be), yet their new pages (escalations,
        business updates) would now be sent, for incidents PagerDuty never saw. The
        README's advice is a fresh state; this says so where it matters."""
        ids = await self.store.dry_run_incidents(UNMOVED_SHOWN + 1)
        if ids:
            log.warning("%s", dry_run_state_warning(ids, self.config.settings, UNMOVED_SHOWN))

    async def _unmoved_advice(self, path: Path, count: int) -> str:
        """What to do about a SQLite state file beside PostgreSQL that still holds `count`
        open incidents: import it, while the database has not been used; once it has,
        `firehouse migrate --from-sqlite` refuses it, and the pages those incidents sent
        are closed in PagerDuty by hand (or the file goes to a fresh database)."""
        from daemon.store.postgres import PostgresStore  # noqa: PLC0415 - only when used
        from daemon.store.transfer import used_tables  # noqa: PLC0415 - only when used

        used: list[str] = []
        if isinstance(self.store, PostgresStore):
            try:
                used = await used_tables(self.store)
            except StoreError as exc:
                log.debug("could not tell whether %s has been used: %s", self.store.where, exc)
        head = (f"the SQLite state file {path} holds {count} open incident(s) not moved "
                "here; this Firehouse keeps its state in PostgreSQL, without them")
        if not used:
            return (f"{head}: stop it and run `firehouse migrate --from-sqlite {path}` before "
                    "the replicas take webhooks, or remove the file")
        ids = await asyncio.to_thread(open_incident_ids, path, UNMOVED_SHOWN)
        shown = ", ".join(ids) + (", …" if count > len(ids) else "")
        return (f"{head}, and they cannot be imported into it: this database already holds "
                f"{', '.join(used)} rows (`firehouse migrate --from-sqlite` only imports into a "
                "database no Firehouse has used). Their pages may still be open in PagerDuty, "
                f"where nothing will resolve them: resolve them there by hand (dedup keys "
                f"firehouse/<incident>/…, incidents {shown}), or stop every replica and import "
                "the file into a fresh database (an empty database or schema for "
                "database.url). Then move the file aside: this warning stops once it is "
                "gone")

    async def stop(self) -> None:
        """Stop in stages, each with its own timeout: intake, reloads, requests, workers,
        store."""
        self.accepting = False
        for task in list(self._reloads):
            # A reload still parsing is of no use to a stopping daemon; its thread finishes
            # on its own and its result is dropped.
            log.info("shutdown: abandoning %s", task.get_name())
            task.cancel()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            log.info("shutdown: finishing in-flight requests")
            await runner.cleanup()
        if self.deliverer is not None:
            self.deliverer.stop()
        if self.housekeeper is not None:
            self.housekeeper.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.timekeeper is not None:
            self.timekeeper.stop()
        self.probe.stop()
        if self.cluster is not None:
            self.cluster.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            try:
                await asyncio.wait_for(task, timeout=10.0)
            except TimeoutError:
                log.warning("shutdown: %s still running after 10s; cancelled (its events stay "
                            "pending and are sent after restart)", task.get_name())
            except asyncio.CancelledError:
                pass
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()
        if self.cluster is not None:
            await self.cluster.leave()
        log.info("shutdown: closing the store")
        await self.store.close()

    async def refresh_gauges(self) -> None:
        """Update gauges read from the store (called on scrape)."""
        counts = await self.store.outbox_counts()
        for state in ("pending", "delivered", "dead", "dry_run"):
            self.metrics.outbox.labels(state).set(counts.get(state, 0))
        oldest = await self.store.oldest_pending_at()
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        self.metrics.outbox_oldest_pending.set(age)


def freeze_long_lived() -> None:
    """Keep what lives as long as the configuration out of the garbage collector's passes.

    A 10,000-service map is ~130,000 objects, and every full collection walked them all
    (~50 ms with the event loop stopped: the worst webhook answers and pages waited for it).
    Frozen, they are never scanned. Called once started, and after each reload, once the
    previous configuration is let go: it is unfrozen and collected first, so nothing of it
    is kept.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def serve(config: Config, config_path: Path | None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads. A second signal exits at once."""
    firehouse = Firehouse(config, config_path)
    await firehouse.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("signal received: shutting down")
        firehouse.accepting = False
        stop.set()

    def on_hup() -> None:
        log.info("SIGHUP received: reloading configuration")
        firehouse.request_reload("SIGHUP")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
    finally:
        await firehouse.stop()
