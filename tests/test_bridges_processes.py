"""The issue's test: one group_send from outside reaches WebSocket clients on two gateway
processes, an MQTT subscriber and a phone, each exactly once (Redis layer, real peers).

Everything runs for real: a redis-server and a Mosquitto started here, two `gateway run`
processes, the SMS provider stand-in server, websockets and paho clients, and a plain Python
process that sends with the gateway's Redis layer. Counts are checked after everything
expected has arrived (bounded by a deadline) and a settle period in which a duplicate would
show up; nothing is asserted about timing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sms_helpers as sms
import websockets
from gateway_helpers import free_port
from mqtt_helpers import Peer, mosquitto, stop_process
from test_layer_redis_helpers import ROOT, RedisServer, subprocess_env

TESTS = Path(__file__).resolve().parent
CLIENTS_PER_PROCESS = 3
SETTLE = 2.0
"""Seconds to keep listening once everything expected arrived: a duplicate would arrive then."""
PREFIX = "bridges"
GROUP_EXPIRY = 3.0
"""Short, so the second round shows the bridges' shared membership outlives it (renewed)."""

SENDER = """\
import asyncio, sys
from gateway.layers.redis import RedisChannelLayer

async def main():
    layer = RedisChannelLayer(url=sys.argv[1], prefix=sys.argv[2])
    await layer.group_send("alerts", {"type": "alert.raised", "level": "high", "text": sys.argv[3]})
    await layer.close()

asyncio.run(main())
"""


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


def config(redis: RedisServer, broker: int, http_port: int, cloud_url: str) -> str:
    return f"""\
python_path: ["{TESTS}"]
layer: {{backend: redis, url: "{redis.url}", prefix: {PREFIX}, group_expiry: {GROUP_EXPIRY}}}
adapters:
  http: {{listen: "127.0.0.1:{http_port}"}}
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{broker}"}}
  sms: {sms.twilio_account(cloud_url)}
routes:
  websocket:
    - {{path: /alerts/, app: "bridge_helpers:alerts_socket"}}
bridges:
  alerts-to-mqtt:
    from: {{group: alerts}}
    to: {{mqtt: {{topic: "alerts/{{level}}", qos: 1}}}}
  alerts-to-phone:
    from: {{group: alerts}}
    to: {{sms: {{numbers: ["+447700900123"], body: "{{level}}: {{text}}"}}}}
"""


def start_gateway(path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = subprocess_env()
    env["PYTHONPATH"] = str(TESTS)
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path), "--log-format", "json"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"gateway on {port} not ready within {timeout}s:\n{log.read_text()[-3000:]}")


