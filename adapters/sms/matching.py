"""SMS routes: on the kind of scope, the account, our number (`to`), the sender's prefix (`from`),
the first word (`keyword`, with aliases) and a `body` regular expression whose named groups become
``url_route.kwargs``. A message route with none of these keys is the default.

This is the routing shape of the original Channels sketch,
``SMSFromRouter([phone("+44", UKTextHandler), default(UnknownTextHandler)])``, written in YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from gateway.schema import RouteConfig

_E164 = re.compile(r"\+[1-9][0-9]{0,14}")


def _listed(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class SmsMatcher:
    """Matches an ``sms`` scope; every key given must match."""

    def __init__(
        self, kind: str, account: str | None, to: list[str], prefixes: list[str], keywords: list[str], body: re.Pattern[str] | None
    ) -> None:
        self.kind = kind
        self.account = account
        self.to = frozenset(to)
        self.prefixes = tuple(prefixes)
        self.keywords = frozenset(keywords)
        self.body = body

    def match(self, scope: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if scope.get("kind", "message") != self.kind:
            return None
        if self.account is not None and scope.get("account") != self.account:
            return None
        if self.to and scope.get("to") not in self.to:
            return None
        if self.prefixes and not str(scope.get("from") or "").startswith(self.prefixes):
            return None
        if self.keywords and scope.get("keyword") not in self.keywords:
            return None
        if self.body is not None:
            found = self.body.search(str(scope.get("body") or ""))
            if found is None:
                return None
            return (), {k: v for k, v in found.groupdict().items() if v is not None}
        return (), {}

    def describe(self) -> str:
        parts = [] if self.kind == "message" else [f"events={self.kind}"]
        if self.account is not None:
            parts.append(f"account={self.account}")
        if self.to:
            parts.append("to=" + "|".join(sorted(self.to)))
        if self.prefixes:
            parts.append("from=" + "|".join(f"{p}*" for p in self.prefixes))
        if self.keywords:
            parts.append("keyword=" + "|".join(sorted(self.keywords)))
        if self.body is not None:
            parts.append(f"body~/{self.body.pattern}/")
        return " ".join(parts) or "(any)"


class SmsRoute(RouteConfig):
    """A route for `sms`. Message routes by default; `events: status` routes delivery reports."""

    model_config = ConfigDict(populate_by_name=True)

    events: Literal["message", "status"] = Field(
        "message", description="Which scopes the route takes: inbound texts (`message`) or delivery reports (`status`).",
    )
    account: str | None = Field(None, description="Only traffic of this account (its `name`).")
    to: str | list[str] | None = Field(None, description="Our number(s) the text was sent to, E.164 (`+15005550006`).")
    from_: str | list[str] | None = Field(None, alias="from", description="Sender prefix(es), E.164 style: `+44`, `+1415`.")
    keyword: str | list[str] | None = Field(
        None, description="The first word of the body, case-insensitive; a list gives aliases (`[JOIN, SUBSCRIBE, YES]`)."
    )
    body: str | None = Field(None, description="A regular expression searched in the body; named groups become `url_route.kwargs`.")
    max_concurrency: int | None = Field(
        None, gt=0, description="Instances of this route at once; a webhook beyond it gets `503` with `Retry-After` (the provider retries)."
    )

    @model_validator(mode="after")
    def _shape(self) -> SmsRoute:
        if self.app is None:
            raise ValueError("an sms route needs 'app'")
        for number in _listed(self.to):
            if not _E164.fullmatch(number):
                raise ValueError(f"'to': {number!r} is not an E.164 number (+ and up to 15 digits)")
        for prefix in _listed(self.from_):
            if not _E164.fullmatch(prefix) and prefix != "+":
                raise ValueError(f"'from': {prefix!r} is not a number prefix like '+44'")
        for word in _listed(self.keyword):
            if not word.strip() or len(word.split()) != 1:
                raise ValueError(f"'keyword': {word!r} must be one word")
        self.matcher()
        return self

    def matcher(self) -> SmsMatcher:
        body = None
        if self.body is not None:
            try:
                body = re.compile(self.body)
            except re.error as exc:
                raise ValueError(f"'body': invalid regular expression {self.body!r}: {exc}") from None
        return SmsMatcher(
            self.events, self.account, _listed(self.to), _listed(self.from_),
            [w.strip().upper() for w in _listed(self.keyword)], body,
        )
