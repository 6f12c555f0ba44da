"""Topic filters with named wildcards (the mqtt route matcher) and the route/adapter config."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.server import Gateway
from gateway_adapters.mqtt.events import outgoing, publish_event
from gateway_adapters.mqtt.topics import TopicError, TopicMatcher, check_topic_name

pytestmark = pytest.mark.usefixtures("only_mqtt")


def m(filter_: str, topic: str):
    return TopicMatcher(filter_).match_topic(topic)


def test_named_single_level_wildcard() -> None:
    assert m("sensors/+device/temperature", "sensors/k1/temperature") == {"device": "k1"}
    assert m("sensors/+device/temperature", "sensors/k1/humidity") is None
    assert m("sensors/+device/temperature", "sensors/k1/x/temperature") is None
    assert m("sensors/+device/temperature", "sensors//temperature") == {"device": ""}
    assert TopicMatcher("sensors/+device/temperature").subscription == "sensors/+/temperature"


def test_named_multi_level_wildcard() -> None:
    assert m("logs/#rest", "logs/a/b/c") == {"rest": "a/b/c"}
    assert m("logs/#rest", "logs") == {"rest": ""}  # '#' also matches the parent level
    assert m("logs/#rest", "logsx/a") is None
    assert m("+site/logs/#", "paris/logs/x") == {"site": "paris"}
    assert TopicMatcher("logs/#rest").subscription == "logs/#"


def test_unnamed_and_literal() -> None:
    assert m("a/+/c", "a/b/c") == {}
    assert m("#", "anything/at/all") == {}
    assert m("a/b", "a/b") == {}
    assert m("a/b", "a/b/") is None


def test_dollar_topics_never_match_leading_wildcards() -> None:
    assert m("#", "$SYS/broker/uptime") is None
    assert m("+/broker/uptime", "$SYS/broker/uptime") is None
    assert m("#all", "$SYS/x") is None
    assert m("$SYS/#rest", "$SYS/broker/uptime") == {"rest": "broker/uptime"}
    assert m("$SYS/+what/uptime", "$SYS/broker/uptime") == {"what": "broker"}


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a/+x+/c", "a/+1bad", "a/+x/+x", "$share/g/a", "a/b+"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(TopicError):
        TopicMatcher(bad)


def test_publish_topic_names() -> None:
    assert check_topic_name("a/b") is None
    assert "wildcard" in check_topic_name("a/+")
    assert "wildcard" in check_topic_name("a/#")
    assert check_topic_name("") is not None
    assert check_topic_name(b"a") is not None


def test_publish_event_helper_and_normalising() -> None:
    ev = publish_event("out/x", json={"t": 21.5, "unit": "°C"}, qos=1)
    out = outgoing(ev)
    assert out.payload == '{"t":21.5,"unit":"°C"}'.encode()
    assert (out.topic, out.qos, out.retain) == ("out/x", 1, False)
    assert outgoing({"type": "mqtt.publish", "topic": "a", "payload": "text"}).payload == b"text"
    assert outgoing({"type": "mqtt.publish", "topic": "a", "json": [1]}).payload == b"[1]"
    with pytest.raises(ValueError, match="wildcard"):
        outgoing({"type": "mqtt.publish", "topic": "a/#", "payload": b""})
    with pytest.raises(ValueError, match="qos"):
        outgoing({"type": "mqtt.publish", "topic": "a", "qos": 3})


def test_route_config_errors_name_the_key(tmp_path) -> None:
    text = """\
adapters:
  mqtt: {mode: client, url: "mqtt://127.0.0.1:1"}
routes:
  mqtt:
    - {topic: "a/#x/b", app: "mqtt_helpers:route_app"}
"""
    with pytest.raises(ConfigError) as info:
        Gateway.from_text(text)
    assert "'#' must be the last level" in str(info.value)
    assert "line 5" in str(info.value) or ":5" in str(info.value)


@pytest.mark.parametrize("adapter, message", [
    ("{mode: client}", "client mode needs 'url'"),
    ("{mode: client, url: 'http://x'}", "mqtt:// or mqtts://"),
    ("{mode: client, url: 'mqtt://x', clean_session: false}", "needs a 'client_id'"),
    ("{mode: client, url: 'mqtt://x', shared: 'a/b'}", "shared group"),
    ("{url: 'mqtt://x'}", "'url' is for client mode"),
    ("{mode: client, url: 'mqtt://x', colour: red}", "unknown key 'colour'"),
    ("{mode: client, url: 'mqtt://x', users: {a: {password: b}}}", "'users' only applies to broker mode"),
    ("{listen: ['127.0.0.1:0'], shared: g, client_id: c}", "'client_id', 'shared' only applies to client mode"),
])
def test_adapter_config_errors(adapter: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Gateway.from_text(f"adapters:\n  mqtt: {adapter}\n")


def test_one_address_cannot_be_listened_on_twice() -> None:
    with pytest.raises(ConfigError, match="127.0.0.1:18830 is already used by adapters.mqtt"):
        Gateway.from_text('adapters:\n  mqtt: {listen: ["127.0.0.1:18830"], ws_listen: ["127.0.0.1:18830"]}\n')


def test_tls_listener_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match="'tls_listen' needs"):
        Gateway.from_text('adapters:\n  mqtt: {tls_listen: ["127.0.0.1:0"]}\n')


def test_subscriptions_merge_filters_and_apply_shared_group() -> None:
    text = """\
adapters:
  mqtt: {mode: client, url: "mqtt://127.0.0.1:1", shared: workers}
routes:
  mqtt:
    - {topic: "sensors/+device/temperature", app: "mqtt_helpers:route_app", qos: 0}
    - {topic: "sensors/+room/temperature", app: "mqtt_helpers:route_app", qos: 2}
    - {topic: "logs/#rest", app: "mqtt_helpers:route_app"}
"""
    from gateway.plugins import AdapterContext
    from gateway_adapters.mqtt import MqttAdapter

    gw = Gateway.from_text(text)
    plan = gw.plan.adapters[0]
    ctx = AdapterContext("mqtt", gw.router, gw.runner, None, gw.metrics, gw.mounts, gw.health, None)  # type: ignore[arg-type]
    adapter = MqttAdapter(plan.config, ctx)
    assert adapter.subscriptions() == [("$share/workers/sensors/+/temperature", 2), ("$share/workers/logs/#", 1)]
