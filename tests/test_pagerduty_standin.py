"""Tests of the PagerDuty stand-in itself, through real HTTP against a real local server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pagerduty_standin import HUNG, PagerDutyStandIn

ROUTING_KEY = "0123456789abcdef0123456789abcdef"
assert len(ROUTING_KEY) == 32


def trigger(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "firehouse/test/1",
        "payload": {"summary": "disk full on db-1", "source": "db-1", "severity": "critical"},
    }
    body.update(overrides)
    return body


@pytest.fixture
async def pd() -> AsyncIterator[PagerDutyStandIn]:
    async with PagerDutyStandIn() as standin:
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, path: str = "/v2/enqueue"
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(
        url + path, data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def test_valid_trigger_is_accepted_and_recorded(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A spec-valid trigger is answered 202 with PagerDuty's success shape and recorded."""
    status, answer, _ = await post(http, pd.url, trigger())
    assert status == 202
    assert answer == {
        "status": "success",
        "message": "Event processed",
        "dedup_key": "firehouse/test/1",
    }
    assert pd.events == [trigger()]
    assert pd.invalid == []
    (received,) = pd.received
    assert received.path == "/v2/enqueue"
    assert received.status == 202
    assert received.headers["Content-Type"] == "application/json"
    assert pd.state(ROUTING_KEY, "firehouse/test/1") == "triggered"


