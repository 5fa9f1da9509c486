"""Rule unit tests: alerts in, expected pages out, checked against the pure engine.

`firehouse test FILE…` is to Firehouse rules what `promtool test rules` is to Prometheus
rules. A test file holds a `tests` list; each test feeds alerts, as Alertmanager would send
them, to `decide` from an empty state and compares the pages it would send with the
complete set expected (order-free); the incident clock (`tick`) runs at each step's time
first, as it would in production. A test is one step (`alerts` and `expect`), or a list
of `steps` run one after another on the state the previous ones left, so that a later step
can resolve what an earlier one opened. The format is in the README ("Rule tests").

Loading is as strict as the rest of Firehouse: unknown keys, bad values and names that the
configuration does not know are all reported together with file, line and key path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon.alerts import FIRING, RESOLVED, Webhook, parse_time, parse_webhook
from daemon.config import Config
from daemon.decide import RESOLVE, TRIGGER, Decision, State, apply, decide, tick, zulu
from daemon.errors import Problem, did_you_mean
from daemon.graph import OWNER_ROLES, SEVERITIES
from daemon.rules import (
    DEFAULT_RULE,
    ROLES,
    Clock,
    duration,
    format_duration,
    parse_clock,
    rule_files,
)
from daemon.yamlsrc import LocatedDict, LocatedList, load_file, shown

# A fixed time, so that a test decides the same way whenever it runs.
DEFAULT_AT = datetime(2026, 1, 1, tzinfo=UTC)
STEP_GAP = timedelta(minutes=1)
# The roles the settings map to one target each: a page for them needs no `target`.
IMPLYING_ROLES = tuple(r for r in ROLES if r not in OWNER_ROLES)

_TEST_KEYS = frozenset({"name", "at", "alerts", "expect", "steps"})
_STEP_KEYS = frozenset({"at", "alerts", "expect"})
_ALERT_KEYS = frozenset({"labels", "annotations", "status", "startsAt"})
_EXPECT_KEYS = frozenset({"pages", "resolves", "rules", "clock", "business_updates"})
_PAGE_KEYS = frozenset({"target", "roles", "severity"})
_KIND_WIDTH = len("unexpected resolve")


@dataclass(frozen=True, slots=True)
class Paged:
    """A page on one target, as expected by a test or as the engine decided it."""

    target: str
    roles: tuple[str, ...]
    severity: str

    def same(self, other: Paged) -> bool:
        """Whether both name the same target, roles (in any order) and severity."""
        return (self.target == other.target and set(self.roles) == set(other.roles)
                and self.severity == other.severity)

    def __str__(self) -> str:
        return f"{self.target} as {', '.join(self.roles)} at {self.severity}"


@dataclass(frozen=True, slots=True)
class Step:
    """One notification of a test and what it must page, resolve and match."""

    line: int
    at: datetime
    webhook: Webhook
    pages: tuple[Paged, ...]
    resolves: tuple[str, ...]
    rules: tuple[str, ...] | None
    # Compared only when given: the merged clock and business-update interval of every
    # incident the step opens.
    clock: Clock | None = None
    business_updates: timedelta | None = None


@dataclass(frozen=True, slots=True)
class RuleTest:
    """One named test of a test file."""

    name: str
    file: str
    line: int
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class StepReport:
    """How one step went: the differences from its expectations, and how each alert was
    handled (said only when the step failed)."""

    index: int
    step: Step
    differences: tuple[str, ...]
    handled: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleTestResult:
    """The outcome of one test, step by step."""

    test: RuleTest
    steps: tuple[StepReport, ...]

    @property
    def passed(self) -> bool:
        """Whether every step met its expectations."""
        return not any(s.differences for s in self.steps)


def load_tests(paths: Iterable[Path], config: Config | None
               ) -> tuple[list[RuleTest], list[Problem]]:
    """Load test files (directories: their *.yaml and *.yml); names of targets, roles and
    rules are checked against `config` when it loaded."""
    tests: list[RuleTest] = []
    problems: list[Problem] = []
    for path in paths:
        files = rule_files([path])
        if not files:
            problems.append(Problem(str(path), 0, "", "no *.yaml or *.yml test files"))
        for file in files:
            docs, found = load_file(file)
            problems.extend(found)
            reader = _Reader(str(file), config, problems)
            for doc in docs:
                tests.extend(reader.document(doc))
    return tests, problems


class _Reader:
    """Turns the documents of one located test file into `RuleTest`s, collecting problems."""

    def __init__(self, file: str, config: Config | None, problems: list[Problem]) -> None:
        self.file = file
        self.config = config
        self.problems = problems
        self.names: dict[str, str] = {}

    def bad(self, path: str, line: int, message: str, value: Any = "") -> None:
        """Record a problem at key `path`, showing the bad value unless it is ""."""
        self.problems.append(Problem(self.file, line, path, message,
                                     shown(value) if value != "" else ""))

    def keys(self, node: LocatedDict, path: str, allowed: frozenset[str]) -> None:
        """Report every key of `node` that is not `allowed`, with the allowed one it most
        looks like."""
        for key in node:
            if key not in allowed:
                self.bad(f"{path}.{key}" if path else key, node.line_of(key),
                         "unknown key" + did_you_mean(str(key), allowed), key)

    def document(self, doc: Any) -> list[RuleTest]:
        """The tests of one YAML document."""
        if doc is None:
            return []
        if not isinstance(doc, LocatedDict) or not isinstance(doc.get("tests"), LocatedList) \
                or not doc["tests"]:
            self.bad("tests", getattr(doc, "line", 0),
                     "a test file must be a mapping with a non-empty 'tests' list")
            return []
        self.keys(doc, "", frozenset({"tests"}))
        raw: LocatedList = doc["tests"]
        tests = []
        for index, body in enumerate(raw):
            test = self.test(f"tests[{index}]", body, raw.line_of(index))
            if test is not None:
                tests.append(test)
        return tests

    def test(self, path: str, body: Any, line: int) -> RuleTest | None:
        """One test, in the one-step form or with `steps`."""
        count = len(self.problems)
        if not isinstance(body, LocatedDict):
            self.bad(path, line, "must be a mapping with 'name', and 'alerts' and 'expect' "
                     "or 'steps'", body)
            return None
        self.keys(body, path, _TEST_KEYS)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            self.bad(f"{path}.name", body.line_of("name"), "missing or not a string",
                     name or "")
        elif name in self.names:
            self.bad(f"{path}.name", body.line_of("name"),
                     f"duplicate test name, first at {self.names[name]}", name)
        else:
            self.names[name] = f"{self.file}:{line}"
        steps: list[Step | None] = []
        raw = body.get("steps")
        if "steps" not in body:
            # The one-step form: the test is its own only step.
            steps.append(self.step(path, body, line, DEFAULT_AT))
        elif not isinstance(raw, LocatedList) or not raw:
            self.bad(f"{path}.steps", body.line_of("steps"),
                     "must be a non-empty list of {at, alerts, expect}", raw or "")
        else:
            steps.extend(self.steps(f"{path}.steps", raw))
        if "steps" in body:
            for key in ("at", "alerts", "expect"):
                if key in body:
                    self.bad(f"{path}.{key}", body.line_of(key),
                             "not allowed next to 'steps': give it in each step")
        if len(self.problems) != count or not isinstance(name, str):
            return None
        return RuleTest(name, self.file, line, tuple(s for s in steps if s is not None))

    def steps(self, path: str, raw: LocatedList) -> list[Step | None]:
        """The steps of a test, each by default a minute after the one before."""
        steps: list[Step | None] = []
        at = DEFAULT_AT
        for index, item in enumerate(raw):
            where = f"{path}[{index}]"
            if not isinstance(item, LocatedDict):
                self.bad(where, raw.line_of(index),
                         "must be a mapping with 'alerts' and 'expect'", item)
                continue
            self.keys(item, where, _STEP_KEYS)
            step = self.step(where, item, raw.line_of(index), at)
            steps.append(step)
            at = (step.at if step is not None else at) + STEP_GAP
        return steps

    def step(self, path: str, body: LocatedDict, line: int, default_at: datetime) -> Step | None:
        """One step: its time, its alerts as a webhook, and its expectations."""
        count = len(self.problems)
        at = default_at
        if "at" in body:
            at = self.time(body["at"], f"{path}.at", body.line_of("at")) or default_at
        raw = body.get("alerts")
        alerts = []
        if not isinstance(raw, LocatedList) or not raw:
            self.bad(f"{path}.alerts", body.line_of("alerts"), "must be a non-empty list of "
                     "alerts ({labels, annotations, status, startsAt})", raw or "")
        else:
            alerts = [self.alert(f"{path}.alerts[{i}]", item, raw.line_of(i))
                      for i, item in enumerate(raw)]
        pages, resolves, rules, clock, updates = self.expect(path, body)
        if len(self.problems) != count:
            return None
        webhook = parse_webhook({"version": "4", "receiver": "firehouse-test",
                                 "status": FIRING, "alerts": alerts})
        for rejected in webhook.rejected:
            # Cannot happen with the values checked above; said rather than dropping the
            # alert, which would let a test pass on nothing.
            self.bad(path, line, f"rejected by the webhook parser: {rejected.reason}")
        return Step(line, at, webhook, pages, resolves, rules, clock, updates)

    def alert(self, path: str, body: Any, line: int) -> dict[str, Any]:
        """One alert, as the JSON Alertmanager would send."""
        if not isinstance(body, LocatedDict):
            self.bad(path, line, "must be a mapping with 'labels'", body)
            return {}
        self.keys(body, path, _ALERT_KEYS)
        alert: dict[str, Any] = {
            "status": body.get("status", FIRING),
            "labels": self.labels(body, "labels", path, required=True),
            "annotations": self.labels(body, "annotations", path, required=False),
        }
        if alert["status"] not in (FIRING, RESOLVED):
            self.bad(f"{path}.status", body.line_of("status"), "must be firing or resolved",
                     alert["status"])
        if "startsAt" in body:
            starts = self.time(body["startsAt"], f"{path}.startsAt", body.line_of("startsAt"))
            alert["startsAt"] = starts.isoformat() if starts else None
        return alert

    def labels(self, body: LocatedDict, key: str, path: str, *, required: bool
               ) -> dict[str, str]:
        """A mapping of names to values; numbers are taken as their text, as in `match`."""
        node = body.get(key)
        if node is None and not required:
            return {}
        if not isinstance(node, LocatedDict) or (required and not node):
            self.bad(f"{path}.{key}", body.line_of(key), "must be a "
                     f"{'non-empty ' if required else ''}mapping of names to values", node or "")
            return {}
        values = {}
        for name, value in node.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                self.bad(f"{path}.{key}.{name}", node.line_of(name), "must be a string", value)
            else:
                values[name] = str(value)
        return values

    def time(self, value: Any, path: str, line: int) -> datetime | None:
        """An RFC 3339 time with a zone (YAML reads an unquoted one as a datetime)."""
        parsed = None
        if isinstance(value, datetime):
            parsed = value.astimezone(UTC) if value.tzinfo is not None else None
        elif isinstance(value, str):
            try:
                parsed = parse_time(value)
            except (ValueError, OverflowError):
                parsed = None
        if parsed is None:
            self.bad(path, line, "must be an RFC 3339 time with a zone, such as "
                     "2026-01-01T00:00:00Z", str(value) if isinstance(value, date) else value)
        return parsed

    def expect(self, path: str, body: LocatedDict
               ) -> tuple[tuple[Paged, ...], tuple[str, ...], tuple[str, ...] | None,
                          Clock | None, timedelta | None]:
        """The pages, resolves, rules, clock and business updates a step expects."""
        where = f"{path}.expect"
        node = body.get("expect")
        if not isinstance(node, LocatedDict):
            message = "must be a mapping of pages, resolves and rules"
            if "expect" not in body:
                message = "missing: the pages expected ('expect: {pages: []}' for none)"
            self.bad(where, body.line_of("expect"), message, node if node is not None else "")
            return (), (), None, None, None
        self.keys(node, where, _EXPECT_KEYS)
        pages = []
        for i, item, line in self.items(node, "pages", where):
            page = self.page(f"{where}.pages[{i}]", item, line)
            if page is not None:
                pages.append(page)
        resolves = []
        for i, target, line in self.items(node, "resolves", where):
            if self.is_target(target):
                resolves.append(target)
            else:
                self.bad(f"{where}.resolves[{i}]", line, self.unknown_target(target), target)
        rules = None
        if "rules" in node:
            known = {DEFAULT_RULE.name, *(r.name for r in self.config.rules)} \
                if self.config is not None else None
            rules = []
            for i, name, line in self.items(node, "rules", where):
                if not isinstance(name, str) or (known is not None and name not in known):
                    hint = did_you_mean(name, known) if isinstance(name, str) and known else ""
                    self.bad(f"{where}.rules[{i}]", line, f"unknown rule{hint}", name)
                else:
                    rules.append(name)

        def report(key: str, message: str, value: Any, line: int) -> None:
            self.bad(f"{where}.{key}", line, message, value)

        def is_name(value: Any) -> bool:
            return isinstance(value, str) and (value in ROLES or self.is_target(value))

        clock = parse_clock(node, report, is_name, required=False, known=self.known_names())
        updates = duration(node, "business_updates", report)
        return (tuple(pages), tuple(resolves), None if rules is None else tuple(rules), clock,
                updates)

    def items(self, node: LocatedDict, key: str, path: str) -> list[tuple[int, Any, int]]:
        """Index, item and line of each item of the list `node[key]` (none when absent)."""
        if key not in node:
            return []
        raw = node[key]
        if not isinstance(raw, LocatedList):
            self.bad(f"{path}.{key}", node.line_of(key), "must be a list", raw)
            return []
        return [(i, item, raw.line_of(i)) for i, item in enumerate(raw)]

    def page(self, path: str, item: Any, line: int) -> Paged | None:
        """One expected page; `target` may be left out when the roles imply it."""
        if not isinstance(item, LocatedDict):
            self.bad(path, line, "must be a mapping of target, roles and severity", item)
            return None
        self.keys(item, path, _PAGE_KEYS)
        count = len(self.problems)
        roles: list[str] = []
        raw = item.get("roles")
        if not isinstance(raw, LocatedList) or not raw:
            self.bad(f"{path}.roles", item.line_of("roles"), "must be a non-empty list of "
                     f"roles ({', '.join(ROLES)}) or target names", raw or "")
        else:
            for i, role in enumerate(raw):
                if not isinstance(role, str) or not (role in ROLES or self.is_target(role)):
                    hint = did_you_mean(role, self.known_names()) if isinstance(role, str) else ""
                    self.bad(f"{path}.roles[{i}]", raw.line_of(i),
                             f"unknown role or target{hint}", role)
                elif role in roles:
                    self.bad(f"{path}.roles[{i}]", raw.line_of(i), "listed twice", role)
                else:
                    roles.append(role)
        severity = item.get("severity")
        if not isinstance(severity, str) or severity not in SEVERITIES:
            self.bad(f"{path}.severity", item.line_of("severity"),
                     f"must be one of {', '.join(reversed(SEVERITIES))}", severity or "")
        target = item.get("target")
        if "target" in item:
            if not isinstance(target, str) or not self.is_target(target):
                self.bad(f"{path}.target", item.line_of("target"), self.unknown_target(target),
                         target)
        elif roles:
            target = self.implied_target(roles, f"{path}.target", item.line)
        if len(self.problems) != count or not isinstance(target, str) \
                or not isinstance(severity, str):
            return None
        return Paged(target, tuple(roles), severity)

    def known_names(self) -> tuple[str, ...]:
        """The roles and the settings' targets, for a "did you mean"."""
        targets = self.config.settings.targets if self.config is not None else ()
        return (*ROLES, *targets)

    def unknown_target(self, name: Any) -> str:
        """What a name that is no target of the settings is told, with the nearest target."""
        if not isinstance(name, str) or self.config is None:
            return "unknown target"
        return "unknown target" + did_you_mean(name, self.config.settings.targets)

    def is_target(self, name: Any) -> bool:
        """Whether `name` is a target of the settings (anything goes when they did not load)."""
        return isinstance(name, str) and (self.config is None
                                          or name in self.config.settings.targets)

    def implied_target(self, roles: Sequence[str], path: str, line: int) -> str | None:
        """The one target the settings map all of `roles` to, or a problem."""
        if self.config is None:
            return None
        if not set(roles) <= set(IMPLYING_ROLES):
            self.bad(path, line, f"missing: only {', '.join(IMPLYING_ROLES)} imply their target")
            return None
        implied = {role: self.config.target_for_role(role) for role in roles}
        unset = [role for role, target in implied.items() if target is None]
        if unset:
            self.bad(path, line, f"missing, and the settings' roles give {', '.join(unset)} "
                     "no target")
            return None
        targets = sorted({t for t in implied.values() if t is not None})
        if len(targets) > 1:
            self.bad(path, line, f"missing, and the roles imply several: {', '.join(targets)}")
            return None
        return targets[0]


