"""Tests of daemon.maps' Backstage and edge-list formats, and of merging them with native maps."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError, Problem
from daemon.graph import DOWN, HARD, SOFT, Dependency, ServiceGraph
from daemon.maps import MapDefaults, MapOptions, load_maps, owner_key

HERE = Path(__file__).parent
BAD_MAPS = HERE / "testdata" / "maps"
FIXTURES = HERE / "fixtures" / "dependency"
SAMPLES = FIXTURES / "backstage-format-samples"
ONLINE_BOUTIQUE = FIXTURES / "online-boutique" / "graph.derived.json"
SOCIAL_NETWORK = FIXTURES / "deathstarbench" / "socialNetwork" / "graph.derived.json"
HOTEL_RESERVATION = FIXTURES / "deathstarbench" / "hotelReservation" / "graph.derived.json"
TARGETS = {"app-oncall", "dba-oncall", "shop-owner", "team-a-oncall", "team-b-oncall",
           "team-d-oncall", "guest-oncall"}
# The owners of the Backstage samples, written as refs in several spellings.
SAMPLE_OWNERS = MapOptions(backstage_owners=MappingProxyType({
    "team-a": MappingProxyType({"technical_lead": "team-a-oncall", "service_lead": "shop-owner"}),
    "team-b": MappingProxyType({"technical_lead": "team-b-oncall"}),
    "team-d": MappingProxyType({"technical_lead": "team-d-oncall"}),
    "user:guest": MappingProxyType({"technical_lead": "guest-oncall"}),
}))
APP_DEFAULTS = MapOptions(defaults=MapDefaults(
    owners=MappingProxyType({"technical_lead": "app-oncall"})
))
# The entities the samples refer to without defining them (upstream Backstage has them).
MISSING_ENTITIES = """\
apiVersion: backstage.io/v1alpha1
kind: API
metadata:
  name: wayback-archive
spec:
  type: openapi
  lifecycle: production
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: API
metadata:
  name: wayback-search
spec:
  type: openapi
  lifecycle: production
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: artist-lookup
spec:
  type: service
  lifecycle: experimental
  owner: team-a
  system: artist-engagement-portal
  dependsOn: ['resource:artists-db']
---
apiVersion: backstage.io/v1alpha1
kind: Resource
metadata:
  name: artists-db
spec:
  type: database
  owner: team-a
  system: artist-engagement-portal
---
apiVersion: backstage.io/v1alpha1
kind: System
metadata:
  name: artist-engagement-portal
spec:
  owner: team-a
---
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def entity(kind: str, name: str, *, annotations: str = "", spec: str = "") -> str:
    """One Backstage entity document; `annotations` and `spec` are indented YAML lines."""
    lines = ["---", "apiVersion: backstage.io/v1alpha1", f"kind: {kind}", "metadata:",
             f"  name: {name}"]
    if annotations:
        lines.append("  annotations:")
        lines.extend(f"    {line}" for line in annotations.splitlines())
    lines.append("spec:")
    lines.extend(f"  {line}" for line in (spec or "owner: team-a").splitlines())
    return "\n".join(lines) + "\n"


def loaded(paths: list[Path], options: MapOptions = SAMPLE_OWNERS) -> ServiceGraph:
    """The graph of `paths`, which must load without any problem."""
    graph, problems = load_maps(paths, TARGETS, options=options)
    assert [str(p) for p in problems] == []
    return graph


def impacted(graph: ServiceGraph, failing: str) -> dict[str, str]:
    return {s.name: s.state for s in graph.impact([failing]).impacted}


class TestOwnerKey:
    """owner_key: Backstage owner refs normalised to the settings' backstage_owners keys."""

    @pytest.mark.parametrize(("ref", "key"), [
        ("team-a", "team-a"),
        ("group:team-a", "team-a"),
        ("group:default/team-a", "team-a"),
        ("Group:default/team-a", "team-a"),
        ("user:guest", "user:guest"),
        ("user:default/guest", "user:guest"),
        ("group:platform/team-a", "platform/team-a"),
    ])
    def test_normalised(self, ref: str, key: str) -> None:
        """Kind group and namespace default are left out; other kinds and namespaces stay."""
        assert owner_key(ref) == key

    @pytest.mark.parametrize("ref", ["", "group:", "a/b/c", "team a"])
    def test_invalid(self, ref: str) -> None:
        """A string that is no entity ref has no key."""
        assert owner_key(ref) is None


