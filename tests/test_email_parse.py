"""The parsed form of a message (docs/specs/email.md), straight from ``parse_message``: MIME
headers are parsed once and remembered by their text, and that must never blur two messages."""

from __future__ import annotations

from gateway_adapters.email.parse import parse_message

MIXED = (
    b"From: Ann <ann@example.org>\r\nTo: support@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
    b"--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=E9\r\n"
    b"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>caf\xc3\xa9</p>\r\n"
    b"--B\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
    b"--B--\r\n"
)


def plain(charset: str, body: bytes) -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: s\r\n"
            b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n" + body + b"\r\n")


def test_a_multipart_message_in_full() -> None:
    for _ in range(2):  # the second time the MIME headers come from the cache
        parsed = parse_message(MIXED)
        assert parsed["subject"] == "café"
        assert parsed["from"] == {"name": "Ann", "address": "ann@example.org"}
        assert parsed["text"].strip() == "café" and parsed["html"].strip() == "<p>café</p>"
        (attachment,) = parsed["attachments"]
        assert attachment["filename"] == "r.pdf" and attachment["content_type"] == "application/pdf"
        assert attachment["content"] == b"%PDF-" and attachment["disposition"] == "attachment"
        assert ["Content-Type", 'multipart/mixed; boundary="B"'] in parsed["headers"]  # the text as sent
        assert parsed["defects"] == []


def test_remembered_mime_headers_never_mix_two_messages() -> None:
    latin = parse_message(plain("iso-8859-1", b"caf\xe9"))
    utf8 = parse_message(plain("utf-8", b"caf\xc3\xa9"))
    latin_again = parse_message(plain("iso-8859-1", b"na\xefve"))
    assert (latin["text"].strip(), utf8["text"].strip(), latin_again["text"].strip()) == ("café", "café", "naïve")


def test_a_bad_charset_is_a_defect_not_a_failure() -> None:
    for _ in range(2):
        parsed = parse_message(plain("nonsense", b"hello"))
        assert parsed["text"].strip() == "hello"
        assert any("text/plain body" in d for d in parsed["defects"])


# -- the cost of parsing is bounded: nesting depth, part count, header count ------------------------
import pytest
from email_helpers import nested

from gateway_adapters.email.config import MimeLimits
from gateway_adapters.email.parse import TooComplex


def parts(n: int) -> bytes:
    """``n`` parts: the multipart container and ``n - 1`` text parts in it."""
    body = b"".join(b"--P\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(n - 1))
    return (b"From: a@example.org\r\nSubject: parts\r\nContent-Type: multipart/mixed; boundary=P\r\n\r\n"
            + body + b"--P--\r\n")


def headers(n: int) -> bytes:
    return b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1)) + b"Subject: many\r\n\r\nbody\r\n"


def test_a_thousand_levels_deep_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(TooComplex) as info:
        parse_message(nested(1000))
    assert "nesting" in str(info.value)


@pytest.mark.parametrize("make, key, limit", [
    (nested, "max_depth", 3),
    (parts, "max_parts", 5),
    (headers, "max_headers", 7),
])
def test_each_limit_at_its_boundary(make, key, limit) -> None:
    limits = MimeLimits(**{key: limit})
    parsed = parse_message(make(limit), limits)
    assert parsed["defects"] == []
    with pytest.raises(TooComplex):
        parse_message(make(limit + 1), limits)


def test_parts_count_the_message_itself_and_nested_messages_count_as_depth() -> None:
    inner = b"Subject: inner\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    forwarded = (b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=F\r\n\r\n--F\r\n"
                 b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--F--\r\n")
    assert parse_message(forwarded, MimeLimits(max_depth=2, max_parts=3))["text"].strip() == "hi"
    with pytest.raises(TooComplex):
        parse_message(forwarded, MimeLimits(max_depth=1))
    with pytest.raises(TooComplex):
        parse_message(forwarded, MimeLimits(max_parts=2))


def test_a_boundary_the_scan_cannot_read_still_never_raises_a_recursion_error() -> None:
    # RFC 2231 continuations hide the boundary from a simple reading; the parser still nests.
    deep = nested(1200).replace(b'boundary="', b"boundary*0*=''").replace(b'"\r\n\r\n', b"\r\n\r\n")
    with pytest.raises(TooComplex):
        parse_message(deep)
