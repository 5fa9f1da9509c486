"""Webhook benchmark: Firehouse end to end (HTTP, decision, SQLite, outbox, PagerDuty
stand-in), next to a bare aiohttp baseline measured in the same run.

    python -m bench            # everything, 3 repetitions (about 20 minutes)
    python -m bench --quick    # one short repetition (CI: prints figures, asserts nothing)

Every measurement starts its own processes (Firehouse with a fresh state file on disk and
the 10,000-service generated map, the PagerDuty stand-in, the load generator) and stops
them by PID. Figures are printed with the goals next to them and written as JSON
(bench/results/webhooks.json). Goals are compared, never enforced: the exit status is 0
whatever the figures are (1 only if a measurement could not be made at all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness import (
    RATE_LIMIT_PER_MINUTE,
    Measured,
    Proc,
    Processes,
    cpu_of,
    cpu_percent,
    generated_map,
    http,
    metrics,
    python,
    start_baseline,
    start_firehouse,
    start_standin,
    unrelated_pool,
)
from bench.webhooks import (
    PER_WEBHOOK,
    incident_of_key,
    outage,
    rfc3339,
    spread,
    unmapped_service,
)

SERVICES = 10_000
LUA = Path(__file__).with_name("webhooks.lua")

# name -> (description, comparison, threshold); compared on the median of the repetitions.
GOALS: dict[str, tuple[str, str, float]] = {
    "sustained_webhooks_per_s": ("≥ 1,000 webhooks/s", ">=", 1000),
    "sustained_ratio_to_baseline": ("≥ 30% of baseline", ">=", 0.30),
    "page_100_p99_ms": ("p99 ≤ 50 ms", "<=", 50),
    "page_500_p99_ms": ("p99 ≤ 200 ms", "<=", 200),
    "burst_1000_ack_ms": ("≤ 200 ms", "<=", 200),
    "burst_10000_ack_ms": ("≤ 2,000 ms", "<=", 2000),
    "rss_10k_open_mib": ("≤ 200 MB (190.7 MiB)", "<=", 200 * 1e6 / 2**20),
}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..1) of values, nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float | None:
    """Milliseconds, rounded; None for an infinite (never observed) time."""
    return None if seconds == float("inf") else round(seconds * 1e3, 1)


class Arrivals:
    """What the stand-in received, fetched incrementally from its arrivals route."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.items: list[list[Any]] = []

    def poll(self) -> list[list[Any]]:
        status, body = http(f"{self.url}?since={len(self.items)}")
        if status == 200:
            self.items += json.loads(body)["arrivals"]
        return self.items

    def delivered(self) -> list[tuple[float, str, str]]:
        """(arrival time, action, incident) of every accepted event."""
        return [(at, action, incident_of_key(key)) for at, status, action, key, _token
                in self.items if status == 202]

    def first_triggers(self) -> dict[str, float]:
        """Arrival time of the first accepted trigger of each incident."""
        found: dict[str, float] = {}
        for at, action, incident in self.delivered():
            if action == "trigger" and incident not in found:
                found[incident] = at
        return found

    def triggers_per_key(self) -> Counter[str]:
        """Accepted triggers per dedup key: PagerDuty keeps one alert per key, so a second
        trigger of a key is the same page sent again."""
        return Counter(key for _at, status, action, key, _token in self.items
                       if status == 202 and action == "trigger")

    def wait_for(self, events: int, limit: float, idle: float = 30.0) -> int:
        """Poll until the stand-in accepted `events` events, nothing came for `idle`
        seconds, or `limit` seconds passed; the number accepted."""
        deadline = time.monotonic() + limit
        last_count, last_change = -1, time.monotonic()
        while True:
            self.poll()
            count = sum(1 for item in self.items if item[1] == 202)
            if count >= events:
                return count
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            if now > deadline or now - last_change > idle:
                return count
            time.sleep(0.1)


def refused(arrivals: Arrivals) -> int:
    """Events the stand-in refused (invalid by PagerDuty's spec)."""
    return sum(1 for item in arrivals.items if item[1] != 202)


