"""Every use of private internals of the standard library's ``email`` package, checked at start-up.

Two, both for speed on every message, with no public equivalent:

* ``email._header_value_parser``'s ``get_angle_addr`` / ``get_addr_spec``: the RFC 5322 address
  parser that aiosmtpd itself applies to MAIL FROM and RCPT TO arguments (``mail_argument``);
* ``Message._headers``, the list of (name, raw value) pairs: reading it keeps header order and
  duplicates without the policy parsing every value (``raw_headers``), and writing it replaces
  surrogate-escaped 8-bit header text in one pass (``replace_raw_headers``).

``CONTRACT`` lists both; ``EmailAdapter.start`` calls ``CONTRACT.require()``.
"""

from __future__ import annotations

import email
import platform
from email.errors import HeaderParseError
from email.message import Message
from typing import Any

from gateway.libcompat import Contract

try:
    from email import _header_value_parser as _parser
except ImportError:  # reported by CONTRACT
    _parser = None  # type: ignore[assignment]

SUPPORTED = "CPython >=3.11 (the email package as of 3.11 to 3.14)"

Headers = list[tuple[str, Any]]


def mail_argument(arg: str) -> tuple[str, str] | None:
    """The address of a MAIL or RCPT argument (``<a@b> SIZE=10`` or ``a@b``) and the rest of
    the line; ``None`` when it does not parse."""
    parse = _parser.get_angle_addr if arg.lstrip().startswith("<") else _parser.get_addr_spec
    try:
        token, rest = parse(arg)
    except HeaderParseError:
        return None
    return token.addr_spec, rest


def raw_headers(msg: Message) -> Headers:
    """The message's header fields as parsed: names and raw values, in order, duplicates kept."""
    return msg._headers  # type: ignore[attr-defined]


def replace_raw_headers(msg: Message, headers: Headers) -> None:
    msg._headers = headers  # type: ignore[attr-defined]


CONTRACT = Contract("Python", SUPPORTED, version=platform.python_version)
CONTRACT.attribute(email, "_header_value_parser")
if _parser is not None:
    CONTRACT.method(_parser, "get_angle_addr", ("value",))
    CONTRACT.method(_parser, "get_addr_spec", ("value",))
CONTRACT.attribute(Message, "_headers")
