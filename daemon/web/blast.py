"""The blast-radius picture of an incident: a layered layout of the dependency graph around
its failing services, drawn as inline SVG.

Columns run from the probable root causes on the left (their healthy dependencies before
them, for context) to the services they take down or degrade on the right; arrows point the
way the failure spreads, from a dependency to its dependent. State is told three ways --
colour, shape and pattern, and a written word -- so the picture reads in black and white.

The failing services are the impact's as it was last assessed (when an alert joined or
fired again, or incidents merged); those of them whose alerts have all resolved since are
drawn recovered, in their place, so that the picture still agrees with the impact the API
shows.

Pure: no I/O; the caller passes the map, the failing and the recovered services.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import networkx as nx

from daemon.graph import DEGRADED, DOWN, SOFT, ServiceGraph
from daemon.web.text import escape

ROOT = "root"
FAILING = "failing"
HEALTHY = "healthy"
# A root cause or failing service of the impact whose alerts have all resolved since.
ROOT_RECOVERED = "root-recovered"
RECOVERED = "recovered"
STATES = (ROOT, ROOT_RECOVERED, FAILING, RECOVERED, DOWN, DEGRADED, HEALTHY)
LABELS = {ROOT: "ROOT CAUSE", ROOT_RECOVERED: "RECOVERED ROOT", FAILING: "FAILING",
          RECOVERED: "RECOVERED", DOWN: "DOWN", DEGRADED: "DEGRADED", HEALTHY: "healthy"}
# What a node's tooltip calls its state, where the label's word is not enough.
_TOOLTIPS = {ROOT_RECOVERED: "root cause, recovered"}
# Fill, stroke, text colour, stroke dash: presentation attributes, so the colours hold even
# without the stylesheet. Dark background; text contrast at least 4.5:1 on each fill.
STYLE = {
    ROOT: ("#8e0000", "#ffffff", "#ffffff", ""),
    ROOT_RECOVERED: ("#1b5e20", "#ffffff", "#ffffff", ""),
    FAILING: ("#d32f2f", "#ffcdd2", "#ffffff", ""),
    RECOVERED: ("#2e7d32", "#c8e6c9", "#ffffff", ""),
    DOWN: ("#fb8c00", "#ffe0b2", "#111111", ""),
    DEGRADED: ("#fdd835", "#212121", "#111111", "7 4"),
    HEALTHY: ("#1e272c", "#78909c", "#cfd8dc", ""),
}
# Edges: carrying the failure down (hard), carrying a degradation, and the rest.
EDGE_STYLE = {
    "carry": ("#ff5252", "4", ""),
    "carry-soft": ("#ffd54f", "3", "9 5"),
    "plain": ("#78909c", "1.5", ""),
    "plain-soft": ("#78909c", "1.5", "5 5"),
}
MAX_FAILING = 30
MAX_IMPACTED = 40
MAX_CONTEXT = 8
NODE_W = 256
NODE_H = 64
GAP_X = 84
GAP_Y = 22
PAD = 16
NAME_CHARS = 22


@dataclass(frozen=True, slots=True)
class Node:
    """A service in the picture: its state, tier and place."""

    name: str
    state: str
    tier: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency drawn from `source` (the dependency) to `target` (its dependent)."""

    source: str
    target: str
    kind: str
    carries: bool


