"""Settings, and the complete configuration (settings + maps + rules) built and checked at once.

Every setting comes from the YAML settings file, overridden by `FIREHOUSE_*` environment
variables. A `Config` is built completely, cross-references and all, before anything uses
it: a reload that finds a problem leaves the running configuration in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from daemon.errors import ConfigError, Problem, did_you_mean
from daemon.graph import DEFAULT_TIER_SEVERITY, OWNER_ROLES, SEVERITIES, ServiceGraph
from daemon.maps import MapDefaults, MapOptions, load_maps, map_files, owner_key
from daemon.rules import MapNames, Rule, format_duration, load_rules, parse_duration, rule_files
from daemon.yamlsrc import LocatedDict, load_file, shown

DEFAULT_SETTINGS_FILE = "firehouse.yml"
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com"
# Alertmanager sends up to thousands of alerts in one notification (10,000 are about 3 MB),
# and drops the whole group when it gets a 413: leave room above that.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# PagerDuty refuses an event whose routing (integration) key is not exactly this long.
ROUTING_KEY_CHARS = 32
# Below this length, even four characters are a large share of a secret: show none.
_MASK_MIN_CHARS = 16
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIRECT_ROLES = ("incident_lead", "senior_management", "business_line")
# A little more than Alertmanager's default repeat_interval (4h): an alert it still has is
# normally re-sent, and so refreshed, before the incident counts as stale.
DEFAULT_STALE_AFTER = 4 * 3600.0 + 15 * 60
# How long an Alertmanager must have been up before an alert missing from it counts as
# resolved (daemon/reconcile.py). It keeps alerts in memory only: after a restart it lacks
# every firing alert until Prometheus sends it again, which Prometheus does each
# `resend_delay` (1m by default) at the rule's next evaluation (`evaluation_interval`, 1m by
# default). Five minutes covers those defaults several times over. Not `stale_after`: that
# is unrelated to Prometheus' pace (30s would be too short; at 4h15m a resolve lost in a
# restart would wait hours more).
DEFAULT_RESTART_GRACE = 300.0
_ALERTMANAGER_KEYS = ("url", "stale_after", "check_interval", "restart_grace", "timeout_seconds",
                      "bearer_token", "bearer_token_file", "basic_auth")

ENV_VARS = {
    "FIREHOUSE_LISTEN": "listen",
    "FIREHOUSE_STATE": "state",
    "FIREHOUSE_PAGERDUTY_URL": "pagerduty.url",
    "FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET": "pagerduty.webhook_secret",
    "FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET_FILE": "pagerduty.webhook_secret_file",
    "FIREHOUSE_RULES": "rules",
    "FIREHOUSE_DEPENDENCY_MAPS": "dependency_maps",
    "FIREHOUSE_WEBHOOK_TOKEN": "auth.bearer_token",
    "FIREHOUSE_WEBHOOK_TOKEN_FILE": "auth.bearer_token_file",
    "FIREHOUSE_DRY_RUN": "dry_run",
    "FIREHOUSE_LOG_LEVEL": "log_level",
    "FIREHOUSE_ALERTMANAGER_URL": "alertmanager.url",
    "FIREHOUSE_ALERTMANAGER_TOKEN_FILE": "alertmanager.bearer_token_file",
    "FIREHOUSE_WEB_OPEN": "web.open",
    "FIREHOUSE_DATABASE_URL": "database.url",
    "FIREHOUSE_DATABASE_URL_FILE": "database.url_file",
}
# A shared store: several replicas on one PostgreSQL (daemon/store/postgres.py).
DATABASE_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class Target:
    """A PagerDuty integration, by name; the routing key is a secret and never printed."""

    name: str
    routing_key: str = field(repr=False)
    key_source: str = ""

    @property
    def masked(self) -> str:
        """The routing key as it may appear in logs (see `mask`)."""
        return mask(self.routing_key)


def mask(secret: str) -> str:
    """Hide a secret; its last four characters are shown only when it has at least 16."""
    if not secret:
        return "(none)"
    return "****" + secret[-4:] if len(secret) >= _MASK_MIN_CHARS else "****"


def routing_key_fault(key: str) -> str | None:
    """What keeps `key` from being a PagerDuty routing key, never quoting it; None if usable."""
    where = []
    if key[:1].isspace():
        where.append("at the start")
    if any(c.isspace() for c in key[1:-1]):
        where.append("inside")
    if len(key) > 1 and key[-1].isspace():
        where.append("at the end")
    if where:
        return (f"must be {ROUTING_KEY_CHARS} characters without whitespace, got {len(key)} "
                f"with whitespace {' and '.join(where)}")
    if len(key) != ROUTING_KEY_CHARS:
        return f"must be {ROUTING_KEY_CHARS} characters, got {len(key)}"
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """The daemon's settings, after defaults, file and environment."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 9095
    state: Path = Path("data/firehouse.db")
    # PostgreSQL instead of the SQLite file `state`, for several replicas; may hold a password.
    database_url: str = field(default="", repr=False)
    # How long a replica's claim on an outbox event lasts: after a crash, another replica
    # sends the event once this has passed.
    database_lease: float = 30.0
    rules: tuple[Path, ...] = (Path("rules"),)
    dependency_maps: tuple[Path, ...] = (Path("dependency_maps"),)
    pagerduty_url: str = DEFAULT_PAGERDUTY_URL
    pagerduty_timeout: float = 10.0
    # Secrets of the PagerDuty v3 webhook subscription; several while one is rotated.
    pagerduty_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    service_labels: tuple[str, ...] = ("service", "job")
    severity_labels: tuple[str, ...] = ("severity", "priority")
    roles: Mapping[str, str] = field(default_factory=dict)
    targets: Mapping[str, Target] = field(default_factory=dict)
    tier_severity: Mapping[int, str] = field(default_factory=lambda: DEFAULT_TIER_SEVERITY)
    dry_run: bool = True
    bearer_token: str = field(default="", repr=False)
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    # The read-only command-center pages (daemon/web/) need no credentials, like /metrics.
    web_open: bool = False
    # /metrics asks for the webhook's credentials too (health and readiness never do).
    protect_metrics: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    resolved_retention_hours: float = 24.0
    # Events per minute sent to one routing key, under PagerDuty's limit per integration key;
    # a burst beyond it waits in the outbox, most urgent first. 0: no shaping.
    pagerduty_rate_limit: int = 120
    # An event still undelivered after this long is reported overdue (still retried).
    overdue_after: float = 300.0
    # Delivered and dry-run outbox rows are deleted this long after delivery.
    delivered_retention_hours: float = 168.0
    # Changes this recent are rollback candidates (daemon/changes.py).
    changes_window_hours: float = 24.0
    # Flap damping: an incident resolves only once all its alerts stayed resolved this long.
    flap_damping: float = 300.0
    # Alertmanager's API, asked about incidents whose alerts were not refreshed for
    # `stale_after` seconds (daemon/reconcile.py); several URLs for an HA pair.
    alertmanager_urls: tuple[str, ...] = ()
    stale_after: float = DEFAULT_STALE_AFTER
    stale_check_interval: float = 60.0
    # An Alertmanager up for less than this since it (re)started proves no alert absent.
    alertmanager_restart_grace: float = DEFAULT_RESTART_GRACE
    alertmanager_timeout: float = 10.0
    alertmanager_bearer_token: str = field(default="", repr=False)
    alertmanager_basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    log_level: str = "info"
    map_options: MapOptions = field(default_factory=MapOptions)
    source: str = "(built-in defaults)"

    @property
    def webhook_auth(self) -> str:
        """How webhook requests must authenticate: bearer, basic, bearer or basic, or off."""
        modes = [m for m, on in (("bearer", self.bearer_token), ("basic", self.basic_auth)) if on]
        return " or ".join(modes) or "off"

    def changed_in(self, new: Settings, fields: Iterable[str]) -> list[tuple[str, str, str]]:
        """The `fields` that `new` changes from these settings: (the setting's key as
        written, this value, the new one), each key once (`listen` for host and port),
        values as written and never with a password. The lease counts only where a shared
        store uses it."""
        changed: dict[str, None] = {}
        for name in fields:
            if getattr(self, name) != getattr(new, name):
                changed[_SETTING_KEYS.get(name, name)] = None
        if not (self.database_url or new.database_url):
            changed.pop("database.lease_seconds", None)
        return [(key, _setting_text(self, key), _setting_text(new, key)) for key in changed]


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a decision needs, validated together; swapped as one reference on reload."""

    settings: Settings
    graph: ServiceGraph
    rules: tuple[Rule, ...]
    warnings: tuple[Problem, ...]
    digest: str
    # Every file read (settings, maps, rules) -> hash of its content, so that a reload can
    # say which files changed.
    files: Mapping[str, str] = field(default_factory=dict)
    # The labels any rule's matchers read, sorted (the engine's key for rule outcomes):
    # derived once here rather than for every decision.
    matched_labels: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matched_labels", tuple(sorted(
            {m.label for rule in self.rules for m in rule.matchers})))

    def target_for_role(self, role: str) -> str | None:
        """The target a command-center role (incident lead, …) is mapped to in the settings."""
        return self.settings.roles.get(role)

    def keeping(self, running: Settings, fields: Iterable[str]) -> Config:
        """This configuration with the `fields` of its settings as `running` has them: what
        is read only at start stays in force until a restart, and the active configuration
        says so (a later reload compares with it, and a revert is no change)."""
        kept = {name: getattr(running, name) for name in fields}
        return replace(self, settings=replace(self.settings, **kept))


# The key, as written in the settings file, of each `Settings` field a reload may name.
_SETTING_KEYS: Mapping[str, str] = MappingProxyType({
    "state": "state", "database_url": "database.url",
    "database_lease": "database.lease_seconds", "listen_host": "listen",
    "listen_port": "listen", "max_body_bytes": "max_body_bytes",
    "pagerduty_url": "pagerduty.url", "pagerduty_timeout": "pagerduty.timeout_seconds",
})
# The other way; `listen` is two fields, shown together by `_setting_text`.
_SETTING_FIELDS = {key: name for name, key in _SETTING_KEYS.items()}


def _setting_text(settings: Settings, key: str) -> str:
    """A setting's value as a person writes it in the settings file."""
    if key == "listen":
        host = settings.listen_host
        if ":" in host:  # IPv6, bracketed as in `listen: "[::1]:9095"`
            host = f"[{host}]"
        return f"{host}:{settings.listen_port}"
    if key == "database.url":
        if not settings.database_url:
            return "the SQLite file state"
        from daemon.store.postgres import describe_dsn  # noqa: PLC0415 - only when used

        return describe_dsn(settings.database_url)
    value = getattr(settings, _SETTING_FIELDS.get(key, key))
    return _number_text(value) if isinstance(value, float) else str(value)


