"""`firehouse migrate` as an operator runs it: a real process, a real PostgreSQL schema, a
real SQLite state file. It reads the settings only, needs no routing keys, and warns of
open incidents decided in dry-run in a state it imports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PostgresDatabase
from tests.helpers import ROOT, write_settings
from tests.pagerduty_standin import PagerDutyStandIn
from tests.test_server import pg_down, serving


@pytest.fixture
def schema(postgres_database: PostgresDatabase) -> Iterator[str]:
    """The DSN of a fresh, empty PostgreSQL schema, dropped after the test."""
    dsn = postgres_database.new_schema()
    try:
        yield dsn
    finally:
        postgres_database.drop_schema(dsn)


async def migrate(settings: Path, dsn: str, *args: str) -> tuple[int, str]:
    """Run `firehouse migrate ARGS --config SETTINGS` with no routing key in its
    environment; its exit code and its output (stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOUSE_")}
    env["FIREHOUSE_DATABASE_URL"] = dsn
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "migrate", *args, "--config", str(settings),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def live_settings(directory: Path, **changes: Any) -> Path:
    """The repository's settings with `dry_run: false`: every target needs a key to run."""
    directory.mkdir(exist_ok=True)
    return write_settings(directory, dry_run=False, **changes)


class TestMigrate:
    async def test_needs_no_routing_keys(self, tmp_path: Path, schema: str) -> None:
        """With `dry_run: false` and no key in the environment, the schema is migrated: no
        page is sent by migrating, so no paging secret is asked for."""
        status, out = await migrate(live_settings(tmp_path), schema)
        assert status == 0, out
        assert "applied migration(s) 1, " in out
        assert "routing key" not in out

    async def test_still_checks_the_settings_it_reads(self, tmp_path: Path, schema: str
                                                       ) -> None:
        """A bad setting is refused, named, as `run` names it."""
        settings = live_settings(tmp_path, database={"lease_seconds": 2})
        line = settings.read_text(encoding="utf-8").splitlines().index("  lease_seconds: 2")
        status, out = await migrate(settings, schema)
        assert status == 2
        assert out.splitlines() == [
            "firehouse: configuration is invalid:",
            f"{settings}:{line + 1}: database.lease_seconds: must be a number from 5 to 3600 "
            "(got 2)",
        ]

    async def test_reads_no_maps_or_rules(self, tmp_path: Path, schema: str) -> None:
        """Maps and rules decide pages, not where the state is: a host that only moves the
        state may lack them."""
        settings = live_settings(tmp_path, rules=[str(tmp_path / "no-rules")],
                                 dependency_maps=[str(tmp_path / "no-maps")])
        status, out = await migrate(settings, schema)
        assert status == 0, out

    async def test_warns_of_dry_run_incidents_it_imports(
        self, tmp_path: Path, schema: str, pd: PagerDutyStandIn
    ) -> None:
        """A SQLite state whose open incident was decided in dry-run is imported, with the
        warning a replica gives at start: naming the incident, and with advice for
        PostgreSQL (a fresh database), not for a SQLite file."""
        async with serving(tmp_path, "", pd, dry_run=True) as firehouse:
            status, answer = await firehouse.post(pg_down())
            await firehouse.drained()
        assert status == 200
        (opened,) = answer["incidents_opened"]

        status, out = await migrate(live_settings(tmp_path / "replica"), schema,
                                    "--from-sqlite", str(tmp_path / "state.db"))

        assert status == 0, out
        assert "copied from" in out
        (warning,) = [line for line in out.splitlines() if "level=WARNING" in line]
        assert (f"the state holds open incidents decided in dry-run ({opened}): their pages "
                "were only logged, never sent, but their new pages (escalations, business "
                "updates) are sent for real by a Firehouse that is not in dry-run; to start "
                "clean, stop every replica and point database.url (or "
                "FIREHOUSE_DATABASE_URL) at a fresh database (an empty database, or a "
                "schema of its own with ?search_path=)") in warning
        assert "fresh file" not in warning

    async def test_a_state_that_paged_for_real_gives_no_warning(
        self, tmp_path: Path, schema: str, pd: PagerDutyStandIn
    ) -> None:
        async with serving(tmp_path, "", pd) as firehouse:
            status, _ = await firehouse.post(pg_down())
            await firehouse.drained()
        assert status == 200

        status, out = await migrate(live_settings(tmp_path / "replica"), schema,
                                    "--from-sqlite", str(tmp_path / "state.db"))

        assert status == 0, out
        assert "level=WARNING" not in out
