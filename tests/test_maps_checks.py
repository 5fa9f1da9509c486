"""Checks between map files: in two rounds (what is wrong within each file, then, once every
file reads, what is wrong between them), and names that differ only in case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.graph import ServiceGraph
from daemon.maps import case_twin, load_maps

BAD_MAPS = Path(__file__).parent / "testdata" / "maps"
TARGETS = {"app-oncall", "dba-oncall"}
NEIGHBOURS = BAD_MAPS / "unreadable_neighbour"
SKIPPED = ("checks between map files (unknown services, duplicate services, aliases) "
           "skipped: they run once every map file reads")
APP = """\
services:
  shop:
    tier: 1
    component: application
    owners: {technical_lead: app-oncall}
    depends_on: [pg-main]
"""
DB = """\
services:
  pg-main:
    tier: 2
    component: dbms
    owners: {technical_lead: dba-oncall}
"""


def problems(paths: list[Path], targets: set[str] = TARGETS) -> list[str]:
    """Every problem of loading `paths` together, as a person reads them (sorted, as
    `firehouse check` lists them)."""
    _, found = load_maps(paths, targets)
    return [str(p) for p in sorted(found)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class TestTwoRounds:
    def test_a_file_that_does_not_parse_makes_no_name_of_another_unknown(self) -> None:
        """The syntax error is reported, and said once to hold back the checks between files;
        the correct file naming services of the broken one is not called wrong."""
        assert problems([NEIGHBOURS]) == [
            f"{NEIGHBOURS / 'db.yaml'}: {SKIPPED}",
            f"{NEIGHBOURS / 'db.yaml'}:8: invalid YAML: did not find expected node content",
        ]

    def test_once_it_parses_the_checks_between_files_run(self, tmp_path: Path) -> None:
        """The same maps with the syntax fixed: a real unknown dependency is reported."""
        write(tmp_path / "db.yaml", DB)
        write(tmp_path / "app.yaml", APP.replace("[pg-main]", "[pg-mian]"))
        assert problems([tmp_path]) == [
            f"{tmp_path / 'app.yaml'}:6: services.shop.depends_on[0]: names an unknown "
            "service; did you mean 'pg-main'? (got 'pg-mian')",
        ]

    def test_within_file_problems_of_readable_files_are_still_reported(
        self, tmp_path: Path
    ) -> None:
        """The first round is every file's own problems, the unreadable one's and the
        others' (bad values, owners naming no target) at once."""
        write(tmp_path / "db.yaml", DB + "  bogus: [\n")
        cart = APP.replace("services:\n", "").replace("shop", "cart")
        write(tmp_path / "app.yaml", APP.replace("tier: 1", "tier: 7")
              + cart.replace("app-oncall", "ghost-oncall"))
        assert problems([tmp_path]) == [
            f"{tmp_path / 'app.yaml'}:3: services.shop.tier: must be an integer from 1 (most "
            "critical) to 4 (got 7)",
            f"{tmp_path / 'app.yaml'}:10: services.cart.owners.technical_lead: names a target "
            "that is not defined in the settings' targets (got 'ghost-oncall')",
            f"{tmp_path / 'db.yaml'}: {SKIPPED}",
            f"{tmp_path / 'db.yaml'}:7: invalid YAML: did not find expected node content",
        ]

    def test_duplicates_wait_for_the_second_round_too(self, tmp_path: Path) -> None:
        """A service defined twice is a problem between files: said once every file reads."""
        write(tmp_path / "a.yaml", DB)
        write(tmp_path / "b.yaml", DB)
        write(tmp_path / "c.yaml", "services: {\n")
        assert problems([tmp_path]) == [
            f"{tmp_path / 'c.yaml'}: {SKIPPED}",
            f"{tmp_path / 'c.yaml'}:2: invalid YAML: did not find expected node content",
        ]

    def test_a_missing_map_path_holds_back_the_checks_too(self, tmp_path: Path) -> None:
        """A configured map file that is not there defines nothing either."""
        app = write(tmp_path / "app.yaml", APP)
        gone = tmp_path / "db.yaml"
        assert problems([app, gone]) == [
            f"{gone}: {SKIPPED}",
            f"{gone}: no such file or directory",
        ]

    def test_an_edge_list_that_does_not_parse_holds_back_the_checks(
        self, tmp_path: Path
    ) -> None:
        """Services named only by an unparsable edge list are not called unknown, nor are
        the services an edge list names said to lack a technical lead."""
        write(tmp_path / "app.yaml", APP)
        write(tmp_path / "mesh.json", '{"nodes": [{"id": "pg-main"}], "edges": [\n')
        write(tmp_path / "calls.csv", "shop,search\n")
        assert problems([tmp_path]) == [
            f"{tmp_path / 'mesh.json'}: {SKIPPED}",
            f"{tmp_path / 'mesh.json'}:2: invalid JSON: Expecting value",
        ]

    def test_nothing_is_said_to_be_skipped_when_no_file_reads(self) -> None:
        """With no file read, no check between files had anything to check."""
        assert problems([NEIGHBOURS / "db.yaml"]) == [
            f"{NEIGHBOURS / 'db.yaml'}:8: invalid YAML: did not find expected node content",
        ]

    def test_a_backstage_soft_dependency_named_by_an_unread_relation_waits(
        self, tmp_path: Path
    ) -> None:
        """A soft dependency made a dependency by another file's relation (dependencyOf)
        is not called "no dependency" while that file does not parse."""
        write(tmp_path / "shop.yaml", """\
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: shop
  annotations:
    firehouse.io/technical-lead: app-oncall
    firehouse.io/soft-dependencies: search
spec: {}
""")
        write(tmp_path / "search.yaml", """\
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: search
  annotations:
    firehouse.io/technical-lead: app-oncall
spec:
  dependencyOf: [shop
""")
        assert problems([tmp_path]) == [
            f"{tmp_path / 'search.yaml'}: {SKIPPED}",
            f"{tmp_path / 'search.yaml'}:9: invalid YAML: did not find expected ',' or ']'",
        ]