class TestBackstageSamples:
    """load_maps on the upstream Backstage descriptor samples."""

    def test_every_sample_loads_reporting_the_entity_outside_the_set(self) -> None:
        """With owners mapped in the settings, the only problem is a ref to a missing entity."""
        graph, problems = load_maps([SAMPLES], TARGETS, options=SAMPLE_OWNERS)
        assert [str(p) for p in problems] == [
            f"{SAMPLES / 'www-artist-component.yaml'}:11: Component:www-artist.spec."
            "consumesApis[0]: names an unknown service (got 'component:artist-lookup')",
        ]
        assert sorted(graph.services) == [
            "playback-order", "podcast-api", "wayback-archive", "wayback-archive-ingestion",
            "wayback-archive-storage", "wayback-search", "www-artist",
        ]

    def test_without_owners_each_service_says_how_to_get_a_lead(self) -> None:
        """Without settings or annotations, every entity names its owner and both remedies."""
        _, problems = load_maps([SAMPLES / "podcast-api-component.yaml",
                                 SAMPLES / "playback-order-component.yaml"], TARGETS)
        assert [str(p) for p in problems] == [
            f"{SAMPLES / 'podcast-api-component.yaml'}:11: Component:podcast-api.spec.owner: "
            "no technical lead: add the annotation firehouse.io/technical-lead, or give owner "
            "'team-b' a technical_lead under backstage_owners in the settings",
            f"{SAMPLES / 'playback-order-component.yaml'}:12: Component:playback-order.spec."
            "owner: no technical lead: add the annotation firehouse.io/technical-lead, or give "
            "owner 'user:guest' a technical_lead under backstage_owners in the settings",
        ]

    def test_the_set_loads_cleanly_with_the_missing_entities(self, tmp_path: Path) -> None:
        """Adding the entities the samples refer to (as upstream has them) leaves no problem."""
        extra = write(tmp_path, "catalog-info.yaml", MISSING_ENTITIES)
        graph = loaded([SAMPLES, extra])
        assert graph.services["www-artist"].depends_on == (Dependency("artist-lookup"),)
        assert graph.services["artist-lookup"].depends_on == (Dependency("artists-db"),)
        db = graph.services["artists-db"]
        assert (db.tier, db.component, db.business_service) == (
            3, "dbms", "artist-engagement-portal")

    def test_an_api_named_like_its_provider_is_the_provider(self, tmp_path: Path) -> None:
        """The API wayback-archive provided by the component wayback-archive is one service."""
        extra = write(tmp_path, "catalog-info.yaml", MISSING_ENTITIES)
        graph = loaded([SAMPLES, extra])
        assert "wayback-archive" not in {d.service for d in
                                         graph.services["wayback-archive"].depends_on}
        assert graph.services["wayback-search"].depends_on == (Dependency("wayback-archive"),)

    def test_fields_are_mapped(self) -> None:
        """Tier from lifecycle, business service from system, leads from the owner's roles."""
        graph, _ = load_maps([SAMPLES], TARGETS, options=SAMPLE_OWNERS)
        podcast = graph.services["podcast-api"]
        assert (podcast.tier, podcast.component, podcast.business_service) == (
            4, "application", "podcast")
        assert dict(podcast.owners) == {"technical_lead": "team-b-oncall"}
        assert podcast.description == "Podcast API"
        assert podcast.source == f"{SAMPLES / 'podcast-api-component.yaml'}:1"
        archive = graph.services["wayback-archive"]
        assert (archive.tier, archive.business_service) == (2, None)
        assert dict(archive.owners) == {
            "technical_lead": "team-a-oncall", "service_lead": "shop-owner",
        }
        assert dict(graph.services["playback-order"].owners) == {
            "technical_lead": "guest-oncall",
        }

    def test_subcomponents_and_consumed_apis_carry_impact(self) -> None:
        """A failing subcomponent takes down its parent and, through its API, the consumer."""
        graph, _ = load_maps([SAMPLES], TARGETS, options=SAMPLE_OWNERS)
        assert graph.services["wayback-archive"].depends_on == (
            Dependency("wayback-archive-ingestion"), Dependency("wayback-archive-storage"),
        )
        assert impacted(graph, "wayback-archive-storage") == {
            "wayback-archive": DOWN, "wayback-search": DOWN,
        }


