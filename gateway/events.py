"""What an application may send on each scope type, checked on every ``send``.

Each scope type has a table ``event type -> EventSpec``. The core fills in ``http``,
``websocket`` and ``lifespan``; adapters add their own scope types (``mqtt``, ``email``, ...)
through ``Adapter.send_events``. The checks are deliberately cheap (one dict lookup and a few
``isinstance`` calls) because they sit on every response of the HTTP hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidEvent

Check = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """Fields of one event type: ``name -> allowed types``; ``required`` names must be present.

    ``check`` is an optional extra rule across fields; it returns an error text or ``None``.
    Keys not listed are allowed, as the ASGI spec asks servers to ignore unknown keys.
    """

    fields: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    check: Check | None = None

    def problem(self, event: Mapping[str, Any]) -> str | None:
        for name in self.required:
            if name not in event:
                return f"missing required field {name!r}"
        for name, types in self.fields.items():
            value = event.get(name)
            if value is not None and not isinstance(value, types):
                allowed = " or ".join(t.__name__ for t in types)
                return f"field {name!r} must be {allowed}, not {type(value).__name__}"
        return self.check(event) if self.check else None


class EventTable:
    """All send-side specs, by scope type. Shared by every instance."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, EventSpec]] = {}
        self._core_http = False

    def register(self, scope_type: str, specs: Mapping[str, EventSpec]) -> None:
        self._specs.setdefault(scope_type, {}).update(specs)
        # The shortcut in ``validate`` hard-codes the core HTTP response specs: only while they are the ones in force.
        http = self._specs.get("http", {})
        self._core_http = all(http.get(kind) is HTTP_SEND[kind] for kind in ("http.response.start", "http.response.body"))

    def validate(self, scope_type: str, event: Any) -> None:
        """Raise ``InvalidEvent`` with a message naming the event if it is not allowed.

        Every HTTP response sends ``http.response.start`` and ``http.response.body``, so their
        usual shape (a plain dict; an int status, a list or tuple of ``(bytes, bytes)`` tuples,
        bytes body, bool flags) is recognised here without walking the spec. Whatever that does
        not recognise, valid or not, gets the full check: same verdict, same error text.
        """
        if scope_type == "http" and self._core_http and type(event) is dict:
            kind = event.get("type")
            if kind == "http.response.body":
                body = event.get("body")
                more = event.get("more_body")
                if (body is None or type(body) is bytes) and (more is None or more is True or more is False):
                    return
            elif kind == "http.response.start" and _plain_response_start(event):
                return
        self._check(scope_type, event)

    def _check(self, scope_type: str, event: Any) -> None:
        """The full check against the registered specs."""
        if not isinstance(event, dict):
            raise InvalidEvent(f"event must be a dict, not {type(event).__name__}")
        etype = event.get("type")
        specs = self._specs.get(scope_type)
        if specs is None:
            return  # a scope type nobody declared: nothing to hold the app to
        spec = specs.get(etype) if isinstance(etype, str) else None
        if spec is None:
            allowed = ", ".join(sorted(specs))
            raise InvalidEvent(
                f"unknown event type {etype!r} for a {scope_type!r} scope (allowed: {allowed})"
            )
        problem = spec.problem(event)
        if problem:
            raise InvalidEvent(f"{etype!r} event: {problem}")


def _plain_response_start(event: dict[str, Any]) -> bool:
    """Whether an ``http.response.start`` has the usual shape that needs no spec walk (see ``validate``)."""
    status = event.get("status")
    if type(status) is not int or not 100 <= status <= 999:
        return False
    trailers = event.get("trailers")
    if trailers is not None and trailers is not True and trailers is not False:
        return False
    headers = event.get("headers")
    if headers is None:
        return True
    if type(headers) is not list and type(headers) is not tuple:
        return False
    for pair in headers:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not bytes or type(pair[1]) is not bytes:
            return False
    return True


def _headers_ok(event: Mapping[str, Any]) -> str | None:
    headers = event.get("headers")
    if headers is None:
        return None
    try:
        for name, value in headers:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                return "field 'headers' must hold (bytes, bytes) pairs"
    except (TypeError, ValueError):
        return "field 'headers' must be an iterable of (name, value) pairs"
    return None


def _status_ok(event: Mapping[str, Any]) -> str | None:
    status = event["status"]
    if status is None:  # present but None: the type check above lets None through as "absent"
        return "field 'status' must be int, not NoneType"
    if not 100 <= status <= 999:
        return f"field 'status' must be a 3-digit HTTP status, not {status}"
    return _headers_ok(event)


def _one_payload(event: Mapping[str, Any]) -> str | None:
    if (event.get("bytes") is None) == (event.get("text") is None):
        return "exactly one of 'bytes' and 'text' must be set"
    return None


def _close_code(event: Mapping[str, Any]) -> str | None:
    code = event.get("code")
    # 1004-1006 and 1015 are reserved: an endpoint must never send them (RFC 6455 7.4.1).
    if code is not None and not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return f"field 'code' {code} is not a valid WebSocket close code"
    return None


_BYTES = (bytes, bytearray, memoryview)
_LIST = (list, tuple)
_STR = (str,)
_BOOL = (bool,)
_INT = (int,)

HTTP_SEND: dict[str, EventSpec] = {
    "http.response.start": EventSpec(
        {"status": _INT, "headers": (list, tuple), "trailers": _BOOL},
        frozenset({"status"}),
        _status_ok,
    ),
    "http.response.body": EventSpec({"body": _BYTES, "more_body": _BOOL}),
    "http.response.trailers": EventSpec(
        {"headers": _LIST, "more_trailers": _BOOL}, check=_headers_ok
    ),
}

WEBSOCKET_SEND: dict[str, EventSpec] = {
    "websocket.accept": EventSpec(
        {"subprotocol": _STR, "headers": _LIST}, check=_headers_ok
    ),
    "websocket.send": EventSpec({"bytes": _BYTES, "text": _STR}, check=_one_payload),
    "websocket.close": EventSpec({"code": _INT, "reason": _STR}, check=_close_code),
    "websocket.http.response.start": EventSpec(
        {"status": _INT, "headers": _LIST}, frozenset({"status"}), _status_ok
    ),
    "websocket.http.response.body": EventSpec({"body": _BYTES, "more_body": _BOOL}),
}

LIFESPAN_SEND: dict[str, EventSpec] = {
    "lifespan.startup.complete": EventSpec(),
    "lifespan.startup.failed": EventSpec({"message": _STR}),
    "lifespan.shutdown.complete": EventSpec(),
    "lifespan.shutdown.failed": EventSpec({"message": _STR}),
}


def core_table() -> EventTable:
    table = EventTable()
    table.register("http", HTTP_SEND)
    table.register("websocket", WEBSOCKET_SEND)
    table.register("lifespan", LIFESPAN_SEND)
    return table