async def test_trigger_without_dedup_key_gets_a_generated_one(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A trigger without dedup_key is answered with a fresh generated key that opens an alert."""
    body = trigger()
    del body["dedup_key"]
    status, answer, _ = await post(http, pd.url, body)
    assert status == 202
    assert answer["dedup_key"]
    assert pd.incidents_opened[ROUTING_KEY, answer["dedup_key"]] == 1


def _without_routing_key() -> dict[str, Any]:
    body = trigger()
    del body["routing_key"]
    return body


def _with_payload(**payload: Any) -> dict[str, Any]:
    body = trigger()
    body["payload"] = {**body["payload"], **payload}
    return body


def _without_payload() -> dict[str, Any]:
    body = trigger()
    del body["payload"]
    return body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            _without_routing_key(),
            "routing_key: required field is missing",
            id="missing-routing-key",
        ),
        pytest.param(
            trigger(event_action="explode"),
            "event_action: 'explode' is not one of",
            id="bad-event-action",
        ),
        pytest.param(
            _with_payload(severity="fatal"),
            "payload.severity: 'fatal' is not one of",
            id="severity-fatal",
        ),
        pytest.param(
            _with_payload(summary="x" * 1025),
            "payload.summary: 1025 characters, over the 1024-character limit",
            id="summary-1025",
        ),
        pytest.param(
            trigger(dedup_key="k" * 256),
            "dedup_key: 256 characters, over the 255-character limit",
            id="dedup-key-256",
        ),
        pytest.param(
            _without_payload(),
            "payload: required for a trigger event",
            id="trigger-without-payload",
        ),
        pytest.param(
            trigger(routing_key="short"),
            "routing_key: length is incorrect (should be 32 characters, got 5)",
            id="routing-key-not-32",
        ),
        pytest.param(
            {"routing_key": ROUTING_KEY, "event_action": "resolve"},
            "dedup_key: required for a 'resolve' event",
            id="resolve-without-dedup-key",
        ),
        pytest.param(
            trigger(payload={"summary": "s", "source": "x"}),
            "payload.severity: required field is missing",
            id="severity-missing",
        ),
    ],
)
async def test_invalid_event_is_rejected_naming_the_field(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession, body: dict[str, Any], expected: str
) -> None:
    """An event breaking the spec or a documented limit gets 400 with an error naming the field."""
    status, answer, _ = await post(http, pd.url, body)
    assert status == 400
    assert answer["status"] == "invalid event"
    assert answer["message"] == "Event object is invalid"
    assert any(error.startswith(expected) for error in answer["errors"]), answer["errors"]
    assert pd.events == []
    (rejected,) = pd.invalid
    assert rejected.errors == answer["errors"]
    assert pd.incidents_opened == {}


async def test_non_json_body_is_rejected(pd: PagerDutyStandIn, http: aiohttp.ClientSession) -> None:
    """A body that is not JSON gets 400 with an error naming the body as a JSON parse error."""
    status, answer, _ = await post(http, pd.url, b"routing_key=abc")
    assert status == 400
    assert answer["message"] == "Event object format is unrecognized"
    assert answer["errors"][0].startswith("body: JSON parse error")
    assert pd.invalid[0].body is None


async def test_json_that_is_not_an_object_is_rejected(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A JSON body that is not an object gets 400 saying it must be a JSON object."""
    status, answer, _ = await post(http, pd.url, [trigger()])
    assert status == 400
    assert answer["errors"] == ["body: must be a JSON object, got list"]


async def test_body_over_512_kb_is_rejected(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """An otherwise valid event over 512 KB gets 400 naming the size limit."""
    body = _with_payload(custom_details={"blob": "x" * (512 * 1024)})
    status, answer, _ = await post(http, pd.url, body)
    assert status == 400
    assert any(e.startswith("body: ") and "512 KB" in e for e in answer["errors"])


async def test_valid_change_event_is_accepted(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A spec-valid change event on /v2/change/enqueue is answered 202 and listed in changes."""
    change = {
        "routing_key": ROUTING_KEY,
        "payload": {"summary": "deployed firehouse 0.1.0", "source": "ci"},
        "links": [{"href": "https://ci.example.com/1", "text": "build"}],
    }
    status, answer, _ = await post(http, pd.url, change, path="/v2/change/enqueue")
    assert status == 202
    assert answer["status"] == "success"
    assert pd.changes == [change]
    assert pd.events == []


async def test_change_event_without_summary_is_rejected(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A change event whose payload lacks summary gets 400 naming payload.summary."""
    change = {"routing_key": ROUTING_KEY, "payload": {"source": "ci"}}
    status, answer, _ = await post(http, pd.url, change, path="/v2/change/enqueue")
    assert status == 400
    assert "payload.summary: required field is missing" in answer["errors"]


async def test_counted_500s_then_normal(pd: PagerDutyStandIn, http: aiohttp.ClientSession) -> None:
    """set_mode(500, count=2) answers 500 twice, then accepts normally again."""
    pd.set_mode(500, count=2)
    statuses = [(await post(http, pd.url, trigger()))[0] for _ in range(3)]
    assert statuses == [500, 500, 202]
    assert [r.status for r in pd.received] == [500, 500, 202]
    assert [r.injected for r in pd.received] == [True, True, False]
    assert len(pd.events) == 1
    assert pd.invalid == []


async def test_429_with_retry_after(pd: PagerDutyStandIn, http: aiohttp.ClientSession) -> None:
    """set_mode(429, retry_after=2) answers every request 429 with Retry-After until changed."""
    pd.set_mode(429, retry_after=2)
    for _ in range(2):
        status, answer, headers = await post(http, pd.url, trigger())
        assert status == 429
        assert answer["status"] == "throttle event"
        assert headers["Retry-After"] == "2"
    pd.set_mode("ok")
    assert (await post(http, pd.url, trigger()))[0] == 202
    assert len(pd.events) == 1


async def test_injected_400_is_not_counted_as_invalid(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """An injected 400 answers PagerDuty's invalid-event shape but is not listed in invalid."""
    pd.set_mode(400, count=1)
    status, answer, _ = await post(http, pd.url, trigger())
    assert status == 400
    assert answer["status"] == "invalid event"
    assert pd.invalid == []
    assert pd.events == []


async def test_hang_never_answers(pd: PagerDutyStandIn) -> None:
    """In "hang" mode the request is received but never answered, so a 0.5 s client times out."""
    pd.set_mode("hang")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
        with pytest.raises(TimeoutError):
            await post(http, pd.url, trigger())
    (received,) = pd.received
    assert received.status == HUNG
    assert pd.events == []


async def test_incidents_count_retrigger_after_resolve_only(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """A re-trigger of an open key opens no new incident, a re-trigger after resolve opens one."""
    key = (ROUTING_KEY, "firehouse/test/1")
    resolve = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key[1]}
    acknowledge = {**resolve, "event_action": "acknowledge"}

    await post(http, pd.url, acknowledge)  # no open alert: dropped
    assert pd.state(*key) is None
    await post(http, pd.url, trigger())
    await post(http, pd.url, trigger())  # still open: just an update
    assert pd.incidents_opened[key] == 1
    await post(http, pd.url, acknowledge)
    await post(http, pd.url, trigger())  # acknowledged is still open
    assert pd.state(*key) == "acknowledged"
    assert pd.incidents_opened[key] == 1
    await post(http, pd.url, resolve)
    assert pd.state(*key) == "resolved"
    await post(http, pd.url, trigger())  # resolved: a second incident
    assert pd.incidents_opened[key] == 2
    assert pd.state(*key) == "triggered"
    assert len(pd.events) == 7


async def test_same_dedup_key_on_another_routing_key_is_another_alert(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """Alert state is kept per (routing_key, dedup_key), as PagerDuty does."""
    other = "f" * 32
    await post(http, pd.url, trigger())
    await post(http, pd.url, trigger(routing_key=other))
    assert pd.incidents_opened == {
        (ROUTING_KEY, "firehouse/test/1"): 1,
        (other, "firehouse/test/1"): 1,
    }


async def test_wait_for_returns_matching_event(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """wait_for returns the first accepted event matching the predicate once it arrives."""
    resolve = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "k"}
    sender = asyncio.create_task(post(http, pd.url, resolve))
    matched = await pd.wait_for(lambda b: b["event_action"] == "resolve", timeout=5)
    await sender
    assert matched == resolve
    await post(http, pd.url, trigger())
    assert len(await pd.wait_for_count(2, timeout=5)) == 2


async def test_wait_for_timeout_dumps_what_was_received(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """wait_for raises AssertionError listing the received requests when nothing matches."""
    await post(http, pd.url, trigger(event_action="explode"))
    with pytest.raises(AssertionError, match=r"(?s)#1 400 /v2/enqueue explode.*event_action"):
        await pd.wait_for(lambda b: b["payload"]["summary"] == "never", timeout=0.2)


async def test_clear_forgets_requests_and_alert_state(
    pd: PagerDutyStandIn, http: aiohttp.ClientSession
) -> None:
    """clear() empties the record and the alert state."""
    await post(http, pd.url, trigger())
    pd.clear()
    assert pd.received == []
    assert pd.incidents_opened == {}
    assert pd.state(ROUTING_KEY, "firehouse/test/1") is None


async def test_standalone_mode_serves_and_controls() -> None:
    """`python -m tests.pagerduty_standin` serves events, control routes and prints masked lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.pagerduty_standin",
        "--port",
        "0",
        cwd=Path(__file__).resolve().parent.parent,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        banner = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        url = banner.split(" listening on ")[1].split()[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.post(url + "/_control/mode", json={"mode": 503, "count": 1}) as r:
                assert r.status == 200
            assert (await post(http, url, trigger()))[0] == 503
            assert (await post(http, url, trigger()))[0] == 202
            async with http.get(url + "/_control/received") as r:
                received = await r.json()
            assert [r["status"] for r in received] == [503, 202]
            async with http.post(url + "/_control/clear") as r:
                assert r.status == 200
            async with http.get(url + "/_control/received") as r:
                assert await r.json() == []
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 5)).decode() for _ in range(2)]
        assert lines[1].startswith("202 /v2/enqueue trigger rk=****cdef")
        assert ROUTING_KEY not in "".join(lines)
    finally:
        proc.terminate()
        await proc.wait()
