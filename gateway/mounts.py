"""HTTP handlers that other parts attach to the HTTP listener (metrics, health, webhooks).

The core keeps the list; the HTTP adapter consults it before the router. That way an SMS
adapter can receive provider webhooks on the same port without knowing the HTTP adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import ASGIApp


@dataclass(frozen=True)
class Mount:
    prefix: str
    app: ASGIApp
    owner: str

    def matches(self, path: str) -> bool:
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix)
        return path == self.prefix or path.startswith(self.prefix + "/")


class Mounts:
    """Mounted ASGI apps by path prefix, checked longest prefix first."""

    def __init__(self) -> None:
        self._mounts: list[Mount] = []

    def add(self, prefix: str, app: ASGIApp, owner: str) -> None:
        if not prefix.startswith("/"):
            raise ValueError(f"mount path {prefix!r} must start with '/'")
        for m in self._mounts:
            if m.prefix == prefix:
                raise ValueError(f"{owner} and {m.owner} both want to mount {prefix!r}")
        self._mounts.append(Mount(prefix, app, owner))
        self._mounts.sort(key=lambda m: len(m.prefix), reverse=True)

    def find(self, path: str) -> Mount | None:
        for m in self._mounts:
            if m.matches(path):
                return m
        return None

    def __bool__(self) -> bool:
        return bool(self._mounts)
