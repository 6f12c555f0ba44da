"""The client mode's contract with paho-mqtt's private internals (adapters/mqtt/paho_compat.py),
checked against the installed paho-mqtt."""

from __future__ import annotations

from importlib.metadata import version

import paho.mqtt.client as paho
import pytest
from compat_helpers import declared_range, private_uses
from mqtt_helpers import client_yaml, free_port, route

from gateway.errors import StartupError
from gateway.server import Gateway
from gateway_adapters.mqtt.paho_compat import CONTRACT, SUPPORTED


def test_the_installed_paho_has_every_private_name_and_signature_used() -> None:
    assert CONTRACT.problems() == []
    CONTRACT.require()


def test_a_missing_method_is_named_with_the_version_and_the_supported_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paho.Client, "_packet_read")
    with pytest.raises(StartupError) as caught:
        CONTRACT.require()
    assert str(caught.value) == (
        f"paho-mqtt {version('paho-mqtt')} is not supported: Client._packet_read is missing; supported: paho-mqtt {SUPPORTED}"
    )


def test_a_changed_signature_and_a_missing_module_name_are_both_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paho.Client, "_sock_recv", lambda self: b"")
    monkeypatch.delattr(paho, "_ConnectionState")
    assert CONTRACT.problems() == ["Client._sock_recv takes (self) instead of (self, bufsize)", "paho.mqtt.client._ConnectionState is missing"]


@pytest.mark.usefixtures("only_mqtt")
async def test_client_mode_refuses_to_start_on_an_unsupported_paho(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paho.Client, "_handle_publish")
    gateway = Gateway.from_text(client_yaml(free_port(), route("a/#", "any")))
    with pytest.raises(StartupError, match=r"paho-mqtt \S+ is not supported: Client._handle_publish is missing; supported: "):
        await gateway.start()


def test_the_supported_range_is_the_one_pyproject_declares() -> None:
    assert declared_range("paho-mqtt") == SUPPORTED


def test_no_module_but_paho_compat_uses_a_private_name_of_paho() -> None:
    assert CONTRACT.private_names
    assert private_uses(CONTRACT.private_names, "adapters/mqtt", "adapters/mqtt/paho_compat.py", r"paho\b") == []
