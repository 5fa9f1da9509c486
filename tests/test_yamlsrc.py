"""YAML loading with line numbers: the same values as PyYAML's safe loader, plus locations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon.yamlsrc import LocatedDict, LocatedList, load_documents

ROOT = Path(__file__).parent.parent

DOCUMENTS = [
    "",
    "---\n",
    "a: 1\n---\n---\nb: [x, 2, 0x10, 0o17, true, no, null, ~, 1.5, .inf, '3', 2024-01-01]\n",
    "plain scalar",
    "a: &A {p: 1, r: 3}\nb: *A\nc:\n  <<: *A\n  q: 2\n  p: 9\n",
    "c:\n  p: 9\n  <<: [{p: 1, z: 2}, {z: 3, w: 4}]\n",
    "k: !!str 12\nf: !!float 3\ns: '!!int'\n",
    "multi: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "unicode: 支付 ✓\nempty_list: []\nempty_map: {}\nnested: [[1, [2]], {x: [y]}]\n",
]


class TestValues:
    @pytest.mark.parametrize("text", DOCUMENTS)
    def test_same_values_as_pyyaml(self, text: str) -> None:
        """Every document gives exactly what PyYAML's safe loader gives."""
        docs, problems = load_documents(text, "doc.yaml")
        assert problems == []
        assert docs == list(yaml.safe_load_all(text))

    @pytest.mark.parametrize("path", sorted((ROOT / "dependency_maps").glob("*.yaml"))
                             + sorted((ROOT / "rules").glob("*.yaml"))
                             + [ROOT / "firehouse.yml"], ids=lambda p: p.name)
    def test_shipped_files_match_pyyaml(self, path: Path) -> None:
        """The shipped settings, rules and maps load to PyYAML's values."""
        text = path.read_text(encoding="utf-8")
        docs, problems = load_documents(text, str(path))
        assert problems == []
        assert docs == list(yaml.safe_load_all(text))


class TestLocations:
    def test_lines_of_keys_and_items(self) -> None:
        """Mappings know the line of each key, lists the line of each item."""
        (doc,), _ = load_documents("top:\n  a: 1\n  list:\n    - x\n    - {y: 2}\n", "f")
        assert isinstance(doc, LocatedDict)
        top = doc["top"]
        assert (doc.line_of("top"), top.line, top.line_of("a"), top.line_of("list")) == (
            1, 2, 2, 3)
        items = top["list"]
        assert isinstance(items, LocatedList)
        assert (items.line_of(0), items.line_of(1), items[1].line) == (4, 5, 5)

    def test_duplicate_key_is_a_problem_with_its_path(self) -> None:
        """A key given twice is reported at its second line with its full key path."""
        _, problems = load_documents("services:\n  web:\n    tier: 1\n    tier: 2\n", "m.yaml")
        assert [str(p) for p in problems] == ["m.yaml:4: services.web.tier: duplicate key"]

    def test_overriding_a_merged_key_is_not_a_duplicate(self) -> None:
        """A key that overrides one brought in by a `<<` merge is not a duplicate."""
        docs, problems = load_documents("base: &B {a: 1}\nx:\n  <<: *B\n  a: 2\n", "f")
        assert problems == []
        assert docs[0]["x"] == {"a": 2}

    def test_syntax_error_names_the_line(self) -> None:
        """Broken YAML is one problem naming the line, and no documents."""
        docs, problems = load_documents("a: 1\nb: [unclosed\nc: 3\n", "bad.yaml")
        assert docs == []
        assert len(problems) == 1
        assert str(problems[0]).startswith("bad.yaml:")
        assert "invalid YAML" in str(problems[0])

    def test_undefined_alias_is_a_problem(self) -> None:
        """An alias to no anchor is an invalid-YAML problem, not a crash."""
        _, problems = load_documents("a: *nowhere\n", "f")
        assert [p.message for p in problems] == ["invalid YAML: found undefined alias 'nowhere'"]
