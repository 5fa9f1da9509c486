"""YAML loading that remembers where every key and item came from, for errors people can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from daemon.errors import Problem


class LocatedDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        """The line of `key`, or of the mapping itself when the key is absent."""
        return self.key_lines.get(key, self.line)


class LocatedList(list[Any]):
    """A sequence that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        """The line of item `index`."""
        return self.item_lines[index] if index < len(self.item_lines) else self.line


# libyaml's parser when PyYAML was built with it (about 5x faster on large maps); the
# constructors below run in Python either way and see the same line marks.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader building Located containers and refusing duplicate keys."""

    # (line, key, the mapping holding the key): the mapping gives the key its full path.
    duplicates: list[tuple[int, str, LocatedDict]]
    # Implicit tag resolution runs a regex list per scalar; large maps repeat values a lot.
    _resolved: dict[tuple[Any, str, tuple[bool, bool]], str]

    def resolve(self, kind: Any, value: str, implicit: tuple[bool, bool]) -> str:
        """PyYAML's tag resolution, cached per (kind, value, implicit) for this document."""
        key = (kind, value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            self._resolved[key] = tag
        return tag


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in result:
            loader.duplicates.append((key_node.start_mark.line + 1, key, result))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_documents(text: str, file: str) -> tuple[list[Any], list[Problem]]:
    """Parse every YAML document in `text`; syntax errors and duplicate keys become problems."""
    loader = _Loader(text)
    loader.duplicates = []
    loader._resolved = {}
    docs: list[Any] = []
    problems: list[Problem] = []
    try:
        while loader.check_node():
            docs.append(loader.get_data())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        problems.append(Problem(file, line, "", f"invalid YAML: {reason}"))
    finally:
        loader.dispose()
    paths: dict[int, str] = {}
    for doc in docs:
        _record_paths(doc, "", paths)
    problems.extend(
        Problem(file, line, _join(paths.get(id(mapping), ""), key), "duplicate key")
        for line, key, mapping in loader.duplicates
    )
    return docs, problems


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _record_paths(node: Any, path: str, paths: dict[int, str]) -> None:
    """Map each mapping's id to its key path (`services.web.owners`, `rules[2].when`)."""
    if isinstance(node, dict):
        if id(node) in paths:  # a YAML alias: already walked where it was anchored
            return
        paths[id(node)] = path
        for key, value in node.items():
            _record_paths(value, _join(path, str(key)), paths)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _record_paths(item, f"{path}[{index}]", paths)


def load_file(path: Path) -> tuple[list[Any], list[Problem]]:
    """Read and parse one YAML file; an unreadable file is a problem, not an exception."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(str(path), 0, "", f"cannot read file: {exc}")]
    return load_documents(text, str(path))


def line_of(container: Any, key: str | int) -> int:
    """Best-effort line of `key` inside a located container (0 when unknown)."""
    if isinstance(container, LocatedDict) and isinstance(key, str):
        return container.line_of(key)
    if isinstance(container, LocatedList) and isinstance(key, int):
        return container.line_of(key)
    return int(getattr(container, "line", 0))


def shown(value: Any, limit: int = 80) -> str:
    """A short, single-line rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
