"""Dependency maps: reading them in every supported format, and checking them together.

Each format module turns one file into `Service`s and located problems; this module merges
them, reports duplicates and broken cross-references, and builds the `ServiceGraph`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from daemon.errors import Problem
from daemon.graph import Service, ServiceGraph, build_graph
from daemon.maps.native import parse_native, source_line
from daemon.yamlsrc import load_file, shown


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
            for service in parse_native(doc, str(file), problems, defined):
                if service.name in services:
                    first = services[service.name]
                    problems.append(Problem(
                        str(file), source_line(service), f"services.{service.name}",
                        f"duplicate service, first defined at {first.source}",
                    ))
                else:
                    services[service.name] = service
    _check_references(services, defined, targets, problems)
    graph = build_graph(services.values(), tier_severity)
    for cycle in graph.cycles:
        first = services[cycle[0]]
        problems.append(Problem(
            first.source.rsplit(":", 1)[0], source_line(first),
            f"services.{first.name}.depends_on",
            "dependency cycle (impact analysis treats it as one unit): " + " <-> ".join(cycle),
            warning=True,
        ))
    return graph, problems


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
