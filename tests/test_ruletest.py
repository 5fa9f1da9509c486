"""Tests of daemon.ruletest and `firehouse test`: loading, running and reporting rule tests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import Config
from daemon.rules import Clock, rule_files
from daemon.ruletest import (
    DEFAULT_AT,
    Paged,
    RuleTest,
    format_report,
    load_tests,
    run_test,
)
from tests.helpers import make_config, write_settings

ROOT = Path(__file__).parent.parent
SETTINGS = ROOT / "firehouse.yml"
SHIPPED = ROOT / "rules" / "tests" / "example.yaml"
BAD = Path(__file__).parent / "testdata" / "ruletests"
WRONG = BAD / "wrong_expectations.yaml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every command without FIREHOUSE_* variables from the machine."""
    for name in list(os.environ):
        if name.startswith("FIREHOUSE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def config() -> Config:
    """The shipped settings, maps and rules, in dry-run."""
    return make_config(dry_run=True)


def load_one(tmp_path: Path, text: str, config: Config | None) -> tuple[list[RuleTest], list[str]]:
    """Load a test file written from `text`; the tests and the problems as text."""
    path = tmp_path / "tests.yaml"
    path.write_text(text, encoding="utf-8")
    tests, problems = load_tests([path], config)
    return tests, [str(p).removeprefix(f"{path}:") for p in problems]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `firehouse ARGV` in this process; exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class TestRuleFiles:
    def test_rule_tests_are_not_rules(self, config: Config) -> None:
        """The rules directory's tests/ subdirectory is not read as rules."""
        assert rule_files([ROOT / "rules"]) == [ROOT / "rules" / "00-example.yaml"]
        assert len(config.rules) == 5
        assert all(r.source.startswith(f"{ROOT / 'rules' / '00-example.yaml'}:")
                   for r in config.rules)


class TestLoadTests:
    def test_shipped_tests_load(self, config: Config) -> None:
        """The shipped test file loads without a problem, every test with its steps."""
        tests, problems = load_tests([SHIPPED], config)
        assert problems == []
        assert len(tests) == 15
        assert tests[0].name == "database warning pages the checkout service lead at critical"
        assert [len(t.steps) for t in tests] == [1] * 14 + [4]

    def test_directory_gives_its_files(self, config: Config) -> None:
        """A directory stands for the *.yaml and *.yml files directly in it."""
        tests, problems = load_tests([SHIPPED.parent], config)
        assert problems == []
        assert {t.file for t in tests} == {str(SHIPPED)}

    def test_one_step_form(self, tmp_path: Path, config: Config) -> None:
        """A test without steps is one step at the default time, its alerts one webhook."""
        (test,), problems = load_one(tmp_path, """tests:
  - name: lag
    alerts:
      - labels: {alertname: Lag, service: postgres-payments, attempt: 3}
        annotations: {summary: lagging}
        startsAt: 2025-12-31T23:00:00+01:00
    expect:
      pages:
        - {target: dba-oncall, roles: [technical_lead], severity: critical}
""", config)
        assert problems == []
        (step,) = test.steps
        assert step.at == DEFAULT_AT
        assert step.line == 2
        (alert,) = step.webhook.alerts
        assert dict(alert.labels) == {"alertname": "Lag", "service": "postgres-payments",
                                      "attempt": "3"}
        assert dict(alert.annotations) == {"summary": "lagging"}
        assert alert.status == "firing"
        assert alert.starts_at == datetime(2025, 12, 31, 22, tzinfo=UTC)
        assert step.pages == (Paged("dba-oncall", ("technical_lead",), "critical"),)
        assert step.resolves == ()
        assert step.rules is None

    def test_steps_default_to_a_minute_apart(self, tmp_path: Path, config: Config) -> None:
        """A step without `at` comes a minute after the previous one."""
        (test,), problems = load_one(tmp_path, """tests:
  - name: lag
    steps:
      - alerts: [{labels: {alertname: Lag}}]
        expect: {pages: []}
      - at: "2026-03-01T10:00:00Z"
        alerts: [{labels: {alertname: Lag}, status: resolved}]
        expect: {resolves: [dba-oncall]}
      - alerts: [{labels: {alertname: Lag}}]
        expect: {pages: []}
""", config)
        assert problems == []
        assert [s.at for s in test.steps] == [
            DEFAULT_AT, datetime(2026, 3, 1, 10, tzinfo=UTC),
            datetime(2026, 3, 1, 10, 1, tzinfo=UTC)]
        assert [s.line for s in test.steps] == [4, 6, 9]
        assert test.steps[1].resolves == ("dba-oncall",)

    def test_roles_imply_the_command_center_targets(self, tmp_path: Path,
                                                    config: Config) -> None:
        """A page on the incident lead or senior management takes its target from the
        settings' roles."""
        (test,), problems = load_one(tmp_path, """tests:
  - name: network
    alerts: [{labels: {alertname: Down, service: dns}}]
    expect:
      pages:
        - {roles: [incident_lead], severity: critical}
        - {roles: [senior_management], severity: critical}
""", config)
        assert problems == []
        assert test.steps[0].pages == (
            Paged("command-center", ("incident_lead",), "critical"),
            Paged("ops-management", ("senior_management",), "critical"),
        )

    def test_roles_implying_two_targets(self, tmp_path: Path, config: Config) -> None:
        """Roles that the settings give to different targets need an explicit target."""
        _, problems = load_one(tmp_path, """tests:
  - name: both
    alerts: [{labels: {alertname: Down}}]
    expect:
      pages:
        - {roles: [incident_lead, senior_management], severity: critical}
""", config)
        assert problems == ["6: tests[0].expect.pages[0].target: missing, and the roles imply "
                            "several: command-center, ops-management"]

    def test_role_without_a_target_in_the_settings(self, tmp_path: Path) -> None:
        """A role the settings map to no target cannot imply one."""
        settings = write_settings(tmp_path, roles={"incident_lead": "command-center"})
        config = make_config(settings, dry_run=True)
        _, problems = load_one(tmp_path, """tests:
  - name: management
    alerts: [{labels: {alertname: Down}}]
    expect:
      pages:
        - {roles: [senior_management], severity: critical}
""", config)
        assert problems == ["6: tests[0].expect.pages[0].target: missing, and the settings' "
                            "roles give senior_management no target"]

    def test_a_target_may_be_paged_as_itself(self, tmp_path: Path, config: Config) -> None:
        """A rule may page a target by name, so a target name is a role a page can have."""
        (test,), problems = load_one(tmp_path, """tests:
  - name: direct
    alerts: [{labels: {alertname: Down}}]
    expect:
      pages: [{target: dba-oncall, roles: [dba-oncall], severity: info}]
""", config)
        assert problems == []
        assert test.steps[0].pages == (Paged("dba-oncall", ("dba-oncall",), "info"),)

    def test_names_are_not_checked_without_a_configuration(self, tmp_path: Path) -> None:
        """Without a loaded configuration, only the file's structure is checked."""
        tests, problems = load_one(tmp_path, """tests:
  - name: unknown names
    alerts: [{labels: {alertname: Down}}]
    expect:
      pages: [{target: nobody, roles: [nobody], severity: info}]
      rules: [no such rule]
""", None)
        assert problems == []
        assert tests[0].steps[0].rules == ("no such rule",)

    def test_empty_directory(self, tmp_path: Path, config: Config) -> None:
        """A directory without test files is a problem, not a silent success."""
        tests, problems = load_tests([tmp_path], config)
        assert tests == []
        assert [str(p) for p in problems] == [f"{tmp_path}: no *.yaml or *.yml test files"]

    @pytest.mark.parametrize(("name", "expected"), [
        ("unknown_key.yaml", "5: tests[0].alerts[0].annotation: unknown key; did you mean "
                             "'annotations'? (got 'annotation')"),
        ("bad_severity.yaml", "7: tests[0].expect.pages[0].severity: must be one of critical, "
                              "error, warning, info (got 'high')"),
        ("unknown_target.yaml",
         "7: tests[0].expect.pages[0].target: unknown target; did you mean 'dba-oncall'? "
         "(got 'dba-on-call')"),
        ("unknown_role.yaml",
         "7: tests[0].expect.pages[0].roles[0]: unknown role or target; "
         "did you mean 'technical_lead'? (got 'tech_lead')"),
        ("unknown_rule.yaml",
         "9: tests[0].expect.rules[1]: unknown rule; did you mean 'call the fire department "
         "first'? (got 'call the fire brigade first')"),
        ("target_not_implied.yaml",
         "7: tests[0].expect.pages[0].target: missing: only incident_lead, senior_management, "
         "business_line imply their target"),
        ("time_without_zone.yaml",
         "3: tests[0].at: must be an RFC 3339 time with a zone, such as 2026-01-01T00:00:00Z "
         "(got '2026-01-01 02:00:00')"),
        ("bad_status.yaml",
         "5: tests[0].alerts[0].status: must be firing or resolved (got 'pending')"),
        ("label_not_a_string.yaml",
         "4: tests[0].alerts[0].labels.canary: must be a string (got True)"),
        ("steps_and_alerts.yaml",
         "3: tests[0].alerts: not allowed next to 'steps': give it in each step"),
        ("missing_expect.yaml",
         "2: tests[0].expect: missing: the pages expected ('expect: {pages: []}' for none)"),
        ("duplicate_name.yaml",
         f"6: tests[1].name: duplicate test name, first at {BAD / 'duplicate_name.yaml'}:2 "
         "(got 'lag')"),
        ("no_tests.yaml",
         "2: tests: a test file must be a mapping with a non-empty 'tests' list"),
        ("invalid_yaml.yaml", "5: invalid YAML: did not find expected ',' or '}'"),
    ])
    def test_one_problem(self, name: str, expected: str, config: Config) -> None:
        """Each malformed file yields exactly its one problem, located and named."""
        _, problems = load_tests([BAD / name], config)
        assert [str(p) for p in problems] == [f"{BAD / name}:{expected}"]

    def test_typos_suggest_the_known_name(self, tmp_path: Path, config: Config) -> None:
        """A misspelt key, target or rule names the one it most looks like, as settings and
        rules do; a name like none of them gets no suggestion."""
        _, problems = load_one(tmp_path, """tests:
  - name: typos
    alerts: [{labels: {alertname: Lag, service: postgres-payments}}]
    expect:
      pagse: []
      pages: [{target: dba-oncal, roles: [technical_lead], severity: critical}]
      resolves: [checkout-ownr, nobody-at-all]
      rules: [call the fire departement first]
""", config)
        assert problems == [
            "5: tests[0].expect.pagse: unknown key; did you mean 'pages'? (got 'pagse')",
            "6: tests[0].expect.pages[0].target: unknown target; did you mean 'dba-oncall'? "
            "(got 'dba-oncal')",
            "7: tests[0].expect.resolves[0]: unknown target; did you mean 'checkout-owner'? "
            "(got 'checkout-ownr')",
            "7: tests[0].expect.resolves[1]: unknown target (got 'nobody-at-all')",
            "8: tests[0].expect.rules[0]: unknown rule; did you mean 'call the fire "
            "department first'? (got 'call the fire departement first')",
        ]

    def test_every_problem_at_once(self, config: Config) -> None:
        """All the problems of a file are reported together, each at its own line."""
        file = BAD / "several_problems.yaml"
        _, problems = load_tests([file], config)
        assert [str(p).removeprefix(f"{file}:") for p in sorted(problems)] == [
            "4: tests[0].steps[0].at: must be an RFC 3339 time with a zone, such as "
            "2026-01-01T00:00:00Z (got 'yesterday')",
            "6: tests[0].steps[0].alerts[0].labels: must be a non-empty mapping of names to "
            "values",
            "9: tests[0].steps[0].expect.pages[0].roles: must be a non-empty list of roles "
            "(technical_lead, service_lead, incident_lead, senior_management, business_line) "
            "or target names (got 'technical_lead')",
            "10: tests[0].steps[0].expect.resolves[0]: unknown target (got 'nobody')",
            "11: tests[0].steps[0].expect.resolved: unknown key; did you mean 'resolves'? "
            "(got 'resolved')",
            "12: tests[0].steps[1].alerts: must be a non-empty list of alerts ({labels, "
            "annotations, status, startsAt})",
        ]

    def test_every_shape_is_checked(self, config: Config) -> None:
        """A value of the wrong shape anywhere is reported, and the rest still checked."""
        file = BAD / "wrong_shapes.yaml"
        _, problems = load_tests([file], config)
        assert [str(p).removeprefix(f"{file}:") for p in sorted(problems)] == [
            "2: tests[0]: must be a mapping with 'name', and 'alerts' and 'expect' or 'steps' "
            "(got 'just a string')",
            "4: tests[1].steps: must be a non-empty list of {at, alerts, expect} "
            "(got {'alerts': []})",
            "7: tests[2].steps[0]: must be a mapping with 'alerts' and 'expect' (got 'alerts')",
            "10: tests[3].alerts[0]: must be a mapping with 'labels' (got ['alertname', 'Lag'])",
            "11: tests[3].expect: must be a mapping of pages, resolves and rules "
            "(got ['pages'])",
            "15: tests[4].alerts[0].annotations: must be a mapping of names to values "
            "(got ['summary'])",
            "18: tests[4].expect.pages[0]: must be a mapping of target, roles and severity "
            "(got 'dba-oncall')",
            "19: tests[4].expect.pages[1].roles[1]: listed twice (got 'technical_lead')",
            "20: tests[4].expect.resolves: must be a list (got 'dba-oncall')",
        ]


class TestRunTest:
    def test_shipped_tests_pass(self, config: Config) -> None:
        """Every shipped test of the example rules passes on the example shop."""
        tests, _ = load_tests([SHIPPED], config)
        failed = [(r.test.name, r.steps) for r in (run_test(t, config) for t in tests)
                  if not r.passed]
        assert failed == []

    def test_wrong_expectations_fail_with_their_differences(self, config: Config) -> None:
        """Each wrong expectation is one difference; alerts are explained only in failures."""
        tests, _ = load_tests([WRONG], config)
        results = [run_test(t, config) for t in tests]
        assert [r.passed for r in results] == [True, False, False, False]
        assert [s.differences for s in results[2].steps] == [(), (), (
            "missing resolve     dba-oncall",
            "unexpected resolve  command-center",
        )]
        assert results[2].steps[1].handled == (
            "alert               Mystery on legacy-ftp (unmapped): resolved",
        )
        # The clock resolved the incident when the step's time came; the repeated
        # resolution itself changed nothing.
        assert results[2].steps[2].handled == (
            "alert               Mystery on legacy-ftp (unmapped): already resolved",
        )

    def test_roles_are_order_free(self, tmp_path: Path, config: Config) -> None:
        """Roles listed in another order than the engine's still match."""
        tests, _ = load_one(tmp_path, """tests:
  - name: direct
    alerts: [{labels: {alertname: Down, service: nightly-reports, severity: critical}}]
    expect:
      pages:
        - {target: data-oncall, roles: [technical_lead], severity: critical}
        - {target: command-center, roles: [incident_lead], severity: critical}
""", config)
        assert run_test(tests[0], config).passed

    def test_same_target_twice(self, tmp_path: Path, config: Config) -> None:
        """Two incidents paging one target must be expected twice."""
        tests, _ = load_one(tmp_path, """tests:
  - name: two unmapped alerts
    alerts:
      - labels: {alertname: DiskFilling, service: legacy-ftp, severity: warning}
      - labels: {alertname: DiskFilling, service: mystery-box, severity: warning}
    expect:
      pages:
        - {target: command-center, roles: [incident_lead], severity: warning}
""", config)
        (report,) = run_test(tests[0], config).steps
        assert report.differences == (
            "unexpected page     command-center as incident_lead at warning",
        )

    def test_related_alerts_are_one_incident(self, tmp_path: Path, config: Config) -> None:
        """Two alerts on one service are one fire: its team is expected once."""
        tests, _ = load_one(tmp_path, """tests:
  - name: two reports
    alerts:
      - labels: {alertname: ReportLate, service: nightly-reports, severity: warning}
      - labels: {alertname: ReportFailed, service: nightly-reports, severity: warning}
    expect:
      pages:
        - {target: data-oncall, roles: [technical_lead], severity: warning}
""", config)
        assert run_test(tests[0], config).passed

    def test_the_clock_runs_before_each_step(self, tmp_path: Path, config: Config) -> None:
        """A step after a missed deadline sees its escalation, as production would."""
        tests, _ = load_one(tmp_path, """tests:
  - name: unacknowledged
    steps:
      - alerts: [{labels: {alertname: DiskFilling, service: legacy-ftp, severity: warning}}]
        expect:
          pages: [{roles: [incident_lead], severity: warning}]
      - at: 2026-01-01T00:29:00Z
        alerts: [{labels: {alertname: DiskFilling, service: legacy-ftp, severity: warning}}]
        expect: {pages: []}
      - at: 2026-01-01T00:30:00Z
        alerts: [{labels: {alertname: DiskFilling, service: legacy-ftp, severity: warning}}]
        expect:
          pages: [{roles: [senior_management], severity: warning}]
""", config)
        result = run_test(tests[0], config)
        assert [s.differences for s in result.steps] == [(), (), ()]


class TestClockExpectations:
    """`expect.clock` and `expect.business_updates`: parsed strictly, compared when given."""

    WRONG_CLOCK = BAD / "wrong_clock.yaml"

    def test_parsed(self, config: Config) -> None:
        """The expected clock and interval are carried on the step; absent, they are None."""
        tests, problems = load_tests([self.WRONG_CLOCK], config)
        assert problems == []
        (right,) = tests[0].steps
        assert right.clock == Clock(timedelta(minutes=5), timedelta(hours=1),
                                    ("senior_management",))
        assert right.business_updates == timedelta(minutes=30)
        (none,) = tests[2].steps
        assert none.clock == Clock()
        shipped, _ = load_tests([SHIPPED], config)
        assert shipped[1].steps[0].clock is None
        assert shipped[1].steps[0].business_updates is None

    @pytest.mark.parametrize(("name", "expected"), [
        ("clock_bad_duration.yaml", "6: tests[0].expect.clock.ack_within: not a duration such "
         "as 30s, 15m, 4h, 1d or 1h30m (got '5 min')"),
        ("clock_unknown_key.yaml",
         "8: tests[0].expect.clock.escalate_after: unknown key; did you mean "
         "'escalate_to'? (got 'escalate_after')"),
        ("clock_unknown_escalation.yaml",
         "6: tests[0].expect.clock.escalate_to[0]: unknown role or target (got 'the_board')"),
        ("business_updates_bad.yaml", "6: tests[0].expect.business_updates: not a duration "
         "such as 30s, 15m, 4h, 1d or 1h30m (got {'every': '30m'})"),
    ])
    def test_one_problem(self, name: str, expected: str, config: Config) -> None:
        """Each malformed expectation yields exactly its one problem, located and named."""
        _, problems = load_tests([BAD / name], config)
        assert [str(p) for p in problems] == [f"{BAD / name}:{expected}"]

    def test_differences(self, config: Config) -> None:
        """A right clock passes; each wrong deadline, escalation and interval is one line."""
        tests, _ = load_tests([self.WRONG_CLOCK], config)
        results = [run_test(t, config) for t in tests]
        assert [r.passed for r in results] == [True, False, False]
        assert results[1].steps[0].differences == (
            "wrong clock         PostgresReplicationLag: ack within 5m, expected 15m",
            "wrong clock         PostgresReplicationLag: escalate to senior_management, "
            "expected senior_management, incident_lead",
            "wrong updates       PostgresReplicationLag: business updates every 30m, "
            "expected 1h",
        )
        assert results[2].steps[0].differences == (
            "wrong clock         NightlyReportLate: ack within 4h, expected (none)",
            "wrong clock         NightlyReportLate: escalate to incident_lead, expected "
            "(nobody)",
            "wrong updates       NightlyReportLate: business updates every (none), "
            "expected 30m",
        )

    def test_escalations_are_order_free(self, tmp_path: Path, config: Config) -> None:
        """escalate_to listed in another order than the engine's still matches."""
        tests, _ = load_one(tmp_path, """tests:
  - name: network
    alerts: [{labels: {alertname: SwitchPortErrors, job: snmp-core-switches}}]
    expect:
      pages:
        - {target: network-oncall, roles: [technical_lead], severity: critical}
        - {roles: [incident_lead], severity: critical}
        - {roles: [senior_management], severity: critical}
        - {target: checkout-owner, roles: [service_lead], severity: critical}
        - {target: login-owner, roles: [service_lead], severity: critical}
        - {target: search-owner, roles: [service_lead], severity: critical}
        - {roles: [business_line], severity: critical}
      clock: {resolve_within: 1h, ack_within: 5m, escalate_to: [senior_management]}
""", config)
        assert run_test(tests[0], config).passed

    def test_no_incident_opened(self, tmp_path: Path, config: Config) -> None:
        """A clock expected of a step that opens nothing is a difference, not a pass."""
        tests, _ = load_one(tmp_path, """tests:
  - name: resolved only
    alerts: [{labels: {alertname: Gone, service: cart}, status: resolved}]
    expect: {clock: {ack_within: 15m}}
""", config)
        (report,) = run_test(tests[0], config).steps
        assert report.differences == (
            "wrong clock         no incident opened, expected one with a clock",
        )

    def test_report(self, config: Config) -> None:
        """`firehouse test` prints the clock differences under the failing test."""
        tests, _ = load_tests([self.WRONG_CLOCK], config)
        lines = format_report([run_test(t, config) for t in tests])
        assert lines[:6] == [
            str(self.WRONG_CLOCK),
            "  PASS  right clock",
            "  FAIL  default deadlines expected where tier-1 tightens them "
            f"({self.WRONG_CLOCK}:15)",
            "      wrong clock         PostgresReplicationLag: ack within 5m, expected 15m",
            "      wrong clock         PostgresReplicationLag: escalate to senior_management, "
            "expected senior_management, incident_lead",
            "      wrong updates       PostgresReplicationLag: business updates every 30m, "
            "expected 1h",
        ]
        assert lines[-1] == "FAILED: 2 of 3 test(s) failed"


class TestFormatReport:
    def test_wrong_expectations(self, config: Config) -> None:
        """A failure shows its location, its differences, and the rules each alert matched."""
        tests, _ = load_tests([WRONG], config)
        lines = format_report([run_test(t, config) for t in tests])
        assert lines == [
            str(WRONG),
            "  PASS  right as it is",
            f"  FAIL  database warning expected at its own severity ({WRONG}:9)",
            "      missing page        dba-oncall as incident_lead at critical",
            "      missing page        ops-management as senior_management at critical",
            "      unexpected page     checkout-owner as service_lead at critical",
            "      wrong severity      dba-oncall as technical_lead at critical, expected warning",
            "      wrong rules         expected 'call the fire department first'",
            "      rules matched       PostgresReplicationLag on postgres-payments: 'tier-1 "
            "impact brings in the service lead', 'call the fire department first'",
            f"  FAIL  resolution expected on the wrong target ({WRONG}:20)",
            "      step 3 at 2026-01-01T00:15:00Z (line 32)",
            "        missing resolve     dba-oncall",
            "        unexpected resolve  command-center",
            "        alert               Mystery on legacy-ftp (unmapped): already resolved",
            f"  FAIL  unmapped alert expected to reach management too ({WRONG}:38)",
            "      wrong roles         command-center as incident_lead, expected incident_lead, "
            "senior_management",
            "      wrong severity      command-center as incident_lead at warning, expected "
            "critical",
            "      rules matched       DiskFilling on legacy-ftp (unmapped): 'unmapped alerts go "
            "to the command center'",
            "FAILED: 3 of 4 test(s) failed",
        ]

    def test_alert_without_service(self, tmp_path: Path, config: Config) -> None:
        """An alert with no service label is said to have none."""
        tests, _ = load_one(tmp_path, """tests:
  - name: watchdog
    alerts: [{labels: {alertname: Watchdog, severity: info}}]
    expect: {pages: []}
""", config)
        lines = format_report([run_test(tests[0], config)])
        assert lines[-3:] == [
            "      unexpected page     command-center as incident_lead at info",
            "      rules matched       Watchdog with no service label: 'unmapped alerts go to "
            "the command center'",
            "FAILED: 1 of 1 test(s) failed",
        ]


class TestCommand:
    def test_shipped_tests_pass(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`firehouse test` on the shipped tests prints PASS for each and exits 0."""
        code, out, err = run(capsys, "test", str(SHIPPED), "--config", str(SETTINGS))
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0] == str(SHIPPED)
        assert lines[1] == "  PASS  database warning pages the checkout service lead at critical"
        assert all(line.startswith("  PASS  ") for line in lines[1:-1])
        assert lines[-1] == "SUCCESS: 15 test(s) passed"

    def test_failure_exits_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong expectation makes the command fail with the report on stdout."""
        code, out, err = run(capsys, "test", str(WRONG), "--config", str(SETTINGS))
        assert (code, err) == (1, "")
        assert f"  FAIL  resolution expected on the wrong target ({WRONG}:20)\n" in out
        assert out.endswith("FAILED: 3 of 4 test(s) failed\n")

    def test_malformed_files_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Problems of every file are listed on stderr, sorted, and nothing runs."""
        code, out, err = run(capsys, "test", str(BAD / "unknown_rule.yaml"),
                             str(BAD / "bad_status.yaml"), str(SHIPPED),
                             "--config", str(SETTINGS))
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            "firehouse: cannot run the rule tests: 2 problem(s)",
            f"  {BAD / 'bad_status.yaml'}:5: tests[0].alerts[0].status: must be firing or "
            "resolved (got 'pending')",
            f"  {BAD / 'unknown_rule.yaml'}:9: tests[0].expect.rules[1]: unknown rule; did "
            "you mean 'call the fire department first'? (got 'call the fire brigade first')",
        ]

    def test_invalid_configuration_exits_2(self, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
        """An invalid configuration is listed with the test files' own problems."""
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - name: everyone\n    page: [the_boss]\n", encoding="utf-8")
        settings = write_settings(tmp_path, rules=[str(rules)])
        code, out, err = run(capsys, "test", str(BAD / "bad_status.yaml"),
                             "--config", str(settings))
        assert (code, out) == (2, "")
        lines = err.splitlines()
        assert lines[0] == "firehouse: cannot run the rule tests: 2 problem(s)"
        # Sorted by file path, which depends on where the checkout and tmp_path are.
        assert sorted(lines[1:]) == sorted([
            f"  {rules}:3: rules[0].page[0]: unknown role or target (got 'the_boss')",
            f"  {BAD / 'bad_status.yaml'}:5: tests[0].alerts[0].status: must be firing or "
            "resolved (got 'pending')",
        ])
        assert lines[1:] == sorted(lines[1:])

    def test_runs_in_dry_run_whatever_the_settings(self, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
        """Settings that refuse to run without routing keys still run their rule tests."""
        settings = write_settings(tmp_path, dry_run=False)
        code, _, err = run(capsys, "check", "--config", str(settings))
        assert code == 1
        code, out, err = run(capsys, "test", str(SHIPPED), "--config", str(settings))
        assert (code, err) == (0, "")
        assert out.endswith("SUCCESS: 15 test(s) passed\n")

    def test_python_dash_m(self) -> None:
        """`python -m daemon test` runs the shipped tests from the repository root."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOUSE_")}
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "test", "rules/tests/example.yaml"],
            capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.startswith("rules/tests/example.yaml\n  PASS  ")
        assert result.stdout.endswith("SUCCESS: 15 test(s) passed\n")
