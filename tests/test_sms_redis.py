"""Two gateways sharing a real redis-server: a provider's retry that lands on the other process is
still recognised, the opt-out list is shared, and each channel send goes out exactly once."""

from __future__ import annotations

import contextlib

import pytest
import sms_helpers as h

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_sms_state")]

ROUTES = """\
    - {events: status, app: "sms_helpers:ok", name: status}
    - {app: "sms_helpers:ok", name: default}
"""


@contextlib.asynccontextmanager
async def two_gateways(server, prefix, api_url):
    layer = f'layer: {{backend: redis, hosts: ["{server.url}"], prefix: {prefix}}}\n'
    async with h.running(h.config(h.twilio_account(api_url), ROUTES, layer)) as one, \
            h.running(h.config(h.twilio_account(api_url), ROUTES, layer)) as two:
        yield one, two


async def test_dedup_and_opt_outs_hold_across_processes(redis_server, prefix):
    async with h.cloud() as cloud, two_gateways(redis_server, prefix, cloud.url) as ((gw1, base1), (gw2, base2)):
        params = h.twilio_message(body="once")
        assert (await h.post_twilio(base1, params)).status_code == 200
        assert (await h.post_twilio(base2, params)).status_code == 200
        assert len(h.RECEIVED) == 1
        assert h.metric(gw2, "gateway_sms_webhooks_total", account="twilio", kind="message", outcome="duplicate") == 1
        assert b"sms.seen" in redis_server.command("KEYS", f"{prefix}:sms.*")

        r = await h.post_twilio(base1, h.twilio_message(body="STOP", sid="SM-stop"))
        assert "unsubscribed" in r.text
        assert await gw2.adapters["sms"].store.opted_out(h.UK_SENDER)
        await gw2.layer.send("sms.send", {"type": "sms.send", "to": h.UK_SENDER, "body": "promo"})
        await h.eventually(lambda: any(s["kind"] == "status" for s, _ in h.RECEIVED))
        assert cloud.requests == []
        assert [e["provider_status"] for s, e in h.RECEIVED if s["kind"] == "status"] == ["opted_out"]


async def test_each_channel_send_is_sent_by_exactly_one_process(redis_server, prefix):
    async with h.cloud() as cloud, two_gateways(redis_server, prefix, cloud.url) as ((gw1, _), (gw2, _)):
        for i in range(6):
            await gw1.layer.send("sms.send", {"type": "sms.send", "to": h.US_SENDER, "body": f"n{i}"})
        await h.eventually(lambda: len(cloud.requests) >= 6, timeout=15)
        sent = sorted(r["form"]["Body"] for r in cloud.requests)
        assert sent == [f"n{i}" for i in range(6)]

        def total() -> float:
            return sum(h.metric(gw, "gateway_sms_sent_total", account="twilio", outcome="sent") for gw in (gw1, gw2))

        # counted once the provider's answer is read, a moment after the stand-in has the request
        await h.eventually(lambda: total() >= 6, timeout=15)
        assert total() == 6


async def test_redis_away_gets_503_and_the_text_is_not_lost(own_redis, prefix):
    layer = f'layer: {{backend: redis, hosts: ["{own_redis.url}"], prefix: {prefix}}}\n'
    async with h.running(h.config(h.twilio_account(), ROUTES, layer)) as (gw, base):
        own_redis.stop()
        r = await h.post_twilio(base, h.twilio_message())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert h.RECEIVED == []
        assert h.metric(gw, "gateway_sms_webhooks_total", account="twilio", kind="unknown", outcome="error") == 1
        own_redis.start()
        await h.eventually(lambda: own_redis.proc is not None)
        r = await h.post_twilio(base, h.twilio_message())  # the provider's retry, once Redis is back
        assert r.status_code == 200
        assert len(h.RECEIVED) == 1
