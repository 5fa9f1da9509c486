"""Backstage catalog files: Component, Resource and API entities as services, relations as edges.

Firehouse reads only what it needs of the Backstage schema; the many other keys of a catalog
file are left alone, while what it reads is checked as strictly as the native format. The
entities of every file are resolved together, because a relation may name an entity of
another file, and `providesApis`, `dependencyOf` and `subcomponentOf` give the *other*
entity the dependency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from daemon.errors import Problem
from daemon.graph import HARD, OWNER_ROLES, SOFT, Dependency, Service
from daemon.maps.found import BAD_NAME, SERVICE_NAME, Definition, Found, Mention
from daemon.yamlsrc import LocatedDict, LocatedList, shown

API_VERSIONS = ("backstage.io/v1alpha1", "backstage.io/v1beta1")
SERVICE_KINDS = ("Component", "Resource", "API")
# The kinds a relation may name: the ones that are services.
_REF_KINDS = frozenset({"component", "resource", "api"})
ANNOTATION_PREFIX = "firehouse.io/"
ANNOTATIONS = (
    "tier", "component", "business-service", "technical-lead", "service-lead", "aliases",
    "soft-dependencies",
)
LIFECYCLE_TIERS: Mapping[str, int] = MappingProxyType(
    {"production": 2, "experimental": 4, "deprecated": 4}
)
OTHER_LIFECYCLE_TIER = 3
RESOURCE_COMPONENTS: Mapping[str, str] = MappingProxyType({
    "database": "dbms",
    "storage": "storage", "s3-bucket": "storage", "bucket": "storage",
    "queue": "messaging", "topic": "messaging", "kafka-topic": "messaging",
    "cache": "cache", "redis": "cache",
})
# Relations under `spec`, and whether the entity is the dependent (True) or the dependency.
_RELATIONS = (
    ("dependsOn", True), ("consumesApis", True),
    ("providesApis", False), ("dependencyOf", False), ("subcomponentOf", False),
)
_REF = re.compile(r"^(?:([A-Za-z][A-Za-z0-9]*):)?(?:([^:/]+)/)?([^:/]+)$")
_BAD_REF = "must be an entity ref such as name, component:name or resource:default/name"


def is_entity(doc: Any) -> bool:
    """Whether a YAML document is a Backstage entity (it has an apiVersion), not a native map."""
    return isinstance(doc, LocatedDict) and "apiVersion" in doc


def owner_key(ref: str) -> str | None:
    """The settings key of an owner ref: `group:default/team-a` is `team-a`, `user:guest` stays."""
    parsed = _parse_ref(ref, "default")
    if parsed is None:
        return None
    kind, name = parsed
    return name if kind in ("", "group") else f"{kind}:{name}"


def _parse_ref(text: str, namespace: str) -> tuple[str, str] | None:
    """(lower-case kind or "", service name) of `[kind:][namespace/]name`; None when invalid."""
    match = _REF.match(text)
    if match is None:
        return None
    kind, ref_namespace, name = match.groups()
    ref_namespace = ref_namespace or namespace
    if not SERVICE_NAME.match(name) or not SERVICE_NAME.match(ref_namespace):
        return None
    return (kind or "").lower(), name if ref_namespace == "default" else f"{ref_namespace}/{name}"


@dataclass(frozen=True, slots=True)
class _Entity:
    """A Component, Resource or API whose envelope is valid, waiting for the others."""

    kind: str
    name: str
    namespace: str
    file: str
    line: int
    metadata: LocatedDict
    spec: LocatedDict
    # Short annotation name (`tier`) -> (value, line); only firehouse.io/ ones.
    annotations: Mapping[str, tuple[str, int]]

    @property
    def where(self) -> str:
        """The key path prefix of this entity in problems: `Component:wayback-search`."""
        return f"{self.kind}:{self.name}"

    def mention(self, name: str, line: int, key: str, written: str) -> Mention:
        """A name written at `key` (under this entity) on `line`."""
        return Mention(name, self.file, line, f"{self.where}.{key}", written)

    def problem(self, found: Found, key: str, message: str, value: Any = "",
                line: int | None = None) -> None:
        """Record a problem at `key` under this entity."""
        path = f"{self.where}.{key}" if key else self.where
        found.problems.append(Problem(self.file, self.line if line is None else line, path,
                                      message, shown(value) if value != "" else ""))


class Catalog:
    """The Backstage entities of every map file, made services once all are read."""

    def __init__(self) -> None:
        self._entities: list[_Entity] = []

    def add(self, doc: LocatedDict, file: str, found: Found) -> None:
        """Take one entity document; kinds other than Component, Resource and API are skipped."""
        version = doc.get("apiVersion")
        kind = doc.get("kind")
        if not isinstance(version, str) or "backstage.io/" not in version:
            found.problems.append(Problem(
                file, doc.line_of("apiVersion"), "apiVersion", "not a Backstage entity: "
                f"expected {API_VERSIONS[0]} (a native map has 'services' instead)",
                shown(version),
            ))
            return
        if not isinstance(kind, str) or not kind:
            found.problems.append(Problem(file, doc.line_of("kind"), "kind",
                                          "missing: the entity's kind", shown(kind or "")))
            return
        if kind not in SERVICE_KINDS:
            _refuse_annotations(doc, kind, file, found)
            return
        if version not in API_VERSIONS:
            found.problems.append(Problem(file, doc.line_of("apiVersion"), "apiVersion",
                                          f"must be {' or '.join(API_VERSIONS)}", shown(version)))
            return
        metadata = doc.get("metadata")
        if not isinstance(metadata, LocatedDict):
            found.problems.append(Problem(file, doc.line_of("metadata"), f"{kind}.metadata",
                                          "missing or not a mapping with a name"))
            return
        namespace = metadata.get("namespace", "default")
        name = metadata.get("name")
        if not isinstance(name, str) or not SERVICE_NAME.match(name):
            found.problems.append(Problem(file, metadata.line_of("name"), f"{kind}.metadata.name",
                                          f"missing or {BAD_NAME}", shown(name)))
            return
        if not isinstance(namespace, str) or not SERVICE_NAME.match(namespace):
            found.problems.append(Problem(file, metadata.line_of("namespace"),
                                          f"{kind}:{name}.metadata.namespace",
                                          "must be a namespace name", shown(namespace)))
            return
        service = name if namespace == "default" else f"{namespace}/{name}"
        found.defined.add(service)
        spec = doc.get("spec")
        if spec is None:
            spec = LocatedDict()
            spec.line, spec.key_lines = doc.line, {}
        elif not isinstance(spec, LocatedDict):
            found.problems.append(Problem(file, doc.line_of("spec"), f"{kind}:{service}.spec",
                                          "must be a mapping", shown(spec)))
            return
        entity = _Entity(kind, service, namespace, file, doc.line, metadata, spec,
                         MappingProxyType({}))
        self._entities.append(replace(entity, annotations=_annotations(entity, found)))

    def resolve(self, owners: Mapping[str, Mapping[str, str]], found: Found) -> None:
        """Define a service per entity, add the relations as edges; call once all are read."""
        relations: list[tuple[str, str]] = []
        self_provided: set[str] = set()
        for entity in self._entities:
            for key, outward in _RELATIONS:
                for ref in _refs(entity, key, found):
                    if key == "providesApis" and ref.name == entity.name:
                        # Backstage names an API like the component providing it (the API
                        # `wayback-archive` of the component `wayback-archive`): one service.
                        self_provided.add(entity.name)
                        continue
                    found.services.append(ref)
                    pair = (entity.name, ref.name) if outward else (ref.name, entity.name)
                    relations.append(pair)
        entities = [e for e in self._entities
                    if not (e.kind == "API" and e.name in self_provided)]
        soft = {e.name: _soft_dependencies(e, relations, found) for e in entities}
        for dependent, dependency in relations:
            kind = SOFT if dependency in soft.get(dependent, ()) else HARD
            found.edges.append((dependent, Dependency(dependency, kind)))
        for entity in entities:
            service = _service(entity, owners, found)
            if service is not None:
                found.definitions.append(Definition(service, entity.where, f"{entity.where}.spec"))


def _refuse_annotations(doc: LocatedDict, kind: str, file: str, found: Found) -> None:
    """A firehouse.io/ annotation on a kind that is no service would silently do nothing."""
    metadata = doc.get("metadata")
    if not isinstance(metadata, LocatedDict):
        return
    annotations = metadata.get("annotations")
    if not isinstance(annotations, LocatedDict):
        return
    name = metadata.get("name")
    for key in annotations:
        if key.startswith(ANNOTATION_PREFIX):
            found.problems.append(Problem(
                file, annotations.line_of(key), f"{kind}:{name}.metadata.annotations.{key}",
                "Firehouse reads its annotations only on Component, Resource and API "
                "entities", shown(key),
            ))


def _annotations(entity: _Entity, found: Found) -> Mapping[str, tuple[str, int]]:
    """The entity's firehouse.io/ annotations, each known and a non-empty string."""
    raw = entity.metadata.get("annotations")
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, LocatedDict):
        entity.problem(found, "metadata.annotations", "must be a mapping", raw,
                       entity.metadata.line_of("annotations"))
        return MappingProxyType({})
    annotations: dict[str, tuple[str, int]] = {}
    for key, value in raw.items():
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        short = key.removeprefix(ANNOTATION_PREFIX)
        path = f"metadata.annotations.{key}"
        if short not in ANNOTATIONS:
            known = ", ".join(ANNOTATION_PREFIX + a for a in ANNOTATIONS)
            entity.problem(found, path, f"unknown annotation (expected one of {known})", key,
                           raw.line_of(key))
        elif not isinstance(value, str) or not value.strip():
            entity.problem(found, path, "must be a non-empty string", value, raw.line_of(key))
        else:
            annotations[short] = (value.strip(), raw.line_of(key))
    return MappingProxyType(annotations)


