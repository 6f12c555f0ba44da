"""MQTT test peers: a private Mosquitto on a free loopback port, paho clients, routed test apps.

Mosquitto is started from a config file of our own (never the system one on 1883). Run as root
it would drop to the ``mosquitto`` user; ``user root`` keeps it as the user that started it,
and it writes nothing to disk (no persistence, log to stderr).

Apps: YAML routes name ``mqtt_helpers:route_app``; it calls ``APPS[scope["route_name"]]``, so a
test installs its own behaviour per route name without writing a module.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from gateway_helpers import require
from paho.mqtt.enums import CallbackAPIVersion

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
APPS: dict[str, App] = {}


async def route_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await APPS[scope["route_name"]](scope, receive, send)


def route(topic: str, name: str, extra: str = "") -> str:
    """A YAML route line sending ``topic`` to the test app registered as ``APPS[name]``."""
    return f'    - {{topic: "{topic}", name: {name}, app: "mqtt_helpers:route_app"{", " + extra if extra else ""}}}\n'


def mqtt_entry_points(group: str) -> list[Any]:
    """The adapter entry points with only ``mqtt`` kept: these tests need no other adapter, and
    must not fail because another adapter's entry point is broken in the working tree."""
    from importlib.metadata import entry_points

    return [ep for ep in entry_points(group=group) if ep.name == "mqtt"]


def run_gateway_main(config: str) -> None:
    """Entry of the gateway subprocess: the CLI's `run`, with only the mqtt adapter discovered."""
    import gateway.plugins
    from gateway.cli import main

    gateway.plugins.entry_points = mqtt_entry_points  # type: ignore[assignment]
    sys.exit(main(["run", "-c", config]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], kill: bool = False) -> None:
    """End a peer process (SIGTERM, or SIGKILL with ``kill``), killing it if it lingers, and close its pipe."""
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


@contextmanager
def mosquitto(tmp: Path, extra: str = "") -> Iterator[int]:
    """A Mosquitto on a free loopback port; yields the port."""
    binary = require("mosquitto", "/usr/sbin/mosquitto")
    for attempt in range(3):
        port = free_port()
        conf = tmp / f"mosquitto-{port}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "max_queued_messages 100000\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + extra
        )
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_port(port, proc)
        except RuntimeError:
            stop_process(proc, kill=True)
            if attempt == 2:
                raise
            continue
        try:
            yield port
        finally:
            stop_process(proc)
        return


