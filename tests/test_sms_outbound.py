"""Outbound texts: from an instance and from the layer channel ``sms.send``, to a local server that
speaks Twilio's REST API; retries, Retry-After, idempotency, failures reported as ``sms.status``,
the rate limit, segment limits, opt-outs and delivery status callbacks."""

from __future__ import annotations

import asyncio

import pytest
import sms_helpers as h
from sms_helpers import Planned

from gateway_adapters.sms.numbers import segments

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_sms_state")]

ROUTES = """\
    - {events: status, app: "sms_helpers:ok", name: status}
    - {body: "^fwd", app: "sms_helpers:forward", name: forward}
    - {app: "sms_helpers:echo", name: echo}
"""


def statuses() -> list[dict]:
    return [event for scope, event in h.RECEIVED if scope["kind"] == "status"]


async def test_a_send_to_someone_else_goes_out_over_rest_during_the_instance():
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        h.CONTROL["to"] = h.UK_SENDER
        r = await h.post_twilio(base, h.twilio_message(sender=h.US_SENDER, body="fwd this"))
        assert r.status_code == 200
        assert "<Message>" not in r.text
        [sent] = cloud.requests
        assert sent["path"] == f"/2010-04-01/Accounts/{h.TWILIO_SID}/Messages.json"
        assert sent["form"] == {"To": h.UK_SENDER, "From": h.OUR_NUMBER, "Body": "fwd: fwd this"}
        assert len(sent["headers"]["i-twilio-idempotency-token"]) == 32
        assert h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") == 1


async def test_layer_channel_send_with_status_callback_url():
    sms = h.twilio_account(extra=', public_url: "https://gw.example.com"')
    async with h.cloud() as cloud, h.running(h.config(sms, ROUTES)) as (gw, base):
        sms_cfg = gw.adapters["sms"].accounts["twilio"].config
        gw.adapters["sms"].accounts["twilio"].provider.api_url = cloud.url
        assert sms_cfg.public_url == "https://gw.example.com"
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "from a cron job"})
        await h.eventually(lambda: len(cloud.requests) == 1)
        form = cloud.requests[0]["form"]
        assert form["Body"] == "from a cron job"
        assert form["StatusCallback"] == "https://gw.example.com/sms/twilio"


async def test_429_with_retry_after_is_retried_with_the_same_idempotency_key():
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(429, headers={"Retry-After": "0.05"}), Planned(503))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "retry me"})
        await h.eventually(lambda: h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") == 1)
        assert len(cloud.requests) == 3
        keys = {r["headers"]["i-twilio-idempotency-token"] for r in cloud.requests}
        assert len(keys) == 1
        assert h.metric(gw, "gateway_sms_send_retries_total", account="twilio") == 2


async def test_a_slow_answer_times_out_and_is_retried():
    sms = h.twilio_account(extra=", timeout: 0.2")
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(delay=1.0))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "slow"})
        await h.eventually(lambda: h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") == 1)
        assert len(cloud.requests) == 2
        assert cloud.requests[0]["headers"]["i-twilio-idempotency-token"] == cloud.requests[1]["headers"]["i-twilio-idempotency-token"]


async def test_a_400_is_not_retried_and_is_reported_as_failed_at_once():
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(400, body=b'{"code": 21211, "message": "Invalid To"}'))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "x"})
        await h.eventually(lambda: len(statuses()) == 1)
        assert len(cloud.requests) == 1
        [status] = statuses()
        assert (status["status"], status["to"], status["message_id"]) == ("failed", h.UK_SENDER, None)
        assert "HTTP 400" in status["error"] and "Invalid To" in status["error"]
        assert status["raw"]["body"] == "x"
        assert h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="failed") == 1


async def test_5xx_after_every_retry_fails_and_is_reported():
    sms = h.twilio_account(extra=", retries: 2")
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(500), Planned(502), Planned(503))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "x"})
        await h.eventually(lambda: len(statuses()) == 1)
        assert len(cloud.requests) == 3
        assert "failed after 3 attempts" in statuses()[0]["error"]


async def test_network_errors_are_retried_then_reported():
    sms = h.twilio_account(extra=", retries: 1")  # api_url points at a closed port
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "x"})
        await h.eventually(lambda: len(statuses()) == 1)
        assert h.metric(gw, "gateway_sms_send_retries_total", account="twilio") == 1
        assert "failed after 2 attempts" in statuses()[0]["error"]


