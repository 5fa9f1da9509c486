"""Tests of ServiceGraph.impact: exact answers on small maps, the two backends against each
other and against a brute-force reference, the per-failing-set cache, and the shipped map."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daemon.graph as graph_module
from daemon.graph import (
    DEFAULT_TIER_SEVERITY,
    DEGRADED,
    DOWN,
    HARD,
    SOFT,
    Dependency,
    Impact,
    RootCause,
    Service,
    ServiceGraph,
    build_graph,
    higher,
    lower_by_one,
)
from daemon.maps import load_maps

ROOT = Path(__file__).parent.parent
BITSET = "bitset"
WALK = "walk"


def soft(name: str) -> Dependency:
    return Dependency(name, SOFT)


def svc(name: str, tier: int, *deps: Dependency | str, business: str | None = None) -> Service:
    """A service of a hand-built map; a plain name is a hard dependency."""
    return Service(
        name=name, tier=tier, component="application",
        owners=MappingProxyType({"technical_lead": "app-oncall"}),
        business_service=business,
        depends_on=tuple(d if isinstance(d, Dependency) else Dependency(d) for d in deps),
    )


def build(services: Iterable[Service], backend: str,
          tier_severity: Mapping[int, str] | None = None) -> ServiceGraph:
    """Build a map on the bitsets or, with BITSET_LIMIT forced to 0, on the set-based walk."""
    with pytest.MonkeyPatch.context() as patch:
        if backend == WALK:
            patch.setattr(graph_module, "BITSET_LIMIT", 0)
        graph = build_graph(list(services), tier_severity)
    assert (graph._index.bits is None) == (backend == WALK)
    return graph


def rows(impacted: Iterable[graph_module.ImpactedService]) -> list[tuple[str, str, int]]:
    return [(s.name, s.state, s.distance) for s in impacted]


def by_name(impact: Impact, name: str) -> graph_module.ImpactedService:
    return next(s for s in impact.impacted if s.name == name)


@pytest.fixture(params=[BITSET, WALK])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- small hand-built maps ------------------------------------------------------------------

# db <- api <- web <·· portal <- report   (<·· is the one soft edge)
CHAIN = [
    svc("db", 2),
    svc("api", 2, "db"),
    svc("web", 1, "api"),
    svc("portal", 3, soft("web")),
    svc("report", 4, "portal"),
]


class TestChainWithASoftEdge:
    """A chain with one soft edge: down below it, degraded above it."""

    def test_states_and_distances(self, backend: str) -> None:
        """Services above the soft edge are degraded, even through hard edges, and distances
        count hops from the failing service."""
        impact = build(CHAIN, backend).impact(["db"])
        assert rows(impact.impacted) == [
            ("web", DOWN, 2), ("api", DOWN, 1), ("portal", DEGRADED, 3), ("report", DEGRADED, 4),
        ]
        assert (impact.down_total, impact.degraded_total, impact.impacted_total) == (2, 2, 4)
        assert [s.name for s in impact.down] == ["web", "api"]

    def test_paths(self, backend: str) -> None:
        """Each impacted service carries the chain from the failing service up to itself."""
        impact = build(CHAIN, backend).impact(["db"])
        assert {s.name: s.path for s in impact.impacted} == {
            "api": ("db", "api"),
            "web": ("db", "api", "web"),
            "portal": ("db", "api", "web", "portal"),
            "report": ("db", "api", "web", "portal", "report"),
        }

    def test_explain(self, backend: str) -> None:
        """explain() names the chain from the nearest dependency down to the failing service."""
        impact = build(CHAIN, backend).impact(["db"])
        assert [s.explain() for s in impact.impacted] == [
            "web is down because api -> db is failing",
            "api is down because db is failing",
            "portal is degraded because web -> api -> db is failing",
            "report is degraded because portal -> web -> api -> db is failing",
        ]

    def test_failing_in_the_middle(self, backend: str) -> None:
        """Only dependents are impacted: the failing service's own dependencies are not."""
        impact = build(CHAIN, backend).impact(["web"])
        assert rows(impact.impacted) == [("portal", DEGRADED, 1), ("report", DEGRADED, 2)]
        assert impact.failing == ("web",)