class Peer:
    """A paho client on its own network thread, as a device or service would be."""

    def __init__(
        self, port: int, client_id: str = "", *, clean: bool = True, protocol: int = paho.MQTTv311,
        username: str | None = None, password: str | None = None, keepalive: int = 30,
    ) -> None:
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if protocol != paho.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port, keepalive)
        self.client.loop_start()
        deadline = time.monotonic() + 5
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("paho peer could not connect")
            time.sleep(0.01)

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        """Subscribe and wait for the SUBACK; returns its reason codes."""
        done: queue.Queue[tuple[int, list[Any]]] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, rc, p: done.put((mid, rc))
        _, mid = self.client.subscribe(topic, qos)
        got, codes = done.get(timeout=5)
        assert got == mid
        return codes

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 1, retain: bool = False, properties: Any = None) -> None:
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(5)
        assert info.is_published()

    async def get(self, timeout: float = 5.0) -> paho.MQTTMessage:
        return await asyncio.to_thread(self.messages.get, True, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Mosquitto:
    """A Mosquitto that a test can kill (SIGKILL) and start again on the same port, with nothing
    persisted: the restarted broker has forgotten every session, as after a crash or failover."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.port = free_port()
        self.conf = tmp / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"
            + ("user root\n" if os.geteuid() == 0 else "") + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require("mosquitto", "/usr/sbin/mosquitto")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, kill=True)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def client_yaml(port: int, routes: str, *, extra: str = "", **adapter: Any) -> str:
    return _mqtt_yaml(routes, extra, {"mode": "client", "url": f"mqtt://127.0.0.1:{port}", **adapter})


def gateway_process(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A gateway in a subprocess (the CLI's `run -c config`), with the tests folder importable."""
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join([str(TESTS), full.get("PYTHONPATH", "")])
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", "import sys, mqtt_helpers; mqtt_helpers.run_gateway_main(sys.argv[1])", str(config)],
        env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(ROOT),
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


# -- apps for the gateway subprocess (crash/redelivery, shared subscriptions) -----------------
async def probe_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Appends each payload to $MQTT_PROBE_FILE, then sleeps $MQTT_PROBE_SLEEP seconds."""
    message = await receive()
    with open(os.environ["MQTT_PROBE_FILE"], "ab") as f:
        f.write(message["payload"] + b"\n")
        f.flush()
    await asyncio.sleep(float(os.environ.get("MQTT_PROBE_SLEEP", "0")))


def connack(port: int, username: str | None = None, password: str | None = None, client_id: str = "") -> Any:
    """Connect once and return the CONNACK reason code (0 / ``Success`` when accepted)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    result: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: result.put(rc)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        return result.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def broker_yaml(routes: str, *, extra: str = "", **adapter: Any) -> str:
    return _mqtt_yaml(routes, extra, {"mode": "broker", "listen": '["127.0.0.1:0"]', **adapter})


def _mqtt_yaml(routes: str, extra: str, adapter: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in adapter.items())
    return f"""\
adapters:
  mqtt: {{{opts}}}
routes:
  mqtt:
{routes}
{extra}"""


def port_of(gw: Any) -> int:
    return int(gw.addresses["mqtt"][0].rsplit(":", 1)[1])


async def device_auth(client_id: str, username: str, password: str | None) -> bool:
    """An `auth_app` for broker-mode tests: device-N logs in with token-N."""
    return username.startswith("device-") and password == "token-" + username.removeprefix("device-")


# -- a consumer for tests/test_mqtt_consumer.py --------------------------------------------------
from gateway.consumers import AsyncMqttConsumer

CONSUMED: list[Any] = []


class ThermoConsumer(AsyncMqttConsumer):
    """Echoes readings as JSON to `readings/<device>` and tells the `readings` group."""

    async def message(self, topic: str, payload: bytes, **info: Any) -> None:
        if payload == b"fail":
            raise ValueError("cannot parse reading")
        CONSUMED.append((topic, payload, info, self.kwargs))
        reading = {"device": self.kwargs["device"], "celsius": float(payload)}
        await self.publish(f"readings/{self.kwargs['device']}", json=reading, qos=1)
        await self.channel_layer.group_send("readings", {"type": "reading", **reading})


# -- hooks for tests/test_mqtt_auth.py ----------------------------------------------------------
class DeviceUser:
    """What a user-returning `auth_app` hands back (a Django user, in a real project)."""

    def __init__(self, name: str) -> None:
        self.name = name


HOOK_CALLS: list[tuple[str, Any, int]] = []  # (hook, arguments, thread id)


def sync_device_user(client_id: str, username: str, password: str | None) -> DeviceUser | None:
    """A sync `auth_app` (as a Django ORM lookup would be): device-N with token-N is a user."""
    import threading

    HOOK_CALLS.append(("auth", (client_id, username, password), threading.get_ident()))
    if username.startswith("device-") and password == "token-" + username.removeprefix("device-"):
        return DeviceUser(username)
    return None


def sync_topic_acl(user: Any, topic: str, action: str) -> bool:
    """A sync `acl_app`: a DeviceUser publishes below `devices/<name>/` and subscribes to `cmd/<name>`."""
    import threading

    HOOK_CALLS.append(("acl", (user, topic, action), threading.get_ident()))
    name = user.name if isinstance(user, DeviceUser) else user
    if action == "publish":
        return topic.startswith(f"devices/{name}/")
    return topic == f"cmd/{name}"


async def async_topic_acl(user: Any, topic: str, action: str) -> bool:
    return sync_topic_acl(user, topic, action)
