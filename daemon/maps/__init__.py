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
from daemon.yamlsrc import load_file, shown, unread

__all__ = ["MapDefaults", "MapOptions", "case_twin", "load_maps", "map_files", "owner_key"]

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
    """Load and merge map files; returns the graph and every problem (warnings included).

    In two rounds: what is wrong within each file, then, only once every file reads, what
    is wrong between them. A file that cannot be read or parsed defines nothing, so the
    names it defines would look unknown elsewhere: those checks are skipped, and said so."""
    options = options or MapOptions()
    found = Found()
    catalog = Catalog()
    edge_lists = EdgeLists()
    paths = list(paths)
    for path in paths:
        if not path.exists():
            found.problems.append(Problem(str(path), 0, "", missing(path)))
            found.unread.append(str(path))
    # A missing path is reported once above, not again as an unreadable file.
    files = map_files(p for p in paths if p.exists())
    for file in files:
        if file.suffix in EDGE_LIST_SUFFIXES:
            edge_lists.read(file, found)
            continue
        docs, problems = load_file(file)
        found.problems.extend(problems)
        if unread(docs, problems):
            found.unread.append(str(file))
        for doc in docs:
            if is_entity(doc):
                catalog.add(doc, str(file), found)
            else:
                read_native(doc, str(file), found)
    # Backstage relations and edge lists may name services of any file: resolve them last,
    # Backstage first, because an edge list defers to the YAML maps' definitions.
    catalog.resolve(options.backstage_owners, found)
    between = not found.unread
    if between:
        edge_lists.resolve(options.defaults, found)
    services = _merge(found, report_duplicates=between)
    _check_targets(found, targets)
    if between:
        _check_references(services, found)
        _check_case(services, found)
    elif any(str(file) not in found.unread for file in files):
        # Said once, and only when some file did read: with none, nothing was skipped.
        found.problems.append(Problem(
            ", ".join(found.unread), 0, "",
            "checks between map files (unknown services, duplicate services, aliases) "
            "skipped: they run once every map file reads",
        ))
    graph = build_graph((d.service for d in services.values()), tier_severity)
    for cycle in graph.cycles:
        first = services[cycle[0]]
        found.problems.append(Problem(
            first.service.source.rsplit(":", 1)[0], source_line(first.service), first.edges_path,
            "dependency cycle (impact analysis treats it as one unit): " + " <-> ".join(cycle),
            warning=True,
        ))
    return graph, found.problems


def _merge(found: Found, *, report_duplicates: bool) -> dict[str, Definition]:
    """One definition per service (duplicates reported when asked), with the edges other
    files add."""
    services: dict[str, Definition] = {}
    for definition in found.definitions:
        service = definition.service
        first = services.get(service.name)
        if first is None:
            services[service.name] = definition
            continue
        if not report_duplicates:
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


def _check_references(services: dict[str, Definition], found: Found) -> None:
    """Names that must be services, and aliases; `found.defined` also holds names whose
    definition had errors, so that a reference to them is not reported a second time."""
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


def _check_targets(found: Found, targets: set[str] | None) -> None:
    """Owners naming a target the settings lack (each file on its own against the settings)."""
    if targets is None:
        return
    for mention in found.targets:
        if mention.name not in targets:
            found.problems.append(Problem(
                mention.file, mention.line, mention.path,
                "names a target that is not defined in the settings' targets",
                shown(mention.written),
            ))


def _check_case(services: dict[str, Definition], found: Found) -> None:
    """Warn of names of two services (names or aliases) that differ only in case.

    Both are valid, and an alert is placed by its exact label value; but a map with
    `Kafka` and `kafka` is almost always a slip, and an alert labelled with the one never
    lands on the other. An alias that differs only in case from its own service's name is
    the cure, not the slip: an alert labelled either way lands on the service."""
    # Folded name -> (name as written, its service, what it is, where it is written).
    first: dict[str, tuple[str, str, str, str]] = {}
    names: list[tuple[str, str, str, str, int, str]] = [
        (name, name, f"service {name!r}", *_where(d)) for name, d in services.items()
    ]
    names.extend((m.name, service, f"alias {m.name!r} of service {service!r}", m.file,
                  m.line, m.path) for service, m in found.aliases)
    for name, service, what, file, line, path in names:
        seen = first.setdefault(name.casefold(), (name, service, what, f"{file}:{line}"))
        if seen[0] != name and seen[1] != service:
            found.problems.append(Problem(
                file, line, path,
                f"differs only in case from {seen[2]} ({seen[3]}): names are case-sensitive, "
                "so an alert labelled with the one is not placed on the other",
                shown(name), warning=True,
            ))


def _where(definition: Definition) -> tuple[str, int, str]:
    """File, line and key path of a service's definition."""
    service = definition.service
    return service.source.rsplit(":", 1)[0], source_line(service), definition.path


def case_twin(graph: ServiceGraph, name: str) -> str | None:
    """The service or alias that `name` names but for case (or surrounding spaces): what an
    unmapped alert's label most likely meant. None when there is none, or `name` is exact."""
    if graph.resolve(name) is not None:
        return None
    folded = name.strip().casefold()
    return next((known for known in (*graph.services, *graph.aliases)
                 if known.casefold() == folded), None)