class TestDiamond:
    """Two routes to the same service: the shortest one counts."""

    # bottom <- left <- top;  bottom <- mid <- right <- top
    DIAMOND: ClassVar[list[Service]] = [
        svc("top", 1, "right", "left"),
        svc("right", 2, "mid"),
        svc("mid", 2, "bottom"),
        svc("left", 2, "bottom"),
        svc("bottom", 3),
    ]

    def test_shortest_route_wins(self, backend: str) -> None:
        """The top of the diamond is reached once, at the length of the shorter route."""
        impact = build(self.DIAMOND, backend).impact(["bottom"])
        assert rows(impact.impacted) == [
            ("top", DOWN, 2), ("left", DOWN, 1), ("mid", DOWN, 1), ("right", DOWN, 2),
        ]
        assert by_name(impact, "top").path == ("bottom", "left", "top")

    def test_short_soft_route_does_not_shorten_a_down_service(self, backend: str) -> None:
        """A service down through a long hard route is measured by that route, not by a
        shorter soft one."""
        services = [
            svc("top", 1, soft("bottom"), "right"),
            svc("right", 2, "mid"),
            svc("mid", 2, "bottom"),
            svc("bottom", 3),
        ]
        top = by_name(build(services, backend).impact(["bottom"]), "top")
        assert (top.state, top.distance, top.path) == (DOWN, 3, ("bottom", "mid", "right", "top"))

    def test_degraded_takes_the_shortest_route_of_any_kind(self, backend: str) -> None:
        """A degraded service's distance is its shortest route, whatever its edges' kinds."""
        services = [
            svc("top", 1, soft("left"), soft("right")),
            svc("right", 2, "mid"),
            svc("mid", 2, "bottom"),
            svc("left", 2, soft("bottom")),
            svc("bottom", 3),
        ]
        top = by_name(build(services, backend).impact(["bottom"]), "top")
        assert (top.state, top.distance, top.path) == (DEGRADED, 2, ("bottom", "left", "top"))

    def test_one_hard_route_is_enough_to_be_down(self, backend: str) -> None:
        """A service with one all-hard route and one soft route is down."""
        services = [
            svc("top", 1, soft("left"), "right"),
            svc("right", 2, "bottom"),
            svc("left", 2, "bottom"),
            svc("bottom", 3),
        ]
        impact = build(services, backend).impact(["bottom"])
        assert rows(impact.impacted) == [("top", DOWN, 2), ("left", DOWN, 1), ("right", DOWN, 1)]
        assert by_name(impact, "top").path == ("bottom", "right", "top")


class TestSeverity:
    """Implied severity: the tier table over failing and down services, one step lower for
    degraded-only ones."""

    @pytest.mark.parametrize(("tier", "state", "expected"), [
        (1, HARD, "critical"), (1, SOFT, "error"),
        (2, HARD, "error"), (2, SOFT, "warning"),
        (3, HARD, "warning"), (3, SOFT, "warning"),  # the failing tier-3 service: warning
    ])
    def test_dependent_of_a_failing_tier_three(self, backend: str, tier: int, state: str,
                                                expected: str) -> None:
        """A tier-3 failure implies its dependent's tier severity when down, one lower when
        degraded, and never less than its own."""
        services = [svc("db", 3), svc("app", tier, Dependency("db", state))]
        assert build(services, backend).impact(["db"]).severity == expected

    def test_degraded_tier_four_stays_info(self, backend: str) -> None:
        """One step below info is still info."""
        services = [svc("job", 4), svc("report", 4, soft("job"))]
        assert build(services, backend).impact(["job"]).severity == "info"

    def test_down_beats_degraded_of_a_higher_tier(self, backend: str) -> None:
        """A degraded tier-1 (error) and a down tier-2 (error) together imply error; a down
        tier-1 beside them implies critical."""
        services = [
            svc("db", 4), svc("web", 1, soft("db")), svc("api", 2, "db"), svc("edge", 1, "api"),
        ]
        graph = build(services, backend)
        assert graph.impact(["db"]).severity == "critical"
        graph = build(services[:3], backend)
        assert graph.impact(["db"]).severity == "error"

    def test_failing_services_count_as_down(self, backend: str) -> None:
        """A failing tier-1 service implies critical by itself."""
        services = [svc("core", 1), svc("leaf", 4, soft("core"))]
        assert build(services, backend).impact(["core"]).severity == "critical"

    def test_custom_tier_severity(self, backend: str) -> None:
        """A custom table is used for down services and, one step lower, for degraded ones."""
        table = {1: "critical", 2: "critical", 3: "error", 4: "warning"}
        services = [svc("job", 4), svc("app", 3, soft("job")), svc("api", 2, soft("job"))]
        graph = build(services, backend, table)
        assert dict(graph.tier_severity) == table
        # job (tier 4) warning; app degraded (error -> warning); api degraded (critical -> error)
        assert graph.impact(["job"]).severity == "error"
        assert graph.impact(["app"]).severity == "error"
        assert build(services[:2], backend, table).impact(["job"]).severity == "warning"
        hard = [svc("job", 4), svc("api", 2, "job")]
        assert build(hard, backend, table).impact(["job"]).severity == "critical"


