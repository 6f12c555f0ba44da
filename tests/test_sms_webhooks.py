"""SMS webhooks on the http listener: Twilio requests signed by the twilio SDK, sent by httpx to the
gateway's real listener; routing, acknowledgement, retries of the provider, and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
from urllib.parse import urlencode

import pytest
import sms_helpers as h

from gateway.errors import ConfigError

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_sms_state")]

ROUTES = """\
    - {from: "+44", app: "sms_helpers:ok", name: uk}
    - {keyword: [JOIN, SUBSCRIBE], app: "sms_helpers:ok", name: join}
    - {body: "^order (?P<number>[0-9]+)$", app: "sms_helpers:ok", name: order}
    - {body: "^echo", app: "sms_helpers:echo", name: echo}
    - {body: "^boom", app: "sms_helpers:fail", name: boom}
    - {body: "^slow", app: "sms_helpers:slow", name: slow, timeout: 0.3}
    - {app: "sms_helpers:ok", name: default}
"""


def routes_for(sender_prefix: str = "+44") -> str:
    return ROUTES.replace('"+44"', f'"{sender_prefix}"')


async def test_signed_message_is_routed_by_prefix_and_acknowledged_after_the_app():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(body="Hello there"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/xml")
        assert r.text == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
        scope, event = h.RECEIVED[0]
        assert scope["route_name"] == "uk"
        assert (scope["kind"], scope["provider"], scope["account"]) == ("message", "twilio", "twilio")
        assert (scope["from"], scope["to"], scope["keyword"]) == (h.UK_SENDER, h.OUR_NUMBER, "HELLO")
        assert scope["webhook_url"] == base + "/sms/twilio"
        assert event["type"] == "sms.message"
        assert (event["body"], event["message_id"], event["segments"]) == ("Hello there", "SM0001", 1)
        assert event["raw"]["AccountSid"] == h.TWILIO_SID
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="handled") == 1


async def test_default_route_keyword_aliases_and_body_captures():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        for i, body in enumerate(["subscribe please", "order 42", "what?"]):
            r = await h.post_twilio(base, h.twilio_message(sender=h.US_SENDER, body=body, sid=f"SM{i}"))
            assert r.status_code == 200
        names = [s["route_name"] for s, _ in h.RECEIVED]
        assert names == ["join", "order", "default"]
        assert h.RECEIVED[1][0]["url_route"]["kwargs"] == {"number": "42"}


async def test_reply_to_the_sender_is_inline_twiml():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(sender=h.US_SENDER, body="echo <me> & you"))
        assert r.status_code == 200
        assert r.text.endswith("<Response><Message><Body>you said: echo &lt;me&gt; &amp; you</Body></Message></Response>")


async def test_media_are_listed():
    params = h.twilio_message(sender=h.US_SENDER, body="", NumMedia="2", MediaUrl0="https://m.example/a.jpg",
                              MediaContentType0="image/jpeg", MediaUrl1="https://m.example/b.png", MediaContentType1="image/png")
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        assert (await h.post_twilio(base, params)).status_code == 200
        assert h.RECEIVED[0][1]["media"] == [
            {"url": "https://m.example/a.jpg", "content_type": "image/jpeg"},
            {"url": "https://m.example/b.png", "content_type": "image/png"},
        ]


@pytest.mark.parametrize("case", ["unsigned", "wrong token", "tampered", "other url"])
async def test_bad_signatures_get_403_and_nothing_is_routed(case):
    from structlog.testing import capture_logs

    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        url = base + "/sms/twilio"
        params = h.twilio_message()
        headers = h.twilio_form(url, params)
        if case == "unsigned":
            del headers["x-twilio-signature"]
        elif case == "wrong token":
            headers = h.twilio_form(url, params, token="not-the-token")
        elif case == "tampered":
            params = {**params, "Body": "changed"}
        else:
            headers = h.twilio_form("https://elsewhere.example/sms/twilio", params)
        with capture_logs() as logs:
            r = await h.post(url, content=urlencode(params), headers=headers)
        assert r.status_code == 403
        assert "X-Twilio-Signature" in r.text
        assert h.TWILIO_TOKEN not in r.text
        assert h.RECEIVED == []
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="unknown", outcome="forbidden") == 1
        assert b'outcome="forbidden"' in (await _metrics(base))
    logged = [entry for entry in logs if entry["event"] == "sms.webhook.forbidden"]
    assert len(logged) == 1
    assert logged[0]["url"] == url and "X-Twilio-Signature" in logged[0]["error"]
    assert h.TWILIO_TOKEN not in repr(logs)


async def _metrics(base: str) -> bytes:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(base + "/metrics")).content


async def test_shared_key_hmac_sha256_signature():
    sms = h.twilio_account(extra=f', signing_secret: "{h.SHARED_KEY}"')
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(), token=h.SHARED_KEY, algorithm="HMAC_SHA256")
        assert r.status_code == 200, r.text
        bad = await h.post_twilio(base, h.twilio_message(sid="SM9"), token=h.TWILIO_TOKEN, algorithm="HMAC_SHA256")
        assert bad.status_code == 403
        assert len(h.RECEIVED) == 1


async def test_json_body_signed_through_body_sha256():
    body = json.dumps({"MessageSid": "SMjson", "From": h.UK_SENDER, "To": h.OUR_NUMBER, "Body": "json hi"})
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        url = f"{base}/sms/twilio?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
        headers = {"content-type": "application/json",
                   "x-twilio-signature": h.RequestValidator(h.TWILIO_TOKEN).compute_signature(url, {})}
        assert h.RequestValidator(h.TWILIO_TOKEN).validate(url, body, headers["x-twilio-signature"])
        r = await h.post(url, content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert h.RECEIVED[0][1]["body"] == "json hi"
        r = await h.post(url, content=body.replace("json hi", "json changed"), headers=headers)
        assert r.status_code == 403 and "bodySHA256" in r.text


async def test_public_url_is_what_signatures_are_checked_against():
    sms = h.twilio_account(extra=', public_url: "https://gw.example.com"')
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        params = h.twilio_message()
        public = "https://gw.example.com/sms/twilio"
        r = await h.post(base + "/sms/twilio", content=urlencode(params), headers=h.twilio_form(public, params))
        assert r.status_code == 200, r.text
        assert h.RECEIVED[0][0]["webhook_url"] == public
        r = await h.post(base + "/sms/twilio", content=urlencode(params), headers=h.twilio_form(base + "/sms/twilio", params))
        assert r.status_code == 403
        # Twilio signs with or without the default port, inconsistently: both are accepted
        params = h.twilio_message(sid="SM-port")
        signed = h.twilio_form("https://gw.example.com:443/sms/twilio", params)
        r = await h.post(base + "/sms/twilio", content=urlencode(params), headers=signed)
        assert r.status_code == 200, r.text


async def test_behind_a_trusted_proxy_the_forwarded_url_is_verified():
    text = h.config(h.twilio_account(), ROUTES).replace(
        'http: {listen: "127.0.0.1:0"}', 'http: {listen: "127.0.0.1:0", trusted_proxies: ["127.0.0.1"]}')
    async with h.running(text) as (gw, base):
        params = h.twilio_message()
        headers = h.twilio_form("https://sms.example.org/sms/twilio", params)
        headers.update({"x-forwarded-proto": "https", "x-forwarded-host": "sms.example.org"})
        r = await h.post(base + "/sms/twilio", content=urlencode(params), headers=headers)
        assert r.status_code == 200, r.text


async def test_app_failure_gets_500_and_the_providers_retry_runs_it_again():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        params = h.twilio_message(sender=h.US_SENDER, body="boom")
        assert (await h.post_twilio(base, params)).status_code == 500
        assert (await h.post_twilio(base, params)).status_code == 500
        assert len(h.RECEIVED) == 2  # a failed message is not remembered as handled
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="failed") == 2


async def test_app_timeout_gets_503():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(sender=h.US_SENDER, body="slow"))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="timeout") == 1


async def test_a_retry_of_a_handled_message_is_acknowledged_without_running_the_app():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        params = h.twilio_message()
        assert (await h.post_twilio(base, params)).status_code == 200
        assert (await h.post_twilio(base, params)).status_code == 200
        assert len(h.RECEIVED) == 1
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="duplicate") == 1


async def test_dedup_window_zero_runs_every_delivery():
    async with h.running(h.config(h.twilio_account(), ROUTES, ).replace("  sms: {", "  sms: {dedup_window: 0, accounts: [{").replace(
            "backoff: 0.01}", "backoff: 0.01}]}")) as (gw, base):
        params = h.twilio_message()
        for _ in range(2):
            assert (await h.post_twilio(base, params)).status_code == 200
        assert len(h.RECEIVED) == 2


@pytest.mark.parametrize(("params", "reason"), [
    ({"MessageSid": "SM1", "To": h.OUR_NUMBER, "Body": "x"}, "missing From"),
    ({"MessageSid": "SM1", "From": "not a number", "To": h.OUR_NUMBER, "Body": "x"}, "not a phone number"),
    ({"MessageSid": "SM1", "From": "+44123", "To": h.OUR_NUMBER, "Body": "x"}, "not a possible phone number"),
    ({"From": h.UK_SENDER, "To": h.OUR_NUMBER, "Body": "x"}, "missing MessageSid"),
])
async def test_malformed_messages_get_400(params, reason):
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, params)
        assert r.status_code == 400
        assert reason in r.text
        assert h.RECEIVED == []
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="unknown", outcome="malformed") == 1


async def test_broken_form_encoding_gets_400():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post(base + "/sms/twilio", content=b"From=%ZZ&&=x",
                         headers={"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": "x"})
        assert r.status_code == 400
        assert "broken form body encoding" in r.text


async def test_national_numbers_are_normalised_with_the_default_region():
    sms = h.twilio_account().replace("{provider", "{default_region: GB, provider")
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        assert (await h.post_twilio(base, h.twilio_message(sender="07700 900123"))).status_code == 200
        assert h.RECEIVED[0][0]["from"] == h.UK_SENDER
        assert h.RECEIVED[0][0]["route_name"] == "uk"


async def test_body_size_limit_boundary():
    sms = h.twilio_account().replace("{provider", "{max_body_size: 400, provider")
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        params = h.twilio_message(sender=h.US_SENDER, body="")
        room = 400 - len(urlencode(params))
        fits = dict(params, Body="a" * room)
        assert len(urlencode(fits)) == 400
        assert (await h.post_twilio(base, fits)).status_code == 200
        over = dict(params, Body="a" * (room + 1), MessageSid="SM0002")
        assert len(urlencode(over)) == 401
        r = await h.post_twilio(base, over)
        assert r.status_code == 413
        assert "max_body_size" in r.text
        assert len(h.RECEIVED) == 1


async def test_only_post_is_accepted():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        import httpx

        async with httpx.AsyncClient() as client:
            r = await client.get(base + "/sms/twilio")
        assert r.status_code == 405
        assert r.headers["allow"] == "POST"


async def test_no_route_gets_404():
    routes = '    - {from: "+33", app: "sms_helpers:ok"}\n'
    async with h.running(h.config(h.twilio_account(), routes)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message())
        assert r.status_code == 404
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="no_route") == 1


async def test_max_concurrency_answers_503_when_the_route_is_saturated():
    routes = '    - {app: "sms_helpers:slow", max_concurrency: 1, timeout: 5}\n'
    async with h.running(h.config(h.twilio_account(), routes)) as (gw, base):
        h.CONTROL["sleep"] = 0.5
        first = asyncio.ensure_future(h.post_twilio(base, h.twilio_message(sid="SMa")))
        await h.eventually(lambda: len(h.RECEIVED) == 1)
        second = await h.post_twilio(base, h.twilio_message(sid="SMb"))
        assert second.status_code == 503
        assert second.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        third = await h.post_twilio(base, h.twilio_message(sid="SMb"))
        assert third.status_code == 200  # the provider's retry, once the route has room


async def test_several_accounts_each_have_their_own_path_and_routes():
    sms = f"""
    accounts:
      - {h.twilio_account()[:-1]}, name: main}}
      - {{name: second, provider: twilio, webhook: /sms/second, account_id: "{h.TWILIO_SID}", auth_token: other-token}}"""
    routes = '    - {account: second, app: "sms_helpers:echo", name: second}\n    - {app: "sms_helpers:ok", name: main}\n'
    async with h.running(h.config(sms, routes)) as (gw, base):
        assert (await h.post_twilio(base, h.twilio_message(), path="/sms/second", token="other-token")).status_code == 200
        assert (await h.post_twilio(base, h.twilio_message())).status_code == 200
        assert [(s["account"], s["route_name"]) for s, _ in h.RECEIVED] == [("second", "second"), ("main", "main")]


@pytest.mark.parametrize(("sms", "routes", "error"), [
    ("{provider: nosuch, webhook: /x}", '    - {app: "sms_helpers:ok"}', "unknown SMS provider 'nosuch'"),
    ("{provider: twilio, webhook: /x}", '    - {app: "sms_helpers:ok"}', "needs 'account_id', 'auth_token'"),
    ("{provider: telnyx, webhook: /x, public_key: abc}", '    - {app: "sms_helpers:ok"}', "base64 Ed25519"),
    (h.twilio_account(), '    - {body: "(", app: "sms_helpers:ok"}', "invalid regular expression"),
    (h.twilio_account(), '    - {from: "44", app: "sms_helpers:ok"}', "not a number prefix"),
    (h.twilio_account(), '    - {to: "0123", app: "sms_helpers:ok"}', "not an E.164 number"),
])
def test_config_errors_are_specific(sms, routes, error):
    from gateway.server import Gateway

    with pytest.raises(ConfigError, match=error):
        Gateway.from_text(h.config(sms, routes))


async def test_without_an_http_adapter_the_gateway_refuses_to_start():
    from gateway.errors import StartupError
    from gateway.server import Gateway

    text = f"adapters:\n  sms: {h.twilio_account()}\nroutes:\n  sms:\n    - {{app: 'sms_helpers:ok'}}\n"
    with pytest.raises(StartupError, match="needs an HTTP listener"):
        async with Gateway.from_text(text):
            pass


async def test_a_retry_while_the_first_delivery_runs_gets_503():
    routes = '    - {app: "sms_helpers:slow", timeout: 5}\n'
    async with h.running(h.config(h.twilio_account(), routes)) as (gw, base):
        h.CONTROL["sleep"] = 0.5
        first = asyncio.ensure_future(h.post_twilio(base, h.twilio_message()))
        await h.eventually(lambda: len(h.RECEIVED) == 1)
        again = await h.post_twilio(base, h.twilio_message())
        assert again.status_code == 503 and again.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        assert (await h.post_twilio(base, h.twilio_message())).status_code == 200  # now a known duplicate
        assert len(h.RECEIVED) == 1


def test_gateway_routes_shows_the_sms_matchers():
    import io

    from gateway.cli import print_routes
    from gateway.config import loads

    out = io.StringIO()
    print_routes(loads(h.config(h.twilio_account(), ROUTES + '    - {events: status, to: "+15005550006", app: "sms_helpers:ok"}\n')), out)
    text = out.getvalue()
    for needle in ("from=+44*", "keyword=JOIN|SUBSCRIBE", "body~/^order (?P<number>[0-9]+)$/", "events=status to=+15005550006"):
        assert needle in text


async def test_the_http_adapters_own_body_limit_ends_a_chunked_webhook_without_routing_it():
    import httpx

    text = h.config(h.twilio_account(), ROUTES).replace('http: {listen: "127.0.0.1:0"}', 'http: {listen: "127.0.0.1:0", limits: {max_body_size: 100}}')
    async with h.running(text) as (gw, base):
        params = h.twilio_message(body="x" * 200)
        url = base + "/sms/twilio"

        async def chunks():
            body = urlencode(params).encode()
            for i in range(0, len(body), 50):
                yield body[i:i + 50]

        async with httpx.AsyncClient() as client:
            try:
                r = await client.post(url, content=chunks(), headers=h.twilio_form(url, params))
            except httpx.TransportError:
                pass  # the 413 and the close can overtake the client's last chunks: refused either way
            else:
                assert r.status_code == 413
        assert h.RECEIVED == []
        await h.eventually(lambda: h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="unknown", outcome="disconnected") == 1)
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="unknown", outcome="forbidden") == 0


async def test_secrets_come_from_the_environment_and_stay_out_of_reprs_and_logs(monkeypatch):
    from structlog.testing import capture_logs

    monkeypatch.setenv("SMS_TEST_TOKEN", h.TWILIO_TOKEN)
    sms = h.twilio_account().replace(f'auth_token: "{h.TWILIO_TOKEN}"', 'auth_token: "${SMS_TEST_TOKEN}"')
    assert h.TWILIO_TOKEN not in sms
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        assert h.TWILIO_TOKEN not in repr(gw.plan.adapters[1].config)
        with capture_logs() as logs:
            assert (await h.post_twilio(base, h.twilio_message())).status_code == 200
            assert (await h.post_twilio(base, h.twilio_message(sid="SM2"), token="wrong")).status_code == 403
        assert h.TWILIO_TOKEN not in repr(logs)


async def test_a_caller_that_hangs_up_does_not_cancel_the_app_and_its_retry_is_a_duplicate():
    import httpx

    routes = '    - {app: "sms_helpers:slow_then_done", timeout: 5}\n'
    async with h.running(h.config(h.twilio_account(), routes)) as (gw, base):
        h.CONTROL["sleep"] = 0.5
        params = h.twilio_message()
        url = base + "/sms/twilio"
        async with httpx.AsyncClient(timeout=0.1) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, content=urlencode(params), headers=h.twilio_form(url, params))
        await h.eventually(lambda: any(e["type"] == "done" for _, e in h.RECEIVED))
        assert (await h.post_twilio(base, params)).status_code == 200  # the provider's retry
        assert len(h.RECEIVED) == 2  # one run: started, done
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="duplicate") == 1


async def test_a_webhook_path_taken_by_another_mount_stops_the_start_with_a_clear_error():
    from gateway.errors import StartupError
    from gateway.server import Gateway

    sms = h.twilio_account().replace("webhook: /sms/twilio", "webhook: /metrics")
    with pytest.raises(StartupError, match="account 'twilio': sms:twilio and metrics both want to mount '/metrics'"):
        async with Gateway.from_text(h.config(sms, ROUTES)):
            pass


async def test_an_invalid_sms_send_raises_from_send_and_fails_the_instance():
    async with h.running(h.config(h.twilio_account(), '    - {app: "sms_helpers:bad_send"}\n')) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message())
        assert r.status_code == 500
        assert "needs a 'body'" in h.RECEIVED[0][1]["error"]
