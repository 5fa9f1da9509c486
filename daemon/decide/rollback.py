"""Rollback candidates: the recent changes an incident's responders should suspect first
(the last known stable configuration to go back to). Pure: part of the engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from daemon.decide.model import Change
from daemon.graph import ServiceGraph

ROOT_CAUSE = "root cause"
FAILING = "failing"


def change_json(change: Change) -> dict[str, Any]:
    """The change as JSON-ready data, for the API and the pages."""
    return {
        "id": change.id,
        "service": change.service,
        "summary": change.summary,
        "at": change.at.isoformat(),
        "who": change.who,
        "version": change.version,
        "links": [{"href": href, "text": text} for href, text in change.links],
        "received_at": change.received_at.isoformat() if change.received_at else None,
    }


def rollback_candidates(  # noqa: PLR0917 - the engine's call (decide/engine.py) is positional
        changes: Sequence[Change], services: Iterable[str], graph: ServiceGraph,
        started_at: datetime, now: datetime, window: timedelta, limit: int = 10, *,
        failing: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The changes within `window` before `now` on `services` (an incident's probable root
    causes), on everything they depend on and on the incident's other `failing` services
    (the change that started a fire stays a suspect when the fire spreads to a deeper root
    cause), newest first, at most `limit`. The last change at or before `started_at` (the
    last known stable configuration to go back to) is flagged `last_before_incident` and
    always kept."""
    roots = {service.name for name in services if (service := graph.resolve(name))}
    others = {service.name for name in failing
              if (service := graph.resolve(name)) and service.name not in roots}
    dependencies = graph.dependencies(sorted(roots))
    found = sorted(
        (c for c in changes
         if now - window <= c.at <= now
         and (c.service in roots or c.service in dependencies or c.service in others)),
        key=lambda c: (c.at, c.received_at or c.at, c.id), reverse=True,
    )
    last_before = next((c for c in found if c.at <= started_at), None)
    chosen = found[:limit]
    if last_before is not None and last_before not in chosen and limit > 0:
        chosen = [*chosen[: limit - 1], last_before]
    return [
        {**change_json(c),
         "relation": ROOT_CAUSE if c.service in roots
         else FAILING if c.service in others
         else f"dependency of {dependencies[c.service]}",
         "last_before_incident": c is last_before}
        for c in chosen
    ]
