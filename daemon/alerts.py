"""Alertmanager webhook (version 4) model and strict, tolerant parsing.

Strict where Firehouse depends on a field (a malformed envelope is a `PayloadError`
naming the field); tolerant where Alertmanager varies across versions (missing optional
fields, unknown extra fields). A malformed alert inside a good envelope is rejected on its
own, so that one bad alert never blocks the others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson

from daemon.errors import PayloadError

FIRING = "firing"
RESOLVED = "resolved"
# Set on an alert that arrived malformed and is paged as far as it could be read (`salvage`).
MALFORMED_LABEL = "firehouse_malformed"

_ZERO_TIME_PREFIX = "0001-01-01T00:00:00"
_FRACTION = re.compile(r"(\.\d{1,9})")
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1
_SEPARATOR = 0xFF
# What can put a UTF-16 surrogate into a decoded UTF-8 body: a `\uD800`-`\uDFFF` escape, or
# a surrogate encoded as UTF-8 bytes (json decodes with "surrogatepass"). A false match (an
# escaped backslash before "ud800") only costs a walk over the data. Two patterns, each
# starting with a literal, rather than one alternation: the regex engine then skips to
# each candidate with a fast scan instead of trying both branches at every byte (an 11 KB
# body: 2 us instead of 58).
_SURROGATE_PATTERNS = (re.compile(rb"\\u[dD][89a-fA-F]"), re.compile(rb"\xed[\xa0-\xbf]"))
# A float this large may be orjson's reading of an integer (see `_fast_decode`).
_WIDE = float(2**63)
_REFUSED = object()

Labels = Mapping[str, str]
_STR_ONLY = frozenset({str})
_EMPTY: Labels = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of a notification, as Alertmanager describes it."""

    status: str
    labels: Labels
    annotations: Labels
    starts_at: datetime | None
    ends_at: datetime | None
    generator_url: str
    fingerprint: str

    @property
    def firing(self) -> bool:
        """Whether Alertmanager says this alert is firing."""
        return self.status == FIRING

    @property
    def name(self) -> str:
        """The alert's `alertname`, or a placeholder."""
        return self.labels.get("alertname", "(no alertname)")


@dataclass(frozen=True, slots=True)
class RejectedAlert:
    """An alert of a valid notification that could not be used, and why."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Webhook:
    """One Alertmanager notification."""

    receiver: str
    status: str
    alerts: tuple[Alert, ...]
    group_labels: Labels = field(default_factory=dict)
    common_labels: Labels = field(default_factory=dict)
    common_annotations: Labels = field(default_factory=dict)
    external_url: str = ""
    version: str = ""
    group_key: str = ""
    truncated_alerts: int = 0
    rejected: tuple[RejectedAlert, ...] = field(default=())


def fingerprint(labels: Labels) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over sorted names and values."""
    value = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                value = ((value ^ byte) * _FNV_PRIME) & _MASK64
            value = ((value ^ _SEPARATOR) * _FNV_PRIME) & _MASK64
    return f"{value:016x}"