class TestTotals:
    """Business services hit, tier counts and most critical tiers."""

    SHOP: ClassVar[list[Service]] = [
        svc("db", 3, business="payments"),
        svc("api", 2, "db", business="checkout"),
        svc("web", 1, soft("api"), business="storefront"),
        svc("cron", 4, "db"),
        svc("search", 2, business="search"),
        svc("blog", 3, soft("search"), business="content"),
    ]

    def test_business_services(self, backend: str) -> None:
        """Business services of the failing, down and degraded services are hit, sorted; the
        rest are not."""
        impact = build(self.SHOP, backend).impact(["db"])
        assert impact.business_services == ("checkout", "payments", "storefront")

    def test_tier_counts_include_the_failing_services(self, backend: str) -> None:
        """Tier counts cover failing, down and degraded services, without empty tiers."""
        impact = build(self.SHOP, backend).impact(["db"])
        assert dict(impact.tier_counts) == {1: 1, 2: 1, 3: 1, 4: 1}
        impact = build(self.SHOP, backend).impact(["search"])
        assert dict(impact.tier_counts) == {2: 1, 3: 1}

    def test_most_critical_tiers(self, backend: str) -> None:
        """The most critical tier counts degraded services; the most critical down tier
        does not."""
        impact = build(self.SHOP, backend).impact(["db"])
        assert (impact.most_critical_tier, impact.down_tier) == (1, 2)
        assert (impact.down_total, impact.degraded_total) == (2, 1)

    def test_union_of_two_failures(self, backend: str) -> None:
        """Two failures' blast radii are united in the totals."""
        impact = build(self.SHOP, backend).impact(["db", "search"])
        assert impact.failing == ("db", "search")
        assert dict(impact.tier_counts) == {1: 1, 2: 2, 3: 2, 4: 1}
        assert impact.business_services == (
            "checkout", "content", "payments", "search", "storefront",
        )
        assert (impact.down_total, impact.degraded_total) == (2, 2)


# Insertion order is deliberately not the expected order.
TOP_MAP = [
    svc("db", 3),
    svc("e-batch", 2, soft("db")),
    svc("f-cron", 2, "d-job"),
    svc("d-job", 2, "db"),
    svc("a-api", 2, "db"),
    svc("c-ui", 1, soft("db")),
    svc("b-web", 1, "a-api"),
]


class TestTop:
    """top(limit, state): most critical first -- by tier, down before degraded, nearest
    first, then by name."""

    def test_full_order(self, backend: str) -> None:
        """impacted lists every service by tier, then down before degraded, then distance."""
        impact = build(TOP_MAP, backend).impact(["db"])
        assert rows(impact.impacted) == [
            ("b-web", DOWN, 2), ("c-ui", DEGRADED, 1),
            ("a-api", DOWN, 1), ("d-job", DOWN, 1), ("f-cron", DOWN, 2), ("e-batch", DEGRADED, 1),
        ]
        assert impact.top(6) == impact.impacted
        assert impact.top(100) == impact.impacted

    def test_limit_cuts_between_tiers(self, backend: str) -> None:
        """A limit that ends at a tier's end keeps the most critical services."""
        impact = build(TOP_MAP, backend).impact(["db"])
        assert [s.name for s in impact.top(1)] == ["b-web"]
        assert [s.name for s in impact.top(2)] == ["b-web", "c-ui"]
        assert impact.top(0) == ()
        assert impact.top(-3) == ()

    def test_by_state(self, backend: str) -> None:
        """top with a state keeps only that state, in the same order."""
        impact = build(TOP_MAP, backend).impact(["db"])
        assert [s.name for s in impact.top(10, DOWN)] == ["b-web", "a-api", "d-job", "f-cron"]
        assert [s.name for s in impact.top(10, DEGRADED)] == ["c-ui", "e-batch"]
        assert [s.name for s in impact.top(1, DEGRADED)] == ["c-ui"]
        assert impact.top(10, DOWN) == impact.down

    def test_limit_inside_a_bucket_keeps_the_nearest_down(self, backend: str) -> None:
        """When a limit cuts a tier's down services, the nearest ones are kept."""
        impact = build(TOP_MAP, backend).impact(["db"])
        assert rows(impact.top(4)) == [
            ("b-web", DOWN, 2), ("c-ui", DEGRADED, 1), ("a-api", DOWN, 1), ("d-job", DOWN, 1),
        ]
        assert [s.name for s in impact.top(3, DOWN)] == ["b-web", "a-api", "d-job"]

    def test_top_is_a_prefix_of_impacted(self, backend: str) -> None:
        """top(k) is the first k services of impacted, for every k and state."""
        impact = build(TOP_MAP, backend).impact(["db"])
        for k in range(len(impact.impacted) + 1):
            assert impact.top(k) == impact.impacted[:k], k
            assert impact.top(k, DOWN) == impact.down[:k], k

    def test_limit_inside_a_bucket_keeps_the_nearest_degraded(self, backend: str) -> None:
        """When a limit cuts a tier's degraded services, the nearest ones are kept, even if
        the nearest hangs off a down service only reached through a long hard chain."""
        services = [
            svc("f", 3),
            svc("a1", 3, "f"),
            svc("a2", 3, "a1"),
            svc("d", 3, soft("f"), "a2"),  # down at 3 (hard chain), but 1 hop from f
            svc("x", 2, soft("d")),  # degraded, distance 2: f ··> d ··> x
            svc("y", 2, soft("a2")),  # degraded, distance 3: f -> a1 -> a2 ··> y
        ]
        impact = build(services, backend).impact(["f"])
        assert rows(impact.top(10, DEGRADED)) == [("x", DEGRADED, 2), ("y", DEGRADED, 3)]
        assert rows(impact.top(1, DEGRADED)) == [("x", DEGRADED, 2)]


