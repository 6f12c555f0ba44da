"""docker-compose.yml for real: the production shape, started by docker-compose on a dockerd of the
test's own, driven by real clients from the host (``make test-compose``; not part of ``make test``:
the file name keeps pytest's collection of ``tests/`` away from it).

Two gateways share Redis (the layer) and Mosquitto (shared subscriptions), the Django demo keeps
its rows in PostgreSQL. Every port is published on 127.0.0.1, on ports this test picked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import smtplib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
import websockets
from websockets.sync.client import connect as ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_stack import IMAGES, Compose, Dockerd, build_standins, log
from gateway_helpers import free_port

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the gateways' logs
ONCALL = "+15005550199"   # not docker-compose.yml's default: the variable reaches config/compose.yaml
PORTS = ("GATEWAY1_HTTP_PORT", "GATEWAY2_HTTP_PORT", "GATEWAY1_SMTP_PORT", "GATEWAY2_SMTP_PORT",
         "GATEWAY1_ADMIN_PORT", "GATEWAY2_ADMIN_PORT", "MQTT_PUBLISHED_PORT")


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(every)


@pytest.fixture(scope="module")
def stack() -> Iterator[Compose]:
    started = time.monotonic()
    ports: set[int] = set()
    while len(ports) < len(PORTS):
        ports.add(free_port())
    env = dict(zip(PORTS, map(str, sorted(ports)), strict=True))
    env.update(
        PUBLISH_ADDRESS="127.0.0.1", DJANGO_SECRET_KEY=uuid.uuid4().hex, POSTGRES_PASSWORD=uuid.uuid4().hex,
        POSTGRES_USER="demo", POSTGRES_DB="demo", DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        SMTP_RELAY_HOST="mailcatcher", SMTP_RELAY_PORT="2525", MAIL_DOMAIN="example.com",
        SMS_SIGNING_SECRET=uuid.uuid4().hex, SMS_API_URL="http://smscatcher:8080/v1/messages", SMS_NUMBER="+15005550006",
        DEMO_ONCALL_PHONE=ONCALL, SENSOR_ALERT_CELSIUS="30",
    )
    dockerd = Dockerd().start()
    compose = Compose(dockerd, env)
    try:
        build_standins(dockerd)
        log("docker-compose build")
        compose("build", "-q")
        sizes = dockerd.docker("image", "inspect", "--format", "{{.Size}}", "asgi-gateway-demo:latest", IMAGES["python"],
                               capture=True).stdout.split()
        log(f"image asgi-gateway-demo: {int(sizes[0]) / 1e6:.0f} MB, of which the base {int(sizes[1]) / 1e6:.0f} MB")
        log("docker-compose up")
        compose("up", "-d")
        for name in ("GATEWAY1_ADMIN_PORT", "GATEWAY2_ADMIN_PORT"):
            wait_until(lambda: ready(int(env[name])), 180, f"{name} /readyz 200")  # noqa: B023 - called in its iteration
        for service in ("gateway-1", "gateway-2"):  # the image's HEALTHCHECK, run by dockerd
            wait_until(  # the lambda is called within its iteration
                lambda: compose.container(service)["State"]["Health"]["Status"] == "healthy",  # noqa: B023
                120, f"{service} healthy",
            )
        log(f"stack ready after {time.monotonic() - started:.0f} s")
        yield compose
    finally:
        for service in ("gateway-1", "gateway-2"):  # shown by pytest when a test failed
            print(compose("logs", "--no-color", "--tail", "40", service, check=False, capture=True).stdout)
        compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        dockerd.docker("image", "prune", "-f", check=False, capture=True)  # earlier builds: the cache stays bounded
        dockerd.stop()
        log(f"stack fixture took {time.monotonic() - started:.0f} s")


def port(stack: Compose, name: str) -> int:
    return int(stack.env[name])


async def chat_socket(stack: Compose, gateway: int, room: str):
    http = port(stack, f"GATEWAY{gateway}_HTTP_PORT")
    ws = await websockets.connect(f"ws://127.0.0.1:{http}/ws/chat/{room}/", origin=f"http://127.0.0.1:{http}")
    hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert hello == {"hello": None}, hello
    return ws


async def dashboard_socket(stack: Compose, gateway: int):
    http = port(stack, f"GATEWAY{gateway}_HTTP_PORT")
    return await websockets.connect(f"ws://127.0.0.1:{http}/ws/dashboard/", origin=f"http://127.0.0.1:{http}")


async def next_event(ws, kind: str, timeout: float = 30, **data) -> dict:
    async def find():
        while True:
            event = json.loads(await ws.recv())
            if event["kind"] == kind and all(event["data"].get(k) == v for k, v in data.items()):
                return event["data"]
    return await asyncio.wait_for(find(), timeout)


async def next_message(ws, want: str, timeout: float = 30) -> None:
    async def find():
        while True:
            data = json.loads(await ws.recv())
            if data.get("message") == want:
                return
    await asyncio.wait_for(find(), timeout)


def mqtt_publisher(stack: Compose) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"device-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port(stack, "MQTT_PUBLISHED_PORT"))
    client.loop_start()
    return client


def test_the_image_runs_as_a_non_root_user_with_the_readiness_healthcheck(stack: Compose):
    info = stack.container("gateway-1")
    assert info["Config"]["User"] == "gateway"
    assert info["Config"]["StopSignal"] == "SIGTERM"
    assert info["State"]["Health"]["Status"] == "healthy"
    # metrics and probes are on the admin listener only: on the public port, Django answers
    assert "gateway_" in httpx.get(f"http://127.0.0.1:{port(stack, 'GATEWAY1_ADMIN_PORT')}/metrics").text
    assert httpx.get(f"http://127.0.0.1:{port(stack, 'GATEWAY1_HTTP_PORT')}/metrics").status_code == 404
    dashboard = httpx.get(f"http://127.0.0.1:{port(stack, 'GATEWAY1_HTTP_PORT')}/")
    assert dashboard.status_code == 200 and "asgi-gateway showcase" in dashboard.text
    assert 'id="try"' not in dashboard.text  # the simulators are for the local run only
    # the dashboard's stylesheet, collected into the image and served from STATIC_ROOT (ServeStatic)
    assert httpx.get(f"http://127.0.0.1:{port(stack, 'GATEWAY1_HTTP_PORT')}/static/dashboard/dashboard.css").status_code == 200


async def test_a_chat_message_crosses_the_two_gateways(stack: Compose):
    one, two = await chat_socket(stack, 1, "lobby"), await chat_socket(stack, 2, "lobby")
    try:
        await one.send(json.dumps({"message": "hello from gateway-1"}))
        await next_message(two, "hello from gateway-1")
        await two.send(json.dumps({"message": "and back from gateway-2"}))
        await next_message(one, "and back from gateway-2")
    finally:
        await one.close()
        await two.close()
    assert stack.sql("select count(*) from chat_message where room = 'lobby'") == "2"


async def test_an_mqtt_reading_lands_in_postgresql_and_reaches_the_dashboard(stack: Compose):
    watcher = await dashboard_socket(stack, 2)
    device = mqtt_publisher(stack)
    try:
        device.publish("sensors/kitchen/temperature", b"21.5", qos=1).wait_for_publish(30)
        await next_event(watcher, "reading", device="kitchen", celsius=21.5)
    finally:
        device.loop_stop()
        device.disconnect()
        await watcher.close()
    assert stack.sql("select count(*), max(celsius) from sensors_reading where device = 'kitchen'") == "1|21.5"
    page = httpx.get(f"http://127.0.0.1:{port(stack, 'GATEWAY1_HTTP_PORT')}/readings/?device=kitchen").json()
    assert page["count"] == 1 and page["readings"][0]["celsius"] == 21.5


class Subscriber:
    """A paho client of Mosquitto that keeps what it receives on ``topic``."""

    def __init__(self, stack: Compose, topic: str) -> None:
        self.messages: list[paho.MQTTMessage] = []
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watcher-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        self.client.connect("127.0.0.1", port(stack, "MQTT_PUBLISHED_PORT"))
        self.client.loop_start()
        assert subscribed.wait(30), f"no SUBACK for {topic}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bridged(stack: Compose, bridge: str) -> int:
    """Messages ``bridge`` forwarded, summed over both gateways' /metrics."""
    total = 0
    for name in ("GATEWAY1_ADMIN_PORT", "GATEWAY2_ADMIN_PORT"):
        text = httpx.get(f"http://127.0.0.1:{port(stack, name)}/metrics", timeout=10).text
        found = re.search(rf'^gateway_bridge_messages_total{{[^}}]*bridge="{bridge}"[^}}]*outcome="forwarded"[^}}]*}} (\S+)$', text, re.MULTILINE)
        assert found, f"no forwarded series of {bridge} on {name}"
        total += int(float(found.group(1)))
    return total


