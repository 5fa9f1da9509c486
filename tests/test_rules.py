"""Tests of daemon.rules: matchers, conditions, evaluation order, and strict loading."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from daemon.cli import main
from daemon.decide.model import map_severity
from daemon.errors import ConfigError
from daemon.graph import Dependency, Service, ServiceGraph, build_graph
from daemon.maps import load_maps
from daemon.rules import (
    DEFAULT_RULE,
    Clock,
    MapNames,
    Rule,
    Subject,
    When,
    check,
    evaluate,
    format_duration,
    load_rules,
    merge_clocks,
    parse_duration,
    parse_matcher,
)
from tests.helpers import write_settings

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "alert-firing.json"
BAD_RULES = Path(__file__).parent / "testdata" / "rules"
TARGETS = {"command-center", "dba-oncall"}


def matches(text: str, **labels: str) -> bool:
    return parse_matcher(text).matches(labels)


def service(name: str, tier: int, component: str, *deps: str,
            business: str | None = None) -> Service:
    return Service(
        name=name, tier=tier, component=component,
        owners=MappingProxyType({"technical_lead": "app-oncall"}),
        business_service=business, depends_on=tuple(Dependency(d) for d in deps),
    )


@pytest.fixture(scope="module")
def graph() -> ServiceGraph:
    """db (tier 2) under api (tier 1, online-checkout) and report (tier 4, batch)."""
    return build_graph([
        service("db", 2, "dbms"),
        service("api", 1, "application", "db", business="online-checkout"),
        service("report", 4, "batch", "db"),
    ])


def subject(graph: ServiceGraph, name: str | None, **labels: str) -> Subject:
    """The subject of an alert on `name`, its severity mapped as the engine maps it."""
    found = graph.services[name] if name else None
    return Subject(labels, found, graph.impact([name] if name else []),
                   map_severity(labels, ("severity", "priority")))


def load_text(tmp_path: Path, text: str, targets: set[str] = TARGETS) -> tuple[Rule, ...]:
    """Rules from YAML text; fails the test on any problem."""
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    rules, problems = load_rules([path], targets)
    assert problems == []
    return rules


def rule(name: str, *, match: str = "", when: When | None = None, page: tuple[str, ...] = (),
         severity: str | None = None, floor: str | None = None, cont: bool = False) -> Rule:
    return Rule(
        name=name, matchers=(parse_matcher(match),) if match else (), when=when or When(),
        page=page, severity=severity, severity_floor=floor, continue_=cont,
    )


class TestMatcher:
    """parse_matcher and Matcher.matches with Alertmanager's semantics."""

    def test_equal(self) -> None:
        """`=` matches the exact value only."""
        assert matches('severity="critical"', severity="critical")
        assert not matches('severity="critical"', severity="Critical")

    def test_not_equal(self) -> None:
        """`!=` matches any other value."""
        assert matches('env!="dev"', env="prod")
        assert not matches('env!="dev"', env="dev")

    def test_missing_label_is_empty_for_not_equal(self) -> None:
        """An unset label is the empty string, so `env!="dev"` matches it."""
        assert matches('env!="dev"')

    def test_missing_label_matches_empty_regex(self) -> None:
        """An unset label matches `env=~""`, and a set one does not."""
        assert matches('env=~""')
        assert not matches('env=~""', env="prod")

    def test_missing_label_does_not_equal_a_value(self) -> None:
        """An unset label does not match `env="prod"`."""
        assert not matches('env="prod"')

    def test_regex_is_anchored(self) -> None:
        """`=~"warn"` does not match "warning": the whole value must match."""
        assert not matches('severity=~"warn"', severity="warning")
        assert matches('severity=~"warn.*"', severity="warning")

    def test_regex_alternation_is_anchored_as_a_whole(self) -> None:
        """`=~"a|b"` matches "a" or "b", never "ab" or "xa"."""
        assert matches('x=~"a|b"', x="b")
        assert not matches('x=~"a|b"', x="ab")
        assert not matches('x=~"a|b"', x="xa")

    def test_negative_regex(self) -> None:
        """`!~` matches what the regex does not."""
        assert matches('env!~"prod|staging"', env="dev")
        assert not matches('env!~"prod|staging"', env="staging")
        assert matches('env!~"prod|staging"')

    def test_case_insensitive_flag(self) -> None:
        """A leading (?i), common in Alertmanager configs, is accepted and honoured."""
        assert matches('severity=~"(?i)critical"', severity="CRITICAL")

    def test_quotes_are_optional(self) -> None:
        """An unquoted value is taken as written, spaces around the operator ignored."""
        matcher = parse_matcher("severity = critical")
        assert (matcher.label, matcher.op, matcher.value) == ("severity", "=", "critical")

    def test_escapes_in_quoted_value(self) -> None:
        """Escaped quotes, backslashes and newlines are undone as Alertmanager does."""
        assert parse_matcher(r'summary="say \"hi\""').value == 'say "hi"'
        assert parse_matcher(r'path="C:\\temp"').value == "C:\\temp"
        assert parse_matcher(r'text="a\nb"').value == "a\nb"

    def test_other_backslashes_stay_literal(self) -> None:
        """A backslash before any other character stays, so `\\d` is a regex digit."""
        matcher = parse_matcher(r'code=~"5\d\d"')
        assert matcher.value == r"5\d\d"
        assert matcher.matches({"code": "503"})
        assert not matcher.matches({"code": "5xx"})

    def test_string_form(self) -> None:
        """A matcher prints in Alertmanager's form, quoting and escaping its value."""
        assert str(parse_matcher('severity =~ crit.*')) == 'severity=~"crit.*"'
        assert str(parse_matcher(r'summary!="say \"hi\""')) == r'summary!="say \"hi\""'

    def test_string_form_parses_back(self) -> None:
        """Printing then parsing a matcher gives the same matcher."""
        for text in ('a="x"', r'b!="q\"uote"', r'c=~"back\\slash"', 'd!~"new\\nline"'):
            matcher = parse_matcher(text)
            again = parse_matcher(str(matcher))
            assert (again.label, again.op, again.value) == (
                matcher.label, matcher.op, matcher.value,
            )

    def test_bad_syntax(self) -> None:
        """Text without a label and an operator is refused."""
        with pytest.raises(ValueError, match=r'^expected label="value" with one of = != =~ !~$'):
            parse_matcher("severity")

    def test_bad_label_name(self) -> None:
        """A label name must not start with a digit."""
        with pytest.raises(ValueError, match="expected label"):
            parse_matcher('1severity="critical"')

    def test_bad_regex(self) -> None:
        """An invalid regular expression is refused with the position in the value itself."""
        message = "invalid regular expression: missing ), unterminated subpattern at position 0"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            parse_matcher('service=~"(postgres"')


