"""The error hierarchy of Firehouse; foreign exceptions are translated into these at the edges."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class FirehouseError(Exception):
    """Base class of every error Firehouse raises on purpose."""


def missing(path: Path) -> str:
    """What a configured path that does not exist is told with: where it was looked for,
    when the path is relative (to the directory Firehouse was started in)."""
    if path.is_absolute():
        return "no such file or directory"
    return f"no such file or directory (looked for {path.absolute()})"


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with a configuration file, located so a person can fix it."""

    file: str
    line: int
    path: str
    message: str
    value: str = ""
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        shown = f" (got {self.value})" if self.value else ""
        kind = "warning: " if self.warning else ""
        return f"{where}:{key} {kind}{self.message}{shown}"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the known name most like `name`, or "" when none is."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class ConfigError(FirehouseError):
    """Settings, maps or rules are invalid; carries every problem found, sorted."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(p for p in problems if not p.warning)
        super().__init__("\n".join(str(p) for p in self.problems))


class PayloadError(FirehouseError):
    """A webhook body cannot be used; the message names the offending field."""


class StoreError(FirehouseError):
    """The store could not read or write durably."""


class StoreUnreachable(StoreError):
    """The store's server could not be reached or went away (not a refused write): retrying
    at once, or each part of a batch alone, would only wait for the outage again."""


class OutboxConflict(FirehouseError):
    """An outbox event cannot be retried as asked; the message says why."""


class StandingAside(StoreError):
    """This replica decides nothing for now (daemon/cluster.py): the message says why. A
    StoreError, so that every input is answered 503 or retried later, as when the store
    is away."""


class ReconcileError(FirehouseError):
    """Alertmanager could not be asked which alerts it has; the message says why."""
