"""MQTT topic filters with named wildcards, used as route matchers.

A route's ``topic`` is an MQTT topic filter in which a wildcard may carry a name:

* ``+name`` matches exactly one level and captures it as ``kwargs["name"]``;
* ``#name`` (last level only) matches the rest of the topic, zero or more levels, and captures
  it as one string (``""`` when it matched nothing, as ``logs/#`` matches ``logs``).

A plain ``+`` or ``#`` matches without capturing. Following the MQTT spec, a topic that starts
with ``$`` (``$SYS/...``) is never matched by a wildcard in the first level.

``subscription`` is the plain filter (names removed) the adapter subscribes to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_TOPIC_BYTES = 65535


class TopicError(ValueError):
    """A topic filter or topic name that MQTT does not allow."""


class TopicMatcher:
    """Matches ``scope["topic"]`` against one topic filter; named wildcards become kwargs."""

    __slots__ = ("text", "subscription", "_levels", "_hash", "_hash_name", "_literal")

    def __init__(self, text: str) -> None:
        self.text = text
        levels: list[tuple[str, str | None]] = []  # ("lit", text) | ("+", name)
        plain: list[str] = []
        self._hash = False
        self._hash_name: str | None = None
        if not text:
            raise TopicError("a topic filter cannot be empty")
        if text.startswith("$share/"):
            raise TopicError(f"{text!r}: write shared subscriptions with the adapter's 'shared' key, not '$share/'")
        if "\x00" in text:
            raise TopicError(f"{text!r}: a topic filter cannot contain NUL")
        if len(text.encode()) > MAX_TOPIC_BYTES:
            raise TopicError("a topic filter is limited to 65535 bytes")
        parts = text.split("/")
        seen: set[str] = set()
        for i, part in enumerate(parts):
            if part[:1] in ("+", "#"):
                name = part[1:] or None
                if name is not None and not name.isidentifier():
                    raise TopicError(
                        f"{text!r}: wildcard name {name!r} must be an identifier (write '{part[0]}name')"
                    )
                if name is not None:
                    if name in seen:
                        raise TopicError(f"{text!r}: wildcard name {name!r} appears twice")
                    seen.add(name)
                if part[0] == "#":
                    if i != len(parts) - 1:
                        raise TopicError(f"{text!r}: '#' must be the last level of a topic filter")
                    self._hash = True
                    self._hash_name = name
                    plain.append("#")
                else:
                    levels.append(("+", name))
                    plain.append("+")
            else:
                if "+" in part or "#" in part:
                    raise TopicError(
                        f"{text!r}: a wildcard must fill a whole level (level {part!r}); names go after it, as '+device'"
                    )
                levels.append(("lit", part))
                plain.append(part)
        self._levels = tuple(levels)
        self._literal = not self._hash and all(kind == "lit" for kind, _ in levels)
        self.subscription = "/".join(plain)

    @property
    def names(self) -> list[str]:
        names = [name for kind, name in self._levels if kind == "+" and name]
        if self._hash_name:
            names.append(self._hash_name)
        return names

    def match_topic(self, topic: str) -> dict[str, str] | None:
        if self._literal:
            return {} if topic == self.subscription else None
        parts = topic.split("/")
        levels = self._levels
        n = len(levels)
        if topic.startswith("$") and (n == 0 or levels[0][0] != "lit"):
            return None  # '$' topics never match a wildcard in the first level
        if self._hash:
            if len(parts) < n:
                return None
        elif len(parts) != n:
            return None
        kwargs: dict[str, str] = {}
        for (kind, value), part in zip(levels, parts, strict=False):
            if kind == "lit":
                if part != value:
                    return None
            elif value is not None:
                kwargs[value] = part
        if self._hash_name is not None:
            kwargs[self._hash_name] = "/".join(parts[n:])
        return kwargs

    # -- the router's Matcher protocol -------------------------------------------------------
    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        kwargs = self.match_topic(scope["topic"])
        return None if kwargs is None else ((), kwargs)

    def describe(self) -> str:
        return f"topic {self.text}"

    def __repr__(self) -> str:
        return f"TopicMatcher({self.text!r})"


def check_topic_name(topic: Any) -> str | None:
    """Why ``topic`` cannot be published to (``None``: it can)."""
    if not isinstance(topic, str):
        return f"topic must be a str, not {type(topic).__name__}"
    if not topic:
        return "topic cannot be empty"
    if "+" in topic or "#" in topic:
        return f"topic {topic!r} contains a wildcard ('+' or '#'), which PUBLISH does not allow"
    if "\x00" in topic:
        return "topic cannot contain NUL"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "topic is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return "topic is longer than 65535 bytes"
    return None
