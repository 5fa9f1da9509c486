"""Deploy and configuration changes: the body of `POST /api/v1/changes`, the pure step that
records one, and the rollback candidates of an incident.

"Track every change; go back to the last known stable configuration." A deploy pipeline
posts each change; Firehouse forwards it to the service's technical lead as a PagerDuty
Change Event, notes it on the timeline of related open incidents, and offers the recent
changes on an incident's root causes and their dependencies as rollback candidates
(`daemon.decide.rollback`).

Pure like the engine: no I/O, no clock reads (`now` is an argument).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from daemon.alerts import json_object, kind, parse_time
from daemon.config import Config
from daemon.decide.model import (
    SUMMARY_LIMIT,
    Change,
    Decision,
    Note,
    OutboundEvent,
    State,
    clean,
    cut,
)
from daemon.decide.rollback import (  # re-exported: the API and the pages use them
    FAILING,
    ROOT_CAUSE,
    change_json,
    rollback_candidates,
)
from daemon.errors import PayloadError
from daemon.graph import ServiceGraph

CHANGE = "change"  # the outbox action: sent to PagerDuty's /v2/change/enqueue
SOURCE = "firehouse"
ID_LIMIT = 128
TEXT_LIMIT = 256  # who, version, link text
HREF_LIMIT = 2048
LINKS_LIMIT = 20
FUTURE_TOLERANCE = timedelta(minutes=5)
_FIELDS = ("service", "summary", "timestamp", "who", "version", "links", "id")
_LINK_FIELDS = ("href", "text")
# RFC 3339 date-time with a mandatory offset; fromisoformat alone also takes other ISO 8601
# shapes (week dates, no separators) that a deploy tool did not mean.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN = 60


def parse_change(body: bytes, graph: ServiceGraph, now: datetime) -> Change:
    """Parse a change posted by a deploy tool; raises `PayloadError` naming every bad field."""
    return _Parser(json_object(body), graph, now).change()


class _Parser:
    """Reads one change object, collecting every problem; a helper of `parse_change`."""

    def __init__(self, data: dict[str, Any], graph: ServiceGraph, now: datetime) -> None:
        self.data = data
        self.graph = graph
        self.now = now
        self.problems: list[str] = []

    def change(self) -> Change:
        for key in self.data:
            if key not in _FIELDS:
                self._unknown(_shown(key), key, _FIELDS)
        service = self._service()
        summary = self._text("summary", SUMMARY_LIMIT, required=True, multiline=True)
        at = self._timestamp()
        who = self._text("who", TEXT_LIMIT)
        version = self._text("version", TEXT_LIMIT)
        links = self._links()
        given_id = self._text("id", ID_LIMIT, nonempty=True)
        if self.problems or service is None or at is None:
            raise PayloadError("; ".join(self.problems))
        change = Change(id=given_id, service=service, summary=summary, at=at, who=who,
                        version=version, links=links, received_at=self.now)
        return change if given_id else replace(change, id=content_id(change))

    def _bad(self, field: str, message: str) -> None:
        self.problems.append(f"field {field} {message}")

    def _unknown(self, field: str, key: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
        self._bad(field, f"is unknown{hint}")

    def _service(self) -> str | None:
        name = self._text("service", TEXT_LIMIT, required=True)
        if not name:
            return None
        service = self.graph.resolve(name)
        if service is None:
            close = self.graph.closest(name)
            hint = f"; did you mean {close!r}?" if close else ""
            self._bad("'service'", f"names no service of the dependency maps: {_shown(name)}"
                      f"{hint}")
            return None
        return service.name

    def _text(self, key: str, limit: int, *, required: bool = False, nonempty: bool = False,
              multiline: bool = False) -> str:
        """A string field; "" when absent (a problem if required) or bad."""
        return self._string(self.data, repr(key), key, limit, required=required,
                            nonempty=nonempty, multiline=multiline)

    def _string(self, obj: dict[str, Any], field: str, key: str, limit: int, *,
                required: bool = False, nonempty: bool = False, multiline: bool = False
                ) -> str:
        """A string at `obj[key]`, reported as `field`; `nonempty`: if given, not blank."""
        value = obj.get(key)
        if value is None:
            if required:
                self._bad(field, "is missing")
            return ""
        if not isinstance(value, str):
            self._bad(field, f"must be a string, got {kind(value)}")
            return ""
        problem = _text_problem(value, limit, nonempty=required or nonempty,
                                multiline=multiline)
        if problem:
            self._bad(field, problem)
            return ""
        return value

    def _timestamp(self) -> datetime | None:
        value = self.data.get("timestamp")
        if value is None:
            return self.now
        if not isinstance(value, str):
            self._bad("'timestamp'", f"must be an RFC 3339 string, got {kind(value)}")
            return None
        try:
            at = parse_time(value) if _RFC3339.match(value) else None
        except (ValueError, OverflowError):
            at = None
        if at is None:
            self._bad("'timestamp'", "is not an RFC 3339 time with an offset (e.g. "
                      f"2024-05-01T12:00:00Z): {_shown(value)}")
            return None
        if at > self.now + FUTURE_TOLERANCE:
            self._bad("'timestamp'", "is more than 5 minutes in the future: "
                      f"{_shown(value)}")
            return None
        return at

    def _links(self) -> tuple[tuple[str, str], ...]:
        value = self.data.get("links")
        if value is None:
            return ()
        if not isinstance(value, list):
            self._bad("'links'", f"must be a list of {{href, text}} objects, got {kind(value)}")
            return ()
        if len(value) > LINKS_LIMIT:
            self._bad("'links'", f"has {len(value)} links, more than {LINKS_LIMIT}")
            return ()
        links: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            field = f"links[{index}]"
            if not isinstance(item, dict):
                self._bad(f"'{field}'", f"must be an object with href and text, got "
                          f"{kind(item)}")
                continue
            for key in item:
                if key not in _LINK_FIELDS:
                    self._unknown(f"'{field}.{str(key)[:_SHOWN]}'", key, _LINK_FIELDS)
            href = self._string(item, f"'{field}.href'", "href", HREF_LIMIT, required=True)
            if href and not href.startswith(("http://", "https://")):
                self._bad(f"'{field}.href'", f"must be an http:// or https:// URL: "
                          f"{_shown(href)}")
                href = ""
            text = self._string(item, f"'{field}.text'", "text", TEXT_LIMIT)
            if href:
                links.append((href, text))
        return tuple(links)


def _text_problem(value: str, limit: int, *, nonempty: bool, multiline: bool) -> str | None:
    """What is wrong with a string value, or None."""
    if nonempty and not value.strip():
        return "must not be empty"
    if len(value) > limit:
        return f"is longer than {limit} characters (got {len(value)})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Valid JSON (a lone \\ud800 escape) that no UTF-8 store can hold.
        return f"is not valid Unicode text (a lone surrogate): {_shown(value)}"
    if not multiline and _CONTROL.search(value):
        return f"must be one line without control characters: {_shown(value)}"
    return None


def _shown(value: str) -> str:
    return cut(repr(value), _SHOWN)


def content_id(change: Change) -> str:
    """The id of a change posted without one: a hash of what it says, so that a retry of the
    same post (same timestamp) is recognised as a repeat."""
    content = json.dumps([change.service, change.summary, change.at.isoformat(), change.who,
                          change.version, [list(link) for link in change.links]])
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def record_change(change: Change, config: Config, state: State, now: datetime) -> Decision:
    """Store a change, send it to its service's technical lead as a PagerDuty Change Event
    and note it on related open incidents; a change whose id is known changes nothing."""
    if any(known.id == change.id for known in state.changes):
        return Decision(now=now)
    graph = config.graph
    service = graph.resolve(change.service)
    # The service may have left the map in a reload since the change was parsed: the
    # command center hears of it rather than nobody.
    lead = service.owners.get("technical_lead") if service is not None else None
    target = lead or config.target_for_role("incident_lead") or "command-center"
    event = OutboundEvent(
        incident_id="", target=target, routing_key=_routing_key(config, target),
        dedup_key=f"{CHANGE}/{change.id}", action=CHANGE, body=change_event(change),
    )
    return Decision(timeline=tuple(_notes(change, graph, state, now)), events=(event,),
                    now=now, changes=(change,))


def _routing_key(config: Config, target: str) -> str:
    """The target's routing key; empty in dry-run, which the outbox logs instead of sending.
    (The same rule as the engine's pages.)"""
    found = config.settings.targets.get(target)
    return found.routing_key if found and not config.settings.dry_run else ""


def change_event(change: Change) -> dict[str, Any]:
    """A PagerDuty Change Event for the change (the client adds the routing key)."""
    body: dict[str, Any] = {
        "payload": {
            "summary": change.summary,
            "timestamp": change.at.isoformat(),
            "source": SOURCE,
            "custom_details": {
                "service": change.service,
                "who": change.who,
                "version": change.version,
                "change_id": change.id,
            },
        },
    }
    if change.links:
        body["links"] = [{"href": href, "text": text} if text else {"href": href}
                         for href, text in change.links]
    return body


def _notes(change: Change, graph: ServiceGraph, state: State, now: datetime) -> list[Note]:
    """A timeline note on every open incident whose services are, or depend on, the changed
    service."""
    notes: list[Note] = []
    for incident in state.open.values():
        hit = change.service if change.service in incident.services else next(
            (s for s in incident.services if graph.affects(change.service, s)), None)
        if hit is None:
            continue
        relation = "" if hit == change.service else f" (a dependency of {hit})"
        text = f"change on {change.service}{relation}: {change.summary}"
        extra = [part for part in (change.version and f"version {change.version}",
                                   change.who and f"by {change.who}") if part]
        if extra:
            text += f" ({', '.join(extra)})"
        notes.append(Note(incident.id, now, CHANGE, cut(clean(text), SUMMARY_LIMIT)))
    return notes


__all__ = ["FAILING", "ROOT_CAUSE", "change_json", "parse_change", "record_change",
           "rollback_candidates"]