def run_test(test: RuleTest, config: Config) -> RuleTestResult:
    """Run a test's steps through the engine, from an empty state, against its expectations.
    Before each step's notification the incident clock runs at the step's time, as it would
    have in production: flap damping that has run out resolves, missed deadlines escalate and
    business updates fall due; what it sends counts as the step's."""
    state = State()
    reports = []
    for index, step in enumerate(test.steps):
        clock = tick(config, state, step.at)
        state = apply(state, clock)
        decision = decide(step.webhook, config, state, step.at)
        state = apply(state, decision)
        both = _together(clock, decision)
        reports.append(StepReport(index, step, tuple(compare(step, both)),
                                  tuple(handled(both))))
    return RuleTestResult(test, tuple(reports))


def _together(first: Decision, then: Decision) -> Decision:
    """Two decisions taken one after the other at one time, as one: later incident
    versions last, so that they know every page."""
    return Decision(
        incidents=first.incidents + then.incidents, seen=first.seen + then.seen,
        timeline=first.timeline + then.timeline, events=first.events + then.events,
        resolutions=first.resolutions + then.resolutions,
        explanations=first.explanations + then.explanations, now=then.now,
    )


def paged(decision: Decision) -> list[Paged]:
    """The pages a decision triggers, at the severity of the event that would be sent."""
    pages = {p.dedup_key: p for incident in decision.incidents for p in incident.pages}
    return [Paged(ev.target, pages[ev.dedup_key].roles, ev.body["payload"]["severity"])
            for ev in decision.events if ev.action == TRIGGER]


