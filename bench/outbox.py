"""Outbox benchmark: the delivery worker alone, from a SQLite outbox on disk to the PagerDuty
stand-in in a process of its own, without webhooks or the engine.

    python -m bench.outbox            # 3 repetitions (about 3 minutes)
    python -m bench.outbox --quick    # one short repetition

Each measurement uses a fresh state file and a fresh stand-in:

* backlog: N events already committed (decisions of 8: 6 triggers on 10 routing keys and
  the resolves of 2 triggers of an earlier decision), then the worker starts; events
  delivered per second until the outbox is empty, and the CPU this process spent per event
  meanwhile (the worker and its SQLite thread; the stand-in's is not counted);
* paced: decisions of 8 such events committed at a fixed rate while the worker runs (as
  webhooks would: 800 events/s is 100 webhooks/s of the webhook benchmark); the time from
  a decision being durable to the stand-in receiving each of its events, p50/p99/max.

Rate shaping is off (`rate_limit_per_minute` 0): the stand-in does not limit, and this
measures how fast the worker can go. Nothing is asserted; figures are printed and written
as JSON (bench/results/outbox.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Processes, http, start_standin
from bench.load import percentile
from daemon.decide import RESOLVE, TRIGGER, Decision, OutboundEvent, trigger_priority
from daemon.decide.model import RESOLVE_PRIORITY
from daemon.metrics import Metrics
from daemon.outbox import Deliverer
from daemon.pagerduty import PagerDutyClient
from daemon.store.sqlite import SqliteStore

ROUTING_KEYS = tuple(hashlib.sha256(f"outbox-bench/{i}".encode()).hexdigest()[:32]
                     for i in range(10))
SEVERITIES = ("critical", "error", "warning", "warning")
NEW, RESOLVES, LAG = 6, 2, 4  # per decision; resolves are of triggers LAG decisions back
NOW_ISO = "2026-01-01T00:00:00+00:00"


def decisions(count: int, tag: str) -> list[Decision]:
    """`count` decisions of NEW triggers and RESOLVES resolves each (fewer resolves at
    first), every trigger with a dedup key of its own."""
    now = datetime.now(UTC)
    made: list[Decision] = []
    triggers: list[list[OutboundEvent]] = []
    for d in range(count):
        new = []
        for i in range(NEW):
            severity = SEVERITIES[(d + i) % len(SEVERITIES)]
            key = f"bench/{tag}/{d}/{i}"
            labels = {f"label_{n}": f"value-{d}-{i}-{n}" for n in range(11)}
            body = {"event_action": TRIGGER, "dedup_key": key, "client": "Firehouse",
                    "payload": {"summary": f"{severity} page {key}", "source": f"svc-{i}",
                                "severity": severity, "timestamp": NOW_ISO,
                                "custom_details": {"labels": labels, "reason": "opened"}}}
            new.append(OutboundEvent(f"incident-{d}", f"target-{i}",
                                     ROUTING_KEYS[(d * NEW + i) % len(ROUTING_KEYS)], key,
                                     TRIGGER, body, trigger_priority(severity)))
        resolves = []
        if d >= LAG:
            for event in triggers[d - LAG][:RESOLVES]:
                body = {"event_action": RESOLVE, "dedup_key": event.dedup_key}
                resolves.append(OutboundEvent(event.incident_id, event.target,
                                              event.routing_key, event.dedup_key, RESOLVE,
                                              body, RESOLVE_PRIORITY))
        triggers.append(new)
        made.append(Decision(events=(*new, *resolves), now=now))
    return made


def pending(counts: dict[str, int]) -> int:
    return counts.get("pending", 0)


def arrivals(url: str) -> list[list[Any]]:
    """Everything the stand-in received: [monotonic time, status, action, dedup key, token]."""
    status, body = http(url + "?since=0", timeout=60)
    if status != 200:
        raise RuntimeError(f"stand-in arrivals: HTTP {status}")
    found: list[list[Any]] = json.loads(body)["arrivals"]
    return found


async def backlog(work: Path, count: int) -> dict[str, Any]:
    """Events delivered per second from a backlog of about `count` events."""
    with Processes() as procs:
        _, pd_url, arrivals_url = start_standin(procs, work)
        store = SqliteStore(work / "state" / "firehouse.db")
        await store.open()
        try:
            made = decisions(count // (NEW + RESOLVES), "backlog")
            await asyncio.gather(*(store.commit(d) for d in made))
            total = pending(await store.outbox_counts())
            async with aiohttp.ClientSession() as session:
                worker = Deliverer(store, PagerDutyClient(pd_url, session, 10.0), Metrics())
                started = time.monotonic()
                cpu = time.process_time()
                task = asyncio.create_task(worker.run())
                while pending(await store.outbox_counts()):  # noqa: ASYNC110 - a scraper's view
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                cpu = time.process_time() - cpu
                worker.stop()
                await task
        finally:
            await store.close()
        received = arrivals(arrivals_url)
    return {"events": total, "seconds": round(elapsed, 2),
            "events_per_s": round(total / elapsed, 1),
            "cpu_ms_per_event": round(cpu * 1000 / total, 3),
            "refused": sum(1 for a in received if a[1] != 202)}


async def paced(work: Path, rate: float, seconds: float, wait: float) -> dict[str, Any]:
    """Time from commit to arrival at `rate` events/s for `seconds` (a missing event counts
    as infinitely late)."""
    per = NEW + RESOLVES
    made = decisions(int(rate * seconds / per), "paced")
    committed: dict[tuple[str, str], float] = {}
    with Processes() as procs:
        _, pd_url, arrivals_url = start_standin(procs, work)
        store = SqliteStore(work / "state" / "firehouse.db")
        await store.open()
        try:
            async with aiohttp.ClientSession() as session:
                worker = Deliverer(store, PagerDutyClient(pd_url, session, 10.0), Metrics())
                task = asyncio.create_task(worker.run())

                async def commit(decision: Decision) -> None:
                    await store.commit(decision)
                    at = time.monotonic()
                    for event in decision.events:
                        committed[event.action, event.dedup_key] = at
                    worker.wake()

                started = time.monotonic()
                commits = []
                for n, decision in enumerate(made):
                    delay = started + n * per / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    commits.append(asyncio.create_task(commit(decision)))
                await asyncio.gather(*commits)
                sent_for = time.monotonic() - started
                deadline = time.monotonic() + wait
                while (pending(await store.outbox_counts())  # noqa: ASYNC110 - a scraper's view
                       and time.monotonic() < deadline):
                    await asyncio.sleep(0.1)
                worker.stop()
                await task
        finally:
            await store.close()
        received = arrivals(arrivals_url)
    first: dict[tuple[str, str], float] = {}
    for at, status, action, key, _token in received:
        if status == 202:
            first.setdefault((action, key), at)
    latencies = [first[k] - at if k in first else float("inf") for k, at in committed.items()]
    return {"events": len(latencies), "offered_per_s": round(len(latencies) / sent_for, 1),
            "missing": sum(1 for k in committed if k not in first),
            "p50_ms": ms(percentile(latencies, 0.5)), "p99_ms": ms(percentile(latencies, 0.99)),
            "max_ms": ms(max(latencies))}


def ms(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short repetition")
    parser.add_argument("--repeats", type=int, help="repetitions (default: 3, --quick: 1)")
    parser.add_argument("--out", default="bench/results/outbox.json")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    count, seconds = (2_000, 5.0) if args.quick else (10_000, 15.0)
    rates = (800.0,) if args.quick else (400.0, 800.0)
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        found: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
            work = Path(tmp, "backlog")
            work.mkdir()
            found["backlog"] = asyncio.run(backlog(work, count))
            print(f"[{rep + 1}/{repeats}] backlog: {found['backlog']}", flush=True)
            for rate in rates:
                work = Path(tmp, f"paced-{rate:g}")
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                found[f"paced_{rate:g}"] = asyncio.run(paced(work, rate, seconds, 120.0))
                print(f"[{rep + 1}/{repeats}] paced {rate:g}/s: {found[f'paced_{rate:g}']}",
                      flush=True)
        runs.append(found)
    summary: dict[str, dict[str, float | None]] = {}
    for name, first in runs[0].items():
        for figure in first:
            values = [r[name][figure] for r in runs]
            finite = [v for v in values if v is not None]
            # A run with events never delivered has no p99: neither has the median.
            summary.setdefault(name, {})[figure] = (
                statistics.median(finite) if len(finite) == len(values) else None)
    print("medians:", json.dumps(summary, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "summary": summary, "runs": runs},
                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