def _refs(entity: _Entity, key: str, found: Found) -> list[Mention]:
    """The services the relation `key` names, each located; bad refs become problems."""
    raw = entity.spec.get(key)
    if raw is None:
        return []
    path = f"spec.{key}"
    if key == "subcomponentOf":
        items: list[tuple[Any, str, int]] = [(raw, path, entity.spec.line_of(key))]
    elif isinstance(raw, LocatedList):
        items = [(item, f"{path}[{i}]", raw.line_of(i)) for i, item in enumerate(raw)]
    else:
        entity.problem(found, path, "must be a list of entity refs", raw,
                       entity.spec.line_of(key))
        return []
    refs: list[Mention] = []
    for item, item_path, line in items:
        parsed = _parse_ref(item, entity.namespace) if isinstance(item, str) else None
        if parsed is None:
            entity.problem(found, item_path, _BAD_REF, item, line)
        elif parsed[0] and parsed[0] not in _REF_KINDS:
            entity.problem(found, item_path, f"names a {parsed[0]}, which is no service (only "
                           "components, resources and APIs are)", item, line)
        else:
            refs.append(entity.mention(parsed[1], line, item_path, item))
    return refs


def _names(entity: _Entity, short: str, found: Found, *, refs: bool) -> list[Mention]:
    """The comma-separated names (or entity refs) of an annotation, each checked and located."""
    if short not in entity.annotations:
        return []
    text, line = entity.annotations[short]
    key = f"metadata.annotations.{ANNOTATION_PREFIX}{short}"
    names: list[Mention] = []
    for item in (part.strip() for part in text.split(",")):
        if refs:
            parsed = _parse_ref(item, entity.namespace)
            name = parsed[1] if parsed is not None else None
        else:
            name = item if SERVICE_NAME.match(item) else None
        if name is None:
            what = "entity refs" if refs else "names"
            entity.problem(found, key, f"must be a comma-separated list of {what}", text, line)
            return []
        names.append(entity.mention(name, line, key, item))
    return names