async def test_a_failing_rest_send_during_the_instance_fails_the_webhook():
    sms = h.twilio_account(extra=", retries: 0")
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        cloud.plan(Planned(503))
        h.CONTROL["to"] = h.UK_SENDER
        r = await h.post_twilio(base, h.twilio_message(sender=h.US_SENDER, body="fwd x"))
        assert r.status_code == 500  # not handled: the provider delivers the webhook again


@pytest.mark.parametrize(("event", "error"), [
    ({"type": "sms.send", "to": "12", "body": "x"}, "invalid recipient"),
    ({"type": "sms.send", "to": h.UK_SENDER}, "needs a 'body'"),
    ({"type": "sms.send", "to": h.UK_SENDER, "body": "x", "account": "nope"}, "unknown account 'nope'"),
    ({"type": "sms.send", "to": h.UK_SENDER, "body": "x" * 1531}, "11 GSM-7 segments long; the limit is 10"),
])
async def test_invalid_channel_sends_are_refused_and_reported(event, error):
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        await gw.layer.send("sms.send", event)
        await h.eventually(lambda: len(statuses()) == 1)
        assert error in statuses()[0]["error"]
        assert cloud.requests == []


async def test_segment_limit_boundary_for_gsm_and_ucs2():
    assert segments("x" * 160) == (1, "GSM-7")
    assert segments("x" * 161) == (2, "GSM-7")
    assert segments("€" * 80) == (1, "GSM-7")  # an extension character counts twice
    assert segments("€" * 81) == (2, "GSM-7")
    assert segments("é" * 160) == (1, "GSM-7")
    assert segments("ж" * 70) == (1, "UCS-2")
    assert segments("ж" * 71) == (2, "UCS-2")
    assert segments("😀" * 35) == (1, "UCS-2")  # two UTF-16 units each
    assert segments("x" * 153 * 10) == (10, "GSM-7")
    assert segments("x" * (153 * 10 + 1)) == (11, "GSM-7")
    assert segments("ж" * 67 * 3) == (3, "UCS-2")
    assert segments("ж" * (67 * 3 + 1)) == (4, "UCS-2")
    sms = h.twilio_account().replace("{provider", "{max_segments: 2, provider")
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "ж" * 134})
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "ж" * 135})
        await h.eventually(lambda: len(statuses()) == 1 and len(cloud.requests) == 1)
        assert "3 UCS-2 segments long; the limit is 2" in statuses()[0]["error"]


async def test_rate_limit_spaces_sends_from_one_sender():
    sms = h.twilio_account().replace("rate_limit: 0", "rate_limit: 10")
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(4):
            await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": f"n{i}"})
        await h.eventually(lambda: len(cloud.requests) == 4)
        # four sends at 10 per second cannot all be out before three tenths of a second passed
        assert loop.time() - started >= 0.3
        assert [r["form"]["Body"] for r in cloud.requests] == ["n0", "n1", "n2", "n3"]


async def test_stop_start_and_help():
    sms = h.twilio_account().replace("{provider", '{opt_out: {help_reply: "Text JOIN to join."}, provider')
    async with h.cloud() as cloud, h.running(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(body="Stop.", sid="SM1"))
        assert r.status_code == 200
        assert "You have been unsubscribed" in r.text
        assert h.RECEIVED == []  # the app does not see it (opt_out.pass_to_app is off)
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="opt_out") == 1
        # now nothing goes to that number, from anywhere
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "promo"})
        await h.eventually(lambda: len(statuses()) == 1)
        assert statuses()[0]["provider_status"] == "opted_out"
        assert "opted out" in statuses()[0]["error"]
        r = await h.post_twilio(base, h.twilio_message(body="hi", sid="SM2"))
        assert "<Message>" not in r.text  # the app's inline echo is refused too ...
        assert r.status_code == 500  # ... which fails the instance (the app did not catch it)
        r = await h.post_twilio(base, h.twilio_message(body="Help", sid="SM3"))
        assert "Text JOIN to join." in r.text
        r = await h.post_twilio(base, h.twilio_message(body="START", sid="SM4"))
        assert "You have been resubscribed" in r.text
        r = await h.post_twilio(base, h.twilio_message(body="hi again", sid="SM5"))
        assert "you said: hi again" in r.text
        assert cloud.requests == []
        assert h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="refused") == 2