@dataclass(frozen=True, slots=True)
class Picture:
    """The laid-out graph around an incident, with what was left out."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: int
    height: int
    hidden: int  # impacted services not drawn
    roots: tuple[str, ...]


def blast_radius(graph: ServiceGraph, failing: Iterable[str], recovered: Iterable[str] = ()
                 ) -> Picture:
    """Lay out the failing services of an incident, what they impact and the healthy
    dependencies of its root causes, in columns by distance from the root causes; those of
    the failing services that are also `recovered` are drawn so."""
    names = sorted({s.name for n in failing if (s := graph.resolve(n)) is not None})
    back = {s.name for n in recovered if (s := graph.resolve(n)) is not None}
    impact = graph.impact(names[:MAX_FAILING])
    roots = tuple(s for cause in impact.root_causes for s in cause.services)
    states: dict[str, str] = {}
    for name in impact.failing:
        if name in roots:
            states[name] = ROOT_RECOVERED if name in back else ROOT
        else:
            states[name] = RECOVERED if name in back else FAILING
    shown = impact.top(MAX_IMPACTED)
    for service in shown:
        states[service.name] = service.state
    context: list[str] = []
    for root in roots:
        for dependency in sorted(graph.graph.successors(root)):
            if dependency not in states and dependency not in context:
                context.append(dependency)
    for name in context[:MAX_CONTEXT]:
        states[name] = HEALTHY
    if not states:
        return Picture((), (), 0, 0, 0, ())
    # The failure travels along each impacted service's explanation (root cause -> ... ->
    # it) and each failing service's blame chain: those edges are highlighted, not every
    # edge between two services in trouble, which on a big fire is a thicket.
    chains = [s.path for s in shown] + [tuple(reversed(impact.blame(f))) for f in impact.failing]
    carrying = {pair for chain in chains for pair in pairwise(chain)}
    edges = _edges(graph, states, carrying)
    columns = _columns(states, edges, roots)
    nodes, width, height = _place(graph, states, columns)
    return Picture(nodes, edges, width, height, max(0, impact.impacted_total - len(shown)),
                   roots)


def _edges(graph: ServiceGraph, states: dict[str, str], carrying: set[tuple[str, str]]
           ) -> tuple[Edge, ...]:
    """Every dependency between two drawn services (but between two healthy ones), as
    dependency -> dependent; `carrying` holds the pairs the failure travels along."""
    edges = []
    for dependent, dependency, kind in graph.graph.subgraph(states).edges(data="kind"):
        if states[dependency] == states[dependent] == HEALTHY:
            continue  # context only: how healthy services hang together is not the story
        edges.append(Edge(dependency, dependent, kind or "hard",
                          (dependency, dependent) in carrying))
    return tuple(sorted(edges, key=lambda e: (e.source, e.target)))


def _columns(states: dict[str, str], edges: Sequence[Edge], roots: Sequence[str]
             ) -> list[list[str]]:
    """Longest-path layering (each service right of everything it depends on, cycles kept
    in one column), healthy context first; each column ordered to keep edges short."""
    trouble = nx.DiGraph()
    trouble.add_nodes_from(n for n, s in states.items() if s != HEALTHY)
    trouble.add_edges_from((e.source, e.target) for e in edges
                           if states[e.source] != HEALTHY)
    dag = nx.condensation(trouble)
    layer_of: dict[int, int] = {}
    for component in nx.topological_sort(dag):
        layer_of[component] = max((layer_of[p] + 1 for p in dag.predecessors(component)),
                                  default=0)
    mapping = dag.graph["mapping"]
    offset = 1 if HEALTHY in states.values() else 0
    layer = {name: layer_of[mapping[name]] + offset for name in trouble}
    for name, state in states.items():
        if state == HEALTHY:
            layer[name] = 0
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in states:
        columns[layer[name]].append(name)
    rank = {name: i for i, name in enumerate(roots)}
    neighbours: dict[str, list[str]] = {name: [] for name in states}
    for edge in edges:
        neighbours[edge.target].append(edge.source)
        neighbours[edge.source].append(edge.target)
    position: dict[str, float] = {}
    # Roots first (most damaging on top), then each column by the mean place of its
    # neighbours already placed: a one-pass barycentre ordering.
    order = [offset, *(i for i in range(len(columns)) if i != offset)]
    for index in order:
        column = columns[index]

        def key(name: str) -> tuple[float, int, str]:
            placed = [position[n] for n in neighbours[name] if n in position]
            centre = sum(placed) / len(placed) if placed else rank.get(name, len(rank))
            return (centre, STATES.index(states[name]), name)

        column.sort(key=key)
        for i, name in enumerate(column):
            position[name] = i - (len(column) - 1) / 2
    return columns


def _place(graph: ServiceGraph, states: dict[str, str], columns: list[list[str]]
           ) -> tuple[tuple[Node, ...], int, int]:
    """Each column centred on the tallest one; the picture's size."""
    tallest = max((len(c) for c in columns), default=0)
    height = PAD * 2 + tallest * NODE_H + max(0, tallest - 1) * GAP_Y
    nodes = []
    for index, column in enumerate(columns):
        top = PAD + (tallest - len(column)) * (NODE_H + GAP_Y) // 2
        x = PAD + index * (NODE_W + GAP_X)
        for row, name in enumerate(column):
            nodes.append(Node(name, states[name], graph.services[name].tier, x,
                              top + row * (NODE_H + GAP_Y)))
    width = PAD * 2 + len(columns) * NODE_W + max(0, len(columns) - 1) * GAP_X
    return tuple(nodes), width, height