def oncall_texts(stack: Compose) -> list[dict]:
    logs = stack.logs("smscatcher")
    sent = [json.loads(line.split("sms-catcher: ", 1)[1]) for line in logs.splitlines() if "sms-catcher: {" in line]
    return [text for text in sent if text["to"] == ONCALL]


async def test_one_alert_reaches_the_dashboard_one_mqtt_message_and_one_text_across_two_gateways(stack: Compose):
    """config/compose.yaml's bridges: both gateways run them on the Redis layer, yet the one
    group_send("alerts") of a hot reading is published once on alerts/<device> and texted once."""
    watcher = await dashboard_socket(stack, 1)
    alerts = Subscriber(stack, "alerts/#")
    device = mqtt_publisher(stack)
    try:
        device.publish("sensors/boiler/temperature", b"45.5", qos=1).wait_for_publish(30)
        alert = await next_event(watcher, "alert", device="boiler")
        assert (alert["celsius"], alert["threshold"]) == (45.5, 30.0)
        wait_until(lambda: alerts.messages, 60, "the alert on alerts/boiler")
        wait_until(lambda: oncall_texts(stack), 60, "the alert's text at the provider")
        wait_until(lambda: bridged(stack, "alerts-to-mqtt") >= 1 and bridged(stack, "alerts-to-oncall") >= 1, 30,
                   "both bridges' forwarded counts")
        await asyncio.sleep(5)  # a second copy (a bridge run by each gateway) would have arrived by now
        assert [(m.topic, m.qos) for m in alerts.messages] == [("alerts/boiler", 1)]
        payload = json.loads(alerts.messages[0].payload)
        assert (payload["device"], payload["celsius"], payload["threshold"]) == ("boiler", 45.5, 30.0) and "type" not in payload
        (text,) = oncall_texts(stack)
        assert text["body"] == "Alert: boiler at 45.5 °C (threshold 30.0 °C)" and text["from"] == "+15005550006", text
        assert (bridged(stack, "alerts-to-mqtt"), bridged(stack, "alerts-to-oncall")) == (1, 1)
    finally:
        alerts.close()
        device.loop_stop()
        device.disconnect()
        await watcher.close()
    late = Subscriber(stack, "alerts/boiler")  # retained: who subscribes later still gets the last alert
    try:
        wait_until(lambda: late.messages, 30, "the retained alert")
        assert late.messages[0].retain and json.loads(late.messages[0].payload)["celsius"] == 45.5
    finally:
        late.close()