class TestBackstageMapping:
    """How Backstage entities become services: annotations, tables, refs and namespaces."""

    @pytest.mark.parametrize(("lifecycle", "tier"), [
        ("lifecycle: production", 2), ("lifecycle: experimental", 4),
        ("lifecycle: deprecated", 4), ("lifecycle: beta", 3), ("", 3),
    ])
    def test_tier_from_lifecycle(self, tmp_path: Path, lifecycle: str, tier: int) -> None:
        """Without a tier annotation, the lifecycle gives the tier; unknown or none is 3."""
        path = write(tmp_path, "c.yaml", entity("Component", "web", spec=f"owner: team-a\n"
                                                 f"{lifecycle}"))
        assert loaded([path]).services["web"].tier == tier

    @pytest.mark.parametrize(("kind", "component"), [
        ("database", "dbms"), ("storage", "storage"), ("s3-bucket", "storage"),
        ("bucket", "storage"), ("queue", "messaging"), ("topic", "messaging"),
        ("kafka-topic", "messaging"), ("cache", "cache"), ("redis", "cache"), ("dns", "dns"),
    ])
    def test_resource_component_from_type(self, tmp_path: Path, kind: str,
                                          component: str) -> None:
        """A Resource's type gives its component; a type not in the table is used as is."""
        path = write(tmp_path, "r.yaml", entity("Resource", "res", spec=f"type: {kind}\n"
                                                 "owner: team-a"))
        assert loaded([path]).services["res"].component == component

    def test_annotations_override_everything(self, tmp_path: Path) -> None:
        """firehouse.io/ annotations win over lifecycle, type, system and the settings' owner."""
        text = entity("Component", "checkout", annotations="""\
firehouse.io/tier: "1"
firehouse.io/component: frontend
firehouse.io/business-service: online-checkout
firehouse.io/technical-lead: app-oncall
firehouse.io/service-lead: shop-owner
firehouse.io/aliases: "checkout-api, job:checkout"
backstage.io/techdocs-ref: dir:.""", spec="""\
type: service
lifecycle: experimental
owner: team-b
system: shop
tags: [java]""")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        checkout = graph.services["checkout"]
        assert (checkout.tier, checkout.component, checkout.business_service) == (
            1, "frontend", "online-checkout")
        assert dict(checkout.owners) == {"technical_lead": "app-oncall",
                                         "service_lead": "shop-owner"}
        assert checkout.aliases == ("checkout-api", "job:checkout")
        assert graph.resolve("job:checkout") is checkout

    def test_soft_dependencies(self, tmp_path: Path) -> None:
        """Edges named by firehouse.io/soft-dependencies are soft, the others stay hard."""
        text = entity("Component", "web", annotations="""\
firehouse.io/technical-lead: app-oncall
firehouse.io/soft-dependencies: "resource:cache, search" """, spec="""\
owner: team-a
dependsOn: [resource:db, resource:cache]
consumesApis: [search]""")
        text += entity("Resource", "db", spec="type: database\nowner: team-a")
        text += entity("Resource", "cache", spec="type: redis\nowner: team-a")
        text += entity("API", "search", spec="type: openapi\nowner: team-a")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        assert graph.services["web"].depends_on == (
            Dependency("db", HARD), Dependency("cache", SOFT), Dependency("search", SOFT),
        )

    def test_api_sits_between_consumer_and_provider(self, tmp_path: Path) -> None:
        """consumesApis and providesApis make consumer -> API -> provider."""
        text = entity("Component", "shop", spec="owner: team-a\nconsumesApis: [payments-api]")
        text += entity("Component", "payments", spec="owner: team-a\n"
                       "providesApis: [api:default/payments-api]")
        text += entity("API", "payments-api", spec="type: grpc\nowner: team-a")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        assert graph.services["payments-api"].depends_on == (Dependency("payments"),)
        assert graph.services["payments-api"].component == "application"
        assert impacted(graph, "payments") == {"payments-api": DOWN, "shop": DOWN}

    def test_dependency_of_is_a_reverse_depends_on(self, tmp_path: Path) -> None:
        """spec.dependencyOf on a resource makes the named component depend on it."""
        text = entity("Component", "web", spec="owner: team-a")
        text += entity("Resource", "db", spec="type: database\nowner: team-a\n"
                       "dependencyOf: [component:web]")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        assert graph.services["web"].depends_on == (Dependency("db"),)

    def test_namespaces(self, tmp_path: Path) -> None:
        """Another namespace prefixes the name; refs without one use the entity's namespace."""
        text = entity("Component", "web", spec="owner: team-a\ndependsOn: [resource:db]")
        text = text.replace("  name: web\n", "  name: web\n  namespace: shop\n")
        text += entity("Resource", "db", spec="type: database\nowner: team-a").replace(
            "  name: db\n", "  name: db\n  namespace: shop\n")
        text += entity("Component", "admin", spec="owner: team-a\n"
                       "dependsOn: [component:shop/web]")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        assert sorted(graph.services) == ["admin", "shop/db", "shop/web"]
        assert graph.services["shop/web"].depends_on == (Dependency("shop/db"),)
        assert graph.services["admin"].depends_on == (Dependency("shop/web"),)

    def test_owner_refs_in_any_spelling_find_their_roles(self, tmp_path: Path) -> None:
        """spec.owner `group:default/team-a` uses the settings' roles of `team-a`."""
        text = entity("Component", "web", spec="owner: group:default/team-a")
        text += entity("Component", "admin", spec="owner: user:default/guest")
        graph = loaded([write(tmp_path, "c.yaml", text)])
        assert graph.services["web"].owners["technical_lead"] == "team-a-oncall"
        assert graph.services["admin"].owners["technical_lead"] == "guest-oncall"

    def test_annotation_targets_are_cross_checked(self, tmp_path: Path) -> None:
        """A lead annotation naming no settings target is reported at the annotation."""
        path = write(tmp_path, "c.yaml", entity(
            "Component", "web", annotations="firehouse.io/technical-lead: ghost-oncall"))
        _, problems = load_maps([path], TARGETS)
        assert [str(p) for p in problems] == [
            f"{path}:7: Component:web.metadata.annotations.firehouse.io/technical-lead: names a "
            "target that is not defined in the settings' targets (got 'ghost-oncall')",
        ]

    def test_ignored_kinds(self) -> None:
        """Group, User, Domain, System, Location and Template entities add nothing."""
        graph = loaded([BAD_MAPS / "backstage_ignored_kinds.yaml"])
        assert dict(graph.services) == {}


