"""SMS benchmark: signed Twilio-form webhooks per second through the gateway (signature check,
dedup, routing, a trivial app, TwiML answer) against a bare aiohttp handler doing the same
signature check, side by side in one run; then outbound sends per second to a local server that
speaks Twilio's REST API.

    python bench/sms.py [--seconds 5] [--connections 16] [--rounds 3] [--sends 2000]

Each webhook server runs in its own subprocess on a free loopback port (uvloop when installed).
The load generator (aiohttp client, ``--connections`` keep-alive connections) posts requests it
signed beforehand with the twilio package's ``RequestValidator``, each with its own MessageSid so
the gateway's dedup never short-cuts the app. Cells alternate between the two servers for
``--rounds`` rounds and the best of each is kept. Target: gateway >= 0.8x the bare handler.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here] + [_here]

import argparse
import asyncio
import contextlib
import signal
import subprocess
import tempfile
import time
from urllib.parse import urlencode

import _common as common

PY = sys.executable
SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "bench-auth-token"
PATH = "/sms/twilio"


async def noop(scope, receive, send):
    """The trivial app: take the text, return (the acknowledgement)."""
    if scope["type"] != "sms":
        raise ValueError("sms only")
    await receive()


def use_uvloop() -> None:
    if os.environ.get("BENCH_NO_UVLOOP"):
        return
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def holder_module() -> str:
    import types

    holder = types.ModuleType("asgi_gateway_bench_sms")
    holder.noop = noop  # type: ignore[attr-defined]
    sys.modules[holder.__name__] = holder
    return holder.__name__


def gateway_yaml(port: int, api_url: str = "http://127.0.0.1:9") -> str:
    return f"""
logging: {{level: warning}}
metrics: {{path: null, health_path: null}}
adapters:
  http: {{listen: "127.0.0.1:{port}", access_log: false}}
  sms: {{provider: twilio, webhook: {PATH}, account_id: {SID}, auth_token: {TOKEN}, numbers: ["+15005550006"],
         api_url: "{api_url}", rate_limit: 0, public_url: "http://bench.test"}}
routes:
  sms:
    - {{app: "{holder_module()}:noop"}}
