"""Raw message bytes -> the parsed form applications receive (stdlib ``email``, modern policy).

Malformed MIME, invalid or 8-bit headers and broken encodings never raise: they end up as
best-effort values plus a list of ``defects`` (texts), so one odd message never turns into a
failure the sender would retry forever. What does raise is a message over the ``mime`` limits
(``TooComplex``): the stdlib parser's cost grows with lines times nesting depth and its recursion
with the depth, so a crafted message could otherwise hold a CPU for seconds or blow the stack.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import email.utils
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any

from .stdlib_compat import raw_headers, replace_raw_headers

if TYPE_CHECKING:
    from .config import MimeLimits


class _HeaderClasses(HeaderRegistry):
    """The stdlib's registry builds a new header class (a metaclass call) every time it parses a
    header; build one per kind of header and reuse it. Keyed by the registry's class for the
    name, so odd header names cannot grow the cache."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:
            made = self._made[kind] = super().__getitem__(name)
        return made


# MIME headers the parser and the message API read again and again (content type, charset,
# disposition, filename, ...): every read parses the stored text anew, seven times per part.
_MIME_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})


class _Policy(email.policy.EmailPolicy):
    """The modern policy (``email.policy.default``), with parsed MIME headers remembered by their
    text. Parsed headers are immutable, and the same few values come in every message."""

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if not hasattr(value, "name") and name.lower() in _MIME_HEADERS:
            return _mime_header(self, name, value)
        return super().header_fetch_parse(name, value)


@functools.lru_cache(maxsize=512)
def _mime_header(policy: _Policy, name: str, value: str) -> Any:
    return email.policy.EmailPolicy.header_fetch_parse(policy, name, value)


_POLICY = _Policy(header_factory=_HeaderClasses())
_PARSER = BytesParser(policy=_POLICY)
_SURROGATES = re.compile("[\udc80-\udcff]")


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a header the policy cannot render
        return ""


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _simple(value: str) -> bool:
    """Plain ASCII with no encoded words: the raw text is already the decoded text."""
    return value.isascii() and "=?" not in value


def _decode(msg: EmailMessage, name: str, value: Any, defects: list[str]) -> str:
    if isinstance(value, str) and _simple(value):
        return _FOLD.sub("", value).strip()
    try:
        return _text(msg.policy.header_fetch_parse(name, value))
    except Exception as exc:  # noqa: BLE001
        defects.append(f"header {name}: {type(exc).__name__}: {exc}")
        return _text(value)


_ADDR = re.compile(r"\s*(?:([^<>@,]*?)\s*<([^<>\s@,]+@[^<>\s@,]+)>|([^<>\s@,]+@[^<>\s@,]+))\s*")
_HARD = re.compile(r'["()\\:;]')


def _plain_addresses(value: str) -> list[tuple[str, str]]:
    """``getaddresses`` for the common simple forms (``a@b``, ``Name <a@b>``, comma-separated);
    anything with quotes, comments, groups or escapes goes to the stdlib parser."""
    if not _HARD.search(value):
        out = []
        for item in value.split(","):
            if not item.strip():
                continue
            m = _ADDR.fullmatch(item)
            if m is None:
                break
            out.append((m.group(1) or "", m.group(2) or m.group(3)))
        else:
            return out
    return email.utils.getaddresses([value])