class TestBadBackstage:
    """load_maps on bad Backstage files: one exact problem each, with file:line and key path."""

    @pytest.mark.parametrize(("name", "expected"), [
        ("backstage_bad_tier.yaml",
         '7: Component:web.metadata.annotations.firehouse.io/tier: must be "1" (most critical) '
         "to \"4\" (got '0')"),
        ("backstage_unknown_annotation.yaml",
         "8: Component:web.metadata.annotations.firehouse.io/teir: unknown annotation (expected "
         "one of firehouse.io/tier, firehouse.io/component, firehouse.io/business-service, "
         "firehouse.io/technical-lead, firehouse.io/service-lead, firehouse.io/aliases, "
         "firehouse.io/soft-dependencies) (got 'firehouse.io/teir')"),
        ("backstage_unknown_dependency.yaml",
         "13: Component:wayback-search.spec.dependsOn[0]: names an unknown service "
         "(got 'resource:wayback-db')"),
        ("backstage_dependency_misspelt.yaml",
         "12: Component:web.spec.dependsOn[0]: names an unknown service; did you mean "
         "'wayback-archive'? (got 'wayback-archiv')"),
        ("backstage_no_technical_lead.yaml",
         "11: Component:web.spec.owner: no technical lead: add the annotation "
         "firehouse.io/technical-lead, or give owner 'team-x' a technical_lead under "
         "backstage_owners in the settings"),
        ("backstage_no_owner.yaml",
         "2: Resource:orders-db: no technical lead: add the annotation "
         "firehouse.io/technical-lead (there is no spec.owner to look up in the settings' "
         "backstage_owners)"),
        ("backstage_ref_to_group.yaml",
         "12: Component:web.spec.dependsOn[0]: names a group, which is no service (only "
         "components, resources and APIs are) (got 'group:team-a')"),
        ("backstage_soft_not_a_dependency.yaml",
         "8: Component:web.metadata.annotations.firehouse.io/soft-dependencies: names no "
         "dependency of this entity (dependsOn, consumesApis, or a relation naming it) "
         "(got 'cache')"),
        ("backstage_resource_without_type.yaml",
         "9: Resource:db.spec.type: missing: a Resource's type (database, storage, queue, "
         "cache, …) gives its component, or set the annotation firehouse.io/component"),
        ("backstage_api_version.yaml",
         "2: apiVersion: must be backstage.io/v1alpha1 or backstage.io/v1beta1 "
         "(got 'backstage.io/v2')"),
        ("backstage_not_an_entity.yaml",
         "2: apiVersion: not a Backstage entity: expected backstage.io/v1alpha1 (a native map "
         "has 'services' instead) (got 'apps/v1')"),
        ("backstage_annotation_on_system.yaml",
         "7: System:artist-engagement-portal.metadata.annotations.firehouse.io/tier: Firehouse "
         "reads its annotations only on Component, Resource and API entities "
         "(got 'firehouse.io/tier')"),
    ])
    def test_one_problem(self, name: str, expected: str) -> None:
        """Each bad file yields exactly its one problem, located and named."""
        _, problems = load_maps([BAD_MAPS / name], TARGETS)
        assert [str(p) for p in problems] == [f"{BAD_MAPS / name}:{expected}"]

    def test_api_named_like_a_component_that_does_not_provide_it(self) -> None:
        """An API sharing a name with a component that does not provide it is a duplicate."""
        file = BAD_MAPS / "backstage_duplicate_api.yaml"
        _, problems = load_maps([file], TARGETS)
        assert [str(p) for p in problems] == [
            f"{file}:13: API:web: duplicate service, first defined at {file}:2",
        ]