class TestTabs:
    def test_a_tab_indenting_a_map_is_named(self) -> None:
        """libyaml's "cannot start any token" becomes what to fix, at the tab's line."""
        assert problems([BAD_MAPS / "tab_indent.yaml"]) == [
            f"{BAD_MAPS / 'tab_indent.yaml'}:5: invalid YAML: a tab at column 1: YAML "
            "indents with spaces",
        ]


class TestCase:
    def test_names_differing_only_in_case_are_warned_of(self) -> None:
        """Two services (or a service and another's alias) whose names differ only in case
        are valid, with a warning at the later one naming the earlier; an alias in another
        spelling of its own service's name is not."""
        folder = BAD_MAPS / "case_only"
        a, b = folder / "a.yaml", folder / "b.yaml"
        graph, found = load_maps([folder], TARGETS)
        assert all(p.warning for p in found)
        assert [str(p) for p in sorted(found)] == [
            f"{b}:4: services.Kafka: warning: differs only in case from service 'kafka' "
            f"({a}:2): names are case-sensitive, so an alert labelled with the one is not "
            "placed on the other (got 'Kafka')",
            f"{b}:12: services.orders.aliases[1]: warning: differs only in case from alias "
            f"'Kafka-broker' of service 'kafka' ({a}:6): names are case-sensitive, so an "
            "alert labelled with the one is not placed on the other (got 'KAFKA-BROKER')",
        ]
        assert {"kafka", "Kafka", "orders"} <= set(graph.services)

    @pytest.mark.parametrize(("label", "meant"), [
        ("Kafka", "kafka"), ("KAFKA-broker", "Kafka-broker"), (" kafka ", "kafka"),
        ("kafka", None), ("zookeeper", None),
    ])
    def test_case_twin(self, tmp_path: Path, label: str, meant: str | None) -> None:
        """An unmapped label names a service or alias but for case or spaces around it."""
        graph = self.graph(tmp_path)
        assert case_twin(graph, label) == meant

    @staticmethod
    def graph(tmp_path: Path) -> ServiceGraph:
        write(tmp_path / "mesh.json", json.dumps({"nodes": [
            {"id": "kafka", "technical_lead": "app-oncall"}], "edges": []}))
        write(tmp_path / "a.yaml", DB.replace("pg-main:", "web:") +
              "    aliases: [Kafka-broker]\n")
        graph, found = load_maps([tmp_path], TARGETS)
        assert [str(p) for p in found] == []
        return graph
