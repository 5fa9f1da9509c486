"""A local stand-in for PagerDuty's Events API v2, used by every Firehouse test.

It is a real aiohttp HTTP server serving ``POST /v2/enqueue`` (alert events) and
``POST /v2/change/enqueue`` (change events).  Every request body is checked against
PagerDuty's official OpenAPI spec, copied verbatim under
``tests/specs/pagerduty/events-v2/openapiv3.json`` (provenance and known defects in
``tests/specs/pagerduty/SOURCE.txt``), plus the limits that only PagerDuty's prose
docs state (summary <= 1024 chars, dedup_key <= 255 chars, 32-char routing_key, a
trigger needs a payload, acknowledge/resolve need a dedup_key, body <= 512 KB).

How the spec's defects are handled:

* the 400/429 responses hold dangling ``#/components/responses/...`` strings: only
  request-body schemas are used, so they are never resolved;
* ``event_action`` (and ``payload.severity``) have an ``enum`` but no ``type``: the
  enum alone already rejects anything but the listed strings;
* ``dedup_key`` is "required unless the event_type is trigger" (v1 wording): read as
  ``event_action`` and checked here;
* no ``maxLength`` is encoded: the prose limits are checked here;
* ``format`` is not enforced: the spec's own example timestamp
  (``2015-07-17T08:42:58.315+0000``) is not RFC 3339, and ``url`` is no JSON Schema format.

Beyond validation it records every request, injects faults (``set_mode``) and
emulates PagerDuty's alert state per (routing_key, dedup_key), so tests can prove
that no dedup key was turned into a second page.

Standalone, for humans and subprocess tests::

    python -m tests.pagerduty_standin --port 8787

adds control routes ``POST /_control/mode`` (``{"mode": 500, "count": 3}``),
``GET /_control/received``, ``GET /_control/incidents``, ``POST /_control/clear``
and prints one line per request (routing key masked to its last 4 chars).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from aiohttp import web
from openapi_schema_validator import OAS30WriteValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_PATH = Path(__file__).parent / "specs" / "pagerduty" / "events-v2" / "openapiv3.json"
EVENT_PATH = "/v2/enqueue"
CHANGE_PATH = "/v2/change/enqueue"

MAX_BODY_BYTES = 512 * 1024  # "Events API payloads are limited to 512 KB"
MAX_SUMMARY_CHARS = 1024
MAX_DEDUP_KEY_CHARS = 255
ROUTING_KEY_CHARS = 32
HUNG = 0  # Received.status of a request that was never answered ("hang" mode)

Mode = int | Literal["ok", "hang"]
AlertState = Literal["triggered", "acknowledged", "resolved"]
Body = dict[str, Any]

_SPEC_URI = "urn:pagerduty:events-v2:openapiv3"
_REQUIRED = re.compile(r"^'(?P<name>.+)' is a required property$")


@dataclass(frozen=True)
class Received:
    """One request as the stand-in saw it, and what it answered."""

    path: str
    body: Body | None  # parsed JSON object, None if the body was not one
    status: int  # HTTP status answered; HUNG (0) if never answered
    errors: list[str]
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival
    injected: bool = False  # answered by fault injection, not by validation


# --------------------------------------------------------------------------- validation


@cache
def _validators() -> dict[str, Any]:
    """Map each served path (server prefix + spec path) to its request-body validator."""
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource(
        _SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT4)
    )
    prefix = urlsplit(spec["servers"][0]["url"]).path.rstrip("/")
    validators = {}
    for spec_path, item in spec["paths"].items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        OAS30WriteValidator.check_schema(schema)
        pointer = "/".join(
            part.replace("~", "~0").replace("/", "~1")
            for part in (
                "paths",
                spec_path,
                "post",
                "requestBody",
                "content",
                "application/json",
                "schema",
            )
        )
        validators[prefix + spec_path] = OAS30WriteValidator(
            {"$ref": f"{_SPEC_URI}#/{pointer}"}, registry=registry
        )
    assert set(validators) == {EVENT_PATH, CHANGE_PATH}, validators
    return validators


def _field(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


def _describe(error: Any) -> str:  # a jsonschema ValidationError (no stubs installed)
    parts = list(error.absolute_path)
    if error.validator == "required" and (m := _REQUIRED.match(error.message)):
        return f"{_field([*parts, m['name']])}: required field is missing"
    return f"{_field(parts)}: {error.message}"


def _prose_errors(path: str, body: Body, *, strict_routing_key: bool) -> list[str]:
    """The limits PagerDuty documents in prose but the spec does not encode."""
    errors = []
    routing_key = body.get("routing_key")
    if (
        strict_routing_key
        and isinstance(routing_key, str)
        and len(routing_key) != ROUTING_KEY_CHARS
    ):
        errors.append(
            f"routing_key: length is incorrect (should be {ROUTING_KEY_CHARS} characters,"
            f" got {len(routing_key)})"
        )
    payload = body.get("payload")
    summary = payload.get("summary") if isinstance(payload, dict) else None
    if isinstance(summary, str) and len(summary) > MAX_SUMMARY_CHARS:
        errors.append(
            f"payload.summary: {len(summary)} characters, over the"
            f" {MAX_SUMMARY_CHARS}-character limit"
        )
    if path == EVENT_PATH:
        action, dedup_key = body.get("event_action"), body.get("dedup_key")
        if action == "trigger" and "payload" not in body:
            errors.append("payload: required for a trigger event")
        if action in ("acknowledge", "resolve") and not dedup_key:
            errors.append(f"dedup_key: required for a {action!r} event")
        if isinstance(dedup_key, str) and len(dedup_key) > MAX_DEDUP_KEY_CHARS:
            errors.append(
                f"dedup_key: {len(dedup_key)} characters, over the"
                f" {MAX_DEDUP_KEY_CHARS}-character limit"
            )
    return errors


def validate(path: str, body: Body, *, strict_routing_key: bool = True) -> list[str]:
    """Readable errors (each naming its field) for ``body`` sent to ``path``; [] if valid."""
    errors = [
        _describe(e)
        for e in sorted(_validators()[path].iter_errors(body), key=lambda e: e.json_path)
    ]
    return errors + _prose_errors(path, body, strict_routing_key=strict_routing_key)


def _parse(raw: bytes) -> tuple[Body | None, list[str]]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [f"body: JSON parse error ({exc})"]
    if not isinstance(body, dict):
        return None, [f"body: must be a JSON object, got {type(body).__name__}"]
    return body, []


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _fault_response(status: int, retry_after: float | None) -> web.Response:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    if status in (204, 304):
        return web.Response(status=status, headers=headers)
    body: dict[str, Any]
    if status == 429:
        body = {
            "status": "throttle event",
            "message": "Requests for this service are arriving too quickly. Please retry later.",
        }
    elif status == 400:
        body = {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": ["injected fault"],
        }
    else:
        body = {"status": "error", "message": f"injected fault: HTTP {status}"}
    return _json(status, body, headers)


def _mask(routing_key: object) -> str:
    return f"****{routing_key[-4:]}" if isinstance(routing_key, str) else "-"


# --------------------------------------------------------------------------- the server


class PagerDutyStandIn:
    """PagerDuty Events API v2 on a local port: validates, records, injects faults."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict_routing_key: bool = True,
        echo: bool = False,
    ) -> None:
        self._host, self._port = host, port
        self._strict_routing_key = strict_routing_key
        self._echo = echo
        self._runner: web.AppRunner | None = None
        self._received: list[Received] = []
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()  # set on stop(): hung requests may finish
        self._mode: Mode = "ok"
        self._remaining: int | None = None
        self._retry_after: float | None = None
        self._states: dict[tuple[str, str], AlertState] = {}
        self._opened: Counter[tuple[str, str]] = Counter()

    # -- lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("stand-in already started")
        _validators()  # load and check the spec before accepting anything
        app = web.Application(client_max_size=8 * MAX_BODY_BYTES)
        app.add_routes(
            [
                web.post(EVENT_PATH, self._handle),
                web.post(CHANGE_PATH, self._handle),
                web.post("/_control/mode", self._control_mode),
                web.get("/_control/received", self._control_received),
                web.get("/_control/incidents", self._control_incidents),
                web.post("/_control/clear", self._control_clear),
            ]
        )
        self._release.clear()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL; Firehouse POSTs to ``{url}/v2/enqueue`` and ``{url}/v2/change/enqueue``."""
        if self._runner is None:
            raise RuntimeError("stand-in not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # -- fault injection

    def set_mode(
        self, mode: Mode, count: int | None = None, *, retry_after: float | None = None
    ) -> None:
        """Answer the next ``count`` requests (all, if None) with ``mode``.

        ``mode`` is an HTTP status (429, 500, 503, 400, ...), "hang" (never answer until
        stop()) or "ok" (normal).  ``retry_after`` adds a Retry-After header.
        """
        if isinstance(mode, bool) or not (
            mode in ("ok", "hang") or (isinstance(mode, int) and 200 <= mode <= 599)
        ):
            raise ValueError(f"mode must be 'ok', 'hang' or an HTTP status 200-599: {mode!r}")
        if count is not None and (isinstance(count, bool) or count < 1):
            raise ValueError(f"count must be a positive int or None: {count!r}")
        self._mode = mode
        self._remaining = None if mode == "ok" else count
        self._retry_after = None if mode == "ok" else retry_after

    def _take_fault(self) -> tuple[Mode, float | None] | None:
        if self._mode == "ok":
            return None
        fault = (self._mode, self._retry_after)
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining == 0:
                self.set_mode("ok")
        return fault

    # -- what was received

    @property
    def received(self) -> list[Received]:
        """Every request to the event routes, in arrival order."""
        return list(self._received)

    @property
    def events(self) -> list[Body]:
        """Bodies accepted (202) on /v2/enqueue, in order."""
        return self._accepted(EVENT_PATH)

    @property
    def changes(self) -> list[Body]:
        """Bodies accepted (202) on /v2/change/enqueue, in order."""
        return self._accepted(CHANGE_PATH)

    @property
    def invalid(self) -> list[Received]:
        """Requests answered 400 by validation (not by fault injection)."""
        return [r for r in self._received if r.status == 400 and not r.injected]

    @property
    def incidents_opened(self) -> Counter[tuple[str, str]]:
        """How many alerts each (routing_key, dedup_key) opened; 0 if never (a copy)."""
        return Counter(self._opened)

    def state(self, routing_key: str, dedup_key: str) -> AlertState | None:
        """PagerDuty-side alert state of the key, None if it never triggered."""
        return self._states.get((routing_key, dedup_key))

    def clear(self) -> None:
        """Forget received requests and alert state (the fault mode is kept)."""
        self._received.clear()
        self._states.clear()
        self._opened.clear()

    def _accepted(self, path: str | None) -> list[Body]:
        return [
            r.body
            for r in self._received
            if r.status == 202 and r.body is not None and path in (None, r.path)
        ]

    async def wait_for(
        self,
        predicate: Callable[[Body], bool],
        timeout: float = 10.0,
        *,
        path: str | None = EVENT_PATH,
    ) -> Body:
        """First accepted body on ``path`` (any, if None) with ``predicate(body)`` true.

        A predicate raising KeyError/TypeError/IndexError counts as false, so
        ``lambda b: b["payload"]["summary"] == "x"`` is fine on resolve events.
        """

        def find() -> Body | None:
            for body in self._accepted(path):
                with contextlib.suppress(KeyError, TypeError, IndexError):
                    if predicate(body):
                        return body
            return None

        try:
            async with asyncio.timeout(timeout), self._changed:
                found = await self._changed.wait_for(find)
        except TimeoutError:
            raise AssertionError(
                f"no accepted event on {path or 'any path'} matched within {timeout}s;"
                f" received:\n{self.dump()}"
            ) from None
        assert found is not None  # Condition.wait_for returns once find() is truthy
        return found

    async def wait_for_count(
        self, n: int, timeout: float = 10.0, path: str | None = EVENT_PATH
    ) -> list[Body]:
        """Wait until at least ``n`` bodies were accepted on ``path``; return them all."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self._accepted(path)) >= n)
        except TimeoutError:
            got = len(self._accepted(path))
            raise AssertionError(
                f"expected {n} accepted events on {path or 'any path'} within {timeout}s,"
                f" got {got}; received:\n{self.dump()}"
            ) from None
        return self._accepted(path)

    def dump(self) -> str:
        """Human-readable list of everything received (used in assertion messages)."""
        if not self._received:
            return "  (nothing)"
        return "\n".join(f"  #{i} {_line(r)}" for i, r in enumerate(self._received, 1))

    # -- handlers

    async def _record(self, received: Received) -> None:
        self._received.append(received)
        if self._echo:
            print(_line(received), flush=True)
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body, errors = _parse(raw)
        headers = dict(request.headers)
        at = time.monotonic()

        fault = self._take_fault()
        if fault is not None:
            mode, retry_after = fault
            if mode == "hang":
                await self._record(Received(request.path, body, HUNG, [], headers, at, True))
                await self._release.wait()
                return web.Response(status=503)
            assert isinstance(mode, int)
            await self._record(Received(request.path, body, mode, [], headers, at, True))
            return _fault_response(mode, retry_after)

        if errors:  # not a JSON object at all
            await self._record(Received(request.path, None, 400, errors, headers, at))
            return _json(
                400,
                {
                    "status": "Unrecognized object",
                    "message": "Event object format is unrecognized",
                    "errors": errors,
                },
            )
        assert body is not None
        if len(raw) > MAX_BODY_BYTES:
            errors.append(f"body: {len(raw)} bytes, over the {MAX_BODY_BYTES}-byte (512 KB) limit")
        errors += validate(request.path, body, strict_routing_key=self._strict_routing_key)
        if errors:
            await self._record(Received(request.path, body, 400, errors, headers, at))
            return _json(
                400,
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": errors,
                },
            )

        if request.path == CHANGE_PATH:
            answer = {"status": "success", "message": "Change event processed"}
        else:
            dedup_key = self._apply(body)
            answer = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        await self._record(Received(request.path, body, 202, [], headers, at))
        return _json(202, answer)

    def _apply(self, body: Body) -> str:
        """PagerDuty's alert de-duplication; returns the (possibly generated) dedup_key."""
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        key = (body["routing_key"], dedup_key)
        is_open = self._states.get(key) in ("triggered", "acknowledged")
        action = body["event_action"]
        if action == "trigger" and not is_open:
            self._states[key] = "triggered"
            self._opened[key] += 1
        elif action == "acknowledge" and is_open:
            self._states[key] = "acknowledged"
        elif action == "resolve" and is_open:
            self._states[key] = "resolved"
        # a trigger on an open alert only updates it; ack/resolve without one are dropped
        return dedup_key

    async def _control_mode(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            self.set_mode(data["mode"], data.get("count"), retry_after=data.get("retry_after"))
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, {"status": "error", "message": f"bad mode request: {exc!r}"})
        return _json(200, {"mode": self._mode, "count": self._remaining})

    async def _control_received(self, request: web.Request) -> web.Response:
        return _json(200, [asdict(r) for r in self._received])

    async def _control_incidents(self, request: web.Request) -> web.Response:
        return _json(
            200,
            [
                {"routing_key": rk, "dedup_key": dk, "state": state, "opened": self._opened[rk, dk]}
                for (rk, dk), state in self._states.items()
            ],
        )

    async def _control_clear(self, request: web.Request) -> web.Response:
        self.clear()
        return _json(200, {"cleared": True})


