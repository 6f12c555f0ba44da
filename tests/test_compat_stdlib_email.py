"""The e-mail adapter's contract with private internals of the standard library's ``email``
package (adapters/email/stdlib_compat.py), checked against the running Python."""

from __future__ import annotations

import email
import platform
from email import _header_value_parser
from email.message import Message

import pytest
from compat_helpers import private_uses

from gateway.errors import StartupError
from gateway_adapters.email.stdlib_compat import CONTRACT, SUPPORTED, mail_argument


def test_the_running_python_has_every_private_name_and_signature_used() -> None:
    assert CONTRACT.problems() == []
    CONTRACT.require()


def test_a_missing_name_is_named_with_the_version_and_the_supported_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_header_value_parser, "get_angle_addr")
    with pytest.raises(StartupError) as caught:
        CONTRACT.require()
    assert str(caught.value) == (
        f"Python {platform.python_version()} is not supported: email._header_value_parser.get_angle_addr is missing; supported: Python {SUPPORTED}"
    )


def test_a_missing_module_and_instance_attribute_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(email, "_header_value_parser")
    assert CONTRACT.problems() == ["email._header_value_parser is missing"]


def test_mail_arguments_parse_as_aiosmtpd_expects() -> None:
    assert mail_argument("<a@example.com> SIZE=100") == ("a@example.com", "SIZE=100")
    assert mail_argument("b@example.com") == ("b@example.com", "")
    assert mail_argument("<<") is None


def test_no_module_but_stdlib_compat_uses_a_private_name_of_the_email_package() -> None:
    assert CONTRACT.private_names == {"_header_value_parser", "_headers"}
    assert private_uses(CONTRACT.private_names, "adapters/email", "adapters/email/stdlib_compat.py", r"email\b") == []
    assert Message()._headers == []  # the attribute the contract checks on the class's source
