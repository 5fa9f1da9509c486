"""Edge lists exported by tracing and service-mesh tools: JSON nodes and edges, or CSV rows.

An edge goes from the caller to the callee, that is from the dependent to its dependency.
Every name an edge list uses becomes a service. One that a YAML map (native or Backstage)
defines keeps that definition's attributes, and the edge list only adds edges to it; one that
only edge lists name takes its attributes from its JSON node, else from the settings'
`map_defaults`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from daemon.errors import Problem
from daemon.graph import HARD, OWNER_ROLES, SOFT, Dependency, Service
from daemon.maps.found import BAD_NAME, SERVICE_NAME, Definition, Found, Mention
from daemon.yamlsrc import LocatedDict, shown

_CSV_HEADERS = (["from", "to"], ["from", "to", "kind"])
# A JSON string (skipped whole, so braces inside it do not count), a brace, or a newline.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\n]')


@dataclass(frozen=True, slots=True)
class MapDefaults:
    """Attributes of the services only edge lists name (the settings' `map_defaults`)."""

    tier: int = 3
    component: str = "application"
    owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class _Node:
    """The attributes a JSON node gives its service, and the owner targets it names."""

    mention: Mention
    fields: Mapping[str, Any]
    targets: tuple[Mention, ...]


class EdgeLists:
    """The edge lists read so far, and the services that only they name."""

    def __init__(self) -> None:
        self._first: dict[str, Mention] = {}
        self._nodes: dict[str, _Node] = {}

    def read(self, path: Path, found: Found) -> None:
        """Read one edge list, JSON or CSV by its suffix, into `found`."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            found.problems.append(Problem(str(path), 0, "", f"cannot read file: {exc}"))
            found.unread.append(str(path))
            return
        if path.suffix == ".csv":
            self._read_csv(text, str(path), found)
        else:
            self._read_json(text, str(path), found)

    def resolve(self, defaults: MapDefaults, found: Found) -> None:
        """Define the services that no YAML map defines; call once every map file is read."""
        for name, first in self._first.items():
            node = self._nodes.get(name)
            if name in found.defined:
                if node is not None:
                    at = node.mention
                    found.problems.append(Problem(
                        at.file, at.line, at.path, f"node fields ignored: {name!r} is defined "
                        "in a YAML map, which gives its attributes", warning=True,
                    ))
                continue
            found.defined.add(name)
            fields = dict(node.fields) if node is not None else {}
            owners = {role: fields.get(role, defaults.owners.get(role)) for role in OWNER_ROLES}
            if owners["technical_lead"] is None:
                remedy = ("define it in a YAML map or set map_defaults.technical_lead in the "
                          "settings")
                if first.file.endswith(".json"):
                    remedy = "give its node a technical_lead, " + remedy
                found.problems.append(Problem(
                    first.file, first.line, first.path,
                    f"service {name!r} has no technical lead: {remedy}",
                ))
                continue
            if node is not None:
                found.targets.extend(node.targets)
            service = Service(
                name=name,
                tier=fields.get("tier", defaults.tier),
                component=fields.get("component", defaults.component),
                owners=MappingProxyType({r: t for r, t in owners.items() if t is not None}),
                business_service=fields.get("business_service"),
                source=f"{first.file}:{first.line}",
            )
            found.definitions.append(Definition(service, first.path, first.path))

    def _see(self, mention: Mention) -> None:
        self._first.setdefault(mention.name, mention)

    def _edge(self, caller: Mention, callee: Mention, kind: str, found: Found) -> None:
        self._see(caller)
        self._see(callee)
        # A service calling itself (common in traces) is no dependency.
        if caller.name != callee.name:
            found.edges.append((caller.name, Dependency(callee.name, kind)))

    def _read_csv(self, text: str, file: str, found: Found) -> None:
        header_allowed = True
        for number, raw in enumerate(text.splitlines(), start=1):
            row = raw.strip()
            if not row or row.startswith("#"):
                continue
            try:
                cells = [cell.strip() for cell in next(csv.reader([row]))]
            except csv.Error as exc:
                found.problems.append(Problem(file, number, "", f"invalid CSV: {exc}"))
                if file not in found.unread:
                    found.unread.append(file)
                continue
            if header_allowed and [cell.lower() for cell in cells] in _CSV_HEADERS:
                header_allowed = False
                continue
            header_allowed = False
            if len(cells) not in (2, 3):
                found.problems.append(Problem(file, number, "", "a row must be from,to or "
                                              "from,to,kind", shown(row)))
                continue
            kind = (cells[2] if len(cells) == 3 else "") or HARD
            ends = [self._name(cells[i], file, number, key, found)
                    for i, key in enumerate(("from", "to"))]
            if kind not in (HARD, SOFT):
                found.problems.append(Problem(file, number, "kind", "must be 'hard' or 'soft'",
                                              shown(kind)))
            elif ends[0] is not None and ends[1] is not None:
                self._edge(ends[0], ends[1], kind, found)

    def _read_json(self, text: str, file: str, found: Found) -> None:
        try:
            doc = _decode_json(text)
        except json.JSONDecodeError as exc:
            found.problems.append(Problem(file, exc.lineno, "", f"invalid JSON: {exc.msg}"))
            found.unread.append(file)
            return
        if not isinstance(doc, LocatedDict) or not ({"nodes", "edges"} & doc.keys()):
            found.problems.append(Problem(file, 1, "", "an edge list must be an object with "
                                          "'nodes' and 'edges'"))
            return
        for index, node in enumerate(_items(doc, "nodes", file, found)):
            self._node(node, f"nodes[{index}]", file, found)
        for index, edge in enumerate(_items(doc, "edges", file, found)):
            path = f"edges[{index}]"
            if not isinstance(edge, LocatedDict):
                found.problems.append(Problem(file, doc.line_of("edges"), path, "must be an "
                                              "object with 'from' and 'to'", shown(edge)))
                continue
            ends = [self._name(edge.get(key), file, edge.line, f"{path}.{key}", found)
                    for key in ("from", "to")]
            kind = edge.get("kind", HARD)
            if kind not in (HARD, SOFT):
                found.problems.append(Problem(file, edge.line, f"{path}.kind",
                                              "must be 'hard' or 'soft'", shown(kind)))
            elif ends[0] is not None and ends[1] is not None:
                self._edge(ends[0], ends[1], kind, found)

    def _node(self, node: Any, path: str, file: str, found: Found) -> None:
        if not isinstance(node, LocatedDict):
            found.problems.append(Problem(file, 0, path, "must be an object with an 'id'",
                                          shown(node)))
            return
        mention = self._name(node.get("id"), file, node.line, f"{path}.id", found)
        if mention is None:
            return
        mention = Mention(mention.name, file, node.line, path, mention.name)
        self._see(mention)
        fields, targets = _node_fields(node, mention, found)
        if not fields:
            return
        first = self._nodes.get(mention.name)
        if first is not None:
            found.problems.append(Problem(
                file, node.line, path, "duplicate node with fields, first given at "
                f"{first.mention.file}:{first.mention.line}", shown(mention.name),
            ))
        else:
            self._nodes[mention.name] = _Node(mention, MappingProxyType(fields), targets)

    @staticmethod
    def _name(value: Any, file: str, line: int, path: str, found: Found) -> Mention | None:
        if value is None or value == "":
            found.problems.append(Problem(file, line, path, "missing: a service name"))
            return None
        if not isinstance(value, str) or not SERVICE_NAME.match(value):
            found.problems.append(Problem(file, line, path, BAD_NAME, shown(value)))
            return None
        return Mention(value, file, line, path, value)


def _node_fields(
    node: LocatedDict, mention: Mention, found: Found
) -> tuple[dict[str, Any], tuple[Mention, ...]]:
    """The attributes a node gives (other keys are the exporting tool's, and ignored)."""
    fields: dict[str, Any] = {}
    targets: list[Mention] = []

    def bad(key: str, message: str) -> None:
        found.problems.append(Problem(mention.file, mention.line, f"{mention.path}.{key}",
                                      message, shown(node[key])))

    if "tier" in node:
        tier = node["tier"]
        if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 4:
            bad("tier", "must be an integer from 1 (most critical) to 4")
        else:
            fields["tier"] = tier
    for key in ("component", "business_service", *OWNER_ROLES):
        if key not in node:
            continue
        value = node[key]
        if not isinstance(value, str) or not value:
            bad(key, "must be a non-empty string")
            continue
        fields[key] = value
        if key in OWNER_ROLES:
            path = f"{mention.path}.{key}"
            targets.append(Mention(value, mention.file, mention.line, path, value))
    return fields, tuple(targets)


def _items(doc: LocatedDict, key: str, file: str, found: Found) -> list[Any]:
    """The list under `key` ([] when absent; a problem when it is no list)."""
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        found.problems.append(Problem(file, doc.line_of(key), key, "must be a list", shown(value)))
        return []
    return value


def _decode_json(text: str) -> Any:
    """Parse JSON into located containers: each object knows the line of its opening brace."""
    lines = _object_lines(text)

    def located(pairs: list[tuple[str, Any]]) -> LocatedDict:
        obj = LocatedDict(pairs)
        obj.line = next(lines, 0)
        obj.key_lines = {}
        return obj

    return json.loads(text, object_pairs_hook=located)


def _object_lines(text: str) -> Iterator[int]:
    """The line of each object's `{`, in the order the decoder finishes the objects.

    The decoder builds an object when it reads its `}`, innermost first; pairing braces the
    same way gives each object its line without a parser of our own. Raw newlines cannot
    occur inside JSON strings, so skipping strings whole loses none.
    """
    opened: list[int] = []
    finished: list[int] = []
    line = 1
    for match in _JSON_TOKENS.finditer(text):
        piece = match.group()
        if piece == "\n":
            line += 1
        elif piece == "{":
            opened.append(line)
        elif piece == "}" and opened:
            finished.append(opened.pop())
    return iter(finished)
