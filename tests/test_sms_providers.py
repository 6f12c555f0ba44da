"""Telnyx, Vonage and the generic JSON provider: webhooks signed by the providers' SDKs (PyNaCl for
Ed25519, vonage's own signer, PyJWT for Vonage's JWTs), through the gateway's real listener, and
outbound sends to a local server speaking each REST API."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import httpx
import pytest
import sms_helpers as h
from sms_helpers import Planned
from telnyx.lib.webhook_verification import verify_webhook_signature

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_sms_state")]

ROUTES = """\
    - {events: status, app: "sms_helpers:ok", name: status}
    - {body: "^fwd", app: "sms_helpers:forward", name: forward}
    - {app: "sms_helpers:echo", name: echo}
"""


def telnyx(api_url: str = "http://127.0.0.1:9") -> str:
    return (f'{{provider: telnyx, webhook: /sms/telnyx, public_key: "{h.TELNYX_PUBLIC}", auth_token: telnyx-api-key, '
            f'numbers: ["{h.OUR_NUMBER}"], api_url: "{api_url}", rate_limit: 0, backoff: 0.01}}')


def vonage(api_url: str = "http://127.0.0.1:9", method: str = "sha256") -> str:
    return (f'{{provider: vonage, webhook: /sms/vonage, account_id: vonage-key, auth_token: vonage-api-secret, '
            f'signing_secret: "{h.VONAGE_SECRET}", signature_method: {method}, numbers: ["{h.OUR_NUMBER}"], '
            f'api_url: "{api_url}", rate_limit: 0, backoff: 0.01}}')


def generic(api_url: str = "http://127.0.0.1:9") -> str:
    return (f'{{provider: generic, webhook: /sms/in, signing_secret: "{h.GENERIC_SECRET}", numbers: ["{h.OUR_NUMBER}"], '
            f'api_url: "{api_url}/generic/send", auth_token: bearer-token, rate_limit: 0, backoff: 0.01}}')


# -- Telnyx ----------------------------------------------------------------------------------------
async def test_telnyx_message_signed_with_ed25519_and_the_reply_goes_over_rest():
    async with h.cloud() as cloud, h.running(h.config(telnyx(cloud.url), ROUTES)) as (gw, base):
        body = h.telnyx_received("hello telnyx")
        headers = h.telnyx_headers(body)
        verify_webhook_signature(body, headers, h.TELNYX_PUBLIC)  # Telnyx's SDK agrees with the test's signer
        r = await h.post(base + "/sms/telnyx", content=body, headers=headers)
        assert r.status_code == 200, r.text
        scope, event = h.RECEIVED[0]
        assert (scope["provider"], scope["from"], event["body"], event["segments"], event["encoding"]) == (
            "telnyx", h.UK_SENDER, "hello telnyx", 1, "GSM-7")
        [sent] = cloud.requests  # Telnyx has no inline replies: the echo went out over REST
        assert sent["path"] == "/v2/messages"
        assert sent["headers"]["authorization"] == "Bearer telnyx-api-key"
        assert sent["json"] == {"from": h.OUR_NUMBER, "to": h.UK_SENDER, "text": "you said: hello telnyx"}


@pytest.mark.parametrize("case", ["unsigned", "other key", "tampered", "replayed", "future"])
async def test_telnyx_bad_signatures_and_replays_get_403(case):
    from nacl.signing import SigningKey

    async with h.running(h.config(telnyx(), ROUTES)) as (gw, base):
        body = h.telnyx_received()
        headers = h.telnyx_headers(body)
        if case == "unsigned":
            del headers["telnyx-signature-ed25519"]
        elif case == "other key":
            headers = h.telnyx_headers(body, key=SigningKey(bytes(32)))
        elif case == "tampered":
            body = body.replace(b"hello", b"hellO")
        elif case == "replayed":
            headers = h.telnyx_headers(body, timestamp=int(time.time()) - 600)  # well outside the 300 s window
        else:
            headers = h.telnyx_headers(body, timestamp=int(time.time()) + 600)  # a loaded machine cannot bring it inside the window
        r = await h.post(base + "/sms/telnyx", content=body, headers=headers)
        assert r.status_code == 403, r.text
        assert h.RECEIVED == []


async def test_telnyx_replay_window_boundary_is_configurable():
    sms = telnyx().replace("{provider", "{replay_window: 600, provider")
    async with h.running(h.config(sms, '    - {app: "sms_helpers:ok"}\n')) as (gw, base):
        body = h.telnyx_received()
        r = await h.post(base + "/sms/telnyx", content=body, headers=h.telnyx_headers(body, timestamp=int(time.time()) - 500))
        assert r.status_code == 200


async def test_telnyx_delivery_report_and_invalid_json():
    async with h.running(h.config(telnyx(), ROUTES)) as (gw, base):
        body = json.dumps({"data": {"event_type": "message.finalized", "payload": {
            "id": "tx-9", "from": {"phone_number": h.OUR_NUMBER},
            "to": [{"phone_number": h.UK_SENDER, "status": "delivery_failed"}],
            "errors": [{"code": "40008", "title": "Undeliverable"}]}}}).encode()
        r = await h.post(base + "/sms/telnyx", content=body, headers=h.telnyx_headers(body))
        assert r.status_code == 200
        event = h.RECEIVED[0][1]
        assert (event["status"], event["provider_status"], event["error_code"], event["error"]) == (
            "undelivered", "delivery_failed", "40008", "Undeliverable")
        broken = b'{"data": '
        r = await h.post(base + "/sms/telnyx", content=broken, headers=h.telnyx_headers(broken))
        assert r.status_code == 400
        assert "not valid JSON" in r.text


# -- Vonage ----------------------------------------------------------------------------------------
def vonage_inbound(**extra: str) -> dict[str, str]:
    return {"msisdn": h.UK_SENDER.lstrip("+"), "to": h.OUR_NUMBER.lstrip("+"), "messageId": "0A000001",
            "text": "hello vonage & co", "type": "text", "keyword": "HELLO", "message-timestamp": "2026-12-01 12:00:00", **extra}


@pytest.mark.parametrize("method", ["md5", "sha1", "sha256", "sha512"])
async def test_vonage_sms_api_signed_by_vonages_signer(method):
    async with h.cloud() as cloud, h.running(h.config(vonage(cloud.url, method), ROUTES)) as (gw, base):
        params = h.vonage_signed(vonage_inbound(), method)
        r = await h.post(base + "/sms/vonage", content=urlencode(params),
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200, r.text
        scope, event = h.RECEIVED[0]
        assert (scope["provider"], scope["from"], scope["to"], event["body"]) == ("vonage", h.UK_SENDER, h.OUR_NUMBER, "hello vonage & co")
        [sent] = cloud.requests
        assert sent["path"] == "/sms/json"
        assert sent["form"]["to"] == h.UK_SENDER.lstrip("+")
        assert sent["form"]["text"] == "you said: hello vonage & co"
        assert (sent["form"]["api_key"], sent["form"]["api_secret"]) == ("vonage-key", "vonage-api-secret")


async def test_vonage_get_webhook_and_md5hash():
    import hashlib

    async with h.running(h.config(vonage(method="md5hash"), '    - {app: "sms_helpers:ok"}\n')) as (gw, base):
        params = vonage_inbound(timestamp=str(int(time.time())))
        text = "".join(f"&{k}={v.replace('&', '_').replace('=', '_')}" for k, v in sorted(params.items()))
        params["sig"] = hashlib.md5((text + h.VONAGE_SECRET).encode()).hexdigest()
        async with httpx.AsyncClient() as client:
            r = await client.get(base + "/sms/vonage", params=params)
        assert r.status_code == 200, r.text
        params["text"] = "changed"
        async with httpx.AsyncClient() as client:
            r = await client.get(base + "/sms/vonage", params=params)
        assert r.status_code == 403
        assert len(h.RECEIVED) == 1


async def test_vonage_unsigned_and_replayed_get_403():
    async with h.running(h.config(vonage(), ROUTES)) as (gw, base):
        r = await h.post(base + "/sms/vonage", content=urlencode(vonage_inbound()),
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and "sig" in r.text
        old = h.vonage_signed(vonage_inbound(timestamp=str(int(time.time()) - 1000)))
        r = await h.post(base + "/sms/vonage", content=urlencode(old), headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and "replay window" in r.text
        assert h.RECEIVED == []


async def test_vonage_delivery_receipt():
    async with h.running(h.config(vonage(), ROUTES)) as (gw, base):
        params = h.vonage_signed({"msisdn": h.UK_SENDER.lstrip("+"), "to": h.OUR_NUMBER.lstrip("+"), "messageId": "0B01",
                                  "status": "delivered", "err-code": "0", "network-code": "23410"})
        r = await h.post(base + "/sms/vonage", content=urlencode(params), headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200
        scope, event = h.RECEIVED[0]
        assert (scope["kind"], event["status"], event["to"], event["from"], event["error_code"]) == (
            "status", "delivered", h.UK_SENDER, h.OUR_NUMBER, None)


async def test_vonage_messages_api_jwt():
    async with h.cloud() as cloud, h.running(h.config(vonage(cloud.url), ROUTES)) as (gw, base):
        body = json.dumps({"channel": "sms", "message_uuid": "aaaaaaaa-bbbb", "to": h.OUR_NUMBER.lstrip("+"),
                           "from": h.UK_SENDER.lstrip("+"), "text": "via messages", "message_type": "text",
                           "sms": {"num_messages": "1"}}).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {h.vonage_jwt(body)}"}
        from vonage_jwt.verify_jwt import verify_signature

        assert verify_signature(headers["authorization"][7:], h.VONAGE_SECRET)  # vonage's checker agrees
        r = await h.post(base + "/sms/vonage", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert h.RECEIVED[0][1]["body"] == "via messages"
        assert h.RECEIVED[0][1]["segments"] == 1
        r = await h.post(base + "/sms/vonage", content=body.replace(b"via", b"VIA"), headers=headers)
        assert r.status_code == 403 and "payload_hash" in r.text
        wrong = {"content-type": "application/json", "authorization": f"Bearer {h.vonage_jwt(body, secret='another-secret-that-is-32-bytes-long')}"}
        assert (await h.post(base + "/sms/vonage", content=body, headers=wrong)).status_code == 403
        stale = {"content-type": "application/json", "authorization": f"Bearer {h.vonage_jwt(body, iat=int(time.time()) - 3600)}"}
        assert (await h.post(base + "/sms/vonage", content=body, headers=stale)).status_code == 403
        assert len(h.RECEIVED) == 1


async def test_vonage_throttled_answer_is_retried_and_unicode_is_flagged():
    async with h.cloud() as cloud, h.running(h.config(vonage(cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(200, body=b'{"message-count": "1", "messages": [{"status": "1", "error-text": "Throttled"}]}'))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "привет"})
        await h.eventually(lambda: h.metric(gw, "gateway_sms_sent_total", account="vonage", outcome="sent") == 1)
        assert len(cloud.requests) == 2
        assert cloud.requests[1]["form"]["type"] == "unicode"
        refs = {r["form"]["client-ref"] for r in cloud.requests}
        assert len(refs) == 1 and len(refs.pop()) == 32  # one idempotency key for both attempts
        cloud.plan(Planned(200, body=b'{"message-count": "1", "messages": [{"status": "6", "error-text": "Invalid Message"}]}'))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "x"})
        await h.eventually(lambda: len(h.RECEIVED) == 1)
        assert "Vonage status 6: Invalid Message" in h.RECEIVED[0][1]["error"]
        assert len(cloud.requests) == 3


# -- Generic JSON ----------------------------------------------------------------------------------
async def test_generic_json_in_and_out():
    async with h.cloud() as cloud, h.running(h.config(generic(cloud.url), ROUTES)) as (gw, base):
        body = json.dumps({"id": "g-1", "from": h.UK_SENDER, "to": h.OUR_NUMBER, "body": "fwd generic",
                           "media": [{"url": "https://m.example/x.png", "content_type": "image/png"}]}).encode()
        h.CONTROL["to"] = h.US_SENDER
        r = await h.post(base + "/sms/in", content=body, headers=h.generic_headers(body))
        assert r.status_code == 200, r.text
        assert h.RECEIVED[0][1]["media"] == [{"url": "https://m.example/x.png", "content_type": "image/png"}]
        [sent] = cloud.requests
        assert sent["json"] == {"from": h.OUR_NUMBER, "to": h.US_SENDER, "body": "fwd: fwd generic", "media": []}
        assert sent["headers"]["authorization"] == "Bearer bearer-token"
        assert sent["headers"]["idempotency-key"]
        # the outbound request is signed the same way as inbound ones
        assert h.generic_headers(sent["body"], timestamp=int(sent["headers"]["x-timestamp"]))["x-signature"] == sent["headers"]["x-signature"]


@pytest.mark.parametrize(("change", "status", "text"), [
    ("unsigned", 403, "missing X-Signature"),
    ("wrong secret", 403, "does not match"),
    ("replayed", 403, "replay window"),
    ("not json", 400, "not valid JSON"),
    ("not an object", 400, "must be an object"),
    ("no from", 400, "missing 'from'"),
])
async def test_generic_bad_input(change, status, text):
    async with h.running(h.config(generic(), ROUTES)) as (gw, base):
        message = {"id": "g-1", "from": h.UK_SENDER, "to": h.OUR_NUMBER, "body": "x"}
        body = json.dumps(message).encode()
        headers = h.generic_headers(body)
        if change == "unsigned":
            del headers["x-signature"]
        elif change == "wrong secret":
            headers = h.generic_headers(body, secret="nope")
        elif change == "replayed":
            headers = h.generic_headers(body, timestamp=int(time.time()) - 301)
        elif change == "not json":
            body = b"{nope"
            headers = h.generic_headers(body)
        elif change == "not an object":
            body = b"[1, 2]"
            headers = h.generic_headers(body)
        else:
            body = json.dumps({k: v for k, v in message.items() if k != "from"}).encode()
            headers = h.generic_headers(body)
        r = await h.post(base + "/sms/in", content=body, headers=headers)
        assert r.status_code == status
        assert text in r.text
        assert h.GENERIC_SECRET not in r.text
        assert h.RECEIVED == []


async def test_a_provider_from_an_import_string():
    sms = generic().replace("provider: generic", 'provider: "gateway_adapters.sms.providers.generic:GenericProvider"')
    async with h.running(h.config(sms, '    - {app: "sms_helpers:ok"}\n')) as (gw, base):
        body = json.dumps({"id": "g-1", "from": h.UK_SENDER, "to": h.OUR_NUMBER, "body": "x"}).encode()
        assert (await h.post(base + "/sms/in", content=body, headers=h.generic_headers(body))).status_code == 200
        assert h.RECEIVED[0][0]["provider"] == "generic"


# -- a provider plugin -----------------------------------------------------------------------------
async def test_a_plugin_provider_as_the_docs_show_it():
    sms = (f'{{provider: "sms_helpers:AcmeProvider", name: acme, webhook: /sms/acme, signing_secret: tok, '
           f'numbers: ["{h.OUR_NUMBER}"], rate_limit: 0, options: {{mode: fast}}}}')
    async with h.cloud() as cloud, h.running(h.config(sms.replace("rate_limit", f'api_url: "{cloud.url}", rate_limit'), ROUTES)) as (gw, base):
        body = json.dumps({"ref": "a-1", "msisdn": h.UK_SENDER, "shortcode": h.OUR_NUMBER, "text": "hi acme"}).encode()
        r = await h.post(base + "/sms/acme", content=body, headers={"x-acme-token": "tok", "content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert h.RECEIVED[0][0]["provider"] == "acme"
        assert cloud.requests[0]["json"] == {"to": h.UK_SENDER, "text": "you said: hi acme", "mode": "fast"}
        r = await h.post(base + "/sms/acme", content=body, headers={"x-acme-token": "nope"})
        assert r.status_code == 403 and "bad X-Acme-Token" in r.text


def test_a_provider_that_is_not_one_is_refused():
    from gateway.errors import ConfigError
    from gateway.server import Gateway

    with pytest.raises(ConfigError, match="not a concrete subclass"):
        Gateway.from_text(h.config('{provider: "sms_helpers:NotAProvider", webhook: /x}', '    - {app: "sms_helpers:ok"}'))
    with pytest.raises(ConfigError, match="needs 'signing_secret'"):
        Gateway.from_text(h.config('{provider: "sms_helpers:AcmeProvider", webhook: /x}', '    - {app: "sms_helpers:ok"}'))