def test_a_mail_over_smtp_becomes_a_ticket_and_gets_its_reply(stack: Compose):
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "ann@customer.test", "support@example.com", "printer on fire"
    mail.set_content("Please help.")
    with smtplib.SMTP("127.0.0.1", port(stack, "GATEWAY2_SMTP_PORT"), timeout=60) as smtp:
        refused = smtp.send_message(mail)
    assert refused == {}
    ticket = stack.sql("select id, sender, subject from tickets_ticket")
    number, sender, subject = ticket.split("|")
    assert (sender, subject) == ("ann@customer.test", "printer on fire")
    # the reply went out through the relay (the mail catcher prints what it receives)
    wait_until(lambda: f"Your ticket number is {number}." in stack.logs("mailcatcher"), 60, "the ticket's reply at the relay")


def test_a_signed_sms_webhook_gets_its_reply(stack: Compose):
    """The generic provider's webhook on gateway-1: a forged signature is refused; a signed text is stored
    in PostgreSQL and its acknowledgement goes out to the provider's REST API (the SMS catcher),
    signed with the same secret."""
    secret = stack.env["SMS_SIGNING_SECRET"].encode()
    body = json.dumps({"id": "compose-1", "from": "+447700900123", "to": "+15005550006", "body": "is the stack up?"}).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    url = f"http://127.0.0.1:{port(stack, 'GATEWAY1_HTTP_PORT')}/sms/in"
    headers = {"content-type": "application/json", "x-timestamp": stamp}
    assert httpx.post(url, content=body, headers={**headers, "x-signature": "0" * 64}, timeout=30).status_code == 403
    answer = httpx.post(url, content=body, headers={**headers, "x-signature": signature}, timeout=30)
    assert answer.status_code == 200, answer.text
    texts = stack.sql("select id, direction, body from texts_text where number = '+447700900123' order by id").splitlines()
    assert texts and texts[0].split("|")[1:] == ["in", "is the stack up?"], texts
    number = texts[0].split("|")[0]

    def replied() -> bool:
        logs = stack.logs("smscatcher")
        assert "bad signature" not in logs, logs
        return f"Thanks, we got your message (#{number})" in logs and '"to": "+447700900123"' in logs
    wait_until(replied, 60, "the text's acknowledgement at the provider")