class TestRootCauses:
    """Probable root causes among the failing services, and the chains that blame them."""

    APP_ON_DB: ClassVar[list[Service]] = [
        svc("db", 2, business="orders"),
        svc("app", 2, "db"),
        svc("web", 1, "app", business="shop"),
        svc("admin", 3, soft("app")),
    ]

    def test_single_failure_is_its_own_root(self, backend: str) -> None:
        """A lone failing service is the only root cause, with the whole impact's totals."""
        impact = build(self.APP_ON_DB, backend).impact(["db"])
        assert impact.root_causes == (
            RootCause(("db",), most_critical_tier=1, down_tier=1, down_total=2,
                      impacted_total=3, business_services=("orders", "shop")),
        )

    def test_dependency_is_the_root(self, backend: str) -> None:
        """With a database and the app on it both failing, only the database is a root, and
        it is credited with taking the app down."""
        impact = build(self.APP_ON_DB, backend).impact(["app", "db"])
        assert [c.name for c in impact.root_causes] == ["db"]
        cause = impact.root_causes[0]
        assert (cause.down_total, cause.impacted_total, cause.down_tier) == (2, 3, 1)
        assert rows(impact.impacted) == [("web", DOWN, 1), ("admin", DEGRADED, 1)]

    def test_dependents_are_explained_through_the_failing_app(self, backend: str) -> None:
        """The app's dependents carry the chain from the root through the failing app."""
        impact = build(self.APP_ON_DB, backend).impact(["db", "app"])
        web, admin = impact.impacted
        assert web.path == ("db", "app", "web")
        assert web.explain() == "web is down because app -> db is failing"
        assert admin.path == ("db", "app", "admin")
        assert admin.explain() == "admin is degraded because app -> db is failing"

    def test_blame(self, backend: str) -> None:
        """blame() walks a failing service's failing dependencies down to its root cause."""
        services = [*self.APP_ON_DB, svc("edge", 1, "web")]
        impact = build(services, backend).impact(["db", "app", "web", "edge"])
        assert impact.blame("edge") == ("edge", "web", "app", "db")
        assert impact.blame("web") == ("web", "app", "db")
        assert impact.blame("app") == ("app", "db")
        assert impact.blame("db") == ("db",)
        assert impact.blame("admin") == ("admin",)
        assert impact.blame("no-such-service") == ("no-such-service",)
        assert [c.name for c in impact.root_causes] == ["db"]

    def test_soft_dependency_also_blames(self, backend: str) -> None:
        """A failing service whose failing dependency is soft is not a root cause either."""
        services = [svc("db", 2), svc("app", 2, soft("db")), svc("web", 1, "app")]
        impact = build(services, backend).impact(["db", "app"])
        assert [c.name for c in impact.root_causes] == ["db"]
        assert impact.blame("app") == ("app", "db")
        assert by_name(impact, "web").path == ("db", "app", "web")

    def test_two_roots_ranked_by_tier_taken_down(self, backend: str) -> None:
        """Of two independent roots, the one taking down a tier-1 service comes first, even
        when the other takes down more."""
        services = [
            svc("cache", 3), svc("web", 1, "cache"),
            svc("broker", 3), svc("q1", 3, "broker"), svc("q2", 3, "broker"),
            svc("q3", 3, "broker"),
        ]
        impact = build(services, backend).impact(["broker", "cache"])
        assert impact.root_causes == (
            RootCause(("cache",), 1, 1, 1, 1, ()),
            RootCause(("broker",), 3, 3, 3, 3, ()),
        )

    def test_two_roots_ranked_by_how_many_down(self, backend: str) -> None:
        """Of two roots taking down the same tier, the one taking down more comes first."""
        services = [
            svc("alpha", 3), svc("one", 2, "alpha"),
            svc("zeta", 3), svc("two", 2, "zeta"), svc("three", 2, "zeta"),
        ]
        impact = build(services, backend).impact(["alpha", "zeta"])
        assert [(c.name, c.down_total) for c in impact.root_causes] == [("zeta", 2), ("alpha", 1)]

    def test_degrading_does_not_count_as_taking_down(self, backend: str) -> None:
        """A root that only degrades a tier-1 service ranks below one taking down tier 2."""
        services = [
            svc("alpha", 3), svc("web", 1, soft("alpha")), svc("x", 3, "alpha"),
            svc("beta", 3), svc("api", 2, "beta"),
        ]
        impact = build(services, backend).impact(["alpha", "beta"])
        assert [(c.name, c.most_critical_tier, c.down_tier) for c in impact.root_causes] == [
            ("beta", 2, 2), ("alpha", 1, 3),
        ]

    def test_failing_cycle_is_one_candidate(self, backend: str) -> None:
        """A cycle of failing services is one candidate named by its members."""
        services = [svc("a", 2, "b"), svc("b", 2, "a"), svc("c", 1, "a")]
        graph = build(services, backend)
        assert graph.cycles == (("a", "b"),)
        impact = graph.impact(["b", "a"])
        assert [c.name for c in impact.root_causes] == ["a <-> b"]
        assert impact.root_causes[0].services == ("a", "b")
        assert impact.root_causes[0].down_total == 1
        assert rows(impact.impacted) == [("c", DOWN, 1)]
        assert by_name(impact, "c").path == ("a", "c")
        assert impact.blame("a") == ("a",)

    def test_cycle_above_a_failing_dependency_is_not_a_root(self, backend: str) -> None:
        """A failing cycle that depends on another failing service is blamed on it."""
        services = [svc("a", 2, "b", "db"), svc("b", 2, "a"), svc("c", 1, "b"), svc("db", 3)]
        impact = build(services, backend).impact(["a", "b", "db"])
        assert [c.name for c in impact.root_causes] == ["db"]
        assert impact.blame("a") == ("a", "db")
        assert impact.blame("b") == ("b", "a", "db")
        assert by_name(impact, "c").path == ("db", "a", "b", "c")

    def test_one_failing_member_of_a_cycle(self, backend: str) -> None:
        """One failing member of a cycle is the root; its partner is down, one hop away."""
        services = [svc("a", 2, "b"), svc("b", 2, "a")]
        impact = build(services, backend).impact(["a"])
        assert [c.name for c in impact.root_causes] == ["a"]
        assert rows(impact.impacted) == [("b", DOWN, 1)]


