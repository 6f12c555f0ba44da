"""The floor pins of `make test-floors` (tests/floors.sh), taken from pyproject.toml.

A range in pyproject.toml is a promise to users: "any version from the floor up works". The newest
versions are what `make test` installs; this module turns every runtime floor into an exact pin so
that the same suite also runs on the oldest versions the ranges allow, and checks afterwards that
pip really installed them (a floor that the other dependencies do not allow would otherwise be
lifted quietly by the resolver).

    python tests/floors.py pins     one requirement per line: ``name[extras]==floor; marker``
    python tests/floors.py extras   the runtime extras, comma-separated (every extra but dev, bench)
    python tests/floors.py verify   print each floor and the installed version; exit 1 on a mismatch

Runs on the Python that creates the virtualenv (``pins``, ``extras``: standard library only) and on
the virtualenv's Python (``verify``: needs ``packaging``, which pytest depends on).
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# Tools to develop and measure the gateway; their versions float (the newest the floors allow).
NOT_RUNTIME = {"dev", "bench"}

_REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<extras>\[[^\]]*\])?\s*(?P<spec>[^;]*)(?P<marker>;.*)?")


@dataclass(frozen=True)
class Floor:
    name: str
    extras: str
    version: str
    marker: str

    @property
    def pin(self) -> str:
        return f"{self.name}{self.extras}=={self.version}{self.marker}"


def runtime_extras(project: dict) -> list[str]:
    return [name for name in project.get("optional-dependencies", {}) if name not in NOT_RUNTIME]


def floors() -> list[Floor]:
    """One floor per runtime requirement (the core list and the runtime extras), in file order.

    A runtime requirement without a ``>=`` floor is an error: its range says nothing that can be
    tested, and a new dependency must not escape the floor job by being declared loosely."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in runtime_extras(project):
        requirements += project["optional-dependencies"][extra]
    found: dict[str, Floor] = {}
    for requirement in requirements:
        match = _REQUIREMENT.fullmatch(requirement.strip())
        if not match:
            raise SystemExit(f"pyproject.toml: cannot read the requirement {requirement!r}")
        lows = [s.strip()[2:].strip() for s in match["spec"].split(",") if s.strip().startswith(">=")]
        if len(lows) != 1:
            raise SystemExit(f"pyproject.toml: {requirement!r} needs exactly one '>=' floor for make test-floors")
        key = re.sub(r"[-_.]+", "-", match["name"]).lower()
        floor = Floor(match["name"], match["extras"] or "", lows[0], (match["marker"] or "").strip())
        if key in found and found[key].version != floor.version:
            raise SystemExit(f"pyproject.toml: two floors for {key}: {found[key].version} and {floor.version}")
        found.setdefault(key, floor)
    return list(found.values())


def verify() -> int:
    """Compare the installed versions with the floors (``2.0`` equals ``2.0.0``)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.markers import Marker
    from packaging.version import Version

    wrong = 0
    for floor in floors():
        if floor.marker and not Marker(floor.marker.lstrip(";").strip()).evaluate():
            print(f"  {floor.name:<20} {floor.version:<10} (not for this platform)")
            continue
        try:
            installed = version(floor.name)
        except PackageNotFoundError:
            installed = "missing"
        same = installed != "missing" and Version(installed) == Version(floor.version)
        wrong += not same
        print(f"  {floor.name:<20} {floor.version:<10} {installed}{'' if same else '   <- NOT THE FLOOR'}")
    if wrong:
        print(f"not at the declared floor: {wrong} of the dependencies above", file=sys.stderr)
    return 1 if wrong else 0


def main(command: str) -> int:
    if command == "pins":
        print("\n".join(floor.pin for floor in floors()))
    elif command == "extras":
        print(",".join(runtime_extras(tomllib.loads(PYPROJECT.read_text())["project"])))
    elif command == "verify":
        return verify()
    else:
        raise SystemExit(f"usage: {sys.argv[0]} pins|extras|verify")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) == 2 else ""))