def _soft_dependencies(entity: _Entity, relations: list[tuple[str, str]], found: Found
                       ) -> set[str]:
    """The names in firehouse.io/soft-dependencies; each must be a dependency of the entity."""
    mine = {dependency for dependent, dependency in relations if dependent == entity.name}
    soft: set[str] = set()
    for mention in _names(entity, "soft-dependencies", found, refs=True):
        if mention.name in mine:
            soft.add(mention.name)
        elif not found.unread:
            # The relation making it a dependency may be another file's: with a file
            # unread, this waits for the checks between files (see `load_maps`).
            found.problems.append(Problem(
                mention.file, mention.line, mention.path, "names no dependency of this entity "
                "(dependsOn, consumesApis, or a relation naming it)", shown(mention.written),
            ))
    return soft


def _text(entity: _Entity, key: str, found: Found) -> str | None:
    """A string under `spec` that Firehouse reads (None when absent or wrong)."""
    value = entity.spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        entity.problem(found, f"spec.{key}", "must be a non-empty string", value,
                       entity.spec.line_of(key))
        return None
    return value


def _service(entity: _Entity, owners: Mapping[str, Mapping[str, str]], found: Found
             ) -> Service | None:
    """The service of one entity, or None when something Firehouse reads is wrong."""
    count = len(found.problems)
    annotations = entity.annotations
    tier = _tier(entity, found)
    component = annotations.get("component", ("", 0))[0] or _component(entity, found)
    business = annotations.get("business-service", ("", 0))[0] or None
    system = _text(entity, "system", found)
    if business is None and system is not None:
        parsed = _parse_ref(system, entity.namespace)
        if parsed is None:
            entity.problem(found, "spec.system", _BAD_REF, system, entity.spec.line_of("system"))
        else:
            business = parsed[1]
    description = entity.metadata.get("description", "")
    if not isinstance(description, str):
        entity.problem(found, "metadata.description", "must be a string", description,
                       entity.metadata.line_of("description"))
    leads = _owners(entity, owners, found)
    aliases = _names(entity, "aliases", found, refs=False)
    if len(found.problems) != count or tier is None or component is None:
        return None
    found.aliases.extend((entity.name, alias) for alias in aliases)
    return Service(
        name=entity.name, tier=tier, component=component, owners=MappingProxyType(leads),
        business_service=business, description=description if isinstance(description, str)
        else "", aliases=tuple(a.name for a in aliases), source=f"{entity.file}:{entity.line}",
    )


