"""The command line: check, explain and impact, as an SRE runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
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


class TestCheck:
    def test_shipped_configuration_is_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        """check exits 0 on the shipped settings, maps and rules, and says what it loaded."""
        code, out, _ = run(capsys, "check", "--config", str(SETTINGS))
        assert code == 0
        assert out.startswith("SUCCESS: settings ")
        assert "27 services from" in out
        assert "5 rules from" in out
        assert "13 targets, 0 with a routing key (dry-run" in out

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
        for target in ("dba-oncall", "command-center", "checkout-owner"):
            assert f"event trigger -> {target}" in out

    def test_json_lists_the_events(self, capsys: pytest.CaptureFixture[str]) -> None:
        """explain --format json gives machine-readable events with masked routing keys."""
        code, out, _ = run(capsys, "explain", str(EXAMPLE), "--format", "json",
                           "--config", str(SETTINGS))
        assert code == 0
        data = json.loads(out)
        assert {e["target"] for e in data["events"]} == {
            "dba-oncall", "command-center", "checkout-owner"}
        assert all(e["routing_key"] == "(none)" for e in data["events"])
        assert data["alerts"][0]["severity"] == "critical"

    def test_bad_payload_is_refused(self, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
        """explain exits 1 naming what is wrong with a payload."""
        bad = tmp_path / "bad.json"
        bad.write_text('{"receiver": "x"}')
        code, _, err = run(capsys, "explain", str(bad), "--config", str(SETTINGS))
        assert code == 1
        assert "payload rejected: field 'alerts' is missing" in err


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
        assert "unknown service 'nope'" in err

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