def dry_run_state_warning(ids: Sequence[str], settings: Settings, limit: int) -> str:
    """The warning about a state holding open incidents decided in dry-run (`ids`, up to
    `limit` shown and one more to tell that there are more), with advice that fits the
    store the settings name."""
    shown = ", ".join(ids[:limit]) + (", …" if len(ids) > limit else "")
    if settings.database_url:
        fresh = ("stop every replica and point database.url (or FIREHOUSE_DATABASE_URL) at a "
                 "fresh database (an empty database, or a schema of its own with "
                 "?search_path=)")
    else:
        fresh = "stop and point state (or FIREHOUSE_STATE) at a fresh file"
    return (f"the state holds open incidents decided in dry-run ({shown}): their pages were "
            "only logged, never sent, but their new pages (escalations, business updates) "
            "are sent for real by a Firehouse that is not in dry-run; to start clean, "
            f"{fresh}")


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Build and validate the whole configuration; raises `ConfigError` listing every problem."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    settings = load_settings(path, env, problems)
    targets = set(settings.targets)
    graph, map_problems = load_maps(list(settings.dependency_maps), targets, settings.tier_severity,
                                    settings.map_options)
    problems.extend(map_problems)
    map_errors = any(not p.warning for p in map_problems)
    # Said only when the maps have no other problem: a map whose every service has an error
    # fails to load anyway. (Not in load_maps: a single map file may rightly define nothing.)
    if not graph.services and not map_errors:
        problems.append(Problem(", ".join(str(p) for p in settings.dependency_maps), 0,
                                "dependency_maps", "no services: every alert will be treated "
                                "as unmapped", warning=True))
    # Rule conditions are checked against the names the maps define only when the maps
    # loaded whole: a service lost to a map error would make its names look unknown too,
    # and with no services at all the warning above already says that nothing is mapped.
    names = MapNames.of(graph.services.values()) if graph.services and not map_errors else None
    rules, rule_problems = load_rules(list(settings.rules), targets, names)
    problems.extend(rule_problems)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(errors)
    settings_file = find_settings_file(path, env)
    data_files = [*map_files(settings.dependency_maps), *rule_files(settings.rules)]
    files = _hashes([*([settings_file] if settings_file else []), *data_files])
    digest = _digest(settings, [files[str(f)] for f in data_files if str(f) in files])
    return Config(settings, graph, rules, tuple(p for p in problems if p.warning), digest,
                  MappingProxyType(files))


