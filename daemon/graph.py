"""Dependency maps: strict loading, validation, and impact analysis on networkx.

Edges point from a dependent to its dependency (`checkout -> payments`): when `payments`
fails, everything that can reach it along edges is impacted. A service reached through hard
edges only is *down*; one that needs a soft edge on every path is *degraded*.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import networkx as nx

HARD = "hard"
SOFT = "soft"
DOWN = "down"
DEGRADED = "degraded"
SEVERITIES = ("info", "warning", "error", "critical")
DEFAULT_TIER_SEVERITY: Mapping[int, str] = MappingProxyType(
    {1: "critical", 2: "error", 3: "warning", 4: "info"}
)
OWNER_ROLES = ("technical_lead", "service_lead")
T = TypeVar("T")
_NO_LINES: Mapping[str, int] = MappingProxyType({})



@dataclass(frozen=True, slots=True)
class Dependency:
    """An edge of the map: the service depended on, and how hard."""

    service: str
    kind: str = HARD


@dataclass(frozen=True, slots=True)
class Service:
    """A node of the map."""

    name: str
    tier: int
    component: str
    owners: Mapping[str, str]
    business_service: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    depends_on: tuple[Dependency, ...] = ()
    source: str = ""
    # Line of each owner, alias and dependency (`owners.technical_lead`, `depends_on[2]`),
    # for the cross-reference errors found after parsing.
    lines: Mapping[str, int] = field(default_factory=lambda: _NO_LINES, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ImpactedService:
    """A service hurt by a failure: how badly, how far away, and through which chain."""

    name: str
    tier: int
    state: str
    distance: int
    path: tuple[str, ...]

    def explain(self) -> str:
        """Say in one line why this service is impacted."""
        chain = " -> ".join(reversed(self.path[:-1]))
        return f"{self.name} is {self.state} because {chain} is failing"


_NO_COUNTS: Mapping[int, int] = MappingProxyType({})
BITSET_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class RootCause:
    """A probable root cause: failing services (a cycle counts as one) and what they take down."""

    services: tuple[str, ...]
    most_critical_tier: int | None
    down_tier: int | None
    down_total: int
    impacted_total: int
    business_services: tuple[str, ...]

    @property
    def name(self) -> str:
        """The candidate's name: its service, or its cycle's members joined."""
        return " <-> ".join(self.services)

    def to_json(self) -> dict[str, object]:
        """The candidate as JSON-ready data, for pages and the API."""
        return {
            "services": list(self.services),
            "most_critical_tier": self.most_critical_tier,
            "most_critical_tier_down": self.down_tier,
            "takes_down": self.down_total,
            "impacts": self.impacted_total,
            "business_services": list(self.business_services),
        }


@dataclass(frozen=True, slots=True)
class _Walk:
    """A breadth-first walk from the failing services: the services first reached at each
    distance, through hard edges only (down) and beyond that (degraded)."""

    down: list[set[int]]
    degraded: list[set[int]]


class Impact:
    """What a set of failing services takes down or degrades.

    The totals are computed with the query; the impacted services themselves, with the
    chain that explains each, only when asked for (a page needs the top few and totals).
    """

    __slots__ = (
        "_blame",
        "_buckets",
        "_graph",
        "_impacted",
        "_nearest",
        "_sources",
        "_walk",
        "business_services",
        "degraded_total",
        "down_tier",
        "down_total",
        "failing",
        "most_critical_tier",
        "root_causes",
        "severity",
        "summary",
        "tier_counts",
    )

    def __init__(self, graph: ServiceGraph | None = None, sources: tuple[int, ...] = (), *,
                 failing: tuple[str, ...] = (), most_critical_tier: int | None = None,
                 down_tier: int | None = None, business_services: tuple[str, ...] = (),
                 tier_counts: Mapping[int, int] = _NO_COUNTS, severity: str | None = None,
                 down_total: int = 0, degraded_total: int = 0,
                 blame: Mapping[int, tuple[int, ...]] | None = None,
                 walk: _Walk | None = None,
                 buckets: Mapping[tuple[int, bool], int] | None = None) -> None:
        self._graph = graph
        self._sources = sources
        self._blame: Mapping[int, tuple[int, ...]] = blame or {}
        self._walk = walk
        self._impacted: tuple[ImpactedService, ...] | None = None
        # How many impacted services each (tier, down?) holds, and the nearest found so far.
        self._buckets: Mapping[tuple[int, bool], int] = buckets or {}
        self._nearest: dict[tuple[int, bool], list[int]] = {}
        # A presentation of this impact built once by its user (the engine's page summary):
        # impacts are cached per failing set, so alerts on one service share it.
        self.summary: Mapping[str, Any] | None = None
        self.failing = failing
        self.most_critical_tier = most_critical_tier
        # The most critical tier among the failing and down services (degraded ones aside).
        self.down_tier = down_tier
        self.business_services = business_services
        self.tier_counts = tier_counts
        self.severity = severity
        self.down_total = down_total
        self.degraded_total = degraded_total
        self.root_causes: tuple[RootCause, ...] = ()

    @property
    def impacted_total(self) -> int:
        """How many services (other than the failing ones) are down or degraded."""
        return self.down_total + self.degraded_total

    def top(self, limit: int, state: str | None = None) -> tuple[ImpactedService, ...]:
        """At most `limit` impacted services (of one `state` if given), most critical first:
        by tier, down before degraded, then nearest first."""
        if self._graph is None or limit <= 0:
            return ()
        return self._graph._top(self, limit, state)

    @property
    def impacted(self) -> tuple[ImpactedService, ...]:
        """Every impacted service, most critical first (built on first use)."""
        if self._impacted is None:
            self._impacted = self.top(self.impacted_total)
        return self._impacted

    @property
    def down(self) -> tuple[ImpactedService, ...]:
        """The impacted services that are down."""
        return tuple(s for s in self.impacted if s.state == DOWN)

    def blame(self, service: str) -> tuple[str, ...]:
        """For a failing service, the chain of failing dependencies down to its root cause."""
        if self._graph is None:
            return (service,)
        index = self._graph._index.position.get(service)
        if index is None:
            return (service,)
        return self._graph._names(self._graph._blame_chain(self._blame, index))


def severity_rank(severity: str) -> int:
    """Position of a PagerDuty severity, info lowest."""
    return SEVERITIES.index(severity)


def higher(a: str | None, b: str | None) -> str | None:
    """The more severe of two severities (None counts as lowest)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if severity_rank(a) >= severity_rank(b) else b


