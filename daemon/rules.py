"""Escalation rules: Alertmanager-style label matchers, impact conditions, and who to page.

Rules are evaluated in order. Every matching rule contributes its pages; a matching rule
without `continue: true` stops the evaluation, as an Alertmanager route does. When no rule
matches, the built-in default calls the fire department first: the technical lead and the
incident lead, at the full potential severity.

A rule may also set a `clock` (deadlines to acknowledge and resolve, and whom to escalate
to when one is missed) and `business_updates` (how often the business line hears). When
several matching rules set them, the tightest deadline and interval of each kind win and
the escalation lists are united. They are carried to the incident, where the clock
(`daemon.decide.timers`) acts on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from daemon.errors import Problem, did_you_mean, missing
from daemon.graph import SEVERITIES, Impact, Service, higher
from daemon.yamlsrc import LocatedDict, LocatedList, load_file, shown

ROLES = ("technical_lead", "service_lead", "incident_lead", "senior_management", "business_line")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
_RULE_KEYS = frozenset({"name", "match", "when", "page", "severity", "severity_floor", "continue",
                        "clock", "business_updates"})
_CLOCK_KEYS = frozenset({"ack_within", "resolve_within", "escalate_to"})
# Prometheus' duration units, largest first; each at most once, in this order ("1h30m").
_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile("".join(rf"(?:(\d+){unit})?" for unit, _ in _UNITS))
NOT_A_DURATION = "not a duration such as 30s, 15m, 4h, 1d or 1h30m"

# Reports one problem: key path (relative to the mapping being read), message, bad value
# ("" to show none) and line.
Reporter = Callable[[str, str, Any, int], None]
_WHEN_KEYS = frozenset(
    {"tier_at_most", "impacted_at_least", "business_service", "component", "mapped",
     "alert_severity"}
)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher, with Alertmanager's semantics (a missing label is the empty string)."""

    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the label set satisfies this matcher."""
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        # Escaped as Alertmanager prints a matcher, so that the text parses back to itself.
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse `label="value"` (or =~, !=, !~; quotes optional); raises ValueError."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError('expected label="value" with one of = != =~ !~')
    label, op, value = found.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = _unescape(value[1:-1])
    pattern = None
    if op in ("=~", "!~"):
        try:
            # Anchored like Alertmanager's ^(?:value)$ by `fullmatch` in `matches`. Not
            # wrapped in (?:...) here: Python refuses a leading (?i) inside a group.
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
    return Matcher(label, op, value, pattern)


def _unescape(text: str) -> str:
    """Undo `\\"`, `\\\\` and `\\n` as Alertmanager does; any other backslash stays literal."""
    result: list[str] = []
    chars = iter(text)
    for char in chars:
        if char != "\\":
            result.append(char)
            continue
        following = next(chars, None)
        if following is None:
            result.append("\\")
        elif following == "n":
            result.append("\n")
        elif following in ('"', "\\"):
            result.append(following)
        else:
            result.append("\\" + following)
    return "".join(result)


MAX_DURATION_SECONDS = 52 * 7 * 86400


def parse_duration(text: str) -> timedelta:
    """A Prometheus-style duration (`30s`, `15m`, `4h`, `1d`, `1w`, `1h30m`); raises
    ValueError."""
    found = _DURATION.fullmatch(text.strip()) if text.strip() else None
    if found is None:
        raise ValueError(NOT_A_DURATION)
    seconds = sum(int(count) * size
                  for count, (_, size) in zip(found.groups(), _UNITS, strict=True)
                  if count is not None)
    if seconds == 0:
        raise ValueError("must be longer than zero")
    if seconds > MAX_DURATION_SECONDS:
        # A deadline must be reachable: added to an incident's opening time, a longer one
        # would overflow the calendar and fail every decision that uses it.
        raise ValueError("must be at most 52w (a year)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | None) -> str:
    """A duration as a rule writes it (`1h30m`), or `(none)`."""
    if value is None:
        return "(none)"
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in _UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class Clock:
    """How long an incident may stay unacknowledged and unresolved, and whom to escalate to
    (roles or targets) when it does."""

    ack_within: timedelta | None = None
    resolve_within: timedelta | None = None
    escalate_to: tuple[str, ...] = ()


def merge_clocks(clocks: Iterable[Clock]) -> Clock | None:
    """The clock of several matching rules: the tightest deadline of each kind, and every
    escalation target in order of first mention; None when no rule set one."""
    clocks = list(clocks)
    if not clocks:
        return None
    return Clock(
        ack_within=tightest(c.ack_within for c in clocks),
        resolve_within=tightest(c.resolve_within for c in clocks),
        escalate_to=tuple(dict.fromkeys(t for c in clocks for t in c.escalate_to)),
    )


def tightest(durations: Iterable[timedelta | None]) -> timedelta | None:
    """The shortest of the durations given, or None when none is."""
    return min((d for d in durations if d is not None), default=None)


@dataclass(frozen=True, slots=True)
class When:
    """Conditions on the computed impact and on the alert's normalised severity; an absent
    condition always holds."""

    tier_at_most: int | None = None
    impacted_at_least: int | None = None
    business_service: tuple[str, ...] | None = None
    component: tuple[str, ...] | None = None
    mapped: bool | None = None
    # The alert's own severity as Firehouse maps it (`page`, `P1`, `CRITICAL` are all
    # critical), not the raw text of a label, which a `match` would see.
    alert_severity: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One escalation rule."""

    name: str
    matchers: tuple[Matcher, ...] = ()
    when: When = When()
    page: tuple[str, ...] = ()
    severity: str | None = None
    severity_floor: str | None = None
    continue_: bool = False
    source: str = ""
    clock: Clock | None = None
    business_updates: timedelta | None = None

    @property
    def conditions(self) -> int:
        """How many conditions the rule has: each matcher and each `when` condition."""
        return len(self.matchers) + sum(
            1 for f in fields(When) if getattr(self.when, f.name) is not None
        )

    @property
    def catches_everything(self) -> bool:
        """Whether this rule matches any alert and stops evaluation."""
        return not self.matchers and self.when == When() and not self.continue_


