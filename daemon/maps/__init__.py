"""Dependency maps: reading them in every supported format, and checking them together.

Each format module turns files into service definitions, edges and located names (`found`);
this module merges them, reports duplicates and broken cross-references, and builds the
`ServiceGraph`. Formats: native YAML (`native`), Backstage catalog YAML (`backstage`), and
JSON or CSV edge lists (`edges`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from daemon.errors import Problem, did_you_mean, missing
from daemon.graph import HARD, Dependency, Service, ServiceGraph, build_graph
from daemon.maps.backstage import Catalog, is_entity, owner_key
from daemon.maps.edges import EdgeLists, MapDefaults
from daemon.maps.found import Definition, Found
from daemon.maps.native import read_native, source_line
from daemon.yamlsrc import load_file, shown

__all__ = ["MapDefaults", "MapOptions", "load_maps", "map_files", "owner_key"]

MAP_SUFFIXES = (".yaml", ".yml", ".json", ".csv")
EDGE_LIST_SUFFIXES = (".json", ".csv")


@dataclass(frozen=True, slots=True)
class MapOptions:
    """What map loading takes from the settings: Backstage owners' leads, edge-list defaults."""

    # Owner key (see `owner_key`) -> role -> target.
    backstage_owners: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    defaults: MapDefaults = field(default_factory=MapDefaults)


def map_files(paths: Iterable[Path]) -> list[Path]:
    """The map files named by `paths`: files as given, directories' map files sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in MAP_SUFFIXES))
        else:
            found.append(path)
    return found


def load_maps(
    paths: Iterable[Path],
    targets: set[str] | None = None,
    tier_severity: Mapping[int, str] | None = None,
    options: MapOptions | None = None,
) -> tuple[ServiceGraph, list[Problem]]:
    """Load and merge map files; returns the graph and every problem (warnings included)."""
    options = options or MapOptions()
    found = Found()
    catalog = Catalog()
    edge_lists = EdgeLists()
    paths = list(paths)
    for path in paths:
        if not path.exists():
            found.problems.append(Problem(str(path), 0, "", missing(path)))
    # A missing path is reported once above, not again as an unreadable file.
    for file in map_files(p for p in paths if p.exists()):
        if file.suffix in EDGE_LIST_SUFFIXES:
            edge_lists.read(file, found)
            continue
        docs, problems = load_file(file)
        found.problems.extend(problems)
        for doc in docs:
            if is_entity(doc):
                catalog.add(doc, str(file), found)
            else:
                read_native(doc, str(file), found)
    # Backstage relations and edge lists may name services of any file: resolve them last,
    # Backstage first, because an edge list defers to the YAML maps' definitions.
    catalog.resolve(options.backstage_owners, found)
    edge_lists.resolve(options.defaults, found)
    services = _merge(found)
    _check_references(services, found, targets)
    graph = build_graph((d.service for d in services.values()), tier_severity)
    for cycle in graph.cycles:
        first = services[cycle[0]]
        found.problems.append(Problem(
            first.service.source.rsplit(":", 1)[0], source_line(first.service), first.edges_path,
            "dependency cycle (impact analysis treats it as one unit): " + " <-> ".join(cycle),
            warning=True,
        ))
    return graph, found.problems


def _merge(found: Found) -> dict[str, Definition]:
    """One definition per service (duplicates reported), with the edges other files add."""
    services: dict[str, Definition] = {}
    for definition in found.definitions:
        service = definition.service
        first = services.get(service.name)
        if first is None:
            services[service.name] = definition
            continue
        found.problems.append(Problem(
            service.source.rsplit(":", 1)[0], source_line(service), definition.path,
            f"duplicate service, first defined at {first.service.source}",
        ))
    added: dict[str, list[Dependency]] = {}
    for dependent, dependency in found.edges:
        # An edge to a name that is no valid service has been reported where it is written.
        if dependent in services and dependency.service in services:
            added.setdefault(dependent, []).append(dependency)
    for name, extra in added.items():
        definition = services[name]
        services[name] = replace(definition, service=_with_edges(definition.service, extra))
    return services


def _with_edges(service: Service, extra: list[Dependency]) -> Service:
    """`service` depending also on `extra`: one edge per dependency, hard if any source says so."""
    kinds: dict[str, str] = {}
    for dep in (*service.depends_on, *extra):
        if kinds.get(dep.service) != HARD:
            kinds[dep.service] = dep.kind
    return replace(service, depends_on=tuple(Dependency(n, k) for n, k in kinds.items()))


def _check_references(
    services: dict[str, Definition], found: Found, targets: set[str] | None
) -> None:
    """Cross-references; `found.defined` also holds names whose definition had errors."""
    for mention in found.services:
        if mention.name not in found.defined:
            # Only for a name written bare: a Backstage entity ref (`resource:db`) is
            # not mended by a bare name, and its kind is likely what is wrong.
            bare = mention.written == mention.name
            hint = did_you_mean(mention.name, found.defined) if bare else ""
            found.problems.append(Problem(mention.file, mention.line, mention.path,
                                          f"names an unknown service{hint}",
                                          shown(mention.written)))
    alias_owner: dict[str, str] = {}
    for service, mention in found.aliases:
        alias = mention.name
        clash = alias_owner.get(alias) or (alias if alias in services else None)
        if clash is not None and clash != service:
            found.problems.append(Problem(mention.file, mention.line, mention.path,
                                          f"alias already names service {clash!r}",
                                          shown(alias)))
        alias_owner[alias] = service
    if targets is not None:
        for mention in found.targets:
            if mention.name not in targets:
                found.problems.append(Problem(
                    mention.file, mention.line, mention.path,
                    "names a target that is not defined in the settings' targets",
                    shown(mention.written),
                ))
