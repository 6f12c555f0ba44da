"""The SMS provider's REST API in the compose test: checks each send's signature, prints it, answers an id.

Runs in a container of the gateway's image (aiohttp is there). The test reads its log: a line
``sms-catcher: {...}`` per accepted send, ``sms-catcher: bad signature`` for a refused one.
"""

import hashlib
import hmac
import itertools
import json
import os

from aiohttp import web

SECRET = os.environ["SMS_SIGNING_SECRET"].encode()
ids = itertools.count(1)


async def messages(request: web.Request) -> web.Response:
    body = await request.read()
    stamp = request.headers.get("x-timestamp", "")
    expected = hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(request.headers.get("x-signature", ""), expected):
        print("sms-catcher: bad signature", flush=True)
        return web.json_response({"error": "bad signature"}, status=401)
    print("sms-catcher:", json.dumps(json.loads(body), sort_keys=True), flush=True)
    return web.json_response({"id": f"catcher-{next(ids)}"})


app = web.Application()
app.router.add_post("/{tail:.*}", messages)
web.run_app(app, host="0.0.0.0", port=8080, print=None)