@dataclass(frozen=True, slots=True)
class MapNames:
    """The business services and components the dependency maps define: a rule condition
    naming anything else would silently never match, so loading refuses it."""

    business_services: frozenset[str]
    components: frozenset[str]

    @classmethod
    def of(cls, services: Iterable[Service]) -> MapNames:
        """The names used by `services`."""
        services = list(services)
        return cls(frozenset(s.business_service for s in services if s.business_service),
                   frozenset(s.component for s in services))


DEFAULT_RULE = Rule(
    name="default: call the fire department first",
    page=("technical_lead", "incident_lead"),
    source="built-in",
)


@dataclass(frozen=True, slots=True)
class Subject:
    """What a rule is evaluated against: one alert's labels, its computed impact and its
    own severity, normalised from its `severity_labels` to one of `SEVERITIES`."""

    labels: Mapping[str, str]
    service: Service | None
    impact: Impact
    severity: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one rule matched; if not, why: every condition that failed."""

    rule: Rule
    matched: bool
    reason: str
    failures: tuple[str, ...] = ()

    @property
    def closest_miss(self) -> bool:
        """Whether the rule missed on exactly one of several conditions: the others held, so
        it nearly matched (`firehouse explain` marks these)."""
        return not self.matched and len(self.failures) == 1 and self.rule.conditions > 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of evaluating the rules for one subject."""

    roles: tuple[str, ...]
    severity: str
    matched: tuple[Rule, ...]
    verdicts: tuple[Verdict, ...]
    # Rules after the matching rule that stopped the walk: never checked.
    unreached: tuple[Rule, ...] = ()
    # Of all matched rules: see `merge_clocks`; the shortest interval of business updates.
    clock: Clock | None = None
    business_updates: timedelta | None = None


