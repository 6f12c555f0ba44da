"""The showcase (demo/) as `make run` serves it: config/gateway.yaml, `manage.py demo_init`, then
`gateway run` from the repository's root, on free ports and a temporary SQLite file. A headless
Chromium keeps the dashboard open while real clients use every protocol: each event must appear
on the page without a reload, and the replies written on the page must leave through the gateway
(`email.send` to an SMTP sink standing in for the relay, `sms.send` to the phone simulator)."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import websockets

from .django_helpers import CHROMIUM, CHROMIUM_ARGS, GatewayProcess, rows
from .email_helpers import Sink
from .gateway_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
CONFIG = "config/gateway.yaml"   # relative, from the root, as the Makefile's run target gives it
ONCALL = "+15005550177"         # the alerts bridge texts it (not the default: the variable reaches the YAML and Django)
LIVE = 15_000                    # ms the page gets to show an event (Playwright's waits)


@pytest.fixture(scope="module")
def relay() -> Iterator[Sink]:
    """The SMTP relay the showcase's replies go to, in a thread of its own."""
    loop = asyncio.new_event_loop()
    sink = Sink()
    loop.run_until_complete(sink.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield sink
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(sink.__aexit__())
    loop.close()


def start_showcase(tmp_path: Path, relay_port: int | None = None) -> GatewayProcess:
    """`make run`'s two steps on free ports and a SQLite file under ``tmp_path``; replies are relayed
    to ``relay_port``, by default the showcase's own SMTP listener as with the default ports."""
    db = tmp_path / "var" / "db.sqlite3"
    ports = {"http": free_port(), "mqtt": free_port(), "smtp": free_port()}
    env = {**_clean_env(), "DEMO_SQLITE": str(db), "GATEWAY_HTTP_LISTEN": f"127.0.0.1:{ports['http']}",
           "GATEWAY_MQTT_LISTEN": f"127.0.0.1:{ports['mqtt']}", "GATEWAY_SMTP_LISTEN": f"127.0.0.1:{ports['smtp']}",
           "GATEWAY_MAIL_RELAY_PORT": str(relay_port or ports["smtp"]), "DEMO_ONCALL_PHONE": ONCALL}
    init = subprocess.run([sys.executable, "manage.py", "demo_init"], check=False, cwd=DEMO, env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"open http://127.0.0.1:{ports['http']}/" in init.stdout and "admin / admin" in init.stdout, init.stdout
    gw = GatewayProcess(CONFIG, env, cwd=ROOT)
    gw.started()
    gw.db, gw.ports, gw.base = db, ports, f"http://127.0.0.1:{ports['http']}"
    return gw


@pytest.fixture(scope="module")
def showcase(tmp_path_factory, relay: Sink) -> Iterator[GatewayProcess]:
    """The relay is the test's SMTP sink, so what `email.send` delivers can be read."""
    gw = start_showcase(tmp_path_factory.mktemp("showcase"), relay.port)
    yield gw
    assert gw.stop() == 0


def test_demo_init_is_idempotent_and_creates_the_admin_once(showcase):
    env_db = showcase.db
    again = subprocess.run([sys.executable, "manage.py", "demo_init"], check=False, cwd=DEMO, capture_output=True, text=True, timeout=120,
                           env={**_clean_env(), "DEMO_SQLITE": str(env_db)})
    assert again.returncode == 0, again.stderr
    assert rows(env_db, "select username, is_superuser from auth_user") == [("admin", 1)]


def _clean_env() -> dict[str, str]:
    import os

    unwanted = ("DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "REDIS_URL", "POSTGRES_HOST")
    return {k: v for k, v in os.environ.items() if k not in unwanted}


async def test_every_protocol_shows_up_live_on_the_dashboard_and_replies_leave_through_the_gateway(showcase, relay: Sink):
    from playwright.async_api import async_playwright

    base = showcase.base
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            failed: list[str] = []
            page.on("pageerror", lambda error: failed.append(str(error)))
            styles: list[int] = []
            page.on("response", lambda r: styles.append(r.status) if r.url.endswith("/static/dashboard/dashboard.css") else None)
            # signed in through the admin's form, as the printed line says
            await page.goto(f"{base}/admin/login/?next=/")
            await page.fill("#id_username", "admin")
            await page.fill("#id_password", "admin")
            await page.click("input[type=submit]")
            await page.wait_for_url(f"{base}/", timeout=LIVE)
            await page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=LIVE)
            assert styles == [200]  # the gateway's Django static support (DEBUG: the finders)
            # the stylesheet applied: the top bar is not the browser's default
            assert await page.eval_on_selector(".topbar", "e => getComputedStyle(e).position") == "sticky"

            # -- chat: a second participant over a plain WebSocket, both ways
            async with websockets.connect(f"ws://127.0.0.1:{showcase.ports['http']}/ws/chat/lobby/", origin=base) as other:
                assert json.loads(await asyncio.wait_for(other.recv(), 15)) == {"hello": None}
                await other.send(json.dumps({"message": "anyone seen the kitchen sensor?"}))
                await page.wait_for_function(
                    "[...document.querySelectorAll('#chat-log li')].some(li => li.textContent.startsWith('anyone seen the kitchen sensor?'))",
                    timeout=LIVE)
                await page.fill("#chat-input", "on the dashboard, live")
                await page.click("#chat-send")
                while json.loads(await asyncio.wait_for(other.recv(), 15)).get("message") != "on the dashboard, live":
                    pass
            assert ("lobby", "on the dashboard, live") in rows(showcase.db, "select room, text from chat_message")

            # -- MQTT: readings published to the embedded broker, drawn on the chart; one above the threshold alerts,
            # and config/gateway.yaml's bridges relay the alert to alerts/<device> and to the on-call phone
            alerts = _subscriber(showcase.ports["mqtt"], "alerts/#")
            device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="kitchen-sensor")
            device.connect("127.0.0.1", showcase.ports["mqtt"])
            device.loop_start()
            try:
                for celsius in (b"21.5", b"22.25", b"35"):
                    device.publish("sensors/kitchen/temperature", celsius, qos=1).wait_for_publish(15)
            finally:
                device.loop_stop()
                device.disconnect()
            await page.wait_for_function(
                "document.querySelector('#latest li[data-device=kitchen] .value')?.textContent === '35.0 °C'", timeout=LIVE)
            points = await page.get_attribute("#chart polyline[data-device=kitchen]", "points")
            assert points is not None and len(points.split()) == 3
            await page.wait_for_function("document.querySelector('#alerts').textContent.includes('kitchen at 35.0 °C')", timeout=LIVE)
            assert await page.text_content("#stat-readings") == "3"
            await _until(lambda: alerts.messages, "the alert on alerts/kitchen")
            (topic, payload, qos), = alerts.messages
            assert topic == "alerts/kitchen" and qos == 1
            assert json.loads(payload) == {"device": "kitchen", "celsius": 35.0, "threshold": 30.0, "at": json.loads(payload)["at"]}
            oncall = "Alert: kitchen at 35.0 °C (threshold 30.0 °C)"
            await page.wait_for_selector(f"#oncall-screen .bubble.theirs >> text={oncall}", timeout=LIVE)
            assert ONCALL in await page.text_content("#oncall-label") and ONCALL in await page.text_content("#alerts-bridged")
            # a text to on-call is not one to the customer's phone
            assert await page.locator("#phone-screen .bubble").count() == 0
            assert rows(showcase.db, "select device, celsius from sensors_reading order by id") == [
                ("kitchen", 21.5), ("kitchen", 22.25), ("kitchen", 35.0)]

            # -- e-mail: a mail over SMTP becomes a ticket on the page; its number goes back through the relay
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = "ann@customer.test", "support@example.com", "Printer on fire"
            mail.set_content("It smells of toast.")
            with smtplib.SMTP("127.0.0.1", showcase.ports["smtp"], timeout=30) as smtp:
                assert smtp.send_message(mail) == {}
            (ticket,), = rows(showcase.db, "select id from tickets_ticket")
            ticket_item = f".ticket[data-id='{ticket}']"
            await page.wait_for_selector(f"{ticket_item} >> text=Printer on fire", timeout=LIVE)
            assert relay.messages[-1][1] == ["ann@customer.test"]
            assert f"Your ticket number is {ticket}." in relay.parsed().get_content()
            # ... and a reply written on the dashboard leaves through email.send
            await page.fill(f"{ticket_item} .reply-input", "We sent a technician with an extinguisher.")
            await page.click(f"{ticket_item} .reply-form button")
            await page.wait_for_selector(f"{ticket_item} .replies >> text=We sent a technician", timeout=LIVE)
            await _until(lambda: len(relay.messages) == 2, "the reply at the relay")
            answer = relay.parsed()
            assert relay.messages[-1][1] == ["ann@customer.test"]
            assert answer["Subject"] == f"Re: [#{ticket}] Printer on fire" and answer["From"] == "support@example.com"
            assert "We sent a technician with an extinguisher." in answer.get_content()
            assert rows(showcase.db, "select author, body from tickets_reply") == [("admin", "We sent a technician with an extinguisher.")]

            # -- SMS: a text from the phone simulator through the signed webhook lands in the inbox; the
            # acknowledgement and a reply written on the dashboard reach the phone through sms.send
            await page.fill("#phone-from", "+447700900123")
            await page.fill("#phone-body", "Is my parcel coming today?")
            await page.click("#phone-send")
            conversation = ".conversation[data-number='+447700900123']"
            await page.wait_for_selector(f"{conversation} .bubble.in >> text=Is my parcel coming today?", timeout=LIVE)
            await page.wait_for_selector("#phone-screen .bubble.theirs >> text=Thanks, we got your message", timeout=LIVE)
            await page.fill(f"{conversation} .reply-input", "Yes, between 2 and 4 pm.")
            await page.click(f"{conversation} .reply-form button")
            await page.wait_for_selector("#phone-screen .bubble.theirs >> text=Yes, between 2 and 4 pm.", timeout=LIVE)
            assert rows(showcase.db, "select direction, author, body from texts_text order by id")[::2] == [
                ("in", "", "Is my parcel coming today?"), ("out", "admin", "Yes, between 2 and 4 pm.")]

            # by now (mail and texts later) a second copy of the alert would have arrived: one group_send, one
            # publish, one text
            assert len(alerts.messages) == 1 and await page.locator("#oncall-screen .bubble").count() == 1

            # -- the Django admin over the same rows
            await page.goto(f"{base}/admin/texts/text/")
            await page.wait_for_selector("text=Yes, between 2 and 4 pm.", timeout=LIVE)
            await page.goto(f"{base}/admin/tickets/ticket/{ticket}/change/")
            assert await page.input_value("#id_subject") == "Printer on fire"
            assert failed == []
        finally:
            alerts.close()
            await browser.close()


async def test_replies_need_a_staff_login(showcase):
    import httpx

    async with httpx.AsyncClient(base_url=showcase.base) as client:
        await client.get("/")
        token = client.cookies["csrftoken"]
        refused = await client.post("/texts/reply/", data={"number": "+447700900123", "body": "hi"},
                                    headers={"x-csrftoken": token})
        assert refused.status_code == 403 and "staff" in refused.json()["error"]
        without_csrf = await client.post("/tickets/1/reply/", data={"body": "hi"})
        assert without_csrf.status_code == 403


class _subscriber:
    """A paho client of the embedded broker that keeps (topic, payload, qos) of what it receives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="alerts-watcher")
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload, m.qos))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(15), f"no SUBACK for {topic}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _until(predicate, what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.1)


async def test_the_page_names_the_ports_the_showcase_listens_on_and_health_is_served(showcase):
    import httpx

    async with httpx.AsyncClient(base_url=showcase.base) as client:
        page = (await client.get("/")).text
        assert f"mosquitto_pub -p {showcase.ports['mqtt']} -t sensors/kitchen/temperature" in page
        assert f"swaks --server 127.0.0.1:{showcase.ports['smtp']} --to support@example.com" in page
        assert (await client.get("/readyz")).status_code == 200
        assert "gateway_" in (await client.get("/metrics")).text


async def test_on_the_defaults_the_mailbox_simulator_mails_support_and_receives_the_reply(tmp_path):
    """Without a relay of its own, `make run` relays to its own SMTP listener: the customer's mailbox."""
    import httpx

    gw = start_showcase(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=gw.base) as client, websockets.connect(
                f"ws://127.0.0.1:{gw.ports['http']}/ws/dashboard/", origin=gw.base) as feed:
            await client.get("/")
            sent = await client.post("/mailbox/send/", headers={"x-csrftoken": client.cookies["csrftoken"]},
                                     data={"from": "bo@customer.test", "subject": "Where is my order?", "body": "Order 12."})
            assert sent.status_code == 200, sent.text
            seen: dict[str, dict] = {}
            while set(seen) != {"ticket", "mail"}:
                event = json.loads(await asyncio.wait_for(feed.recv(), 20))
                seen[event["kind"]] = event["data"]
        assert (seen["ticket"]["sender"], seen["ticket"]["subject"]) == ("bo@customer.test", "Where is my order?")
        assert seen["mail"]["to"] == "bo@customer.test" and seen["mail"]["from"] == "support@example.com"
        assert seen["mail"]["body"].strip() == f"Your ticket number is {seen['ticket']['id']}."
    finally:
        assert gw.stop() == 0
