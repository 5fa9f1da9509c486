"""Dependency-map benchmark: load time from YAML, resident memory, impact query latency.

    python -m bench.graph            # 1k, 10k and 100k services
    python -m bench.graph --quick    # 1k and 10k, fewer queries (CI)

Each size runs in its own process so that resident memory is measured cleanly. Figures are
printed and also written as JSON (bench/results/graph.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.graphgen import TARGETS, write


def rss_mib() -> float:
    """Resident memory of this process, in MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(size: int, queries: int, seed: int = 7) -> dict[str, Any]:
    """Load a generated map of `size` services and time impact queries on it."""
    from daemon.decide import impact_summary
    from daemon.maps import load_maps

    with tempfile.TemporaryDirectory() as tmp:
        path = write(size, Path(tmp), seed)
        before = rss_mib()
        started = time.perf_counter()
        graph, problems = load_maps([path], set(TARGETS))
        load_seconds = time.perf_counter() - started
        after = rss_mib()
    errors = [p for p in problems if not p.warning]
    if errors:
        raise SystemExit(f"generated map has problems: {errors[:3]}")
    rng = random.Random(seed)
    names = list(graph.services)
    single: list[float] = []
    for _ in range(queries):
        name = rng.choice(names)
        graph._cache.clear()  # measure cold queries, not the cache
        started = time.perf_counter()
        impact_summary(graph.impact([name]))
        single.append(time.perf_counter() - started)
    multi: list[float] = []
    for _ in range(max(10, queries // 5)):
        failing = rng.sample(names, 10)
        graph._cache.clear()
        started = time.perf_counter()
        impact = graph.impact(failing)
        impact_summary(impact)
        multi.append(time.perf_counter() - started)
    hub = names[0]  # the oldest service: nearly everything depends on it
    graph._cache.clear()
    started = time.perf_counter()
    hub_impact = graph.impact([hub])
    impact_summary(hub_impact)
    hub_seconds = time.perf_counter() - started
    return {
        "services": size,
        "edges": graph.graph.number_of_edges(),
        "load_seconds": round(load_seconds, 3),
        "rss_mib_for_map": round(after - before, 1),
        "single_p50_ms": round(statistics.median(single) * 1e3, 3),
        "single_p99_ms": round(percentile(single, 0.99) * 1e3, 3),
        "single_max_ms": round(max(single) * 1e3, 3),
        "ten_failing_p50_ms": round(statistics.median(multi) * 1e3, 3),
        "ten_failing_p99_ms": round(percentile(multi, 0.99) * 1e3, 3),
        "hub_ms": round(hub_seconds * 1e3, 3),
        "hub_impacted": hub_impact.impacted_total,
        "queries": len(single),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every size in a subprocess and print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.graph")
    parser.add_argument("--quick", action="store_true", help="1k and 10k only, fewer queries")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/graph.json")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.queries)))
        return 0
    sizes = [(1_000, 200), (10_000, 200)] if args.quick else \
        [(1_000, 1000), (10_000, 1000), (100_000, 200)]
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.machine()}")
    header = (f"{'services':>9} {'edges':>8} {'load s':>7} {'RSS MiB':>8} {'1 p50 ms':>9} "
              f"{'1 p99 ms':>9} {'10 p50 ms':>10} {'10 p99 ms':>10} {'hub ms':>8}")
    print(header)
    results = []
    for size, queries in sizes:
        output = subprocess.run(
            [sys.executable, "-m", "bench.graph", "--one", str(size), "--queries", str(queries)],
            check=True, capture_output=True, text=True,
        ).stdout
        row = json.loads(output.strip().splitlines()[-1])
        results.append(row)
        print(f"{row['services']:>9} {row['edges']:>8} {row['load_seconds']:>7.2f} "
              f"{row['rss_mib_for_map']:>8.1f} {row['single_p50_ms']:>9.3f} "
              f"{row['single_p99_ms']:>9.3f} {row['ten_failing_p50_ms']:>10.3f} "
              f"{row['ten_failing_p99_ms']:>10.3f} {row['hub_ms']:>8.1f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cores": os.cpu_count(),
                                           "python": platform.python_version()},
                               "results": results}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