"""


# -- servers (subprocess side) ---------------------------------------------------------------
async def serve_gateway(port: int) -> None:
    from gateway.logs import configure
    from gateway.server import Gateway

    configure("warning")
    await Gateway.from_text(gateway_yaml(port)).serve()


async def serve_aiohttp(port: int) -> None:
    """The same verification in a bare aiohttp handler: one HMAC-SHA1 over the URL and the sorted
    parameters (the gateway's first and, for a correct signature, only try), an empty TwiML answer."""
    import base64
    import hashlib
    import hmac

    from aiohttp import web

    key = TOKEN.encode()
    url = ("http://bench.test" + PATH).encode()
    twiml = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        tail = "".join(name + value for name in sorted(form) for value in sorted(set(form.getall(name))))
        mac = base64.b64encode(hmac.new(key, url + tail.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(mac, request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403)
        return web.Response(body=twiml, content_type="application/xml")

    app = web.Application()
    app.router.add_post(PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- the load generator ------------------------------------------------------------------------
def signed_requests(count: int, offset: int) -> list[tuple[bytes, str]]:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    out = []
    for i in range(offset, offset + count):
        params = {"MessageSid": f"SM{i:032x}", "AccountSid": SID, "From": "+447700900123", "To": "+15005550006",
                  "Body": "hello gateway", "NumMedia": "0", "NumSegments": "1"}
        out.append((urlencode(params).encode(), validator.compute_signature("http://bench.test" + PATH, params)))
    return out


async def load(port: int, requests: list[tuple[bytes, str]], connections: int, seconds: float) -> tuple[float, int, int]:
    """``(webhooks/s answered 200 after the warm-up, answers that were not 200, every answer)``."""
    import aiohttp

    url = f"http://127.0.0.1:{port}{PATH}"
    counts = [0, 0]
    feed = iter(requests)

    async def worker(session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            try:
                body, signature = next(feed)
            except StopIteration:
                return
            async with session.post(url, data=body, headers={
                "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature,
            }) as response:
                await response.read()
                counts[0 if response.status == 200 else 1] += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, time.monotonic() + 0.5) for _ in range(connections)))  # warm-up
        done_before = counts[0]
        start = time.monotonic()
        await asyncio.gather(*(worker(session, start + seconds) for _ in range(connections)))
        elapsed = time.monotonic() - start
    return (counts[0] - done_before) / elapsed, counts[1], counts[0] + counts[1]


@contextlib.contextmanager
def running(kind: str):
    port = common.free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([PY, os.path.abspath(__file__), "--serve", kind, "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        common.wait_listening(port, proc, kind, output)
        yield port, proc.pid
    finally:
        common.stop(proc)
        log.close()


# -- outbound ----------------------------------------------------------------------------------
async def outbound(sends: int) -> float:
    """Sends/s from the layer channel ``sms.send`` to a local Twilio REST stand-in (in-process)."""
    from aiohttp import web

    from gateway.layers.base import ChannelFull
    from gateway.logs import configure
    from gateway.server import Gateway

    configure("warning")
    received = [0]
    finished = asyncio.Event()

    async def messages(request: web.Request) -> web.Response:
        await request.read()
        received[0] += 1
        if received[0] == sends:
            finished.set()
        return web.json_response({"sid": f"SM{received[0]}", "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post(f"/2010-04-01/Accounts/{SID}/Messages.json", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cloud = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    async with Gateway.from_text(gateway_yaml(0, cloud)) as gw:
        start = time.monotonic()
        for i in range(sends):
            while True:  # the channel holds `capacity` messages: wait for room, as a producer would
                try:
                    await gw.layer.send("sms.send", {"type": "sms.send", "to": "+447700900123", "body": f"n{i}"})
                    break
                except ChannelFull:
                    await asyncio.sleep(0.005)
        await asyncio.wait_for(finished.wait(), 120)
        elapsed = time.monotonic() - start
    await runner.cleanup()
    return sends / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: unlike a rate, not skewed by other load on the machine."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--serve", choices=["gateway", "aiohttp"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_uvloop()
    if args.serve:
        asyncio.run(serve_gateway(args.port) if args.serve == "gateway" else serve_aiohttp(args.port))
        return
    per_cell = int(args.seconds * 20000) + 20000  # more than either server answers in a cell
    best: dict[str, tuple[float, int]] = {}
    cpu: dict[str, list[float]] = {"aiohttp": [], "gateway": []}  # server CPU µs per webhook, per cell
    offset = 0
    with running("aiohttp") as (bare_port, bare_pid), running("gateway") as (gateway_port, gateway_pid):
        servers = {"aiohttp": (bare_port, bare_pid), "gateway": (gateway_port, gateway_pid)}
        for round_ in range(args.rounds):
            for kind in ("aiohttp", "gateway"):
                port, pid = servers[kind]
                requests = signed_requests(per_cell, offset)
                offset += per_cell
                before = cpu_seconds(pid)
                rate, errors, answered = asyncio.run(load(port, requests, args.connections, args.seconds))
                used = cpu_seconds(pid) - before  # warm-up included, and so are its requests in `answered`
                cpu[kind].append(used * 1e6 / answered)
                print(f"  round {round_ + 1} {kind:>8}: {rate:8.1f} webhooks/s ({errors} not 200), {cpu[kind][-1]:.0f} µs CPU each",
                      file=sys.stderr, flush=True)
                if kind not in best or rate > best[kind][0]:
                    best[kind] = (rate, errors)
    sends_per_second = asyncio.run(outbound(args.sends))
    bare, gateway = best["aiohttp"][0], best["gateway"][0]
    print(f"\nSigned Twilio webhooks, {args.connections} keep-alive connections, {args.seconds:g} s per cell (best of {args.rounds} alternating rounds)")
    print(f"{'bare aiohttp + verification':>30} {'gateway':>10} {'ratio':>7}  {'errors':>6}")
    print(f"{bare:>30.1f} {gateway:>10.1f} {gateway / bare:>6.2f}x  {best['gateway'][1]:>6}")
    bare_cpu, gateway_cpu = min(cpu["aiohttp"]), min(cpu["gateway"])
    print(f"server CPU per webhook (least of the rounds): bare {bare_cpu:.0f} µs, gateway {gateway_cpu:.0f} µs, "
          f"ratio {bare_cpu / gateway_cpu:.2f}x (the same comparison, not skewed by other load on the machine)")
    print(f"\nOutbound: {args.sends} sends from the layer channel sms.send to a local Twilio REST stand-in: {sends_per_second:.1f} sends/s")


if __name__ == "__main__":
    main()