class TestMatchForms:
    """The four ways a rule's `match` can be written."""

    def test_string_form(self, tmp_path: Path) -> None:
        """A single matcher string."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: critical
    match: 'severity="critical"'
    page: [incident_lead]
""")
        assert [str(m) for m in loaded.matchers] == ['severity="critical"']

    def test_list_form(self, tmp_path: Path) -> None:
        """A list of matcher strings; all must match."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: prod databases
    match: ['env="prod"', 'service=~"postgres-.*"']
    page: [technical_lead]
""")
        assert [str(m) for m in loaded.matchers] == ['env="prod"', 'service=~"postgres-.*"']

    def test_brace_form_with_commas_inside_quotes(self, tmp_path: Path) -> None:
        """`{a="x", b=~"y,z"}` splits on commas outside quotes only."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: braces
    match: '{a="x", b=~"y,z"}'
    page: [technical_lead]
""")
        assert [(m.label, m.op, m.value) for m in loaded.matchers] == [
            ("a", "=", "x"), ("b", "=~", "y,z"),
        ]
        assert loaded.matchers[1].matches({"b": "y,z"})

    def test_brace_form_with_escaped_quote(self, tmp_path: Path) -> None:
        """An escaped quote does not end the quoted value, so its comma stays inside."""
        (loaded,) = load_text(tmp_path, r"""
rules:
  - name: braces
    match: '{msg="a\", b", c="d"}'
    page: [technical_lead]
""")
        assert [(m.label, m.value) for m in loaded.matchers] == [("msg", 'a", b'), ("c", "d")]

    def test_map_form(self, tmp_path: Path) -> None:
        """A {label: value} map means equality matchers; numbers are compared as text."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: map
    match: {severity: critical, code: 500}
    page: [technical_lead]
""")
        assert [(m.label, m.op, m.value) for m in loaded.matchers] == [
            ("severity", "=", "critical"), ("code", "=", "500"),
        ]


class TestCheck:
    """check: whether one rule matches a subject, and the reason when it does not."""

    def test_matcher_miss_with_value(self, graph: ServiceGraph) -> None:
        """A failed matcher says which, and the label's actual value."""
        verdict = check(rule("r", match='severity="critical"'),
                        subject(graph, "db", severity="warning"))
        assert not verdict.matched
        assert verdict.reason == 'severity="critical" failed (severity="warning")'

    def test_matcher_miss_unset(self, graph: ServiceGraph) -> None:
        """A failed matcher on an unset label says it is unset."""
        verdict = check(rule("r", match='env="prod"'), subject(graph, "db"))
        assert verdict.reason == 'env="prod" failed (env unset)'

    def test_mapped(self, graph: ServiceGraph) -> None:
        """`mapped: false` matches unmapped alerts and says why it misses mapped ones."""
        unmapped_only = rule("r", when=When(mapped=False))
        assert check(unmapped_only, subject(graph, None)).matched
        miss = check(unmapped_only, subject(graph, "db"))
        assert (miss.matched, miss.reason) == (False, "service is mapped")
        miss = check(rule("r", when=When(mapped=True)), subject(graph, None))
        assert (miss.matched, miss.reason) == (False, "service is unmapped")

    def test_tier_at_most(self, graph: ServiceGraph) -> None:
        """`tier_at_most` looks at the most critical tier in the blast radius."""
        tier_one = rule("r", when=When(tier_at_most=1))
        assert check(tier_one, subject(graph, "db")).matched
        miss = check(tier_one, subject(graph, "report"))
        assert (miss.matched, miss.reason) == (False, "most critical tier hit is 4, needs <= 1")

    def test_tier_at_most_unmapped(self, graph: ServiceGraph) -> None:
        """An unmapped alert hits no tier, and the reason says so plainly."""
        miss = check(rule("r", when=When(tier_at_most=3)), subject(graph, None))
        assert miss.reason == "most critical tier hit is none, needs <= 3"

    def test_impacted_at_least(self, graph: ServiceGraph) -> None:
        """`impacted_at_least` counts impacted services, not the failing one."""
        assert check(rule("r", when=When(impacted_at_least=2)), subject(graph, "db")).matched
        miss = check(rule("r", when=When(impacted_at_least=3)), subject(graph, "db"))
        assert (miss.matched, miss.reason) == (False, "2 services impacted, needs >= 3")

    def test_business_service(self, graph: ServiceGraph) -> None:
        """`business_service` matches when any listed business service is hit."""
        hit = rule("r", when=When(business_service=("product-search", "online-checkout")))
        assert check(hit, subject(graph, "db")).matched
        miss = check(rule("r", when=When(business_service=("product-search",))),
                     subject(graph, "db"))
        assert (miss.matched, miss.reason) == (
            False, "no business service of ['product-search'] is hit",
        )

    def test_component(self, graph: ServiceGraph) -> None:
        """`component` looks at the alert's own service."""
        databases = rule("r", when=When(component=("dbms", "cache")))
        assert check(databases, subject(graph, "db")).matched
        miss = check(databases, subject(graph, "api"))
        assert (miss.matched, miss.reason) == (
            False, "component is application, needs one of ['dbms', 'cache']",
        )
        miss = check(databases, subject(graph, None))
        assert miss.reason == "component is none, needs one of ['dbms', 'cache']"

    @pytest.mark.parametrize("labels", [
        {"severity": "CRITICAL"}, {"severity": "page"}, {"priority": "P1"},
        {"severity": "klaxon"},  # unknown words err upward, to critical
    ])
    def test_alert_severity_reads_the_normalised_severity(
        self, graph: ServiceGraph, labels: dict[str, str]
    ) -> None:
        """`alert_severity` looks at the severity Firehouse maps the alert's labels to, not
        at a label's text, which a raw matcher on `severity` would see."""
        quiet = rule("r", when=When(alert_severity=("info", "warning", "error")))
        raw = rule("r", match='severity!="critical"')
        alert = subject(graph, "report", **labels)
        assert check(raw, alert).matched  # the raw label misses every one of these
        miss = check(quiet, alert)
        assert (miss.matched, miss.reason) == (
            False, "alert severity is critical, needs one of ['info', 'warning', 'error']")

    @pytest.mark.parametrize(("labels", "expected"), [
        ({"severity": "warning"}, True), ({"severity": "WARN"}, True),
        ({"priority": "low"}, True), ({}, True),  # a missing severity counts as error
        ({"severity": "critical"}, False),
    ])
    def test_alert_severity_matches_listed_severities(
        self, graph: ServiceGraph, labels: dict[str, str], expected: bool
    ) -> None:
        """A listed severity matches, whatever word the alert spelt it with."""
        quiet = rule("r", when=When(alert_severity=("info", "warning", "error")))
        assert check(quiet, subject(graph, "report", **labels)).matched is expected

    def test_all_conditions_hold(self, graph: ServiceGraph) -> None:
        """A rule whose matchers and conditions all hold matches."""
        verdict = check(
            rule("r", match='severity=~"warn.*"',
                 when=When(mapped=True, tier_at_most=1, impacted_at_least=1,
                           business_service=("online-checkout",), component=("dbms",),
                           alert_severity=("warning",))),
            subject(graph, "db", severity="warning"),
        )
        assert (verdict.matched, verdict.reason) == (True, "matched")


