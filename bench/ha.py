"""PostgreSQL benchmark (issue 8): Firehouse on its SQLite file, on PostgreSQL with one
replica, and on PostgreSQL with three replicas sharing the database, side by side in one
run, on the workload of the webhook benchmark (bench/load.py).

    python -m bench.ha            # 3 repetitions (about 10 minutes)
    python -m bench.ha --quick    # one short repetition (CI: prints figures, asserts nothing)

For each configuration, and each measurement, a fresh store: a new state file, or a new
database `fh_bench_<random>` on the PostgreSQL server (`--postgres`, an admin DSN; by
default $FIREHOUSE_TEST_POSTGRES or the tests' server), dropped WITH (FORCE) at the end,
failed or not. Every deployment has the 10,000-service generated map and the PagerDuty
stand-in, as in bench/load.py, whose measurements are reused:

* saturation (`saturate`): one wrk whose threads (3 streams of bench/webhooks.py, the same
  whatever the configuration) take the replicas in turn, there being no load balancer;
  sustained webhooks/s, errors and non-2xx, response latency, then how long the outbox
  takes to deliver what the run decided;
* time to page (`pace`) at a fixed offered rate: one new fire a webhook, webhooks sent to
  the replicas in turn; from when a webhook was due to the stand-in accepting its
  incident's first trigger, and the webhook's own response time.

Both count the triggers the stand-in accepted per dedup key: PagerDuty keeps one alert per
key, so each key is triggered exactly once; a key triggered twice is a double page (one
replica sending an event another one sent), printed loudly. CPU is read from /proc for
the Firehouse replicas, for PostgreSQL's backends of the benchmark's database, and for
PostgreSQL's own background processes (shared with any other user of the server).

Figures go to stdout and to bench/results/ha.json, medians of the repetitions with their
spread. The exit status is 0 whatever they are; 1 if a measurement could not be made at
all; 2 if wrk is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.harness import (
    Measured,
    Proc,
    Processes,
    generated_map,
    metrics,
    start_firehouse,
    start_standin,
    unrelated_pool,
)
from bench.load import (
    SERVICES,
    Arrivals,
    arguments,
    attempt,
    fmt,
    machine,
    pace,
    publish,
    saturate,
    summary,
)
from bench.webhooks import rfc3339

ADMIN_ENV = "FIREHOUSE_TEST_POSTGRES"  # the tests' variable: one server for both
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
WRK_THREADS = 3  # streams, one per wrk thread: the same load for every configuration
DROP_PATIENCE = 60.0  # seconds to retry dropping a database while the server is away
# The database, or the way to it, failed (rather than this program).
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Config(NamedTuple):
    name: str
    title: str
    postgres: bool
    replicas: int


CONFIGS = (
    Config("sqlite", "SQLite, 1 process", postgres=False, replicas=1),
    Config("pg1", "PostgreSQL, 1 replica", postgres=True, replicas=1),
    Config("pg3", "PostgreSQL, 3 replicas", postgres=True, replicas=3),
)


def plan(quick: bool) -> dict[str, Any]:
    """Durations (s) and sizes. `drain_wait`: longest wait, after saturation, for the
    outbox to deliver what the run decided; `page_wait`: for the last pages at the paced
    rate (later ones count as missing)."""
    if quick:
        return {"repeats": 1, "saturation_seconds": 5, "connections": 18, "drain_wait": 10,
                "rate": 100, "paced_seconds": 5, "page_wait": 20}
    return {"repeats": 3, "saturation_seconds": 20, "connections": 18, "drain_wait": 60,
            "rate": 100, "paced_seconds": 30, "page_wait": 120}


# --------------------------------------------------------------------------- PostgreSQL


def admin(dsn: str, sql: str) -> Any:
    """Run one statement on a connection of its own; its first value, if any."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def fresh_database(admin_dsn: str) -> Iterator[tuple[str, str]]:
    """A new database `fh_bench_<random>` on the admin DSN's server: (name, DSN), the DSN
    with the admin's credentials; dropped WITH (FORCE) on the way out, whatever happened."""
    name = f"fh_bench_{secrets.token_hex(5)}"
    admin(admin_dsn, f'CREATE DATABASE "{name}"')
    try:
        parts = urlsplit(admin_dsn)
        yield name, urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        drop_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE … WITH (FORCE), retried for DROP_PATIENCE seconds (someone may be
    restarting the server: the HA tests do), then given up on loudly; never raises, so
    that the error that ended the measurement, if any, is the one reported."""
    deadline = time.monotonic() + DROP_PATIENCE
    while True:
        try:
            admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except DATABASE_ERRORS as exc:
            if time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            print(f"!!! database {name} could not be dropped ({type(exc).__name__}: {exc}): "
                  "drop it by hand", file=sys.stderr)
        return


def postgres_version(admin_dsn: str) -> str:
    try:
        return str(admin(admin_dsn, "SHOW server_version"))
    except DATABASE_ERRORS as exc:
        return f"unreachable ({type(exc).__name__}: {exc})"


def leftover_databases(admin_dsn: str) -> list[str]:
    """Databases of this benchmark already there (runs killed by SIGKILL, or running)."""
    with contextlib.suppress(*DATABASE_ERRORS):
        found = admin(admin_dsn, "SELECT array_agg(datname ORDER BY datname) FROM "
                      "pg_database WHERE datname LIKE 'fh\\_bench\\_%'")
        return list(found or [])
    return []


class PostgresCpu:
    """CPU time of PostgreSQL server processes, from /proc: those of one database (its
    backends: the replicas' connections, autovacuum), or with `database` None the server's
    own (postmaster, WAL writer, checkpointer …, which work for every database). A process
    that ends between two readings keeps its last one."""

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.seen: dict[tuple[int, str], float] = {}  # (pid, start time) -> CPU seconds

    def _ours(self, title: list[str]) -> bool:
        if self.database is not None:
            return self.database in title
        # A client backend names its client (host(port) or [local]); a worker works for one
        # database (autovacuum) or backend (parallel query).
        return "worker" not in title and not any(t.endswith(")") or t == "[local]"
                                                 for t in title)

    def cpu_seconds(self) -> float:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").split()
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if self._ours(title):
                self.seen[int(entry.name), fields[19]] = (
                    int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return sum(self.seen.values())


# --------------------------------------------------------------------------- deployments


@dataclass
class Deployment:
    """Firehouse replicas on one store, the stand-in, and what to watch the CPU of."""

    procs: Processes
    replicas: dict[str, tuple[Proc, str]]  # name -> (process, base URL)
    arrivals_url: str
    watch: dict[str, Measured] = field(default_factory=dict)  # besides the replicas

    @property
    def urls(self) -> list[str]:
        return [url for _proc, url in self.replicas.values()]

    def watched(self) -> dict[str, Measured]:
        return {**{name: proc for name, (proc, _url) in self.replicas.items()}, **self.watch}


@contextlib.contextmanager
def deployment(workdir: Path, maps: Path, config: Config, admin_dsn: str
               ) -> Iterator[Deployment]:
    """`config`'s replicas (started at once: several run the store's migration together)
    on a fresh store, and the stand-in; all stopped, and the database dropped, on exit."""
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        watch: dict[str, Measured] = {}
        if config.postgres:
            database, dsn = stack.enter_context(fresh_database(admin_dsn))
            env["FIREHOUSE_DATABASE_URL"] = dsn
            watch = {"postgres": PostgresCpu(database), "postgres_server": PostgresCpu(None)}
        procs = stack.enter_context(Processes())  # stopped before the database is dropped
        standin, pd_url, arrivals_url = start_standin(procs, workdir)
        watch["standin"] = standin
        names = (["firehouse"] if config.replicas == 1 else
                 [f"firehouse-{n}" for n in range(1, config.replicas + 1)])
        with ThreadPoolExecutor(len(names)) as pool:
            started = list(pool.map(lambda name: start_firehouse(
                procs, workdir / name, maps, pd_url, env=env, name=name), names))
        yield Deployment(procs, dict(zip(names, started, strict=True)), arrivals_url, watch)


def correctness(found: Deployment, grace: float = 1.0) -> dict[str, Any]:
    """What the stand-in accepted per dedup key (after `grace` seconds for late doubles),
    and each replica's share of the work, from its own counters since it started."""
    time.sleep(grace)
    arrivals = Arrivals(found.arrivals_url)
    arrivals.poll()
    per_key = arrivals.triggers_per_key()
    doubles = sorted(key for key, n in per_key.items() if n > 1)
    per_replica = [metrics(url) for url in found.urls]
    return {
        "trigger_keys": len(per_key),
        "double_triggered_keys": len(doubles),
        "double_triggered_examples": {key: per_key[key] for key in doubles[:5]},
        "webhooks_by_replica": [
            int(m.get('firehouse_webhooks_total{outcome="accepted"}', 0)) for m in per_replica],
        "events_sent_by_replica": [
            int(sum(v for k, v in m.items() if k.startswith("firehouse_events_sent_total{")
                    and 'outcome="ok"' in k)) for m in per_replica],
        "incidents_open_by_replica": [int(m.get("firehouse_incidents_open", -1))
                                      for m in per_replica],
    }