def check(rule: Rule, subject: Subject) -> Verdict:
    """Match one rule against a subject; a miss lists every failed condition, not only the
    first, so that explain can tell a near miss from a far one."""
    failures: list[str] = []
    for matcher in rule.matchers:
        if not matcher.matches(subject.labels):
            actual = subject.labels.get(matcher.label)
            got = f'{matcher.label}="{actual}"' if actual is not None else f"{matcher.label} unset"
            failures.append(f"{matcher} failed ({got})")
    when, impact, service = rule.when, subject.impact, subject.service
    if when.mapped is not None and when.mapped != (service is not None):
        failures.append("service is " + ("unmapped" if service is None else "mapped"))
    if when.tier_at_most is not None and (
        impact.most_critical_tier is None or impact.most_critical_tier > when.tier_at_most
    ):
        hit = "none" if impact.most_critical_tier is None else impact.most_critical_tier
        failures.append(f"most critical tier hit is {hit}, needs <= {when.tier_at_most}")
    if when.impacted_at_least is not None and impact.impacted_total < when.impacted_at_least:
        failures.append(f"{impact.impacted_total} services impacted, "
                        f"needs >= {when.impacted_at_least}")
    if when.business_service is not None and not set(when.business_service) & set(
        impact.business_services
    ):
        failures.append(f"no business service of {list(when.business_service)} is hit")
    if when.component is not None and (service is None or service.component not in when.component):
        component = service.component if service else "none"
        failures.append(f"component is {component}, needs one of {list(when.component)}")
    if when.alert_severity is not None and subject.severity not in when.alert_severity:
        failures.append(f"alert severity is {subject.severity}, "
                        f"needs one of {list(when.alert_severity)}")
    return Verdict(rule, not failures, "; ".join(failures) or "matched", tuple(failures))


