"""Tests of daemon.graph: dependency map loading, validation, and impact analysis."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from daemon.errors import ConfigError, Problem
from daemon.graph import (
    DEFAULT_TIER_SEVERITY,
    DEGRADED,
    DOWN,
    HARD,
    SOFT,
    Dependency,
    ImpactedService,
    Service,
    ServiceGraph,
    build_graph,
    higher,
    lower_by_one,
)
from daemon.maps import load_maps

ROOT = Path(__file__).parent.parent
SHIPPED_MAPS = ROOT / "dependency_maps"
BAD_MAPS = Path(__file__).parent / "testdata" / "maps"
SOCIAL_NETWORK = (
    Path(__file__).parent / "fixtures" / "dependency" / "deathstarbench" / "socialNetwork"
    / "graph.derived.json"
)
TARGETS = {"app-oncall", "dba-oncall", "shop-owner", "ops-management"}


def shipped_targets() -> set[str]:
    settings = yaml.safe_load((ROOT / "firehouse.yml").read_text(encoding="utf-8"))
    return set(settings["targets"])


@pytest.fixture(scope="module")
def shop() -> ServiceGraph:
    graph, problems = load_maps([SHIPPED_MAPS], shipped_targets())
    assert problems == []
    return graph


def service(name: str, tier: int, *deps: Dependency | str, business: str | None = None,
            component: str = "application") -> Service:
    return Service(
        name=name, tier=tier, component=component,
        owners=MappingProxyType({"technical_lead": "app-oncall"}),
        business_service=business,
        depends_on=tuple(d if isinstance(d, Dependency) else Dependency(d) for d in deps),
    )


def social_network() -> list[Service]:
    """DeathStarBench's social network as services: rpc and storage edges hard, startup soft."""
    data = json.loads(SOCIAL_NETWORK.read_text(encoding="utf-8"))
    deps: dict[str, list[Dependency]] = {node["id"]: [] for node in data["nodes"]}
    for edge in data["edges"]:
        kind = HARD if {"rpc", "storage"} & set(edge["kinds"]) else SOFT
        deps[edge["from"]].append(Dependency(edge["to"], kind))
    return [
        service(name, 1 if name == "nginx-thrift" else 2, *edges)
        for name, edges in deps.items()
    ]


def bad_map(name: str, targets: set[str] | None = None) -> list[str]:
    """The problems of one testdata map file, as a person reads them."""
    _, problems = load_maps([BAD_MAPS / name], TARGETS if targets is None else targets)
    return [str(p) for p in problems]


class TestLoadShippedMaps:
    """load_maps on the shipped example map."""

    def test_loads_without_problems(self, shop: ServiceGraph) -> None:
        """The example shop's 27 services load with no problem and no cycle."""
        assert len(shop.services) == 27
        assert shop.cycles == ()

    def test_fields_are_read(self, shop: ServiceGraph) -> None:
        """A service carries its tier, component, business service, owners and edges."""
        payments = shop.services["payments"]
        assert payments.tier == 1
        assert payments.component == "application"
        assert payments.business_service == "online-checkout"
        assert dict(payments.owners) == {
            "technical_lead": "shop-app-oncall", "service_lead": "checkout-owner",
        }
        assert payments.depends_on == (
            Dependency("dns"), Dependency("postgres-payments"), Dependency("egress-proxy"),
            Dependency("kafka", SOFT),
        )
        assert payments.source == f"{SHIPPED_MAPS / 'example-shop.yaml'}:308"

    def test_aliases_resolve(self, shop: ServiceGraph) -> None:
        """A service is found by its name or by any of its aliases."""
        by_alias = shop.resolve("postgres-exporter-payments")
        assert by_alias is not None
        assert by_alias.name == "postgres-payments"
        assert shop.resolve("kafka-broker") is shop.services["kafka"]
        assert shop.resolve("no-such-thing") is None

    def test_missing_path_is_reported_once(self, tmp_path: Path) -> None:
        """A map path that does not exist is one problem, not two."""
        missing = tmp_path / "nope"
        _, problems = load_maps([missing])
        assert [str(p) for p in problems] == [f"{missing}: no such file or directory"]


