"""Every module imports on its own, first, in a fresh interpreter: no import cycle hides
behind the order in which the daemon happens to load them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in (ROOT / "daemon").rglob("*.py")
    if path.name != "__main__.py"  # runs the command line
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first(module: str) -> None:
    """`import <module>` works as the first import of a process."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
