"""Open-loop load at a fixed rate, in its own process: the webhook benchmark's client for
time to page (wrk only knows saturation).

    python -m bench.pace URL --rate 100 --seconds 20 --out FILE

Bodies are built before the clock starts. Webhook n is due at t0 + n / rate and is sent
then whatever happened to the earlier ones (open loop: a slow server does not slow the
client down, so queueing shows in the figures instead of hiding). Its latency counts from
when it was due. First the first round of every group is sent (see bench/webhooks.py:
it opens 8 incidents per group instead of 2), then, once Firehouse's outbox is empty
again (its /metrics), the measured part. The output file holds, per measured webhook,
when it was due and answered (monotonic clock, comparable with the stand-in's arrival times) and the
fingerprints of the alerts it opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.webhooks import webhook


async def send(session: aiohttp.ClientSession, url: str, bodies: list[bytes], rate: float
               ) -> list[tuple[float, float, int]]:
    """Send `bodies` at `rate` per second; (due, answered, status) each, status 0 on error."""
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(bodies)
    headers = {"Content-Type": "application/json"}

    async def one(n: int, due: float) -> None:
        status = 0
        try:
            async with session.post(url, data=bodies[n], headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            pass
        results[n] = (due, time.monotonic(), status)

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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    common = {"groups": args.groups, "nonce": args.nonce, "services": args.services,
              "starts_at": args.starts_at}
    warmup = [json.dumps(webhook(args.stream, k, **common)[0]).encode()
              for k in range(args.groups)]
    measured: list[bytes] = []
    opened: list[list[str]] = []
    for k in range(args.groups, args.groups + int(args.rate * args.seconds)):
        body, fps = webhook(args.stream, k, **common)
        measured.append(json.dumps(body).encode())
        opened.append(fps)
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await send(session, args.url, warmup, args.rate)
        await drained(session, args.url.split("/webhook/")[0] + "/metrics", args.drain_seconds)
        print("MEASURING", flush=True)
        results = await send(session, args.url, measured, args.rate)
        print("SENT", flush=True)
    return {"webhooks": [[due, answered, status, fps]
                         for (due, answered, status), fps in zip(results, opened, strict=True)],
            "warmup_webhooks": len(warmup)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pace")
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="webhooks per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--stream", type=int, default=50)
    parser.add_argument("--nonce", default="0000")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--starts-at", default="2026-01-01T00:00:00Z")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-seconds", type=float, default=60.0,
                        help="longest wait for the warm-up's pages to be delivered")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(result, out)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