def parse_time(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp into UTC; Go's zero time means absent."""
    if text.startswith(_ZERO_TIME_PREFIX):
        return None
    # Python accepts at most 6 fractional digits; Go sends up to 9.
    text = _FRACTION.sub(lambda m: m.group(1)[:7], text, count=1)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return parsed.astimezone(UTC)


# The alerts of one notification, and of successive ones, mostly share their times (a group
# fires together; every firing alert ends at Go's zero time): each distinct text is parsed
# once. Times are immutable, so sharing them is safe; failures are not cached.
_parse_time_once = lru_cache(maxsize=4096)(parse_time)


def decode_json(body: bytes) -> Any:
    """A request body decoded as JSON; raises `PayloadError` saying why it is not."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers longer than
        # Python's digit limit; RecursionError is a body nested too deeply to decode.
        raise PayloadError(f"body is not valid JSON: {exc}") from exc


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; raises `PayloadError` otherwise."""
    data = decode_json(body)
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {kind(data)}")
    return data


def parse_body(body: bytes) -> Webhook:
    """Decode and parse a webhook body; raises `PayloadError` naming what is wrong."""
    data = _fast_decode(body)
    if data is _REFUSED:
        data = decode_json(body)
        # json also decodes UTF-16 and UTF-32 bodies, where the byte pattern does not apply.
        if not json.detect_encoding(body).startswith("utf-8") or _may_hold_surrogates(body):
            data = _without_lone_surrogates(data)
    return parse_webhook(data)


def _fast_decode(body: bytes) -> Any:
    """`body` decoded by orjson (a third of json's time), or `_REFUSED` where json must do
    it: what orjson refuses (NaN, UTF-16 and UTF-32, lone surrogates, every malformed body:
    the error message stays json's) or may read otherwise. orjson makes an integer past 64
    bits a float; where a webhook takes a number (its own fields and its alerts'), such a
    float sends the body to json, which keeps the integer. A decoded body holds no lone
    surrogate: orjson refuses them."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _REFUSED
    if isinstance(data, dict):
        alerts = data.get("alerts")
        values = [*data.values()]
        if isinstance(alerts, list):
            values += [v for a in alerts if isinstance(a, dict) for v in a.values()]
        if any(type(v) is float and not -_WIDE < v < _WIDE for v in values):
            return _REFUSED
    return data


def _may_hold_surrogates(body: bytes) -> bool:
    """Whether a UTF-8 body may decode to strings holding UTF-16 surrogates."""
    return any(pattern.search(body) for pattern in _SURROGATE_PATTERNS)


def _without_lone_surrogates(data: Any) -> Any:
    """`data` with every lone surrogate in its strings, keys included, replaced by U+FFFD.

    Such strings are valid JSON but cannot be encoded as UTF-8, so storing them would fail.
    Iterative, because the data may be nested nearly as deep as the recursion limit.
    """
    if isinstance(data, str):
        return _repair(data)
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _repair(item)
                elif isinstance(item, list | dict):
                    stack.append(item)
        elif isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, value in items:
                if isinstance(value, list | dict):
                    stack.append(value)
                node[_repair(key)] = _repair(value) if isinstance(value, str) else value
    return data


def _repair(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD; a high-low pair becomes its character."""
    # Through UTF-16, where a surrogate pair is the encoding of one character and a lone
    # surrogate is an invalid unit that "replace" turns into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def parse_webhook(data: Any) -> Webhook:
    """Turn decoded webhook JSON into a `Webhook`; raises `PayloadError` naming the field."""
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {kind(data)}")
    raw_alerts = data.get("alerts")
    if raw_alerts is None:
        raise PayloadError("field 'alerts' is missing")
    if not isinstance(raw_alerts, list):
        raise PayloadError(f"field 'alerts' must be a list, got {kind(raw_alerts)}")
    truncated = data.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("field 'truncatedAlerts' must be a non-negative integer")
    alerts: list[Alert] = []
    rejected: list[RejectedAlert] = []
    for index, raw in enumerate(raw_alerts):
        try:
            alerts.append(parse_alert(raw))
        except PayloadError as exc:
            reason = f"alerts[{index}]: {exc}"
            rejected.append(RejectedAlert(index, reason))
            alerts.append(salvage(raw, reason))
    return Webhook(
        receiver=_text(data, "receiver"),
        status=_text(data, "status"),
        alerts=tuple(alerts),
        group_labels=_labels(data, "groupLabels"),
        common_labels=_labels(data, "commonLabels"),
        common_annotations=_labels(data, "commonAnnotations"),
        external_url=_text(data, "externalURL"),
        version=_text(data, "version"),
        group_key=_text(data, "groupKey"),
        truncated_alerts=truncated,
        rejected=tuple(rejected),
    )


def parse_alert(raw: Any) -> Alert:
    """Parse one alert object; raises `PayloadError` naming the bad field."""
    if not isinstance(raw, dict):
        raise PayloadError(f"must be an object, got {kind(raw)}")
    status = raw.get("status")
    if status not in (FIRING, RESOLVED):
        raise PayloadError(f"field 'status' must be 'firing' or 'resolved', got {status!r:.60}")
    if raw.get("labels") is None:
        # Webhook v4 always sends an alert's labels (its name, its service, its identity):
        # an alert without them is malformed, not an alert with an empty label set.
        raise PayloadError("field 'labels' is missing" if "labels" not in raw
                           else "field 'labels' must be an object of strings, got null")
    labels = _labels(raw, "labels")
    fp = raw.get("fingerprint")
    if fp is not None and not isinstance(fp, str):
        raise PayloadError(f"field 'fingerprint' must be a string, got {kind(fp)}")
    if fp and "\x00" in fp:
        # An alert's identity: PostgreSQL's text cannot hold NUL, and a fingerprint changed
        # on the way in would no longer match its alert.
        raise PayloadError("field 'fingerprint' must not contain NUL characters")
    return Alert(
        status=status,
        labels=labels,
        annotations=_labels(raw, "annotations"),
        starts_at=_time(raw, "startsAt"),
        ends_at=_time(raw, "endsAt"),
        generator_url=_text(raw, "generatorURL"),
        fingerprint=fp or fingerprint(labels),
    )


def salvage(raw: Any, reason: str) -> Alert:
    """What can be read of an alert that is not what webhook v4 says, flagged: it still
    pages (an alert is never dropped), firing unless it plainly says it resolved.

    Its string labels and annotations are kept (so it lands on its service when that can
    be read), with `firehouse_malformed="true"` and the reason in its summary; its times
    where they parse; Alertmanager's fingerprint when it is usable, else one of the labels
    kept, so that the same broken alert sent again is the same alert."""
    fields = raw if isinstance(raw, dict) else {}

    def strings(key: str) -> dict[str, str]:
        value = fields.get(key)
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    labels = {"alertname": "MalformedAlert", **strings("labels"), MALFORMED_LABEL: "true"}
    annotations = strings("annotations")
    said = annotations.get("summary")
    annotations["summary"] = (f"MALFORMED alert, paged as far as it could be read ({reason})"
                              + (f": {said}" if said else ""))
    times: list[datetime | None] = []
    for key in ("startsAt", "endsAt"):
        try:
            times.append(_time(fields, key))
        except PayloadError:
            times.append(None)
    fp = fields.get("fingerprint")
    url = fields.get("generatorURL")
    return Alert(
        status=RESOLVED if fields.get("status") == RESOLVED else FIRING,
        labels=MappingProxyType(labels), annotations=MappingProxyType(annotations),
        starts_at=times[0], ends_at=times[1],
        generator_url=url if isinstance(url, str) else "",
        fingerprint=fp if isinstance(fp, str) and fp and "\x00" not in fp
        else fingerprint(labels),
    )


def kind(value: Any) -> str:
    """How an error message names the JSON type of a value."""
    return "null" if value is None else type(value).__name__


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Old senders (webhook version 3) send e.g. a numeric groupKey.
        return str(value)
    if not isinstance(value, str):
        raise PayloadError(f"field {key!r} must be a string, got {kind(value)}")
    return value


def _labels(obj: dict[str, Any], key: str) -> Labels:
    value = obj.get(key)
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise PayloadError(f"field {key!r} must be an object of strings, got {kind(value)}")
    if not _STR_ONLY.issuperset(map(type, value.values())):
        # Not all plain strings (rare): find the offender, or accept str subclasses.
        for name, item in value.items():
            if not isinstance(item, str):
                raise PayloadError(
                    f"field {key}.{name!s:.60} must be a string, got {kind(item)}")
    return MappingProxyType(dict(value))


def _time(obj: dict[str, Any], key: str) -> datetime | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"field {key!r} must be an RFC 3339 string, got {kind(value)}")
    try:
        return _parse_time_once(value)
    except (ValueError, OverflowError) as exc:
        # OverflowError: a time near year 1 whose offset moves it before year 1 in UTC.
        raise PayloadError(f"field {key!r} is not an RFC 3339 time: {value!r:.60}") from exc


def to_json(alert: Alert) -> dict[str, Any]:
    """The alert as plain JSON, in Alertmanager's field names, for storage and APIs."""
    return {
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": alert.starts_at.isoformat() if alert.starts_at else None,
        "endsAt": alert.ends_at.isoformat() if alert.ends_at else None,
        "generatorURL": alert.generator_url,
        "fingerprint": alert.fingerprint,
    }
