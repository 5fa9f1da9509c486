"""Fuzzing POST /webhook/alertmanager of one running Firehouse with thousands of bodies.

Every real payload under tests/fixtures/alertmanager/ is mutated (fields dropped, types
changed, huge strings, control characters, lone surrogates, deep nesting, numbers where
strings go, negative truncatedAlerts), whole envelopes are generated, and bodies are sent
as garbage bytes, in other encodings and under wrong content types. Whatever arrives:

- never a 5xx: Alertmanager would retry it for ever, and it means a bug on our side;
- a 400 names a field or the JSON problem, and is exactly what the parser says of the body;
  a 200 is a body the parser accepts, with its alert and rejection counts;
- the process keeps answering (``/-/healthy``), logs no error, and its memory stays bounded.

Firehouse runs in-process (dry-run, SQLite in a temporary directory) on its own event loop
in a background thread, so that Hypothesis drives it with plain blocking HTTP requests.
Examples are derandomized: the same bodies on every run.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import copy
import ctypes
import ctypes.util
import gc
import http.client
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.alerts import parse_body
from daemon.app import Firehouse
from daemon.config import load_config
from daemon.errors import PayloadError
from tests.conftest import BACKENDS, PostgresDatabase
from tests.helpers import config_env, fixture_files, write_settings

WEBHOOK = "/webhook/alertmanager"
TOKEN = "fuzz-bearer-token"  # a test credential
USER, PASSWORD = "alertmanager", "fuzz-password"
JSON_TYPES = (None, "application/json", "application/json; charset=utf-8",
              "application/octet-stream")
# A 400 must say what is wrong: a field (by name) or the JSON itself.
NAMES_THE_PROBLEM = re.compile(r"\bfield\b|\bJSON\b")
RSS_MARGIN_BYTES = 150 * 1024 * 1024
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

FIXTURES: list[Any] = [json.loads(p.read_bytes()) for p in fixture_files()]
SERVICES = ("postgres-payments", "checkout", "payments", "core-network", "kafka",
            "nightly-reports", "snmp-core-switches", "coredns", "not-in-any-map", "")


def rss_bytes() -> int:
    """Resident set size of this process (tests and Firehouse both), once garbage is
    collected and the C allocator has returned its free pages: live memory, not the
    high-water mark of glibc's arenas."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as is
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --------------------------------------------------------------------------- the server


