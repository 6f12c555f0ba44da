"""Contracts with the private internals of a library, checked before the gateway relies on them.

A few adapters override or call a library's private methods because its public API cannot do what
the gateway must (hold an acknowledgement until the application returned, read without a task per
packet). Such names can change in any release. Each adapter keeps every one of them in one
compatibility module, which declares a ``Contract`` listing them; the adapter calls ``require()``
when it starts, so an unsupported version stops the gateway at start-up with one sentence naming
what is missing, instead of failing on the first message. The contract tests
(``tests/test_compat_*.py``) run the same checks against the installed versions.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from .errors import StartupError

Check = Callable[[], "str | None"]


class Contract:
    """What one library must offer: methods with their parameters, and attributes."""

    def __init__(self, library: str, supported: str, *, version: Callable[[], str] | None = None) -> None:
        self.library = library
        self.supported = supported
        self._version = version or functools.partial(_distribution_version, library)
        self._checks: list[Check] = []
        self._custom: list[Check] = []
        self.private_names: set[str] = set()  # what no module but the compatibility module may use

    @property
    def version(self) -> str:
        return self._version()

    def method(self, owner: Any, name: str, params: Sequence[str]) -> None:
        """``owner.name`` must exist and take exactly ``params`` (names, ``self`` included)."""
        self._note(name)
        def check() -> str | None:
            where = _where(owner, name)
            func = getattr(owner, name, None)
            if func is None:
                return f"{where} is missing"
            try:
                found = list(inspect.signature(func).parameters)
            except (TypeError, ValueError):
                return f"{where} has no signature to check"
            if found != list(params):
                return f"{where} takes ({', '.join(found)}) instead of ({', '.join(params)})"
            return None
        self._checks.append(check)

    def attribute(self, owner: Any, name: str) -> None:
        """``owner.name`` must exist: on the object itself, or, for a class, as an attribute
        that the class's own code assigns to ``self`` (instance state set in ``__init__``)."""
        self._note(name)
        def check() -> str | None:
            if hasattr(owner, name) or (isinstance(owner, type) and name in instance_attributes(owner)):
                return None
            return f"{_where(owner, name)} is missing"
        self._checks.append(check)

    def _note(self, name: str) -> None:
        if name.startswith("_") and not name.startswith("__"):
            self.private_names.add(name)

    def custom(self, check: Check) -> None:
        """Any other condition; ``check`` returns what is wrong, or ``None``. Run only when every
        name is there, since such a check usually builds one of the library's objects."""
        self._custom.append(check)

    def problems(self) -> list[str]:
        """Everything the installed version lacks (empty when it is supported)."""
        out = self._run(self._checks)
        return out or self._run(self._custom)

    @staticmethod
    def _run(checks: Sequence[Check]) -> list[str]:
        out = []
        for check in checks:
            try:
                problem = check()
            except Exception as exc:  # noqa: BLE001 - a check that cannot even look is a finding too
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                out.append(problem)
        return out

    def message(self, problems: Sequence[str]) -> str:
        return f"{self.library} {self.version} is not supported: {'; '.join(problems)}; supported: {self.library} {self.supported}"

    def require(self) -> None:
        """Raise ``StartupError`` naming every missing piece (a few milliseconds once the
        sources were read)."""
        problems = self.problems()
        if problems:
            raise StartupError(self.message(problems))


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _where(owner: Any, name: str) -> str:
    label = owner.__qualname__ if inspect.isclass(owner) else getattr(owner, "__name__", type(owner).__qualname__)
    return f"{label}.{name}"


@functools.cache
def instance_attributes(cls: type) -> frozenset[str]:
    """The names the code of ``cls`` and its bases assigns on ``self`` (read from their source)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for target in targets:
                for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                        names.add(item.attr)
    return frozenset(names)