class TestEvaluate:
    """evaluate: order, `continue`, the default rule, and severity."""

    def test_first_match_stops(self, graph: ServiceGraph) -> None:
        """A matching rule without `continue` stops: later rules are not even checked."""
        rules = [
            rule("a", page=("technical_lead",)),
            rule("b", page=("incident_lead",)),
        ]
        outcome = evaluate(rules, subject(graph, "db"), "error")
        assert outcome.roles == ("technical_lead",)
        assert [r.name for r in outcome.matched] == ["a"]
        assert [v.rule.name for v in outcome.verdicts] == ["a"]

    def test_continue_adds_and_goes_on(self, graph: ServiceGraph) -> None:
        """A matching rule with `continue` adds its roles and evaluation goes on."""
        rules = [
            rule("lead", page=("service_lead",), cont=True),
            rule("misses", match='env="prod"', page=("senior_management",)),
            rule("all", page=("technical_lead", "service_lead", "incident_lead")),
            rule("never reached", page=("business_line",)),
        ]
        outcome = evaluate(rules, subject(graph, "db"), "error")
        assert outcome.roles == ("service_lead", "technical_lead", "incident_lead")
        assert [r.name for r in outcome.matched] == ["lead", "all"]
        assert [(v.rule.name, v.matched) for v in outcome.verdicts] == [
            ("lead", True), ("misses", False), ("all", True),
        ]

    def test_default_rule_when_nothing_matches(self, graph: ServiceGraph) -> None:
        """With no match, the built-in default pages the technical and incident leads."""
        outcome = evaluate([rule("prod", match='env="prod"', page=("business_line",))],
                           subject(graph, "db"), "warning")
        assert outcome.matched == (DEFAULT_RULE,)
        assert outcome.roles == ("technical_lead", "incident_lead")
        assert outcome.severity == "warning"
        assert outcome.verdicts[-1].reason == "no rule matched"

    def test_default_rule_with_no_rules(self, graph: ServiceGraph) -> None:
        """An empty rule set falls back to the default."""
        assert evaluate([], subject(graph, None), "critical").matched == (DEFAULT_RULE,)

    def test_fixed_severity_overrides_potential(self, graph: ServiceGraph) -> None:
        """A rule's `severity` replaces the potential severity, even a higher one."""
        outcome = evaluate([rule("quiet", page=("technical_lead",), severity="warning")],
                           subject(graph, "report"), "critical")
        assert outcome.severity == "warning"

    def test_floor_raises(self, graph: ServiceGraph) -> None:
        """A `severity_floor` above the potential severity raises it."""
        outcome = evaluate([rule("loud", page=("technical_lead",), floor="critical")],
                           subject(graph, "report"), "info")
        assert outcome.severity == "critical"

    def test_floor_never_lowers(self, graph: ServiceGraph) -> None:
        """A `severity_floor` below the potential severity changes nothing."""
        outcome = evaluate([rule("floor", page=("technical_lead",), floor="info")],
                           subject(graph, "db"), "error")
        assert outcome.severity == "error"

    def test_fixed_severity_wins_over_an_earlier_floor(self, graph: ServiceGraph) -> None:
        """When one matched rule raises the floor and another fixes severity, the fix wins."""
        rules = [
            rule("floor", page=("service_lead",), floor="critical", cont=True),
            rule("fixed", page=("technical_lead",), severity="warning"),
        ]
        assert evaluate(rules, subject(graph, "db"), "info").severity == "warning"

    def test_roles_are_not_repeated(self, graph: ServiceGraph) -> None:
        """A role paged by two matching rules appears once, in first-seen order."""
        rules = [
            rule("a", page=("incident_lead", "technical_lead"), cont=True),
            rule("b", page=("technical_lead", "senior_management")),
        ]
        assert evaluate(rules, subject(graph, "db"), "error").roles == (
            "incident_lead", "technical_lead", "senior_management",
        )