class ErrorLog(logging.Handler):
    """Keeps every ERROR record of Firehouse's loggers (none may happen)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class Server:
    """Firehouse on 127.0.0.1:0, on an event loop of its own in a daemon thread."""

    def __init__(self, tmp: Path, database_url: str = "") -> None:
        # Without flap damping, so that the final check sees incidents resolve at once.
        settings = write_settings(tmp, auth={"bearer_token": TOKEN, "basic_auth": {
            "username": USER, "password": PASSWORD}}, incidents={"flap_damping_seconds": 0})
        env = config_env(dry_run=True, state=tmp / "state.db", listen="127.0.0.1:0",
                         database_url=database_url)
        self.firehouse = Firehouse(load_config(settings, env=env), settings, env=env)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="firehouse",
                                       daemon=True)
        self.conn: http.client.HTTPConnection | None = None
        self.errors = ErrorLog()
        self.baseline_rss = 0
        self.requests = 0

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self.firehouse.start())

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        try:
            self.call(self.firehouse.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str | bytes] | None = None) -> tuple[int, bytes]:
        """One request on a kept-alive connection; reconnects once if the server closed it
        (after a 413 it may), so a request that breaks the server still fails."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.firehouse.port,
                                                       timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=dict(headers or {}))
                response = self.conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
            else:
                if response.will_close:
                    self.conn.close()
                    self.conn = None
                self.requests += 1
                return response.status, data
        raise AssertionError("unreachable")

    def post(self, body: bytes, content_type: str | None = "application/json"
             ) -> tuple[int, Any]:
        """POST a webhook body and check what every answer must satisfy."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        status, data = self.request("POST", WEBHOOK, body, headers)
        assert status < 500, f"{status} for {body[:300]!r}: {data[:500]!r}"
        assert status in (200, 400, 413, 415), (status, data[:500])
        answer = json.loads(data)
        if status == 400:
            assert NAMES_THE_PROBLEM.search(answer["error"]), answer
        elif status == 415:
            assert content_type not in JSON_TYPES, content_type
            assert "Content-Type" in answer["error"], answer
        return status, answer


def many_alerts(name: str, count: int, **extra: Any) -> bytes:
    """One notification with ``count`` distinct firing alerts on the example services."""
    return json.dumps({"alerts": [
        {"status": "firing", "labels": {"alertname": name, "n": str(n),
                                        "service": SERVICES[n % len(SERVICES)], **extra}}
        for n in range(count)]}).encode()


def warm_up(server: Server) -> None:
    """Every fixture, garbage, and the largest bodies the run sends: what the allocator
    keeps after those is the baseline, not growth."""
    limit = server.firehouse.config.settings.max_body_bytes
    for _ in range(3):
        for document in FIXTURES:
            assert server.post(json.dumps(document).encode())[0] == 200
        assert server.post(b"{not json")[0] == 400
        assert server.post(b"\xff" * 1000)[0] == 400
    assert server.post(many_alerts("WarmUp", 200))[0] == 200
    big = json.dumps({"alerts": [{"status": "firing", "labels": {"alertname": "WarmUpBig"},
                                  "annotations": {"a": "\U0001f525" * 2_000_000}}]},
                     ensure_ascii=False)
    assert server.post(big.encode("utf-32"))[0] == 200  # 4 bytes a character
    assert server.post(b'{"alerts": [], "pad": "' + b"p" * (limit - 30) + b'"}')[0] == 200
    assert server.post(b"[" * (limit // 2))[0] == 400


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    """One Firehouse per store backend for the module (its state in a SQLite file, or in a
    fresh PostgreSQL schema), warmed up, its RSS noted after the warm-up."""
    database: PostgresDatabase | None = None
    database_url = ""
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_database")
        database_url = database.new_schema()
    running = Server(tmp_path_factory.mktemp("fuzz"), database_url)
    logger = logging.getLogger("firehouse")
    level, propagate = logger.level, logger.propagate
    # Thousands of rejected bodies are logged at WARNING: keep them out of pytest's capture
    # (which holds them in memory) but catch every ERROR.
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(running.errors)
    running.start()
    try:
        warm_up(running)
        running.baseline_rss = rss_bytes()
        yield running
        assert running.alive
        assert running.errors.records == [], "\n".join(running.errors.records[:20])
    finally:
        running.stop()
        logger.removeHandler(running.errors)
        logger.setLevel(level)
        logger.propagate = propagate
        if database is not None:
            database.drop_schema(database_url)


def expect_parser_verdict(server: Server, body: bytes, content_type: str | None) -> None:
    """POST ``body``; with a JSON content type, the answer is what the parser says of it."""
    status, answer = server.post(body, content_type)
    if content_type not in JSON_TYPES:
        return
    if len(body) > server.firehouse.config.settings.max_body_bytes:
        assert status == 413, (status, answer)
        return
    try:
        webhook = parse_body(body)
    except PayloadError as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:
        assert status == 400, (status, answer, problem)
        assert answer["error"] == problem
        return
    assert status == 200, (status, answer, body[:300])
    assert answer["status"] == "success"
    assert answer["alerts"] == len(webhook.alerts)
    assert answer["rejected"] == [r.reason for r in webhook.rejected]
    for reason in answer["rejected"]:
        assert re.match(r"alerts\[\d+\]: ", reason), reason


# --------------------------------------------------------------------------- strategies

CONTROL = "".join(map(chr, range(0x20))) + "\x7f\x85\u2028\u2029\u200b\ufeff"
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                     min_size=1, max_size=4)
# Huge strings, like deep nesting below, are markers spliced into the JSON text by
# `encode`, so that Hypothesis never holds (or prints) megabytes per example.
HUGE_PIECES = ("x", "\u00e9", "\U0001f525", "\\u0000", "\\\\", '\\"', "\\ud83d")
HUGE = re.compile(r'"@@huge-(\d+)-(\d+)@@"')
huge = st.builds("@@huge-{}-{}@@".format, st.integers(0, len(HUGE_PIECES) - 1),
                 st.sampled_from([500, 500, 5_000, 5_000, 50_000, 200_000]))


def huge_string(match: re.Match[str]) -> str:
    return '"' + HUGE_PIECES[int(match[1])] * int(match[2]) + '"'


times = st.one_of(
    st.sampled_from([
        "0001-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00", "0001-01-01T00:00:01Z",
        "9999-12-31T23:59:59Z", "9999-12-31T23:30:00-01:00", "2024-02-30T00:00:00Z",
        "2024-05-01T12:00:00.123456789123Z", "2024-05-01T12:00:00", "2024-05-01T12:00:00+24:00",
        "2024-05-01 12:00:00Z", "2024-05-01T12:00:00z", "2024-05-01", "now", "1714564800", "",
        "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00+05:30", "+10000-01-01T00:00:00Z",
        "2024-05-01T12:00:00Z\x00", "\uff12\uff10\uff12\uff14-05-01T12:00:00Z",
    ]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
weird_text = st.one_of(
    st.text(max_size=30),
    st.text(st.sampled_from(CONTROL), max_size=10),
    st.text(st.characters(min_codepoint=0x80), max_size=20),
    surrogates,
    st.sampled_from(SERVICES),
    st.sampled_from(["firing", "resolved", "critical", "warning", "page", "alertname",
                     "service", "severity", "job", "0001-01-01T00:00:00Z"]),
    times,
)
leaves = st.one_of(
    st.none(), st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    weird_text,
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=4),
    max_leaves=12,
)


# Deep nesting is spliced into the JSON text (see `encode`): as Python objects it would
# break json.dumps and Hypothesis' printing of examples before Firehouse saw anything.
DEEP = re.compile(r'"@@deep-(\d+)-(list|dict)@@"')
deep = st.builds("@@deep-{}-{}@@".format,
                 st.sampled_from([50, 500, 900, 990, 1000, 1100, 3000, 20_000]),
                 st.sampled_from(["list", "dict"]))


def nested(match: re.Match[str]) -> str:
    depth = int(match[1])
    opening, closing = ("[", "]") if match[2] == "list" else ('{"k":', "}")
    return opening * depth + "1" + closing * depth


any_value = st.one_of(leaves, json_values, huge, deep)

well_typed_labels = st.one_of(
    st.fixed_dictionaries(
        {"alertname": weird_text},
        optional={"service": st.sampled_from(SERVICES) | weird_text,
                  "job": st.sampled_from(SERVICES), "severity": weird_text,
                  "priority": weird_text, "env": weird_text, "status": weird_text},
    ),
    st.dictionaries(weird_text, weird_text, max_size=5),
    st.dictionaries(weird_text, st.one_of(weird_text, huge), max_size=3),
)
# Mostly well typed (the alert is decided on), sometimes not (the alert alone is rejected).
labels = st.one_of(well_typed_labels, well_typed_labels,
                   st.dictionaries(weird_text, any_value, max_size=3))


@st.composite
def one_field_broken(draw: st.DrawFn, fields: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A well-typed object, or one with a field dropped or given any value at all."""
    value = draw(fields)
    how = draw(st.sampled_from(["keep", "keep", "drop", "retype"]))
    if how != "keep" and value:
        key = draw(st.sampled_from(sorted(value)))
        if how == "drop":
            del value[key]
        else:
            value[key] = draw(any_value)
    return value