class TestEdgeCases:
    """Unknown names and empty failing sets."""

    def test_unknown_names_are_ignored(self, backend: str) -> None:
        """Names the map does not define are dropped from the failing set."""
        graph = build(CHAIN, backend)
        impact = graph.impact(["nope", "db", "also-nope"])
        assert impact.failing == ("db",)
        assert impact is graph.impact(["db"])
        assert impact.down_total == 2

    @pytest.mark.parametrize("failing", [[], ["nope"]])
    def test_nothing_failing(self, backend: str, failing: list[str]) -> None:
        """No known failing service gives zero totals, no severity and no root causes."""
        impact = build(CHAIN, backend).impact(failing)
        assert impact.failing == ()
        assert (impact.down_total, impact.degraded_total, impact.impacted_total) == (0, 0, 0)
        assert dict(impact.tier_counts) == {}
        assert impact.most_critical_tier is None
        assert impact.severity is None
        assert impact.business_services == ()
        assert impact.root_causes == ()
        assert impact.impacted == ()
        assert impact.top(5) == ()

    def test_nothing_depends_on_it(self, backend: str) -> None:
        """A failing service nothing depends on impacts nothing but still counts itself."""
        impact = build(CHAIN, backend).impact(["report"])
        assert impact.impacted == ()
        assert dict(impact.tier_counts) == {4: 1}
        assert impact.severity == "info"
        assert [c.name for c in impact.root_causes] == ["report"]


