"""Command line: `firehouse run | check | explain | impact | test`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from daemon import __version__
from daemon.alerts import MALFORMED_LABEL, parse_body, parse_time
from daemon.config import (
    DEFAULT_SETTINGS_FILE,
    Config,
    Settings,
    dry_run_state_warning,
    find_settings_file,
    load_config,
    load_store_settings,
    mask,
)
from daemon.decide import Decision, State, decide
from daemon.errors import ConfigError, PayloadError, Problem, StoreError
from daemon.maps import case_twin
from daemon.render import impact_dot, impact_json, impact_text, or_none
from daemon.rules import Outcome, Verdict
from daemon.ruletest import format_report, load_tests, run_test

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Open incidents a warning names (then "…"), as the daemon's warnings do.
_INCIDENTS_SHOWN = 5
_Loaded = TypeVar("_Loaded")


def logfmt_value(text: str) -> str:
    """`text` as a logfmt value: bare when it can be, else quoted and escaped, on one line."""
    if text and all(c.isprintable() and c not in ' ="' for c in text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def _escape(char: str) -> str:
    """One character inside a quoted logfmt value."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    # Control characters and Unicode line separators would break the line or hide in it.
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class LogfmtFormatter(logging.Formatter):
    """One logfmt line per record (ts, level, logger, msg), like Alertmanager's logs.

    A message of several lines (a failed reload lists every problem) and a traceback keep
    to the record's one line, their line breaks escaped as `\\n`.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as `ts=… level=… logger=… msg=…`, plus `exc=…` for an exception."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        ts = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        fields = [("ts", ts), ("level", record.levelname), ("logger", record.name),
                  ("msg", record.getMessage())]
        # Structured fields passed as `extra={"fields": {...}}` become keys of their own.
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.extend((str(key), str(value)) for key, value in extra.items())
        if record.exc_info:
            fields.append(("exc", self.formatException(record.exc_info)))
        if record.stack_info:
            fields.append(("stack", self.formatStack(record.stack_info)))
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _load_store_settings(args: argparse.Namespace) -> Settings:
    return load_store_settings(Path(args.config) if args.config else None)


def _no_settings_file(args: argparse.Namespace) -> str:
    """Why the settings are only the environment's, and how to give a file; "" when a file
    was given or found. Said before the problems, which otherwise look like a broken file."""
    if find_settings_file(Path(args.config) if args.config else None, os.environ) is not None:
        return ""
    return (f"firehouse: no settings file: no --config, no $FIREHOUSE_CONFIG and no "
            f"./{DEFAULT_SETTINGS_FILE} in {Path.cwd()}, so only the environment and the "
            f"built-in defaults apply; give one with --config FILE or FIREHOUSE_CONFIG=FILE")


def _load_or_report(args: argparse.Namespace,
                    load: Callable[[argparse.Namespace], _Loaded]) -> _Loaded | None:
    """The configuration (or what `load` reads), or None after printing every problem to
    stderr."""
    try:
        return load(args)
    except ConfigError as exc:
        if note := _no_settings_file(args):
            print(note, file=sys.stderr)
        print(f"firehouse: configuration is invalid:\n{exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    from daemon.app import serve  # noqa: PLC0415 - keeps `check` light

    config = _load_or_report(args, _load)
    if config is None:
        return 2
    _setup_logging(config.settings.log_level)
    for warning in config.warnings:
        logging.getLogger("firehouse").warning("%s", warning)
    try:
        asyncio.run(serve(config, Path(args.config) if args.config else None))
    except StoreError as exc:
        print(f"firehouse: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"firehouse: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate settings, maps and rules together; exit 0 only when all is well."""
    try:
        config = _load(args)
    except ConfigError as exc:
        if note := _no_settings_file(args):
            print(note)
        print(f"FAILED: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return 1
    settings = config.settings
    print(f"SUCCESS: settings {settings.source}")
    if settings.database_url:
        from daemon.store.postgres import describe_dsn  # noqa: PLC0415 - only when used

        print(f"  state: PostgreSQL {describe_dsn(settings.database_url)}, shared by "
              f"replicas (outbox lease {settings.database_lease:g}s)")
    else:
        print(f"  state: SQLite {settings.state}")
    print(f"  {len(config.graph.services)} services from "
          f"{', '.join(str(p) for p in settings.dependency_maps)}")
    print(f"  {len(config.rules)} rules from {', '.join(str(p) for p in settings.rules)}")
    keys = sum(1 for t in settings.targets.values() if t.routing_key)
    print(f"  {len(settings.targets)} targets, {keys} with a routing key"
          + (" (dry-run: events are logged, not sent)" if settings.dry_run else ""))
    auth = settings.webhook_auth
    print(f"  webhook authentication: {auth}"
          + (" (anyone who can reach the port can post alerts)" if auth == "off" else ""))
    secrets = len(settings.pagerduty_webhook_secrets)
    print(f"  PagerDuty webhook: {secrets} secret(s)" if secrets else "  PagerDuty webhook: off "
          "(no pagerduty.webhook_secret: POST /webhook/pagerduty answers 403)")
    for warning in config.warnings:
        print(f"  {warning}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Show what Firehouse would decide for a payload, sending and storing nothing."""
    now = datetime.now(UTC)
    if args.at:
        at = _parse_at(args.at)
        if at is None:
            print(f"firehouse: --at: not an RFC 3339 time with a zone, such as "
                  f"2026-01-31T09:00:00Z: {args.at!r}", file=sys.stderr)
            return 2
        now = at
    config = _load_or_report(args, _load)
    if config is None:
        return 2
    try:
        raw = sys.stdin.buffer.read() if args.payload == "-" else Path(args.payload).read_bytes()
    except OSError as exc:
        print(f"firehouse: cannot read payload {args.payload}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    try:
        webhook = parse_body(raw)
    except PayloadError as exc:
        print(f"firehouse: payload rejected: {exc}", file=sys.stderr)
        return 1
    decision = decide(webhook, config, State(), now)
    rejected = [r.reason for r in webhook.rejected]
    meant = _meant(decision, config)
    if args.format == "json":
        print(json.dumps(_decision_json(decision, rejected, meant), indent=2,
                         ensure_ascii=False))
    else:
        _print_decision(decision, rejected, meant)
    return 0


def _meant(decision: Decision, config: Config) -> dict[str, str]:
    """For each unmapped service label that names a map service or alias but for case (or
    spaces around it), that name: alerts are placed by exact names, so such an alert is
    unmapped, and the likely cause is worth saying."""
    meant: dict[str, str] = {}
    for e in decision.explanations:
        if not e.mapped and e.service and e.service not in meant:
            twin = case_twin(config.graph, e.service)
            if twin is not None:
                meant[e.service] = twin
    return meant


def _parse_at(text: str) -> datetime | None:
    """The `--at` time in UTC, read as Alertmanager's timestamps are; None when it is not one."""
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        return None


def _decision_json(decision: Decision, rejected: list[str], meant: dict[str, str]
                   ) -> dict[str, Any]:
    """The decision as JSON, with `rejected`: why each malformed alert is one, as the
    webhook's answer says (each is in `alerts` too, decided on as far as it was read); an
    unmapped alert whose service differs from a map name only in case has `did_you_mean`."""
    return {
        "rejected": rejected,
        "alerts": [
            {
                "fingerprint": e.fingerprint, "alertname": e.alertname, "status": e.status,
                "service": e.service, "mapped": e.mapped,
                "did_you_mean": meant.get(e.service or ""), "action": e.action,
                "severity": e.severity,
                "rules": _rules_json(e.outcome) if e.outcome else [],
                "deadlines": e.deadlines.to_json() if e.deadlines else None,
            }
            for e in decision.explanations
        ],
        "events": [
            {"target": ev.target, "routing_key": mask(ev.routing_key), "action": ev.action,
             "dedup_key": ev.dedup_key, "body": dict(ev.body)}
            for ev in decision.events
        ],
    }


def _rules_json(outcome: Outcome) -> list[dict[str, Any]]:
    """Each rule checked, with every failed condition; then the rules never reached."""
    checked: list[dict[str, Any]] = [
        {"rule": v.rule.name, "matched": v.matched, "reason": v.reason, "reached": True,
         "conditions": v.rule.conditions, "failed": list(v.failures),
         "closest_miss": v.closest_miss}
        for v in outcome.verdicts
    ]
    return checked + [
        {"rule": rule.name, "matched": False, "reason": _unreached_reason(outcome),
         "reached": False, "conditions": rule.conditions, "failed": [], "closest_miss": False}
        for rule in outcome.unreached
    ]


def _unreached_reason(outcome: Outcome) -> str:
    """Why the rules after the walk stopped were not checked."""
    return f"not reached: {outcome.matched[-1].name!r} matched without 'continue: true'"


def _verdict_line(verdict: Verdict) -> str:
    """One rule's verdict, a miss saying how many of its conditions failed."""
    if verdict.matched:
        return f"  rule MATCH {verdict.rule.name!r}: {verdict.reason}"
    total = verdict.rule.conditions
    conditions = f"{total} condition{'' if total == 1 else 's'}"
    count = f"{len(verdict.failures)} of {conditions} failed"
    # Marked so that the rule that almost paged stands out in a long list.
    mark = f"closest miss: {count}" if verdict.closest_miss else count
    return f"  rule miss  {verdict.rule.name!r}: {verdict.reason}  [{mark}]"


def _print_decision(decision: Decision, rejected: list[str], meant: dict[str, str]) -> None:
    for reason in rejected:
        # Never skipped: decided on below, like any alert, as far as it could be read.
        print(f"malformed alert, paged as far as it could be read (flagged "
              f"{MALFORMED_LABEL}): {reason}")
    for e in decision.explanations:
        mapped = "mapped" if e.mapped else "UNMAPPED"
        if e.service in meant:
            mapped += f"; did you mean {meant[e.service]!r}? map names are case-sensitive"
        print(f"alert {e.alertname} [{e.status}] fingerprint={e.fingerprint}")
        print(f"  service: {e.service or '(none)'} ({mapped})")
        print(f"  action: {e.action}")
        if e.impact is not None:
            impact = e.impact
            print(f"  impact: {len(impact.impacted)} service(s) impacted, most critical tier "
                  f"{or_none(impact.most_critical_tier)}, business: "
                  f"{', '.join(impact.business_services) or 'none'}, implied severity "
                  f"{or_none(impact.severity)}")
            for item in impact.impacted[:5]:
                print(f"    {item.explain()}")
        if e.outcome is not None:
            for verdict in e.outcome.verdicts:
                print(_verdict_line(verdict))
            for rule in e.outcome.unreached:
                print(f"  rule skip  {rule.name!r}: {_unreached_reason(e.outcome)}")
            print(f"  severity: {e.severity}; roles: {', '.join(e.outcome.roles)}")
        if e.deadlines is not None and decision.now is not None:
            deadlines = e.deadlines.describe(decision.now)
            print(f"  deadlines: {deadlines or 'none (no matching rule sets a clock)'}")
    for ev in decision.events:
        payload = ev.body.get("payload", {})
        print(f"event {ev.action} -> {ev.target} (routing key {mask(ev.routing_key)}) "
              f"dedup_key={ev.dedup_key} severity={payload.get('severity', '-')}")


def cmd_impact(args: argparse.Namespace) -> int:
    """Print the blast radius of services failing together."""
    config = _load_or_report(args, _load)
    if config is None:
        return 2
    graph = config.graph
    names = []
    for name in args.services:
        service = graph.resolve(name)
        if service is None:
            hint = graph.closest(name)
            print(f"firehouse: unknown service {name!r}"
                  + (f"; did you mean {hint!r}?" if hint else ""), file=sys.stderr)
            return 1
        names.append(service.name)
    impact = graph.impact(names)
    if args.format == "json":
        print(json.dumps(impact_json(impact), indent=2))
    elif args.format == "dot":
        print(impact_dot(impact, graph))
    else:
        print(impact_text(impact))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Run rule unit tests; exit 0 when all pass, 1 on a failure, 2 on a bad file or config."""
    problems: list[Problem] = []
    config: Config | None = None
    try:
        # Tests send nothing: dry-run whatever the settings say, so CI needs no routing keys.
        config = load_config(Path(args.config) if args.config else None,
                             env={**os.environ, "FIREHOUSE_DRY_RUN": "true"})
    except ConfigError as exc:
        problems.extend(exc.problems)
    tests, found = load_tests([Path(f) for f in args.files], config)
    problems.extend(found)
    if config is None or problems:
        if config is None and (note := _no_settings_file(args)):
            print(note, file=sys.stderr)
        print(f"firehouse: cannot run the rule tests: {len(problems)} problem(s)",
              file=sys.stderr)
        for problem in sorted(problems):
            print(f"  {problem}", file=sys.stderr)
        return 2
    results = [run_test(test, config) for test in tests]
    print("\n".join(format_report(results)))
    return 0 if all(r.passed for r in results) else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the PostgreSQL schema up to date; with --from-sqlite, also copy a SQLite
    state file into it (open incidents, their pages, the outbox, timelines, changes)."""
    # The settings alone, without requiring routing keys: moving a state sends no page.
    settings = _load_or_report(args, _load_store_settings)
    if settings is None:
        return 2
    if not settings.database_url:
        print("firehouse: migrate needs a PostgreSQL database: set database.url in the "
              "settings or FIREHOUSE_DATABASE_URL (the SQLite file migrates itself on "
              "start)", file=sys.stderr)
        return 2
    source = Path(args.from_sqlite) if args.from_sqlite else None
    if source is not None and not source.is_file():
        print(f"firehouse: --from-sqlite {source}: no such file", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    try:
        applied, copied, dry_run = asyncio.run(_migrate(settings.database_url, source))
    except StoreError as exc:
        print(f"firehouse: {exc}", file=sys.stderr)
        return 1
    from daemon.store.postgres import describe_dsn  # noqa: PLC0415 - keeps `check` light

    where = describe_dsn(settings.database_url)
    print(f"{where}: " + (f"applied migration(s) {', '.join(map(str, applied))}"
                          if applied else "schema already up to date"))
    if copied is not None:
        print(f"copied from {source}: " + ", ".join(f"{n} {table}"
                                                   for table, n in copied.items()))
    if dry_run:
        # What a replica starting on it would say, said before any does: whether the
        # replicas will page for real is theirs to know (their keys), not this command's.
        logging.getLogger("firehouse").warning(
            "%s", dry_run_state_warning(dry_run, settings, _INCIDENTS_SHOWN))
    return 0


async def _migrate(dsn: str, source: Path | None
                   ) -> tuple[list[int], dict[str, int] | None, list[str]]:
    """The migrations applied; with `source`, the rows copied from it and the open
    incidents it held that were decided in dry-run."""
    from daemon.store.postgres import PostgresStore  # noqa: PLC0415 - keeps `check` light
    from daemon.store.sqlite import lock_state_file  # noqa: PLC0415
    from daemon.store.transfer import import_sqlite  # noqa: PLC0415

    if source is not None:
        # Refused before anything is written: a Firehouse still running on the file.
        try:
            os.close(await asyncio.to_thread(lock_state_file, source))
        except StoreError as exc:
            raise StoreError(f"{exc}: stop it before moving its state") from exc
    store = PostgresStore(dsn)
    try:
        # `open` applies what is missing too; `migrate` first says which.
        applied = await store.migrate()
        if source is None:
            return applied, None, []
        await store.open()
        copied = await import_sqlite(source, store)
        return applied, copied, await store.dry_run_incidents(_INCIDENTS_SHOWN + 1)
    finally:
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `firehouse` command."""
    parser = argparse.ArgumentParser(
        prog="firehouse",
        description="Page early, at the full potential severity, to the right people.")
    parser.add_argument("--version", action="version", version=f"firehouse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", help="settings file (default: $FIREHOUSE_CONFIG, "
                       "else ./firehouse.yml if present, else built-in defaults)")
        return p

    add("run", "run the daemon").set_defaults(func=cmd_run)
    add("check", "validate settings, dependency maps and rules").set_defaults(func=cmd_check)
    explain = add("explain", "dry-run the decision for an Alertmanager payload")
    explain.add_argument("payload", help="webhook JSON file, or - for standard input")
    explain.add_argument("--at", help="decide as of this RFC 3339 time (default: now)")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    explain.set_defaults(func=cmd_explain)
    impact = add("impact", "show the blast radius of services failing together")
    impact.add_argument("services", nargs="+", metavar="SERVICE")
    impact.add_argument("--format", choices=("text", "json", "dot"), default="text",
                        help="dot: a Graphviz picture (pipe into: dot -Tsvg)")
    impact.set_defaults(func=cmd_impact)
    test = add("test", "run rule unit tests: alerts in, expected pages out")
    test.add_argument("files", nargs="+", metavar="FILE",
                      help="test file, or a directory of them (*.yaml, *.yml)")
    test.set_defaults(func=cmd_test)
    migrate = add("migrate", "create or update the PostgreSQL schema (database.url); "
                  "optionally move a SQLite state file into it")
    migrate.add_argument("--from-sqlite", metavar="FILE",
                         help="copy this SQLite state file (Firehouse stopped) into the "
                              "database, which must hold no incidents yet")
    migrate.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `firehouse` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error.
        sys.stderr.close()
        return 0
    return result
