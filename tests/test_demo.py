"""The default config's demo, as a person uses it: two browser tabs in one chat room."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import async_playwright

from gateway import Gateway

from .gateway_helpers import ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
async def gateway(monkeypatch):
    for name in ("GATEWAY_SMTP_LISTEN", "GATEWAY_MQTT_LISTEN"):
        monkeypatch.setenv(name, "127.0.0.1:0")
    # a real port: the SMS adapter's api_url (the phone simulator) is built from it
    monkeypatch.setenv("GATEWAY_HTTP_LISTEN", f"127.0.0.1:{free_port()}")
    async with Gateway.from_file(ROOT / "config" / "gateway.yaml") as gw:
        yield gw


@pytest.fixture
def demo(gateway):
    return gateway.addresses["http"][0]


async def open_page(browser, address: str, room: str):
    page = await browser.new_page()
    await page.goto(f"http://{address}/?room={room}")
    await page.wait_for_selector("#status.on", timeout=10_000)
    return page


async def test_default_config_serves_the_page_metrics_and_health(demo):
    async with httpx.AsyncClient(base_url=f"http://{demo}") as client:
        page = await client.get("/")
        assert page.status_code == 200 and "asgi-gateway demo" in page.text
        assert '<code id="smtp-address">127.0.0.1:0</code>' in page.text and "2525" not in page.text  # as set, until the script asks
        assert (await client.head("/")).content == b""
        icon = await client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        health = await client.get("/healthz")
        assert health.json()["status"] == "ok"
        metrics = await client.get("/metrics")
        assert "gateway_instances_total" in metrics.text


async def test_chat_between_two_browser_tabs(demo, tmp_path: Path):
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice = await open_page(browser, demo, "test")
            bob = await open_page(browser, demo, "test")
            await alice.fill("#name", "alice")
            await alice.fill("#text", "hello bob")
            await alice.click("button")
            await bob.wait_for_selector("#log div:has-text('alice: hello bob')", timeout=10_000)
            await alice.wait_for_selector("#log div:has-text('alice: hello bob')", timeout=10_000)
            other = await open_page(browser, demo, "elsewhere")
            await alice.fill("#text", "only for room test")
            await alice.click("button")
            await bob.wait_for_selector("#log div:has-text('only for room test')", timeout=10_000)
            assert await other.locator("#log div").count() == 0  # other rooms hear nothing
            await bob.screenshot(path=str(tmp_path / "bob.png"))
        finally:
            await browser.close()


async def test_mail_to_support_shows_up_on_the_page(gateway, demo):
    host, port = gateway.addresses["email"][0].rsplit(":", 1)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await open_page(browser, demo, "lobby")
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "ann@example.org", "support@example.com", "printer on fire"
            message.set_content("help")

            def deliver() -> None:  # smtplib blocks: keep it off the gateway's event loop
                with smtplib.SMTP(host, int(port), timeout=10) as smtp:
                    assert smtp.send_message(message) == {}  # 250 only after the demo consumer returned
                    with pytest.raises(smtplib.SMTPRecipientsRefused):  # nothing unrouted is accepted
                        smtp.sendmail("ann@example.org", ["sales@example.com"], message.as_bytes())

            await asyncio.to_thread(deliver)
            await page.wait_for_selector("#log div.feed:has-text('[email] ann@example.org: printer on fire')", timeout=10_000)
        finally:
            await browser.close()


async def test_mqtt_reading_shows_up_on_the_page(gateway, demo):
    import paho.mqtt.publish as publish

    broker = urlsplit(gateway.addresses["mqtt"][0])  # mqtt://127.0.0.1:PORT
    host, port = broker.hostname, broker.port
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await open_page(browser, demo, "lobby")
            await asyncio.to_thread(publish.single, "sensors/kitchen/temperature", "21.5", qos=1, hostname=host, port=int(port))
            await page.wait_for_selector("#log div.feed:has-text('[mqtt] kitchen: 21.5 °C')", timeout=10_000)
            # the same broker over WebSocket on the page's own port (ws_path: /mqtt, paho's default path)
            http_host, http_port = demo.rsplit(":", 1)
            await asyncio.to_thread(publish.single, "sensors/attic/temperature", "30", qos=1, hostname=http_host,
                                    port=int(http_port), transport="websockets")
            await page.wait_for_selector("#log div.feed:has-text('[mqtt] attic: 30 °C')", timeout=10_000)
        finally:
            await browser.close()


async def test_a_text_from_the_phone_simulator_and_its_reply_show_up_on_the_page(gateway, demo):
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await open_page(browser, demo, "lobby")
            await page.fill("#sms-body", "is anyone there?")
            await page.click("#sms-form button")
            await page.wait_for_selector("#log div.feed:has-text('[sms] +447700900123: is anyone there?')", timeout=10_000)
            # the reply left through the SMS adapter's REST path and came back signed
            await page.wait_for_selector("#log div.feed:has-text('[sms] to +447700900123: Thanks, 16 characters received.')",
                                         timeout=10_000)
            assert "webhook answered 200" in await page.text_content("#sms-state")
        finally:
            await browser.close()
    async with httpx.AsyncClient(base_url=f"http://{demo}") as client:
        forged = await client.post("/demo/phone/outbound", content=b'{"to": "+1", "body": "x"}',
                                   headers={"x-timestamp": "1", "x-signature": "00"})
        assert forged.status_code == 403
        unsigned = await client.post("/sms/in", content=b'{"id": "1", "from": "+447700900123", "to": "+15005550006", "body": "x"}',
                                     headers={"content-type": "application/json"})
        assert unsigned.status_code == 403


async def test_the_page_names_the_ports_the_gateway_really_bound(gateway, demo):
    smtp = gateway.addresses["email"][0]
    mqtt = next(a for a in gateway.addresses["mqtt"] if a.startswith("mqtt://")).replace("mqtt://", "")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await open_page(browser, demo, "lobby")
            await page.wait_for_function(f"document.querySelector('#smtp-address').textContent === {smtp!r}", timeout=10_000)
            assert await page.text_content("#mqtt-address") == mqtt and not mqtt.endswith(":0")
        finally:
            await browser.close()


async def test_a_frame_that_is_not_json_gets_an_error_and_the_socket_stays_open(demo):
    import json

    import websockets

    async with websockets.connect(f"ws://{demo}/ws/chat/lobby/") as ws:
        await ws.send("not json at all")
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"name": "ann", "text": "still here"}))
        assert json.loads(await ws.recv()) == {"type": "chat", "name": "ann", "text": "still here"}
