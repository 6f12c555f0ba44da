"""Response heads: the status lines, the server's own complete answers, and the head writer with
its cache of header names.

The head is written together with the first body chunk, so a simple response is a single
``transport.write``; the framing headers (Content-Length, Transfer-Encoding, Connection) are the
server's to decide from what the app sent.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .cycle import RequestCycle

STATUS_LINE: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}
NO_BODY_STATUS = frozenset({204, 304, *range(100, 200)})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
# Byte values, not one-byte strings: ``b"\n" in value`` first tries the needle as an integer and
# raises and clears a TypeError inside CPython, several times the cost of the search itself.
LF, CR, COLON = 10, 13, 58


def status_line(status: int) -> bytes:
    line = STATUS_LINE.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def simple_response(status: int, body: bytes | None = None, extra: bytes = b"", date: bytes = b"") -> bytes:
    """A complete response that closes the connection (errors the server answers itself)."""
    if body is None:
        body = (HTTPStatus(status).phrase + "\n").encode() if status in STATUS_LINE else b""
    return b"".join((
        status_line(status), date,
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body),
        extra, b"\r\n", body,
    ))


# What the head writer does with a response header, by name: write it as is, take it over (the
# server frames the body and decides on the connection), or refuse it. Plain ints with names: the
# head writer compares them for every header, and CPython specialises comparisons of exact ints only.
ROLE_PLAIN: Final = 0
ROLE_LENGTH: Final = 1
ROLE_FRAMING: Final = 2
ROLE_CONNECTION: Final = 3
ROLE_INVALID: Final = 4

# Apps send the same few names again and again, so the answer is remembered: the usual header
# costs one lookup instead of lowering, comparing and checking its name every time.
_ROLES: dict[bytes, int] = {}
_ROLES_MAX = 1024  # names an app makes up per response (a counter in the name) must not grow it without end


def header_role(name: bytes) -> int:
    """``name``'s ``ROLE_*``, remembered."""
    role = _ROLES.get(name)
    if role is None:
        lname = name.lower()
        if lname == b"content-length":
            role = ROLE_LENGTH
        elif lname == b"transfer-encoding":
            role = ROLE_FRAMING
        elif lname == b"connection":
            role = ROLE_CONNECTION
        elif not name or LF in name or CR in name or COLON in name:
            role = ROLE_INVALID
        else:
            role = ROLE_PLAIN
        if len(_ROLES) < _ROLES_MAX:
            _ROLES[name] = role
    return role


def check_header(name: bytes, value: bytes) -> None:
    """Refuse a header an app sent that would break the head (``RuntimeError``, the app's fault)."""
    if LF in value or CR in value or header_role(name) == ROLE_INVALID:
        raise RuntimeError(f"invalid response header {name!r}: {value!r}")


def write_head(cycle: RequestCycle, transport: Any, body: bytes, more: bool) -> None:
    """Write ``cycle``'s response head with the first body chunk, and settle its framing:
    Content-Length (``expected``), chunked, or the close marking the end (HTTP/1.0)."""
    status = cycle.status
    lines = [STATUS_LINE.get(status) or status_line(status), cycle.conn.server.date_header]
    content_length = None
    has_te = False
    for name, value in cycle.headers:
        role = _ROLES.get(name)
        if role is None:
            role = header_role(name)
        if role == ROLE_PLAIN and LF not in value and CR not in value:
            lines += (name, b": ", value, b"\r\n")
        elif role == ROLE_LENGTH:
            content_length = value
        elif role == ROLE_FRAMING:
            has_te = True  # the server does the framing
        elif role == ROLE_CONNECTION:
            if value.lower() == b"close":
                cycle.keep_alive = False
        else:
            check_header(name, value)  # raises: a name or a value that would break the head
    no_body = cycle.head or status in NO_BODY_STATUS
    cycle.no_body = no_body
    if content_length is not None:
        try:
            cycle.expected = int(content_length)
        except ValueError:
            raise RuntimeError(f"invalid content-length header {content_length!r}") from None
        if cycle.expected < 0:
            raise RuntimeError(f"invalid content-length header {content_length!r}")
        lines.append(b"content-length: %d\r\n" % cycle.expected)
        if no_body:
            cycle.expected = -1
    elif status in NO_BODY_STATUS:
        pass
    elif not more and not (cycle.trailers and cycle.version11) and not has_te:
        if body or not cycle.head:
            lines.append(b"content-length: %d\r\n" % len(body))
    elif cycle.version11:
        if not cycle.head:
            cycle.chunked = True
        lines.append(b"transfer-encoding: chunked\r\n")
    else:
        cycle.keep_alive = False  # HTTP/1.0 without a length: the end of the body is the close
    if not cycle.keep_alive or cycle.conn.closing:
        cycle.keep_alive = False
        lines.append(b"connection: close\r\n")
    elif not cycle.version11:
        lines.append(b"connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if body and not no_body:
        if cycle.expected >= 0 and len(body) > cycle.expected:
            raise RuntimeError("the response body is longer than its Content-Length")
        if cycle.chunked:
            lines.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            lines.append(body)
        cycle.sent += len(body)
    cycle.head_sent = True
    transport.write(b"".join(lines))
