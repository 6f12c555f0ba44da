"""The SMTP listener's contract with aiosmtpd's private internals (adapters/email/aiosmtpd_compat.py),
checked against the installed aiosmtpd."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from aiosmtpd.smtp import SMTP
from compat_helpers import declared_range, private_uses
from email_helpers import make_gateway

from gateway.errors import StartupError
from gateway_adapters.email.aiosmtpd_compat import CONTRACT, SUPPORTED

CONFIG = """\
adapters:
  email:
    smtp: {listen: "127.0.0.1:0", hostname: gw.test, domains: [example.com]}
routes:
  email:
    - {to: "*@example.com", app: "email_helpers:ok"}
"""


def test_the_installed_aiosmtpd_has_every_private_name_and_signature_used() -> None:
    assert CONTRACT.problems() == []
    CONTRACT.require()


def test_a_missing_method_is_named_with_the_version_and_the_supported_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(SMTP, "_timeout_cb")
    with pytest.raises(StartupError) as caught:
        CONTRACT.require()
    assert str(caught.value) == f"aiosmtpd {version('aiosmtpd')} is not supported: SMTP._timeout_cb is missing; supported: aiosmtpd {SUPPORTED}"


def test_a_changed_signature_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SMTP, "_reset_timeout", lambda self: None)
    assert CONTRACT.problems() == ["SMTP._reset_timeout takes (self) instead of (self, duration)"]


async def test_the_email_adapter_refuses_to_start_on_an_unsupported_aiosmtpd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(SMTP, "_getaddr")
    gateway = make_gateway(CONFIG)
    with pytest.raises(StartupError, match=r"aiosmtpd \S+ is not supported: SMTP._getaddr is missing; supported: "):
        await gateway.start()


def test_the_supported_range_is_the_one_pyproject_declares() -> None:
    assert declared_range("aiosmtpd") == SUPPORTED


def test_no_module_but_aiosmtpd_compat_uses_a_private_name_of_aiosmtpd() -> None:
    assert CONTRACT.private_names
    assert private_uses(CONTRACT.private_names, "adapters/email", "adapters/email/aiosmtpd_compat.py", r"aiosmtpd\b") == []
