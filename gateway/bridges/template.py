"""Text templates filled from a message's fields: ``alerts/{level}``, ``room-{room}``.

Only plain ``{field}`` references: a bridge's template names fields of a message, it is not a
formatting language, so conversions, format specs and indexing are refused when the file is
read rather than surprising someone at run time.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any


class MissingField(LookupError):
    """A message lacks a field its template names; the message cannot be forwarded."""


class Template:
    """A parsed template; ``fill`` substitutes the fields of one message."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"template {text!r}: {exc} (write a literal brace as '{{{{' or '}}}}')") from None
        for literal, field, spec, conversion in parsed:
            if field is not None and (spec or conversion or not field.isidentifier()):
                raise ValueError(f"template {text!r}: write a field as {{name}} (a plain field name, no format spec), not {{{field}}}")
            parts.append((literal, field))
        self._parts = parts
        self.fields = tuple(dict.fromkeys(f for _, f in parts if f is not None))

    def fill(self, values: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is None:
                continue
            if field not in values or values[field] is None:
                raise MissingField(f"the message has no field {field!r} for the template {self.text!r}")
            value = values[field]
            out.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
        return "".join(out)

    def __str__(self) -> str:
        return self.text