def _line(r: Received) -> str:
    """One line per request: status, path, masked routing key and the gist of the event."""
    status = "HUNG" if r.status == HUNG else str(r.status)
    text = f"{status} {r.path}"
    if r.body is not None:
        payload = r.body.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        action = r.body.get("event_action", "change" if r.path == CHANGE_PATH else "?")
        text += f" {action} rk={_mask(r.body.get('routing_key'))}"
        for name, value in (
            ("dedup", r.body.get("dedup_key")),
            ("severity", payload.get("severity")),
            ("summary", payload.get("summary")),
        ):
            if value is not None:
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                text += f" {name}={shown}"
    if r.injected:
        text += " [injected fault]"
    if r.errors:
        text += " errors: " + "; ".join(r.errors)
    return text


# --------------------------------------------------------------------------- standalone


async def _serve(host: str, port: int, strict_routing_key: bool) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with PagerDutyStandIn(host, port, strict_routing_key=strict_routing_key, echo=True) as pd:
        print(
            f"PagerDuty stand-in listening on {pd.url}"
            f" (POST {EVENT_PATH}, POST {CHANGE_PATH}, control under /_control)",
            flush=True,
        )
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument(
        "--lenient-routing-key",
        action="store_true",
        help="accept routing keys that are not 32 characters",
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, not args.lenient_routing_key))


if __name__ == "__main__":
    main()
