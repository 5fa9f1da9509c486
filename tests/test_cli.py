"""The command line: check, explain and impact, as an SRE runs them."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import LogfmtFormatter, logfmt_value, main
from daemon.graph import Impact
from daemon.render import impact_text
from tests.helpers import write_settings
from tests.procs import require_binary

ROOT = Path(__file__).parent.parent
SETTINGS = ROOT / "firehouse.yml"
EXAMPLE = ROOT / "examples" / "alert-firing.json"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every command without FIREHOUSE_* variables from the machine."""
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("FIREHOUSE_"):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `firehouse ARGV` in this process; exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def failed_check(capsys: pytest.CaptureFixture[str], settings: Path) -> list[str]:
    """`firehouse check --config SETTINGS`, which must fail: the lines it printed."""
    code, out, _ = run(capsys, "check", "--config", str(settings))
    assert code == 1, out
    return out.splitlines()


class TestCheck:
    def test_shipped_configuration_is_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        """check exits 0 on the shipped settings, maps and rules, and says what it loaded."""
        code, out, _ = run(capsys, "check", "--config", str(SETTINGS))
        assert code == 0
        assert out.startswith("SUCCESS: settings ")
        assert "27 services from" in out
        assert "5 rules from" in out
        assert "13 targets, 0 with a routing key (dry-run" in out
        assert "  webhook authentication: off (anyone who can reach the port can post alerts)\n" \
            in out

    def test_says_first_that_no_settings_file_was_found(
            self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> None:
        """Outside a directory with firehouse.yml, check says so before the problems."""
        monkeypatch.chdir(tmp_path)
        code, out, _ = run(capsys, "check")
        assert code == 1
        assert out.splitlines() == [
            "firehouse: no settings file: no --config, no $FIREHOUSE_CONFIG and no "
            f"./firehouse.yml in {tmp_path}, so only the environment and the built-in "
            "defaults apply; give one with --config FILE or FIREHOUSE_CONFIG=FILE",
            "FAILED: 3 problem(s)",
            "  (environment): roles.incident_lead: missing: the command center's target is "
            "required, unmapped alerts page it",
            "  dependency_maps: no such file or directory (looked for "
            f"{tmp_path / 'dependency_maps'})",
            f"  rules: no such file or directory (looked for {tmp_path / 'rules'})",
        ]

    def test_says_nothing_of_a_settings_file_it_was_given(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """With --config, the problems are the file's own."""
        settings = tmp_path / "firehouse.yml"
        settings.write_text("lisen: 127.0.0.1:9095\n", encoding="utf-8")
        code, out, _ = run(capsys, "check", "--config", str(settings))
        assert code == 1
        assert "no settings file" not in out
        assert f"  {settings}:1: lisen: unknown setting; did you mean 'listen'? " \
            "(got 'lisen')" in out.splitlines()

    def test_says_how_webhooks_authenticate(self, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """check's summary says that a bearer token is required."""
        monkeypatch.setenv("FIREHOUSE_WEBHOOK_TOKEN", "s3cret-token")
        code, out, _ = run(capsys, "check", "--config", str(SETTINGS))
        assert code == 0
        assert "  webhook authentication: bearer\n" in out
        assert "s3cret-token" not in out

    def test_says_whether_pagerduty_webhooks_are_configured(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """check counts the PagerDuty webhook secrets, never showing them, or says the route
        is off."""
        monkeypatch.delenv("FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET", raising=False)
        _, off, _ = run(capsys, "check", "--config", str(SETTINGS))
        monkeypatch.setenv("FIREHOUSE_PAGERDUTY_WEBHOOK_SECRET", "old-pd-secret,new-pd-secret")
        code, out, _ = run(capsys, "check", "--config", str(SETTINGS))
        assert "  PagerDuty webhook: off (no pagerduty.webhook_secret: POST /webhook/pagerduty " \
            "answers 403)\n" in off
        assert code == 0
        assert "  PagerDuty webhook: 2 secret(s)\n" in out
        assert "pd-secret" not in out

    def test_malformed_routing_key(self, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """check fails on a routing key PagerDuty would refuse, without printing it."""
        monkeypatch.setenv("FIREHOUSE_DRY_RUN", "true")
        monkeypatch.setenv("FIREHOUSE_ROUTING_KEY_DBA_ONCALL", "short")
        code, out, _ = run(capsys, "check", "--config", str(SETTINGS))
        assert code == 1
        assert out.splitlines() == [
            "FAILED: 1 problem(s)",
            "  $FIREHOUSE_ROUTING_KEY_DBA_ONCALL: targets.dba-oncall: routing key must be 32 "
            "characters, got 5",
        ]

    def test_refuses_a_rule_with_severity_and_floor(self, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
        """A rule that both fixes its severity and sets a floor fails check, at file:line,
        naming both keys: its floor would be ignored."""
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - name: databases\n    match: {team: db}\n"
                         "    severity: warning\n    severity_floor: error\n"
                         "    page: [incident_lead]\n", encoding="utf-8")
        settings = write_settings(tmp_path, rules=[str(rules)])
        assert failed_check(capsys, settings) == [
            "FAILED: 1 problem(s)",
            f"  {rules}:5: rules[0].severity_floor: not allowed next to 'severity: warning', "
            "which fixes the severity and would ignore the floor; give one or the other "
            "(got 'error')",
        ]

    def test_warns_about_maps_without_services(self, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
        """check succeeds on an empty map directory, and warns that nothing is mapped."""
        maps = tmp_path / "maps"
        maps.mkdir()
        settings = tmp_path / "settings.yml"
        settings.write_text(
            f"rules: [{ROOT / 'rules'}]\ndependency_maps: [{maps}]\n"
            "roles: {incident_lead: command-center, senior_management: ops-management}\n"
            "targets: {command-center: {}, ops-management: {}}\n")
        code, out, _ = run(capsys, "check", "--config", str(settings))
        assert code == 0
        assert f"  0 services from {maps}\n" in out
        assert out.endswith(f"  {maps}: dependency_maps: warning: no services: every alert will "
                            "be treated as unmapped\n")

    def test_every_problem_is_listed(self, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
        """check exits 1 and prints each problem with its file and line."""
        maps = tmp_path / "maps"
        maps.mkdir()
        (maps / "m.yaml").write_text(
            "services:\n"
            "  web:\n"
            "    tier: 9\n"
            "    component: application\n"
            "    owners: {technical_lead: command-center}\n"
            "  api:\n"
            "    tier: 2\n"
            "    component: application\n"
            "    owners: {technical_lead: command-center}\n"
            "    depends_on: [nowhere]\n")
        settings = tmp_path / "settings.yml"
        settings.write_text(
            f"rules: [{ROOT / 'rules'}]\ndependency_maps: [{maps}]\n"
            "roles: {incident_lead: command-center}\n"
            "targets: {command-center: {}, ops-management: {}, shop-app-oncall: {}}\n")
        code, out, _ = run(capsys, "check", "--config", str(settings))
        assert code == 1
        assert out.splitlines()[0].startswith("FAILED: ")
        assert f"{maps / 'm.yaml'}:3: services.web.tier: must be an integer" in out
        assert f"{maps / 'm.yaml'}:10: services.api.depends_on[0]: names an unknown service" in out

    def test_a_map_that_does_not_parse_makes_no_other_look_wrong(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """The tester's case: `  bogus: [` appended to the map defining the databases. The
        syntax error is listed, and that the checks between files wait for it, once; the
        maps depending on its databases are not called wrong."""
        maps = tmp_path / "maps"
        maps.mkdir()
        shipped = (ROOT / "dependency_maps" / "example-shop.yaml").read_text(encoding="utf-8")
        (maps / "shop.yaml").write_text(shipped, encoding="utf-8")
        (maps / "more.yaml").write_text(
            "services:\n  pg-main:\n    tier: 2\n    component: dbms\n"
            "    owners: {technical_lead: dba-oncall}\n  bogus: [\n", encoding="utf-8")
        (maps / "reports.yaml").write_text(
            "services:\n  weekly-report:\n    tier: 4\n    component: batch\n"
            "    owners: {technical_lead: data-oncall}\n    depends_on: [pg-main]\n",
            encoding="utf-8")
        settings = write_settings(tmp_path, dependency_maps=[str(maps)])
        assert failed_check(capsys, settings) == [
            "FAILED: 2 problem(s)",
            f"  {maps / 'more.yaml'}: checks between map files (unknown services, duplicate "
            "services, aliases) skipped: they run once every map file reads",
            f"  {maps / 'more.yaml'}:7: invalid YAML: did not find expected node content",
        ]

    def test_names_differing_only_in_case_are_a_warning(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """`Kafka` beside the shipped map's `kafka` passes, with a warning saying why an
        alert labelled `kafka` would not land on it."""
        maps = tmp_path / "maps"
        maps.mkdir()
        shutil.copy(ROOT / "dependency_maps" / "example-shop.yaml", maps)
        (maps / "streams.yaml").write_text(
            "services:\n  Kafka:\n    tier: 2\n    component: messaging\n"
            "    owners: {technical_lead: messaging-oncall}\n", encoding="utf-8")
        settings = write_settings(tmp_path, dependency_maps=[str(maps)])
        code, out, _ = run(capsys, "check", "--config", str(settings))
        shipped = (maps / "example-shop.yaml").read_text(encoding="utf-8").splitlines()
        line = shipped.index("  kafka:") + 1
        assert code == 0
        assert out.endswith(
            f"  {maps / 'streams.yaml'}:2: services.Kafka: warning: differs only in case from "
            f"service 'kafka' ({maps / 'example-shop.yaml'}:{line}): names are case-sensitive, "
            "so an alert labelled with the one is not placed on the other (got 'Kafka')\n")

    def test_says_where_the_state_is_kept(self, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
        """The SQLite file, or the PostgreSQL database (never its password) and its lease,
        which only matters there."""
        settings = write_settings(tmp_path)
        _, sqlite, _ = run(capsys, "check", "--config", str(settings))
        monkeypatch.setenv("FIREHOUSE_DATABASE_URL", "postgresql://fh:hunter2@db:5432/fh")
        code, shared, _ = run(capsys, "check", "--config", str(settings))
        assert f"\n  state: SQLite {tmp_path / 'state.db'}\n" in sqlite
        assert code == 0
        assert ("\n  state: PostgreSQL postgresql://fh@db:5432/fh, shared by replicas (outbox "
                "lease 30s)\n") in shared
        assert "hunter2" not in shared


class TestExplain:
    def test_text_says_why(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain shows the service, the impact, the rules matched and missed, and the pages."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--config", str(SETTINGS))
        assert code == 0
        assert "service: postgres-payments (mapped)" in out
        assert "checkout is down because payments -> postgres-payments is failing" in out
        assert "rule MATCH 'tier-1 impact brings in the service lead'" in out
        assert "rule miss  'unmapped alerts go to the command center': service is mapped" in out
        assert "severity: critical" in out
        for target in ("dba-oncall", "command-center", "checkout-owner", "business-line"):
            assert f"event trigger -> {target}" in out

    def test_json_lists_the_events(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain --format json gives machine-readable events with masked routing keys."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--format", "json",
                           "--config", str(SETTINGS))
        assert code == 0
        data = json.loads(out)
        assert {e["target"] for e in data["events"]} == {
            "dba-oncall", "command-center", "checkout-owner", "business-line"}
        assert all(e["routing_key"] == "(none)" for e in data["events"])
        # The tier-1 rule's business updates: a plain summary for the business line.
        (business,) = [e for e in data["events"] if e["target"] == "business-line"]
        details = business["body"]["payload"]["custom_details"]
        assert details["paged_as"] == ["business_line"]
        assert details["reason"] == "business update"
        assert business["dedup_key"].endswith("/business-line/update-1")
        assert data["alerts"][0]["severity"] == "critical"

    def test_bad_payload_is_refused(self, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
        """explain exits 1 naming what is wrong with a payload."""
        bad = tmp_path / "bad.json"
        bad.write_text('{"receiver": "x"}')
        code, _, err = run(capsys, "explain", str(bad), "--config", str(SETTINGS))
        assert code == 1
        assert "payload rejected: field 'alerts' is missing" in err

    def test_missing_payload_file(self, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
        """explain exits 1 with one line for a payload file it cannot read."""
        missing = tmp_path / "nonexistent"
        code, out, err = run(capsys, "explain", str(missing), "--config", str(SETTINGS))
        assert (code, out) == (1, "")
        assert err == f"firehouse: cannot read payload {missing}: No such file or directory\n"

    @pytest.mark.parametrize("at", ["yesterday", "2026-01-31T09:00:00", "2026-13-01T00:00:00Z"])
    def test_bad_at(self, capsys: pytest.CaptureFixture[str], at: str) -> None:
        """explain exits 2 with one line for an --at that is no RFC 3339 time with a zone."""
        code, out, err = run(capsys, "explain", str(EXAMPLE), "--at", at,
                             "--config", str(SETTINGS))
        assert (code, out) == (2, "")
        assert err == ("firehouse: --at: not an RFC 3339 time with a zone, such as "
                       f"2026-01-31T09:00:00Z: {at!r}\n")

    def test_malformed_alert_is_said_to_be_paged(self, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
        """A malformed alert is not skipped: explain says it is paged as far as it could be
        read, flagged, then decides on it; an unmapped impact reads `none`, never `None`."""
        payload = tmp_path / "malformed.json"
        payload.write_text('{"alerts":["x"]}')
        code, out, _ = run(capsys, "explain", str(payload), "--config", str(SETTINGS))
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == ("malformed alert, paged as far as it could be read (flagged "
                            "firehouse_malformed): alerts[0]: must be an object, got str")
        assert lines[1].startswith("alert MalformedAlert [firing] ")
        assert "  action: opened" in lines
        assert ("  impact: 0 service(s) impacted, most critical tier none, business: none, "
                "implied severity none") in lines
        assert "skipped" not in out
        assert "None" not in out
        assert "event trigger -> command-center" in out

    def test_alert_without_labels_is_malformed(self, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
        """An alert without `labels` is a malformed one, in text and in JSON."""
        payload = tmp_path / "no-labels.json"
        payload.write_text('{"version":"4","status":"firing","alerts":[{"status":"firing",'
                           '"startsAt":"2026-12-04T10:00:00Z","fingerprint":"aaaa000000000002"}]}')
        code, out, _ = run(capsys, "explain", str(payload), "--config", str(SETTINGS))
        assert code == 0
        assert out.splitlines()[:2] == [
            "malformed alert, paged as far as it could be read (flagged firehouse_malformed): "
            "alerts[0]: field 'labels' is missing",
            "alert MalformedAlert [firing] fingerprint=aaaa000000000002",
        ]
        code, out, _ = run(capsys, "explain", str(payload), "--format", "json",
                           "--config", str(SETTINGS))
        assert code == 0
        data = json.loads(out)
        assert data["rejected"] == ["alerts[0]: field 'labels' is missing"]
        assert [a["alertname"] for a in data["alerts"]] == ["MalformedAlert"]

    def test_json_without_malformed_alerts(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A payload without malformed alerts has an empty `rejected` list in JSON."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--format", "json",
                           "--config", str(SETTINGS))
        assert code == 0
        assert json.loads(out)["rejected"] == []

    def test_at(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain --at takes Alertmanager's timestamps, nanoseconds and offsets included."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--at",
                           "2026-01-31T10:00:00.123456789+01:00", "--config", str(SETTINGS))
        assert code == 0
        assert "severity: critical" in out



class TestExplainUnmapped:
    """An alert whose service label is a map name but for case is unmapped (names are
    exact), and explain says which name it most likely meant."""

    def payload(self, tmp_path: Path, service: str) -> Path:
        path = tmp_path / "alert.json"
        path.write_text(json.dumps({
            "version": "4", "status": "firing", "alerts": [{
                "status": "firing", "labels": {"alertname": "KafkaLag", "service": service},
                "startsAt": "2026-12-04T10:00:00Z", "fingerprint": "aaaa000000000003"}]}))
        return path

    def test_text(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """`Kafka` is not the shipped map's `kafka`: unmapped, with a "did you mean"."""
        code, out, _ = run(capsys, "explain", str(self.payload(tmp_path, "Kafka")),
                           "--config", str(SETTINGS))
        assert code == 0
        assert ("  service: Kafka (UNMAPPED; did you mean 'kafka'? map names are "
                "case-sensitive)\n") in out
        assert "rule MATCH 'unmapped alerts go to the command center'" in out

    def test_json(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, out, _ = run(capsys, "explain", str(self.payload(tmp_path, "KAFKA")),
                           "--format", "json", "--config", str(SETTINGS))
        assert code == 0
        (alert,) = json.loads(out)["alerts"]
        assert (alert["service"], alert["mapped"], alert["did_you_mean"]) == (
            "KAFKA", False, "kafka")

    @pytest.mark.parametrize("service", ["kafka", "zookeeper"])
    def test_no_hint_for_an_exact_or_unknown_name(
            self, capsys: pytest.CaptureFixture[str], tmp_path: Path, service: str) -> None:
        """A mapped alert needs no hint, nor does a name like no map name."""
        code, out, _ = run(capsys, "explain", str(self.payload(tmp_path, service)),
                           "--config", str(SETTINGS))
        assert code == 0
        assert "did you mean" not in out


class TestExplainDeadlines:
    """explain shows the deadlines the matched rules' clocks give the incident."""

    def test_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        """One `deadlines` line after the severity, with times from --at and the durations."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--at", "2026-01-01T00:00:00Z",
                           "--config", str(SETTINGS))
        assert code == 0
        lines = out.splitlines()
        index = lines.index("  severity: critical; roles: service_lead, technical_lead, "
                            "incident_lead")
        assert lines[index + 1] == (
            "  deadlines: ack by 2026-01-01T00:05:00Z (5m), resolve by 2026-01-01T01:00:00Z "
            "(1h), if missed escalate to senior_management; business updates every 30m")

    def test_text_without_clock(self, capsys: pytest.CaptureFixture[str],
                                tmp_path: Path) -> None:
        """Rules that set no clock are said to, not left unmentioned."""
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - name: all\n    page: [incident_lead]\n",
                         encoding="utf-8")
        code, out, _ = run(capsys, "explain", str(EXAMPLE),
                           "--config", str(write_settings(tmp_path, rules=[str(rules)])))
        assert code == 0
        assert "  deadlines: none (no matching rule sets a clock)\n" in out

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The JSON format gives each opened alert's deadlines as stored on the incident."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--format", "json", "--at",
                           "2026-01-01T00:00:00Z", "--config", str(SETTINGS))
        assert code == 0
        (alert,) = json.loads(out)["alerts"]
        assert alert["deadlines"] == {
            "ack_by": "2026-01-01T00:05:00+00:00", "resolve_by": "2026-01-01T01:00:00+00:00",
            "escalate_to": ["senior_management"], "business_updates_every": 1800,
        }


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    """A log record made at a fixed time, as `logging` would make it."""
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nthing")  # noqa: TRY301 - a real traceback to format
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("firehouse.app", logging.ERROR, __file__, 1, message, args, exc_info)
    rec.created = 1785488400.25  # 2026-07-31T09:00:00.250Z
    return rec


class TestLogfmt:
    """LogfmtFormatter: every record one valid logfmt line."""

    def test_plain_message(self) -> None:
        """A one-word message stays bare."""
        assert LogfmtFormatter().format(record("ready")) == (
            "ts=2026-07-31T09:00:00.250Z level=ERROR logger=firehouse.app msg=ready")

    def test_message_with_spaces_is_quoted(self) -> None:
        """A message with spaces is quoted."""
        line = LogfmtFormatter().format(record("listening on %s", "http://127.0.0.1:9095"))
        assert line.endswith(' msg="listening on http://127.0.0.1:9095"')

    def test_quotes_backslashes_and_equals(self) -> None:
        """`"` and `\\` are escaped inside the quotes; `=` alone makes a value quoted."""
        line = LogfmtFormatter().format(record('rejected webhook: "a\\b" digest=%s', "abc"))
        assert line.endswith(' msg="rejected webhook: \\"a\\\\b\\" digest=abc"')

    def test_several_lines_are_one(self) -> None:
        """A message of several lines (a failed reload) is one line with escaped breaks."""
        line = LogfmtFormatter().format(record(
            "reload failed; keeping configuration %s:\n%s", "0123abcd",
            "a.yaml:3: tier: bad\nb.yaml:7: owners: bad"))
        assert "\n" not in line
        assert line.endswith(' msg="reload failed; keeping configuration 0123abcd:\\n'
                             'a.yaml:3: tier: bad\\nb.yaml:7: owners: bad"')

    def test_structured_fields_are_keys_of_their_own(self) -> None:
        """Fields passed as extra={"fields": ...} follow msg as their own escaped keys."""
        entry = record("dry-run")
        entry.fields = {"target": "dba-oncall", "summary": 'lag "45s"\nnow'}
        line = LogfmtFormatter().format(entry)
        assert line.endswith(' msg=dry-run target=dba-oncall summary="lag \\"45s\\"\\nnow"')

    def test_traceback_is_a_field(self) -> None:
        """An exception's traceback goes into one escaped `exc` field on the same line."""
        line = LogfmtFormatter().format(record("worker error", exc=True))
        assert "\n" not in line
        assert ' msg="worker error" exc="Traceback (most recent call last):\\n' in line
        assert line.endswith('\\nValueError: bad\\nthing"')

    @pytest.mark.parametrize(("value", "shown"), [
        ("", '""'),
        ("dry-run", "dry-run"),
        ("C:\\temp", "C:\\temp"),
        ("tab\there", '"tab\\there"'),
        ("bell\x07 nel\x85 ls\u2028", '"bell\\u0007 nel\\u0085 ls\\u2028"'),
        ("caf\u00e9", "caf\u00e9"),
    ])
    def test_values(self, value: str, shown: str) -> None:
        """Values are bare unless empty or holding space, `=`, `"` or unprintable characters."""
        assert logfmt_value(value) == shown


class TestImpact:
    def test_text_names_root_causes(self, capsys: pytest.CaptureFixture[str]) -> None:
        """impact lists root causes, most damaging first, and explains failing services."""
        code, out, _ = run(capsys, "impact", "postgres-payments", "payments", "kafka",
                           "--config", str(SETTINGS))
        assert code == 0
        lines = out.splitlines()
        causes = lines.index("probable root causes, most damaging first:")
        assert lines[causes + 1].startswith("  postgres-payments: takes down 2")
        assert lines[causes + 2].startswith("  kafka: takes down 2")
        assert "  payments is failing, probably because postgres-payments is" in lines

    def test_absent_values_read_none(self) -> None:
        """An impact with nothing mapped says `none` for its tier and severity, as explain
        does, never Python's `None`."""
        assert impact_text(Impact()).splitlines() == [
            "failing: nothing known to the map",
            "implied severity: none; most critical tier: none; business services: none",
            "impacted: 0 down, 0 degraded",
        ]

    def test_aliases_resolve(self, capsys: pytest.CaptureFixture[str]) -> None:
        """impact accepts a service's alias, as alerts carry it."""
        code, out, _ = run(capsys, "impact", "postgres-exporter-payments", "--format", "json",
                           "--config", str(SETTINGS))
        assert code == 0
        data = json.loads(out)
        assert data["failing"] == ["postgres-payments"]
        assert {s["service"] for s in data["impacted"]} == {"payments", "checkout"}

    def test_unknown_service(self, capsys: pytest.CaptureFixture[str]) -> None:
        """impact exits 1 for a service no map knows."""
        code, _, err = run(capsys, "impact", "nope", "--config", str(SETTINGS))
        assert code == 1
        assert err == "firehouse: unknown service 'nope'\n"

    def test_unknown_service_like_a_known_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        """impact suggests the service a misspelt name probably means."""
        code, _, err = run(capsys, "impact", "paymnets", "--config", str(SETTINGS))
        assert code == 1
        assert err == "firehouse: unknown service 'paymnets'; did you mean 'payments'?\n"

    def test_dot_renders_with_graphviz(self, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
        """impact --format dot is accepted by Graphviz and marks states by colour and shape."""
        code, out, _ = run(capsys, "impact", "postgres-payments", "--format", "dot",
                           "--config", str(SETTINGS))
        assert code == 0
        assert '"postgres-payments" [label="postgres-payments\\ntier 2, root cause" ' \
               "shape=doubleoctagon" in out
        assert '"checkout" [label="checkout\\ntier 1, down" shape=box' in out
        assert '"checkout" -> "payments";' in out
        dot = require_binary("dot", "graphviz")
        svg = subprocess.run([dot, "-Tsvg"], input=out, capture_output=True, text=True,
                             check=True).stdout
        assert "<svg" in svg
        assert "<title>postgres&#45;payments</title>" in svg


class TestEntryPoints:
    def test_python_dash_m(self) -> None:
        """`python -m daemon --version` works like the console script."""
        result = subprocess.run([sys.executable, "-m", "daemon", "--version"],
                                capture_output=True, text=True, check=True)
        assert result.stdout.startswith("firehouse ")

    def test_console_script_installed(self) -> None:
        """The `firehouse` console script is installed next to the interpreter."""
        script = Path(sys.executable).parent / "firehouse"
        assert script.exists() or shutil.which("firehouse")