class TestRelated:
    """Which services are connected to one (for correlating alerts into one fire)."""

    def test_dependencies_dependents_and_itself_but_not_siblings(self, backend: str) -> None:
        """db <- api <- web, and batch <- db: api is connected to db (below), web (above)
        and itself; batch shares db with api but neither depends on the other."""
        graph = build([svc("db", 2), svc("api", 1, "db"), svc("web", 1, soft("api")),
                       svc("batch", 4, "db"), svc("alone", 3)], backend)

        related = graph.related("api")

        assert sorted(related) == ["api", "db", "web"]
        assert len(related) == 3
        assert "batch" not in related
        assert "alone" not in related
        assert "nowhere" not in related
        assert sorted(graph.related("db")) == ["api", "batch", "db", "web"]
        assert list(graph.related("alone")) == ["alone"]
        assert len(graph.related("nowhere")) == 0

    def test_among_yields_the_connected_services_of_a_bitset(self, backend: str) -> None:
        """`mask` turns names into a bitset over the map (unknown names left out, None on a
        map without bitsets); `among` yields the connected services that are in it, which
        is how an alert finds the failing services it joins."""
        graph = build([svc("db", 2), svc("api", 1, "db"), svc("web", 1, soft("api")),
                       svc("batch", 4, "db"), svc("alone", 3)], backend)

        failing = graph.mask(["web", "batch", "nowhere"])

        if backend == WALK:
            assert failing is None
            return
        assert failing is not None
        assert sorted(graph.related("api").among(failing)) == ["web"]
        assert sorted(graph.related("db").among(failing)) == ["batch", "web"]
        assert list(graph.related("alone").among(failing)) == []
        assert list(graph.related("nowhere").among(failing)) == []
        assert graph.mask([]) == 0
        assert graph.mask(["web"]) | graph.mask(["batch"]) == failing  # type: ignore[operator]

    def test_a_cycle_is_connected_both_ways(self, backend: str) -> None:
        """a -> b -> a: each is connected to the other."""
        graph = build([svc("a", 1, "b"), svc("b", 1, "a"), svc("c", 1, "a")], backend)

        assert sorted(graph.related("b")) == ["a", "b", "c"]


class TestCache:
    """Impacts are cached per failing set."""

    def test_same_set_same_object(self, backend: str) -> None:
        """Asking twice for the same failing set returns the very same Impact."""
        graph = build(CHAIN, backend)
        first = graph.impact(["db", "web"])
        assert graph.impact(["db", "web"]) is first

    def test_order_and_repeats_do_not_matter(self, backend: str) -> None:
        """The same names in another order, or repeated, hit the cache."""
        graph = build(CHAIN, backend)
        first = graph.impact(["db", "web"])
        assert graph.impact(("web", "db")) is first
        assert graph.impact(iter(["web", "db", "web"])) is first

    def test_different_sets_differ(self, backend: str) -> None:
        """A different failing set is a different Impact."""
        graph = build(CHAIN, backend)
        assert graph.impact(["db"]) is not graph.impact(["db", "web"])


# -- the two backends, and a brute-force reference ------------------------------------------

@dataclass(frozen=True)
class Reference:
    """What impact must answer, computed naively with networkx."""

    down: Mapping[str, int]
    degraded: Mapping[str, int]


def reference(graph: nx.DiGraph, failing: set[str]) -> Reference:
    """Down: reached against hard edges only; degraded: reached otherwise. Distances are
    multi-source shortest paths over those edges."""
    if not failing:
        return Reference({}, {})
    up_all = graph.reverse(copy=True)
    up_hard = nx.DiGraph()
    up_hard.add_nodes_from(graph)
    up_hard.add_edges_from((b, a) for a, b, kind in graph.edges(data="kind") if kind == HARD)
    hard = nx.multi_source_dijkstra_path_length(up_hard, failing)
    every = nx.multi_source_dijkstra_path_length(up_all, failing)
    down = {n: d for n, d in hard.items() if n not in failing}
    degraded = {n: d for n, d in every.items() if n not in failing and n not in down}
    return Reference(down, degraded)