def compare(step: Step, decision: Decision) -> list[str]:
    """What differs between a step's expectations and the decision, one line each."""
    missing = list(step.pages)
    unexpected: list[Paged] = []
    for page in paged(decision):
        found = next((e for e in missing if e.same(page)), None)
        if found is None:
            unexpected.append(page)
        else:
            missing.remove(found)
    wrong: list[str] = []
    # A target paged, but not as expected: said as one difference, not a missing and an
    # unexpected page.
    for expected in list(missing):
        actual = next((a for a in unexpected if a.target == expected.target), None)
        if actual is None:
            continue
        missing.remove(expected)
        unexpected.remove(actual)
        if set(actual.roles) != set(expected.roles):
            wrong.append(_line("wrong roles", f"{actual.target} as {', '.join(actual.roles)}, "
                                              f"expected {', '.join(expected.roles)}"))
        if actual.severity != expected.severity:
            wrong.append(_line("wrong severity", f"{actual}, expected {expected.severity}"))
    lines = [_line("missing page", str(p)) for p in missing]
    lines += [_line("unexpected page", str(p)) for p in unexpected]
    lines += wrong
    resolved = Counter(ev.target for ev in decision.events if ev.action == RESOLVE)
    expected_resolves = Counter(step.resolves)
    lines += [_line("missing resolve", t) for t in (expected_resolves - resolved).elements()]
    lines += [_line("unexpected resolve", t) for t in (resolved - expected_resolves).elements()]
    matched = tuple(r.name for e in decision.explanations if e.outcome is not None
                    for r in e.outcome.matched)
    if step.rules is not None and matched != step.rules:
        lines.append(_line("wrong rules", f"expected {_names(step.rules)}"))
    return lines + _clock_differences(step, decision)