def _addresses(msg: EmailMessage, name: str, defects: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    lname = name.lower()
    for hname, raw in raw_headers(msg):
        if hname.lower() != lname:
            continue
        if isinstance(raw, str) and _simple(raw):
            pairs = _plain_addresses(_FOLD.sub("", raw))
            out.extend({"name": d, "address": a} for d, a in pairs if a)
            continue
        try:
            value = msg.policy.header_fetch_parse(hname, raw)
        except Exception as exc:  # noqa: BLE001
            defects.append(f"header {name}: {type(exc).__name__}: {exc}")
            continue
        addresses = getattr(value, "addresses", None)
        if addresses is not None:
            out.extend({"name": a.display_name or "", "address": a.addr_spec or ""} for a in addresses)
        else:
            out.extend({"name": d, "address": a} for d, a in email.utils.getaddresses([_text(value)]) if a)
    return out


def _payload_text(part: EmailMessage, defects: list[str]) -> str:
    try:
        return part.get_content()
    except Exception as exc:  # noqa: BLE001 - unknown charset, broken encoding
        defects.append(f"{part.get_content_type()} body: {type(exc).__name__}: {exc}")
        raw = part.get_payload(decode=True) or b""
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _utf8_headers(msg: EmailMessage) -> None:
    """Raw 8-bit header bytes (RFC 6532 UTF-8, or just broken) arrive surrogate-escaped:
    decode them as UTF-8 (invalid bytes become U+FFFD) so names and subjects read right."""
    for part in msg.walk():
        fixed = []
        for name, value in raw_headers(part):
            if isinstance(value, str) and _SURROGATES.search(value):
                value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
            fixed.append((name, value))
        replace_raw_headers(part, fixed)


def _parse(raw: bytes) -> EmailMessage:
    """``BytesParser(policy=default).parsebytes(raw)``, with a shortcut for single-part messages:
    the feed parser walks the body line by line, which dominates for large messages, while a
    non-multipart body needs no parsing at all."""
    sep = raw.find(b"\r\n\r\n")
    if sep > 0 and b"\n\n" not in raw[:sep]:
        head = _PARSER.parsebytes(raw[: sep + 4], headersonly=True)
        if not head.defects and head.get_content_maintype() != "multipart" and not head.get_payload():
            head.set_payload(raw[sep + 4:].decode("ascii", "surrogateescape"))
            return head  # type: ignore[return-value]
    return _PARSER.parsebytes(raw)  # type: ignore[return-value]


class TooComplex(Exception):
    """The message is over one of the ``mime`` limits; the text says which (safe to show a client)."""


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^[^ \t\r\n]", re.M)
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_DASHES = re.compile(rb"^--", re.M)
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


def _head(raw: bytes, start: int) -> tuple[int, int, str]:
    """The header block at ``start``: where its body begins, how many fields it has, its Content-Type."""
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return raw.index(b"\n", start) + 1, 0, ""
    m = _HEAD_END.search(raw, start)
    stop, body = (m.start(), m.end()) if m else (len(raw), len(raw))
    block = raw[start:stop]
    ctype = _CONTENT_TYPE.search(block)
    value = _UNFOLD.sub("", ctype.group(1).decode("ascii", "surrogateescape")).strip() if ctype else ""
    return body, len(_FIELD.findall(block)), value


def _boundary(content_type: str) -> bytes | None:
    """The boundary as the stdlib reads it (quoting, RFC 2231 parameters and all)."""
    holder = email.message.Message()
    holder["Content-Type"] = content_type
    boundary = holder.get_boundary()
    return boundary.rstrip().encode("ascii", "surrogateescape") if boundary else None


def check_structure(raw: bytes, limits: MimeLimits) -> None:
    """Raise ``TooComplex`` when ``raw`` is over ``limits``. One linear pass that reads only header
    blocks and lines starting with ``--``, and stops at the first limit crossed; it follows the
    boundaries the way the stdlib parser does, so depth and counts are the parser's own."""
    open_: list[tuple[bytes, int]] = []  # ("--" + boundary, depth of its parts), innermost last
    parts = fields = 0

    def enter(pos: int, depth: int) -> int:
        """A part (or the message) starts at ``pos`` with its headers; where its body starts."""
        nonlocal parts, fields
        while True:
            if depth > limits.max_depth:
                raise TooComplex(f"MIME nesting deeper than {limits.max_depth} levels")
            parts += 1
            if parts > limits.max_parts:
                raise TooComplex(f"more than {limits.max_parts} MIME parts")
            pos, count, ctype = _head(raw, pos)
            fields += count
            if fields > limits.max_headers:
                raise TooComplex(f"more than {limits.max_headers} header fields")
            kind = ctype.partition(";")[0].strip().lower()
            if kind.startswith("multipart/"):
                boundary = _boundary(ctype)
                if boundary:
                    open_.append((b"--" + boundary, depth + 1))
                return pos
            if not kind.startswith("message/") or kind == "message/delivery-status":
                return pos
            depth += 1  # message/rfc822 and the like: the body is a whole message, headers first

    pos = enter(0, 0)
    while open_:
        dashes = _DASHES.search(raw, pos)
        if dashes is None:
            return
        end = raw.find(b"\n", dashes.start())
        pos = len(raw) if end < 0 else end + 1
        line = raw[dashes.start():pos].rstrip()
        for i in range(len(open_) - 1, -1, -1):
            delimiter, depth = open_[i]
            if line.startswith(delimiter):
                rest = line[len(delimiter):]
                if rest == b"--":
                    del open_[i:]
                    break
                if not rest:
                    del open_[i + 1:]
                    pos = enter(pos, depth)
                    break


# Messages up to this size and line count are parsed on the event loop (a few milliseconds at
# most); bigger ones, and those with many lines, in a worker thread. The parse threads are few and
# their own: a burst of costly messages then holds at most two threads' worth of the interpreter
# lock against the loop, and never the default executor that AUTH hooks run in.
_INLINE_BYTES = 256 * 1024
_INLINE_LINES = 2000
_PARSE_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="email-parse")