def lower_by_one(severity: str) -> str:
    """One step less severe, bottoming out at info."""
    return SEVERITIES[max(0, severity_rank(severity) - 1)]


@dataclass(frozen=True, slots=True)
class _Bits:
    """Reverse reachability as bitsets (bit i = service i): who is hit when a service fails."""

    reach: tuple[int, ...]
    reach_hard: tuple[int, ...]
    # Forward reachability: every service a service depends on, directly or not.
    needs: tuple[int, ...]
    tiers: Mapping[int, int]
    business: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class _Index:
    """The map as integer-indexed adjacency lists, precomputed once per load for fast queries."""

    names: tuple[str, ...]
    position: Mapping[str, int]
    tiers: tuple[int, ...]
    business: tuple[str | None, ...]
    tier_sets: Mapping[int, frozenset[int]]
    business_sets: tuple[tuple[str, frozenset[int]], ...]
    hard_dependents: tuple[tuple[int, ...], ...]
    soft_dependents: tuple[tuple[int, ...], ...]
    all_dependents: tuple[tuple[int, ...], ...]
    hard_dependencies: tuple[tuple[int, ...], ...]
    dependencies: tuple[tuple[int, ...], ...]
    component: tuple[int, ...]
    bits: _Bits | None


_CACHE_LIMIT = 4096
# Beyond BITSET_LIMIT a connected set is walked and kept; each may hold most of the map.
_RELATED_CACHE_LIMIT = 64