alert_objects = one_field_broken(st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "resolved", "firing", "resolved", "Firing", "",
                                "pending"]),
     "labels": labels},
    optional={
        "annotations": labels,
        "startsAt": times,
        "endsAt": times,
        "generatorURL": st.sampled_from(
            ["http://prometheus/graph", "javascript:alert(1)", ""]) | weird_text,
        "fingerprint": st.text(max_size=20),
        "extra": any_value,
    },
))
alerts = st.one_of(alert_objects, alert_objects, any_value)
envelopes = one_field_broken(st.fixed_dictionaries(
    {"alerts": st.lists(alerts, max_size=6)},
    optional={
        "receiver": weird_text, "status": weird_text,
        "groupLabels": well_typed_labels, "commonLabels": well_typed_labels,
        "commonAnnotations": well_typed_labels, "externalURL": weird_text,
        "version": st.sampled_from(["4", "3"]) | st.integers() | st.floats(),
        "groupKey": weird_text | st.integers(),
        "truncatedAlerts": st.integers(min_value=0, max_value=2**70),
        "notification_reason": any_value, "routeLabels": any_value,
    },
))


def places(document: Any, limit: int = 6) -> list[tuple[Any, Any]]:
    """(container, key) of every value in ``document``, down to ``limit`` levels."""
    found: list[tuple[Any, Any]] = []
    stack = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= limit:
            continue
        keys = list(node) if isinstance(node, dict) else range(len(node)) \
            if isinstance(node, list) else []
        for key in keys:
            found.append((node, key))
            if isinstance(node[key], dict | list):
                stack.append((node[key], depth + 1))
    return found


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> Any:
    """A real payload with one to four mutations at random places."""
    document = copy.deepcopy(draw(st.sampled_from(FIXTURES)))
    if draw(st.booleans()):  # a fresh alert: new fingerprints, so the engine decides on it
        salt = draw(st.text(max_size=8))
        for item in document.get("alerts", []):
            item.pop("fingerprint", None)
            item.setdefault("labels", {})["fuzz"] = salt
    for _ in range(draw(st.integers(1, 4))):
        spots = places(document)
        operation = draw(st.sampled_from(
            ["drop", "replace", "number", "add", "grow", "huge", "control", "truncated"]))
        if operation == "truncated" and isinstance(document, dict):
            document["truncatedAlerts"] = draw(
                st.integers(min_value=-(2**66), max_value=-1) | any_value)
        elif operation == "grow" and isinstance(document, dict) \
                and isinstance(document.get("alerts"), list) and document["alerts"]:
            first = document["alerts"][0]
            count = draw(st.integers(2, 60))
            document["alerts"] = [
                {**first, "labels": {**first["labels"], "n": str(n)}}
                if isinstance(first, dict) and isinstance(first.get("labels"), dict) else first
                for n in range(count)
            ]
        elif not spots:
            document = draw(any_value)
        else:
            container, key = draw(st.sampled_from(spots))
            if operation == "drop":
                del container[key]
            elif operation == "replace":
                container[key] = draw(any_value)
            elif operation == "number":
                container[key] = draw(st.one_of(st.integers(), st.floats(), st.booleans(),
                                                st.none(), st.just([]), st.just({})))
            elif operation == "add" and isinstance(container[key], dict):
                container[key][draw(weird_text)] = draw(any_value)
            elif operation == "huge":
                container[key] = draw(huge)
            elif operation == "control":
                container[key] = draw(st.text(st.sampled_from(CONTROL), min_size=1,
                                              max_size=50))
    return document