def _clock_differences(step: Step, decision: Decision) -> list[str]:
    """How the clock and business updates of each incident the step opened differ from the
    expected ones (when given)."""
    if step.clock is None and step.business_updates is None:
        return []
    opened = [(e.alertname, e.outcome) for e in decision.explanations if e.outcome is not None]
    if not opened:
        return [_line("wrong clock", "no incident opened, expected one with a clock")]
    lines = []
    for name, outcome in opened:
        expected = step.clock
        if expected is not None:
            actual = outcome.clock or Clock()
            if actual.ack_within != expected.ack_within:
                lines.append(_line("wrong clock", f"{name}: ack within "
                                   f"{format_duration(actual.ack_within)}, expected "
                                   f"{format_duration(expected.ack_within)}"))
            if actual.resolve_within != expected.resolve_within:
                lines.append(_line("wrong clock", f"{name}: resolve within "
                                   f"{format_duration(actual.resolve_within)}, expected "
                                   f"{format_duration(expected.resolve_within)}"))
            # Order-free, as the roles of a page are.
            if set(actual.escalate_to) != set(expected.escalate_to):
                lines.append(_line("wrong clock", f"{name}: escalate to "
                                   f"{', '.join(actual.escalate_to) or '(nobody)'}, expected "
                                   f"{', '.join(expected.escalate_to) or '(nobody)'}"))
        if step.business_updates is not None \
                and outcome.business_updates != step.business_updates:
            lines.append(_line("wrong updates", f"{name}: business updates every "
                               f"{format_duration(outcome.business_updates)}, expected "
                               f"{format_duration(step.business_updates)}"))
    return lines


