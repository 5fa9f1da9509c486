"""Processes of the webhook benchmark: Firehouse, the PagerDuty stand-in, the baseline, wrk
and the paced client, each started here, measured through /proc, and stopped by its PID."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from bench.graphgen import TARGETS, write
from bench.webhooks import unrelated_services
from daemon.maps import load_maps

REPO = Path(__file__).resolve().parent.parent
INCIDENT_LEAD = "command-center"
FLAP_DAMPING_SECONDS = 300  # Firehouse's default
RATE_LIMIT_PER_MINUTE = 120  # Firehouse's default shaping
TICKS = os.sysconf("SC_CLK_TCK")


def routing_key(target: str) -> str:
    """A distinct 32-character routing key per target (PagerDuty's length)."""
    return hashlib.sha256(f"firehouse-bench/{target}".encode()).hexdigest()[:32]


def routing_key_env(target: str) -> str:
    """The variable Firehouse reads a target's key from by default."""
    return "FIREHOUSE_ROUTING_KEY_" + re.sub(r"[^A-Z0-9]", "_", target.upper())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(url: str, data: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """A plain HTTP request (GET, or POST of JSON); (status, body), status 0 if it failed."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, TimeoutError):
        return 0, b""


class Proc:
    """A child process with its output in files; CPU and memory read from /proc."""

    def __init__(self, name: str, command: list[str], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self._files: list[IO[bytes]] = []
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("FIREHOUSE_")
                     and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        child_env["NO_PROXY"] = child_env["no_proxy"] = "127.0.0.1,localhost"
        child_env["PYTHONPATH"] = str(REPO)
        child_env.update(env or {})
        self._files = [self.stdout_path.open("wb"), self.stderr_path.open("wb")]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._files[0],
                                     stderr=self._files[1], cwd=workdir, env=child_env,
                                     start_new_session=True)
        self.pid = self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the first stdout line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):]
            if not self.running:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {prefix!r}:\n{self.tail()}")

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        """Poll `url` until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                break
            if http(url, timeout=1.0)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on {url}:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mib(self) -> float:
        """Resident memory now, in MiB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def wait(self, timeout: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout)
        return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID, then SIGKILL if it has not exited within `timeout`."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if self.wait(timeout) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.wait(5.0)
        for file in self._files:
            file.close()
        return self.proc.poll()

    def tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.stderr_path, self.stdout_path):
            with contextlib.suppress(OSError):
                out.append(f"--- {path}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


class Processes:
    """Every process started for one measurement; all stopped on exit, newest first."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.started.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_standin(procs: Processes, workdir: Path) -> tuple[Proc, str, str]:
    """The PagerDuty stand-in: (process, Events API base URL, arrivals URL)."""
    proc = procs.add(Proc("pagerduty-standin", python("bench.standin"), workdir))
    ready = json.loads(proc.wait_line("READY "))
    return proc, ready["url"], ready["control"] + "/arrivals"


def start_baseline(procs: Processes, workdir: Path) -> tuple[Proc, str]:
    proc = procs.add(Proc("baseline", python("bench.baseline"), workdir))
    return proc, json.loads(proc.wait_line("READY "))["url"] + "/webhook/alertmanager"


def prepare_firehouse(workdir: Path, maps: Path, pagerduty_url: str, port: int,
                      rate_limit: int = 0) -> Path:
    """Settings and rules for `firehouse run` (technical lead + incident lead on every alert,
    a state file on disk, the default flap damping written out as a user would); returns
    the settings file. `rate_limit`: events a minute per routing key, 0 for no shaping."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{
        "name": "call the fire department first",
        "page": ["technical_lead", "incident_lead"]}]}, sort_keys=False))
    settings = workdir / "firehouse.yml"
    settings.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}",
        "state": str(workdir / "state" / "firehouse.db"),
        "rules": [str(rules)],
        "dependency_maps": [str(maps)],
        # No rate shaping unless asked (bursts measure both): the stand-in does not limit,
        # and the benchmark measures Firehouse.
        "pagerduty": {"url": pagerduty_url, "timeout_seconds": 10,
                      "rate_limit_per_minute": rate_limit},
        # The default, written out: an incident resolves 5 minutes after its last alert.
        "incidents": {"flap_damping_seconds": FLAP_DAMPING_SECONDS},
        "dry_run": False,
        "roles": {"incident_lead": INCIDENT_LEAD},
        "targets": {t: {} for t in sorted({*TARGETS, INCIDENT_LEAD})},
        "log_level": "info",
    }, sort_keys=False))
    return settings


def start_firehouse(procs: Processes, workdir: Path, maps: Path, pagerduty_url: str,
                    rate_limit: int = 0, env: Mapping[str, str] | None = None,
                    name: str = "firehouse") -> tuple[Proc, str]:
    """`firehouse run` on the generated map, with routing keys; (process, base URL).
    `env`: more variables for it (FIREHOUSE_DATABASE_URL for the PostgreSQL store);
    `name`: of the process and its output files in `workdir`."""
    child_env = {**{routing_key_env(t): routing_key(t) for t in {*TARGETS, INCIDENT_LEAD}},
                 **(env or {})}
    for attempt in range(3):
        port = free_port()
        settings = prepare_firehouse(workdir, maps, pagerduty_url, port, rate_limit)
        proc = procs.add(Proc(name, python("daemon", "run", "--config", str(settings)),
                              workdir, child_env))
        url = f"http://127.0.0.1:{port}"
        try:
            proc.wait_ready(url + "/-/ready")
        except RuntimeError:
            proc.stop()
            procs.started.remove(proc)
            if attempt == 2 or "address already in use" not in proc.tail().lower():
                raise
            continue
        return proc, url
    raise AssertionError("unreachable")


def generated_map(directory: Path, services: int) -> Path:
    """The generated map of `services` services (bench.graphgen), written once per run."""
    path = directory / f"generated-{services}.yaml"
    return path if path.exists() else write(services, directory)


def unrelated_pool(directory: Path, maps: Path) -> Path:
    """The mapped services of the generated map no two of which are connected (JSON list,
    bench.webhooks.unrelated_services), computed once per run and checked pairwise."""
    path = directory / f"{maps.stem}-unrelated.json"
    if path.exists():
        return path
    graph, _problems = load_maps([maps], set(TARGETS))
    pool = unrelated_services(graph)
    members = set(pool)
    for name in pool:
        if members.intersection(graph.related(name)) != {name}:
            raise RuntimeError(f"{name} is connected to another service of the pool")
    path.write_text(json.dumps(pool))
    return path


def metrics(url: str) -> dict[str, float]:
    """Firehouse's /metrics, summed per metric name and label set, as a flat dict."""
    status, body = http(url + "/metrics")
    found: dict[str, float] = {}
    if status != 200:
        return found
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine (all cores, everything but idle and I/O wait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


class Measured(Protocol):
    """Anything whose CPU time can be read: a Proc, or a group of processes."""

    def cpu_seconds(self) -> float: ...


def cpu_of(procs: Mapping[str, Measured]) -> dict[str, float]:
    """CPU seconds so far of each process, of this one ("bench") and of the machine."""
    found = {name: proc.cpu_seconds() for name, proc in procs.items()}
    times = os.times()
    found["bench"] = times.user + times.system
    found["machine"] = machine_busy_seconds()
    return found


def cpu_percent(before: dict[str, float], after: dict[str, float], seconds: float
                ) -> dict[str, float]:
    """CPU use of each process over an interval, in % of one core; "others" is what the
    rest of the machine used meanwhile (other people's work on a shared machine)."""
    used = {name: round(100 * (after[name] - before[name]) / seconds, 1)
            for name in before if name in after}
    machine = used.pop("machine", 0.0)
    used["others"] = round(max(0.0, machine - sum(used.values())), 1)
    return used


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