ENCODINGS = ("utf-8", "utf-8-ascii", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be",
             "utf-32", "utf-32-be", "latin-1", "indented")


def encode(document: Any, how: str) -> bytes:
    """``document`` as JSON bytes; lone surrogates go out as escapes or raw UTF-8 bytes."""
    if how == "utf-8-ascii":
        text = json.dumps(document)
        return HUGE.sub(huge_string, DEEP.sub(nested, text)).encode("utf-8", "surrogatepass")
    text = json.dumps(document, ensure_ascii=False, indent=2 if how == "indented" else None)
    text = HUGE.sub(huge_string, DEEP.sub(nested, text))
    if how in ("utf-8", "indented"):
        return text.encode("utf-8", "surrogatepass")
    if how == "utf-8-sig":
        return codecs.BOM_UTF8 + text.encode("utf-8", "surrogatepass")
    return text.encode(how, "surrogatepass" if how.startswith("utf") else "replace")


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with a few byte-level injuries."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        injury = draw(st.sampled_from(["cut", "insert", "flip", "prefix", "suffix", "nul"]))
        at = draw(st.integers(0, len(data)))
        if injury == "cut":
            del data[at:]
        elif injury == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif injury == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif injury == "prefix":
            data[:0] = draw(st.binary(min_size=1, max_size=8))
        elif injury == "suffix":
            data += draw(st.sampled_from([b"{}", b"]", b"\x00", b" garbage", b"\n\n{"]))
        elif injury == "nul":
            data[at:at] = b"\x00"
    return bytes(data)