def handled(decision: Decision) -> list[str]:
    """How each alert of a decision was handled, with the rules that matched it."""
    lines = []
    for e in decision.explanations:
        where = "with no service label"
        if e.service:
            where = f"on {e.service}" + ("" if e.mapped else " (unmapped)")
        if e.outcome is not None:
            lines.append(_line("rules matched", f"{e.alertname} {where}: "
                                                f"{_names(r.name for r in e.outcome.matched)}"))
        else:
            lines.append(_line("alert", f"{e.alertname} {where}: {e.action}"))
    return lines


def format_report(results: Sequence[RuleTestResult]) -> list[str]:
    """The lines `firehouse test` prints: PASS or FAIL per test, the differences of each
    failure, and a summary."""
    lines: list[str] = []
    file = None
    for result in results:
        test = result.test
        if test.file != file:
            file = test.file
            lines.append(file)
        if result.passed:
            lines.append(f"  PASS  {test.name}")
            continue
        lines.append(f"  FAIL  {test.name} ({test.file}:{test.line})")
        for report in result.steps:
            if not report.differences:
                continue
            indent = "      "
            if len(test.steps) > 1:
                at = zulu(report.step.at)
                lines.append(f"      step {report.index + 1} at {at} (line {report.step.line})")
                indent = "        "
            lines.extend(indent + line for line in (*report.differences, *report.handled))
    failed = sum(1 for r in results if not r.passed)
    if failed:
        lines.append(f"FAILED: {failed} of {len(results)} test(s) failed")
    else:
        lines.append(f"SUCCESS: {len(results)} test(s) passed")
    return lines


def _line(kind: str, text: str) -> str:
    return f"{kind:<{_KIND_WIDTH}}  {text}"


def _names(names: Iterable[str]) -> str:
    """Rule names, quoted: they may contain commas."""
    return ", ".join(repr(n) for n in names) or "(none)"