def find_settings_file(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """The settings file to use: the given one, $FIREHOUSE_CONFIG, or ./firehouse.yml if present."""
    if path is not None:
        return path
    if env.get("FIREHOUSE_CONFIG"):
        return Path(env["FIREHOUSE_CONFIG"])
    default = Path(DEFAULT_SETTINGS_FILE)
    return default if default.exists() else None


def load_store_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings alone, for a command that only works on the store (`firehouse migrate`):
    validated as for a start, but without the maps and rules, which it does not read, and
    without requiring routing keys, since it sends no page. Raises `ConfigError`."""
    problems: list[Problem] = []
    settings = load_settings(path, os.environ if env is None else env, problems,
                             routing_keys=False)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(errors)
    return settings


def load_settings(path: Path | None, env: Mapping[str, str], problems: list[Problem], *,
                  routing_keys: bool = True) -> Settings:
    """Read settings from file and environment; appends problems rather than raising.
    `routing_keys=False`: a target without a key is no problem even with dry_run false
    (for commands that send nothing)."""
    file = find_settings_file(path, env)
    raw: LocatedDict = LocatedDict()
    raw.line, raw.key_lines = 0, {}
    name = "(environment)"
    base = Path.cwd()
    if file is not None:
        name = str(file)
        base = file.resolve().parent
        docs, found = load_file(file)
        problems.extend(found)
        if docs and isinstance(docs[0], LocatedDict):
            raw = docs[0]
        elif docs and docs[0] is not None:
            problems.append(Problem(name, 1, "", "settings must be a YAML mapping"))
    reader = _Reader(raw, name, problems, routing_keys=routing_keys)
    for var, key in ENV_VARS.items():
        if env.get(var):
            reader.override(key, env[var], f"${var}")
    return reader.settings(base, env)


class _Reader:
    """Turns the located settings mapping into `Settings`, collecting problems."""

    _KEYS = frozenset({
        "listen", "state", "rules", "dependency_maps", "pagerduty", "service_labels",
        "severity_labels", "roles", "targets", "tier_severity", "dry_run", "auth",
        "max_body_bytes", "resolved_retention_hours", "log_level", "backstage_owners",
        "map_defaults", "incidents", "alertmanager", "changes", "web", "database",
    })

    def __init__(self, raw: LocatedDict, file: str, problems: list[Problem], *,
                 routing_keys: bool = True) -> None:
        self.raw = raw
        self.file = file
        self.problems = problems
        self.routing_keys = routing_keys  # whether dry_run false requires every key
        self.env_sources: dict[str, str] = {}
        self.only("", raw, self._KEYS)

    def only(self, parent: str, raw: Mapping[Any, Any], known: Iterable[str]) -> None:
        """Report every key of `raw`, the mapping at `parent`, that is not a `known` one."""
        allowed = tuple(known)
        for key in raw:
            if key not in allowed:
                self.bad(f"{parent}.{key}" if parent else key,
                         f"unknown setting{did_you_mean(str(key), allowed)}", key)

    def override(self, dotted: str, value: str, source: str) -> None:
        """Apply an environment variable on top of the file."""
        self.env_sources[dotted] = source
        node = self.raw
        *parents, last = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, LocatedDict):
                child = LocatedDict()
                child.line, child.key_lines = 0, {}
                node[part] = child
            node = child
        node[last] = value

    def bad(self, key: str, message: str, value: Any = "") -> None:
        """Record a problem at the settings key `key` (dotted)."""
        source = self.env_sources.get(key)
        node: Any = self.raw
        line = 0
        for part in key.split("."):
            if isinstance(node, LocatedDict):
                line = node.line_of(part) or line
                node = node.get(part)
        self.problems.append(Problem(source or self.file, 0 if source else line, key, message,
                                     shown(value) if value != "" else ""))

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def settings(self, base: Path, env: Mapping[str, str]) -> Settings:
        defaults = Settings()
        host, port = self._listen(defaults)
        targets = self._targets(base, env)
        dry_run = self._dry_run(targets)
        pd = self.get("pagerduty") or {}
        if not isinstance(pd, dict):
            self.bad("pagerduty", "must be a mapping", pd)
            pd = {}
        self.only("pagerduty", pd, ("url", "timeout_seconds", "overdue_after_seconds",
                                    "delivered_retention_hours", "webhook_secret",
                                    "webhook_secret_file", "rate_limit_per_minute"))
        url = self._string("pagerduty.url", DEFAULT_PAGERDUTY_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            self.bad("pagerduty.url", "must be an http:// or https:// URL", url)
        level = self._string("log_level", "info").lower()
        if level not in ("debug", "info", "warning", "error"):
            self.bad("log_level", "must be debug, info, warning or error", level)
        timeout = self._number("pagerduty.timeout_seconds", 10.0, 0.1, 60.0)
        return Settings(
            listen_host=host,
            listen_port=port,
            state=self._path(base, "state", defaults.state),
            **self._database(base, timeout),
            rules=self._paths(base, "rules", defaults.rules),
            dependency_maps=self._paths(base, "dependency_maps", defaults.dependency_maps),
            pagerduty_url=url,
            pagerduty_timeout=timeout,
            pagerduty_rate_limit=self._rate_limit(),
            overdue_after=self._number("pagerduty.overdue_after_seconds", 300.0, 1.0, 86400.0),
            delivered_retention_hours=self._number("pagerduty.delivered_retention_hours",
                                                   168.0, 1.0, 24 * 365),
            pagerduty_webhook_secrets=self._webhook_secrets(base),
            changes_window_hours=self._changes(),
            service_labels=self._labels("service_labels", defaults.service_labels),
            severity_labels=self._labels("severity_labels", defaults.severity_labels),
            roles=MappingProxyType(self._roles(targets)),
            targets=MappingProxyType(targets),
            tier_severity=MappingProxyType(self._tier_severity()),
            dry_run=dry_run,
            bearer_token=self._secret(base, "auth.bearer_token", "auth.bearer_token_file"),
            basic_auth=self._basic_auth(base),
            web_open=self._web(),
            protect_metrics=self._flag("auth.protect_metrics",
                                       (self.get("auth") or {}).get("protect_metrics", False)
                                       if isinstance(self.get("auth"), dict) else False),
            max_body_bytes=int(self._number("max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1024,
                                            1 << 30)),
            resolved_retention_hours=self._number("resolved_retention_hours", 24.0, 0.0, 24 * 365),
            flap_damping=self._incidents(),
            **self._alertmanager(base),
            log_level=level,
            map_options=MapOptions(MappingProxyType(self._backstage_owners(targets)),
                                   self._map_defaults(targets)),
            source=self.file,
        )

    def _incidents(self) -> float:
        """The `incidents` mapping: flap damping, in seconds."""
        raw = self.get("incidents") or {}
        if not isinstance(raw, dict):
            self.bad("incidents", "must be a mapping", raw)
            return 300.0
        self.only("incidents", raw, ("flap_damping_seconds",))
        return self._number("incidents.flap_damping_seconds", 300.0, 0.0, 86400.0)

    def _rate_limit(self) -> int:
        """pagerduty.rate_limit_per_minute: events a minute per routing key, 0 for no limit."""
        key, default = "pagerduty.rate_limit_per_minute", Settings().pagerduty_rate_limit
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
            self.bad(key, "must be a whole number of events from 0 (no limit) to 100000", value)
            return default
        return value

    def _database(self, base: Path, pagerduty_timeout: float) -> dict[str, Any]:
        """The `database` mapping: a PostgreSQL URL (or a file holding it) shared by several
        replicas, and the lease of an outbox claim; none keeps the SQLite file `state`."""
        raw = self.get("database") or {}
        if not isinstance(raw, dict):
            self.bad("database", "must be a mapping", raw)
            return {}
        self.only("database", raw, ("url", "url_file", "lease_seconds"))
        url = self._secret(base, "database.url", "database.url_file").strip()
        if url and not url.startswith(DATABASE_SCHEMES):
            # Not shown: the URL may hold a password.
            self.bad("database.url", "must be a postgresql:// URL (leave it out to keep the "
                     "SQLite file `state`)")
            url = ""
        elif url:
            try:
                urlsplit(url).port  # noqa: B018 - raises on a port that is not one
            except ValueError:
                self.bad("database.url", "has a port that is not a number from 0 to 65535")
                url = ""
        lease = self._number("database.lease_seconds", 30.0, 5.0, 3600.0)
        # Only on a shared store: a claim running out while its request still waits for
        # PagerDuty lets another replica send the same event again. A SQLite file has one
        # process and no leases, and the setting is unused. (`check`, a start and a reload
        # all come through here, so they agree.)
        if url and lease <= pagerduty_timeout:
            self.bad("database.lease_seconds", f"must be longer than pagerduty.timeout_seconds "
                     f"({pagerduty_timeout:g}) with database.url set: an event still being "
                     f"sent when its lease runs out is sent again by another replica",
                     self.get("database.lease_seconds", lease))
        return {"database_url": url, "database_lease": lease}

    def _web(self) -> bool:
        """The `web` mapping: whether the command-center pages are open without credentials."""
        raw = self.get("web") or {}
        if not isinstance(raw, dict):
            self.bad("web", "must be a mapping", raw)
            return False
        self.only("web", raw, ("open",))
        return self._flag("web.open", raw.get("open", False))

    def _flag(self, key: str, value: Any) -> bool:
        text = str(value).lower()
        if text in ("true", "1", "yes"):
            return True
        if text not in ("false", "0", "no"):
            self.bad(key, "must be true or false", value)
        return False

    def _string(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            self.bad(key, "must be a non-empty string", value)
            return default
        return value

    def _number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.bad(key, "must be a number", value)
            return default
        if isinstance(value, bool) or not low <= number <= high:
            self.bad(key, f"must be a number from {_number_text(low)} to {_number_text(high)}",
                     value)
            return default
        return number

    def _changes(self) -> float:
        """The `changes` mapping: how recent a change must be to be a rollback candidate."""
        raw = self.get("changes") or {}
        if not isinstance(raw, dict):
            self.bad("changes", "must be a mapping", raw)
            return 24.0
        self.only("changes", raw, ("window_hours",))
        return self._number("changes.window_hours", 24.0, 0.1, 720.0)

    def _listen(self, defaults: Settings) -> tuple[str, int]:
        value = self.get("listen", f"{defaults.listen_host}:{defaults.listen_port}")
        host, sep, port = str(value).rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            self.bad("listen", "must be HOST:PORT", value)
            return defaults.listen_host, defaults.listen_port
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an explicit ':PORT'

    def _path(self, base: Path, key: str, default: Path) -> Path:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.bad(key, "must be a path", value)
            return default
        return self._resolve(base, key, value)

    def _resolve(self, base: Path, key: str, value: str) -> Path:
        path = Path(value).expanduser()
        # Paths in the settings file are relative to it; paths from the environment to cwd.
        if key in self.env_sources or path.is_absolute():
            return path
        return base / path

    def _paths(self, base: Path, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            items = [v for v in value.split(os.pathsep) if v]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            self.bad(key, "must be a path or a list of paths", value)
            return default
        if not items:
            self.bad(key, "must name at least one path", value)
            return default
        return tuple(self._resolve(base, key, v) for v in items)

    def _labels(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value
        ):
            self.bad(key, "must be a non-empty list of label names", value)
            return default
        return tuple(value)

    def _targets(self, base: Path, env: Mapping[str, str]) -> dict[str, Target]:
        raw = self.get("targets", {})
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.bad("targets", "must be a mapping of target name to its routing key source", raw)
            return {}
        targets: dict[str, Target] = {}
        for name, spec in raw.items():
            key = f"targets.{name}"
            if not _TARGET_NAME.match(str(name)):
                self.bad(key, "invalid target name: letters, digits, . _ -, at most 64", name)
                continue
            if spec is not None and not isinstance(spec, dict):
                # Not shown: a string here is most likely the routing key pasted in. The
                # target stays defined, so that maps and rules naming it add no noise.
                self.bad(key, "must be a mapping with routing_key_env or routing_key_file")
            options: dict[str, Any] = spec if isinstance(spec, dict) else {}
            self.only(key, options, ("routing_key_env", "routing_key_file"))
            default_env = "FIREHOUSE_ROUTING_KEY_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
            env_name = options.get("routing_key_env", default_env)
            if not isinstance(env_name, str) or not _ENV_NAME.match(env_name):
                # Not shown either: a value that is no variable name may be the key itself.
                self.bad(f"{key}.routing_key_env", "must be the name of an environment "
                         "variable (letters, digits, _), not the routing key itself")
                env_name = default_env  # keeps the target defined: no cascade of errors
            file_name = options.get("routing_key_file")
            # A key from the environment is judged exactly as given: PagerDuty would be sent
            # a stray space too, and refuse every event.
            routing_key, source = env.get(env_name, ""), f"${env_name}"
            if file_name:
                path = self._resolve(base, f"{key}.routing_key_file", str(file_name))
                source = str(path)
                routing_key = self._read_secret(path, f"{key}.routing_key_file")
            fault = routing_key_fault(routing_key) if routing_key else None
            if fault is not None:
                # Reported against where the key came from; the key itself is never shown.
                self.problems.append(Problem(source, 0, key, f"routing key {fault}"))
            targets[name] = Target(name, routing_key, source)
        return targets

    def _dry_run(self, targets: dict[str, Target]) -> bool:
        value = self.get("dry_run", "auto")
        text = str(value).lower()
        with_keys = [t for t in targets.values() if t.routing_key]
        if text == "auto":
            dry = not with_keys
        elif text in ("true", "1", "yes"):
            dry = True
        elif text in ("false", "0", "no"):
            dry = False
        else:
            self.bad("dry_run", "must be auto, true or false", value)
            return True
        if not dry and self.routing_keys:
            # A key file that is unreadable or empty has been reported already.
            reported = {p.path for p in self.problems}
            for target in targets.values():
                if not target.routing_key and (
                    f"targets.{target.name}.routing_key_file" not in reported
                ):
                    self.bad(f"targets.{target.name}", "has no routing key (set "
                             f"{target.key_source}); a page to it would be lost")
        return dry

    def _roles(self, targets: dict[str, Target]) -> dict[str, str]:
        raw = self.get("roles", {}) or {}
        if not isinstance(raw, dict):
            self.bad("roles", "must map roles to target names", raw)
            return {}
        roles: dict[str, str] = {}
        for role, target in raw.items():
            if role not in _DIRECT_ROLES:
                self.bad(f"roles.{role}", "unknown role (the map gives technical and service "
                         f"leads; here: {', '.join(_DIRECT_ROLES)})", role)
            elif not isinstance(target, str) or target not in targets:
                self.bad(f"roles.{role}", "names a target that is not defined in targets", target)
            else:
                roles[role] = target
        if "incident_lead" not in roles and "roles.incident_lead" not in {
            p.path for p in self.problems
        }:
            self.bad("roles.incident_lead", "missing: the command center's target is required, "
                     "unmapped alerts page it")
        return roles

    def _backstage_owners(self, targets: dict[str, Target]) -> dict[str, Mapping[str, str]]:
        raw = self.get("backstage_owners", {}) or {}
        if not isinstance(raw, dict):
            self.bad("backstage_owners", "must map Backstage owners to {technical_lead: TARGET, "
                     "service_lead: TARGET}", raw)
            return {}
        result: dict[str, Mapping[str, str]] = {}
        for owner, roles in raw.items():
            key = f"backstage_owners.{owner}"
            normal = owner_key(str(owner))
            if normal is None:
                self.bad(key, "must be an owner ref such as team-a, group:default/team-a or "
                         "user:guest", owner)
            elif normal in result:
                self.bad(key, f"names the owner {normal!r} a second time", owner)
            elif not isinstance(roles, dict):
                self.bad(key, "must map technical_lead and service_lead to targets", roles)
            else:
                result[normal] = MappingProxyType(self._leads(key, roles, targets))
        return result

    def _map_defaults(self, targets: dict[str, Target]) -> MapDefaults:
        raw = self.get("map_defaults", {}) or {}
        defaults = MapDefaults()
        if not isinstance(raw, dict):
            self.bad("map_defaults", "must be a mapping of tier, component, technical_lead and "
                     "service_lead", raw)
            return defaults
        tier, component = raw.get("tier", defaults.tier), raw.get("component", defaults.component)
        self.only("map_defaults", raw, ("tier", "component", *OWNER_ROLES))
        if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 4:
            self.bad("map_defaults.tier", "must be an integer from 1 (most critical) to 4", tier)
            tier = defaults.tier
        if not isinstance(component, str) or not component:
            self.bad("map_defaults.component", "must be a non-empty string", component)
            component = defaults.component
        roles = {k: v for k, v in raw.items() if k in OWNER_ROLES}
        leads = self._leads("map_defaults", roles, targets)
        return MapDefaults(tier, component, MappingProxyType(leads))

    def _leads(self, key: str, raw: dict[str, Any], targets: dict[str, Target]) -> dict[str, str]:
        """Role -> target of a settings mapping (a backstage_owners entry, map_defaults)."""
        leads: dict[str, str] = {}
        for role, target in raw.items():
            if role not in OWNER_ROLES:
                self.bad(f"{key}.{role}", f"unknown role (expected one of "
                         f"{', '.join(OWNER_ROLES)})", role)
            elif not isinstance(target, str) or not target:
                self.bad(f"{key}.{role}", "must be a target name", target)
            else:
                if target not in targets:
                    self.bad(f"{key}.{role}", "names a target that is not defined in targets",
                             target)
                # Kept even when undefined: reported once here, not again for every service.
                leads[role] = target
        return leads

    def _tier_severity(self) -> dict[int, str]:
        raw = self.get("tier_severity")
        if raw is None:
            return dict(DEFAULT_TIER_SEVERITY)
        result = dict(DEFAULT_TIER_SEVERITY)
        if not isinstance(raw, dict):
            self.bad("tier_severity", "must map tiers 1-4 to severities", raw)
            return result
        for tier, severity in raw.items():
            if str(tier) not in ("1", "2", "3", "4") or severity not in SEVERITIES:
                self.bad(f"tier_severity.{tier}", f"must map a tier 1-4 to one of "
                         f"{', '.join(SEVERITIES)}", severity)
            else:
                result[int(tier)] = severity
        return result

    def _secret(self, base: Path, key: str, file_key: str) -> str:
        value = self.get(key)
        file_value = self.get(file_key)
        if file_value:
            # Alertmanager trims whitespace around the credentials it reads from a file: the
            # same file must give the same secret here.
            return self._read_secret(self._resolve(base, file_key, str(file_value)),
                                     file_key).strip()
        if value is not None and not isinstance(value, str):
            self.bad(key, "must be a string", "(hidden)")
            return ""
        return value or ""

    def _webhook_secrets(self, base: Path) -> tuple[str, ...]:
        """The PagerDuty webhook subscription's secrets, all accepted so that one can be
        rotated: `webhook_secret` (one or a list; comma-separated in the environment) and
        every non-blank line of each `webhook_secret_file`."""
        key, file_key = "pagerduty.webhook_secret", "pagerduty.webhook_secret_file"
        secrets: list[str] = []
        value = self.get(key)
        if isinstance(value, str):
            value = value.split(",") if key in self.env_sources else [value]
        if value is None:
            pass
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            # Never shown: whatever is there is most likely a secret.
            self.bad(key, "must be a secret or a list of secrets")
        elif not value or not all(v.strip() for v in value):
            self.bad(key, "must be one or more non-empty secrets")
        else:
            # PagerDuty's secrets hold no whitespace: around one, it is a copy-paste slip.
            secrets.extend(v.strip() for v in value)
        files = self.get(file_key)
        if isinstance(files, str):
            files = files.split(os.pathsep) if file_key in self.env_sources else [files]
        if files is None:
            pass
        elif not isinstance(files, list) or not files or not all(
            isinstance(f, str) and f for f in files
        ):
            self.bad(file_key, "must be a path or a list of paths", files)
        else:
            for name in files:
                text = self._read_secret(self._resolve(base, file_key, name), file_key)
                secrets.extend(line.strip() for line in text.splitlines() if line.strip())
        return tuple(dict.fromkeys(secrets))

    def _read_secret(self, path: Path, key: str) -> str:
        """A secret file's content without its final line break; "" and a problem when it
        cannot be read or is empty (an empty token file must not turn authentication off)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            self.bad(key, f"cannot read: {exc.strerror or exc}", str(path))
            return ""
        except UnicodeDecodeError:
            # The decoder's own message quotes a byte of the secret: say less.
            self.bad(key, "cannot read: not UTF-8 text", str(path))
            return ""
        # Editors and `echo` end a file with a line break; it is no part of the secret.
        text = text.rstrip("\r\n")
        if not text.strip():
            self.bad(key, "is empty", str(path))
            return ""
        return text

    def _basic_auth(self, base: Path) -> tuple[str, str] | None:
        auth = self.get("auth", {}) or {}
        if not isinstance(auth, dict):
            self.bad("auth", "must be a mapping", auth)
            return None
        self.only("auth", auth, ("bearer_token", "bearer_token_file", "basic_auth",
                                 "protect_metrics"))
        return self._credentials(base, "auth.basic_auth")

    def _credentials(self, base: Path, key: str) -> tuple[str, str] | None:
        """The `{username, password | password_file}` mapping at `key`, if any."""
        basic = self.get(key)
        if basic is None:
            return None
        if not isinstance(basic, dict) or not isinstance(basic.get("username"), str):
            self.bad(key, "must have username and password or password_file")
            return None
        password = self._secret(base, f"{key}.password", f"{key}.password_file")
        if not password:
            # An unreadable or empty password_file has been reported already.
            if not basic.get("password_file"):
                self.bad(key, "has no password (password or password_file)")
            return None
        return basic["username"], password

    def _alertmanager(self, base: Path) -> dict[str, Any]:
        """The `alertmanager` mapping, as keyword arguments of `Settings`."""
        raw = self.get("alertmanager") or {}
        if not isinstance(raw, dict):
            self.bad("alertmanager", "must be a mapping", raw)
            raw = {}
        self.only("alertmanager", raw, _ALERTMANAGER_KEYS)
        bearer = self._secret(base, "alertmanager.bearer_token", "alertmanager.bearer_token_file")
        basic = self._credentials(base, "alertmanager.basic_auth")
        if bearer and basic:
            # As in Alertmanager's own http_config: which one was meant is anybody's guess.
            self.bad("alertmanager.basic_auth", "only one of bearer_token(_file) and basic_auth "
                     "may be set")
        return {
            "alertmanager_urls": self._urls("alertmanager.url"),
            "stale_after": self._duration("alertmanager.stale_after", DEFAULT_STALE_AFTER,
                                          1.0, 28 * 86400.0),
            "stale_check_interval": self._duration("alertmanager.check_interval", 60.0,
                                                   0.1, 86400.0),
            "alertmanager_restart_grace": self._duration(
                "alertmanager.restart_grace", DEFAULT_RESTART_GRACE, 0.0, 86400.0),
            "alertmanager_timeout": self._number("alertmanager.timeout_seconds", 10.0, 0.1, 60.0),
            "alertmanager_bearer_token": bearer,
            "alertmanager_basic_auth": basic,
        }

    def _urls(self, key: str) -> tuple[str, ...]:
        """One URL, several (a list, or comma-separated as the environment gives them), or
        none; each http(s), without a trailing slash and without credentials."""
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [v.strip() for v in value]
        else:
            self.bad(key, "must be a URL or a list of URLs", value)
            return ()
        urls: list[str] = []
        for item in items:
            url = item.rstrip("/")
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                self.bad(key, "must be an http:// or https:// URL", item)
            elif parsed.username is not None or parsed.password is not None:
                # Not shown: the URL carries a password. It would be logged and hashed too.
                self.bad(key, "must not carry credentials: use alertmanager.basic_auth")
            elif url in urls:
                self.bad(key, "names the same Alertmanager twice", item)
            else:
                urls.append(url)
        return tuple(urls)

    def _duration(self, key: str, default: float, low: float, high: float) -> float:
        """Seconds, from a Prometheus-style duration (`4h15m`) or a number of seconds."""
        value = self.get(key)
        if value is None:
            return default
        seconds: float | None = None
        if isinstance(value, str):
            try:
                seconds = parse_duration(value).total_seconds()
            except ValueError:
                with contextlib.suppress(ValueError):
                    seconds = float(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        if seconds is None or not low <= seconds <= high:
            self.bad(key, f"must be a duration such as 30s, 15m or 4h15m, or a number of "
                     f"seconds, from {low:g}s to {format_duration(timedelta(seconds=high))}",
                     value)
            return default
        return seconds


def _number_text(number: float) -> str:
    """A range bound as written: whole numbers in full (1073741824, not 1.07374e+09)."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _hashes(files: list[Path]) -> dict[str, str]:
    """Each readable file's name -> the SHA-256 of its content."""
    hashes: dict[str, str] = {}
    for file in files:
        try:
            hashes[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError:
            continue
    return hashes


def _digest(settings: Settings, file_hashes: list[str]) -> str:
    """A short hash of the active configuration (the settings as parsed, the maps and rules
    as written), for the reload metric and the API."""
    sha = hashlib.sha256(repr(settings).encode())
    for file_hash in file_hashes:
        sha.update(file_hash.encode())
    return sha.hexdigest()[:16]