class TestLoadRules:
    """load_rules: the shipped rules, and bad files with exact messages."""

    def test_shipped_rules_load_with_shipped_targets(self) -> None:
        """The shipped rules load without a problem against firehouse.yml's targets."""
        settings = yaml.safe_load((ROOT / "firehouse.yml").read_text(encoding="utf-8"))
        rules, problems = load_rules([ROOT / "rules"], set(settings["targets"]))
        assert problems == []
        assert [r.name for r in rules] == [
            "unmapped alerts go to the command center",
            "tier-1 impact brings in the service lead",
            "tier-4 batch jobs page only their own team",
            "network faults page the network lead, incident lead and management at once",
            "call the fire department first",
        ]
        assert rules[-1].catches_everything
        assert rules[1].continue_

    def test_shipped_rules_on_the_shipped_map(self) -> None:
        """A payments-database alert brings in the service lead, then the fire department."""
        settings = yaml.safe_load((ROOT / "firehouse.yml").read_text(encoding="utf-8"))
        rules, _ = load_rules([ROOT / "rules"], set(settings["targets"]))
        shop, _ = load_maps([ROOT / "dependency_maps"])
        db = shop.services["postgres-payments"]
        outcome = evaluate(rules, Subject({"severity": "warning"}, db,
                                          shop.impact([db.name]), "warning"), "critical")
        assert outcome.roles == ("service_lead", "technical_lead", "incident_lead")
        assert outcome.severity == "critical"

    @pytest.mark.parametrize(("labels", "rule_name", "severity"), [
        ({"severity": "error"}, "tier-4 batch jobs page only their own team", "warning"),
        ({"severity": "critical"}, "call the fire department first", "critical"),
        ({"severity": "CRITICAL"}, "call the fire department first", "critical"),
        ({"severity": "page"}, "call the fire department first", "critical"),
        ({"priority": "P1"}, "call the fire department first", "critical"),
    ])
    def test_shipped_batch_rule_reads_the_normalised_severity(
        self, labels: dict[str, str], rule_name: str, severity: str
    ) -> None:
        """A batch alert Firehouse counts as critical, however it is spelt, falls through
        the quiet batch rule to the default, as the README promises."""
        settings = yaml.safe_load((ROOT / "firehouse.yml").read_text(encoding="utf-8"))
        rules, _ = load_rules([ROOT / "rules"], set(settings["targets"]))
        shop, _ = load_maps([ROOT / "dependency_maps"])
        report = shop.services["nightly-reports"]
        mapped = map_severity(labels, settings["severity_labels"])
        outcome = evaluate(rules, Subject(labels, report, shop.impact([report.name]), mapped),
                           mapped)
        assert [r.name for r in outcome.matched] == [rule_name]
        assert outcome.severity == severity

    def test_alert_severity_takes_one_or_a_list(self, tmp_path: Path) -> None:
        """`alert_severity` names one severity or a list of them."""
        one, many = load_text(tmp_path, """
rules:
  - name: critical only
    when: {alert_severity: critical}
    page: [incident_lead]
    continue: true
  - name: quiet ones
    when: {alert_severity: [info, warning]}
    page: [incident_lead]
""")
        assert one.when.alert_severity == ("critical",)
        assert many.when.alert_severity == ("info", "warning")
        assert many.conditions == 1

    def test_unknown_alert_severity_is_refused(self, tmp_path: Path) -> None:
        """A severity the alerts are never mapped to is refused, each at its own place, with
        the nearest known one; maps or not."""
        path = tmp_path / "rules.yaml"
        path.write_text("""rules:
  - name: quiet ones
    when:
      alert_severity: [warnig, CRITICAL, page, info]
    page: [incident_lead]
  - name: numbers
    when: {alert_severity: 3}
    page: [incident_lead]
""", encoding="utf-8")
        rules, problems = load_rules([path], TARGETS)
        assert rules == ()
        known = "not one of info, warning, error, critical, which alert severities are mapped to"
        assert [str(p) for p in problems] == [
            f"{path}:4: rules[0].when.alert_severity[0]: {known}: the rule would never "
            "match; did you mean 'warning'? (got 'warnig')",
            f"{path}:4: rules[0].when.alert_severity[1]: {known}: the rule would never "
            "match; did you mean 'critical'? (got 'CRITICAL')",
            f"{path}:4: rules[0].when.alert_severity[2]: {known}: the rule would never "
            "match (got 'page')",
            f"{path}:7: rules[1].when.alert_severity: must be a name or a list of names "
            "(got 3)",
        ]

    @pytest.mark.parametrize(("name", "expected"), [
        ("invalid_regex.yaml",
         "4: rules[0].match: invalid regular expression: missing ), unterminated subpattern "
         """at position 0 (got 'service=~"(postgres|mysql"')"""),
        ("unknown_role.yaml", "4: rules[0].page[1]: unknown role or target (got 'the_boss')"),
        ("role_misspelt.yaml", "4: rules[0].page[0]: unknown role or target; did you mean "
         "'service_lead'? (got 'service_laed')"),
        ("unknown_key.yaml",
         "4: rules[0].matches: unknown key; did you mean 'match'? (got 'matches')"),
        ("bad_list_matcher.yaml",
         "6: rules[0].match[1]: expected label=\"value\" with one of = != =~ !~ "
         "(got 'service')"),
    ])
    def test_one_problem(self, name: str, expected: str) -> None:
        """Each bad file yields exactly its one problem, located and named."""
        _, problems = load_rules([BAD_RULES / name], TARGETS)
        assert [str(p) for p in problems] == [f"{BAD_RULES / name}:{expected}"]

    def test_unreachable_rule(self) -> None:
        """A rule after a catch-all without `continue` is reported as unreachable."""
        file = BAD_RULES / "unreachable_rule.yaml"
        _, problems = load_rules([file], TARGETS)
        assert [str(p) for p in problems] == [
            f"{file}:5: rules[1]: can never match: rule 'everyone' at {file}:3 catches every "
            "alert without 'continue: true' (got 'databases')"
        ]

    def test_duplicate_name(self) -> None:
        """Two rules with one name are reported at the second, naming the first."""
        file = BAD_RULES / "duplicate_name.yaml"
        _, problems = load_rules([file], TARGETS)
        assert [str(p) for p in problems] == [
            f"{file}:6: rules[1].name: duplicate rule name, first at {file}:3 "
            "(got 'critical alerts')"
        ]

    def test_target_may_be_paged_directly(self, tmp_path: Path) -> None:
        """A rule may page a target by name instead of a role."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: dba direct
    page: [dba-oncall]
""")
        assert loaded.page == ("dba-oncall",)

    def test_bad_when_and_severity_reported_together(self, tmp_path: Path) -> None:
        """Every problem of a rule is reported at once, each at its own line, sorted."""
        path = tmp_path / "rules.yaml"
        path.write_text("""rules:
  - name: loud
    when: {tier_at_most: 1.0, colour: red}
    page: [incident_lead]
    severity: urgent
    continue: maybe
""", encoding="utf-8")
        _, problems = load_rules([path], TARGETS)
        assert str(ConfigError(problems)).splitlines() == [
            f"{path}:3: rules[0].when.colour: unknown condition (got 'colour')",
            f"{path}:3: rules[0].when.tier_at_most: must be 1, 2, 3 or 4 (got 1.0)",
            f"{path}:5: rules[0].severity: must be one of info, warning, error, critical "
            "(got 'urgent')",
            f"{path}:6: rules[0].continue: must be true or false (got 'maybe')",
        ]

    def test_severity_and_floor_together_are_refused(self, tmp_path: Path) -> None:
        """A rule that fixes its severity and also gives a floor is refused, naming both
        keys, at the floor's line: the fixed severity wins, so the floor would be silently
        ignored (a page at warning under a floor of error)."""
        path = tmp_path / "rules.yaml"
        path.write_text("""rules:
  - name: databases
    match: {team: db}
    severity: warning
    severity_floor: error
    page: [incident_lead]
""", encoding="utf-8")
        rules, problems = load_rules([path], TARGETS)
        assert rules == ()
        assert [str(p) for p in problems] == [
            f"{path}:5: rules[0].severity_floor: not allowed next to 'severity: warning', "
            "which fixes the severity and would ignore the floor; give one or the other "
            "(got 'error')"
        ]

    def test_severity_and_floor_in_two_rules_are_allowed(self, tmp_path: Path) -> None:
        """A floor in one rule and a fixed severity in another is no contradiction: each
        rule says one thing (`evaluate` decides between them)."""
        loaded = load_text(tmp_path, """
rules:
  - name: databases are loud
    match: {team: db}
    severity_floor: error
    page: [incident_lead]
    continue: true
  - name: batch is quiet
    when: {component: batch}
    severity: warning
    page: [technical_lead]
""")
        assert [(r.severity, r.severity_floor) for r in loaded] == [
            (None, "error"), ("warning", None)]

    def test_misspelt_condition_suggests_the_known_one(self, tmp_path: Path) -> None:
        """An unknown `when` condition close to a known one says which, as keys do."""
        path = tmp_path / "rules.yaml"
        path.write_text("rules:\n  - name: top tier\n    when: {tier_at_mots: 1}\n"
                        "    page: [incident_lead]\n", encoding="utf-8")
        _, problems = load_rules([path], TARGETS)
        assert [str(p) for p in problems] == [
            f"{path}:3: rules[0].when.tier_at_mots: unknown condition; did you mean "
            "'tier_at_most'? (got 'tier_at_mots')"
        ]

    def test_missing_path(self, tmp_path: Path) -> None:
        """A rules path that does not exist is reported once."""
        missing = tmp_path / "nope"
        _, problems = load_rules([missing], TARGETS)
        assert [str(p) for p in problems] == [f"{missing}: no such file or directory"]