class TestImpact:
    """ServiceGraph.impact: blast radius, states, paths, tiers and implied severity."""

    def test_database_warning_reaches_checkout(self, shop: ServiceGraph) -> None:
        """A failing payments database takes down payments and, through it, checkout."""
        impact = shop.impact(["postgres-payments"])
        assert impact.failing == ("postgres-payments",)
        assert [(s.name, s.state, s.distance) for s in impact.impacted] == [
            ("payments", DOWN, 1), ("checkout", DOWN, 2),
        ]
        checkout = impact.impacted[1]
        assert checkout.path == ("postgres-payments", "payments", "checkout")
        assert checkout.explain() == (
            "checkout is down because payments -> postgres-payments is failing"
        )
        assert impact.impacted[0].explain() == (
            "payments is down because postgres-payments is failing"
        )

    def test_soft_edges_degrade(self, shop: ServiceGraph) -> None:
        """Kafka's soft dependents are degraded; its hard consumers are down."""
        impact = shop.impact(["kafka"])
        states = {s.name: s.state for s in impact.impacted}
        assert states == {
            "checkout": DEGRADED, "orders": DEGRADED, "payments": DEGRADED, "auth": DEGRADED,
            "storefront": DEGRADED, "recommendations": DEGRADED,
            "notifications": DOWN, "search-indexer": DOWN,
        }
        assert [s.name for s in impact.down] == ["notifications", "search-indexer"]
        auth = next(s for s in impact.impacted if s.name == "auth")
        assert auth.explain() == "auth is degraded because notifications -> kafka is failing"

    def test_down_service_keeps_its_hard_chain(self, shop: ServiceGraph) -> None:
        """A service down through a long hard chain is explained, and measured, by that chain."""
        impact = shop.impact(["volume-storage"])
        checkout = next(s for s in impact.impacted if s.name == "checkout")
        assert checkout.state == DOWN
        # A soft chain (volume-storage -> kafka ··> checkout) is shorter, but does not
        # explain "down"; the distance must count the hops of the path that is shown.
        # Two hard chains are equally short (through postgres-payments or postgres-users).
        assert checkout.path[0] == "volume-storage"
        assert checkout.path[-1] == "checkout"
        assert checkout.distance == len(checkout.path) - 1 == 3
        for dependency, dependent in itertools.pairwise(checkout.path):
            assert Dependency(dependency, HARD) in shop.services[dependent].depends_on

    def test_impacted_order(self, shop: ServiceGraph) -> None:
        """Impacted services are ordered by tier, down before degraded, then distance, name."""
        impact = shop.impact(["redis-cart"])
        assert [(s.name, s.tier, s.state, s.distance) for s in impact.impacted] == [
            ("checkout", 1, DOWN, 2), ("storefront", 1, DEGRADED, 2), ("cart", 2, DOWN, 1),
        ]

    def test_most_critical_tier_business_services_and_counts(self, shop: ServiceGraph) -> None:
        """Tier counts, most critical tier and business services include the failing service."""
        impact = shop.impact(["redis-cart"])
        assert impact.most_critical_tier == 1
        assert impact.business_services == ("online-checkout",)
        assert dict(impact.tier_counts) == {1: 2, 2: 2}

    def test_shared_network_reaches_everything(self, shop: ServiceGraph) -> None:
        """core-network's blast radius is the 26 other services and all business services."""
        impact = shop.impact(["core-network"])
        assert len(impact.impacted) == 26
        assert all(s.state == DOWN for s in impact.impacted)
        assert impact.business_services == ("customer-login", "online-checkout", "product-search")
        assert dict(impact.tier_counts) == {1: 12, 2: 10, 3: 3, 4: 2}

    def test_severity_from_a_tier_one_down(self, shop: ServiceGraph) -> None:
        """A tier-2 failure that takes a tier-1 service down implies critical."""
        assert shop.impact(["redis-cart"]).severity == "critical"

    def test_severity_one_step_lower_when_only_degraded(self, shop: ServiceGraph) -> None:
        """A tier-3 failure that only degrades tier-1 services implies error, not critical."""
        impact = shop.impact(["recommendations"])
        assert {s.state for s in impact.impacted} == {DEGRADED}
        assert impact.most_critical_tier == 1
        assert impact.severity == "error"

    def test_severity_of_an_isolated_batch_job(self, shop: ServiceGraph) -> None:
        """A tier-4 job nothing depends on implies info, and impacts nothing else."""
        impact = shop.impact(["nightly-reports"])
        assert impact.impacted == ()
        assert impact.most_critical_tier == 4
        assert dict(impact.tier_counts) == {4: 1}
        assert impact.severity == "info"

    def test_unknown_names_impact_nothing(self, shop: ServiceGraph) -> None:
        """Names no map defines are ignored: no tier, no severity."""
        impact = shop.impact(["no-such-service"])
        assert impact.failing == ()
        assert impact.impacted == ()
        assert impact.most_critical_tier is None
        assert impact.severity is None
        assert dict(impact.tier_counts) == {}

    def test_several_failing_services(self, shop: ServiceGraph) -> None:
        """The blast radii of several failures are united, and failing ones are not impacted."""
        impact = shop.impact(["postgres-payments", "payments", "redis-cart"])
        assert impact.failing == ("payments", "postgres-payments", "redis-cart")
        assert [s.name for s in impact.impacted] == ["checkout", "storefront", "cart"]

    def test_tier_severity_table(self) -> None:
        """Each tier implies its severity from the table when the failing service is alone."""
        for tier, severity in DEFAULT_TIER_SEVERITY.items():
            graph = build_graph([service("only", tier)])
            assert graph.impact(["only"]).severity == severity

    def test_custom_tier_severity_table(self) -> None:
        """A custom table changes the severity a tier implies."""
        graph = build_graph([service("app", 2)], {1: "critical", 2: "critical", 3: "warning",
                                                  4: "info"})
        assert graph.impact(["app"]).severity == "critical"