def log_problems(found: Deployment) -> dict[str, Any]:
    """Warnings and errors in the replicas' logs (read once they stopped), a few shown."""
    counts = {"error": 0, "warning": 0, "traceback": 0}
    examples: list[str] = []
    for name, (proc, _url) in found.replicas.items():
        with contextlib.suppress(OSError):
            for line in proc.stderr_path.read_text(errors="replace").splitlines():
                kind = ("error" if "level=ERROR" in line or "level=CRITICAL" in line else
                        "warning" if "level=WARNING" in line else
                        "traceback" if line.startswith("Traceback") else "")
                if kind:
                    counts[kind] += 1
                    if len(examples) < 5:
                        examples.append(f"{name}: {line[:300]}")
    return {"log_" + kind: n for kind, n in counts.items()} | {"log_examples": examples}


# --------------------------------------------------------------------------- measurements


def saturation(workdir: Path, maps: Path, config: Config, admin_dsn: str,
               settings: Mapping[str, Any], nonce: str, starts_at: str) -> dict[str, Any]:
    """`saturate` on the configuration, then until the outbox delivered what it decided."""
    with deployment(workdir, maps, config, admin_dsn) as found:
        result = saturate(found.procs, workdir, found.replicas, found.watch,
                          found.arrivals_url, settings["saturation_seconds"],
                          settings["connections"], nonce, starts_at, threads=WRK_THREADS)
        ended = time.monotonic()  # the stand-in's clock too (system-wide monotonic)
        arrivals = Arrivals(found.arrivals_url)
        delivered = arrivals.wait_for(result["events_created"], settings["drain_wait"],
                                      idle=settings["drain_wait"])
        last = max((at for at, _action, _incident in arrivals.delivered()), default=ended)
        result["delivered_after_run"] = delivered
        # The last event's arrival after wrk's end (0: all were delivered during the run).
        result["drained_after_s"] = (round(max(0.0, last - ended), 2)
                                     if delivered >= result["events_created"] else None)
        result.update(correctness(found))
    result.update(log_problems(found))
    return result