async def test_opt_out_can_be_switched_off_or_passed_to_the_app():
    sms = h.twilio_account().replace("{provider", "{opt_out: {pass_to_app: true}, provider")
    async with h.running(h.config(sms, '    - {keyword: STOP, app: "sms_helpers:ok"}\n')) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(body="STOP"))
        assert "unsubscribed" in r.text
        assert h.RECEIVED[0][0]["keyword"] == "STOP"
    h.RECEIVED.clear()
    sms = h.twilio_account().replace("{provider", "{opt_out: {enabled: false}, provider")
    async with h.running(h.config(sms, ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(body="STOP"))
        assert "you said: STOP" in r.text


async def test_delivery_status_callbacks_are_routed_to_status_routes():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        params = {"MessageSid": "SMout1", "MessageStatus": "undelivered", "ErrorCode": "30003",
                  "To": h.UK_SENDER, "From": h.OUR_NUMBER, "AccountSid": h.TWILIO_SID}
        r = await h.post_twilio(base, params)
        assert r.status_code == 200
        assert (await h.post_twilio(base, params)).status_code == 200  # a retry of a handled report
        assert len(h.RECEIVED) == 1
        scope, event = h.RECEIVED[0]
        assert (scope["kind"], scope["route_name"], scope["message_id"]) == ("status", "status", "SMout1")
        assert event["type"] == "sms.status"
        assert (event["status"], event["provider_status"], event["error_code"]) == ("undelivered", "undelivered", "30003")
        assert (event["to"], event["from"]) == (h.UK_SENDER, h.OUR_NUMBER)


async def test_status_without_a_status_route_is_acknowledged_and_counted():
    async with h.running(h.config(h.twilio_account(), '    - {app: "sms_helpers:ok"}\n')) as (gw, base):
        params = {"MessageSid": "SMout1", "MessageStatus": "delivered", "To": h.UK_SENDER, "From": h.OUR_NUMBER}
        assert (await h.post_twilio(base, params)).status_code == 200
        assert h.RECEIVED == []
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="status", outcome="no_route") == 1


async def test_a_graceful_stop_lets_running_instances_finish_their_sends():
    from gateway.server import Gateway

    async with h.cloud() as cloud:
        gw = Gateway.from_text(h.config(h.twilio_account(cloud.url), '    - {app: "sms_helpers:slow_forward", timeout: 10}\n'))
        await gw.start()
        base = f"http://{gw.addresses['http'][0]}"
        h.CONTROL.update(sleep=0.5, to=h.US_SENDER)
        webhook = asyncio.ensure_future(h.post_twilio(base, h.twilio_message()))
        await h.eventually(lambda: len(h.RECEIVED) == 1)
        await gw.stop(drain=10)
        assert (await webhook).status_code == 200
        assert [r["form"]["Body"] for r in cloud.requests] == ["after a while"]


async def test_a_slow_channel_send_does_not_hold_up_the_next_one():
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        held = asyncio.Event()
        cloud.plan(Planned(hold=held))
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "first"})
        await gw.layer.send("sms.send", {"type": "sms.send", "to": h.US_SENDER, "body": "second"})
        # the second is sent while the provider still sits on the first
        await h.eventually(lambda: h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") == 1)
        assert [r["form"]["Body"] for r in cloud.requests] == ["first", "second"]
        held.set()
        await h.eventually(lambda: h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") == 2)


async def test_outbound_concurrency_bounds_sends_in_flight_and_shutdown_counts_the_abandoned():
    sms = h.twilio_account().replace("{provider", "{outbound_concurrency: 1, provider")
    async with h.cloud() as cloud:
        gw = h.Gateway.from_text(h.config(sms.replace("http://127.0.0.1:9", cloud.url), ROUTES))
        await gw.start()
        held = asyncio.Event()
        cloud.plan(Planned(hold=held))
        for body in ("first", "second"):
            await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": body})
        await h.eventually(lambda: len(cloud.requests) == 1)
        await asyncio.sleep(0.2)  # room for a second send to start, if the bound did not hold
        assert len(cloud.requests) == 1
        await gw.stop(drain=0.2)
        # the one in flight and the one waiting for a slot: both taken from the channel, neither lost silently
        assert h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="abandoned") == 2
        held.set()


async def test_a_provider_bug_in_a_channel_send_is_logged_with_its_traceback():
    from structlog.testing import capture_logs

    def broken(sms):
        raise RuntimeError("the provider plugin has a bug")

    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        gw.adapters["sms"].accounts["twilio"].provider.send_request = broken
        with capture_logs() as logs:
            await gw.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "never sent"})
            await h.eventually(lambda: any(e["event"] == "sms.send.crashed" for e in logs))
    [crashed] = [e for e in logs if e["event"] == "sms.send.crashed"]
    assert crashed["error"] == "RuntimeError: the provider plugin has a bug"
    assert isinstance(crashed.get("exc_info"), RuntimeError)  # rendered as a traceback by the log processors