class TestDerivedGraphs:
    """load_maps on the JSON graphs derived from public microservice demos, with map_defaults."""

    def test_online_boutique(self) -> None:
        """13 services, 17 hard edges; a failing redis-cart takes the cart and the shop down."""
        graph = loaded([ONLINE_BOUTIQUE], APP_DEFAULTS)
        assert len(graph.services) == 13
        assert graph.graph.number_of_edges() == 17
        assert graph.cycles == ()
        assert impacted(graph, "redis-cart") == {
            "cartservice": DOWN, "checkoutservice": DOWN, "frontend": DOWN,
            "loadgenerator": DOWN,
        }
        frontend = graph.services["frontend"]
        assert (frontend.tier, frontend.component) == (3, "application")
        assert dict(frontend.owners) == {"technical_lead": "app-oncall"}
        assert frontend.source == f"{ONLINE_BOUTIQUE}:4"

    def test_social_network_cycle_is_a_warning(self) -> None:
        """The user-service <-> social-graph-service cycle is one warning at the first member."""
        graph, problems = load_maps([SOCIAL_NETWORK], TARGETS, options=APP_DEFAULTS)
        lines = SOCIAL_NETWORK.read_text(encoding="utf-8").splitlines()
        # The node object's `{` is on the line before its id.
        line = lines.index('      "id": "social-graph-service",')
        assert problems == [Problem(
            str(SOCIAL_NETWORK), line, "nodes[14]",
            "dependency cycle (impact analysis treats it as one unit): "
            "social-graph-service <-> user-service",
            warning=True,
        )]
        assert str(ConfigError(problems)) == ""
        assert len(graph.services) == 28
        assert graph.cycles == (("social-graph-service", "user-service"),)

    def test_social_network_impact_through_the_cycle(self) -> None:
        """A failing user-service takes down its cycle partner and everything above both."""
        graph, _ = load_maps([SOCIAL_NETWORK], TARGETS, options=APP_DEFAULTS)
        assert impacted(graph, "user-service") == {
            "social-graph-service": DOWN, "compose-post-service": DOWN, "nginx-thrift": DOWN,
            "home-timeline-service": DOWN, "write-home-timeline-service": DOWN,
        }

    def test_hotel_reservation(self) -> None:
        """A failing geo database takes down geo, search and the frontend, nothing else."""
        graph = loaded([HOTEL_RESERVATION], APP_DEFAULTS)
        assert len(graph.services) == 24
        assert graph.cycles == ()
        assert impacted(graph, "mongodb-geo") == {"geo": DOWN, "search": DOWN, "frontend": DOWN}

    def test_defaults_apply_to_edge_list_services(self) -> None:
        """map_defaults give tier, component and both leads to services only edge lists name."""
        options = MapOptions(defaults=MapDefaults(2, "platform", MappingProxyType(
            {"technical_lead": "app-oncall", "service_lead": "shop-owner"})))
        graph = loaded([HOTEL_RESERVATION], options)
        geo = graph.services["geo"]
        assert (geo.tier, geo.component, geo.business_service) == (2, "platform", None)
        assert dict(geo.owners) == {"technical_lead": "app-oncall", "service_lead": "shop-owner"}

    def test_without_a_technical_lead_each_service_is_reported(self) -> None:
        """Without map_defaults, every service is reported once, where it first appears."""
        _, problems = load_maps([ONLINE_BOUTIQUE], TARGETS)
        assert len(problems) == 13
        assert str(problems[0]) == (
            f"{ONLINE_BOUTIQUE}:4: nodes[0]: service 'frontend' has no technical lead: give its "
            "node a technical_lead, define it in a YAML map or set map_defaults.technical_lead "
            "in the settings"
        )