def run_wrk(procs: Processes, workdir: Path, url: str, seconds: float, connections: int,
            nonce: str, starts_at: str, watch: Mapping[str, Measured], stream: int = 0,
            threads: int = 1, spread: Sequence[str] = ()) -> dict[str, Any]:
    """wrk posting the webhook stream for `seconds`; its totals and every process' CPU.
    `threads`: streams `stream`, `stream` + 1, … (one per wrk thread, `connections` shared
    among them); `spread`: base URLs of servers (replicas) the threads connect to in turn
    instead of `url`'s, whose path they post to."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout",
               "30s", "-s", str(LUA), url, "--", "100", nonce, str(SERVICES), starts_at,
               str(stream)]
    env = {"WRK_SPREAD": ",".join(urlsplit(u).netloc for u in spread)} if spread else None
    started = time.monotonic()
    wrk = procs.add(Proc(f"wrk-{stream}", command, workdir, env))
    watched: dict[str, Measured] = {**watch, "wrk": wrk}
    before, sampled = cpu_of(watched), time.monotonic()
    # /proc/<pid>/stat of an exited, reaped process is gone: sample wrk's CPU just before
    # its end, and the others then too.
    after, sampled_after = before, sampled
    while wrk.wait(0.1) is None:
        if time.monotonic() - started < seconds - 0.3:
            continue
        after, sampled_after = cpu_of(watched), time.monotonic()
    line = wrk.stdout_path.read_text(errors="replace")
    found = [x for x in line.splitlines() if x.startswith("WRK_JSON ")]
    if not found:
        raise RuntimeError(f"wrk printed no result:\n{wrk.tail()}")
    result = json.loads(found[-1][len("WRK_JSON "):])
    duration = result["duration_us"] / 1e6
    errors = sum(v for k, v in result.items() if k.startswith("errors_"))
    return {
        "webhooks_per_s": round(result["requests"] / duration, 1),
        "requests": result["requests"],
        "errors": errors,
        "errors_detail": {k: v for k, v in result.items() if k.startswith("errors_")},
        "latency_p50_ms": round(result["latency_p50_us"] / 1e3, 1),
        "latency_p99_ms": round(result["latency_p99_us"] / 1e3, 1),
        "latency_max_ms": round(result["latency_max_us"] / 1e3, 1),
        "cpu_percent": cpu_percent(before, after, max(sampled_after - sampled, 1e-3)),
    }


# --------------------------------------------------------------------------- scenarios


def baseline(workdir: Path, seconds: float, connections: int, nonce: str, starts_at: str
             ) -> dict[str, Any]:
    with Processes() as procs:
        server, url = start_baseline(procs, workdir)
        run_wrk(procs, workdir, url, 2, connections, nonce, starts_at, {}, stream=1)  # warm
        result = run_wrk(procs, workdir, url, seconds, connections, nonce, starts_at,
                         {"baseline": server})
        result["rss_mib"] = round(server.rss_mib(), 1)
        return result


def outbox_rows(found: dict[str, float]) -> int:
    """Outbox rows in any state (every event Firehouse decided on, on a fresh state file)."""
    return int(sum(v for k, v in found.items() if k.startswith("firehouse_outbox_events{")))


def sustained(workdir: Path, maps: Path, seconds: float, connections: int, nonce: str,
              starts_at: str) -> dict[str, Any]:
    """Saturation: wrk with `connections` connections for `seconds`, posting the stream of
    bench/webhooks.py (new, repeated and resolving alerts on 100 groups). With the default
    flap damping (300 s) no incident resolves during the run: its events are the pages of
    the incidents the stream opens, counted from the outbox, not from a formula."""
    with Processes() as procs:
        standin, pd_url, arrivals_url = start_standin(procs, workdir)
        firehouse, url = start_firehouse(procs, workdir, maps, pd_url)
        return saturate(procs, workdir, {"firehouse": (firehouse, url)}, {"standin": standin},
                        arrivals_url, seconds, connections, nonce, starts_at)


def saturate(procs: Processes, workdir: Path, replicas: Mapping[str, tuple[Proc, str]],
             others: Mapping[str, Measured], arrivals_url: str, seconds: float,
             connections: int, nonce: str, starts_at: str, threads: int = 1
             ) -> dict[str, Any]:
    """`sustained` on Firehouses already running: `replicas` (name -> process, base URL;
    several share one PostgreSQL database, and wrk's threads take them in turn), the CPU of
    `others` watched too. Counters are summed over the replicas; the outbox and the open
    incidents (one store) are read from the first."""
    urls = [url for _proc, url in replicas.values()]
    before = [metrics(url) for url in urls]
    result = run_wrk(procs, workdir, urls[0] + "/webhook/alertmanager", seconds, connections,
                     nonce, starts_at,
                     {**{name: proc for name, (proc, _url) in replicas.items()}, **others},
                     threads=threads, spread=urls if len(urls) > 1 else ())
    after = [metrics(url) for url in urls]
    names = list(dict.fromkeys(name for found in after for name in found))
    arrivals = Arrivals(arrivals_url)
    arrivals.poll()

    def delta(name: str) -> float:
        return sum(a.get(name, 0.0) - b.get(name, 0.0) for a, b in zip(after, before,
                                                                        strict=True))

    result.update({
        "accepted": int(delta('firehouse_webhooks_total{outcome="accepted"}')),
        "refused_by_firehouse": int(sum(
            delta(k) for k in names if k.startswith("firehouse_webhooks_total{")
            and 'outcome="accepted"' not in k)),
        "incidents_opened": int(sum(delta(k) for k in names
                                    if k.startswith("firehouse_incidents_opened_total{"))),
        "incidents_resolved": int(delta("firehouse_incidents_resolved_total")),
        "incidents_merged": int(delta("firehouse_incidents_merged_total")),
        "incidents_open_at_end": int(after[0].get("firehouse_incidents_open", 0)),
        "events_created": outbox_rows(after[0]) - outbox_rows(before[0]),
        "events_delivered": int(sum(delta(k) for k in names if k.startswith(
            "firehouse_events_sent_total{") and 'outcome="ok"' in k)),
        "outbox_pending_at_end": int(after[0].get(
            'firehouse_outbox_events{state="pending"}', 0)),
        "standin_received": len(arrivals.items),
        "standin_refused": refused(arrivals),
        "firehouse_peak_rss_mib": round(max(peak_rss(proc) for proc, _url
                                            in replicas.values()), 1),
    })
    result["events_delivered_per_s"] = round(result["events_delivered"] / seconds, 1)
    return result


def peak_rss(proc: Proc) -> float:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def paced(workdir: Path, maps: Path, pool: Path, rate: int, seconds: float, wait: float,
          nonce: str, starts_at: str) -> dict[str, Any]:
    """Time to page at a fixed offered load: every webhook is a new fire on a mapped service
    no other webhook's service is connected to (bench.pace), so it opens one incident; its
    time to page runs from when it was due to the stand-in accepting that incident's first
    trigger (incident ids from the webhook's answer, `incidents_opened`, and the dedup
    keys). Pages still missing `wait` seconds after the last webhook was answered count as
    infinitely late (a percentile that falls on them is reported as None: not measured, and
    certainly over any goal)."""
    with Processes() as procs:
        standin, pd_url, arrivals_url = start_standin(procs, workdir)
        firehouse, url = start_firehouse(procs, workdir, maps, pd_url)
        return pace(procs, workdir, [url], {"firehouse": firehouse, "standin": standin},
                    arrivals_url, pool, rate, seconds, wait, nonce, starts_at)


def pace(procs: Processes, workdir: Path, urls: Sequence[str], watch: Mapping[str, Measured],
         arrivals_url: str, pool: Path, rate: int, seconds: float, wait: float, nonce: str,
         starts_at: str) -> dict[str, Any]:
    """`paced` on Firehouses already running, at base URLs `urls` (replicas of one
    PostgreSQL database: the webhooks go to them in turn), the CPU of `watch` watched."""
    out = workdir / f"pace-{rate}.json"
    client = procs.add(Proc(f"pace-{rate}", python(
        "bench.pace", *(url + "/webhook/alertmanager" for url in urls), "--rate",
        str(rate), "--seconds", f"{seconds:g}", "--out", str(out), "--nonce", nonce,
        "--starts-at", starts_at, "--pool", str(pool)), workdir))
    watched: dict[str, Measured] = {**watch, "client": client}
    client.wait_line("MEASURING", timeout=120)
    before, started = cpu_of(watched), time.monotonic()
    client.wait_line("SENT", timeout=seconds * 20 + 120)
    after, elapsed = cpu_of(watched), time.monotonic() - started
    if client.wait(60) is None or not out.exists():
        raise RuntimeError(f"paced client failed:\n{client.tail()}")
    sent = json.loads(out.read_text())
    due: dict[str, float] = {}  # incident -> when the webhook that opened it was due
    responses: list[float] = []
    failed = not_one = 0
    for when, answered, status, opened in sent["webhooks"]:
        responses.append(answered - when)
        failed += status != 200
        not_one += status == 200 and len(opened) != 1
        for incident in opened:
            due[incident] = when
    arrivals = Arrivals(arrivals_url)
    deadline = time.monotonic() + wait
    while True:  # until every incident's first trigger came, or `wait` seconds
        arrivals.poll()
        first = arrivals.first_triggers()
        if all(i in first for i in due) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pages = [first[i] - when if i in first else float("inf") for i, when in due.items()]
    missing = sum(1 for v in pages if v == float("inf"))
    return {
        "rate": rate, "seconds": seconds, "webhooks": len(responses),
        "webhook_errors": failed, "webhooks_not_opening_one_incident": not_one,
        "pages_expected": len(due), "pages_received": len(due) - missing,
        "pages_missing": missing, "page_wait_limit_s": wait,
        "events_received": len(arrivals.delivered()),
        "page_p50_ms": ms(percentile(pages, 0.5)), "page_p99_ms": ms(percentile(pages, 0.99)),
        "page_max_ms": ms(max(pages, default=float("nan"))),
        "response_p50_ms": ms(percentile(responses, 0.5)),
        "response_p99_ms": ms(percentile(responses, 0.99)),
        "response_max_ms": ms(max(responses, default=float("nan"))),
        "standin_refused": refused(arrivals),
        "cpu_percent": cpu_percent(before, after, elapsed),
    }


class Stalls:
    """Polls a URL from a thread (20 ms apart): the longest answer shows how long the
    event loop was blocked meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            http(self.url, timeout=60)
            self.longest = max(self.longest, time.monotonic() - started)
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.longest


def drain_estimate(per_target: dict[str, int], per_minute: int) -> float:
    """Seconds the outbox needs to send `per_target` events through token buckets of
    `per_minute` (full at the start, one routing key per target); 0 without shaping."""
    if per_minute <= 0:
        return 0.0
    return max((max(0, n - per_minute) * 60 / per_minute for n in per_target.values()),
               default=0.0)


def burst(workdir: Path, maps: Path, size: int, rate_limit: int, wait: float, nonce: str,
          starts_at: str) -> dict[str, Any]:
    """One webhook of `size` new alerts (a wide outage over the front of the map): time to
    its 200, and until the stand-in accepted every event the incidents it opened owe (if
    within `wait` seconds). That number is what the outbox holds once the 200 is in (a
    fresh state file: the burst's events only), checked against the answer and the
    incidents' own events (`GET /api/v1/incidents/{id}`)."""
    body = outage(0, size, nonce=nonce, services=SERVICES, starts_at=starts_at)
    with Processes() as procs:
        standin, pd_url, arrivals_url = start_standin(procs, workdir)
        firehouse, url = start_firehouse(procs, workdir, maps, pd_url, rate_limit)
        before = cpu_of({"firehouse": firehouse, "standin": standin})
        stalls = Stalls(url + "/-/healthy")
        sent = time.monotonic()
        status, answer = http(url + "/webhook/alertmanager", body, timeout=300)
        acked = time.monotonic()
        stall = stalls.stop()
        reply = json.loads(answer) if status == 200 else {}
        opened = list(reply.get("incidents_opened", []))
        expected = outbox_rows(metrics(url))
        per_target: dict[str, int] = {}
        of_incidents = 0
        for incident in opened:
            found_status, found = http(f"{url}/api/v1/incidents/{incident}")
            if found_status == 200:
                for event in json.loads(found).get("events", []):
                    per_target[event["target"]] = per_target.get(event["target"], 0) + 1
                    of_incidents += 1
        arrivals = Arrivals(arrivals_url)
        estimate = drain_estimate(per_target, rate_limit)
        received = arrivals.wait_for(expected, limit=wait, idle=max(min(wait, 30), 5))
        delivered = time.monotonic()
        after = cpu_of({"firehouse": firehouse, "standin": standin})
        times = [at for at, _action, _incident in arrivals.delivered()]
        last = max(times, default=float("nan"))
        return {
            "alerts": size, "rate_limit_per_minute": rate_limit,
            "body_mib": round(len(body) / 2**20, 2), "status": status,
            "incidents_opened": len(opened),
            "incidents_open": int(metrics(url).get("firehouse_incidents_open", 0)),
            "events_in_answer": reply.get("events"), "events_expected": expected,
            "events_of_opened_incidents": of_incidents, "events_per_target": per_target,
            "ack_ms": ms(acked - sent),
            "waited_s": wait,
            "all_delivered_ms": (ms(last - sent) if wait and received >= expected
                                 else None),
            "drain_estimate_s": round(estimate, 1),
            "first_event_ms": ms(min(times) - sent) if times else None,
            "events_received": received, "events_missing": max(0, expected - received),
            "delivery_per_s": (round(received / (last - acked), 1)
                               if times and last > acked else None),
            "standin_refused": refused(arrivals),
            "healthy_max_ms": ms(stall),
            "cpu_percent": cpu_percent(before, after, delivered - sent),
        }


def memory(workdir: Path, maps: Path, pool: Path, incidents: int, wait: float, nonce: str,
           starts_at: str) -> dict[str, Any]:
    """RSS with the map alone, then with `incidents` open incidents, and once their pages
    are delivered (if within `wait` seconds). Each alert is on a service no other alert is
    connected to: first every service of the pool (no two of them connected), then
    unmapped services; 10 alerts a webhook (grouped on alertname), 4 webhooks at a time.
    That they are all open is checked (`firehouse_incidents_open`)."""
    names = json.loads(pool.read_text())[:incidents]
    mapped = len(names)
    names += [unmapped_service(n, nonce) for n in range(incidents - mapped)]
    with Processes() as procs:
        _standin, pd_url, arrivals_url = start_standin(procs, workdir)
        firehouse, url = start_firehouse(procs, workdir, maps, pd_url)
        time.sleep(1.0)
        at_start = firehouse.rss_mib()
        bodies = [spread(0xB0, k, names[k * PER_WEBHOOK:(k + 1) * PER_WEBHOOK], nonce=nonce,
                         starts_at=starts_at)
                  for k in range((incidents + PER_WEBHOOK - 1) // PER_WEBHOOK)]

        def post(body: bytes) -> tuple[int, float, int, int]:
            started = time.monotonic()
            status, answer = http(url + "/webhook/alertmanager", body)
            seconds = time.monotonic() - started
            reply = json.loads(answer) if status == 200 else {}
            return (status, seconds, len(reply.get("incidents_opened", [])),
                    int(reply.get("events", 0)))

        with ThreadPoolExecutor(4) as pool_:
            results = list(pool_.map(post, bodies))
        accepted = firehouse.rss_mib()
        found = metrics(url)
        open_now = found.get("firehouse_incidents_open", float("nan"))
        events = outbox_rows(found)
        arrivals = Arrivals(arrivals_url)
        delivered = arrivals.wait_for(events, limit=wait, idle=min(wait, 30))
        time.sleep(1.0)
        drained = firehouse.rss_mib() if wait and delivered >= events else None
        state = sum(f.stat().st_size for f in (workdir / "state").glob("firehouse.db*"))
        latencies = [r[1] for r in results]
        tenth = max(1, len(latencies) // 10)
        return {
            "incidents_open": int(open_now),
            "incidents_opened": sum(r[2] for r in results),
            "mapped_services": mapped, "unmapped_services": incidents - mapped,
            "webhook_errors": sum(1 for r in results if r[0] != 200),
            "rss_start_mib": round(at_start, 1),
            "rss_open_mib": round(accepted, 1),
            "rss_open_drained_mib": round(drained, 1) if drained is not None else None,
            "rss_peak_mib": round(peak_rss(firehouse), 1),
            "response_first_tenth_p50_ms": ms(statistics.median(latencies[:tenth])),
            "response_last_tenth_p50_ms": ms(statistics.median(latencies[-tenth:])),
            "events": events, "events_delivered": delivered,
            "state_file_mib": round(state / 2**20, 1),
        }


# --------------------------------------------------------------------------- the run


def plan(quick: bool) -> dict[str, Any]:
    """Durations (s) and sizes. Time to page: rate -> (seconds sent, longest wait for the
    last pages); 20/s is light load, for reference (no goal). Bursts: (alerts, events a
    minute per routing key, 0 for no shaping) -> longest wait for the last event; a wait of
    0 measures the 200 only (delivery: not measured)."""
    if quick:
        return {"repeats": 1, "saturation_seconds": 5, "connections": 16,
                "paced": {100: (5, 20), 500: (2, 10)},
                "bursts": {(1_000, 0): 30, (10_000, 0): 0, (1_000, RATE_LIMIT_PER_MINUTE): 0},
                "incidents": 10_000, "drain_wait": 0}
    return {"repeats": 3, "saturation_seconds": 20, "connections": 16,
            # 500/s: 7 s, as the pool of unconnected services bounds rate x seconds.
            "paced": {20: (15, 60), 100: (30, 120), 500: (7, 120)},
            "bursts": {(1_000, 0): 120, (10_000, 0): 300, (1_000, RATE_LIMIT_PER_MINUTE): 600,
                       (10_000, RATE_LIMIT_PER_MINUTE): 900},
            "incidents": 10_000, "drain_wait": 300}


def attempt(workdir: Path, label: str, keep: bool, fn: Callable[..., dict[str, Any]],
            *fn_args: Any) -> dict[str, Any]:
    """`fn(workdir, *fn_args)` in a fresh `workdir`, announced as `label`: its result, or
    {"error": …} if it raised (reported; the run goes on, and the workdir is kept for a
    look, as it is with `keep`)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"  {label} …", end="", flush=True)
    started = time.monotonic()
    try:
        result = fn(workdir, *fn_args)
    except Exception as exc:  # reported; the run goes on
        print(f" FAILED: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
    print(f" {time.monotonic() - started:.0f}s", flush=True)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every scenario, `repeats` times, interleaved (noise on a shared machine then spreads
    over all of them rather than spoiling one)."""
    settings = plan(args.quick)
    maps = generated_map(work / "maps", SERVICES)
    pool = unrelated_pool(work / "maps", maps)
    starts_at = rfc3339(time.time() - 60)
    repetitions = []
    repeats = args.repeats or settings["repeats"]
    only = set(args.only.split(",")) if args.only else None
    for rep in range(repeats):
        nonce = f"{(os.getpid() * 31 + rep) % 65536:04x}"
        found: dict[str, Any] = {}

        def step(name: str, fn: Callable[..., dict[str, Any]], *fn_args: Any,
                 found: dict[str, Any] = found, rep: int = rep) -> None:
            if only is not None and not {name, name.partition("_")[0]} & only:
                return
            found[name] = attempt(work / f"{name}-{rep + 1}", f"[{rep + 1}/{repeats}] {name}",
                                  args.keep, fn, *fn_args)

        connections = settings["connections"]
        step("baseline", baseline, settings["saturation_seconds"], connections, nonce,
             starts_at)
        step("sustained", sustained, maps, settings["saturation_seconds"], connections, nonce,
             starts_at)
        for rate, (seconds, wait) in settings["paced"].items():
            step(f"page_{rate}", paced, maps, pool, rate, seconds, wait, nonce, starts_at)
        for (size, limit), wait in settings["bursts"].items():
            step(f"burst_{size}" + ("_shaped" if limit else ""), burst, maps, size, limit, wait,
                 nonce, starts_at)
        step("memory", memory, maps, pool, settings["incidents"], settings["drain_wait"],
             nonce, starts_at)
        repetitions.append(found)
    return repetitions


def figures(rep: dict[str, Any]) -> dict[str, float | None]:
    """The headline figures of one repetition (of the measurements it has)."""
    rep = {name: found for name, found in rep.items() if "error" not in found}
    out: dict[str, float | None] = {}
    base, sus = rep.get("baseline"), rep.get("sustained")
    if base:
        out.update({
            "baseline_webhooks_per_s": base["webhooks_per_s"],
            "baseline_p99_ms": base["latency_p99_ms"],
            "cpu_baseline_pct": base["cpu_percent"].get("baseline"),
            "cpu_baseline_wrk_pct": base["cpu_percent"].get("wrk"),
            "cpu_baseline_others_pct": base["cpu_percent"].get("others"),
        })
    if sus:
        created = sus.get("events_created", 0)
        per_webhook = created / sus["accepted"] if sus["accepted"] else float("nan")
        out.update({
            "sustained_webhooks_per_s": sus["webhooks_per_s"],
            "sustained_errors": sus["errors"] + sus["refused_by_firehouse"],
            "sustained_p99_ms": sus["latency_p99_ms"],
            "sustained_events_per_webhook": round(per_webhook, 3),
            "sustained_incidents_opened": sus["incidents_opened"],
            "sustained_incidents_open_at_end": sus["incidents_open_at_end"],
            "sustained_events_created": created,
            "sustained_events_delivered_per_s": sus["events_delivered_per_s"],
            "sustained_outbox_pending_at_end": sus["outbox_pending_at_end"],
            "cpu_firehouse_pct": sus["cpu_percent"].get("firehouse"),
            "cpu_standin_pct": sus["cpu_percent"].get("standin"),
            "cpu_wrk_pct": sus["cpu_percent"].get("wrk"),
            "cpu_others_pct": sus["cpu_percent"].get("others"),
        })
    if base and sus:
        out["sustained_ratio_to_baseline"] = round(
            sus["webhooks_per_s"] / base["webhooks_per_s"], 3)
    for key, page in rep.items():
        if key.startswith("page_"):
            rate = key.split("_")[1]
            out.update({
                f"page_{rate}_p50_ms": page["page_p50_ms"],
                f"page_{rate}_p99_ms": page["page_p99_ms"],
                f"page_{rate}_max_ms": page["page_max_ms"],
                f"page_{rate}_expected": page["pages_expected"],
                f"page_{rate}_not_one": page["webhooks_not_opening_one_incident"],
                f"page_{rate}_received": page["pages_received"],
                f"response_{rate}_p50_ms": page["response_p50_ms"],
                f"response_{rate}_p99_ms": page["response_p99_ms"],
                f"response_{rate}_max_ms": page["response_max_ms"],
                f"cpu_firehouse_{rate}_pct": page["cpu_percent"].get("firehouse"),
                f"cpu_others_{rate}_pct": page["cpu_percent"].get("others"),
            })
        elif key.startswith("burst_"):
            size = key.removeprefix("burst_")
            out[f"burst_{size}_ack_ms"] = page["ack_ms"]
            out[f"burst_{size}_incidents"] = page["incidents_opened"]
            out[f"burst_{size}_events"] = page["events_expected"]
            # Not waited for (--quick): not measured, rather than missing.
            out[f"burst_{size}_delivered_ms"] = (page["all_delivered_ms"] if page["waited_s"]
                                                 else float("nan"))
            out[f"burst_{size}_drain_estimate_ms"] = (page["drain_estimate_s"] * 1e3
                                                      if page["rate_limit_per_minute"]
                                                      else float("nan"))
            out[f"burst_{size}_missing"] = (page["events_missing"] if page["waited_s"]
                                            else float("nan"))
            out[f"burst_{size}_delivery_per_s"] = (page["delivery_per_s"] if page["waited_s"]
                                                   else float("nan"))
            out[f"burst_{size}_healthy_max_ms"] = page["healthy_max_ms"]
    mem = rep.get("memory")
    if mem:
        out.update({
            "rss_start_mib": mem["rss_start_mib"], "rss_10k_open_mib": mem["rss_open_mib"],
            "memory_incidents_open": mem["incidents_open"],
            "memory_mapped_services": mem["mapped_services"],
            "memory_unmapped_services": mem["unmapped_services"],
            "rss_10k_open_drained_mib": mem["rss_open_drained_mib"],
            "rss_peak_mib": mem["rss_peak_mib"],
            "memory_response_first_tenth_ms": mem["response_first_tenth_p50_ms"],
            "memory_response_last_tenth_ms": mem["response_last_tenth_p50_ms"],
            "state_file_mib": mem["state_file_mib"],
        })
    return out


def censored(name: str) -> bool:
    """Figures for which None means "did not happen within the wait": infinitely late."""
    return (name.startswith("page_") and name.endswith("_ms")) or name.endswith("delivered_ms")


def summary(repetitions: list[dict[str, Any]],
            figures_of: Callable[[dict[str, Any]], dict[str, float | None]] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Median, min and max of each figure over the repetitions (None: not measured, or for
    a time, not observed within the wait); `figures_of` picks a repetition's figures
    (`figures` by default)."""
    per = [(figures_of or figures)(r) for r in repetitions]
    result: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for p in per for name in p):
        raw = [p.get(name, float("nan")) for p in per]  # NaN: not measured in that one
        if censored(name):
            raw = [float("inf") if v is None else v for v in raw]
        values = [v for v in raw if v is not None and v == v]  # NaN: nothing measured
        if not values:
            result[name] = {"median": None, "min": None, "max": None, "measured": False}
            continue
        stats = (statistics.median(values), min(values), max(values))
        result[name] = dict(zip(("median", "min", "max"),
                                (None if v == float("inf") else v for v in stats),
                                strict=True))
    return result


def verdict(name: str, stats: dict[str, Any]) -> str:
    if name not in GOALS:
        return ""
    text, op, threshold = GOALS[name]
    median = stats["median"]
    if stats.get("measured") is False:
        return f"{text}: not measured"
    if median is None:
        return f"{text}: {'FAIL (not all delivered)' if censored(name) else 'n/a'}"
    ok = median >= threshold if op == ">=" else median <= threshold
    return f"{text}: {'PASS' if ok else 'FAIL'}"


ROWS = [
    # (label, Firehouse figure, baseline figure or second figure, unit)
    ("sustained webhooks/s (10 alerts each)", "sustained_webhooks_per_s",
     "baseline_webhooks_per_s", "/s"),
    ("  ratio to baseline", "sustained_ratio_to_baseline", None, "x"),
    ("  errors (wrk + refused)", "sustained_errors", None, ""),
    ("  response p99 at saturation (ms)", "sustained_p99_ms", "baseline_p99_ms", "ms"),
    ("  incidents opened | open at the end", "sustained_incidents_opened",
     "sustained_incidents_open_at_end", ""),
    ("  events (pages) decided | per webhook", "sustained_events_created",
     "sustained_events_per_webhook", ""),
    ("  events delivered/s meanwhile", "sustained_events_delivered_per_s", None, "/s"),
    ("  outbox pending at the end", "sustained_outbox_pending_at_end", None, ""),
    ("  CPU % server", "cpu_firehouse_pct", "cpu_baseline_pct", "%"),
    ("  CPU % PagerDuty stand-in", "cpu_standin_pct", None, "%"),
    ("  CPU % wrk", "cpu_wrk_pct", "cpu_baseline_wrk_pct", "%"),
    ("  CPU % other people's processes", "cpu_others_pct", "cpu_baseline_others_pct", "%"),
]
for _rate in (20, 100, 500):
    ROWS += [
        (f"time to page at {_rate}/s: p50 (ms)", f"page_{_rate}_p50_ms", None, "ms"),
        ("  p99 (ms)", f"page_{_rate}_p99_ms", None, "ms"),
        ("  max (ms)", f"page_{_rate}_max_ms", None, "ms"),
        ("  incidents' first pages expected | received", f"page_{_rate}_expected",
         f"page_{_rate}_received", ""),
        ("  webhooks not opening exactly 1 incident", f"page_{_rate}_not_one", None, ""),
        ("  webhook response p50 | p99 (ms)", f"response_{_rate}_p50_ms",
         f"response_{_rate}_p99_ms", "ms"),
        ("  CPU % Firehouse | others", f"cpu_firehouse_{_rate}_pct", f"cpu_others_{_rate}_pct",
         "%"),
    ]
for _size, _label in ((1000, "1,000"), (10000, "10,000")):
    ROWS += [
        (f"{_label}-alert webhook: 200 after (ms)", f"burst_{_size}_ack_ms",
         f"burst_{_size}_shaped_ack_ms", "ms"),
        ("  incidents opened | events they page", f"burst_{_size}_incidents",
         f"burst_{_size}_events", ""),
        ("  all delivered after, no shaping (ms)", f"burst_{_size}_delivered_ms", None, "ms"),
        (f"  … at {RATE_LIMIT_PER_MINUTE}/min a key: measured | expected",
         f"burst_{_size}_shaped_delivered_ms", f"burst_{_size}_shaped_drain_estimate_ms",
         "ms"),
        ("  events/s after the 200, no shaping | shaped", f"burst_{_size}_delivery_per_s",
         f"burst_{_size}_shaped_delivery_per_s", "/s"),
        ("  longest GET /-/healthy meanwhile", f"burst_{_size}_healthy_max_ms",
         f"burst_{_size}_shaped_healthy_max_ms", "ms"),
    ]
ROWS += [
    ("RSS at start, 10k-service map (MiB)", "rss_start_mib", None, "MiB"),
    ("RSS with 10k open incidents (MiB)", "rss_10k_open_mib", None, "MiB"),
    ("  incidents open (firehouse_incidents_open)", "memory_incidents_open", None, ""),
    ("  on mapped | unmapped services", "memory_mapped_services",
     "memory_unmapped_services", ""),
    ("  once their pages are delivered", "rss_10k_open_drained_mib", None, "MiB"),
    ("  webhook response p50, first | last 100 (ms)", "memory_response_first_tenth_ms",
     "memory_response_last_tenth_ms", "ms"),
    ("  state file (SQLite + WAL, MiB)", "state_file_mib", None, "MiB"),
]


def fmt(stats: dict[str, Any] | None, unit: str, name: str = "") -> str:
    if not stats or stats.get("measured") is False:
        return "n/a"
    missing = "missing" if censored(name) else "n/a"

    def one(v: float | None) -> str:
        if v is None:
            return missing
        if unit == "x":
            return f"{v:.2f}"
        return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.1f}"

    med, low, high = stats["median"], stats["min"], stats["max"]
    text = one(med)
    if one(low) != one(high):
        text += f" [{one(low)}-{one(high)}]"
    return text


def report(result: dict[str, Any]) -> str:
    stats = result["summary"]
    lines = [f"{'':44} {'Firehouse':>24} {'baseline | 2nd':>22}  goal"]
    for label, name, base, unit in ROWS:
        if name not in stats:
            continue
        right = fmt(stats.get(base), unit, base) if base else ""
        lines.append(f"{label:44} {fmt(stats[name], unit, name):>24} {right:>22}  "
                     f"{verdict(name, stats[name])}")
    lines.append("(medians of the repetitions, [min-max] when they differ; CPU in % of one "
                 "core, 2 cores = 200%)")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "load_average": os.getloadavg()}


def arguments(prog: str, doc: str | None, name: str) -> argparse.ArgumentParser:
    """The options every end-to-end benchmark takes; results in bench/results/`name`.json."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0]
                                     if doc else None)
    parser.add_argument("--quick", action="store_true", help="one short repetition (CI)")
    parser.add_argument("--out", default=f"bench/results/{name}.json")
    parser.add_argument("--work", default=f"bench/results/{name}-work",
                        help="scratch directory (maps, state files, logs)")
    parser.add_argument("--keep", action="store_true", help="keep state files and logs")
    parser.add_argument("--repeats", type=int, help="repetitions (default: 3, --quick: 1)")
    return parser


def publish(result: dict[str, Any], text: str, out: str, failed: list[str]) -> int:
    """Print the report `text`, write `result` as JSON to `out`; the exit status: 1 if
    measurements `failed` (named on stderr), else 0."""
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {path} in {result['seconds']} s")
    if failed:
        print(f"measurements that failed (see the JSON): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = arguments("python -m bench", __doc__, "webhooks")
    parser.add_argument("--only", help="comma-separated measurements: baseline, sustained, "
                        "page (or page_100 …), burst (or burst_1000 …), memory")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    info = machine()
    print(f"machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, "
          f"Linux {info['kernel']}, load average {info['load_average'][0]:.2f}")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    repetitions = measure(args, work)
    shown = {k: {str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v
             for k, v in plan(args.quick).items()}  # JSON keys are strings
    result = {"machine": info, "quick": args.quick, "plan": shown,
              "seconds": round(time.monotonic() - started), "summary": summary(repetitions),
              "repetitions": repetitions}
    return publish(result, report(result), args.out,
                   [f"{name} #{n}" for n, rep in enumerate(repetitions, 1)
                    for name, found in rep.items() if "error" in found])