def time_to_page(workdir: Path, maps: Path, config: Config, admin_dsn: str,
                 settings: Mapping[str, Any], pool: Path, nonce: str, starts_at: str
                 ) -> dict[str, Any]:
    """`pace` on the configuration, at `settings["rate"]` webhooks a second."""
    with deployment(workdir, maps, config, admin_dsn) as found:
        result = pace(found.procs, workdir, found.urls, found.watched(), found.arrivals_url,
                      pool, settings["rate"], settings["paced_seconds"],
                      settings["page_wait"], nonce, starts_at)
        result.update(correctness(found))
    result.update(log_problems(found))
    return result


def measure(args: argparse.Namespace, work: Path, settings: Mapping[str, Any]
            ) -> list[dict[str, dict[str, Any]]]:
    """Every measurement of every configuration, `repeats` times, interleaved (noise on a
    shared machine spreads over all of them); one dict per repetition: configuration ->
    measurement -> result (or {"error": …})."""
    maps = generated_map(work / "maps", SERVICES)
    pool = unrelated_pool(work / "maps", maps)
    starts_at = rfc3339(time.time() - 60)
    configs = [c for c in CONFIGS if not args.only or c.name in args.only.split(",")]
    repeats = args.repeats or settings["repeats"]
    repetitions: list[dict[str, dict[str, Any]]] = []
    for rep in range(repeats):
        nonce = f"{(os.getpid() * 31 + rep) % 65536:04x}"
        found: dict[str, dict[str, Any]] = {c.name: {} for c in configs}
        steps: list[tuple[str, Config, Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
            ("saturation", c, saturation, ()) for c in configs]
        steps += [("page", c, time_to_page, (pool,)) for c in configs]
        for measurement, config, fn, extra in steps:
            found[config.name][measurement] = attempt(
                work / f"{config.name}-{measurement}-{rep + 1}",
                f"[{rep + 1}/{repeats}] {config.name} {measurement}", args.keep, fn, maps,
                config, args.postgres, settings, *extra, nonce, starts_at)
        repetitions.append(found)
    return repetitions


# --------------------------------------------------------------------------- figures


def cpu_sum(cpu: Mapping[str, float], prefix: str) -> float:
    """CPU % of the processes whose names start with `prefix` (the replicas), together."""
    return round(sum(v for k, v in cpu.items() if k.startswith(prefix)), 1)


def figures(found: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures of one configuration in one repetition."""
    out: dict[str, float | None] = {}
    sat, page = found.get("saturation", {}), found.get("page", {})
    if sat and "error" not in sat:
        cpu = sat["cpu_percent"]
        out.update({
            "sat_webhooks_per_s": sat["webhooks_per_s"],
            "sat_errors": sat["errors"] + sat["refused_by_firehouse"],
            "sat_p50_ms": sat["latency_p50_ms"], "sat_p99_ms": sat["latency_p99_ms"],
            "sat_max_ms": sat["latency_max_ms"],
            "sat_incidents_opened": sat["incidents_opened"],
            "sat_incidents_merged": sat["incidents_merged"],
            "sat_events_created": sat["events_created"],
            "sat_events_delivered": sat["events_delivered"],
            "sat_outbox_pending_at_end": sat["outbox_pending_at_end"],
            # None: not within the wait (shown as missing).
            "sat_all_delivered_ms": (None if sat["drained_after_s"] is None
                                     else sat["drained_after_s"] * 1e3),
            "sat_cpu_firehouse_pct": cpu_sum(cpu, "firehouse"),
            "sat_cpu_postgres_pct": cpu.get("postgres", float("nan")),
            "sat_cpu_postgres_server_pct": cpu.get("postgres_server", float("nan")),
            "sat_cpu_standin_pct": cpu.get("standin"), "sat_cpu_wrk_pct": cpu.get("wrk"),
            "sat_cpu_others_pct": cpu.get("others"),
        })
    if page and "error" not in page:
        cpu = page["cpu_percent"]
        out.update({
            "page_p50_ms": page["page_p50_ms"], "page_p99_ms": page["page_p99_ms"],
            "page_max_ms": page["page_max_ms"],
            "pages_expected": page["pages_expected"], "pages_received": page["pages_received"],
            "pace_errors": page["webhook_errors"],
            "pace_not_one": page["webhooks_not_opening_one_incident"],
            "response_p50_ms": page["response_p50_ms"],
            "response_p99_ms": page["response_p99_ms"],
            "response_max_ms": page["response_max_ms"],
            "pace_cpu_firehouse_pct": cpu_sum(cpu, "firehouse"),
            "pace_cpu_postgres_pct": cpu.get("postgres", float("nan")),
            "pace_cpu_others_pct": cpu.get("others"),
        })
    done = [m for m in (sat, page) if m and "error" not in m]
    if done:
        out["trigger_keys"] = sum(m["trigger_keys"] for m in done)
        out["double_triggered_keys"] = sum(m["double_triggered_keys"] for m in done)
        out["log_errors"] = sum(m["log_error"] + m["log_traceback"] for m in done)
        out["log_warnings"] = sum(m["log_warning"] for m in done)
    return out


ROWS: list[tuple[str, tuple[str, ...], str]] = [
    # (label, figures shown as "a | b", unit)
    ("saturation (wrk, 3 streams, 18 connections)", (), ""),
    ("  webhooks/s (10 alerts each)", ("sat_webhooks_per_s",), "/s"),
    ("  errors: connection, non-2xx, refused", ("sat_errors",), ""),
    ("  response p50 | p99 (ms)", ("sat_p50_ms", "sat_p99_ms"), "ms"),
    ("  response max (ms)", ("sat_max_ms",), "ms"),
    ("  incidents opened | merged", ("sat_incidents_opened", "sat_incidents_merged"), ""),
    ("  events decided | delivered during the run",
     ("sat_events_created", "sat_events_delivered"), ""),
    ("  outbox pending at the end", ("sat_outbox_pending_at_end",), ""),
    ("  all delivered, after the run (ms)", ("sat_all_delivered_ms",), "ms"),
    ("  CPU % Firehouse (all replicas)", ("sat_cpu_firehouse_pct",), "%"),
    ("  CPU % PostgreSQL: database | server", ("sat_cpu_postgres_pct",
                                                 "sat_cpu_postgres_server_pct"), "%"),
    ("  CPU % stand-in | wrk", ("sat_cpu_standin_pct", "sat_cpu_wrk_pct"), "%"),
    ("  CPU % other people's processes", ("sat_cpu_others_pct",), "%"),
    ("time to page at {rate}/s (webhook due -> trigger)", (), ""),
    ("  p50 (ms)", ("page_p50_ms",), "ms"),
    ("  p99 (ms)", ("page_p99_ms",), "ms"),
    ("  max (ms)", ("page_max_ms",), "ms"),
    ("  first pages expected | received", ("pages_expected", "pages_received"), ""),
    ("  webhooks failed | not opening 1 incident", ("pace_errors", "pace_not_one"), ""),
    ("  webhook response p50 | p99 (ms)", ("response_p50_ms", "response_p99_ms"), "ms"),
    ("  webhook response max (ms)", ("response_max_ms",), "ms"),
    ("  CPU % Firehouse | PostgreSQL database", ("pace_cpu_firehouse_pct",
                                                 "pace_cpu_postgres_pct"), "%"),
    ("  CPU % other people's processes", ("pace_cpu_others_pct",), "%"),
    ("correctness (both measurements)", (), ""),
    ("  dedup keys triggered | more than once", ("trigger_keys", "double_triggered_keys"), ""),
    ("  Firehouse log errors | warnings", ("log_errors", "log_warnings"), ""),
]


def report(result: dict[str, Any]) -> str:
    stats = result["summary"]
    shown = [c for c in CONFIGS if c.name in stats]
    table = [(template.format(rate=result["plan"]["rate"]),
              ["" if not names else " | ".join(fmt(stats[c.name].get(n), unit, n)
                                               for n in names) for c in shown])
             for template, names, unit in ROWS]
    width = 2 + max(len(text) for _label, cells in table for text in
                    [*cells, *(c.title for c in shown)])
    lines = [f"{'':46}" + "".join(f"{c.title:>{width}}" for c in shown)]
    lines += [f"{label:46}" + "".join(f"{cell:>{width}}" for cell in cells)
              for label, cells in table]
    cores = result["machine"]["cores"]
    lines.append(f"(medians of the repetitions, [min-max] when they differ; CPU in % of one "
                 f"core, {cores} cores = {cores * 100}%)")
    return "\n".join(lines)


def alarms(repetitions: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Double pages and failed webhooks, per repetition, configuration and measurement."""
    found = []
    for n, rep in enumerate(repetitions, 1):
        for config, measurements in rep.items():
            for name, m in measurements.items():
                if m.get("double_triggered_keys"):
                    found.append(f"DOUBLE PAGE: {config} {name} #{n}: "
                                 f"{m['double_triggered_keys']} dedup keys triggered more "
                                 f"than once, e.g. {m['double_triggered_examples']}")
                if m.get("webhook_errors") or m.get("errors") or m.get("refused_by_firehouse"):
                    found.append(f"webhooks failed: {config} {name} #{n}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = arguments("python -m bench.ha", __doc__, "ha")
    parser.add_argument("--only", help="comma-separated configurations: "
                        + ", ".join(c.name for c in CONFIGS))
    parser.add_argument("--postgres", default=os.environ.get(ADMIN_ENV) or ADMIN_DSN,
                        help="DSN to create and drop the benchmark's databases with "
                        f"(default: ${ADMIN_ENV} or {ADMIN_DSN})")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C: processes stopped, databases dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine() | {"postgresql": postgres_version(args.postgres)}
    print(f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
          f"PostgreSQL {info['postgresql']}, Linux {info['kernel']}, load average "
          f"{info['load_average'][0]:.2f}")
    leftover = leftover_databases(args.postgres)
    if leftover:
        print(f"note: {len(leftover)} fh_bench_* databases on the server already (another "
              f"run, or one killed by SIGKILL): {', '.join(leftover[:5])}")
    settings = plan(args.quick)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    repetitions = measure(args, work, settings)
    result = {"machine": info, "quick": args.quick, "plan": settings,
              "seconds": round(time.monotonic() - started),
              "summary": {name: summary([rep[name] for rep in repetitions], figures)
                          for name in repetitions[0]},
              "repetitions": repetitions}
    status = publish(result, report(result), args.out,
                     [f"{config} {name} #{n}" for n, rep in enumerate(repetitions, 1)
                      for config, measurements in rep.items()
                      for name, m in measurements.items() if "error" in m])
    for alarm in alarms(repetitions):
        print(f"!!! {alarm}")
        print(f"!!! {alarm}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
