"""Routers: ASGI applications that pick another ASGI application for a scope.

The shapes follow Channels' ``routing.py``: a ``ProtocolTypeRouter`` on ``scope["type"]`` whose
values are per-protocol ``Router`` objects holding an ordered list of ``Route`` objects, first
match wins. Nothing here knows YAML; ``gateway.config`` builds these from the ``routes:``
section, and Python code can build them by hand.

Adapters do not call the router as an ASGI app on their hot path: they call ``resolve`` first,
because they must know the route (its timeout, its name, whether anything matches at all, e.g.
to refuse an SMTP recipient) before they start an instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .paths import PathMatcher
from .types import ASGIApp, Receive, Scope, Send


class Matcher(Protocol):
    """Decides whether a scope belongs to a route; returns ``(args, kwargs)`` captures or ``None``."""

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None: ...

    def describe(self) -> str: ...


class NoRouteMatched(LookupError):
    """A message scope reached a router with no route for it."""


class MatchAll:
    """The matcher of a route with no matcher keys: the default at the end of a list."""

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (), {}

    def describe(self) -> str:
        return "(any)"


@dataclass(eq=False)
class Route:
    """One entry of a routing list. ``app`` is already wrapped in the route's middleware."""

    matcher: Matcher
    app: ASGIApp
    name: str | None = None
    timeout: float | None = None
    middleware: tuple[str, ...] = ()
    target: str = ""
    endpoint: ASGIApp | None = None
    config: Any = None
    state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.endpoint is None:
            self.endpoint = self.app
        if not self.target:
            self.target = _describe_app(self.endpoint)


class Match(NamedTuple):
    route: Route
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def scope_for(self, scope: Scope, *, in_place: bool = False) -> Scope:
        """The scope the routed app sees: captures, route name and its lifespan state added.

        A copy of ``scope``, unless ``in_place``: then ``scope`` itself, for a caller that built
        it for this one app and does not use it again (it spares a dict copy per request).
        """
        child = scope if in_place else dict(scope)
        child["url_route"] = {"args": self.args, "kwargs": self.kwargs}
        child["route_name"] = self.route.name
        if self.route.state is not None:
            child["state"] = dict(self.route.state)  # a shallow copy per instance, as the lifespan spec asks
        return child


_new_match = tuple.__new__


class Router:
    """An ordered list of routes for one protocol; an ASGI application itself."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)

    def resolve(self, scope: Mapping[str, Any]) -> Match | None:
        for route in self.routes:
            found = route.matcher.match(scope)
            if found is not None:
                # ``tuple.__new__`` skips the Python-level ``__new__`` of the named tuple: this
                # runs for every request and message, and the three fields are always given.
                return _new_match(Match, (route, found[0], found[1]))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.resolve(scope)
        if match is None:
            await unmatched(scope, receive, send)
            return
        await match.route.app(match.scope_for(scope), receive, send)


class ProtocolTypeRouter:
    """Dispatches on ``scope["type"]`` to one application per protocol."""

    def __init__(self, application_mapping: Mapping[str, ASGIApp]) -> None:
        self.application_mapping = dict(application_mapping)

    def resolve(self, scope: Mapping[str, Any]) -> Match | None:
        app = self.application_mapping.get(scope["type"])
        resolve = getattr(app, "resolve", None)
        return resolve(scope) if resolve else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.application_mapping.get(scope["type"])
        if app is None:
            raise ValueError(f"no application configured for scope type {scope['type']!r}")
        await app(scope, receive, send)


async def unmatched(scope: Scope, receive: Receive, send: Send) -> None:
    """What a scope with no route gets: HTTP 404, a refused WebSocket handshake (403)."""
    kind = scope["type"]
    if kind == "http":
        body = b"Not Found\n"
        await send({
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
    elif kind == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1000})
    else:
        raise NoRouteMatched(f"no {kind} route matches this scope")


def path(pattern: str, app: ASGIApp, *, name: str | None = None, host: str | None = None) -> Route:
    """A route for a Django-style path pattern, for building routers in Python."""
    return Route(PathMatcher.build(path=pattern, host=host), app, name=name)


def re_path(regex: str, app: ASGIApp, *, name: str | None = None, host: str | None = None) -> Route:
    """A route for a regular expression, for building routers in Python."""
    return Route(PathMatcher.build(regex=regex, host=host), app, name=name)


def _describe_app(app: Any) -> str:
    consumer = getattr(app, "consumer_class", None)
    target = consumer or app
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{qualname}" if module else qualname
