"""The reconciler: asks Alertmanager about incidents whose alerts went quiet.

A resolve may never reach Firehouse: `send_resolved: false`, a silence or an inhibition,
an Alertmanager restart or reload. Alertmanager re-sends a firing alert every
repeat_interval, which refreshes it here; an alert not refreshed for longer than
`alertmanager.stale_after` is stale. Every `alertmanager.check_interval`, the stale alerts
(`decide.stale_fingerprints`) are looked up in Alertmanager's own API, and the engine
(`decide.reconcile`) resolves those it no longer has, refreshes those it still has, and
flags the incidents stale when it cannot be asked: never silently left open or closed.

An Alertmanager keeps alerts in memory only: just after a restart it lacks every alert until
Prometheus sends them again. So an alert's absence proves it gone only when some
Alertmanager that answered has been up (`GET /api/v2/status`'s `uptime`) for at least
`alertmanager.restart_grace`; otherwise the alerts it lacks are left waiting, untouched,
for a later round.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp

from daemon.config import Config, Settings
from daemon.decide import RESOLVED, Decision, State, reconcile, stale_fingerprints
from daemon.errors import ReconcileError
from daemon.metrics import Metrics
from daemon.outbox import Clock, every, utcnow

log = logging.getLogger("firehouse.reconcile")

ALERTS_PATH = "/api/v2/alerts"
STATUS_PATH = "/api/v2/status"
# Every alert Alertmanager holds, whatever its state: a silenced, inhibited or not yet
# processed alert is still firing and must not be resolved. (Alertmanager never lists an
# alert whose endsAt has passed, although it keeps it in memory for a while.)
ALL_STATES = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}
_TEXT_LIMIT = 200

# Outcomes of a round: the closed set of firehouse_stale_checks_total{outcome}.
OK = "ok"
UNREACHABLE = "unreachable"
UNCONFIGURED = "unconfigured"
ERROR = "error"
_UNKNOWN = "unknown"  # an uptime that could not be read


@dataclass(frozen=True)
class Member:
    """What one Alertmanager that answered has, and how long it had been up."""

    url: str
    present: frozenset[str]
    started: datetime | None = None  # its `uptime`: when it started; None when unknown
    up_for: float = 0.0  # seconds, by its own clock, when it answered
    unknown: str = ""  # why its uptime is unknown: it is trusted as it was before uptimes

    def proves_absence(self, grace: float) -> bool:
        """Whether an alert it lacks is gone: it has been up long enough to have heard
        from Prometheus again (or its uptime is unknown)."""
        return self.started is None or self.up_for >= grace


@dataclass(frozen=True)
class Answer:
    """What the Alertmanagers that answered have."""

    members: tuple[Member, ...]

    @property
    def present(self) -> frozenset[str]:
        """The alerts any of them has: each member of an HA pair normally has them all."""
        return frozenset().union(*(m.present for m in self.members))

    def proves_absence(self, grace: float) -> bool:
        """Whether an alert none of them has is gone: one that has been up long enough
        lacks it. A member just restarted proves nothing, but does not undo another's word."""
        return any(m.proves_absence(grace) for m in self.members)


StaleStep = Callable[[Config, State, datetime], tuple[str, ...]]
ReconcileStep = Callable[[tuple[str, ...], frozenset[str] | None, Config, State, datetime],
                         Decision]


