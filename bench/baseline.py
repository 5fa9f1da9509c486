"""The baseline of the webhook benchmark: a bare aiohttp server that accepts the same POST,
parses the JSON and answers 200, with Firehouse's server settings (no access log, the same
body limit). Whatever Firehouse does beyond that is what its figures are divided by.

    python -m bench.baseline      # prints "READY {"url": ...}"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

MAX_BODY = 16 * 1024 * 1024  # Firehouse's default max_body_bytes


async def webhook(request: web.Request) -> web.Response:
    data = json.loads(await request.read())
    return web.json_response({"status": "success", "alerts": len(data["alerts"])})


async def serve(host: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/webhook/alertmanager", webhook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    print("READY " + json.dumps({"url": f"http://{host}:{runner.addresses[0][1]}"}), flush=True)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
