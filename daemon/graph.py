"""Dependency maps: strict loading, validation, and impact analysis on networkx.

Edges point from a dependent to its dependency (`checkout -> payments`): when `payments`
fails, everything that can reach it along edges is impacted. A service reached through hard
edges only is *down*; one that needs a soft edge on every path is *degraded*.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import networkx as nx

from daemon.errors import Problem
from daemon.yamlsrc import LocatedDict, LocatedList, load_file, shown

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

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_SERVICE_KEYS = frozenset(
    {"tier", "business_service", "component", "description", "owners", "aliases", "depends_on"}
)


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


def map_files(paths: Iterable[Path]) -> list[Path]:
    """The map files named by `paths`: files as given, directories' *.yaml/*.yml sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def load_maps(
    paths: Iterable[Path],
    targets: set[str] | None = None,
    tier_severity: Mapping[int, str] | None = None,
) -> tuple[ServiceGraph, list[Problem]]:
    """Load and merge map files; returns the graph and every problem (warnings included)."""
    problems: list[Problem] = []
    services: dict[str, Service] = {}
    defined: set[str] = set()
    paths = list(paths)
    for path in paths:
        if not path.exists():
            problems.append(Problem(str(path), 0, "", "no such file or directory"))
    # A missing path is reported once above, not again as an unreadable file.
    for file in map_files(p for p in paths if p.exists()):
        docs, found = load_file(file)
        problems.extend(found)
        for doc in docs:
            for service in _parse_map_doc(doc, str(file), problems, defined):
                if service.name in services:
                    first = services[service.name]
                    problems.append(Problem(
                        str(file), _source_line(service), f"services.{service.name}",
                        f"duplicate service, first defined at {first.source}",
                    ))
                else:
                    services[service.name] = service
    _check_references(services, defined, targets, problems)
    graph = build_graph(services.values(), tier_severity)
    for cycle in graph.cycles:
        first = services[cycle[0]]
        problems.append(Problem(
            first.source.rsplit(":", 1)[0], _source_line(first),
            f"services.{first.name}.depends_on",
            "dependency cycle (impact analysis treats it as one unit): " + " <-> ".join(cycle),
            warning=True,
        ))
    return graph, problems


def _source_line(service: Service) -> int:
    return int(service.source.rsplit(":", 1)[1]) if ":" in service.source else 0


def _parse_map_doc(
    doc: Any, file: str, problems: list[Problem], defined: set[str]
) -> list[Service]:
    if doc is None:
        return []
    if not isinstance(doc, LocatedDict):
        problems.append(Problem(file, getattr(doc, "line", 0), "", "a map must be a mapping "
                                "with a 'services' key"))
        return []
    for key in doc:
        if key != "services":
            problems.append(Problem(file, doc.line_of(key), key, "unknown key", shown(key)))
    raw = doc.get("services")
    if raw is None:
        return []
    if not isinstance(raw, LocatedDict):
        problems.append(Problem(file, doc.line_of("services"), "services",
                                "must be a mapping of service name to service"))
        return []
    result: list[Service] = []
    for name, body in raw.items():
        defined.add(name)
        service = _parse_service(name, body, file, raw.line_of(name), problems)
        if service is not None:
            result.append(service)
    return result


def _parse_service(
    name: str, body: Any, file: str, line: int, problems: list[Problem]
) -> Service | None:
    where = f"services.{name}"
    count = len(problems)

    def bad(key: str, message: str, value: Any = "", at: int | None = None) -> None:
        path = f"{where}.{key}" if key else where
        problems.append(
            Problem(file, at or line, path, message, shown(value) if value != "" else "")
        )

    if not _NAME.match(name):
        bad("", "invalid service name: use letters, digits and . _ : / -", name)
    if not isinstance(body, LocatedDict):
        bad("", "must be a mapping with at least 'tier', 'component' and 'owners'")
        return None
    for key in body:
        if key not in _SERVICE_KEYS:
            bad(key, "unknown key", key, body.line_of(key))
    tier = body.get("tier")
    if "tier" not in body:
        bad("tier", "missing (1 = most critical … 4)")
    elif isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 4:
        bad("tier", "must be an integer from 1 (most critical) to 4", tier, body.line_of("tier"))
    component = body.get("component")
    if not isinstance(component, str) or not component:
        bad("component", "missing or not a string (application, dbms, storage, network, …)",
            component if component is not None else "", body.line_of("component"))
    business = body.get("business_service")
    if business is not None and (not isinstance(business, str) or not business):
        bad("business_service", "must be a non-empty string", business,
            body.line_of("business_service"))
    description = body.get("description", "")
    if not isinstance(description, str):
        bad("description", "must be a string", description, body.line_of("description"))
    owners = _parse_owners(body, bad)
    aliases = _parse_names(body, "aliases", bad)
    depends = _parse_depends(body, bad)
    if len(problems) != count or not isinstance(tier, int) or not isinstance(component, str):
        return None
    return Service(
        name=name, tier=tier, component=component, owners=MappingProxyType(owners),
        business_service=business, description=description, aliases=tuple(aliases),
        depends_on=tuple(depends), source=f"{file}:{line}",
        lines=MappingProxyType(_item_lines(body)),
    )