def test_stopping_one_gateway_drains_it_and_loses_nothing_while_the_other_serves(stack: Compose):
    """A rolling restart: SIGTERM to gateway-1 while a device publishes and clients use gateway-2.

    gateway-1 drains, closes its WebSockets with 1001 and exits by itself; gateway-2 answers every request meanwhile. Readings that
    Mosquitto's shared subscription assigns to gateway-1's persistent session while it is down wait
    in that session and are handled when it is back: in the end every reading is stored once."""
    total, device = 300, "drain"
    published: list[int] = []
    errors: list[str] = []
    served = 0
    stop_done = threading.Event()

    def publish_all() -> None:
        client = mqtt_publisher(stack)
        try:
            for i in range(total):
                # below SENSOR_ALERT_CELSIUS: no alert (each would be texted) while gateway-1 drains
                client.publish(f"sensors/{device}/temperature", str(i / 10).encode(), qos=1).wait_for_publish(30)
                published.append(i)
                time.sleep(0.02)
        finally:
            client.loop_stop()
            client.disconnect()

    def stored() -> list[int]:
        found = stack.sql(f"select count(*), count(distinct celsius) from sensors_reading where device = '{device}'")
        return [int(n) for n in found.split("|")]

    http1 = port(stack, "GATEWAY1_HTTP_PORT")
    browser = ws_connect(f"ws://127.0.0.1:{http1}/ws/chat/drain/", origin=f"http://127.0.0.1:{http1}")
    assert json.loads(browser.recv(timeout=30)) == {"hello": None}
    publisher = threading.Thread(target=publish_all)
    publisher.start()
    wait_until(lambda: len(published) >= 50, 60, "the first readings published", every=0.05)

    def stop_gateway_1() -> None:
        stack("stop", "gateway-1")
        stop_done.set()

    stopper = threading.Thread(target=stop_gateway_1)
    stopper.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{port(stack, 'GATEWAY2_HTTP_PORT')}", timeout=30) as other:
        while not stop_done.is_set() or publisher.is_alive():
            response = other.get("/readings/", params={"device": device})
            if response.status_code == 200:
                served += 1
            else:
                errors.append(f"{response.status_code} {response.text[:200]}")
            time.sleep(0.05)
    stopper.join()
    publisher.join()
    assert len(published) == total and not errors, errors[:5]
    assert served > 10
    state = stack.container("gateway-1")["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 0), state  # exited by itself, not SIGKILLed (137)
    logs = stack.logs("gateway-1")
    assert '"gateway.stopping"' in logs and '"gateway.stopped"' in logs
    with pytest.raises(websockets.ConnectionClosed) as closed:  # an open WebSocket is told "going away"
        browser.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
    time.sleep(5)  # what gateway-2 was given has landed by now
    while_down = stored()
    log(f"readings stored while gateway-1 was down: {while_down[1]} of {total}")

    stack("start", "gateway-1")
    wait_until(lambda: ready(port(stack, "GATEWAY1_ADMIN_PORT")), 120, "gateway-1 ready again")
    wait_until(lambda: stored()[1] == total, 90, f"all {total} readings in PostgreSQL")
    assert stored() == [total, total]  # each handled once
    assert ready(port(stack, "GATEWAY2_ADMIN_PORT"))


@pytest.mark.parametrize(("service", "component"), [("redis", "layer"), ("mosquitto", "adapter.mqtt.broker")])
def test_readyz_names_a_shared_service_while_it_is_down_and_recovers(stack: Compose, service: str, component: str):
    """Last in the file: after Redis restarts, each pooled layer connection fails its first command once
    (the layer does not retry; see the report), which would fail a handshake in a later test."""
    admin = [port(stack, "GATEWAY1_ADMIN_PORT"), port(stack, "GATEWAY2_ADMIN_PORT")]
    stack("stop", service)
    try:
        for each in admin:
            def failing(each: int = each) -> dict | None:
                answer = httpx.get(f"http://127.0.0.1:{each}/readyz", timeout=10)
                return answer.json()["failing"] if answer.status_code == 503 else None

            names = wait_until(failing, 60, f"{service} down: /readyz 503 on :{each}", every=0.5)
            assert component in names, names
            assert httpx.get(f"http://127.0.0.1:{each}/livez", timeout=10).status_code == 200  # alive: no restart
    finally:
        stack("start", service)
    for each in admin:
        wait_until(lambda: ready(each), 90, f"{service} back: /readyz 200 on :{each}", every=0.5)  # noqa: B023 - called in its iteration