# --------------------------------------------------------------------------- SVG


def svg(picture: Picture, title: str) -> str:
    """The picture as an inline SVG element, every name escaped."""
    by_name = {n.name: n for n in picture.nodes}
    counts = {state: sum(1 for n in picture.nodes if n.state == state) for state in STATES}
    roots = [f"{name} (recovered)" if by_name[name].state == ROOT_RECOVERED else name
             for name in picture.roots]
    back = counts[ROOT_RECOVERED] + counts[RECOVERED]
    desc = (f"Probable root cause: {', '.join(roots) or 'unknown'}. "
            f"{counts[ROOT] + counts[FAILING]} failing, "
            + (f"{back} recovered, " if back else "")
            + f"{counts[DOWN]} down, {counts[DEGRADED]} degraded"
            + (f", {picture.hidden} more impacted not drawn" if picture.hidden else "")
            + ". Arrows point from a dependency to the services its failure hurts.")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="blast-svg" role="img" '
        f'viewBox="0 0 {picture.width} {picture.height}" width="{picture.width}" '
        f'height="{picture.height}" aria-labelledby="blast-title blast-desc">',
        f'<title id="blast-title">{escape(title)}</title>',
        f'<desc id="blast-desc">{escape(desc)}</desc>',
        _DEFS,
        '<g class="edges">',
    ]
    parts.extend(_edge(edge, by_name[edge.source], by_name[edge.target])
                 for edge in picture.edges)
    parts.append('</g><g class="nodes">')
    parts.extend(_node(node) for node in picture.nodes)
    parts.append("</g></svg>")
    return "\n".join(parts)