class TestJsonEdgeLists:
    """JSON edge lists: node fields, edge kinds and line numbers."""

    def test_node_fields(self, tmp_path: Path) -> None:
        """A node's tier, component, business service and leads define its service."""
        path = write(tmp_path, "mesh.json", """\
{
  "nodes": [
    {"id": "web", "tier": 1, "component": "frontend", "business_service": "shop",
     "technical_lead": "app-oncall", "service_lead": "shop-owner", "image": "web:1"},
    {"id": "db", "component": "dbms", "technical_lead": "dba-oncall"}
  ],
  "edges": [{"from": "web", "to": "db", "kind": "soft", "port": 5432}],
  "_derived": "by hand"
}
""")
        graph = loaded([path], MapOptions())
        web = graph.services["web"]
        assert (web.tier, web.component, web.business_service) == (1, "frontend", "shop")
        assert dict(web.owners) == {"technical_lead": "app-oncall", "service_lead": "shop-owner"}
        assert web.depends_on == (Dependency("db", SOFT),)
        assert (graph.services["db"].tier, graph.services["db"].component) == (3, "dbms")

    def test_node_targets_are_cross_checked(self, tmp_path: Path) -> None:
        """A node's lead naming no settings target is reported at the node."""
        path = write(tmp_path, "mesh.json", '{"nodes": [\n  {"id": "web",\n'
                     '   "technical_lead": "ghost"}\n]}\n')
        _, problems = load_maps([path], TARGETS)
        assert [str(p) for p in problems] == [
            f"{path}:2: nodes[0].technical_lead: names a target that is not defined in the "
            "settings' targets (got 'ghost')",
        ]

    def test_braces_inside_strings_do_not_shift_lines(self, tmp_path: Path) -> None:
        """Lines are those of each edge object, whatever braces and quotes its strings hold."""
        path = write(tmp_path, "mesh.json", """\
{"_note": "a {weird} \\"string\\" {",
 "edges": [
  {"from": "a", "to": "b", "evidence": ["}{"]},
  {"from": "a",
   "to": "c", "kind": "sometimes"}
 ]}
""")
        _, problems = load_maps([path], TARGETS, options=APP_DEFAULTS)
        assert [str(p) for p in problems] == [
            f"{path}:4: edges[1].kind: must be 'hard' or 'soft' (got 'sometimes')",
        ]


class TestCsvEdgeLists:
    """CSV edge lists: from,to[,kind] rows with an optional header and comments."""

    def test_header_comments_blank_lines_and_kinds(self, tmp_path: Path) -> None:
        """The header and comments are skipped; kind is hard unless the row says soft."""
        path = write(tmp_path, "edges.csv", """\
# exported from the mesh, 2024-05-01
from,to,kind

web,db
web, cache ,soft
  # indented comment
worker,db,hard
worker,queue,
""")
        graph = loaded([path], APP_DEFAULTS)
        assert graph.services["web"].depends_on == (Dependency("db"), Dependency("cache", SOFT))
        assert graph.services["worker"].depends_on == (Dependency("db"), Dependency("queue"))
        assert graph.services["cache"].source == f"{path}:5"

    def test_without_header(self, tmp_path: Path) -> None:
        """The first row is an edge when it is not a header."""
        graph = loaded([write(tmp_path, "edges.csv", "web,db\n")], APP_DEFAULTS)
        assert graph.services["web"].depends_on == (Dependency("db"),)

    def test_self_calls_are_no_dependency(self, tmp_path: Path) -> None:
        """A service calling itself, as traces show, adds no edge."""
        graph = loaded([write(tmp_path, "edges.csv", "web,web\nweb,db\n")], APP_DEFAULTS)
        assert graph.services["web"].depends_on == (Dependency("db"),)


