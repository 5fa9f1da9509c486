"""The native YAML map format: `services:` with tier, component, owners, depends_on…"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from daemon.errors import Problem, did_you_mean
from daemon.graph import HARD, OWNER_ROLES, SOFT, Dependency, Service
from daemon.maps.found import BAD_NAME, SERVICE_NAME, Definition, Found, Mention
from daemon.yamlsrc import LocatedDict, LocatedList, shown

_SERVICE_KEYS = frozenset(
    {"tier", "business_service", "component", "description", "owners", "aliases", "depends_on"}
)


def source_line(service: Service) -> int:
    """The line a service is defined at (0 when unknown)."""
    return int(service.source.rsplit(":", 1)[1]) if ":" in service.source else 0


def read_native(doc: Any, file: str, found: Found) -> None:
    """Add the services of one native map document to `found`, with the names they write."""
    for service in _parse_native(doc, file, found.problems, found.defined):
        _record(service, file, found)


def _record(service: Service, file: str, found: Found) -> None:
    where = f"services.{service.name}"
    line = source_line(service)
    found.definitions.append(Definition(service, where, f"{where}.depends_on"))

    def mention(key: str, name: str) -> Mention:
        return Mention(name, file, service.lines.get(key, line), f"{where}.{key}", name)

    for index, dep in enumerate(service.depends_on):
        found.services.append(mention(f"depends_on[{index}]", dep.service))
    for index, alias in enumerate(service.aliases):
        found.aliases.append((service.name, mention(f"aliases[{index}]", alias)))
    for role, target in service.owners.items():
        found.targets.append(mention(f"owners.{role}", target))


def _parse_native(
    doc: Any, file: str, problems: list[Problem], defined: set[str]
) -> list[Service]:
    if doc is None:
        return []
    if not isinstance(doc, LocatedDict):
        problems.append(Problem(file, getattr(doc, "line", 0), "", "a map must be a mapping "
                                "with a 'services' key"))
        return []
    for key in doc:
        if key != "services":
            problems.append(Problem(file, doc.line_of(key), key, "unknown key"
                                    + did_you_mean(str(key), ("services",)), shown(key)))
    raw = doc.get("services")
    if raw is None:
        return []
    if not isinstance(raw, LocatedDict):
        problems.append(Problem(file, doc.line_of("services"), "services",
                                "must be a mapping of service name to service"))
        return []
    result: list[Service] = []
    for name, body in raw.items():
        defined.add(name)
        service = _parse_service(name, body, file, raw.line_of(name), problems)
        if service is not None:
            result.append(service)
    return result


def _parse_service(
    name: str, body: Any, file: str, line: int, problems: list[Problem]
) -> Service | None:
    where = f"services.{name}"
    count = len(problems)

    def bad(key: str, message: str, value: Any = "", at: int | None = None) -> None:
        path = f"{where}.{key}" if key else where
        problems.append(
            Problem(file, at or line, path, message, shown(value) if value != "" else "")
        )

    if not SERVICE_NAME.match(name):
        bad("", BAD_NAME, name)
    if not isinstance(body, LocatedDict):
        bad("", "must be a mapping with at least 'tier', 'component' and 'owners'")
        return None
    for key in body:
        if key not in _SERVICE_KEYS:
            bad(key, "unknown key" + did_you_mean(str(key), _SERVICE_KEYS), key,
                body.line_of(key))
    tier = body.get("tier")
    if "tier" not in body:
        bad("tier", "missing (1 = most critical … 4)")
    elif isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 4:
        bad("tier", "must be an integer from 1 (most critical) to 4", tier, body.line_of("tier"))
    component = body.get("component")
    if not isinstance(component, str) or not component:
        bad("component", "missing or not a string (application, dbms, storage, network, …)",
            component if component is not None else "", body.line_of("component"))
    business = body.get("business_service")
    if business is not None and (not isinstance(business, str) or not business):
        bad("business_service", "must be a non-empty string", business,
            body.line_of("business_service"))
    description = body.get("description", "")
    if not isinstance(description, str):
        bad("description", "must be a string", description, body.line_of("description"))
    owners = _parse_owners(body, bad)
    aliases = _parse_names(body, "aliases", bad)
    depends = _parse_depends(body, bad, name)
    if len(problems) != count or not isinstance(tier, int) or not isinstance(component, str):
        return None
    return Service(
        name=name, tier=tier, component=component, owners=MappingProxyType(owners),
        business_service=business, description=description, aliases=tuple(aliases),
        depends_on=tuple(depends), source=f"{file}:{line}",
        lines=MappingProxyType(_item_lines(body)),
    )


def _item_lines(body: LocatedDict) -> dict[str, int]:
    lines: dict[str, int] = {}
    owners = body.get("owners")
    if isinstance(owners, LocatedDict):
        lines.update({f"owners.{role}": owners.line_of(role) for role in owners})
    for key in ("aliases", "depends_on"):
        items = body.get(key)
        if isinstance(items, LocatedList):
            lines.update({f"{key}[{index}]": items.line_of(index) for index in range(len(items))})
    return lines


def _parse_owners(body: LocatedDict, bad: Any) -> dict[str, str]:
    raw = body.get("owners")
    if raw is None:
        bad("owners", "missing: at least owners.technical_lead is required")
        return {}
    if not isinstance(raw, LocatedDict):
        bad("owners", "must be a mapping of role to PagerDuty target", raw, body.line_of("owners"))
        return {}
    owners: dict[str, str] = {}
    for role, target in raw.items():
        if role not in OWNER_ROLES:
            bad(f"owners.{role}", f"unknown role (expected one of {', '.join(OWNER_ROLES)})",
                role, raw.line_of(role))
        elif not isinstance(target, str) or not target:
            bad(f"owners.{role}", "must be a target name", target, raw.line_of(role))
        else:
            owners[role] = target
    if "technical_lead" not in raw:
        bad("owners.technical_lead", "missing: every service needs a technical lead", "",
            body.line_of("owners"))
    return owners


def _parse_names(body: LocatedDict, key: str, bad: Any) -> list[str]:
    raw = body.get(key)
    if raw is None:
        return []
    if not isinstance(raw, LocatedList):
        bad(key, "must be a list of names", raw, body.line_of(key))
        return []
    names: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item:
            bad(f"{key}[{index}]", "must be a non-empty string", item, raw.line_of(index))
        else:
            names.append(item)
    return names


def _parse_depends(body: LocatedDict, bad: Any, name: str) -> list[Dependency]:
    raw = body.get("depends_on")
    if raw is None:
        return []
    if not isinstance(raw, LocatedList):
        bad("depends_on", "must be a list", raw, body.line_of("depends_on"))
        return []
    deps: list[Dependency] = []
    for index, item in enumerate(raw):
        at = raw.line_of(index)
        key = f"depends_on[{index}]"
        if isinstance(item, str) and item:
            deps.append(Dependency(item, HARD))
        elif isinstance(item, LocatedDict):
            for extra in item:
                if extra not in ("service", "kind"):
                    bad(f"{key}.{extra}", "unknown key"
                        + did_you_mean(str(extra), ("service", "kind")), extra,
                        item.line_of(extra))
            target = item.get("service")
            kind = item.get("kind", HARD)
            if not isinstance(target, str) or not target:
                bad(f"{key}.service", "missing or not a service name", target or "",
                    item.line_of("service"))
            elif kind not in (HARD, SOFT):
                bad(f"{key}.kind", "must be 'hard' or 'soft'", kind, item.line_of("kind"))
            else:
                deps.append(Dependency(target, kind))
        else:
            bad(key, "must be a service name or {service: NAME, kind: hard|soft}", item, at)
            continue
        if len(deps) > len({d.service for d in deps}):
            bad(key, "lists a dependency already listed (give each once, hard or soft)",
                deps.pop().service, at)
        elif deps and deps[-1].service == name:
            bad(key, "a service cannot depend on itself", deps.pop().service, at)
    return deps