async def read_message(raw: bytes, limits: MimeLimits) -> dict[str, Any]:
    """``parse_message`` on the loop when that is cheap, else in a worker thread."""
    if len(raw) > _INLINE_BYTES or raw.count(b"\n") > _INLINE_LINES:
        return await asyncio.get_running_loop().run_in_executor(_PARSE_THREADS, parse_message, raw, limits)
    return parse_message(raw, limits)


def parse_message(raw: bytes, limits: MimeLimits | None = None) -> dict[str, Any]:
    """The parsed form of ``raw`` (see docs/specs/email.md); ``TooComplex`` over ``limits``
    (default: the defaults of ``MimeLimits``)."""
    if limits is None:
        from .config import MimeLimits

        limits = MimeLimits()
    check_structure(raw, limits)
    try:
        return _parsed(raw)
    except RecursionError:
        # A nesting the scan could not see (it reads what the parser reads; this is the backstop).
        raise TooComplex("MIME nesting too deep to parse") from None


def _parsed(raw: bytes) -> dict[str, Any]:
    defects: list[str] = []
    msg = _parse(raw)
    _utf8_headers(msg)
    headers: list[list[str]] = []
    first: dict[str, str] = {}
    for name, value in raw_headers(msg):  # keeps order and duplicates, never raises
        text = _decode(msg, name, value, defects)
        headers.append([name, text])
        first.setdefault(name.lower(), text)

    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[dict[str, Any]] = []
    try:
        parts = list(msg.walk())
    except Exception as exc:  # noqa: BLE001
        defects.append(f"MIME structure: {type(exc).__name__}: {exc}")
        parts = [msg]
    for part in parts:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = None
        try:
            filename = part.get_filename()
        except Exception as exc:  # noqa: BLE001
            defects.append(f"attachment name: {type(exc).__name__}: {exc}")
        if disposition != "attachment" and filename is None and ctype in ("text/plain", "text/html"):
            (text_parts if ctype == "text/plain" else html_parts).append(_payload_text(part, defects))
            continue
        try:
            content = part.get_payload(decode=True) or b""
        except Exception as exc:  # noqa: BLE001
            defects.append(f"attachment body: {type(exc).__name__}: {exc}")
            content = b""
        attachments.append({
            "filename": filename,
            "content_type": ctype,
            "disposition": disposition or "attachment",
            "content_id": _text(part.get("Content-ID")) if part.get("Content-ID") is not None else None,
            "content": bytes(content) if not isinstance(content, bytes) else content,
        })
    for part in parts:
        for defect in getattr(part, "defects", ()):
            defects.append(f"{type(defect).__name__}: {defect}")

    date_text = first.get("date")
    date_iso = None
    if date_text:
        try:
            date_iso = email.utils.parsedate_to_datetime(date_text).isoformat()
        except (TypeError, ValueError, IndexError):
            defects.append(f"unparsable Date header {date_text!r}")
    references_text = first.get("references") or ""
    from_list = _addresses(msg, "From", defects)
    return {
        "message_id": first.get("message-id"),
        "from": from_list[0] if from_list else None,
        "to": _addresses(msg, "To", defects),
        "cc": _addresses(msg, "Cc", defects),
        "reply_to": _addresses(msg, "Reply-To", defects),
        "subject": first.get("subject"),
        "date": date_iso,
        "in_reply_to": first.get("in-reply-to"),
        "references": references_text.split(),
        "headers": headers,
        "text": "\n".join(text_parts) if text_parts else None,
        "html": "\n".join(html_parts) if html_parts else None,
        "attachments": attachments,
        "defects": defects,
    }


def scope_headers(parsed: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """ASGI-style ``(lowercase name, value)`` byte pairs of the decoded headers, for the scope."""
    return [
        (name.lower().encode("utf-8", "replace"), value.encode("utf-8", "replace"))
        for name, value in parsed["headers"]
    ]