def evaluate(rules: Iterable[Rule], subject: Subject, potential: str) -> Outcome:
    """Evaluate rules in order for a subject whose full potential severity is `potential`."""
    verdicts: list[Verdict] = []
    matched: list[Rule] = []
    unreached: list[Rule] = []
    for rule in rules:
        if matched and not matched[-1].continue_:
            unreached.append(rule)
            continue
        verdict = check(rule, subject)
        verdicts.append(verdict)
        if verdict.matched:
            matched.append(rule)
    if not matched:
        matched.append(DEFAULT_RULE)
        verdicts.append(Verdict(DEFAULT_RULE, True, "no rule matched"))
    roles: list[str] = []
    severity = potential
    fixed: str | None = None
    for rule in matched:
        roles.extend(r for r in rule.page if r not in roles)
        severity = higher(severity, rule.severity_floor) or severity
        fixed = fixed or rule.severity
    return Outcome(tuple(roles), fixed or severity, tuple(matched), tuple(verdicts),
                   tuple(unreached),
                   clock=merge_clocks(r.clock for r in matched if r.clock is not None),
                   business_updates=tightest(r.business_updates for r in matched))


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """The rule files named by `paths`: files as given, directories' *.yaml/*.yml sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def load_rules(
    paths: Iterable[Path], targets: set[str], known: MapNames | None = None
) -> tuple[tuple[Rule, ...], list[Problem]]:
    """Load rule files in order; returns the rules and every problem found. With `known`,
    conditions naming a business service or component the maps lack are problems too."""
    problems: list[Problem] = []
    paths = list(paths)
    for path in paths:
        if not path.exists():
            problems.append(Problem(str(path), 0, "", missing(path)))
    # Each rule with its key path in its file (`rules[3]`), for the checks across rules.
    located: list[tuple[str, Rule]] = []
    # A missing path is reported once above, not again as an unreadable file.
    for path in rule_files(p for p in paths if p.exists()):
        docs, found = load_file(path)
        problems.extend(found)
        for doc in docs:
            located.extend(_parse_rules_doc(doc, str(path), targets, known, problems))
    names: dict[str, str] = {}
    catch_all: Rule | None = None
    for where, rule in located:
        file, _, line = rule.source.rpartition(":")
        if rule.name in names:
            problems.append(Problem(file, int(line), f"{where}.name",
                                    f"duplicate rule name, first at {names[rule.name]}",
                                    shown(rule.name)))
        names.setdefault(rule.name, rule.source)
        if catch_all is not None:
            problems.append(Problem(file, int(line), where,
                                    f"can never match: rule {catch_all.name!r} at "
                                    f"{catch_all.source} catches every alert without "
                                    "'continue: true'", shown(rule.name)))
        elif rule.catches_everything:
            catch_all = rule
    return tuple(rule for _, rule in located), problems


def _parse_rules_doc(
    doc: Any, file: str, targets: set[str], known: MapNames | None, problems: list[Problem]
) -> list[tuple[str, Rule]]:
    if doc is None:
        return []
    if not isinstance(doc, LocatedDict) or not isinstance(doc.get("rules"), LocatedList):
        problems.append(Problem(file, getattr(doc, "line", 0), "rules",
                                "a rules file must be a mapping with a 'rules' list"))
        return []
    for key in doc:
        if key != "rules":
            problems.append(Problem(file, doc.line_of(key), key, "unknown key"
                                    + did_you_mean(str(key), ("rules",)), shown(key)))
    raw: LocatedList = doc["rules"]
    rules: list[tuple[str, Rule]] = []
    for index, body in enumerate(raw):
        where = f"rules[{index}]"
        rule = _parse_rule(where, body, file, raw.line_of(index), targets=targets,
                           known=known, problems=problems)
        if rule is not None:
            rules.append((where, rule))
    return rules


def _parse_rule(
    where: str, body: Any, file: str, line: int, *, targets: set[str], known: MapNames | None,
    problems: list[Problem],
) -> Rule | None:
    count = len(problems)

    def bad(key: str, message: str, value: Any = "", at: int | None = None) -> None:
        path = f"{where}.{key}" if key else where
        problems.append(Problem(file, at or line, path, message,
                                shown(value) if value != "" else ""))

    if not isinstance(body, LocatedDict):
        bad("", "must be a mapping with at least 'name' and 'page'", body)
        return None
    for key in body:
        if key not in _RULE_KEYS:
            bad(key, "unknown key" + did_you_mean(str(key), _RULE_KEYS), key, body.line_of(key))
    name = body.get("name")
    if not isinstance(name, str) or not name:
        bad("name", "missing or not a string", name or "", body.line_of("name"))
    matchers = _parse_match(body, bad)
    when = _parse_when(body, bad, known)
    page = body.get("page")
    roles: list[str] = []
    if not isinstance(page, LocatedList) or not page:
        bad("page", "must be a non-empty list of roles or targets "
            f"({', '.join(ROLES)}, or a target name)", page or "", body.line_of("page"))
    else:
        for i, role in enumerate(page):
            if not isinstance(role, str) or (role not in ROLES and role not in targets):
                hint = did_you_mean(role, (*ROLES, *targets)) if isinstance(role, str) else ""
                bad(f"page[{i}]", f"unknown role or target{hint}", role, page.line_of(i))
            else:
                roles.append(role)
    severity = _severity(body, "severity", bad)
    floor = _severity(body, "severity_floor", bad)
    if severity is not None and floor is not None:
        # A fixed severity wins over every floor (`evaluate`): this one would do nothing.
        bad("severity_floor", f"not allowed next to 'severity: {severity}', which fixes the "
            "severity and would ignore the floor; give one or the other", floor,
            body.line_of("severity_floor"))
    cont = body.get("continue", False)
    if not isinstance(cont, bool):
        bad("continue", "must be true or false", cont, body.line_of("continue"))

    def is_name(value: Any) -> bool:
        return isinstance(value, str) and (value in ROLES or value in targets)

    clock = parse_clock(body, bad, is_name, required=True, known=(*ROLES, *targets))
    updates = _parse_business_updates(body, bad)
    if len(problems) != count or not isinstance(name, str):
        return None
    return Rule(name=name, matchers=tuple(matchers), when=when, page=tuple(roles),
                severity=severity, severity_floor=floor, continue_=cont, source=f"{file}:{line}",
                clock=clock, business_updates=updates)


def parse_clock(body: LocatedDict, bad: Reporter, is_name: Callable[[Any], bool], *,
                required: bool, known: Iterable[str] = ()) -> Clock | None:
    """`body.clock`, or None when absent or bad. A rule's clock (`required`) needs a
    non-empty `escalate_to` when given and at least one deadline; a test's expected clock
    may be empty, expecting none. `known` names the roles and targets, for a "did you mean"."""
    if "clock" not in body:
        return None
    raw, at = body["clock"], body.line_of("clock")
    if not isinstance(raw, LocatedDict):
        bad("clock", "must be a mapping of ack_within, resolve_within and escalate_to", raw, at)
        return None
    ok = True

    def report(key: str, message: str, value: Any, line: int) -> None:
        nonlocal ok
        ok = False
        bad(f"clock.{key}" if key else "clock", message, value, line)

    for key in raw:
        if key not in _CLOCK_KEYS:
            report(key, "unknown key" + did_you_mean(str(key), _CLOCK_KEYS), key,
                   raw.line_of(key))
    ack = duration(raw, "ack_within", report)
    resolve = duration(raw, "resolve_within", report)
    names: list[str] = []
    escalate = raw.get("escalate_to")
    if "escalate_to" in raw and (not isinstance(escalate, LocatedList)
                                 or (required and not escalate)):
        report("escalate_to", "must be a non-empty list of roles or targets "
               f"({', '.join(ROLES)}, or a target name)", escalate if escalate else "",
               raw.line_of("escalate_to"))
    elif isinstance(escalate, LocatedList):
        for i, item in enumerate(escalate):
            if is_name(item):
                names.append(item)
            else:
                hint = did_you_mean(item, known) if isinstance(item, str) else ""
                report(f"escalate_to[{i}]", f"unknown role or target{hint}", item,
                       escalate.line_of(i))
    if required and "ack_within" not in raw and "resolve_within" not in raw:
        report("", "needs ack_within or resolve_within (or both)", "", at)
    return Clock(ack, resolve, tuple(names)) if ok else None


def duration(node: LocatedDict, key: str, bad: Reporter) -> timedelta | None:
    """The duration `node[key]`, or None when absent or bad (reported)."""
    if key not in node:
        return None
    value = node[key]
    if not isinstance(value, str):
        bad(key, NOT_A_DURATION, value, node.line_of(key))
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        bad(key, str(exc), value, node.line_of(key))
        return None


def _parse_business_updates(body: LocatedDict, bad: Reporter) -> timedelta | None:
    if "business_updates" not in body:
        return None
    raw, at = body["business_updates"], body.line_of("business_updates")
    if not isinstance(raw, LocatedDict) or "every" not in raw:
        bad("business_updates", "must be a mapping with 'every', such as {every: 30m}",
            raw if raw is not None else "", at)
        return None
    for key in raw:
        if key != "every":
            bad(f"business_updates.{key}", "unknown key" + did_you_mean(str(key), ("every",)),
                key, raw.line_of(key))
    return duration(raw, "every", lambda key, message, value, line: bad(
        f"business_updates.{key}", message, value, line))


def _parse_match(body: LocatedDict, bad: Any) -> list[Matcher]:
    raw = body.get("match")
    if raw is None:
        return []
    at = body.line_of("match")
    items: list[tuple[str, int, str]] = []
    if isinstance(raw, str):
        items = [(raw, at, "match")]
    elif isinstance(raw, LocatedList):
        items = [(m, raw.line_of(i), f"match[{i}]") for i, m in enumerate(raw)]
    elif isinstance(raw, LocatedDict):
        matchers = []
        for label, value in raw.items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                bad(f"match.{label}", "must be a string", value, raw.line_of(label))
            else:
                matchers.append(Matcher(label, "=", str(value)))
        return matchers
    else:
        bad("match", 'must be a matcher string, a list of them, or a {label: value} map', raw, at)
        return []
    matchers = []
    for text, line, key in items:
        if not isinstance(text, str):
            bad(key, "must be a matcher string", text, line)
            continue
        for part in _split_matchers(text):
            try:
                matchers.append(parse_matcher(part))
            except ValueError as exc:
                bad(key, str(exc), part, line)
    return matchers


def _split_matchers(text: str) -> list[str]:
    """Split `{a="x", b=~"y,z"}` or `a="x", b="y"` on commas outside quotes."""
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    parts, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == '"':
            current += char
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in (p.strip() for p in parts) if p]


def _parse_when(body: LocatedDict, bad: Any, known: MapNames | None) -> When:
    raw = body.get("when")
    if raw is None:
        return When()
    if not isinstance(raw, LocatedDict):
        bad("when", "must be a mapping of conditions", raw, body.line_of("when"))
        return When()
    for key in raw:
        if key not in _WHEN_KEYS:
            bad(f"when.{key}", "unknown condition" + did_you_mean(str(key), _WHEN_KEYS), key,
                raw.line_of(key))
    tier = raw.get("tier_at_most")
    if tier is not None and (
        isinstance(tier, bool) or not isinstance(tier, int) or tier not in (1, 2, 3, 4)
    ):
        bad("when.tier_at_most", "must be 1, 2, 3 or 4", tier, raw.line_of("tier_at_most"))
        tier = None
    count = raw.get("impacted_at_least")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        bad("when.impacted_at_least", "must be a non-negative integer", count,
            raw.line_of("impacted_at_least"))
        count = None
    mapped = raw.get("mapped")
    if mapped is not None and not isinstance(mapped, bool):
        bad("when.mapped", "must be true or false", mapped, raw.line_of("mapped"))
        mapped = None
    business = _names(raw, "business_service", bad,
                      None if known is None else known.business_services,
                      "no dependency map has this business service")
    component = _names(raw, "component", bad, None if known is None else known.components,
                       "no service of the dependency maps has this component")
    # Always checked, maps or not: a severity Firehouse never maps to would never match.
    severity = _names(raw, "alert_severity", bad, frozenset(SEVERITIES),
                      f"not one of {', '.join(SEVERITIES)}, which alert severities are "
                      "mapped to")
    return When(tier_at_most=tier, impacted_at_least=count, business_service=business,
                component=component, mapped=mapped, alert_severity=severity)


def _names(
    raw: LocatedDict, key: str, bad: Any, defined: frozenset[str] | None, unknown: str
) -> tuple[str, ...] | None:
    """A name or list of names under `when.key`; each one not `defined` is a problem."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        located = [(value, f"when.{key}", raw.line_of(key))]
    elif isinstance(value, LocatedList) and all(isinstance(v, str) for v in value):
        located = [(v, f"when.{key}[{i}]", value.line_of(i)) for i, v in enumerate(value)]
    else:
        bad(f"when.{key}", "must be a name or a list of names", value, raw.line_of(key))
        return None
    for name, path, line in located:
        if defined is not None and name not in defined:
            hint = did_you_mean(name, defined) or did_you_mean(name.lower(), defined)
            bad(path, f"{unknown}: the rule would never match{hint}", name, line)
    return tuple(name for name, _, _ in located)


def _severity(body: LocatedDict, key: str, bad: Any) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if value not in SEVERITIES:
        bad(key, f"must be one of {', '.join(SEVERITIES)}", value, body.line_of(key))
        return None
    return str(value)