class TestCycles:
    """Cycles are found, reported as warnings, and do not break impact analysis."""

    def test_build_graph_finds_the_social_network_cycle(self) -> None:
        """The social network's user-service <-> social-graph-service cycle is found."""
        graph = build_graph(social_network())
        assert len(graph.services) == 28
        assert graph.cycles == (("social-graph-service", "user-service"),)

    def test_impact_through_a_cycle(self) -> None:
        """A failure inside the cycle reaches its partner and everything above, once each."""
        graph = build_graph(social_network())
        impact = graph.impact(["user-service"])
        names = [s.name for s in impact.impacted]
        assert len(names) == len(set(names))
        assert "user-service" not in names
        partner = next(s for s in impact.impacted if s.name == "social-graph-service")
        assert (partner.state, partner.distance) == (DOWN, 1)
        assert partner.explain() == "social-graph-service is down because user-service is failing"
        assert impact.impacted[0].name == "nginx-thrift"
        assert impact.most_critical_tier == 1
        assert impact.severity == "critical"

    def test_impact_from_below_the_cycle(self) -> None:
        """A failing store under the cycle takes down both members of the cycle."""
        graph = build_graph(social_network())
        impact = graph.impact(["user-mongodb"])
        states = {s.name: s.state for s in impact.impacted}
        assert states["user-service"] == DOWN
        assert states["social-graph-service"] == DOWN

    def test_load_maps_warns_about_the_cycle(self, tmp_path: Path) -> None:
        """Written as a map file, the cycle is one warning Problem, not an error."""
        services = {
            s.name: {
                "tier": s.tier,
                "component": s.component,
                "owners": dict(s.owners),
                "depends_on": [
                    d.service if d.kind == HARD else {"service": d.service, "kind": d.kind}
                    for d in s.depends_on
                ],
            }
            for s in social_network()
        }
        path = tmp_path / "social.yaml"
        text = yaml.safe_dump({"services": services}, sort_keys=True)
        path.write_text(text, encoding="utf-8")
        line = text.splitlines().index("  social-graph-service:") + 1
        graph, problems = load_maps([path], {"app-oncall"})
        assert problems == [Problem(
            str(path), line, "services.social-graph-service.depends_on",
            "dependency cycle (impact analysis treats it as one unit): "
            "social-graph-service <-> user-service",
            warning=True,
        )]
        assert str(problems[0]) == (
            f"{path}:{line}: services.social-graph-service.depends_on: warning: dependency "
            "cycle (impact analysis treats it as one unit): social-graph-service <-> user-service"
        )
        assert str(ConfigError(problems)) == ""
        assert len(graph.impact(["social-graph-service"]).impacted) > 0


