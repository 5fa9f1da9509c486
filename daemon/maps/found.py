"""What the format readers find in map files, located, before the files are merged and checked.

Every format reports the same things: services it defines, edges it adds, and the names it
writes that must exist elsewhere (services, settings targets, aliases), each with its file,
line and key path. `load_maps` then checks them all in one place, whatever their format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from daemon.errors import Problem
from daemon.graph import Dependency, Service

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
BAD_NAME = "invalid service name: use letters, digits and . _ : / -"


@dataclass(frozen=True, slots=True)
class Mention:
    """A name written in a map file: where, under which key path, and as written."""

    name: str
    file: str
    line: int
    path: str
    written: str


@dataclass(frozen=True, slots=True)
class Definition:
    """A service a map file defines, with the key paths errors and warnings point at."""

    service: Service
    path: str
    # Where a cycle warning points: the key that lists the service's dependencies.
    edges_path: str


@dataclass
class Found:
    """Everything read from the map files so far; filled file by file, then checked."""

    definitions: list[Definition] = field(default_factory=list)
    # Names defined anywhere, including definitions that had problems of their own, so that
    # a reference to them is not reported a second time.
    defined: set[str] = field(default_factory=set)
    # Names that must be services: dependencies, Backstage entity refs.
    services: list[Mention] = field(default_factory=list)
    # Names that must be settings targets: owners written in map files.
    targets: list[Mention] = field(default_factory=list)
    # (service, alias) in the order written.
    aliases: list[tuple[str, Mention]] = field(default_factory=list)
    # Edges added to the dependent's own `depends_on` (Backstage relations, edge lists).
    edges: list[tuple[str, Dependency]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Files (and configured paths) that could not be read or parsed whole: the names they
    # define are unknown, so the checks between files wait until every one reads.
    unread: list[str] = field(default_factory=list)
