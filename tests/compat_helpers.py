"""What the compatibility-contract tests share: finding private names in the source, and the
ranges pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def private_uses(names: Iterable[str], folder: str, compat_module: str, library_import: str) -> list[str]:
    """``file:line: text`` for every attribute access ``.name`` of one of ``names`` outside
    ``compat_module``: in the adapter's ``folder``, and in any module of the repository's
    packages that imports the library (``library_import`` is a regular expression)."""
    pattern = re.compile(r"\.(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    imports = re.compile(r"^\s*(?:from|import)\s+" + library_import, re.M)
    compat = (ROOT / compat_module).resolve()
    files = {p.resolve() for p in (ROOT / folder).glob("*.py")}
    for package in ("gateway", "adapters", "plugins"):
        files |= {p.resolve() for p in (ROOT / package).rglob("*.py") if imports.search(p.read_text())}
    found = []
    for path in sorted(files - {compat}):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def declared_range(distribution: str) -> str:
    """The version range pyproject.toml gives ``distribution`` (``">=1.0,<2"``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
        if match and match.group(1).lower() == distribution.lower():
            return match.group(2).replace(" ", "")
    raise LookupError(f"{distribution} is not a dependency in pyproject.toml")