async def send_from_outside(redis: RedisServer, text: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, redis.url, PREFIX, text, cwd=ROOT, env=subprocess_env())
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def metric_sum(ports: list[int], name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    total = 0.0
    async with httpx.AsyncClient() as client:
        for port in ports:
            for line in (await client.get(f"http://127.0.0.1:{port}/metrics")).text.splitlines():
                if line.startswith(wanted + " "):
                    total += float(line.split()[-1])
    return total


async def settle(counts: Any, expected: Any, timeout: float = 30) -> None:
    """Wait until ``counts()`` reaches ``expected`` (bounded), then SETTLE more for duplicates."""
    deadline = time.monotonic() + timeout
    while counts() != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(SETTLE)


async def test_one_group_send_reaches_websockets_mqtt_and_a_phone_each_exactly_once(
    tmp_path: Path, redis: RedisServer, broker: int,
) -> None:
    async with sms.cloud() as cloud:
        ports = [free_port(), free_port()]
        procs, logs = [], []
        for i, port in enumerate(ports):
            path = tmp_path / f"gateway-{i}.yaml"
            path.write_text(config(redis, broker, port, cloud.url))
            logs.append(tmp_path / f"gateway-{i}.log")
            procs.append(start_gateway(path, logs[-1]))
        subscriber = Peer(broker)
        sockets: list[Any] = []
        received: list[list[dict[str, Any]]] = []
        readers: list[asyncio.Task[None]] = []
        try:
            for port, proc, log in zip(ports, procs, logs, strict=True):
                await ready(port, proc, log)
            subscriber.subscribe("alerts/#", qos=1)
            for port in ports:
                for _ in range(CLIENTS_PER_PROCESS):
                    ws = await websockets.connect(f"ws://127.0.0.1:{port}/alerts/")
                    assert await asyncio.wait_for(ws.recv(), 10) == "joined"
                    sockets.append(ws)
            for ws in sockets:
                box: list[dict[str, Any]] = []
                received.append(box)

                async def read(ws: Any = ws, box: list[dict[str, Any]] = box) -> None:
                    async for text in ws:
                        box.append(json.loads(text))

                readers.append(asyncio.create_task(read()))
            mqtt: list[Any] = []

            def mqtt_count() -> int:
                while not subscriber.messages.empty():
                    mqtt.append(subscriber.messages.get_nowait())
                return len(mqtt)

            # Round 1: one group_send from a plain Python process.
            await send_from_outside(redis, "smoke in the kitchen")
            await settle(lambda: ([len(b) for b in received], mqtt_count(), len(cloud.requests)),
                         ([1] * len(sockets), 1, 1))
            assert [len(box) for box in received] == [1] * len(sockets)
            assert all(box[0]["text"] == "smoke in the kitchen" for box in received)
            assert mqtt_count() == 1
            assert (mqtt[0].topic, json.loads(mqtt[0].payload)) == ("alerts/high", {"level": "high", "text": "smoke in the kitchen"})
            assert [(r["form"]["To"], r["form"]["Body"]) for r in cloud.requests] == [("+447700900123", "high: smoke in the kitchen")]
            for bridge in ("alerts-to-mqtt", "alerts-to-phone"):  # taken by one process of the two
                assert await metric_sum(ports, "gateway_bridge_messages_total", bridge=bridge, outcome="forwarded") == 1

            # Round 2: one process stops; after longer than group_expiry the other still bridges, once.
            for ws in sockets[:CLIENTS_PER_PROCESS]:
                await ws.close()
            stop_process(procs[0])
            assert procs[0].returncode == 0, logs[0].read_text()[-3000:]
            await asyncio.sleep(GROUP_EXPIRY + 1)  # not an assertion: the shared membership must outlive it
            await send_from_outside(redis, "smoke again")
            await settle(lambda: (mqtt_count(), len(cloud.requests)), (2, 2))
            assert mqtt_count() == 2
            assert json.loads(mqtt[1].payload)["text"] == "smoke again"
            assert [r["form"]["Body"] for r in cloud.requests] == ["high: smoke in the kitchen", "high: smoke again"]
        finally:
            for task in readers:
                task.cancel()
            for ws in sockets:
                await ws.close()
            subscriber.close()
            for proc in procs:
                stop_process(proc)


async def test_an_mqtt_message_bridged_into_a_group_by_two_processes_sharing_the_subscription_arrives_once(
    tmp_path: Path, redis: RedisServer, broker: int,
) -> None:
    """MQTT -> group across processes: with `shared`, the broker gives each message to one of
    them (without it, each process subscribes and bridges every message: twice with two)."""
    from gateway.layers.redis import RedisChannelLayer

    ports = [free_port(), free_port()]
    procs, logs = [], []
    for i, port in enumerate(ports):
        path = tmp_path / f"gateway-{i}.yaml"
        path.write_text(f"""\
layer: {{backend: redis, url: "{redis.url}", prefix: {PREFIX}}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
  mqtt: {{mode: client, url: "mqtt://127.0.0.1:{broker}", shared: gateways}}
bridges:
  temperatures:
    from: {{mqtt: {{topic: "sensors/+room/temp", qos: 1}}}}
    to: {{group: "room-{{room}}"}}
""")
        logs.append(tmp_path / f"gateway-{i}.log")
        procs.append(start_gateway(path, logs[-1]))
    layer = RedisChannelLayer(url=redis.url, prefix=PREFIX)
    publisher = Peer(broker)
    try:
        for port, proc, log in zip(ports, procs, logs, strict=True):
            await ready(port, proc, log)
        member = await layer.new_channel()
        await layer.group_add("room-kitchen", member)
        got: list[dict[str, Any]] = []

        async def collect() -> None:
            while True:
                got.append(await layer.receive(member))

        collector = asyncio.create_task(collect())
        try:
            for i in range(5):
                publisher.publish("sensors/kitchen/temp", f"2{i}".encode(), qos=1)
            await settle(lambda: len(got), 5)
        finally:
            collector.cancel()
        assert sorted(m["payload"] for m in got) == [b"20", b"21", b"22", b"23", b"24"]
        assert {m["kwargs"]["room"] for m in got} == {"kitchen"}
        assert await metric_sum(ports, "gateway_bridge_messages_total", bridge="temperatures", outcome="forwarded") == 5
    finally:
        publisher.close()
        await layer.close()
        for proc in procs:
            stop_process(proc)