class TestMisses:
    """check and evaluate: every failed condition, the closest misses, the rules not reached."""

    def test_conditions_are_counted(self) -> None:
        """Each matcher and each `when` condition counts as one condition."""
        assert rule("r").conditions == 0
        assert rule("r", match='env="prod"').conditions == 1
        assert rule("r", match='env="prod"',
                    when=When(tier_at_most=1, component=("dbms",), mapped=True)).conditions == 4
        assert rule("r", when=When(component=("batch",),
                                   alert_severity=("info", "warning"))).conditions == 2

    def test_every_failed_condition_is_reported(self, graph: ServiceGraph) -> None:
        """A miss lists every condition that failed, in order, not only the first."""
        verdict = check(rule("r", match='env="prod"', when=When(tier_at_most=1,
                                                                component=("batch",))),
                        subject(graph, "db"))
        assert verdict.failures == ('env="prod" failed (env unset)',
                                    "component is dbms, needs one of ['batch']")
        assert verdict.reason == ("env=\"prod\" failed (env unset); "
                                  "component is dbms, needs one of ['batch']")
        assert not verdict.closest_miss

    def test_one_failed_condition_is_a_closest_miss(self, graph: ServiceGraph) -> None:
        """A rule that failed on exactly one of its conditions is a closest miss."""
        verdict = check(rule("r", match='severity="critical"', when=When(component=("dbms",))),
                        subject(graph, "db", severity="warning"))
        assert verdict.failures == ('severity="critical" failed (severity="warning")',)
        assert verdict.closest_miss

    def test_a_match_is_no_miss(self, graph: ServiceGraph) -> None:
        """A matching rule has no failures and is not a closest miss."""
        verdict = check(rule("r", when=When(component=("dbms",))), subject(graph, "db"))
        assert (verdict.matched, verdict.failures, verdict.closest_miss) == (True, (), False)

    def test_rules_after_the_stop_are_unreached(self, graph: ServiceGraph) -> None:
        """The rules after a match without `continue` are listed as not reached, unchecked."""
        rules = [
            rule("miss", match='env="prod"', page=("business_line",)),
            rule("stops", page=("technical_lead",)),
            rule("after", page=("incident_lead",)),
            rule("also after", match='env="prod"', page=("service_lead",)),
        ]
        outcome = evaluate(rules, subject(graph, "db"), "error")
        assert [v.rule.name for v in outcome.verdicts] == ["miss", "stops"]
        assert [r.name for r in outcome.unreached] == ["after", "also after"]

    def test_nothing_unreached_without_a_stop(self, graph: ServiceGraph) -> None:
        """When no rule stops the walk, every rule is checked and none is unreached."""
        outcome = evaluate([rule("a", match='env="prod"'), rule("b", cont=True)],
                           subject(graph, "db"), "error")
        assert outcome.unreached == ()


