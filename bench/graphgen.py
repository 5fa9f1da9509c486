"""Generate scale-free service maps for benchmarks: preferential attachment, newer services
depending on older ones (so the map is acyclic), 3-5 dependencies on average."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

COMPONENTS = ("application", "application", "application", "dbms", "storage", "network",
              "messaging", "cache")
TEAMS = ("app-oncall", "dba-oncall", "storage-oncall", "network-oncall", "messaging-oncall")


def generate(n: int, seed: int = 7, mean_deps: float = 4.0) -> dict[str, dict[str, object]]:
    """A map of `n` services as the native YAML structure (without the `services:` key)."""
    rng = random.Random(seed)
    names = [f"svc-{i:06d}" for i in range(n)]
    # Each service appears in `targets` once per dependent it has, plus once: preferential.
    targets: list[int] = []
    services: dict[str, dict[str, object]] = {}
    for i, name in enumerate(names):
        deps: set[int] = set()
        if i:
            wanted = min(i, max(1, round(rng.uniform(mean_deps - 1, mean_deps + 1))))
            while len(deps) < wanted:
                deps.add(rng.choice(targets) if targets and rng.random() < 0.8
                         else rng.randrange(i))
        targets.extend(deps)
        targets.append(i)
        tier = 1 + min(3, int(rng.expovariate(1.0)))
        body: dict[str, object] = {
            "tier": tier,
            "component": rng.choice(COMPONENTS),
            "owners": {"technical_lead": rng.choice(TEAMS)},
        }
        if tier == 1 and rng.random() < 0.3:
            body["business_service"] = f"business-{rng.randrange(20):02d}"
        if deps:
            body["depends_on"] = [
                names[d] if rng.random() < 0.8 else {"service": names[d], "kind": "soft"}
                for d in sorted(deps)
            ]
        services[name] = body
    return services


def write(n: int, directory: Path, seed: int = 7) -> Path:
    """Write a generated map to `directory/generated-N.yaml` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"generated-{n}.yaml"
    path.write_text(yaml.safe_dump({"services": generate(n, seed)}, sort_keys=False))
    return path


TARGETS = frozenset(TEAMS)