class TestBadMaps:
    """load_maps on bad map files: one exact problem each, with file:line and key path."""

    @pytest.mark.parametrize(("name", "expected"), [
        ("unknown_key.yaml", "8: services.web.colour: unknown key (got 'colour')"),
        ("tier_zero.yaml",
         "4: services.web.tier: must be an integer from 1 (most critical) to 4 (got 0)"),
        ("tier_five.yaml",
         "4: services.web.tier: must be an integer from 1 (most critical) to 4 (got 5)"),
        ("tier_word.yaml",
         "4: services.web.tier: must be an integer from 1 (most critical) to 4 (got 'one')"),
        ("missing_technical_lead.yaml",
         "7: services.web.owners.technical_lead: missing: every service needs a technical lead"),
        ("unknown_owner_role.yaml",
         "8: services.web.owners.duty_manager: unknown role (expected one of technical_lead, "
         "service_lead) (got 'duty_manager')"),
        ("unknown_dependency.yaml",
         "9: services.web.depends_on[0]: names an unknown service (got 'db')"),
        ("dependency_misspelt.yaml",
         "9: services.payments.depends_on[0]: names an unknown service; did you mean "
         "'postgres-payments'? (got 'postgres-paymnets')"),
        ("bad_dependency_kind.yaml",
         "9: services.web.depends_on[0].kind: must be 'hard' or 'soft' (got 'optional')"),
        ("alias_clash.yaml",
         "13: services.web-v2.aliases[1]: alias already names service 'web' (got 'web')"),
        ("invalid_yaml.yaml",
         "6: invalid YAML: did not find expected key"),
        ("duplicate_key.yaml", "6: services.web.tier: duplicate key"),
        ("duplicate_dependency.yaml",
         "13: services.web.depends_on[1]: lists a dependency already listed (give each once, "
         "hard or soft) (got 'db')"),
        ("self_dependency.yaml",
         "7: services.web.depends_on[0]: a service cannot depend on itself (got 'web')"),
    ])
    def test_one_problem(self, name: str, expected: str) -> None:
        """Each bad file yields exactly its one problem, located and named."""
        assert bad_map(name) == [f"{BAD_MAPS / name}:{expected}"]

    def test_undefined_owner_target(self) -> None:
        """An owner naming a target the settings do not define is reported at the owner."""
        assert bad_map("undefined_owner_target.yaml", {"app-oncall"}) == [
            f"{BAD_MAPS / 'undefined_owner_target.yaml'}:12: services.db.owners.technical_lead: "
            "names a target that is not defined in the settings' targets (got 'ghost-oncall')"
        ]

    def test_owner_targets_unchecked_without_targets(self) -> None:
        """Without a set of targets, owners are not cross-checked."""
        _, problems = load_maps([BAD_MAPS / "undefined_owner_target.yaml"])
        assert problems == []

    def test_duplicate_service_across_files(self) -> None:
        """A service defined in two files of one directory is reported where it repeats."""
        folder = BAD_MAPS / "duplicate_service"
        graph, problems = load_maps([folder], TARGETS)
        assert [str(p) for p in problems] == [
            f"{folder / 'b.yaml'}:8: services.web: duplicate service, first defined at "
            f"{folder / 'a.yaml'}:2"
        ]
        assert graph.services["web"].tier == 1

    def test_several_problems_at_once_sorted(self) -> None:
        """Every problem of a file is reported in one error, sorted by line."""
        _, problems = load_maps([BAD_MAPS / "several_problems.yaml"], TARGETS)
        file = BAD_MAPS / "several_problems.yaml"
        assert str(ConfigError(problems)).splitlines() == [
            f"{file}:4: services.web.tier: must be an integer from 1 (most critical) to 4 (got 9)",
            f"{file}:9: services.web.depends_on[0].kind: must be 'hard' or 'soft' (got 'maybe')",
            f"{file}:10: services.db.tier: missing (1 = most critical … 4)",
            f"{file}:12: services.db.owners.technical_lead: missing: every service needs a "
            "technical lead",
            f"{file}:13: services.db.owners.dba: unknown role (expected one of technical_lead, "
            "service_lead) (got 'dba')",
            f"{file}:19: services.search.depends_on[0]: names an unknown service (got 'index')",
            f"{file}:20: extra: unknown key (got 'extra')",
        ]

    def test_invalid_services_are_left_out(self) -> None:
        """A service with a problem is not in the graph; valid ones still are."""
        graph, _ = load_maps([BAD_MAPS / "several_problems.yaml"], TARGETS)
        assert set(graph.services) == {"search"}