class AlertmanagerClient:
    """Asks one Alertmanager, or each of an HA pair, which alerts it has."""

    def __init__(self, urls: Sequence[str], session: aiohttp.ClientSession, timeout: float, *,
                 bearer_token: str = "", basic_auth: tuple[str, str] | None = None) -> None:
        self.urls = tuple(url.rstrip("/") for url in urls)
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = {"Accept": "application/json"}
        if bearer_token:
            self.headers["Authorization"] = f"Bearer {bearer_token}"
        elif basic_auth:
            # UTF-8, as Go's SetBasicAuth sends it (aiohttp's BasicAuth is deprecated).
            pair = base64.b64encode(":".join(basic_auth).encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {pair}"

    @classmethod
    def of(cls, settings: Settings, session: aiohttp.ClientSession) -> AlertmanagerClient:
        """The client the settings describe."""
        return cls(settings.alertmanager_urls, session, settings.alertmanager_timeout,
                   bearer_token=settings.alertmanager_bearer_token,
                   basic_auth=settings.alertmanager_basic_auth)

    async def fingerprints(self) -> frozenset[str]:
        """The fingerprints of the alerts that any reachable Alertmanager has; raises
        `ReconcileError` only when none could be asked."""
        return (await self.ask()).present

    async def ask(self) -> Answer:
        """What each reachable Alertmanager has, and how long it has been up; raises
        `ReconcileError` only when none could be asked."""
        results = await asyncio.gather(*(self.member(url) for url in self.urls),
                                       return_exceptions=True)
        members: list[Member] = []
        failures: list[ReconcileError] = []
        for result in results:
            if isinstance(result, ReconcileError):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                members.append(result)
        if not self.urls:
            raise ReconcileError("no Alertmanager URL configured")
        if len(failures) == len(self.urls):
            if len(failures) == 1:
                raise failures[0]
            raise ReconcileError("; ".join(str(f) for f in failures)) from failures[0]
        for failure in failures:
            # Each member of an HA pair normally has every alert: the others' answer counts.
            log.warning("alertmanager unreachable; using the others' answer",
                        extra={"fields": {"error": str(failure)}})
        return Answer(tuple(members))

    async def member(self, url: str) -> Member:
        """What one Alertmanager has, then how long it has been up. In that order: an
        uptime read after the alerts covers them, a restart in between included."""
        present = await self.fetch(url)
        try:
            started, now = await self.uptime(url)
        except ReconcileError as exc:
            return Member(url, present, unknown=str(exc))
        return Member(url, present, started, (now - started).total_seconds())

    async def uptime(self, url: str) -> tuple[datetime, datetime]:
        """When one Alertmanager started (`uptime` of `GET /api/v2/status`) and its time
        then (its `Date` header: both from its clock, whatever ours says; ours without
        one); every failure is a `ReconcileError` that starts with the URL."""
        text, headers = await self._get(url, STATUS_PATH)
        try:
            data = json.loads(text)
        except ValueError:
            raise ReconcileError(f"{url}: the status is not JSON: {_short(text)}") from None
        uptime = data.get("uptime") if isinstance(data, dict) else None
        try:
            started = datetime.fromisoformat(uptime) if isinstance(uptime, str) else None
        except ValueError:
            started = None
        if started is None or started.tzinfo is None:
            raise ReconcileError(f"{url}: the status has no RFC 3339 uptime: "
                                 f"{_short(json.dumps(uptime))}")
        try:
            now = parsedate_to_datetime(headers.get("Date", ""))
        except (TypeError, ValueError):
            now = datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return started, now

    async def fetch(self, url: str) -> frozenset[str]:
        """The fingerprints of the alerts one Alertmanager has; every failure is a
        `ReconcileError` that starts with the URL and says what went wrong."""
        text, _ = await self._get(url, ALERTS_PATH, ALL_STATES)
        return parse_fingerprints(url, text)

    async def _get(self, url: str, path: str, params: dict[str, str] | None = None
                   ) -> tuple[str, Mapping[str, str]]:
        """The text and headers of a `200` answer; anything else a `ReconcileError`."""
        try:
            async with self.session.get(url + path, params=params, headers=self.headers,
                                        timeout=self.timeout) as response:
                status = response.status
                headers = response.headers
                text = await response.text(errors="replace")
        except TimeoutError:
            raise ReconcileError(f"{url}: no answer within {self.timeout.total:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = ("connection refused" if isinstance(exc.os_error, ConnectionRefusedError)
                      else f"cannot connect: {exc.strerror}")
            raise ReconcileError(f"{url}: {reason}") from exc
        except aiohttp.ClientError as exc:
            raise ReconcileError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise ReconcileError(f"{url}: HTTP {status}: {_short(text)}")
        return text, headers


def parse_fingerprints(url: str, text: str) -> frozenset[str]:
    """The fingerprints of a `GET /api/v2/alerts` answer (a list of gettableAlert objects);
    raises `ReconcileError` naming what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ReconcileError(f"{url}: the answer is not JSON: {_short(text)}") from None
    if not isinstance(data, list):
        raise ReconcileError(f"{url}: the answer is not a list of alerts but {_kind(data)}")
    found: set[str] = set()
    for index, alert in enumerate(data):
        fingerprint = alert.get("fingerprint") if isinstance(alert, dict) else None
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ReconcileError(f"{url}: alert {index} of {len(data)} has no string "
                                 f"fingerprint: {_short(json.dumps(alert))}")
        found.add(fingerprint)
    return frozenset(found)


def _short(text: str) -> str:
    """A body quoted in an error: on one line, cut short."""
    line = " ".join(text.split())
    return repr(line[:_TEXT_LIMIT] + ("..." if len(line) > _TEXT_LIMIT else ""))


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class Reconcilable(Protocol):
    """What the reconciler needs of the dispatcher."""

    config: Config
    state: State
    refusal: str | None  # why nothing is decided now (daemon/cluster.py); None: it is

    async def run(self, step: Callable[[Config, State, datetime], Decision]) -> Decision: ...


class Reconciler:
    """Background worker: every `stale_check_interval`, checks stale alerts against
    Alertmanager and has the engine resolve, refresh or flag them."""

    def __init__(self, dispatcher: Reconcilable, session: aiohttp.ClientSession,
                 metrics: Metrics, *, clock: Clock = utcnow,
                 stale: StaleStep = stale_fingerprints,
                 reconcile: ReconcileStep = reconcile) -> None:
        self.dispatcher = dispatcher
        self.session = session
        self.metrics = metrics
        self.clock = clock
        self.stale = stale
        self.reconcile = reconcile
        self._stop = asyncio.Event()
        self._warned_unconfigured = False
        # Per Alertmanager URL, what was last said about its uptime: the start time it
        # reported (a restart is told about once), or _UNKNOWN (warned about once).
        self._uptimes: dict[str, datetime | str] = {}

    def stop(self) -> None:
        """Ask the loop to return (a question to Alertmanager in flight is abandoned)."""
        self._stop.set()

    async def run(self) -> None:
        """Check until stopped; a failed round is logged and counted, never fatal."""
        def failed() -> None:
            self.metrics.stale_checks.labels(ERROR).inc()
            log.exception("stale check failed; trying again later")

        await every(lambda: self.dispatcher.config.settings.stale_check_interval, self.check,
                    self._stop, failed)

    async def check(self) -> str | None:
        """One round; returns its outcome, or None when no alert was stale (or the worker was
        stopped while Alertmanager was being asked)."""
        try:
            return await self._check()
        finally:
            # From the state, whatever the round did: webhooks refresh incidents too.
            self.metrics.incidents_stale.set(sum(
                1 for incident in self.dispatcher.state.open.values()
                if incident.stale_since is not None))

    async def _check(self) -> str | None:
        if self.dispatcher.refusal is not None:
            return None  # standing aside (daemon/cluster.py): the replicas that page check
        config, state = self.dispatcher.config, self.dispatcher.state
        checked = self.stale(config, state, self.clock())
        if not checked:
            return None
        settings = config.settings
        present: frozenset[str] | None = None
        asked, error = checked, ""
        if not settings.alertmanager_urls:
            outcome = UNCONFIGURED
            if not self._warned_unconfigured:
                log.warning("alertmanager.url is not set: stale incidents cannot be checked, "
                            "so they are flagged stale and stay open; set alertmanager.url "
                            "(or FIREHOUSE_ALERTMANAGER_URL)")
                self._warned_unconfigured = True
        else:
            self._warned_unconfigured = False
            try:
                answer = await self._ask(AlertmanagerClient.of(settings, self.session))
            except ReconcileError as exc:
                outcome, error = UNREACHABLE, str(exc)
            else:
                if answer is None:
                    return None
                outcome, present = OK, answer.present
                grace = settings.alertmanager_restart_grace
                self._tell_uptimes(answer, grace)
                if not answer.proves_absence(grace):
                    # Only just restarted: what it lacks may still fire. Those alerts are
                    # left out, neither resolved nor flagged, and asked about next round.
                    asked = tuple(fp for fp in checked if fp in present)
        resolved = 0

        def step(config: Config, state: State, now: datetime) -> Decision:
            nonlocal resolved
            decision = self.reconcile(asked, present, config, state, now)
            resolved = newly_resolved(checked, state, decision)
            return decision

        # Counted before the step: the dispatcher's state is live, and the step may close them.
        incidents = {state.by_fingerprint[fp] for fp in checked if fp in state.by_fingerprint}
        await self.dispatcher.run(step)
        self.metrics.stale_alerts_resolved.inc(resolved)
        self.metrics.stale_checks.labels(outcome).inc()
        fields: dict[str, object] = {"outcome": outcome, "alerts": len(checked),
                                     "incidents": len(incidents), "resolved": resolved}
        if error:
            fields["error"] = error
        if len(asked) < len(checked):
            fields["waiting"] = len(checked) - len(asked)
        # Unconfigured was warned about once; unreachable is worth a warning every round.
        level = logging.WARNING if outcome == UNREACHABLE else logging.INFO
        log.log(level, "stale check", extra={"fields": fields})
        return outcome

    def _tell_uptimes(self, answer: Answer, grace: float) -> None:
        """Log, once each, an Alertmanager restarted less than `grace` ago (INFO) and one
        whose uptime cannot be read (WARNING)."""
        for member in answer.members:
            said = self._uptimes.get(member.url)
            if member.started is None:
                if said != _UNKNOWN:
                    log.warning(
                        "cannot read Alertmanager's uptime: an alert it lacks is taken as "
                        "resolved even just after it restarted",
                        extra={"fields": {"alertmanager": member.url, "error": member.unknown}})
                self._uptimes[member.url] = _UNKNOWN
                continue
            if said != member.started and not member.proves_absence(grace):
                log.info("Alertmanager restarted recently: until it has been up for "
                         "alertmanager.restart_grace, an alert it lacks is not resolved",
                         extra={"fields": {"alertmanager": member.url,
                                           "started": member.started.isoformat(),
                                           "up_for": round(member.up_for, 1),
                                           "restart_grace": grace}})
            self._uptimes[member.url] = member.started

    async def _ask(self, client: AlertmanagerClient) -> Answer | None:
        """Alertmanager's answer, or None when the worker is stopped before it comes: a
        stopping daemon must not wait for a timeout."""
        fetch = asyncio.ensure_future(client.ask())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((fetch, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (fetch, stopped):
                task.cancel()
            await asyncio.gather(fetch, stopped, return_exceptions=True)
        if fetch.cancelled():
            return None
        return fetch.result()


def newly_resolved(checked: tuple[str, ...], before: State, decision: Decision) -> int:
    """How many of the `checked` alerts the decision resolves (firing in `before`)."""
    count = 0
    for incident in decision.incidents:
        was = before.open.get(incident.id)
        for fingerprint in checked:
            alert = incident.alerts.get(fingerprint)
            old = was.alerts.get(fingerprint) if was is not None else None
            if alert is not None and alert.status == RESOLVED and (
                    old is None or old.status != RESOLVED):
                count += 1
    return count
