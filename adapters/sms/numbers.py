"""Phone numbers in E.164 and the length of a text in SMS segments.

Numbers are read with the ``phonenumbers`` library, so a national number (``07700 900123``)
becomes E.164 (``+447700900123``) with the adapter's ``default_region``. A number only has to be
*possible* (the right length for its country), not assigned: test and drama ranges pass.

Segments follow GSM 03.38: a text that fits the GSM-7 alphabet (extension characters count twice)
takes 160 septets in one part and 153 per part beyond; anything else is sent as UCS-2, counted in
UTF-16 units, 70 in one part and 67 per part beyond.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")


class InvalidNumber(ValueError):
    """A text that is not a possible phone number."""


@lru_cache(maxsize=8192)
def to_e164(number: str, region: str | None) -> str:
    """``number`` in E.164; raises ``InvalidNumber`` naming the number. Cached: the same few
    numbers (ours, regular senders) come back all the time, and parsing one costs ~80 µs."""
    text = number.strip()
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if region else " (national numbers need 'default_region')"
        raise InvalidNumber(f"{number!r} is not a phone number: {exc}{hint}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"{number!r} is not a possible phone number (wrong length for its country)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def encoding(text: str) -> str:
    """``"GSM-7"`` when every character is in the GSM 03.38 alphabet, else ``"UCS-2"``."""
    for ch in text:
        if ch not in _GSM_BASIC and ch not in _GSM_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def segments(text: str) -> tuple[int, str]:
    """``(number of SMS parts, encoding)`` for ``text`` (an empty text is one part)."""
    kind = encoding(text)
    if kind == "GSM-7":
        units = sum(2 if ch in _GSM_EXTENSION else 1 for ch in text)
        single, multi = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if units <= single:
        return 1, kind
    return -(-units // multi), kind