class TestBadEdgeLists:
    """load_maps on bad edge lists: one exact problem each, with file:line and key path."""

    @pytest.mark.parametrize(("name", "expected"), [
        ("edges_bad_kind.csv", "3: kind: must be 'hard' or 'soft' (got 'optional')"),
        ("edges_bad_row.csv", "5: a row must be from,to or from,to,kind (got 'web')"),
        ("edges_bad_name.csv",
         "2: to: invalid service name: use letters, digits and . _ : / - (got 'order db')"),
        ("edges_bad_kind.json", "6: edges[1].kind: must be 'hard' or 'soft' (got 'optional')"),
        ("edges_invalid.json", "5: invalid JSON: Expecting ',' delimiter"),
        ("edges_bad_node_tier.json",
         "5: nodes[1].tier: must be an integer from 1 (most critical) to 4 (got 0)"),
        ("edges_not_an_edge_list.json",
         "1: an edge list must be an object with 'nodes' and 'edges'"),
        ("edges_missing_to.json", "5: edges[1].to: missing: a service name"),
    ])
    def test_one_problem(self, name: str, expected: str) -> None:
        """Each bad file yields exactly its one problem, located and named."""
        _, problems = load_maps([BAD_MAPS / name], TARGETS, options=APP_DEFAULTS)
        assert [str(p) for p in problems] == [f"{BAD_MAPS / name}:{expected}"]

    def test_no_technical_lead(self) -> None:
        """Without map_defaults, each service of a CSV is reported where it first appears."""
        file = BAD_MAPS / "edges_no_technical_lead.csv"
        _, problems = load_maps([file], TARGETS)
        remedy = "define it in a YAML map or set map_defaults.technical_lead in the settings"
        assert [str(p) for p in problems] == [
            f"{file}:2: from: service 'web' has no technical lead: {remedy}",
            f"{file}:2: to: service 'db' has no technical lead: {remedy}",
        ]


NATIVE = """\
services:
  web:
    tier: 1
    component: application
    business_service: shop
    owners:
      technical_lead: app-oncall
    depends_on:
      - {service: db, kind: soft}
  db:
    tier: 2
    component: dbms
    owners:
      technical_lead: dba-oncall
"""


class TestMerging:
    """Native, Backstage and edge-list files in one directory make one graph."""

    def test_yaml_service_plus_csv_edges(self, tmp_path: Path) -> None:
        """A YAML-defined service keeps its attributes; the CSV adds edges, not a duplicate."""
        write(tmp_path, "shop.yaml", NATIVE)
        write(tmp_path, "mesh.csv", "from,to\nweb,cache\nweb,db\ncache,db,soft\n")
        graph = loaded([tmp_path], APP_DEFAULTS)
        web = graph.services["web"]
        assert (web.tier, web.business_service) == (1, "shop")
        # The same edge twice is one edge, hard when any source says hard.
        assert web.depends_on == (Dependency("db", HARD), Dependency("cache"))
        assert graph.services["cache"].tier == 3
        assert graph.services["cache"].depends_on == (Dependency("db", SOFT),)
        assert impacted(graph, "db") == {"web": DOWN, "cache": "degraded"}

    def test_node_fields_of_a_yaml_service_are_ignored_with_a_warning(self,
                                                                      tmp_path: Path) -> None:
        """A JSON node's fields do not override a YAML definition; a warning says so."""
        write(tmp_path, "shop.yaml", NATIVE)
        mesh = write(tmp_path, "mesh.json",
                     '{"nodes": [{"id": "db", "tier": 1}], "edges": []}\n')
        graph, problems = load_maps([tmp_path], TARGETS)
        assert [str(p) for p in problems] == [
            f"{mesh}:1: nodes[0]: warning: node fields ignored: 'db' is defined in a YAML map, "
            "which gives its attributes",
        ]
        assert graph.services["db"].tier == 2

    def test_backstage_and_native_refer_to_each_other(self, tmp_path: Path) -> None:
        """A Backstage entity may depend on a native service, and be depended on by one."""
        write(tmp_path, "shop.yaml", NATIVE.replace("db, kind: soft}",
                                                    "db, kind: soft}\n      - search"))
        write(tmp_path, "catalog-info.yaml", entity(
            "Component", "search", spec="owner: team-a\ndependsOn: [resource:db]"))
        graph = loaded([tmp_path], SAMPLE_OWNERS)
        assert graph.services["search"].depends_on == (Dependency("db"),)
        assert impacted(graph, "db") == {"search": DOWN, "web": DOWN}

    def test_duplicate_across_formats(self, tmp_path: Path) -> None:
        """A service defined natively and as a Backstage entity is a duplicate."""
        native = write(tmp_path, "a.yaml", NATIVE)
        catalog = write(tmp_path, "b.yaml", entity("Component", "web"))
        _, problems = load_maps([tmp_path], TARGETS, options=SAMPLE_OWNERS)
        assert [str(p) for p in problems] == [
            f"{catalog}:2: Component:web: duplicate service, first defined at {native}:2",
        ]

    def test_unknown_name_in_an_edge_list_is_a_service(self, tmp_path: Path) -> None:
        """A native dependency may name a service that only an edge list mentions."""
        write(tmp_path, "shop.yaml", NATIVE + "    depends_on: [backup]\n")
        write(tmp_path, "mesh.csv", "backup,object-store\n")
        graph = loaded([tmp_path], APP_DEFAULTS)
        assert impacted(graph, "object-store") == {"backup": DOWN, "db": DOWN, "web": "degraded"}