def _item_lines(body: LocatedDict) -> dict[str, int]:
    lines: dict[str, int] = {}
    owners = body.get("owners")
    if isinstance(owners, LocatedDict):
        lines.update({f"owners.{role}": owners.line_of(role) for role in owners})
    for key in ("aliases", "depends_on"):
        items = body.get(key)
        if isinstance(items, LocatedList):
            lines.update({f"{key}[{index}]": items.line_of(index) for index in range(len(items))})
    return lines


def _parse_owners(body: LocatedDict, bad: Any) -> dict[str, str]:
    raw = body.get("owners")
    if raw is None:
        bad("owners", "missing: at least owners.technical_lead is required")
        return {}
    if not isinstance(raw, LocatedDict):
        bad("owners", "must be a mapping of role to PagerDuty target", raw, body.line_of("owners"))
        return {}
    owners: dict[str, str] = {}
    for role, target in raw.items():
        if role not in OWNER_ROLES:
            bad(f"owners.{role}", f"unknown role (expected one of {', '.join(OWNER_ROLES)})",
                role, raw.line_of(role))
        elif not isinstance(target, str) or not target:
            bad(f"owners.{role}", "must be a target name", target, raw.line_of(role))
        else:
            owners[role] = target
    if "technical_lead" not in raw:
        bad("owners.technical_lead", "missing: every service needs a technical lead", "",
            body.line_of("owners"))
    return owners


def _parse_names(body: LocatedDict, key: str, bad: Any) -> list[str]:
    raw = body.get(key)
    if raw is None:
        return []
    if not isinstance(raw, LocatedList):
        bad(key, "must be a list of names", raw, body.line_of(key))
        return []
    names: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            bad(f"{key}[{index}]", "must be a non-empty string", item, raw.line_of(index))
        else:
            names.append(item)
    return names


def _parse_depends(body: LocatedDict, bad: Any) -> list[Dependency]:
    raw = body.get("depends_on")
    if raw is None:
        return []
    if not isinstance(raw, LocatedList):
        bad("depends_on", "must be a list", raw, body.line_of("depends_on"))
        return []
    deps: list[Dependency] = []
    for index, item in enumerate(raw):
        at = raw.line_of(index)
        key = f"depends_on[{index}]"
        if isinstance(item, str) and item:
            deps.append(Dependency(item, HARD))
        elif isinstance(item, LocatedDict):
            for extra in item:
                if extra not in ("service", "kind"):
                    bad(f"{key}.{extra}", "unknown key", extra, item.line_of(extra))
            target = item.get("service")
            kind = item.get("kind", HARD)
            if not isinstance(target, str) or not target:
                bad(f"{key}.service", "missing or not a service name", target or "",
                    item.line_of("service"))
            elif kind not in (HARD, SOFT):
                bad(f"{key}.kind", "must be 'hard' or 'soft'", kind, item.line_of("kind"))
            else:
                deps.append(Dependency(target, kind))
        else:
            bad(key, "must be a service name or {service: NAME, kind: hard|soft}", item, at)
    return deps


def _check_references(
    services: dict[str, Service],
    defined: set[str],
    targets: set[str] | None,
    problems: list[Problem],
) -> None:
    """Cross-references; `defined` also holds names whose definition had errors of its own."""
    alias_owner: dict[str, str] = {}
    for service in services.values():
        file, _, line_text = service.source.rpartition(":")
        line = int(line_text)
        where = f"services.{service.name}"
        for index, dep in enumerate(service.depends_on):
            if dep.service not in defined:
                key = f"depends_on[{index}]"
                problems.append(Problem(file, service.lines.get(key, line), f"{where}.{key}",
                                        "names an unknown service", shown(dep.service)))
        for index, alias in enumerate(service.aliases):
            clash = alias_owner.get(alias) or (alias if alias in services else None)
            if clash is not None and clash != service.name:
                key = f"aliases[{index}]"
                problems.append(Problem(file, service.lines.get(key, line), f"{where}.{key}",
                                        f"alias already names service {clash!r}", shown(alias)))
            alias_owner[alias] = service.name
        if targets is not None:
            for role, target in service.owners.items():
                if target not in targets:
                    key = f"owners.{role}"
                    problems.append(Problem(
                        file, service.lines.get(key, line), f"{where}.{key}",
                        "names a target that is not defined in the settings' targets",
                        shown(target),
                    ))
