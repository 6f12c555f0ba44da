"""E-mail routes: matchers on the envelope recipient (`to`), the envelope sender (`from`) and headers.

Patterns for `to` and `from` are globs against the whole address, case-insensitive:
``*`` is any run of characters, ``?`` one character, ``<name>`` a named capture of one or more
characters other than ``@`` (it becomes ``scope["url_route"]["kwargs"]["name"]``). Write
``{regex: "..."}`` instead for a regular expression (matched against the whole address, named
groups become kwargs). Header patterns are regular expressions searched in the decoded header
value, case-insensitive.

At RCPT time the headers are not known yet: the SMTP listener asks the router with
``scope["headers"] = None`` and a header matcher then answers "may match" (no captures). The
real, first-match-wins routing happens when the message is complete.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from gateway.schema import RouteConfig, Section

_CAPTURE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


class RegexPattern(Section):
    regex: str = Field(description="A regular expression matched against the whole address; named groups become kwargs.")


def glob_to_regex(pattern: str) -> str:
    """Translate an address glob (``*``, ``?``, ``<name>``) to a regular expression."""
    out: list[str] = []
    i = 0
    seen: set[str] = set()
    while i < len(pattern):
        ch = pattern[i]
        if ch == "<":
            m = _CAPTURE.match(pattern, i)
            if m is None:
                raise ValueError(f"{pattern!r}: '<' starts a capture like <name> (letters, digits, underscore)")
            name = m.group(1)
            if name in seen:
                raise ValueError(f"{pattern!r}: capture <{name}> appears twice")
            seen.add(name)
            out.append(f"(?P<{name}>[^@]+)")
            i = m.end()
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


class AddressPattern:
    """A compiled `to`/`from` pattern."""

    def __init__(self, spec: str | RegexPattern, key: str) -> None:
        if isinstance(spec, RegexPattern):
            source = spec.regex
            self.text = f"{key}~/{spec.regex}/"
        else:
            source = glob_to_regex(spec)
            self.text = f"{key}={spec}"
        try:
            self.regex = re.compile(source, re.IGNORECASE | re.DOTALL)
        except re.error as exc:
            raise ValueError(f"'{key}': invalid regular expression {source!r}: {exc}") from None

    def match(self, value: str | None) -> dict[str, Any] | None:
        if value is None:
            return None
        m = self.regex.fullmatch(value)
        if m is None:
            return None
        return {k: v for k, v in m.groupdict().items() if v is not None}


class HeaderPattern:
    def __init__(self, name: str, pattern: str) -> None:
        self.name = name.lower()
        self.key = self.name.encode("ascii", "replace")
        try:
            self.regex = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"'header.{name}': invalid regular expression {pattern!r}: {exc}") from None
        self.text = f"{self.name}~/{pattern}/"

    def match(self, headers: Any) -> dict[str, Any] | None:
        for hname, hvalue in headers:
            if hname == self.key:
                text = hvalue.decode("utf-8", "replace") if isinstance(hvalue, (bytes, bytearray)) else str(hvalue)
                m = self.regex.search(text)
                if m is not None:
                    return {k: v for k, v in m.groupdict().items() if v is not None}
        return None


class EmailMatcher:
    """Matches an ``email`` scope on ``rcpt_to``, ``mail_from`` and ``headers``; all given must match."""

    def __init__(self, to: AddressPattern | None, sender: AddressPattern | None, headers: list[HeaderPattern]) -> None:
        self.to = to
        self.sender = sender
        self.headers = headers

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        kwargs: dict[str, Any] = {}
        if self.to is not None:
            found = self.to.match(scope.get("rcpt_to"))
            if found is None:
                return None
            kwargs.update(found)
        if self.sender is not None:
            found = self.sender.match(scope.get("mail_from"))
            if found is None:
                return None
            kwargs.update(found)
        if self.headers:
            headers = scope.get("headers")
            if headers is not None:  # None: RCPT time, headers unknown -> "may match"
                for pattern in self.headers:
                    found = pattern.match(headers)
                    if found is None:
                        return None
                    kwargs.update(found)
        return (), kwargs

    def describe(self) -> str:
        parts = []
        if self.to is not None:
            parts.append(self.to.text)
        if self.sender is not None:
            parts.append(self.sender.text)
        parts.extend(p.text for p in self.headers)
        return " ".join(parts) or "(any)"


class EmailRoute(RouteConfig):
    """A route for `email`: any combination of `to`, `from` and `header`; none of them matches every message."""

    model_config = ConfigDict(populate_by_name=True)

    to: str | RegexPattern | None = Field(
        None,
        description="Envelope recipient: a glob against the whole address (`*`, `?`, `<name>` captures, e.g. "
        "`ticket+<id>@support.example.com`) or `{regex: ...}` with named groups.",
    )
    from_: str | RegexPattern | None = Field(
        None, alias="from", description="Envelope sender: a glob or `{regex: ...}`, like `to`."
    )
    header: dict[str, str] | None = Field(
        None, description="Header name -> regular expression searched in the decoded value, e.g. `{subject: '\\[urgent\\]'}`."
    )

    @model_validator(mode="after")
    def _shape(self) -> EmailRoute:
        if self.app is None:
            raise ValueError("an email route needs 'app'")
        self.matcher()
        return self

    def matcher(self) -> EmailMatcher:
        return EmailMatcher(
            AddressPattern(self.to, "to") if self.to is not None else None,
            AddressPattern(self.from_, "from") if self.from_ is not None else None,
            [HeaderPattern(name, pattern) for name, pattern in (self.header or {}).items()],
        )
