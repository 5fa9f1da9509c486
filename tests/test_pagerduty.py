"""The Events API v2 client, against the local PagerDuty stand-in."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.pagerduty import (
    AUTH_ERROR,
    CLIENT_ERROR,
    CONNECTION_ERROR,
    OK,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    PagerDutyClient,
    classify,
)
from tests.helpers import free_port, routing_key
from tests.pagerduty_standin import PagerDutyStandIn

KEY = routing_key("command-center")


def trigger(severity: str = "critical") -> dict[str, Any]:
    """A trigger event body as the outbox stores it: no routing key."""
    return {
        "event_action": "trigger",
        "dedup_key": "firehouse/0123456789abcdef/command-center",
        "payload": {"summary": "[CRITICAL] PostgresDown on postgres-payments",
                    "source": "postgres-payments", "severity": severity},
        "client": "Firehouse",
    }


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "outcome"),
        [(202, OK), (400, CLIENT_ERROR), (401, AUTH_ERROR), (403, AUTH_ERROR),
         (404, CLIENT_ERROR), (408, TIMEOUT), (429, RATE_LIMITED), (500, SERVER_ERROR),
         (503, SERVER_ERROR)],
    )
    def test_status_maps_to_outcome(self, status: int, outcome: str) -> None:
        """Each HTTP status of the Events API maps to one outcome of the closed set."""
        assert classify(status) == outcome


class TestSend:
    async def test_accepted_event_adds_the_routing_key_at_send_time(
        self, pd: PagerDutyStandIn, session: aiohttp.ClientSession
    ) -> None:
        """An accepted event is ok, and the routing key is added to the request, not the body."""
        body = trigger()
        client = PagerDutyClient(pd.url, session, timeout=5)

        result = await client.send(KEY, body)

        assert (result.outcome, result.status, result.retryable) == (OK, 202, False)
        (received,) = pd.events
        assert received == {**body, "routing_key": KEY}
        assert "routing_key" not in body
        assert pd.state(KEY, body["dedup_key"]) == "triggered"

    async def test_server_error_is_retryable(
        self, pd: PagerDutyStandIn, session: aiohttp.ClientSession
    ) -> None:
        """A 500 is a retryable server_error."""
        pd.set_mode(500, count=1)

        result = await PagerDutyClient(pd.url, session, timeout=5).send(KEY, trigger())

        assert (result.outcome, result.status, result.retryable) == (SERVER_ERROR, 500, True)

    async def test_rate_limit_reports_retry_after(
        self, pd: PagerDutyStandIn, session: aiohttp.ClientSession
    ) -> None:
        """A 429 is rate_limited, with its Retry-After in seconds."""
        pd.set_mode(429, count=1, retry_after=30)

        result = await PagerDutyClient(pd.url, session, timeout=5).send(KEY, trigger())

        assert (result.outcome, result.status, result.retryable) == (RATE_LIMITED, 429, True)
        assert result.retry_after == 30.0

    async def test_invalid_event_is_a_client_error_with_pagerduty_message(
        self, pd: PagerDutyStandIn, session: aiohttp.ClientSession
    ) -> None:
        """A 400 is a final client_error that carries PagerDuty's explanation."""
        result = await PagerDutyClient(pd.url, session, timeout=5).send(
            KEY, trigger(severity="catastrophic"))

        assert (result.outcome, result.status, result.retryable) == (CLIENT_ERROR, 400, False)
        assert "Event object is invalid" in result.message
        assert "payload.severity" in result.message

    async def test_no_answer_is_a_timeout(
        self, pd: PagerDutyStandIn, session: aiohttp.ClientSession
    ) -> None:
        """A request PagerDuty never answers ends as a retryable timeout."""
        pd.set_mode("hang", count=1)

        result = await PagerDutyClient(pd.url, session, timeout=0.2).send(KEY, trigger())

        assert (result.outcome, result.status, result.retryable) == (TIMEOUT, 0, True)

    async def test_refused_connection_is_a_connection_error(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A port nobody listens on gives a retryable connection_error."""
        client = PagerDutyClient(f"http://127.0.0.1:{free_port()}", session, timeout=5)

        result = await client.send(KEY, trigger())

        assert (result.outcome, result.status, result.retryable) == (CONNECTION_ERROR, 0, True)
        assert result.message


class TestErrorBody:
    @pytest.mark.parametrize(
        ("content_type", "raw"),
        [("application/json; charset=utf-8", '{"message": "Clé invalide"}'.encode()),
         ("application/json; charset=latin-1", '{"message": "Clé invalide"}'.encode("latin-1")),
         ("application/json; charset=no-such-charset", b'{"message": "Cl\xc3\xa9 invalide"}')],
    )
    async def test_message_is_decoded_in_the_declared_charset_else_utf8(
        self, session: aiohttp.ClientSession, content_type: str, raw: bytes
    ) -> None:
        """An error body is read in the charset it declares, UTF-8 when that is unknown."""

        async def refuse(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=400, body=raw, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_post("/v2/enqueue", refuse)
        async with TestServer(app) as server:
            result = await PagerDutyClient(str(server.make_url("")), session, 5).send(
                KEY, trigger())

        assert (result.outcome, result.status, result.message) == (
            CLIENT_ERROR, 400, "Clé invalide")
