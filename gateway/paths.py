"""Path and host matching for ``http`` and ``websocket`` routes.

Patterns use Django's syntax (``/ws/chat/<room>/``, ``<int:id>``, ``<slug:s>``, ``<uuid:u>``,
``<path:rest>``) or a raw regex. Both compile to one anchored regex per route; ``include:``
prefixes are joined to their children at build time, so matching a request is a single
``fullmatch`` per candidate route however deep the YAML nests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Convert = Callable[[str], Any]


@dataclass(frozen=True)
class Converter:
    regex: str
    to_python: Convert


CONVERTERS: dict[str, Converter] = {
    "str": Converter(r"[^/]+", str),
    "int": Converter(r"[0-9]+", int),
    "slug": Converter(r"[-a-zA-Z0-9_]+", str),
    "uuid": Converter(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid.UUID),
    "path": Converter(r".+", str),
}
_HOST_CONVERTERS = {**CONVERTERS, "str": Converter(r"[^.]+", str)}

_PARAM = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")


class PatternError(ValueError):
    """A path, host or regex pattern that cannot be compiled."""


@dataclass(frozen=True)
class Pattern:
    """A compiled-later regex fragment plus the converters of its named groups."""

    source: str
    converters: Mapping[str, Convert]
    text: str

    @classmethod
    def from_path(cls, text: str, converters: Mapping[str, Converter] = CONVERTERS) -> Pattern:
        parts: list[str] = []
        convs: dict[str, Convert] = {}
        pos = 0
        for m in _PARAM.finditer(text):
            parts.append(re.escape(text[pos : m.start()]))
            conv_name = m.group("conv") or "str"
            name = m.group("name")
            conv = converters.get(conv_name)
            if conv is None:
                known = ", ".join(sorted(converters))
                raise PatternError(f"unknown converter {conv_name!r} in {text!r} (known: {known})")
            if name in convs:
                raise PatternError(f"parameter {name!r} appears twice in {text!r}")
            convs[name] = conv.to_python
            parts.append(f"(?P<{name}>{conv.regex})")
            pos = m.end()
        rest = text[pos:]
        if "<" in rest or ">" in rest:
            raise PatternError(f"malformed parameter in {text!r} (write <name> or <conv:name>)")
        parts.append(re.escape(rest))
        return cls("".join(parts), convs, text)

    @classmethod
    def from_regex(cls, text: str) -> Pattern:
        source = text[1:] if text.startswith("^") else text
        if source.endswith("$") and not source.endswith(r"\$"):
            source = source[:-1]
        try:
            compiled = re.compile(source)
        except re.error as exc:
            raise PatternError(f"invalid regex {text!r}: {exc}") from None
        return cls(source, dict.fromkeys(compiled.groupindex, str), text)

    def join(self, child: Pattern) -> Pattern:
        overlap = set(self.converters) & set(child.converters)
        if overlap:
            raise PatternError(f"parameter {sorted(overlap)[0]!r} is captured by both an include prefix and its route")
        return Pattern(
            f"(?:{self.source})(?:{child.source})",
            {**self.converters, **child.converters},
            self.text + child.text,
        )

    def compile(self) -> re.Pattern[str]:
        return re.compile(self.source, re.DOTALL)


def _extract(m: re.Match[str], converters: Mapping[str, Convert]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Captures of a match: named groups as converted kwargs; only if there are none, the groups as args."""
    groups = m.groupdict()
    if groups:
        kwargs = {}
        for name, value in groups.items():
            if value is not None:
                kwargs[name] = converters.get(name, str)(value)
        return (), kwargs
    return m.groups(), {}


class PathMatcher:
    """Matches ``scope["path"]`` (and optionally the Host header) against one route pattern."""

    __slots__ = ("pattern", "host", "_re", "_host_re", "_plain")

    def __init__(self, pattern: Pattern, host: Pattern | None = None) -> None:
        self.pattern = pattern
        self.host = host
        self._re = pattern.compile()
        self._host_re = host.compile() if host else None
        # A path pattern without groups and without a host (``/health``, ``.*``) captures nothing:
        # ``match`` answers it without walking the match object, on every request it routes.
        self._plain = self._re.groups == 0 and host is None

    @classmethod
    def build(cls, *, path: str | None = None, regex: str | None = None, host: str | None = None) -> PathMatcher:
        pattern = Pattern.from_regex(regex) if regex is not None else Pattern.from_path(path or "")
        return cls(pattern, Pattern.from_path(host, _HOST_CONVERTERS) if host else None)

    def under(self, prefix: PathMatcher) -> PathMatcher:
        """This matcher with ``prefix`` (an ``include:`` parent) in front of it."""
        host = self.host or prefix.host
        if self.host and prefix.host:
            raise PatternError("a route inside an include cannot set its own host as well")
        return PathMatcher(prefix.pattern.join(self.pattern), host)

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        m = self._re.fullmatch(scope["path"])
        if m is None:
            return None
        if self._plain:
            return (), {}
        found = _extract(m, self.pattern.converters)
        if self._host_re is None:
            return found
        hm = self._host_re.fullmatch(_host_of(scope))
        if hm is None:
            return None
        _, host_kwargs = _extract(hm, self.host.converters)  # type: ignore[union-attr]
        return found[0], {**host_kwargs, **found[1]}

    def describe(self) -> str:
        text = f"path {self.pattern.text}"
        return f"{text} host {self.host.text}" if self.host else text


def _host_of(scope: Mapping[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").lower()
            if host.startswith("["):
                return host[: host.find("]") + 1]
            return host.rsplit(":", 1)[0] if ":" in host else host
    server = scope.get("server")
    return server[0] if server else ""