class TestMapCrossReferences:
    """load_rules with the maps' names: a condition naming what no map has is a problem."""

    KNOWN = MapNames(frozenset({"online-checkout", "customer-login"}),
                     frozenset({"application", "dbms", "batch"}))

    def load(self, tmp_path: Path, text: str) -> tuple[Path, list[str]]:
        path = tmp_path / "rules.yaml"
        path.write_text(text, encoding="utf-8")
        _, problems = load_rules([path], TARGETS, self.KNOWN)
        return path, [str(p) for p in ConfigError(problems).problems]

    def test_unknown_business_service(self, tmp_path: Path) -> None:
        """A misspelt business service is reported at its line, with the closest known name."""
        path, problems = self.load(tmp_path, """rules:
  - name: checkout
    when:
      business_service: online-chekout
    page: [service_lead]
""")
        assert problems == [
            f"{path}:4: rules[0].when.business_service: no dependency map has this business "
            "service: the rule would never match; did you mean 'online-checkout'? "
            "(got 'online-chekout')",
        ]

    def test_unknown_component_in_a_list(self, tmp_path: Path) -> None:
        """In a list, each unknown component is reported at its own item and index."""
        path, problems = self.load(tmp_path, """rules:
  - name: storage
    when:
      component:
        - dbms
        - dbs
        - mainframe
    page: [technical_lead]
""")
        assert problems == [
            f"{path}:6: rules[0].when.component[1]: no service of the dependency maps has this "
            "component: the rule would never match; did you mean 'dbms'? (got 'dbs')",
            f"{path}:7: rules[0].when.component[2]: no service of the dependency maps has this "
            "component: the rule would never match (got 'mainframe')",
        ]

    def test_every_rule_is_checked(self, tmp_path: Path) -> None:
        """Problems in several rules are all reported, sorted by line."""
        path, problems = self.load(tmp_path, """rules:
  - name: a
    when: {component: network}
    page: [technical_lead]
    continue: true
  - name: b
    when: {business_service: [customer-login, search]}
    page: [service_lead]
""")
        assert problems == [
            f"{path}:3: rules[0].when.component: no service of the dependency maps has this "
            "component: the rule would never match (got 'network')",
            f"{path}:7: rules[1].when.business_service[1]: no dependency map has this "
            "business service: the rule would never match (got 'search')",
        ]

    def test_known_names_pass(self, tmp_path: Path) -> None:
        """Names the maps define load without a problem."""
        _, problems = self.load(tmp_path, """rules:
  - name: ok
    when: {component: [dbms, batch], business_service: online-checkout}
    page: [technical_lead]
""")
        assert problems == []

    def test_without_names_nothing_is_checked(self, tmp_path: Path) -> None:
        """Without the maps' names (as when the maps failed), any name loads."""
        (loaded,) = load_text(tmp_path, """rules:
  - name: anything
    when: {component: mainframe, business_service: nowhere}
    page: [technical_lead]
""")
        assert loaded.when == When(business_service=("nowhere",), component=("mainframe",))

    def test_names_of_services(self) -> None:
        """MapNames.of collects the business services and components of services."""
        names = MapNames.of([service("db", 2, "dbms"),
                             service("api", 1, "application", business="online-checkout")])
        assert names == MapNames(frozenset({"online-checkout"}),
                                 frozenset({"dbms", "application"}))


