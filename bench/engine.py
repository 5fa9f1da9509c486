"""In-process webhook path without HTTP or delivery: parse, decide, apply, commit to SQLite on
disk, for the stream of `python -m bench` and for bursts; to profile where a webhook's time
goes (`--profile` writes a cProfile of the stream part).

    python -m bench.engine                    # 3,000 webhooks of 10 alerts, then bursts
    python -m bench.engine --webhooks 500 --bursts 1000 --profile /tmp/engine.prof
    python -m bench.engine --fires 1000 --profile /tmp/fires.prof   # new fires (time to page)

Webhooks are handled `--concurrency` at a time, as the server does with several
connections (their commits share transactions). Nothing is sent to PagerDuty: the outbox
only fills.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.graphgen import TARGETS
from bench.harness import (
    INCIDENT_LEAD,
    generated_map,
    prepare_firehouse,
    routing_key,
    routing_key_env,
    unrelated_pool,
)
from bench.webhooks import fire, outage, rfc3339, webhook
from daemon.alerts import parse_body
from daemon.config import load_config
from daemon.dispatch import Dispatcher
from daemon.metrics import Metrics
from daemon.store.sqlite import SqliteStore

SERVICES = 10_000
GROUPS = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


async def run_stream(dispatcher: Dispatcher, bodies: list[bytes], concurrency: int
                     ) -> list[float]:
    """Handle `bodies` with `concurrency` workers; each one's latency in seconds."""
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            await dispatcher.handle(parse_body(body))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measured_stream(dispatcher: Dispatcher, bodies: list[bytes],
                          args: argparse.Namespace) -> dict[str, Any]:
    """Handle `bodies` `args.concurrency` at a time, under cProfile with `--profile`; the
    rate and latencies."""
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    latencies = await run_stream(dispatcher, bodies, args.concurrency)
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    latencies.sort()
    return {
        "webhooks": len(bodies), "webhooks_per_s": round(len(bodies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1e3, 2),
        "open_incidents": len(dispatcher.state.open),
    }


async def one_run(workdir: Path, maps: Path, args: argparse.Namespace) -> dict[str, object]:
    settings = prepare_firehouse(workdir, maps, "http://127.0.0.1:9", 0)
    env = {routing_key_env(t): routing_key(t) for t in {*TARGETS, INCIDENT_LEAD}}
    config = load_config(settings, env)
    store = SqliteStore(config.settings.state)
    await store.open()
    dispatcher = Dispatcher(store, config, Metrics(), utcnow, lambda _: None)
    await dispatcher.load()
    nonce = f"{os.getpid() % 65536:04x}"
    starts_at = rfc3339(time.time() - 60)
    result: dict[str, object] = {}
    try:
        if args.fires:
            # The time-to-page workload (bench/pace.py): each webhook a new fire on a service
            # of the unrelated pool, opening one incident that pages.
            pool = json.loads(unrelated_pool(maps.parent, maps).read_text())
            bodies = [json.dumps(fire(0xA0, k, pool[k], nonce=nonce, starts_at=starts_at)
                                 ).encode() for k in range(min(args.fires, len(pool)))]
            result["fires"] = await measured_stream(dispatcher, bodies, args)
            return result
        bodies = [json.dumps(webhook(0, k, groups=GROUPS, nonce=nonce, services=SERVICES,
                                     starts_at=starts_at)[0]).encode()
                  for k in range(args.webhooks)]
        warm, measured = bodies[:args.warmup], bodies[args.warmup:]
        await run_stream(dispatcher, warm, args.concurrency)
        stream = await measured_stream(dispatcher, measured, args)
        stream["alerts_in_largest"] = max(
            (len(i.alerts) for i in dispatcher.state.open.values()), default=0)
        result["stream"] = stream
        for size in args.bursts:
            body = outage(size * 7, size, nonce=nonce, services=SERVICES, starts_at=starts_at)
            started = time.perf_counter()
            decision = await dispatcher.handle(parse_body(body))
            result[f"burst_{size}_ms"] = round((time.perf_counter() - started) * 1e3, 1)
            result[f"burst_{size}_events"] = len(decision.events)
    finally:
        await store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    parser.add_argument("--webhooks", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500,
                        help="webhooks handled before measuring (the first rounds open more)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bursts", default="1000,10000",
                        help="sizes of one-webhook bursts, after the stream ('' for none)")
    parser.add_argument("--fires", type=int, default=0,
                        help="instead: this many webhooks that each open a new incident")
    parser.add_argument("--profile", help="write a cProfile of the stream part here")
    parser.add_argument("--work", default="bench/results/engine-work")
    args = parser.parse_args(argv)
    args.bursts = [int(s) for s in args.bursts.split(",") if s]
    if not args.fires and args.webhooks <= args.warmup:
        parser.error(f"--webhooks {args.webhooks} leaves none to measure after --warmup "
                     f"{args.warmup}: give more webhooks, or a smaller --warmup")
    work = Path(args.work).resolve()
    (work / "maps").mkdir(parents=True, exist_ok=True)
    maps = generated_map(work / "maps", SERVICES)
    workdir = Path(tempfile.mkdtemp(dir=work))
    try:
        result = asyncio.run(one_run(workdir, maps, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
