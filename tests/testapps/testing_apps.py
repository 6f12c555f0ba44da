"""Applications of tests/test_testing.py, routed from its YAML by import string."""

import asyncio
import json


async def room(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"room": scope["url_route"]["kwargs"]["room"], "route": scope["route_name"]})})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def plant(scope, receive, send):
    message = await receive()
    line = scope["url_route"]["kwargs"]["line"]
    if message["payload"] == b"invalid":
        await send({"type": "mqtt.publish", "topic": "alerts/+", "payload": b""})
    await send({"type": "mqtt.publish", "topic": f"alerts/{line}", "qos": 1, "json": {
        "rest": scope["url_route"]["kwargs"]["rest"], "retain": message["retain"], "value": int(message["payload"])}})


async def slow(scope, receive, send):
    await receive()
    await asyncio.sleep(30)


async def ticket(scope, receive, send):
    message = (await receive())["message"]
    number = scope["url_route"]["kwargs"].get("id", "7")
    if number == "0":
        raise ZeroDivisionError("ticket zero")
    if message["subject"] == "spam":
        await send({"type": "email.reject", "code": 550, "reason": "5.7.1 no spam"})
        return
    await send({"type": "email.send", "to": [scope["mail_from"]], "subject": f"Re: ticket {number}", "text": "noted"})


async def boom(scope, receive, send):
    await receive()
    raise ZeroDivisionError("boom")


async def text(scope, receive, send):
    message = await receive()
    await send({"type": "sms.send", "to": message["from"], "body": f"echo: {message['body']}"})


async def report(scope, receive, send):
    event = await receive()
    await send({"type": "sms.send", "to": "+447700900123", "body": f"{event['message_id']} {event['status']} ({event['error_code']})"})
