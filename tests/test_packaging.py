"""Firehouse installed as the Dockerfile installs it (`pip install .`, not editable): every
module of daemon/ is in the installed package and imports from there, with the web page's
static files. An editable install (the README's) would hide a package left out of
pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_plain_install_holds_every_module_and_static_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):  # what the Dockerfile copies
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "daemon", source / "daemon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300)

    expected = sorted(path.relative_to(ROOT).as_posix()
                      for path in (ROOT / "daemon").rglob("*")
                      if path.is_file() and path.suffix in (".py", ".js", ".css", ".svg"))
    installed = sorted(path.relative_to(site).as_posix()
                       for path in (site / "daemon").rglob("*")
                       if path.is_file() and path.suffix in (".py", ".js", ".css", ".svg"))
    assert installed == expected

    modules = sorted(".".join(Path(p).with_suffix("").parts).removesuffix(".__init__")
                     for p in expected if p.endswith(".py") and not p.endswith("__main__.py"))
    check = (f"import importlib, sys\n"
             f"for name in {modules!r}:\n"
             f"    module = importlib.import_module(name)\n"
             f"    assert module.__file__.startswith({str(site)!r}), module.__file__\n")
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(site)}, check=False)
    assert done.returncode == 0, done.stderr
