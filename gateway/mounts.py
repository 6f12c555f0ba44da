"""Handlers that other parts attach to the HTTP listener (metrics, health, webhooks, MQTT over
WebSocket).

The core keeps the list; the HTTP adapter consults it before the router. That way an SMS
adapter can receive provider webhooks, or the MQTT broker its WebSocket clients, on the same
port without knowing the HTTP adapter. A mount marked ``required`` is useless unless some
adapter serves the mounts, so the gateway refuses to start when none does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .routing import MatchAll, Route
from .types import ASGIApp


@dataclass(frozen=True)
class Mount:
    prefix: str
    app: ASGIApp
    owner: str
    scope_types: tuple[str, ...] = ("http",)
    required: bool = False
    route: Route = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # lets the HTTP adapter run a mounted WebSocket app through the runner like a routed one
        object.__setattr__(self, "route", Route(MatchAll(), self.app, name=f"mount:{self.prefix}", target=self.owner))

    def matches(self, path: str) -> bool:
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix)
        return path == self.prefix or path.startswith(self.prefix + "/")


class Mounts:
    """Mounted ASGI apps by path prefix, checked longest prefix first."""

    def __init__(self) -> None:
        self.items: list[Mount] = []  # longest prefix first; read-only outside this class
        self.served_by: str | None = None

    def add(self, prefix: str, app: ASGIApp, owner: str, *, scope_types: tuple[str, ...] = ("http",), required: bool = False) -> None:
        """Attach ``app`` at ``prefix`` for the given scope types (``"http"``, ``"websocket"``)."""
        if not prefix.startswith("/"):
            raise ValueError(f"mount path {prefix!r} must start with '/'")
        for m in self.items:
            if m.prefix == prefix and set(m.scope_types) & set(scope_types):
                raise ValueError(f"{owner} and {m.owner} both want to mount {prefix!r}")
        self.items.append(Mount(prefix, app, owner, tuple(scope_types), required))
        self.items.sort(key=lambda m: len(m.prefix), reverse=True)

    def remove_owned_by(self, adapter: str) -> None:
        """Forget what an adapter mounted (owners are ``name`` or ``name:detail``), before it is
        started again with new settings on reload."""
        self.items = [m for m in self.items if m.owner != adapter and not m.owner.startswith(adapter + ":")]

    def find(self, path: str, scope_type: str = "http") -> Mount | None:
        for m in self.items:
            if scope_type in m.scope_types and m.matches(path):
                return m
        return None

    def unserved(self) -> list[Mount]:
        """Required mounts that no adapter serves (nothing called ``served_by``)."""
        if self.served_by is not None:
            return []
        return [m for m in self.items if m.required]

    def __bool__(self) -> bool:
        return bool(self.items)
