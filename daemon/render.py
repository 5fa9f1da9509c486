"""Presentation of an impact for people and tools: text, JSON and Graphviz dot."""

from __future__ import annotations

from typing import Any

from daemon.graph import SOFT, Impact, ServiceGraph

# Colour and shape both tell the state, so the picture reads without colour too.
_DOT_STYLE = {
    "root": 'shape=doubleoctagon style=filled fillcolor="#d7301f" fontcolor=white',
    "failing": 'shape=octagon style=filled fillcolor="#ef6548" fontcolor=white',
    "down": 'shape=box style=filled fillcolor="#fdae61"',
    "degraded": 'shape=ellipse style="filled,dashed" fillcolor="#fee08b"',
}


def or_none(value: object) -> str:
    """A value as a person reads it: `none` when it is absent (no tier, no severity for an
    alert no map knows), never Python's `None`."""
    return "none" if value is None else str(value)


def impact_json(impact: Impact) -> dict[str, Any]:
    """The whole impact as JSON-ready data."""
    return {
        "failing": list(impact.failing),
        "severity": impact.severity,
        "most_critical_tier": impact.most_critical_tier,
        "business_services": list(impact.business_services),
        "tier_counts": {str(k): v for k, v in impact.tier_counts.items()},
        "down_total": impact.down_total,
        "degraded_total": impact.degraded_total,
        "root_causes": [c.to_json() for c in impact.root_causes],
        "impacted": [
            {"service": s.name, "tier": s.tier, "state": s.state, "distance": s.distance,
             "path": list(s.path), "why": s.explain()}
            for s in impact.impacted
        ],
    }


def impact_text(impact: Impact) -> str:
    """The impact as lines for a terminal."""
    lines = [
        f"failing: {', '.join(impact.failing) or 'nothing known to the map'}",
        f"implied severity: {or_none(impact.severity)}; most critical tier: "
        f"{or_none(impact.most_critical_tier)}; business services: "
        f"{', '.join(impact.business_services) or 'none'}",
        f"impacted: {impact.down_total} down, {impact.degraded_total} degraded",
    ]
    if impact.root_causes:
        lines.append("probable root causes, most damaging first:")
        lines.extend(
            f"  {c.name}: takes down {c.down_total} "
            f"(most critical down: tier {or_none(c.down_tier)}"
            + (f", {', '.join(c.business_services)}" if c.business_services else "") + ")"
            for c in impact.root_causes
        )
    for failing in impact.failing:
        chain = impact.blame(failing)
        if len(chain) > 1:
            through = f" (through {' -> '.join(chain[1:-1])})" if len(chain) > 2 else ""
            lines.append(f"  {failing} is failing, probably because {chain[-1]} is{through}")
    for s in impact.impacted:
        lines.append(f"  {s.state:8} tier {s.tier}  {s.name}  ({' -> '.join(reversed(s.path))})")
    return "\n".join(lines)


def impact_dot(impact: Impact, graph: ServiceGraph) -> str:
    """A Graphviz digraph of the failing and impacted services and the edges between them:
    root causes dark red, failing red, down orange boxes, degraded yellow dashed ellipses."""
    roots = {name for cause in impact.root_causes for name in cause.services}
    states = {name: "root" if name in roots else "failing" for name in impact.failing}
    for s in impact.impacted:
        states[s.name] = s.state
    lines = ["digraph impact {", "  rankdir=BT;", '  node [fontname="Helvetica"];']
    for name, state in sorted(states.items()):
        tier = graph.services[name].tier
        what = "root cause" if state == "root" else state
        lines.append(f'  {_quote(name)} [label="{_escape(name)}\\ntier {tier}, {what}" '
                     f"{_DOT_STYLE[state]}];")
    for name in sorted(states):
        for dep in graph.services[name].depends_on:
            if dep.service in states:
                style = " [style=dashed]" if dep.kind == SOFT else ""
                lines.append(f"  {_quote(name)} -> {_quote(dep.service)}{style};")
    lines.append("}")
    return "\n".join(lines)




def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'