def reference_roots(graph: nx.DiGraph, tiers: Mapping[str, int],
                    failing: set[str]) -> list[tuple[str, ...]]:
    """Root-cause candidates, ranked: down tier, then how many down, then most critical
    tier, then how many impacted, then names."""
    component = {n: frozenset(c) for c in nx.strongly_connected_components(graph) for n in c}
    groups = {
        component[f] for f in failing
        if not (nx.descendants(graph, f) - component[f]) & failing
    }
    ranked = []
    for group in groups:
        members = set(group) & failing
        ref = reference(graph, members)
        down_tier = min(tiers[n] for n in {*members, *ref.down})
        worst = min(tiers[n] for n in {*members, *ref.down, *ref.degraded})
        key = (down_tier, -len(ref.down), worst, -(len(ref.down) + len(ref.degraded)),
               tuple(sorted(members)))
        ranked.append((key, tuple(sorted(members))))
    return [names for _, names in sorted(ranked)]


@st.composite
def random_maps(draw: st.DrawFn) -> tuple[list[Service], list[set[str]]]:
    """A random map of 2-60 services (edges mostly pointing down the list, a few back up to
    make cycles) and a few failing sets, some holding a whole cycle."""
    size = draw(st.integers(2, 60), label="size")
    per_service = draw(st.sampled_from([0.5, 1.0, 1.5, 2.5]), label="edges per service")
    soft_share = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]), label="soft share")
    back_edges = draw(st.integers(0, max(1, size // 4)), label="back edges")
    # A seeded generator builds the map: much faster than drawing every choice.
    rnd = random.Random(draw(st.integers(0, 2**32 - 1), label="seed"))
    names = [f"s{i:02d}" for i in range(size)]
    deps: list[dict[int, str]] = [{} for _ in names]

    def kind() -> str:
        return SOFT if rnd.random() < soft_share else HARD

    for _ in range(int(size * per_service)):
        low, high = sorted(rnd.sample(range(size), 2))
        deps[high].setdefault(low, kind())
    for _ in range(back_edges):
        low, high = sorted(rnd.sample(range(size), 2))
        deps[low].setdefault(high, kind())
    services = [
        svc(names[i], rnd.randint(1, 4), *(Dependency(names[j], k) for j, k in deps[i].items()),
            business=rnd.choice([None, None, "shop", "login", "search"]))
        for i in range(size)
    ]
    graph = nx.DiGraph([(a, b) for a, out in enumerate(deps) for b in out])
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    failing_sets = []
    for _ in range(draw(st.integers(1, 4), label="failing sets")):
        failing = set(rnd.sample(names, rnd.randint(0, min(size, 10))))
        if cycles and rnd.random() < 0.5:
            failing |= {names[i] for i in rnd.choice(cycles)}
        failing_sets.append(failing)
    return services, failing_sets


def check_path(graph: nx.DiGraph, impact: Impact, hit: graph_module.ImpactedService) -> None:
    """Check that an impacted service's path is a valid chain from a root cause."""
    failing = set(impact.failing)
    roots = {name for cause in impact.root_causes for name in cause.services}
    path = hit.path
    assert path[-1] == hit.name
    assert path[0] in roots
    for dependency, dependent in itertools.pairwise(path):
        assert graph.has_edge(dependent, dependency), (path, dependent, dependency)
    last = max(i for i, name in enumerate(path) if name in failing)
    assert not failing & set(path[last + 1:])
    assert len(path) - 1 - last == hit.distance
    kinds = [graph.edges[b, a]["kind"] for a, b in itertools.pairwise(path[last:])]
    if hit.state == DOWN:
        assert set(kinds) == {HARD}
    else:
        assert SOFT in kinds
    # The part before the failing service the path leaves from is the blame chain.
    assert tuple(reversed(path[:last + 1])) == impact.blame(path[last])


def totals(impact: Impact) -> tuple[object, ...]:
    """Everything impact() computes up front, root causes last."""
    return (
        impact.failing, impact.down_total, impact.degraded_total, impact.impacted_total,
        dict(impact.tier_counts), impact.most_critical_tier, impact.down_tier,
        impact.business_services, impact.severity, impact.root_causes,
    )


def expected_totals(services: Sequence[Service], failing: set[str],
                    ref: Reference) -> tuple[object, ...]:
    """What totals() must give, from the reference's down and degraded services."""
    tiers = {s.name: s.tier for s in services}
    business = {s.name: s.business_service for s in services}
    hit = failing | set(ref.down) | set(ref.degraded)
    counts: dict[int, int] = {}
    for name in hit:
        counts[tiers[name]] = counts.get(tiers[name], 0) + 1
    severity: str | None = None
    for name in failing | set(ref.down):
        severity = higher(severity, DEFAULT_TIER_SEVERITY[tiers[name]])
    for name in ref.degraded:
        severity = higher(severity, lower_by_one(DEFAULT_TIER_SEVERITY[tiers[name]]))
    return (
        tuple(sorted(failing)), len(ref.down), len(ref.degraded),
        len(ref.down) + len(ref.degraded), counts,
        min((tiers[n] for n in hit), default=None),
        min((tiers[n] for n in failing | set(ref.down)), default=None),
        tuple(sorted({business[n] for n in hit} - {None})), severity,
    )


class TestBackendsAgree:
    """The bitset backend, the set-based walk and a brute-force reference give the same
    answers on random maps."""

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(random_maps())
    def test_random_maps(self, drawn: tuple[list[Service], list[set[str]]]) -> None:
        """Totals, root causes, impacted services (name, state, distance) and path lengths
        agree between backends and with the reference; every path is a valid chain."""
        services, failing_sets = drawn
        bits = build(services, BITSET)
        walk = build(services, WALK)
        graph = bits.graph
        tiers = {s.name: s.tier for s in services}
        for failing in failing_sets:
            fast, slow = bits.impact(failing), walk.impact(failing)
            # Ask for the top few before the whole list, so top() finds them on its own.
            total = fast.impacted_total
            limits = sorted({1, 2, 3, total // 2, total})
            tops = {
                (id(impact), limit, state): impact.top(limit, state)
                for impact in (fast, slow) for limit in limits for state in (None, DOWN, DEGRADED)
            }
            assert totals(fast) == totals(slow)
            assert rows(fast.impacted) == rows(slow.impacted)
            assert [len(s.path) for s in fast.impacted] == [len(s.path) for s in slow.impacted]

            ref = reference(graph, failing)
            assert totals(fast)[:9] == expected_totals(services, failing, ref)
            expected_rows = sorted(
                [(n, DOWN, d) for n, d in ref.down.items()]
                + [(n, DEGRADED, d) for n, d in ref.degraded.items()],
                key=lambda r: (tiers[r[0]], r[1] != DOWN, r[2], r[0]),
            )
            assert rows(fast.impacted) == expected_rows
            assert [c.services for c in fast.root_causes] == reference_roots(
                graph, tiers, failing)

            for impact in (fast, slow):
                for hit in impact.impacted:
                    check_path(graph, impact, hit)
                for name in impact.failing:
                    chain = impact.blame(name)
                    assert chain[0] == name
                    assert chain[-1] in {n for c in impact.root_causes for n in c.services}
                    for dependent, dependency in itertools.pairwise(chain):
                        assert graph.has_edge(dependent, dependency)
                degraded = tuple(s for s in impact.impacted if s.state == DEGRADED)
                for limit in limits:
                    assert tops[id(impact), limit, None] == impact.impacted[:limit]
                    assert tops[id(impact), limit, DOWN] == impact.down[:limit]
                    assert tops[id(impact), limit, DEGRADED] == degraded[:limit]


# -- the shipped example map ----------------------------------------------------------------

def shipped_targets() -> set[str]:
    settings_file = yaml.safe_load((ROOT / "firehouse.yml").read_text(encoding="utf-8"))
    return set(settings_file["targets"])


class TestShippedMap:
    """Root causes on the example shop's map."""

    def test_database_under_a_failing_app(self, backend: str) -> None:
        """With payments and its database failing, the database is the root cause and
        checkout is explained through payments."""
        with pytest.MonkeyPatch.context() as patch:
            if backend == WALK:
                patch.setattr(graph_module, "BITSET_LIMIT", 0)
            shop, problems = load_maps([ROOT / "dependency_maps"], shipped_targets())
        assert problems == []
        assert (shop._index.bits is None) == (backend == WALK)
        impact = shop.impact(["postgres-payments", "payments"])
        assert [c.name for c in impact.root_causes] == ["postgres-payments"]
        assert impact.blame("payments") == ("payments", "postgres-payments")
        checkout = by_name(impact, "checkout")
        assert (checkout.state, checkout.distance) == (DOWN, 1)
        assert checkout.path == ("postgres-payments", "payments", "checkout")
        assert checkout.explain() == (
            "checkout is down because payments -> postgres-payments is failing"
        )