class Related:
    """The services connected to one service, as a bitset over the map (or a set of names
    on maps too big for bitsets): membership and size without building a set of names."""

    __slots__ = ("_index", "_mask", "_names")

    def __init__(self, index: _Index, mask: int, names: frozenset[str] | None = None
                 ) -> None:
        self._index = index
        self._mask = mask
        self._names = names

    def __contains__(self, name: object) -> bool:
        if self._names is not None:
            return name in self._names
        position = self._index.position.get(name) if isinstance(name, str) else None
        return position is not None and bool(self._mask >> position & 1)

    def __len__(self) -> int:
        return len(self._names) if self._names is not None else self._mask.bit_count()

    def __iter__(self) -> Iterator[str]:
        if self._names is not None:
            yield from self._names
            return
        yield from self.among(-1)

    def among(self, mask: int) -> Iterator[str]:
        """The connected services whose bit is set in `mask` (from `ServiceGraph.mask`),
        visiting only those."""
        mask, names = self._mask & mask, self._index.names
        while mask:
            low = mask & -mask
            yield names[low.bit_length() - 1]
            mask ^= low


@dataclass(frozen=True)
class ServiceGraph:
    """An immutable, validated dependency map with its networkx graph.

    The map changes rarely and alerts arrive often, so what an impact query needs is
    precomputed when the map is built: integer adjacency lists, cycles (strongly connected
    components) and, for maps up to BITSET_LIMIT services, every service's reverse
    reachability as a bitset, which turns a query's totals into a few big-integer operations.
    Results are cached per failing set.
    """

    services: Mapping[str, Service]
    aliases: Mapping[str, str]
    graph: nx.DiGraph
    tier_severity: Mapping[int, str] = field(default_factory=lambda: DEFAULT_TIER_SEVERITY)
    cycles: tuple[tuple[str, ...], ...] = ()
    _index: _Index = field(default_factory=lambda: _build_index({}), repr=False,
                           compare=False)
    _related: dict[str, frozenset[str]] = field(default_factory=dict, repr=False,
                                                compare=False)
    _cache: dict[tuple[int, ...], Impact] = field(default_factory=dict, repr=False,
                                                 compare=False)

    def resolve(self, name: str) -> Service | None:
        """The service called `name` directly or through an alias."""
        service = self.services.get(name)
        if service is None:
            canonical = self.aliases.get(name)
            service = self.services.get(canonical) if canonical else None
        return service

    def closest(self, name: str) -> str | None:
        """The service name or alias most like `name`, for a "did you mean"; None if none is."""
        found = difflib.get_close_matches(name, sorted({*self.services, *self.aliases}), n=1)
        return found[0] if found else None

    def dependencies(self, names: Iterable[str]) -> dict[str, str]:
        """Everything `names` (or their aliases) depend on, directly or not, along hard and
        soft edges, each mapped to the one of `names` it is nearest to; `names` themselves
        are left out, unknown names ignored."""
        idx = self._index
        # Breadth first from all of `names` at once: each dependency keeps the first (so
        # nearest; on a tie, the earliest-named) service that reached it.
        origin: dict[int, int] = {}
        for name in names:
            service = self.resolve(name)
            if service is not None:
                origin.setdefault(idx.position[service.name], idx.position[service.name])
        starts = set(origin)
        queue = deque(origin)
        while queue:
            node = queue.popleft()
            for dependency in idx.dependencies[node]:
                if dependency not in origin:
                    origin[dependency] = origin[node]
                    queue.append(dependency)
        return {idx.names[node]: idx.names[source] for node, source in origin.items()
                if node not in starts}

    def impact(self, failing: Iterable[str]) -> Impact:
        """Union of the blast radii of `failing`, with business impact, implied severity and
        probable root causes. Unknown names are ignored."""
        position = self._index.position
        sources = tuple(sorted({position[n] for n in failing if n in position}))
        cached = self._cache.get(sources)
        if cached is None:
            cached = self._impact(sources)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[sources] = cached
        return cached

    def affects(self, cause: str, other: str) -> bool:
        """Whether a failure of `cause` reaches `other`: `other` is `cause` or depends on it,
        directly or not, along hard or soft edges. Unknown names affect nothing."""
        idx = self._index
        a, b = idx.position.get(cause), idx.position.get(other)
        if a is None or b is None:
            return False
        if a == b:
            return True
        if idx.bits is not None:
            return bool(idx.bits.reach[a] >> b & 1)
        seen = {a}
        work = [a]
        while work:
            for dependent in idx.all_dependents[work.pop()]:
                if dependent == b:
                    return True
                if dependent not in seen:
                    seen.add(dependent)
                    work.append(dependent)
        return False

    def related(self, name: str) -> Related:
        """Every service connected to `name`: what it depends on and what depends on it,
        directly or not, and itself; empty for an unknown name. From the bitsets when the
        map has them (no memory kept per query), else walked and cached."""
        idx = self._index
        start = idx.position.get(name)
        if start is None:
            return Related(idx, 0)
        if idx.bits is not None:
            bits = idx.bits
            return Related(idx, bits.reach[start] | bits.needs[start] | 1 << start)
        found = self._related.get(name)
        if found is None:
            nodes = {start}
            for neighbours in (idx.dependencies, idx.all_dependents):
                seen = {start}
                work = [start]
                while work:
                    for other in neighbours[work.pop()]:
                        if other not in seen:
                            seen.add(other)
                            work.append(other)
                nodes |= seen
            found = frozenset(idx.names[n] for n in nodes)
            if len(self._related) >= _RELATED_CACHE_LIMIT:
                self._related.clear()
            self._related[name] = found
        return Related(idx, 0, found)

    def mask(self, names: Iterable[str]) -> int | None:
        """`names` as a bitset over the map, unknown names left out; None for a map
        without bitsets (`Related.among` takes it)."""
        if self._index.bits is None:
            return None
        position = self._index.position
        mask = 0
        for name in names:
            if (at := position.get(name)) is not None:
                mask |= 1 << at
        return mask

    def connected(self, a: str, b: str) -> bool:
        """Whether one of two services depends on the other: failing together, they are one
        fire."""
        return self.affects(a, b) or self.affects(b, a)

    def _names(self, nodes: Iterable[int]) -> tuple[str, ...]:
        names = self._index.names
        return tuple(names[i] for i in nodes)

    # -- totals ----------------------------------------------------------------------------

    def _impact(self, sources: tuple[int, ...]) -> Impact:
        if not sources:
            return Impact()
        idx = self._index
        blame = self._find_blame(sources)
        walk: _Walk | None = None
        if idx.bits is not None:
            down_counts, degraded_counts, hit = self._count_bits(sources)
        else:
            walk = self._walk(sources)
            down_counts, degraded_counts, hit = self._count_walk(sources, walk)
        severity: str | None = None
        counts: dict[int, int] = {}
        for tier in (1, 2, 3, 4):
            if down_counts[tier]:
                severity = higher(severity, self.tier_severity[tier])
            if degraded_counts[tier]:
                severity = higher(severity, lower_by_one(self.tier_severity[tier]))
            if down_counts[tier] + degraded_counts[tier]:
                counts[tier] = down_counts[tier] + degraded_counts[tier]
        failing_tiers = [idx.tiers[node] for node in sources]
        buckets = {}
        for tier in (1, 2, 3, 4):
            buckets[(tier, True)] = down_counts[tier] - failing_tiers.count(tier)
            buckets[(tier, False)] = degraded_counts[tier]
        impact = Impact(
            self, sources,
            failing=tuple(sorted(self._names(sources))),
            most_critical_tier=min(counts),
            down_tier=min(t for t in (1, 2, 3, 4) if down_counts[t]),
            business_services=tuple(sorted(hit)),
            tier_counts=MappingProxyType(counts),
            severity=severity,
            down_total=sum(down_counts) - len(sources),
            degraded_total=sum(degraded_counts),
            blame=blame,
            walk=walk,
            buckets=buckets,
        )
        impact.root_causes = self._rank_roots(sources, blame, impact)
        return impact

    def _count_bits(self, sources: tuple[int, ...]) -> tuple[list[int], list[int], set[str]]:
        """Per-tier counts of failing-or-down and of degraded services, and business hit."""
        bits = self._index.bits
        assert bits is not None
        failing = reach = reach_hard = 0
        for node in sources:
            failing |= 1 << node
            reach |= bits.reach[node]
            reach_hard |= bits.reach_hard[node]
        down = reach_hard | failing
        degraded = reach & ~down
        hit_mask = down | degraded
        down_counts = [0] * 5
        degraded_counts = [0] * 5
        for tier, mask in bits.tiers.items():
            down_counts[tier] = (down & mask).bit_count()
            degraded_counts[tier] = (degraded & mask).bit_count()
        hit = {name for name, mask in bits.business if hit_mask & mask}
        return down_counts, degraded_counts, hit

    def _walk(self, sources: tuple[int, ...]) -> _Walk:
        """Breadth-first walk against the edges, a level at a time with set operations: down
        through hard edges only, then degraded through whatever else reaches further."""
        idx = self._index
        hard, soft, every = idx.hard_dependents, idx.soft_dependents, idx.all_dependents
        seen = set(sources)
        down: list[set[int]] = [set(sources)]
        while True:
            reached: set[int] = set()
            for node in down[-1]:
                reached.update(hard[node])
            reached -= seen
            if not reached:
                break
            seen |= reached
            down.append(reached)
        degraded: list[set[int]] = [set()]
        level = 0
        while level < len(down) or degraded[-1]:
            reached = set()
            # From a down service only soft edges lead anywhere new; from a degraded one, all.
            for node in down[level] if level < len(down) else ():
                reached.update(soft[node])
            for node in degraded[-1]:
                reached.update(every[node])
            reached -= seen
            seen |= reached
            degraded.append(reached)
            level += 1
        while degraded and not degraded[-1]:
            degraded.pop()
        return _Walk(down, degraded)

    def _count_walk(self, sources: tuple[int, ...], walk: _Walk
                    ) -> tuple[list[int], list[int], set[str]]:
        idx = self._index
        down = set().union(*walk.down)
        degraded = set().union(*walk.degraded)
        down_counts = [0] * 5
        degraded_counts = [0] * 5
        for tier, members in idx.tier_sets.items():
            down_counts[tier] = len(down & members)
            degraded_counts[tier] = len(degraded & members)
        hit = {name for name, members in idx.business_sets
               if not (members.isdisjoint(down) and members.isdisjoint(degraded))}
        return down_counts, degraded_counts, hit

    # -- the services themselves -----------------------------------------------------------

    def _top(self, impact: Impact, limit: int, state: str | None) -> tuple[ImpactedService, ...]:
        found: list[ImpactedService] = []
        is_down_set = self._down_test(impact)
        for tier in (1, 2, 3, 4):
            for is_down in (True, False):
                wanted = limit - len(found)
                if (state is not None and is_down != (state == DOWN)) or wanted <= 0:
                    continue
                found.extend(self._describe(impact, node, is_down) for node in
                             self._nearest(impact, tier, is_down, wanted, is_down_set))
        return tuple(found)

    def _down_test(self, impact: Impact) -> Callable[[int], bool]:
        """Whether a service is down (failing services included), for this impact."""
        bits = self._index.bits
        if bits is not None:
            down = 0
            for node in impact._sources:
                down |= bits.reach_hard[node] | 1 << node
            return lambda node: bool(down >> node & 1)
        if impact._walk is None:
            impact._walk = self._walk(impact._sources)
        members = set().union(*impact._walk.down)
        return members.__contains__

    def _nearest(self, impact: Impact, tier: int, is_down: bool, wanted: int,
                 down: Callable[[int], bool]) -> list[int]:
        """The `wanted` nearest impacted services of one tier and state, nearest first and
        by name at equal distance: a breadth-first walk that stops once it has them (hard
        edges only for down services, so their distance is the hard chain's)."""
        wanted = min(wanted, impact._buckets.get((tier, is_down), wanted))
        known = impact._nearest.get((tier, is_down))
        if known is not None and len(known) >= wanted:
            return known[:wanted]
        idx = self._index
        names = idx.names
        in_tier = idx.tier_sets.get(tier, frozenset())
        adjacency = idx.hard_dependents if is_down else idx.all_dependents
        seen = set(impact._sources)
        frontier = list(impact._sources)
        found: list[int] = []
        while frontier and len(found) < wanted:
            reached: list[int] = []
            for node in frontier:
                for dependent in adjacency[node]:
                    if dependent not in seen:
                        seen.add(dependent)
                        reached.append(dependent)
            hits = [n for n in reached if n in in_tier and (is_down or not down(n))]
            found.extend(sorted(hits, key=names.__getitem__))
            frontier = reached
        impact._nearest[(tier, is_down)] = found
        return found[:wanted]

    def _describe(self, impact: Impact, node: int, is_down: bool) -> ImpactedService:
        """Describe one impacted service with its shortest chain to a failing service, found
        by walking its own dependencies (hard ones only when it is down), then on through the
        failing service's failing dependencies to the root cause."""
        idx = self._index
        failing = set(impact._sources)
        adjacency = idx.hard_dependencies if is_down else idx.dependencies
        came_from = {node: -1}
        queue = deque([node])
        end = node
        while queue:
            current = queue.popleft()
            if current in failing:
                end = current
                break
            for dependency in adjacency[current]:
                if dependency not in came_from:
                    came_from[dependency] = current
                    queue.append(dependency)
        forward = [end]
        while came_from[forward[-1]] != -1:
            forward.append(came_from[forward[-1]])
        # `forward` runs failing service -> ... -> node; the root cause goes in front.
        chain = list(reversed(self._blame_chain(impact._blame, end)))[:-1] + forward
        return ImpactedService(idx.names[node], idx.tiers[node], DOWN if is_down else DEGRADED,
                               len(forward) - 1, self._names(chain))

    # -- root causes -----------------------------------------------------------------------

    def _find_blame(self, sources: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
        """For each failing service with a failing dependency (outside its own cycle), the
        chain of dependencies to the nearest such one. Those without are root causes."""
        idx = self._index
        failing = set(sources)
        if len(failing) < 2:
            return {}
        blame: dict[int, tuple[int, ...]] = {}
        for start in sources:
            own = idx.component[start]
            came_from: dict[int, int] = {start: -1}
            queue = deque([start])
            while queue:
                node = queue.popleft()
                if node in failing and idx.component[node] != own:
                    chain = [node]
                    while came_from[chain[-1]] != -1:
                        chain.append(came_from[chain[-1]])
                    blame[start] = tuple(reversed(chain))
                    break
                for dependency in idx.dependencies[node]:
                    if dependency not in came_from:
                        came_from[dependency] = node
                        queue.append(dependency)
        return blame

    def _blame_chain(self, blame: Mapping[int, tuple[int, ...]], node: int) -> list[int]:
        """From a failing service along its blamed failing dependencies to a root cause."""
        chain = [node]
        while chain[-1] in blame:
            chain.extend(blame[chain[-1]][1:])
        return chain

    def _rank_roots(self, sources: tuple[int, ...], blame: Mapping[int, tuple[int, ...]],
                    whole: Impact) -> tuple[RootCause, ...]:
        """Root causes by what they take down: most critical tier down, then how many down,
        then what they degrade."""
        idx = self._index
        groups: dict[int, list[int]] = {}
        for node in sources:
            if node not in blame:
                groups.setdefault(idx.component[node], []).append(node)
        causes: list[RootCause] = []
        for members in groups.values():
            own = whole if len(members) == len(sources) else self.impact(self._names(members))
            causes.append(RootCause(tuple(sorted(self._names(members))),
                                    own.most_critical_tier, own.down_tier, own.down_total,
                                    own.impacted_total, own.business_services))
        # What a cause takes down weighs more than what it only degrades.
        causes.sort(key=lambda c: (c.down_tier or 99, -c.down_total, c.most_critical_tier or 99,
                                   -c.impacted_total, c.services))
        return tuple(causes)


def _components(adjacency: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components (iterative Tarjan), each emitted after every component
    it reaches: for dependency edges, dependencies come before their dependents."""
    size = len(adjacency)
    index = [-1] * size
    low = [0] * size
    on_stack = [False] * size
    stack: list[int] = []
    found: list[list[int]] = []
    counter = 0
    for root in range(size):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            recursed = False
            neighbours = adjacency[node]
            while child < len(neighbours):
                nxt = neighbours[child]
                child += 1
                if index[nxt] == -1:
                    work.append((node, child))
                    work.append((nxt, 0))
                    recursed = True
                    break
                if on_stack[nxt]:
                    low[node] = min(low[node], index[nxt])
            if recursed:
                continue
            if low[node] == index[node]:
                members: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    members.append(member)
                    if member == node:
                        break
                found.append(members)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _reachability(dependencies: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """For every service, the bitset of services that depend on it, directly or not, along
    `dependencies`; members of a cycle reach each other."""
    components = _components(dependencies)
    owner = [0] * len(dependencies)
    members = [0] * len(components)
    for number, group in enumerate(components):
        for node in group:
            owner[node] = number
            members[number] |= 1 << node
    above = [0] * len(components)
    # Dependents first: a component's `above` is complete before it is pushed further down.
    for number in range(len(components) - 1, -1, -1):
        reach = above[number] | members[number]
        for node in components[number]:
            for dependency in dependencies[node]:
                target = owner[dependency]
                if target != number:
                    above[target] |= reach
    return tuple(
        above[owner[node]] | (members[owner[node]] & ~(1 << node))
        for node in range(len(dependencies))
    )


def _group(values: Sequence[T]) -> dict[T, list[int]]:
    """The positions of each distinct value."""
    groups: dict[T, list[int]] = {}
    for position, value in enumerate(values):
        groups.setdefault(value, []).append(position)
    return groups


def _build_index(by_name: Mapping[str, Service]) -> _Index:
    names = tuple(by_name)
    position = {name: i for i, name in enumerate(names)}
    size = len(names)
    hard: list[list[int]] = [[] for _ in names]
    soft: list[list[int]] = [[] for _ in names]
    every: list[list[int]] = [[] for _ in names]
    hard_deps: list[list[int]] = [[] for _ in names]
    deps: list[list[int]] = [[] for _ in names]
    for name, service in by_name.items():
        me = position[name]
        for dep in service.depends_on:
            other = position.get(dep.service)
            if other is None or other in deps[me]:
                continue  # unknown ones are reported by the loader; the rest still works
            deps[me].append(other)
            every[other].append(me)
            if dep.kind == HARD:
                hard[other].append(me)
                hard_deps[me].append(other)
            else:
                soft[other].append(me)
    component = [0] * size
    for number, group in enumerate(_components(deps)):
        for member in group:
            component[member] = number
    tiers = tuple(by_name[n].tier for n in names)
    business = tuple(by_name[n].business_service for n in names)
    bits = None
    if 0 < size <= BITSET_LIMIT:
        tier_masks: dict[int, int] = {}
        business_masks: dict[str, int] = {}
        for node in range(size):
            tier_masks[tiers[node]] = tier_masks.get(tiers[node], 0) | 1 << node
            if (carried := business[node]) is not None:
                business_masks[carried] = business_masks.get(carried, 0) | 1 << node
        bits = _Bits(
            reach=_reachability(deps), reach_hard=_reachability(hard_deps),
            needs=_reachability(every),
            tiers=MappingProxyType(tier_masks), business=tuple(sorted(business_masks.items())),
        )
    return _Index(
        names=names, position=MappingProxyType(position), tiers=tiers, business=business,
        tier_sets=MappingProxyType({t: frozenset(m) for t, m in _group(tiers).items()}),
        business_sets=tuple(sorted(
            (name, frozenset(m)) for name, m in _group(business).items() if name is not None
        )),
        hard_dependents=tuple(map(tuple, hard)), soft_dependents=tuple(map(tuple, soft)),
        all_dependents=tuple(map(tuple, every)), hard_dependencies=tuple(map(tuple, hard_deps)),
        dependencies=tuple(map(tuple, deps)), component=tuple(component), bits=bits,
    )


def build_graph(services: Iterable[Service], tier_severity: Mapping[int, str] | None = None
                ) -> ServiceGraph:
    """Build the immutable map from validated services (dependencies on unknown services are
    left out: the loader reports them)."""
    by_name = {s.name: s for s in services}
    graph = nx.DiGraph()
    graph.add_nodes_from(by_name)
    aliases: dict[str, str] = {}
    for service in by_name.values():
        for dep in service.depends_on:
            if dep.service in by_name:
                graph.add_edge(service.name, dep.service, kind=dep.kind)
        for alias in service.aliases:
            aliases[alias] = service.name
    index = _build_index(by_name)
    groups: dict[int, list[str]] = {}
    for node, number in enumerate(index.component):
        groups.setdefault(number, []).append(index.names[node])
    cycles = tuple(sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1))
    return ServiceGraph(
        services=MappingProxyType(by_name),
        aliases=MappingProxyType(aliases),
        graph=graph,
        tier_severity=MappingProxyType(dict(tier_severity or DEFAULT_TIER_SEVERITY)),
        cycles=cycles,
        _index=index,
    )
