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