content_types = st.one_of(
    st.sampled_from(JSON_TYPES),
    st.sampled_from([
        "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
        "APPLICATION/JSON", "application/json;", "application/json; charset=utf-16",
        "application/json; charset=", "application/problem+json", "text/json", ";", "",
        "application/", "*/*", "garbage", "application/json, text/plain",
    ]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
)


# --------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=1500)
@given(document=mutated_fixtures(), how=st.sampled_from(ENCODINGS))
def test_mutated_real_payloads(server: Server, document: Any, how: str) -> None:
    """Real payloads, mutated, in every encoding: the parser's verdict, never a 5xx."""
    expect_parser_verdict(server, encode(document, how), "application/json")


@settings(FUZZ, max_examples=1000)
@given(document=envelopes, how=st.sampled_from(ENCODINGS[:3]))
def test_generated_envelopes(server: Server, document: Any, how: str) -> None:
    """Whole envelopes generated field by field, good and bad values mixed."""
    expect_parser_verdict(server, encode(document, how), "application/json")


@settings(FUZZ, max_examples=1500)
@given(data=st.data(), content_type=content_types)
def test_garbage_bytes_and_content_types(server: Server, data: st.DataObject,
                                         content_type: str | None) -> None:
    """Damaged serialisations of real payloads and random bytes, under any content type."""
    source = data.draw(st.sampled_from(FIXTURES))
    kind = data.draw(st.sampled_from(["damaged", "binary", "text", "json-scalar"]))
    if kind == "damaged":
        body = data.draw(damaged(encode(source, data.draw(st.sampled_from(ENCODINGS)))))
    elif kind == "binary":
        body = data.draw(st.binary(max_size=2000))
    elif kind == "text":
        body = data.draw(st.text(max_size=200)).encode()
    else:
        body = encode(data.draw(leaves | json_values), "utf-8")
    expect_parser_verdict(server, body, content_type)


@pytest.mark.parametrize("depth", [100, 990, 1000, 5000, 100_000, 1_000_000])
@pytest.mark.parametrize("where", ["top", "alerts", "labels", "unknown-field"])
def test_deep_nesting(server: Server, depth: int, where: str) -> None:
    """Nesting deeper than any decoder's recursion limit is a 400 naming JSON, never a crash."""
    opening, closing = "[" * depth, "]" * depth
    inner = f"{opening}{closing}"
    body = {
        "top": inner,
        "alerts": f'{{"alerts": {inner}}}',
        "labels": f'{{"alerts": [{{"status": "firing", "labels": {{"a": {inner}}}}}]}}',
        "unknown-field": f'{{"alerts": [], "extra": {inner}}}',
    }[where]
    expect_parser_verdict(server, body.encode(), "application/json")


@pytest.mark.parametrize(
    "body",
    [
        b"", b"null", b"[]", b"0", b'"alerts"', b"{}", b'{"alerts": null}', b'{"alerts": {}}',
        b'{"alerts": [], "truncatedAlerts": -1}', b'{"alerts": [], "truncatedAlerts": 1.0}',
        b'{"alerts": [], "truncatedAlerts": true}', b'{"alerts": [], "truncatedAlerts": "3"}',
        b'{"alerts": [], "truncatedAlerts": 1e400}',
        b'{"alerts": [], "truncatedAlerts": 18446744073709551616}',
        b'{"alerts": [], "truncatedAlerts": ' + b"9" * 5000 + b"}",
        b'{"alerts": [], "groupKey": NaN, "receiver": Infinity}',
        b'{"alerts": [{"status": "firing", "labels": {"alertname": "\\ud800"}}]}',
        b'{"alerts": [{"status": "firing", "labels": {"\\udfff": "x"}, "fingerprint": ""}]}',
        b'{"alerts": [{"status": "firing", "labels": {"a": "\xed\xa0\x80"}}]}',
        b'{"alerts": [{"status": "firing", "labels": {"a": "\\u0000\\u001b[31m"}}]}',
        b'{"alerts": [{"status": "firing", "startsAt": "9999-12-31T23:30:00-01:00"}]}',
        b'{"alerts": [{"status": "resolved", "endsAt": "0001-01-01T00:30:00+01:00"}]}',
        b'{"alerts": [{"status": "firing"}, {"status": "resolved"}, {"status": "firing"}]}',
        b'{"alerts": [1, "x", null, [], {"status": []}]}',
        b'\xef\xbb\xbf{"alerts": []}', b'{"alerts": []}\x00', b'{"alerts": []} {"alerts": []}',
        "{\"alerts\": []}".encode("utf-16"), "{\"alerts\": []}".encode("utf-32-le"),
    ],
)
def test_edge_bodies(server: Server, body: bytes) -> None:
    """Hand-picked edge cases, each with the parser's verdict."""
    expect_parser_verdict(server, body, "application/json")


def test_huge_bodies(server: Server) -> None:
    """Large but allowed bodies are decided on; one byte over max_body_bytes is a 413."""
    limit = server.firehouse.config.settings.max_body_bytes
    expect_parser_verdict(server, many_alerts("Many", 500), "application/json")
    label = {"alerts": [{"status": "firing", "labels": {"alertname": "Huge", "x": "y" * 2**20},
                         "annotations": {"summary": "\x00" * 2**20}}]}
    expect_parser_verdict(server, json.dumps(label).encode(), "application/json")
    padded = b'{"alerts": [], "pad": "' + b"p" * (limit - 30) + b'"}'
    assert len(padded) <= limit
    assert server.post(padded)[0] == 200
    over = b'{"alerts": [], "pad": "' + b"p" * limit + b'"}'
    status, answer = server.post(over)
    assert status == 413, answer
    assert str(limit) in answer["error"]


def post_with_authorization(server: Server, authorization: bytes) -> int:
    """POST a good webhook with this Authorization header value (bytes on the wire)."""
    body = json.dumps(FIXTURES[0]).encode()
    headers = {"Content-Type": "application/json", "Authorization": authorization}
    status, data = server.request("POST", WEBHOOK, body, headers)
    assert status < 500, f"{status} for Authorization: {authorization!r}: {data[:300]!r}"
    return status


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (f"Bearer {TOKEN}".encode(), 200),
        (f"bearer   {TOKEN}  ".encode(), 200),
        (b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()), 200),
        (b"", 401), (b"Bearer", 401), (b"Bearer ", 401), (b"Basic", 401), (b"Basic !!!", 401),
        (b"Basic " + base64.b64encode(b"\xff\xfe:\x00"), 401),
        (b"Basic " + base64.b64encode(b"no-colon"), 401),
        (b"Bearer " + b"t" * 7000, 401),
        (b"Bearer t\xc3\xb6ken", 401),  # UTF-8: fine
        (b"Digest username=x", 401),
        # Non-ASCII credentials once raised in server.authorized() (a 500).
        pytest.param(b"Bearer \xe9", 401, id="bearer-latin-1"),
        pytest.param(b"Bearer \xff\xfe", 401, id="bearer-not-utf-8"),
        pytest.param(b"Basic \xc3\xa9", 401, id="basic-utf-8"),
        pytest.param(b"Basic \xe9", 401, id="basic-latin-1"),
    ],
)
def test_credentials(server: Server, authorization: bytes, expected: int) -> None:
    """Any Authorization header is a 200 (right credentials) or a 401, never a 5xx."""
    assert post_with_authorization(server, authorization) == expected


