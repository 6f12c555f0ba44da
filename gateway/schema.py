"""Config models shared by the core and adapter plugins.

Adapters describe their YAML with pydantic models deriving from ``Section`` (their
``adapters.<name>`` block) and ``RouteConfig`` (one entry of ``routes.<protocol>``). These
models are the single source of truth: they validate the file and ``docs/config.md`` is
generated from their field descriptions (``gateway schema``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .origins import Origins
from .paths import PathMatcher, PatternError
from .routing import MatchAll, Matcher

KeyPath = tuple[str | int, ...]


class Section(BaseModel):
    """A block of config: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]


class RouteConfig(Section):
    """Keys every route has, whatever its protocol."""

    app: str | None = Field(None, description="The application: `module:attribute` import string, or `django`.")
    name: str | None = Field(None, description="A name for logs, metrics and `scope['route_name']`.")
    middleware: list[str] = Field(
        default_factory=list,
        description="ASGI middleware factories (import strings); the first listed is outermost.",
    )
    timeout: PositiveFloat | None = Field(
        None, description="Seconds a message-scope instance may run before it counts as failed "
        "(default: `instances.message_timeout`). Ignored for connection scopes."
    )

    def matcher(self) -> Matcher:
        """The matcher for this route; a route with no matcher keys matches everything."""
        return MatchAll()

    def expand(self) -> Iterator[tuple[Matcher, RouteConfig, list[str], KeyPath]]:
        """Leaf routes as ``(matcher, leaf, middleware outermost-first, key path of the leaf)``."""
        if self.app is None:
            raise ValueError("a route needs 'app'")
        yield self.matcher(), self, list(self.middleware), ()


class PathRoute(RouteConfig):
    """A route for `http` or `websocket`, matched on the request path (and optionally the host)."""

    path: str | None = Field(None, description="Django-style path pattern, e.g. `/ws/chat/<room>/`, `<int:id>`.")
    regex: str | None = Field(None, description="A regular expression matched against the whole path; named groups become kwargs.")
    host: str | None = Field(None, description="Host pattern, e.g. `api.example.com` or `<tenant>.example.com`.")
    include: list[PathRoute] | None = Field(
        None, description="Nested routes matched after this route's `path` prefix (then `app` is not set)."
    )
    origins: str | list[str] | None = Field(
        None, description="WebSocket routes: the `Origin`s whose handshakes are accepted, in `ALLOWED_HOSTS` syntax "
        "(`example.com`, `.example.com` for subdomains too, `host:port`, `https://host`); `\"*\"` accepts any. "
        "Default: no check, or with Django `ALLOWED_HOSTS`. Refused handshakes get 403. See docs/routing.md.",
    )

    @model_validator(mode="after")
    def _shape(self) -> PathRoute:
        if self.path is not None and self.regex is not None:
            raise ValueError("a path route takes one of 'path' and 'regex', not both")
        if self.include is not None and self.path is None and self.regex is None:
            raise ValueError("a route with 'include' needs the 'path' (or 'regex') its nested routes are under")
        if self.include is None and self.app is None:
            raise ValueError("a path route needs 'app' (or 'include' with nested routes)")
        if self.include is not None and self.app is not None:
            raise ValueError("a route with 'include' routes to its nested routes: remove 'app'")
        try:
            self._matcher()
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        if self.origins is not None:
            Origins.parse(self.origins)  # raises ValueError with the bad pattern named
        return self

    def _matcher(self) -> PathMatcher:
        if self.path is None and self.regex is None:
            return PathMatcher.build(regex=".*", host=self.host)
        return PathMatcher.build(path=self.path, regex=self.regex, host=self.host)

    def matcher(self) -> Matcher:
        if self.path is None and self.regex is None and self.host is None:
            return MatchAll()  # no matcher keys: every path, as the default at the end of a list
        return self._matcher()

    def expand(self) -> Iterator[tuple[Matcher, RouteConfig, list[str], KeyPath]]:
        if self.include is None:
            yield from super().expand()
            return
        prefix = self._matcher()
        for i, child in enumerate(self.include):
            if self.path and self.path.endswith("/") and child.path and child.path.startswith("/"):
                child = child.model_copy(update={"path": child.path[1:]})  # "/api/" + "/orders/": one slash, as meant
            for matcher, leaf, middleware, path in child.expand():
                assert isinstance(matcher, PathMatcher)
                try:
                    joined = matcher.under(prefix)
                except PatternError as exc:
                    raise ValueError(str(exc)) from None
                yield joined, leaf, [*self.middleware, *middleware], ("include", i, *path)


@dataclass(frozen=True)
class ListenAddress:
    """Where a listener binds: TCP host and port, a unix socket path, or an inherited fd."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


ADDRESS_HELP = "an address is host:port, e.g. 127.0.0.1:8000 ([::1]:8000, unix:/path/to.sock and fd://3 work too)"


def parse_listen(text: str) -> ListenAddress:
    """Parse ``host:port``, ``[v6]:port``, ``:port``, ``unix:/path`` or ``fd://N``."""
    if not isinstance(text, str):
        raise ValueError(f"{ADDRESS_HELP} (got {text!r})")
    if "://" in text and not text.startswith("fd://"):
        raise ValueError(f"{text!r} is a URL; {ADDRESS_HELP}")
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError("unix: needs a socket path, e.g. unix:/run/gateway.sock")
        return ListenAddress("unix", path=text[5:])
    if text.startswith("fd://"):
        try:
            return ListenAddress("fd", fd=int(text[5:]))
        except ValueError:
            raise ValueError(f"{text!r}: fd:// needs a file descriptor number") from None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:8000")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: {ADDRESS_HELP}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8000")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: port must be between 0 and 65535")
    return ListenAddress("tcp", host=host or "0.0.0.0", port=number)


def _addresses(value: Any, *, allow_empty: bool = False) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"{ADDRESS_HELP}, or a list of them (got {value!r})")
    if not items and not allow_empty:
        raise ValueError("give at least one address")
    for item in items:
        parse_listen(item)
    return items


Listen = Annotated[list[str], BeforeValidator(_addresses)]
"""Where a listener binds, as every adapter and plugin writes it: one address or a list of them
(``host:port``, ``[v6]:port``, ``:port``, ``unix:/path``, ``fd://N``); always a list once read."""
OptionalListen = Annotated[list[str], BeforeValidator(lambda value: _addresses(value, allow_empty=True))]
"""``Listen`` for extra listeners that may be none (an empty list)."""


def model_fields_doc(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` rows for the generated config reference."""
    rows = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if info.is_required():
            default = "required"
        elif inner_model(info.annotation) is not None and info.default is None and info.default_factory is None:
            default = "None"
        elif inner_model(info.annotation) is not None:
            default = "see below"
        elif info.default_factory is not None:
            default = repr(info.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(info.default)
        rows.append((key, _type_text(info.annotation), default, info.description or ""))
    return rows


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+([A-Za-z_])", r"\1", text)


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Foo | None`` or ``list[Foo]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = inner_model(arg)
        if found is not None:
            return found
    return None