def _tier(entity: _Entity, found: Found) -> int | None:
    if "tier" in entity.annotations:
        text, line = entity.annotations["tier"]
        if text not in ("1", "2", "3", "4"):
            entity.problem(found, f"metadata.annotations.{ANNOTATION_PREFIX}tier",
                           'must be "1" (most critical) to "4"', text, line)
            return None
        return int(text)
    lifecycle = _text(entity, "lifecycle", found)
    return LIFECYCLE_TIERS.get(lifecycle or "", OTHER_LIFECYCLE_TIER)


def _component(entity: _Entity, found: Found) -> str | None:
    if entity.kind != "Resource":
        return "application"
    kind = _text(entity, "type", found)
    if kind is None:
        entity.problem(found, "spec.type", "missing: a Resource's type (database, storage, "
                       f"queue, cache, …) gives its component, or set the annotation "
                       f"{ANNOTATION_PREFIX}component", "", entity.spec.line_of("type"))
        return None
    return RESOURCE_COMPONENTS.get(kind, kind)


def _owners(entity: _Entity, owners: Mapping[str, Mapping[str, str]], found: Found
            ) -> dict[str, str]:
    """Leads from the annotations, else from the settings' roles of `spec.owner`."""
    owner = _text(entity, "owner", found)
    key = owner_key(owner) if owner is not None else None
    if owner is not None and key is None:
        entity.problem(found, "spec.owner", "must be an owner ref such as team-a, "
                       "group:default/team-a or user:guest", owner, entity.spec.line_of("owner"))
    mapped = owners.get(key, {}) if key is not None else {}
    leads: dict[str, str] = {}
    for role in OWNER_ROLES:
        short = role.replace("_", "-")
        if short in entity.annotations:
            target, line = entity.annotations[short]
            key_path = f"metadata.annotations.{ANNOTATION_PREFIX}{short}"
            leads[role] = target
            found.targets.append(entity.mention(target, line, key_path, target))
        elif role in mapped:
            leads[role] = mapped[role]
    if "technical_lead" not in leads:
        hint = f"{ANNOTATION_PREFIX}technical-lead"
        if key is not None:
            entity.problem(found, "spec.owner", f"no technical lead: add the annotation {hint}, "
                           f"or give owner {key!r} a technical_lead under backstage_owners in "
                           "the settings", line=entity.spec.line_of("owner"))
        elif owner is None:
            entity.problem(found, "", f"no technical lead: add the annotation {hint} (there "
                           "is no spec.owner to look up in the settings' backstage_owners)")
    return leads