class TestSeverityHelpers:
    """higher and lower_by_one order PagerDuty severities."""

    def test_higher(self) -> None:
        """The more severe wins, and None counts as lowest."""
        assert higher("warning", "critical") == "critical"
        assert higher("error", "info") == "error"
        assert higher(None, "info") == "info"
        assert higher("warning", None) == "warning"
        assert higher(None, None) is None

    def test_lower_by_one(self) -> None:
        """One step down, bottoming out at info."""
        assert lower_by_one("critical") == "error"
        assert lower_by_one("error") == "warning"
        assert lower_by_one("warning") == "info"
        assert lower_by_one("info") == "info"


class TestImpactedServiceExplain:
    """ImpactedService.explain: one line a person can read at 2 AM."""

    def test_direct_dependent(self) -> None:
        """A direct dependent names only the failing service."""
        hit = ImpactedService("web", 1, DEGRADED, 1, ("cdn", "web"))
        assert hit.explain() == "web is degraded because cdn is failing"


class TestDependencies:
    """ServiceGraph.dependencies and closest: what services need, and names almost right."""

    def test_transitive_hard_and_soft(self, shop: ServiceGraph) -> None:
        """Everything payments needs, through hard and soft edges, each from payments."""
        assert shop.dependencies(["payments"]) == dict.fromkeys(
            ["dns", "postgres-payments", "egress-proxy", "kafka", "core-network",
             "volume-storage"], "payments")

    def test_nearest_of_several_and_aliases(self) -> None:
        """A shared dependency goes to the nearest service given (aliases count); the given
        services are left out, even when one depends on another; unknown names are ignored."""
        graph = build_graph([
            service("web", 1, "api", Dependency("cache", SOFT)),
            replace(service("api", 2, "db"), aliases=("api-server",)),
            service("cache", 3),
            service("db", 3, "disk"),
            service("disk", 4),
        ])
        assert graph.dependencies(["web", "api-server", "nope"]) == {
            "cache": "web", "db": "api", "disk": "api"}
        assert graph.dependencies(["disk"]) == {}

    def test_closest(self, shop: ServiceGraph) -> None:
        """A misspelt name finds the service or alias it probably meant; gibberish nothing."""
        assert shop.closest("paymnets") == "payments"
        assert shop.closest("checkout-ap") == "checkout-api"
        assert shop.closest("zzzzzzzz") is None