SETTINGS = """\
rules: [rules]
dependency_maps: [maps]
roles:
  incident_lead: command-center
targets:
  command-center: {}
  app-oncall: {}
  dba-oncall: {}
"""
RULES = """\
rules:
  - name: everyone
    page: [technical_lead, incident_lead]
"""


def config_dir(tmp_path: Path, settings: str) -> Path:
    """A configuration with one Backstage entity and one CSV; returns the settings file."""
    write(tmp_path / "rules", "rules.yaml", RULES)
    write(tmp_path / "maps", "catalog-info.yaml", entity(
        "Component", "web", spec="owner: group:team-a\nlifecycle: production"))
    write(tmp_path / "maps", "mesh.csv", "web,db\n")
    return write(tmp_path, "firehouse.yml", settings)


def config_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return str(caught.value).splitlines()


class TestMapSettings:
    """The settings backstage_owners and map_defaults, read by load_config."""

    def test_loads_with_both_settings(self, tmp_path: Path) -> None:
        """Owner roles reach the Backstage service, defaults the edge-list-only service."""
        path = config_dir(tmp_path, SETTINGS + """\
backstage_owners:
  group:default/team-a:
    technical_lead: app-oncall
map_defaults:
  tier: 4
  component: storage
  technical_lead: dba-oncall
""")
        config = load_config(path, {})
        assert dict(config.settings.map_options.backstage_owners) == {
            "team-a": {"technical_lead": "app-oncall"},
        }
        web, db = config.graph.services["web"], config.graph.services["db"]
        assert (web.tier, dict(web.owners)) == (2, {"technical_lead": "app-oncall"})
        assert (db.tier, db.component, dict(db.owners)) == (
            4, "storage", {"technical_lead": "dba-oncall"})
        assert web.depends_on == (Dependency("db"),)

    def test_undefined_target_is_reported_once_in_the_settings(self, tmp_path: Path) -> None:
        """An owner's target that is no settings target is one problem, not one per service."""
        path = config_dir(tmp_path, SETTINGS + """\
backstage_owners:
  team-a:
    technical_lead: ghost-oncall
map_defaults:
  technical_lead: dba-oncall
""")
        assert config_problems(path) == [
            f"{path}:11: backstage_owners.team-a.technical_lead: names a target that is not "
            "defined in targets (got 'ghost-oncall')",
        ]

    def test_bad_settings(self, tmp_path: Path) -> None:
        """Unknown keys and roles, bad tiers and a repeated owner are each reported."""
        path = config_dir(tmp_path, SETTINGS + """\
backstage_owners:
  team-a:
    technical_lead: app-oncall
    duty_manager: app-oncall
  group:default/team-a:
    technical_lead: app-oncall
map_defaults:
  tier: 0
  colour: red
  technical_lead: dba-oncall
""")
        assert config_problems(path) == [
            f"{path}:12: backstage_owners.team-a.duty_manager: unknown role (expected one of "
            "technical_lead, service_lead) (got 'duty_manager')",
            f"{path}:13: backstage_owners.group:default/team-a: names the owner 'team-a' a "
            "second time (got 'group:default/team-a')",
            f"{path}:16: map_defaults.tier: must be an integer from 1 (most critical) to 4 "
            "(got 0)",
            f"{path}:17: map_defaults.colour: unknown setting (got 'colour')",
        ]

    def test_missing_leads_point_at_both_remedies(self, tmp_path: Path) -> None:
        """Without the settings, the map problems name the settings keys that would fix them."""
        path = config_dir(tmp_path, SETTINGS)
        maps = tmp_path / "maps"
        assert config_problems(path) == [
            f"{maps / 'catalog-info.yaml'}:7: Component:web.spec.owner: no technical lead: add "
            "the annotation firehouse.io/technical-lead, or give owner 'team-a' a "
            "technical_lead under backstage_owners in the settings",
            f"{maps / 'mesh.csv'}:1: to: service 'db' has no technical lead: define it in a "
            "YAML map or set map_defaults.technical_lead in the settings",
        ]