class TestExplainMisses:
    """`firehouse explain` says why each rule missed and marks the closest misses.

    (Here rather than in test_cli.py, which another change is editing at the same time.)
    """

    RULES = """rules:
  - name: unmapped
    when: {mapped: false}
    page: [incident_lead]
  - name: critical database alerts
    match: 'severity="critical"'
    when: {component: dbms}
    page: [senior_management]
  - name: production batch
    match: 'env="prod"'
    when: {component: batch, tier_at_most: 1}
    page: [business_line]
  - name: databases
    when: {component: dbms}
    page: [technical_lead, incident_lead]
  - name: everyone else
    page: [incident_lead]
"""

    @pytest.fixture
    def settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        """The shipped settings and maps with the rules above, and no FIREHOUSE_* variables."""
        for name in list(os.environ):
            if name.startswith("FIREHOUSE_"):
                monkeypatch.delenv(name)
        rules = tmp_path / "rules.yaml"
        rules.write_text(self.RULES, encoding="utf-8")
        return write_settings(tmp_path, rules=[str(rules)])

    def test_text(self, settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Each miss gives every failed condition and the count; one failure of several marks
        it closest."""
        assert main(["explain", str(EXAMPLE), "--config", str(settings)]) == 0
        out = capsys.readouterr().out.splitlines()
        rules = [line for line in out if line.startswith(("  rule ", "  severity"))]
        assert rules == [
            "  rule miss  'unmapped': service is mapped  [1 of 1 condition failed]",
            "  rule miss  'critical database alerts': severity=\"critical\" failed "
            "(severity=\"warning\")  [closest miss: 1 of 2 conditions failed]",
            "  rule miss  'production batch': env=\"prod\" failed (env unset); component is "
            "dbms, needs one of ['batch']  [2 of 3 conditions failed]",
            "  rule MATCH 'databases': matched",
            "  rule skip  'everyone else': not reached: 'databases' matched without "
            "'continue: true'",
            "  severity: critical; roles: technical_lead, incident_lead",
        ]

    def test_json(self, settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The JSON format carries the same: failed conditions, counts, closest, reached."""
        assert main(["explain", str(EXAMPLE), "--format", "json", "--config",
                     str(settings)]) == 0
        (alert,) = json.loads(capsys.readouterr().out)["alerts"]
        assert alert["rules"] == [
            {"rule": "unmapped", "matched": False, "reason": "service is mapped",
             "reached": True, "conditions": 1, "failed": ["service is mapped"],
             "closest_miss": False},
            {"rule": "critical database alerts", "matched": False,
             "reason": 'severity="critical" failed (severity="warning")', "reached": True,
             "conditions": 2, "failed": ['severity="critical" failed (severity="warning")'],
             "closest_miss": True},
            {"rule": "production batch", "matched": False,
             "reason": "env=\"prod\" failed (env unset); component is dbms, needs one of "
                       "['batch']",
             "reached": True, "conditions": 3,
             "failed": ['env="prod" failed (env unset)',
                        "component is dbms, needs one of ['batch']"],
             "closest_miss": False},
            {"rule": "databases", "matched": True, "reason": "matched", "reached": True,
             "conditions": 1, "failed": [], "closest_miss": False},
            {"rule": "everyone else", "matched": False,
             "reason": "not reached: 'databases' matched without 'continue: true'",
             "reached": False, "conditions": 0, "failed": [], "closest_miss": False},
        ]

    def test_default_rule_when_nothing_matches(self, tmp_path: Path,
                                               settings: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """With no match, every rule is a miss and the built-in default is shown matching."""
        (tmp_path / "rules.yaml").write_text("""rules:
  - name: critical only
    match: 'severity="critical"'
    page: [incident_lead]
""", encoding="utf-8")
        assert main(["explain", str(EXAMPLE), "--config", str(settings)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [line for line in out if line.startswith("  rule ")] == [
            "  rule miss  'critical only': severity=\"critical\" failed (severity=\"warning\")  "
            "[1 of 1 condition failed]",
            "  rule MATCH 'default: call the fire department first': no rule matched",
        ]


class TestParseDuration:
    """parse_duration and format_duration: Prometheus-style durations."""

    @pytest.mark.parametrize(("text", "seconds"), [
        ("30s", 30),
        ("15m", 900),
        ("4h", 4 * 3600),
        ("1d", 86400),
        ("1w", 7 * 86400),
        ("1h30m", 5400),
        ("1d12h", 36 * 3600),
        ("2h0m5s", 7205),
        (" 15m ", 900),
    ])
    def test_good(self, text: str, seconds: int) -> None:
        """Each unit, and units combined largest first, add up to the seconds."""
        assert parse_duration(text) == timedelta(seconds=seconds)

    @pytest.mark.parametrize("text", [
        "", "15", "15 minutes", "1.5h", "-5m", "30m1h", "1h1h", "15M", "1y", "15ms", "m",
    ])
    def test_bad(self, text: str) -> None:
        """Anything but whole numbers with s, m, h, d, w, largest first, is refused."""
        with pytest.raises(ValueError, match=r"^not a duration such as 30s, 15m, 4h, 1d or "
                                             r"1h30m$"):
            parse_duration(text)

    @pytest.mark.parametrize("text", ["0s", "0h0m"])
    def test_zero(self, text: str) -> None:
        """A duration of nothing is no deadline."""
        with pytest.raises(ValueError, match=r"^must be longer than zero$"):
            parse_duration(text)

    @pytest.mark.parametrize("text", ["53w", "1000000w", "99999999999999999999d"])
    def test_longer_than_a_year(self, text: str) -> None:
        """A deadline past a year (one that would overflow the calendar) is refused."""
        with pytest.raises(ValueError, match=r"^must be at most 52w \(a year\)$"):
            parse_duration(text)

    def test_a_year_is_allowed(self) -> None:
        """52 weeks is the longest duration."""
        assert parse_duration("52w") == timedelta(weeks=52)

    @pytest.mark.parametrize(("seconds", "text"), [
        (30, "30s"), (900, "15m"), (5400, "1h30m"), (86400 + 60, "1d1m"), (14 * 86400, "2w"),
    ])
    def test_format_round_trips(self, seconds: int, text: str) -> None:
        """A duration is written back as a rule would give it, and parses to itself."""
        assert format_duration(timedelta(seconds=seconds)) == text
        assert parse_duration(text) == timedelta(seconds=seconds)

    def test_format_none(self) -> None:
        """No duration is written `(none)`."""
        assert format_duration(None) == "(none)"


class TestClockLoading:
    """load_rules: `clock` and `business_updates`, parsed strictly."""

    def test_parsed(self, tmp_path: Path) -> None:
        """A clock and a business-update interval are carried on the rule."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: timed
    page: [incident_lead]
    clock: {ack_within: 15m, resolve_within: 4h, escalate_to: [senior_management, dba-oncall]}
    business_updates: {every: 30m}
""")
        assert loaded.clock == Clock(timedelta(minutes=15), timedelta(hours=4),
                                     ("senior_management", "dba-oncall"))
        assert loaded.business_updates == timedelta(minutes=30)

    def test_one_deadline_is_enough(self, tmp_path: Path) -> None:
        """A clock may give one deadline and no escalation; absent ones are None."""
        (loaded,) = load_text(tmp_path, """
rules:
  - name: timed
    page: [incident_lead]
    clock: {resolve_within: 1d}
""")
        assert loaded.clock == Clock(None, timedelta(days=1), ())
        assert loaded.business_updates is None

    @pytest.mark.parametrize(("name", "expected"), [
        ("clock_bad_duration.yaml", "5: rules[0].clock.ack_within: not a duration such as "
         "30s, 15m, 4h, 1d or 1h30m (got '15 minutes')"),
        ("clock_zero_duration.yaml",
         "6: rules[0].clock.resolve_within: must be longer than zero (got '0s')"),
        ("clock_unknown_key.yaml",
         "7: rules[0].clock.acknowledge_within: unknown key; did you mean 'ack_within'? "
         "(got 'acknowledge_within')"),
        ("clock_without_deadline.yaml",
         "5: rules[0].clock: needs ack_within or resolve_within (or both)"),
        ("clock_unknown_escalation.yaml",
         "9: rules[0].clock.escalate_to[1]: unknown role or target (got 'the_boss')"),
        ("clock_escalation_misspelt.yaml", "7: rules[0].clock.escalate_to[0]: unknown role or "
         "target; did you mean 'senior_management'? (got 'senior_managment')"),
        ("clock_not_a_mapping.yaml", "5: rules[0].clock: must be a mapping of ack_within, "
         "resolve_within and escalate_to (got '15m')"),
        ("business_updates_bad.yaml", "5: rules[0].business_updates: must be a mapping with "
         "'every', such as {every: 30m} (got '30m')"),
        ("business_updates_unknown_key.yaml",
         "5: rules[0].business_updates.to: unknown key (got 'to')"),
        ("business_updates_bad_every.yaml", "6: rules[0].business_updates.every: not a "
         "duration such as 30s, 15m, 4h, 1d or 1h30m (got '2 hours')"),
    ])
    def test_one_problem(self, name: str, expected: str) -> None:
        """Each bad file yields exactly its one problem, located and named."""
        _, problems = load_rules([BAD_RULES / name], TARGETS)
        assert [str(p) for p in problems] == [f"{BAD_RULES / name}:{expected}"]

    def test_problems_reported_together(self, tmp_path: Path) -> None:
        """Every problem of a clock is reported at once, each at its own line."""
        path = tmp_path / "rules.yaml"
        path.write_text("""rules:
  - name: timed
    page: [incident_lead]
    clock:
      ack_within: 15
      resolve_within: 4 h
      escalate_to: []
""", encoding="utf-8")
        _, problems = load_rules([path], TARGETS)
        assert str(ConfigError(problems)).splitlines() == [
            f"{path}:5: rules[0].clock.ack_within: not a duration such as 30s, 15m, 4h, 1d "
            "or 1h30m (got 15)",
            f"{path}:6: rules[0].clock.resolve_within: not a duration such as 30s, 15m, 4h, "
            "1d or 1h30m (got '4 h')",
            f"{path}:7: rules[0].clock.escalate_to: must be a non-empty list of roles or "
            "targets (technical_lead, service_lead, incident_lead, senior_management, "
            "business_line, or a target name)",
        ]


class TestMergeClocks:
    """merge_clocks and evaluate: the tightest deadline of each kind wins, escalations unite."""

    def test_tightest_wins_and_escalations_unite(self) -> None:
        """Each deadline is the shortest given; escalate_to keeps first-mention order."""
        merged = merge_clocks([
            Clock(timedelta(minutes=15), timedelta(hours=4), ("senior_management",)),
            Clock(timedelta(minutes=5), None, ("incident_lead", "senior_management")),
            Clock(None, timedelta(hours=1), ()),
        ])
        assert merged == Clock(timedelta(minutes=5), timedelta(hours=1),
                               ("senior_management", "incident_lead"))

    def test_a_deadline_nobody_gives_stays_none(self) -> None:
        """A kind of deadline no clock gives is absent from the merge."""
        merged = merge_clocks([Clock(timedelta(minutes=15)), Clock(timedelta(minutes=30))])
        assert merged == Clock(timedelta(minutes=15), None, ())

    def test_no_clock(self) -> None:
        """No clock at all merges to None."""
        assert merge_clocks([]) is None

    def test_evaluate_merges_the_matched_rules_only(self, graph: ServiceGraph) -> None:
        """Only matched rules count: a continued rule's clock merges with the next match's,
        and a rule that missed adds nothing."""
        rules = [
            dataclasses.replace(rule("tier 1", when=When(tier_at_most=1), page=("service_lead",),
                                     cont=True),
                                clock=Clock(timedelta(minutes=5), timedelta(hours=1)),
                                business_updates=timedelta(minutes=30)),
            dataclasses.replace(rule("batch", when=When(component=("batch",)),
                                     page=("technical_lead",)),
                                clock=Clock(timedelta(seconds=30), None, ("business_line",)),
                                business_updates=timedelta(minutes=1)),
            dataclasses.replace(rule("default", page=("technical_lead",)),
                                clock=Clock(timedelta(minutes=15), timedelta(hours=4),
                                            ("senior_management",)),
                                business_updates=timedelta(hours=1)),
        ]
        outcome = evaluate(rules, subject(graph, "db"), "critical")
        assert [r.name for r in outcome.matched] == ["tier 1", "default"]
        assert outcome.clock == Clock(timedelta(minutes=5), timedelta(hours=1),
                                      ("senior_management",))
        assert outcome.business_updates == timedelta(minutes=30)

    def test_evaluate_without_clocks(self, graph: ServiceGraph) -> None:
        """Matched rules without a clock give the outcome none."""
        outcome = evaluate([rule("all", page=("incident_lead",))], subject(graph, "db"),
                           "critical")
        assert outcome.clock is None
        assert outcome.business_updates is None
