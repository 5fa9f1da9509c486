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


# libyaml's parser when PyYAML was built with it. The documents are built straight from its
# event stream: PyYAML's own composer and constructors create a node object per scalar and
# cost about ten times the parse itself on a large map.
_Parser: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "<<"


class _Builder:
    """Builds Located containers from YAML events, resolving scalars as PyYAML's safe
    loader does (YAML 1.1 implicit types), and noting duplicate keys."""

    def __init__(self) -> None:
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        self.resolved: dict[str, Any] = {}
        self.anchors: dict[str, Any] = {}
        self.duplicates: list[tuple[int, str, LocatedDict]] = []

    def scalar(self, event: yaml.ScalarEvent) -> Any:
        """The Python value of a scalar event."""
        plain = event.implicit[0] and event.tag in (None, "!")
        if plain:
            cached = self.resolved.get(event.value, self)
            if cached is not self:
                return cached
            tag = self.resolver.resolve(yaml.ScalarNode, event.value, (True, False))
        elif event.tag in (None, "!") or event.implicit[1]:
            return event.value
        else:
            tag = event.tag
        if tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"):
            value: Any = event.value
        else:
            construct = self.constructor.yaml_constructors.get(tag)
            if construct is None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"could not determine a constructor for the tag {tag!r}",
                    _mark(event))
            value = construct(self.constructor, yaml.ScalarNode(tag, event.value,
                                                                  _mark(event)))
        if plain:
            self.resolved[event.value] = value
        return value

    def documents(self, text: str) -> list[Any]:
        """Every document of `text`; raises yaml.YAMLError on bad syntax."""
        docs: list[Any] = []
        # Each frame: the container, and for a mapping the key waiting for its value.
        stack: list[list[Any]] = []
        before = 0
        for event in yaml.parse(text, Loader=_Parser):
            value: Any
            if isinstance(event, yaml.ScalarEvent):
                value = self.scalar(event)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in self.anchors:
                    raise yaml.composer.ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", _mark(event))
                value = self.anchors[event.anchor]
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                container: Any
                if isinstance(event, yaml.MappingStartEvent):
                    container = LocatedDict()
                    container.key_lines = {}
                else:
                    container = LocatedList()
                    container.item_lines = []
                container.line = _line(event)
                if event.anchor is not None:
                    self.anchors[event.anchor] = container
                stack.append([container, None, 0, set()])
                continue
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                value = stack.pop()[0]
                if not stack:
                    docs.append(value)
                    continue
                self.add(stack[-1], value, value.line)
                continue
            elif isinstance(event, yaml.DocumentStartEvent):
                before = len(docs)
                continue
            elif isinstance(event, yaml.DocumentEndEvent):
                if len(docs) == before:
                    docs.append(None)  # an empty document, as PyYAML gives it
                continue
            else:
                continue
            if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
                self.anchors[event.anchor] = value
            line = _line(event)
            if not stack:
                docs.append(value)
            else:
                self.add(stack[-1], value, line)
        return docs

    def add(self, frame: list[Any], value: Any, line: int) -> None:
        """Put a finished value into the container on top of the stack."""
        container = frame[0]
        if isinstance(container, LocatedList):
            container.append(value)
            container.item_lines.append(line)
            return
        if frame[1] is None:
            frame[1] = value if isinstance(value, str) else str(value)
            frame[2] = line
            return
        key, key_line = frame[1], frame[2]
        frame[1] = None
        if key == _MERGE:
            # YAML merge keys, as PyYAML's safe loader: existing keys win.
            for source in value if isinstance(value, list) else [value]:
                if isinstance(source, LocatedDict):
                    for merged, item in source.items():
                        if merged not in container:
                            container[merged] = item
                            container.key_lines[merged] = source.line_of(merged)
                            frame[3].add(merged)
            return
        if key in frame[3]:
            frame[3].discard(key)  # an explicit key overrides a merged one
        elif key in container:
            self.duplicates.append((key_line, key, container))
        container[key] = value
        container.key_lines[key] = key_line


def _mark(event: yaml.Event) -> Any:
    """The event's start mark (libyaml's and PyYAML's mark types differ, alike in use)."""
    return event.start_mark


def _line(event: yaml.Event) -> int:
    """The 1-based line an event starts on."""
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def load_documents(text: str, file: str) -> tuple[list[Any], list[Problem]]:
    """Parse every YAML document in `text`; syntax errors and duplicate keys become problems."""
    builder = _Builder()
    docs: list[Any] = []
    problems: list[Problem] = []
    try:
        docs = builder.documents(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        reason = getattr(exc, "problem", None) or str(exc)
        if mark is not None and _character_at(text, mark.line, mark.column) == "\t":
            # libyaml says "found character that cannot start any token", which names
            # neither the character nor the cure.
            reason = f"a tab at column {mark.column + 1}: YAML indents with spaces"
        problems.append(Problem(file, line, "", f"invalid YAML: {reason}"))
    paths: dict[int, str] = {}
    for doc in docs:
        _record_paths(doc, "", paths)
    problems.extend(
        Problem(file, line, _join(paths.get(id(mapping), ""), key), "duplicate key")
        for line, key, mapping in builder.duplicates
    )
    return docs, problems


def _character_at(text: str, line: int, column: int) -> str:
    """The character at a parser mark (0-based line and column, in characters), or ""."""
    lines = text.split("\n")
    return lines[line][column:column + 1] if line < len(lines) else ""


def unread(docs: list[Any], problems: list[Problem]) -> bool:
    """Whether `load_file` could not read or parse the file at all: it then gives no
    document and says why (a file that parses gives its documents, even empty ones)."""
    return not docs and any(not p.warning for p in problems)


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
