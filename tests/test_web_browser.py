"""The command-center pages in a real headless browser against a real `firehouse run`.

Debian's chromium, driven by Playwright (never `playwright install`: no browser download).
Skipped when chromium or Playwright is missing; a failure under FIREHOUSE_REQUIRE_E2E=1.
Screenshots go to the test's directory and, when FIREHOUSE_ARTEFACTS names a directory,
there too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import FirehouseFactory
from tests.helpers import alert, resolved, webhook_json
from tests.pagerduty_standin import PagerDutyStandIn
from tests.procs import REQUIRE_E2E_ENV, FirehouseProcess, require_binary

pytestmark = pytest.mark.e2e

CHROMIUM = ("chromium", "chromium")
ARTEFACTS_ENV = "FIREHOUSE_ARTEFACTS"
# Long enough for a slow machine; the page itself polls every second.
LIVE_TIMEOUT_MS = 8000
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian chromium under Playwright."""
    executable = require_binary(*CHROMIUM)
    try:
        from playwright.async_api import async_playwright  # noqa: PLC0415 - optional
    except ImportError:
        reason = "Playwright for Python is not installed (pip install -e '.[dev]')"
        if os.environ.get(REQUIRE_E2E_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_E2E_ENV}=1 requires it", pytrace=False)
        pytest.skip(reason)
    # Chromium's sandbox refuses to run as root (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=args)
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    """Screenshots saved in the test's directory and copied to $FIREHOUSE_ARTEFACTS."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        target = os.environ.get(ARTEFACTS_ENV)
        self.copy_to = Path(target) if target else None

    async def take(self, page: Any, name: str) -> Path:
        path = self.directory / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if self.copy_to is not None:
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.copy_to / path.name)
        return path


async def post(fh: FirehouseProcess, *alerts: dict[str, Any]) -> dict[str, Any]:
    """POST one Alertmanager notification; its JSON answer."""
    data = webhook_json(*alerts)
    data["externalURL"] = "http://alertmanager.example:9093"
    async with aiohttp.ClientSession() as session, session.post(
        fh.webhook_url, data=json.dumps(data), headers={"Content-Type": "application/json"},
    ) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        return answer


async def open_page(browser: Any, url: str, errors: list[str], width: int = 1600) -> Any:
    """A new tab on `url`, collecting script errors, marked so that a reload would show."""
    page = await browser.new_page(viewport={"width": width, "height": 1000})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(url)
    await page.wait_for_selector("#live-status.ok", timeout=LIVE_TIMEOUT_MS)
    await page.evaluate("window.__loaded = 'once'")
    return page


async def not_reloaded(page: Any) -> bool:
    return bool(await page.evaluate("window.__loaded === 'once'"))


async def test_board_incident_and_live_updates(
    browser: Any, firehouse: FirehouseFactory, pagerduty: PagerDutyStandIn, tmp_path: Path
) -> None:
    """A webhook shows on the board and the incident's page; further webhooks update both
    without a reload; resolving moves the incident to the resolved list."""
    shots = Shots(tmp_path / "screenshots")
    fh = await firehouse(settings={"incidents": {"flap_damping_seconds": 0}})
    now = datetime.now(UTC)
    database = alert({"alertname": "PostgresDown", "service": "postgres-payments",
                      "severity": "warning", "instance": "db-7:5432", "team": XSS},
                     starts_at=now - timedelta(minutes=3),
                     annotations={"summary": f"connections refused {XSS}"})
    ident = (await post(fh, database))["incidents_opened"][0]
    # Its four pages delivered, so the board says "not acknowledged", not "waiting".
    await pagerduty.wait_for_count(4)
    errors: list[str] = []

    board = await open_page(browser, fh.url + "/", errors)
    card = board.locator(f'article.incident[data-incident="{ident}"]')
    await card.wait_for()
    text = await card.inner_text()
    assert "CRITICAL" in text
    assert "online-checkout" in text
    assert "postgres-payments" in text  # the probable root cause
    assert "not acknowledged" in text
    assert await board.evaluate("window.__xss") is None
    await shots.take(board, "board")

    page = await open_page(browser, f"{fh.url}/incidents/{ident}", errors)
    root = page.locator('svg.blast-svg g.node[data-service="postgres-payments"]')
    assert await root.get_attribute("data-state") == "root"
    assert await page.locator('svg.blast-svg g.node[data-state="down"]').count() >= 1
    assert await page.locator(
        'svg.blast-svg path.edge-carry[data-from="postgres-payments"]').count() >= 1
    assert "opened the incident" in await page.locator("ol.timeline").inner_text()
    assert XSS in await page.locator("ul.alerts").inner_text()  # shown as text, not run
    assert await page.evaluate("window.__xss") is None
    await shots.take(page, "incident")

    # Another service of the same fire: the incident's picture grows in place.
    app = alert({"alertname": "HighErrors", "service": "payments", "severity": "critical"},
                starts_at=now - timedelta(minutes=1))
    posted = time.monotonic()
    await post(fh, app)
    await page.wait_for_selector('svg.blast-svg g.node[data-service="payments"]'
                                 '[data-state="failing"]', timeout=LIVE_TIMEOUT_MS)
    print(f"incident page updated {time.monotonic() - posted:.2f}s after the webhook")
    assert await not_reloaded(page)
    async with aiohttp.ClientSession() as session, session.get(
            f"{fh.url}/api/v1/incidents/{ident}") as response:
        services = (await response.json())["services"]
    for service in services:
        assert await page.locator(f'svg.blast-svg g.node[data-service="{service}"]').count() == 1

    # An unrelated fire appears on the board without a reload.
    search = alert({"alertname": "SearchSlow", "service": "elasticsearch",
                    "severity": "warning"}, starts_at=now - timedelta(minutes=10))
    posted = time.monotonic()
    other = (await post(fh, search))["incidents_opened"][0]
    await board.wait_for_selector(f'article.incident[data-incident="{other}"]',
                                  timeout=LIVE_TIMEOUT_MS)
    print(f"board updated {time.monotonic() - posted:.2f}s after the webhook")
    assert await not_reloaded(board)
    cards = await board.locator("article.incident").evaluate_all(
        "nodes => nodes.map(n => n.dataset.incident)")
    assert cards == [ident, other]  # critical before error

    # Everything resolves: the incident moves to the resolved table.
    await post(fh, resolved(database, now), resolved(app, now))
    await board.wait_for_selector(f'table.resolved tr[data-incident="{ident}"]',
                                  timeout=LIVE_TIMEOUT_MS)
    assert await board.locator(f'article.incident[data-incident="{ident}"]').count() == 0
    assert await not_reloaded(board)
    await page.wait_for_selector(".phase-resolved", timeout=LIVE_TIMEOUT_MS)
    await shots.take(board, "board-resolved")

    business = await open_page(browser, fh.url + "/business", errors)
    text = await business.locator("main").inner_text()
    assert "product-search" in text
    assert "elasticsearch" not in text
    assert "SearchSlow" not in text
    await shots.take(business, "business")

    phone = await open_page(browser, f"{fh.url}/", errors, width=390)
    await shots.take(phone, "board-phone")
    assert errors == []
