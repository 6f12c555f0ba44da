"""AsyncSmsConsumer: the message and status hooks, reply() and send_sms(), acknowledgement on return."""

from __future__ import annotations

import pytest
import sms_helpers as h

from gateway.testing import Harness, SmsCommunicator, SmsStatusCommunicator

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_sms_state")]

ROUTES = """\
    - {events: status, app: "sms_helpers:TextConsumer"}
    - {body: "^(?P<verb>[a-z]+)", app: "sms_helpers:TextConsumer"}
"""


async def test_consumer_replies_inline_and_sees_the_captures():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        r = await h.post_twilio(base, h.twilio_message(body="hello you"))
        assert r.status_code == 200
        assert "<Message><Body>thanks for: hello you</Body></Message>" in r.text
        _, seen = h.RECEIVED[0]
        assert (seen["from"], seen["to"], seen["provider"], seen["kwargs"]) == (h.UK_SENDER, h.OUR_NUMBER, "twilio", {"verb": "hello"})


async def test_consumer_send_sms_goes_over_rest_and_a_raise_is_not_acknowledged():
    async with h.cloud() as cloud, h.running(h.config(h.twilio_account(cloud.url), ROUTES)) as (gw, base):
        h.CONTROL["to"] = h.US_SENDER
        assert (await h.post_twilio(base, h.twilio_message(body="fwd pass it on", sid="SM1"))).status_code == 200
        assert cloud.requests[0]["form"] == {"To": h.US_SENDER, "From": h.OUR_NUMBER, "Body": "pass it on"}
        assert (await h.post_twilio(base, h.twilio_message(body="raise", sid="SM2"))).status_code == 500


async def test_consumer_status_hook():
    async with h.running(h.config(h.twilio_account(), ROUTES)) as (gw, base):
        params = {"MessageSid": "SMx", "MessageStatus": "delivered", "To": h.UK_SENDER, "From": h.OUR_NUMBER}
        assert (await h.post_twilio(base, params)).status_code == 200
        _, seen = h.RECEIVED[0]
        assert (seen["status"], seen["message_id"], seen["to"]) == ("delivered", "SMx", h.UK_SENDER)


async def test_consumer_in_process_with_the_sms_communicator():
    """The same consumer and routes through ``gateway.testing``: no listener, no provider server,
    and the inline reply and the REST send are told apart."""
    harness = Harness.from_text(h.config(h.twilio_account(), ROUTES))
    replied = await SmsCommunicator(harness, "hello you", sender=h.UK_SENDER).deliver()
    assert replied.status == 200 and replied.sent == []
    assert [(t.to, t.sender, t.body) for t in replied.replies] == [(h.UK_SENDER, h.OUR_NUMBER, "thanks for: hello you")]
    assert h.RECEIVED[0][1]["kwargs"] == {"verb": "hello"}

    h.CONTROL["to"] = h.US_SENDER
    forwarded = await SmsCommunicator(harness, "fwd pass it on").deliver()
    assert (forwarded.replies, [(t.to, t.body) for t in forwarded.sent]) == ([], [(h.US_SENDER, "pass it on")])

    raised = await SmsCommunicator(harness, "raise").deliver()
    assert raised.status == 500 and str(raised.error) == "the consumer raised"

    report = await SmsStatusCommunicator(harness, "SMx", "delivered", to=h.UK_SENDER).deliver()
    assert report.status == 200
    assert (h.RECEIVED[-1][1]["status"], h.RECEIVED[-1][1]["message_id"]) == ("delivered", "SMx")