def swatch(state: str) -> str:
    """A small SVG of one state's shape, for the legend (patterns from the picture's defs)."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="swatch" viewBox="0 0 64 36" '
            f'width="64" height="36" aria-hidden="true">{_shape(state, 2, 2, 60, 32)}</svg>')


def edge_swatch(style: str) -> str:
    """A small SVG of one kind of edge, for the legend."""
    colour, width, dash = EDGE_STYLE[style]
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="swatch" viewBox="0 0 64 36" '
            f'width="64" height="36" aria-hidden="true"><path d="M4 18 H52" stroke="{colour}" '
            f'stroke-width="{width}"{dashed} fill="none" marker-end="url(#fh-arrow-{style})"/>'
            f"</svg>")


_DEFS = "<defs>" + "".join(
    f'<marker id="fh-arrow-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
    f'markerHeight="6" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" '
    f'fill="{colour}"/></marker>'
    for name, (colour, _, _) in EDGE_STYLE.items()
) + (
    '<pattern id="fh-hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="8" height="8" fill="#fb8c00"/>'
    '<line x1="0" y1="0" x2="0" y2="8" stroke="#111111" stroke-width="4"/></pattern>'
    '<pattern id="fh-dots" width="8" height="8" patternUnits="userSpaceOnUse">'
    '<rect width="8" height="8" fill="#fdd835"/><circle cx="4" cy="4" r="2" fill="#111111"/>'
    "</pattern></defs>"
)


def _edge(edge: Edge, source: Node, target: Node) -> str:
    style = ("carry" if edge.carries else "plain") + ("-soft" if edge.kind == SOFT else "")
    colour, width, dash = EDGE_STYLE[style]
    x1, y1 = source.x + NODE_W, source.y + NODE_H // 2
    x2, y2 = target.x - 4, target.y + NODE_H // 2
    if target.x <= source.x:
        # Same column (a cycle) or backwards: loop round the right-hand side.
        x2 = target.x + NODE_W + 4
        bend = NODE_W // 3 + abs(y2 - y1) // 4
        path = f"M{x1} {y1} C{x1 + bend} {y1} {x2 + bend} {y2} {x2} {y2}"
    else:
        bend = (x2 - x1) // 2
        path = f"M{x1} {y1} C{x1 + bend} {y1} {x2 - bend} {y2} {x2} {y2}"
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<path class="edge edge-{style}" data-from="{escape(edge.source)}" '
            f'data-to="{escape(edge.target)}" d="{path}" fill="none" stroke="{colour}" '
            f'stroke-width="{width}"{dashed} marker-end="url(#fh-arrow-{style})"/>')


def _node(node: Node) -> str:
    _, _, text, _ = STYLE[node.state]
    name = node.name if len(node.name) <= NAME_CHARS else node.name[: NAME_CHARS - 1] + "…"
    label = f"{LABELS[node.state]} · tier {node.tier}"
    if node.state in (ROOT_RECOVERED, RECOVERED):
        # "RECOVERED ROOT · tier 2" is wider than the node; a recovered service's tier
        # matters less, and its tooltip still says it.
        label = LABELS[node.state]
    tooltip = _TOOLTIPS.get(node.state, LABELS[node.state].lower())
    left = node.x + 48
    return (
        f'<g class="node node-{node.state}" data-service="{escape(node.name)}" '
        f'data-state="{node.state}"><title>{escape(node.name)}: '
        f"{escape(tooltip)}, tier {node.tier}</title>"
        f"{_shape(node.state, node.x, node.y, NODE_W, NODE_H)}"
        f'<text x="{left}" y="{node.y + 28}" fill="{text}" font-size="18" '
        f'font-weight="700">{escape(name)}</text>'
        f'<text x="{left}" y="{node.y + 50}" fill="{text}" font-size="14" '
        f'font-weight="600" letter-spacing="0.5">{escape(label)}</text></g>'
    )


def _shape(state: str, x: int, y: int, w: int, h: int) -> str:
    """The outline of a state (octagon: failing, double for a root cause; box: down; pill:
    degraded; thin rounded box: healthy) with its badge (solid, hatched, dotted; a tick
    instead of the exclamation mark once recovered)."""
    fill, stroke, _, dash = STYLE[state]
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    paint = f'fill="{fill}" stroke="{stroke}"{dashed}'
    badge = min(28, h - 8)
    bx, by = x + 10, y + (h - badge) // 2
    if state in (ROOT, ROOT_RECOVERED, FAILING, RECOVERED):
        outline = f'<polygon points="{_octagon(x, y, w, h, 12)}" {paint} stroke-width="2.5"/>'
        if state in (ROOT, ROOT_RECOVERED):
            outline += (f'<polygon points="{_octagon(x + 5, y + 5, w - 10, h - 10, 9)}" '
                        f'fill="none" stroke="{stroke}" stroke-width="1.5"/>')
        mark = f'<polygon points="{_octagon(bx, by, badge, badge, 8)}" fill="#ffffff"/>'
        if state in (ROOT_RECOVERED, RECOVERED):
            mark += (f'<polyline points="{bx + 7},{by + badge // 2} {bx + badge // 2 - 1},'
                     f'{by + badge - 8} {bx + badge - 6},{by + 7}" fill="none" '
                     f'stroke="{fill}" stroke-width="4"/>')
        else:
            mark += (f'<rect x="{bx + badge // 2 - 2}" y="{by + 5}" width="4" '
                     f'height="{badge - 15}" fill="{fill}"/><rect x="{bx + badge // 2 - 2}" '
                     f'y="{by + badge - 8}" width="4" height="4" fill="{fill}"/>')
        return outline + mark
    if state == DOWN:
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" {paint} stroke-width="2.5"/>'
                f'<rect x="{bx}" y="{by}" width="{badge}" height="{badge}" '
                f'fill="url(#fh-hatch)" stroke="#111111" stroke-width="1.5"/>')
    if state == DEGRADED:
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{h // 2}" {paint} '
                f'stroke-width="2.5"/><circle cx="{bx + badge // 2 + 2}" cy="{y + h // 2}" '
                f'r="{badge // 2}" fill="url(#fh-dots)" stroke="#111111" stroke-width="1.5"/>')
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" {paint} '
            f'stroke-width="1.5"/><circle cx="{bx + badge // 2 + 2}" cy="{y + h // 2}" '
            f'r="{badge // 3}" fill="none" stroke="{stroke}" stroke-width="2"/>')


def _octagon(x: int, y: int, w: int, h: int, cut: int) -> str:
    points = [(x + cut, y), (x + w - cut, y), (x + w, y + cut), (x + w, y + h - cut),
              (x + w - cut, y + h), (x + cut, y + h), (x, y + h - cut), (x, y + cut)]
    return " ".join(f"{px},{py}" for px, py in points)
