"""The PagerDuty stand-in of the tests (tests/pagerduty_standin.py), in a process of its
own, for the webhook benchmark.

    python -m bench.standin            # prints "READY {"url": ..., "control": ...}"

The stand-in is used unchanged (every event validated against PagerDuty's spec, alert
state emulated); two things are added for long runs:

* every accepted or refused event is noted compactly (arrival time on the monotonic
  clock, which is system-wide on Linux, status, action, dedup key, and the `[bench …]`
  token of the trigger's summary), served by a second server: `GET /arrivals?since=N`;
* the stand-in's list of full requests is emptied every 1,000 requests, so that its
  memory does not grow with the run (its per-key alert state is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from aiohttp import web

from bench.webhooks import TOKEN
from tests.pagerduty_standin import PagerDutyStandIn, Received


class BenchStandIn(PagerDutyStandIn):
    """The tests' stand-in, noting arrivals compactly and keeping its memory flat."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, int, str, str, str]] = []

    async def _record(self, received: Received) -> None:
        body = received.body or {}
        payload = body.get("payload")
        summary = payload.get("summary", "") if isinstance(payload, dict) else ""
        found = TOKEN.search(summary) if isinstance(summary, str) else None
        self.arrivals.append((received.at, received.status, str(body.get("event_action", "")),
                              str(body.get("dedup_key", "")), found[1] if found else ""))
        await super()._record(received)
        if len(self._received) >= 1000:
            del self._received[:]


async def serve(host: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with BenchStandIn(host, 0, echo=False) as standin:

        async def arrivals(request: web.Request) -> web.Response:
            since = int(request.query.get("since", "0"))
            return web.json_response({"next": len(standin.arrivals),
                                      "arrivals": standin.arrivals[since:]})

        app = web.Application()
        app.router.add_get("/arrivals", arrivals)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        control = f"http://{host}:{runner.addresses[0][1]}"
        print("READY " + json.dumps({"url": standin.url, "control": control}), flush=True)
        try:
            await stopping.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
