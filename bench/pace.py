"""Open-loop load at a fixed rate, in its own process: the webhook benchmark's client for
time to page (wrk only knows saturation).

    python -m bench.pace URL [URL ...] --rate 100 --seconds 20 --pool FILE --out FILE

Several URLs (replicas sharing one PostgreSQL database): webhook n goes to URL n mod count.

Every webhook is the first notification of a new fire (bench/webhooks.py `fire`: 10 firing
alerts on one service no open incident involves), so each opens one incident, which pages.
Webhook k is on service k of the pool (`--pool`, a JSON list of mapped services no two of
which are connected on the map), so the pool bounds rate x seconds (about 4,000 on the
10,000-service map). Unmapped services are not used here: each unmapped alert is an
incident of its own, so a 10-alert webhook would open 10.

Bodies are built before the clock starts. Webhook n is due at t0 + n / rate and is sent
then whatever happened to the earlier ones (open loop: a slow server does not slow the
client down, so queueing shows in the figures instead of hiding). Its latency counts from
when it was due. First a warm-up (one second's worth, at most 200, from the same pool),
then, once
Firehouse's outbox is empty again (its /metrics), the measured part. The output file holds,
per measured webhook, when it was due and answered (monotonic clock, comparable with the
stand-in's arrival times), its status, and the incidents its
200 answer says it opened (`incidents_opened`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.webhooks import fire


async def send(session: aiohttp.ClientSession, urls: Sequence[str], bodies: list[bytes],
               rate: float) -> list[tuple[float, float, int, list[str]]]:
    """Send `bodies` at `rate` per second, to `urls` in turn; (due, answered, status,
    incidents opened) each, status 0 on error."""
    results: list[tuple[float, float, int, list[str]]] = [(0.0, 0.0, 0, [])] * len(bodies)
    headers = {"Content-Type": "application/json"}

    async def one(n: int, due: float) -> None:
        status, opened = 0, []
        try:
            async with session.post(urls[n % len(urls)], data=bodies[n],
                                    headers=headers) as response:
                answer = await response.read()
                status = response.status
            if status == 200:
                opened = list(json.loads(answer).get("incidents_opened", []))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        results[n] = (due, time.monotonic(), status, opened)

    tasks = []
    start = time.monotonic() + 0.05
    for n in range(len(bodies)):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, due)))
    await asyncio.gather(*tasks)
    return results


async def drained(session: aiohttp.ClientSession, metrics_url: str, limit: float) -> None:
    """Wait until Firehouse's outbox has nothing pending (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async with session.get(metrics_url) as response:
            text = await response.text()
        if 'firehouse_outbox_events{state="pending"} 0.0' in text:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)


def bodies(args: argparse.Namespace, pool: list[str], first: int, count: int) -> list[bytes]:
    """Webhooks first … first + count - 1, webhook k on the pool's service k."""
    return [json.dumps(fire(args.stream, k, pool[k], nonce=args.nonce,
                            starts_at=args.starts_at)).encode()
            for k in range(first, first + count)]


async def run(args: argparse.Namespace, pool: list[str]) -> dict[str, Any]:
    warm = max(10, min(200, int(args.rate)))
    count = int(args.rate * args.seconds)
    if warm + count > len(pool):
        raise SystemExit(f"the pool has {len(pool)} unrelated services; {warm + count} needed")
    warmup = bodies(args, pool, 0, warm)
    measured = bodies(args, pool, warm, count)
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await send(session, args.url, warmup, args.rate)
        # The outbox is one store's, shared by the replicas: any of them tells.
        await drained(session, args.url[0].split("/webhook/")[0] + "/metrics",
                      args.drain_seconds)
        print("MEASURING", flush=True)
        results = await send(session, args.url, measured, args.rate)
        print("SENT", flush=True)
    return {"webhooks": [list(result) for result in results],
            "warmup_webhooks": len(warmup)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pace")
    parser.add_argument("url", nargs="+", help="webhook URL(s), taken in turn")
    parser.add_argument("--rate", type=float, required=True, help="webhooks per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pool", required=True,
                        help="JSON list of mapped services no two of which are connected")
    parser.add_argument("--stream", type=int, default=0xA0)
    parser.add_argument("--nonce", default="0000")
    parser.add_argument("--starts-at", default="2026-01-01T00:00:00Z")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="longest wait for the warm-up's pages to be delivered")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args, json.loads(Path(args.pool).read_text())))
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(result, out)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