@settings(FUZZ, max_examples=300)
@given(authorization=st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    st.builds("{} {}".format, st.sampled_from(["Bearer", "Basic", "bearer", "BASIC"]),
              st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)),
    st.builds(lambda scheme, raw: f"{scheme} {base64.b64encode(raw).decode()}",
              st.sampled_from(["Basic", "basic"]), st.binary(max_size=40)),
))
def test_any_ascii_credentials(server: Server, authorization: str) -> None:
    """Printable ASCII credentials of any shape: 401 unless they are the right ones."""
    status = post_with_authorization(server, authorization.encode())
    assert status in (200, 401), status


@settings(FUZZ, max_examples=400)
@given(path=st.sampled_from(["/api/v1/incidents", "/api/v1/outbox", "/api/v1/incidents/"]),
       key=st.sampled_from(["status", "state", "limit", "x"]),
       value=st.text(max_size=30) | st.integers().map(str))
def test_api_queries(server: Server, path: str, key: str, value: str) -> None:
    """The read API, with any query value or incident id: 200, 400 or 404, never a 5xx."""
    if path.endswith("/"):
        target = path + quote(value or "x", safe="")
    else:
        target = f"{path}?{quote(key)}={quote(value, safe='')}"
    status, data = server.request("GET", target, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status in (200, 400, 404), (target, status, data[:300])
    if status != 404:  # aiohttp's own 404 (an id its route cannot match) is plain text
        json.loads(data)


def test_zz_still_healthy_and_memory_bounded(server: Server) -> None:
    """After everything above: alive, ready, no error logged, every incident the fuzzing
    opened can be resolved, and RSS within a margin of the warm-up's."""
    assert server.request("GET", "/-/healthy")[0] == 200
    assert server.request("GET", "/-/ready")[0] == 200
    for document in FIXTURES:  # and still deciding normally
        assert server.post(json.dumps(document).encode())[0] == 200
    # Every incident the fuzzing opened can be resolved (its pages stood down) by its
    # alert's fingerprint, whatever its labels and times: nothing stays open for ever.
    opened = server.firehouse.dispatcher.state.open
    fingerprints = [fp for incident in opened.values() for fp in incident.alerts]
    if server.requests > 3000:  # the whole module ran
        assert len(fingerprints) > 1000, "the fuzzing opened too few incidents to mean much"
    for start in range(0, len(fingerprints), 500):
        batch = [{"status": "resolved", "labels": {}, "fingerprint": fp}
                 for fp in fingerprints[start:start + 500]]
        status, answer = server.post(json.dumps({"alerts": batch}).encode())
        assert status == 200, answer
        assert answer["rejected"] == []
    assert dict(server.firehouse.dispatcher.state.open) == {}
    assert server.errors.records == [], "\n".join(server.errors.records[:20])
    grown = rss_bytes() - server.baseline_rss
    assert grown < RSS_MARGIN_BYTES, (
        f"RSS grew by {grown / 2**20:.0f} MiB over {server.requests} requests"
    )


# Values an event body may hold, json.dumps' way: text of any kind (escapes, astral
# characters, lone surrogates), integers past 64 bits, floats, nesting.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(), _JSON_VALUES, max_size=6))
def test_fast_encoding_says_what_json_says_and_is_what_is_measured(
    body: dict[str, Any],
) -> None:
    """The request body (orjson, or json.dumps where orjson would differ) decodes to what
    json.dumps' would; the size checked against PagerDuty's limit is that body's, and never
    more than json.dumps' (so the limit cuts no more than it did)."""
    from daemon.decide.bodies import encode_event, event_size  # noqa: PLC0415

    exact = json.dumps(body)
    sent = encode_event(body)
    assert json.loads(sent) == json.loads(exact)
    assert event_size(body) == len(sent) <= len(exact)
