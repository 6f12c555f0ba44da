"""Broker mode's contract with amqtt's private internals (adapters/mqtt/amqtt_compat.py),
checked against the installed amqtt."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from compat_helpers import declared_range, private_uses
from mqtt_helpers import broker_yaml, route

from gateway.errors import StartupError
from gateway.server import Gateway
from gateway_adapters.mqtt.amqtt_compat import CONTRACT, SUPPORTED


def test_the_installed_amqtt_has_every_private_name_and_signature_used() -> None:
    assert CONTRACT.problems() == []
    CONTRACT.require()


def test_a_missing_method_is_named_with_the_version_and_the_supported_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Broker, "_matches")
    with pytest.raises(StartupError) as caught:
        CONTRACT.require()
    assert str(caught.value) == f"amqtt {version('amqtt')} is not supported: Broker._matches is missing; supported: amqtt {SUPPORTED}"


def test_a_changed_signature_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def flow(self: object, app_message: object, timeout: float) -> None:
        pass

    monkeypatch.setattr(BrokerProtocolHandler, "_handle_qos2_message_flow", flow)
    assert CONTRACT.problems() == [
        "BrokerProtocolHandler._handle_qos2_message_flow takes (self, app_message, timeout) instead of (self, app_message)"
    ]


@pytest.mark.usefixtures("only_mqtt")
async def test_broker_mode_refuses_to_start_on_an_unsupported_amqtt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ProtocolHandler, "_reader_loop")  # inherited by the broker's handler
    gateway = Gateway.from_text(broker_yaml(route("a/#", "any")))
    with pytest.raises(StartupError, match=r"amqtt \S+ is not supported: BrokerProtocolHandler._reader_loop is missing; supported: "):
        await gateway.start()


def test_the_supported_range_is_the_one_pyproject_declares() -> None:
    assert declared_range("amqtt") == SUPPORTED


def test_no_module_but_amqtt_compat_uses_a_private_name_of_amqtt() -> None:
    assert CONTRACT.private_names
    assert private_uses(CONTRACT.private_names, "adapters/mqtt", "adapters/mqtt/amqtt_compat.py", r"amqtt\b") == []
