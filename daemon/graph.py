"""Dependency maps: strict loading, validation, and impact analysis on networkx.

Edges point from a dependent to its dependency (`checkout -> payments`): when `payments`
fails, everything that can reach it along edges is impacted. A service reached through hard
edges only is *down*; one that needs a soft edge on every path is *degraded*.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx

HARD = "hard"
SOFT = "soft"
DOWN = "down"
DEGRADED = "degraded"
SEVERITIES = ("info", "warning", "error", "critical")
DEFAULT_TIER_SEVERITY: Mapping[int, str] = MappingProxyType(
    {1: "critical", 2: "error", 3: "warning", 4: "info"}
)
OWNER_ROLES = ("technical_lead", "service_lead")
_NO_LINES: Mapping[str, int] = MappingProxyType({})



@dataclass(frozen=True, slots=True)
class Dependency:
    """An edge of the map: the service depended on, and how hard."""

    service: str
    kind: str = HARD


@dataclass(frozen=True, slots=True)
class Service:
    """A node of the map."""

    name: str
    tier: int
    component: str
    owners: Mapping[str, str]
    business_service: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    depends_on: tuple[Dependency, ...] = ()
    source: str = ""
    # Line of each owner, alias and dependency (`owners.technical_lead`, `depends_on[2]`),
    # for the cross-reference errors found after parsing.
    lines: Mapping[str, int] = field(default_factory=lambda: _NO_LINES, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ImpactedService:
    """A service hurt by a failure: how badly, how far away, and through which chain."""

    name: str
    tier: int
    state: str
    distance: int
    path: tuple[str, ...]

    def explain(self) -> str:
        """Say in one line why this service is impacted."""
        chain = " -> ".join(reversed(self.path[:-1]))
        return f"{self.name} is {self.state} because {chain} is failing"


@dataclass(frozen=True, slots=True)
class Impact:
    """What a set of failing services takes down or degrades."""

    failing: tuple[str, ...]
    impacted: tuple[ImpactedService, ...]
    most_critical_tier: int | None
    business_services: tuple[str, ...]
    tier_counts: Mapping[int, int]
    severity: str | None

    @property
    def down(self) -> tuple[ImpactedService, ...]:
        """The impacted services that are down."""
        return tuple(s for s in self.impacted if s.state == DOWN)


def severity_rank(severity: str) -> int:
    """Position of a PagerDuty severity, info lowest."""
    return SEVERITIES.index(severity)


def higher(a: str | None, b: str | None) -> str | None:
    """The more severe of two severities (None counts as lowest)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if severity_rank(a) >= severity_rank(b) else b


def lower_by_one(severity: str) -> str:
    """One step less severe, bottoming out at info."""
    return SEVERITIES[max(0, severity_rank(severity) - 1)]


@dataclass(frozen=True)
class ServiceGraph:
    """An immutable, validated dependency map with its networkx graph."""

    services: Mapping[str, Service]
    aliases: Mapping[str, str]
    graph: nx.DiGraph
    tier_severity: Mapping[int, str] = field(default_factory=lambda: DEFAULT_TIER_SEVERITY)
    cycles: tuple[tuple[str, ...], ...] = ()

    def resolve(self, name: str) -> Service | None:
        """The service called `name` directly or through an alias."""
        service = self.services.get(name)
        if service is None:
            canonical = self.aliases.get(name)
            service = self.services.get(canonical) if canonical else None
        return service

    def impact(self, failing: Iterable[str]) -> Impact:
        """Union of the blast radii of `failing`, with business impact and implied severity."""
        sources = sorted({name for name in failing if name in self.services})
        down = self._reach(sources, hard_only=True)
        reached = self._reach(sources, hard_only=False)
        impacted: list[ImpactedService] = []
        severity: str | None = None
        for name in sources:
            severity = higher(severity, self.tier_severity[self.services[name].tier])
        for name, path in reached.items():
            if name in sources:
                continue
            state = DOWN if name in down else DEGRADED
            tier = self.services[name].tier
            tier_sev = self.tier_severity[tier]
            severity = higher(severity, tier_sev if state == DOWN else lower_by_one(tier_sev))
            # A down service is explained by its all-hard chain, which may be longer than
            # the shortest chain through a soft edge; distance and path must agree.
            best_path = down.get(name, path)
            impacted.append(ImpactedService(name, tier, state, len(best_path) - 1, best_path))
        impacted.sort(key=lambda s: (s.tier, s.state != DOWN, s.distance, s.name))
        every = [*sources, *(s.name for s in impacted)]
        tiers = [self.services[n].tier for n in every]
        counts: dict[int, int] = {}
        for tier in tiers:
            counts[tier] = counts.get(tier, 0) + 1
        business = sorted(
            {b for n in every if (b := self.services[n].business_service) is not None}
        )
        return Impact(
            failing=tuple(sources),
            impacted=tuple(impacted),
            most_critical_tier=min(tiers) if tiers else None,
            business_services=tuple(business),
            tier_counts=MappingProxyType(dict(sorted(counts.items()))),
            severity=severity,
        )

    def _reach(self, sources: list[str], *, hard_only: bool) -> dict[str, tuple[str, ...]]:
        """Breadth-first walk against the edges: each reached dependent with its path."""
        paths: dict[str, tuple[str, ...]] = {name: (name,) for name in sources}
        queue = deque(sources)
        pred = self.graph.pred
        while queue:
            current = queue.popleft()
            for dependent, attrs in pred[current].items():
                if dependent in paths or (hard_only and attrs["kind"] != HARD):
                    continue
                paths[dependent] = (*paths[current], dependent)
                queue.append(dependent)
        return paths


def build_graph(services: Iterable[Service], tier_severity: Mapping[int, str] | None = None
                ) -> ServiceGraph:
    """Build the immutable map from validated services (dependencies must exist)."""
    by_name = {s.name: s for s in services}
    graph = nx.DiGraph()
    graph.add_nodes_from(by_name)
    aliases: dict[str, str] = {}
    for service in by_name.values():
        for dep in service.depends_on:
            graph.add_edge(service.name, dep.service, kind=dep.kind)
        for alias in service.aliases:
            aliases[alias] = service.name
    cycles = tuple(
        tuple(sorted(component))
        for component in nx.strongly_connected_components(graph)
        if len(component) > 1
    )
    return ServiceGraph(
        services=MappingProxyType(by_name),
        aliases=MappingProxyType(aliases),
        graph=graph,
        tier_severity=MappingProxyType(dict(tier_severity or DEFAULT_TIER_SEVERITY)),
        cycles=tuple(sorted(cycles)),
    )
