"""The command-center pages over HTTP: a real Firehouse in this process, paging the stand-in."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.app import Firehouse
from daemon.config import load_config
from daemon.errors import ConfigError
from tests.helpers import SETTINGS, alert, body, config_env, resolved, write_settings
from tests.pagerduty_standin import PagerDutyStandIn
from tests.test_web_render import firing, node_states

JSON = {"Content-Type": "application/json"}
TOKEN = "s3cret-bearer-token"
USER, PASSWORD = "oncall", "hunter2"
EVIL = "<script>alert(1)</script>"


class Running:
    """A started Firehouse and a session to it."""

    def __init__(self, firehouse: Firehouse, session: aiohttp.ClientSession) -> None:
        self.firehouse = firehouse
        self.session = session
        self.url = f"http://127.0.0.1:{firehouse.port}"

    async def post(self, data: bytes, headers: dict[str, str] | None = None) -> Any:
        async with self.session.post(f"{self.url}/webhook/alertmanager", data=data,
                                     headers=headers or JSON) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def get(self, path: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, str, Any]:
        async with self.session.get(self.url + path, headers=headers) as response:
            return response.status, await response.text(), response.headers


@asynccontextmanager
async def serving(tmp_path: Path, database_url: str, pd: PagerDutyStandIn,
                  settings: Path = SETTINGS) -> AsyncIterator[Running]:
    env = config_env(pagerduty_url=pd.url, state=tmp_path / "state.db", listen="127.0.0.1:0",
                     database_url=database_url)
    firehouse = Firehouse(load_config(settings, env=env), settings, env=env)
    await firehouse.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(firehouse, session)
    finally:
        await firehouse.stop()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def pg_down(**labels: str) -> bytes:
    return body(alert({"alertname": "PostgresDown", "service": "postgres-payments",
                       "severity": "critical", "instance": "db-7.internal:5432", **labels},
                      annotations={"summary": f"connections refused {EVIL}"}))


class TestPages:
    async def test_board_incident_and_business_pages(self, tmp_path: Path, database_url: str,
                                                     pd: PagerDutyStandIn) -> None:
        """After a webhook, the board lists the incident, its page draws the blast radius,
        and the business view names the business service without hosts or labels."""
        async with serving(tmp_path, database_url, pd) as running:
            answer = await running.post(pg_down(team=EVIL))
            ident = answer["incidents_opened"][0]
            board = await running.get("/")
            page = await running.get(f"/incidents/{ident}")
            fragment = await running.get(f"/incidents/{ident}?fragment=1")
            business = await running.get("/business")

        status, html, headers = board
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert f'href="/incidents/{ident}"' in html
        assert 'data-live="/?fragment=1"' in html
        status, html, _ = page
        assert status == 200
        assert 'data-service="postgres-payments" data-state="root"' in html
        assert 'data-state="down"' in html
        assert "&lt;script&gt;" in html
        assert EVIL not in html
        status, html, _ = fragment
        assert html.startswith('<div class="live-root"')
        assert "<html" not in html
        status, html, _ = business
        assert "online-checkout" in html
        for private in ("db-7.internal", "postgres-payments", "PostgresDown", "instance",
                        "script"):
            assert private not in html.split('<main id="live"', 1)[1]

    async def test_unknown_incident_is_404(self, tmp_path: Path, database_url: str,
                                           pd: PagerDutyStandIn) -> None:
        """An incident id nobody knows is a 404 page."""
        async with serving(tmp_path, database_url, pd) as running:
            status, html, _ = await running.get("/incidents/nope")

        assert status == 404
        assert "No such incident" in html

    async def test_static_files_are_shipped(self, tmp_path: Path, database_url: str,
                                            pd: PagerDutyStandIn) -> None:
        """The script and stylesheet come from the package; other names are 404."""
        async with serving(tmp_path, database_url, pd) as running:
            script = await running.get("/static/app.js")
            style = await running.get("/static/style.css")
            missing = await running.get("/static/..%2Fserver.py")

        assert script[0] == 200
        assert "fetch(" in script[1]
        assert script[2]["Content-Type"].startswith("text/javascript")
        assert style[0] == 200
        assert ":root" in style[1]
        assert missing[0] == 404


class TestAuth:
    @pytest.mark.parametrize(("authorization", "expected"), [
        (None, 401), (basic(USER, PASSWORD), 200), (basic(USER, "wrong"), 401),
        (f"Bearer {TOKEN}", 200)], ids=["none", "basic", "bad-basic", "bearer"])
    async def test_pages_take_the_api_credentials(
        self, tmp_path: Path, database_url: str,
        pd: PagerDutyStandIn, authorization: str | None, expected: int
    ) -> None:
        """With auth configured, every page and its static files need the API's credentials;
        a browser is challenged for basic auth."""
        settings = write_settings(tmp_path, auth={
            "bearer_token": TOKEN, "basic_auth": {"username": USER, "password": PASSWORD}})
        headers = {"Authorization": authorization} if authorization else None
        async with serving(tmp_path, database_url, pd, settings) as running:
            answers = [await running.get(path, headers)
                       for path in ("/", "/business", "/incidents/x", "/static/app.js")]

        for (status, _, response_headers), path in zip(answers, ("/", "/business"),
                                                       strict=False):
            assert status == expected, path
            if expected == 401:
                assert response_headers["WWW-Authenticate"].startswith('Basic realm="firehouse"')
        assert answers[2][0] == (404 if expected == 200 else 401)
        assert answers[3][0] == expected

    async def test_bearer_only_explains_what_a_browser_needs(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """With only a bearer token, the 401 page says that a browser cannot send one and
        what to configure instead."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN})
        async with serving(tmp_path, database_url, pd, settings) as running:
            status, html, headers = await running.get("/")

        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "auth.basic_auth" in html
        assert "web.open" in html

    async def test_web_open_leaves_the_pages_but_not_the_api_open(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """`web.open: true` serves the pages without credentials; the API still needs them."""
        settings = write_settings(tmp_path, auth={"bearer_token": TOKEN}, web={"open": True})
        async with serving(tmp_path, database_url, pd, settings) as running:
            page, _, _ = await running.get("/")
            api, text, _ = await running.get("/api/v1/incidents")

        assert page == 200
        assert api == 401, json.loads(text)

    def test_web_open_must_be_a_boolean(self, tmp_path: Path) -> None:
        """A `web` setting that is not understood is refused, naming the key."""
        settings = write_settings(tmp_path, web={"open": "perhaps", "colour": "red"})
        with pytest.raises(ConfigError, match=r"web\.open") as caught:
            load_config(settings, env=config_env())

        assert "web.colour" in str(caught.value)


class TestRecovered:
    """A service whose alerts all resolved is never shown as currently failing: the pages
    agree with the API's impact and say what recovered since it was last assessed."""

    async def test_a_resolved_service_is_not_drawn_failing_after_a_later_join(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """catalog resolves, then storefront joins: the impact leaves catalog out, and so
        does the picture's failing set; the page lists catalog as recovered."""
        catalog = firing("CatalogSlow", "catalog")
        async with serving(tmp_path, database_url, pd) as running:
            ident = (await running.post(body(catalog)))["incidents_opened"][0]
            await running.post(body(firing("CartErrors", "cart")))
            await running.post(body(resolved(catalog)))
            await running.post(body(firing("StorefrontErrors", "storefront", "critical")))
            _, api, _ = await running.get(f"/api/v1/incidents/{ident}")
            _, page, _ = await running.get(f"/incidents/{ident}?fragment=1")

        data = json.loads(api)
        assert "catalog" in data["services"]
        assert "catalog" not in data["impact"]["failing"]
        drawn = node_states(page)
        failing = {name for name, state in drawn.items() if state in ("root", "failing")}
        assert failing == set(data["impact"]["failing"])
        assert drawn.get("catalog") not in ("root", "failing", "root-recovered", "recovered")
        assert "catalog: failing" not in page
        recovered = re.search(r"<dt>Recovered</dt><dd>(.*?)</dd>", page)
        assert recovered is not None
        assert "catalog" in recovered.group(1)
        assert "cart" not in recovered.group(1)

    async def test_a_recovered_root_cause_says_recovered_on_the_page_and_the_board(
        self, tmp_path: Path, database_url: str, pd: PagerDutyStandIn
    ) -> None:
        """postgres-catalog, the root cause, resolves while catalog still fails: the impact
        is not recomputed (no alert joined), so the API still names it; the picture draws
        it as a recovered root cause, and the root-cause lists say so and what still
        fails."""
        database = firing("PostgresDown", "postgres-catalog", "critical")
        async with serving(tmp_path, database_url, pd) as running:
            ident = (await running.post(body(database)))["incidents_opened"][0]
            await running.post(body(firing("CatalogSlow", "catalog")))
            before = node_states((await running.get(f"/incidents/{ident}?fragment=1"))[1])
            await running.post(body(resolved(database)))
            _, api, _ = await running.get(f"/api/v1/incidents/{ident}")
            _, page, _ = await running.get(f"/incidents/{ident}?fragment=1")
            _, board, _ = await running.get("/?fragment=1")

        assert before["postgres-catalog"] == "root"
        data = json.loads(api)
        assert data["root_causes"][0]["services"] == ["postgres-catalog"]
        drawn = node_states(page)
        assert drawn["postgres-catalog"] == "root-recovered"
        assert drawn["catalog"] == "failing"
        for html in (page, board):
            roots = re.search(r'<ul class="roots">(.*?)</ul>', html)
            assert roots is not None
            assert re.search(r"<b>postgres-catalog</b> <span class=\"recovered-mark\">"
                             r"✔ recovered", roots.group(1))
            assert "still failing" in roots.group(1)
            assert "catalog" in roots.group(1).split("still failing", 1)[1]
