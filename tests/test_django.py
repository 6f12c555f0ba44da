"""A real Django project (tests/djangoproject: the Channels tutorial's chat, MQTT readings, e-mail
tickets) behind `gateway run`, driven with real clients: httpx, `websockets`, paho, smtplib."""

from __future__ import annotations

import asyncio
import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import websockets

from .django_helpers import PASSWORD, PROJECT, GatewayProcess, migrated, project_env, rows, run_check
from .email_helpers import Sink
from .mqtt_helpers import Peer


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return migrated(tmp_path_factory.mktemp("django") / "db.sqlite3")


@pytest.fixture(scope="module")
def sink_port():
    """An SMTP sink the project's relay points at, in a thread of its own (module-scoped)."""
    import threading

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


@pytest.fixture(scope="module")
def sms_cloud():
    """A stand-in for the SMS provider's REST API (the generic provider's wire format)."""
    import http.server
    import threading

    posts: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the stdlib's name
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            answer = json.dumps({"id": f"out-{len(posts)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.posts = posts
    yield server
    server.shutdown()
    server.server_close()


SMS_SECRET = "texts-secret"


@pytest.fixture(scope="module")
def project(db, sink_port, sms_cloud):
    """The project's own gateway.yaml, DEBUG on, in-memory layer from CHANNEL_LAYERS."""
    gw = GatewayProcess("gateway.yaml", project_env(
        db, RELAY_PORT=str(sink_port.port), SMS_SECRET=SMS_SECRET,
        SMS_API_URL=f"http://127.0.0.1:{sms_cloud.server_address[1]}"))
    addresses = gw.started()
    gw.http = addresses["http"][0]
    gw.mqtt = int(addresses["mqtt"][0].rsplit(":", 1)[1])
    gw.smtp = addresses["email"][0]
    yield gw
    assert gw.stop() == 0


def origin(gw) -> str:
    return f"http://{gw.http}"


async def login(client: httpx.AsyncClient, username: str = "alice") -> None:
    page = await client.get("/admin/login/")
    token = client.cookies["csrftoken"]
    assert page.status_code == 200
    done = await client.post("/admin/login/?next=/admin/", data={
        "username": username, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/admin/"})
    assert done.status_code == 302, done.text
    assert "sessionid" in client.cookies


# -- 1. set-up -----------------------------------------------------------------------------------
def test_django_is_set_up_before_the_first_app_import_whatever_the_routes(write, db):
    only_consumer = write("ws.yaml", f"""\
django: {{settings: mysite.settings}}
python_path: ["{PROJECT}"]
adapters: {{http: {{listen: "127.0.0.1:0"}}}}
routes:
  websocket:
    - {{path: "/ws/chat/<room_name>/", app: "chat.consumers:ChatConsumer"}}
""")
    done = run_check(only_consumer, project_env(db))
    assert done.returncode == 0, done.stderr
    # without the key, DJANGO_SETTINGS_MODULE from the environment does the same
    no_key = write("env.yaml", only_consumer.read_text().replace("django: {settings: mysite.settings}\n", ""))
    done = run_check(no_key, {**project_env(db), "DJANGO_SETTINGS_MODULE": "mysite.settings"})
    assert done.returncode == 0, done.stderr


def test_settings_that_do_not_import_are_one_error_naming_file_line_and_key(write, db):
    bad = write("bad.yaml", "adapters: {http: {listen: '127.0.0.1:0'}}\ndjango:\n  settings: mysite.nosuchsettings\n")
    done = run_check(bad, project_env(db))
    assert done.returncode == 1
    assert f"{bad}:3" in done.stderr and "django.settings" in done.stderr
    assert "cannot import the settings module 'mysite.nosuchsettings'" in done.stderr
    assert "Traceback" not in done.stderr
    write("broken_settings.py", "DEBUG = True\nraise RuntimeError('settings exploded')\n")
    raising = write("raising.yaml", "adapters: {http: {listen: '127.0.0.1:0'}}\ndjango: {settings: broken_settings}\n")
    done = run_check(raising, {**project_env(db), "PYTHONPATH": str(raising.parent)})
    assert done.returncode == 1 and "settings exploded" in done.stderr and f"{raising}:2" in done.stderr


def test_gateway_command_imports_from_the_working_directory_like_python_m(db):
    import shutil
    import subprocess

    env = {k: v for k, v in project_env(db).items() if k != "PYTHONPATH"}
    cli = shutil.which("gateway", path=str(Path(__import__("sys").executable).parent))
    assert cli is not None
    done = subprocess.run([cli, "check", "gateway.yaml"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- 2, 3. app: django and static files (DEBUG) -------------------------------------------------
async def test_app_django_serves_views_and_the_admin_with_its_stylesheet(project):
    async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
        room = await client.get("/chat/lobby/")
        assert room.status_code == 200 and "Room lobby" in room.text
        page = await client.get("/admin/login/")
        assert page.status_code == 200
        css = await client.get("/static/admin/css/base.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert b"body" in css.content
        assert (await client.get("/static/admin/css/nothere.css")).status_code == 404


# -- 4. one channel layer ------------------------------------------------------------------------
async def test_a_sync_view_reaches_websocket_clients_through_channels_get_channel_layer(project):
    async with websockets.connect(f"ws://{project.http}/ws/chat/news/", origin=origin(project)) as ws:
        assert json.loads(await ws.recv()) == {"hello": None}
        async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
            assert (await client.get("/notify/news/", params={"text": "from a view"})).text == "sent"
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "from a view"}


async def test_a_sync_view_publishes_to_a_device_through_the_outbound_channel(project):
    device = await asyncio.to_thread(Peer, project.mqtt, "thermostat")
    try:
        await asyncio.to_thread(device.subscribe, "devices/thermostat/command")
        async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
            assert (await client.get("/device/thermostat/", params={"cmd": "heat"})).text == "queued"
        message = await device.get(10)
        assert message.topic == "devices/thermostat/command" and message.payload == b"heat"
    finally:
        device.close()


async def test_a_sync_view_sends_mail_through_the_outbound_channel(project, sink_port):
    async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
        assert (await client.get("/mail/", params={"subject": "weekly report"})).text == "queued"
    deadline = asyncio.get_running_loop().time() + 20
    while not any(b"Subject: weekly report" in raw for _, _, raw in sink_port.messages):
        assert asyncio.get_running_loop().time() < deadline, "the view's mail never reached the relay"
        await asyncio.sleep(0.1)
    _, to, raw = next(m for m in sink_port.messages if b"Subject: weekly report" in m[2])
    assert to == ["team@example.net"] and b"sent from a view" in raw


# -- 5. the tutorial project: sessions, scope["user"], ORM writes, the project's own asgi.py ------
async def test_logged_in_user_chats_and_messages_are_saved(project, db):
    async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
        await login(client)
        cookie = f"sessionid={client.cookies['sessionid']}"
    headers = {"Cookie": cookie}
    async with websockets.connect(f"ws://{project.http}/ws/chat/saved/", origin=origin(project),
                                  additional_headers=headers) as alice, \
            websockets.connect(f"ws://{project.http}/ws/chat/saved/", origin=origin(project)) as anonymous:
        assert json.loads(await alice.recv()) == {"hello": "alice"}
        assert json.loads(await anonymous.recv()) == {"hello": None}
        await alice.send(json.dumps({"message": "persisted"}))
        assert json.loads(await asyncio.wait_for(anonymous.recv(), 10)) == {"message": "persisted"}
        assert json.loads(await asyncio.wait_for(alice.recv(), 10)) == {"message": "persisted"}
    saved = rows(db, "select m.text, u.username from chat_message m join auth_user u on u.id = m.author_id where room='saved'")
    assert saved == [("persisted", "alice")]


async def test_the_projects_own_protocol_type_router_as_the_single_app(write, db):
    config = write("whole.yaml", """\
django: {settings: mysite.settings}
adapters: {http: {listen: "127.0.0.1:0"}}
routes:
  http: [{app: "mysite.asgi:application"}]
  websocket: [{app: "mysite.asgi:application"}]
""")
    gw = GatewayProcess(config, project_env(db))
    try:
        address = gw.started()["http"][0]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/chat/whole/")).status_code == 200
        async with websockets.connect(f"ws://{address}/ws/chat/whole/", origin=f"http://{address}") as ws:
            assert json.loads(await ws.recv()) == {"hello": None}
            await ws.send(json.dumps({"message": "through asgi.py"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "through asgi.py"}
        with pytest.raises(websockets.InvalidStatus) as refused:  # the project's AllowedHostsOriginValidator
            async with websockets.connect(f"ws://{address}/ws/chat/whole/", origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
    finally:
        assert gw.stop() == 0


# -- 6. Origin checks ----------------------------------------------------------------------------
async def test_websocket_routes_check_origin_against_allowed_hosts(project):
    for bad in ("http://evil.example", None, "null", "http://127.0.0.1.evil.example"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{project.http}/ws/chat/x/", origin=bad):
                pass
        assert refused.value.response.status_code == 403
    record = project.wait_for("websocket.origin_refused", origin="http://evil.example")
    assert record["allowed"].startswith("ALLOWED_HOSTS")
    async with websockets.connect(f"ws://{project.http}/ws/chat/x/", origin="http://localhost:1234") as ws:
        assert json.loads(await ws.recv()) == {"hello": None}


async def test_origins_option_overrides_and_star_opts_out(write, db):
    config = write("origins.yaml", """\
django: {settings: mysite.settings}
adapters: {http: {listen: "127.0.0.1:0"}}
routes:
  websocket:
    - {path: "/ws/chat/<room_name>/", app: "chat.consumers:ChatConsumer", origins: [".example.com", "https://app.test:8443"]}
    - {path: "/open/<room_name>/", app: "chat.consumers:ChatConsumer", origins: "*"}
""")
    gw = GatewayProcess(config, project_env(db))
    try:
        address = gw.started()["http"][0]
        for good in ("https://example.com", "http://chat.example.com", "https://app.test:8443"):
            async with websockets.connect(f"ws://{address}/ws/chat/o/", origin=good) as ws:
                assert json.loads(await ws.recv()) == {"hello": None}
        for bad in ("http://127.0.0.1", "http://app.test:8443", "https://app.test", "http://example.com.evil"):
            with pytest.raises(websockets.InvalidStatus):
                async with websockets.connect(f"ws://{address}/ws/chat/o/", origin=bad):
                    pass
        async with websockets.connect(f"ws://{address}/open/o/") as ws:  # no Origin at all
            assert json.loads(await ws.recv()) == {"hello": None}
    finally:
        assert gw.stop() == 0


def test_origins_on_an_http_route_is_refused(write, db):
    config = write("bad-origins.yaml", "adapters: {http: {listen: '127.0.0.1:0'}}\nroutes:\n  http:\n"
                                      "    - {app: 'testapps.basic:hello', origins: '*'}\n")
    done = run_check(config, {**project_env(db), "PYTHONPATH": str(Path(__file__).parent)})
    assert done.returncode == 1 and "checks WebSocket handshakes" in done.stderr and f"{config}:4" in done.stderr


# -- 7. sync consumers for MQTT and e-mail -------------------------------------------------------
async def test_an_mqtt_reading_is_saved_with_the_orm_and_broadcast_to_a_websocket_group(project, db):
    async with websockets.connect(f"ws://{project.http}/ws/chat/sensors/", origin=origin(project)) as ws:
        await ws.recv()
        device = await asyncio.to_thread(Peer, project.mqtt, "kitchen-sensor")
        try:
            await asyncio.to_thread(device.publish, "sensors/kitchen/temperature", b"21.5", 1)
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "kitchen: 21.5"}
            await asyncio.to_thread(device.publish, "async/hall/temperature", b"19", 1)
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "async 19"}
        finally:
            device.close()
    assert ("kitchen", 21.5) in rows(db, "select device, celsius from sensors_reading")
    assert ("hall", 19.0) in rows(db, "select device, celsius from sensors_reading")


async def test_a_sync_consumer_that_blocks_past_its_timeout_is_not_acknowledged(project, db):
    device = await asyncio.to_thread(Peer, project.mqtt, "slowpoke")
    try:
        await asyncio.to_thread(device.client.publish, "slow/one", b"2.5", 1)
        record = project.wait_for("sync.still_running", timeout=30)
        assert record["function"] == "SlowConsumer.mqtt_message"
        project.wait_for("instance.finished", outcome="timeout", scope_type="mqtt", timeout=30)
    finally:
        device.close()
    # the thread is not leaked: it finishes its work and the pool slot is free again
    deadline = asyncio.get_running_loop().time() + 20
    while not rows(db, "select 1 from sensors_reading where device='slow'"):
        assert asyncio.get_running_loop().time() < deadline, "the blocked handler never returned"
        await asyncio.sleep(0.2)


async def test_an_email_becomes_a_ticket_and_gets_a_reply(project, db, sink_port):
    msg = EmailMessage()
    msg["From"] = "carol@customer.test"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Printer on fire"
    msg["Message-ID"] = "<fire-1@customer.test>"
    msg.set_content("It is still burning.")
    host, port = project.smtp.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        refused = smtp.send_message(msg)
    assert refused == {}
    tickets = rows(db, "select id, sender, subject, body from tickets_ticket where subject='Printer on fire'")
    assert len(tickets) == 1 and tickets[0][1] == "carol@customer.test" and "burning" in tickets[0][3]
    deadline = asyncio.get_running_loop().time() + 20
    while not any("carol@customer.test" in to for _, to, _ in sink_port.messages):
        assert asyncio.get_running_loop().time() < deadline, "no reply reached the relay"
        await asyncio.sleep(0.1)
    reply = next(raw for _, to, raw in sink_port.messages if "carol@customer.test" in to)
    assert f"Your ticket number is {tickets[0][0]}.".encode() in reply and b"In-Reply-To: <fire-1@customer.test>" in reply


# -- 3. static files in production: STATIC_ROOT through ServeStatic ----------------------------
async def test_production_static_files_cache_headers_304_range_and_gzip(write, tmp_path, db):
    from .django_helpers import manage

    root = tmp_path / "static"
    env = {"DJANGO_DEBUG": "0", "DJANGO_STATIC_ROOT": str(root), "DJANGO_MANIFEST": "1"}
    manage(db, "collectstatic", "--noinput", "-v0", **env)
    manifest = json.loads((root / "staticfiles.json").read_text())["paths"]
    hashed = manifest["admin/css/base.css"]
    assert hashed != "admin/css/base.css" and (root / (hashed + ".gz")).exists()
    gw = GatewayProcess("gateway.yaml", project_env(db, **env))
    try:
        address = gw.started()["http"][0]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            plain = await client.get("/static/admin/css/base.css", headers={"Accept-Encoding": "identity"})
            assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/css")
            assert "immutable" not in plain.headers.get("cache-control", "")
            versioned = await client.get(f"/static/{hashed}", headers={"Accept-Encoding": "identity"})
            assert versioned.status_code == 200 and "immutable" in versioned.headers["cache-control"]
            assert versioned.content == (root / hashed).read_bytes()
            again = await client.get(f"/static/{hashed}", headers={"If-None-Match": versioned.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
            part = await client.get(f"/static/{hashed}", headers={"Range": "bytes=0-9", "Accept-Encoding": "identity"})
            assert part.status_code == 206 and part.content == versioned.content[:10]
            gz = await client.get(f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
            assert gz.headers["content-encoding"] == "gzip" and gz.content == versioned.content  # httpx decodes it
            assert (await client.get("/admin/login/")).status_code == 200  # Django still behind it
            assert (await client.get("/static/admin/css/nothere.css")).status_code == 404
    finally:
        assert gw.stop() == 0


async def test_static_off_leaves_static_urls_to_django(write, tmp_path, db):
    config = write("nostatic.yaml", f"""\
django: {{settings: mysite.settings, static: "off"}}
python_path: ["{PROJECT}"]
adapters: {{http: {{listen: "127.0.0.1:0"}}}}
routes:
  http: [{{app: django}}]
""")
    gw = GatewayProcess(config, project_env(db))
    try:
        address = gw.started()["http"][0]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/static/admin/css/base.css")).status_code == 404
            assert (await client.get("/chat/a/")).status_code == 200
    finally:
        assert gw.stop() == 0


# -- 4. the layer comes from CHANNEL_LAYERS; conflicts and unknown backends are errors ---------
def test_unknown_channel_layers_backend_is_an_error_naming_it(write, db):
    layers = json.dumps({"default": {"BACKEND": "myproject.layers.CustomLayer"}})
    done = run_check("gateway.yaml", project_env(db, DJANGO_CHANNEL_LAYERS=layers))
    assert done.returncode == 1
    assert "'myproject.layers.CustomLayer'" in done.stderr and "channels_redis.core.RedisChannelLayer" in done.stderr
    assert "gateway.yaml:2" in done.stderr


def test_layer_key_and_channel_layers_that_disagree_are_an_error_naming_both(write, db):
    config = write("both.yaml", f"""\
django: {{settings: mysite.settings}}
python_path: ["{PROJECT}"]
layer: {{backend: redis, url: "redis://127.0.0.1:1/0"}}
adapters: {{http: {{listen: "127.0.0.1:0"}}}}
""")
    done = run_check(config, project_env(db))
    assert done.returncode == 1
    assert f"{config}:3" in done.stderr and "CHANNEL_LAYERS['default'] (memory)" in done.stderr
    assert "redis://127.0.0.1:1/0" in done.stderr


@pytest.fixture(scope="module")
def redis_url():
    from test_layer_redis_helpers import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()


async def test_channels_redis_settings_give_one_layer_inside_and_outside_the_gateway(db, redis_url):
    layers = json.dumps({"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                     "CONFIG": {"hosts": [redis_url], "prefix": "tutorial"}}})
    env = project_env(db, DJANGO_CHANNEL_LAYERS=layers)
    gw = GatewayProcess("gateway.yaml", env)
    try:
        address = gw.started()["http"][0]
        layer = gw.wait_for("gateway.started")["layer"]
        assert layer.startswith("RedisChannelLayer(") and "tutorial" in layer
        async with websockets.connect(f"ws://{address}/ws/chat/ops/", origin=f"http://{address}") as ws:
            await ws.recv()
            # a management command in another process, using Channels' API on the same settings
            import subprocess
            import sys

            script = ("from asgiref.sync import async_to_sync; from channels.layers import get_channel_layer;"
                      "async_to_sync(get_channel_layer().group_send)('chat_ops', {'type': 'chat.message', 'message': 'from cron'})")
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "manage.py", "shell", "-c", script],
                                           cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "from cron"}
    finally:
        assert gw.stop() == 0


# -- 5. in browsers: the tutorial's chat between two browsers, the admin styled -----------------
async def test_chat_between_two_browsers_and_a_styled_admin(project):
    from playwright.async_api import async_playwright

    from .django_helpers import CHROMIUM, CHROMIUM_ARGS

    base = f"http://{project.http}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            one, two = await browser.new_context(), await browser.new_context()  # two browsers: two cookie jars
            alice, bob = await one.new_page(), await two.new_page()
            for page in (alice, bob):
                await page.goto(f"{base}/chat/tea/")
                await page.wait_for_function("document.querySelector('#status').textContent === 'open'", timeout=15_000)
            await alice.fill("#chat-message-input", "milk first?")
            await alice.click("#chat-message-submit")
            for page in (alice, bob):
                await page.wait_for_function(
                    "[...document.querySelectorAll('#chat-log li')].some(li => li.textContent === 'milk first?')", timeout=15_000)
            # the admin, logged in through its form, styled by its own stylesheet
            css: list[int] = []
            admin = await one.new_page()
            admin.on("response", lambda r: css.append(r.status) if r.url.endswith("/static/admin/css/base.css") else None)
            await admin.goto(f"{base}/admin/login/")
            await admin.fill("#id_username", "alice")
            await admin.fill("#id_password", PASSWORD)
            await admin.click("input[type=submit]")
            await admin.wait_for_url(f"{base}/admin/", timeout=15_000)
            assert css and css[0] == 200
            # a rule of admin/css/base.css applied: the header is not the browser's default
            background = await admin.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor")
            assert background not in ("rgba(0, 0, 0, 0)", "transparent")
        finally:
            await browser.close()


# -- 9. manage.py rungateway, gateway run --reload, Django's log lines once ---------------------
def test_manage_py_rungateway_serves_the_project_and_logs_each_line_once(db):
    import subprocess
    import sys
    import urllib.request

    env = project_env(db, DJANGO_DEBUG="1")  # DEBUG: Django's console handler is active, and the autoreloader runs
    proc = subprocess.Popen([sys.executable, "manage.py", "rungateway", "--log-format", "json"], cwd=PROJECT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = None
        lines: list[str] = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if '"gateway.started"' in line:
                address = json.loads(line)["addresses"]["http"][0]
                break
        assert address, "".join(lines)
        with urllib.request.urlopen(f"http://{address}/chat/x/", timeout=10) as page:
            assert page.status == 200
        try:
            urllib.request.urlopen(f"http://{address}/nothere/", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines.extend(out.splitlines(keepends=True))
    not_found = [line for line in lines if "Not Found: /nothere/" in line]
    assert len(not_found) == 1, "".join(lines)  # Django's warning, once, as a JSON line of the gateway's
    assert json.loads(not_found[0])["logger"] == "django.request"
    assert proc.returncode == 0


async def test_gateway_run_reload_restarts_on_a_code_change(write, tmp_path, db):
    app = write("reloadapp.py", "async def app(scope, receive, send):\n"
                                "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
                                "    await send({'type': 'http.response.body', 'body': b'one'})\n")
    config = write("reload.yaml", "adapters: {http: {listen: '127.0.0.1:0'}}\nroutes:\n  http: [{app: 'reloadapp:app'}]\n")
    gw = GatewayProcess(config, project_env(db), args=("--reload",))
    try:
        first = gw.started()["http"][0]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{first}/")).text == "one"
            app.write_text(app.read_text().replace("b'one'", "b'two'"))
            deadline = asyncio.get_running_loop().time() + 30
            while gw.count("gateway.started") < 2:
                assert asyncio.get_running_loop().time() < deadline, "".join(gw.lines)
                await asyncio.sleep(0.1)
            second = [r for r in gw.records if r.get("event") == "gateway.started"][1]["addresses"]["http"][0]
            assert (await client.get(f"http://{second}/")).text == "two"
    finally:
        gw.stop()


# -- bad input -----------------------------------------------------------------------------------
def test_app_django_without_django_installed_says_what_to_install(write, db):
    import subprocess
    import sys

    config = write("nodjango.yaml", "adapters: {http: {listen: '127.0.0.1:0'}}\nroutes:\n  http: [{app: django}]\n")
    # a Python where `import django` fails, as on a machine without the extra
    script = "import sys; sys.modules['django'] = None; from gateway.cli import main; sys.exit(main(['check', sys.argv[1]]))"
    env = {k: v for k, v in project_env(db).items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", script, str(config)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'asgi-gateway[django]'" in done.stderr and f"{config}:3" in done.stderr


async def test_a_sync_consumer_that_raises_leaves_the_message_unacknowledged(project, db):
    before = project.count("instance.finished")
    device = await asyncio.to_thread(Peer, project.mqtt, "broken-sensor")
    try:
        await asyncio.to_thread(device.client.publish, "sensors/broken/temperature", b"boom", 1)
        record = project.wait_for("instance.finished", outcome="failed", scope_type="mqtt", timeout=30)
        assert "a reading the app refuses" in record["error"]
    finally:
        device.close()
    assert project.count("instance.finished") > before
    assert rows(db, "select 1 from sensors_reading where device='broken'") == []


async def test_a_text_message_becomes_a_row_and_gets_a_reply(project, db, sms_cloud):
    import hashlib
    import hmac
    import time

    body = json.dumps({"id": "in-1", "from": "+447700900123", "to": "+15005550006", "body": "is it on?"}).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(SMS_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(base_url=f"http://{project.http}") as client:
        forged = await client.post("/sms/in", content=body, headers={
            "content-type": "application/json", "x-timestamp": stamp, "x-signature": "0" * 64})
        assert forged.status_code == 403
        done = await client.post("/sms/in", content=body, headers={
            "content-type": "application/json", "x-timestamp": stamp, "x-signature": signature})
        assert done.status_code == 200, done.text
    texts = rows(db, "select id, sender, body from tickets_text")
    assert [(sender, text) for _, sender, text in texts] == [("+447700900123", "is it on?")]
    deadline = asyncio.get_running_loop().time() + 20
    while not sms_cloud.posts:
        assert asyncio.get_running_loop().time() < deadline, "no reply reached the provider"
        await asyncio.sleep(0.1)
    assert sms_cloud.posts[0]["to"] == "+447700900123" and sms_cloud.posts[0]["body"] == f"Got it: text {texts[0][0]}."


# -- 8. Django users for SMTP AUTH and MQTT CONNECT ---------------------------------------------
@pytest.fixture(scope="module")
def authed(db, tmp_path_factory, sink_port):
    """The project with logins required on SMTP and MQTT, checked against Django's users."""
    from tls_helpers import self_signed

    folder = tmp_path_factory.mktemp("authed")
    cert, key = self_signed(folder, "gateway.test")
    config = folder / "authed.yaml"
    config.write_text(f"""\
django: {{settings: mysite.settings}}
python_path: ["{PROJECT}"]
adapters:
  mqtt:
    mode: broker
    listen: ["127.0.0.1:0"]
    allow_anonymous: false
    auth_app: gateway.django.auth:mqtt_login
    acl_app: gateway.django.auth:mqtt_acl
  email:
    smtp:
      listen: "127.0.0.1:0"
      domains: [example.com]
      tls_cert: "{cert}"
      tls_key: "{key}"
      auth_hook: gateway.django.auth:smtp_login
      auth_required: true
    relay: {{host: 127.0.0.1, port: {sink_port.port}, default_from: support@example.com, retries: 0}}
routes:
  mqtt:
    - {{topic: "sensors/+device/temperature", app: sensors.consumers:ReadingConsumer}}
  email:
    - {{to: "support@example.com", app: tickets.consumers:TicketConsumer}}
""")
    gw = GatewayProcess(config, project_env(db))
    addresses = gw.started()
    gw.smtp = addresses["email"][0]
    gw.mqtt = int(addresses["mqtt"][0].rsplit(":", 1)[1])
    yield gw
    assert gw.stop() == 0


def test_smtp_auth_against_django_users_sets_scope_user(authed, db):
    import ssl

    host, port = authed.smtp.rsplit(":", 1)
    context = ssl._create_unverified_context()  # the test's self-signed certificate
    msg = EmailMessage()
    msg["From"] = "bob@example.com"
    msg["To"] = "support@example.com"
    msg["Subject"] = "sent by a Django user"
    msg.set_content("hello")
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            smtp.login("bob", "not-his-password")
        assert wrong.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPSenderRefused):  # auth_required: no mail before a login
            smtp.send_message(msg)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login("bob", PASSWORD)
        assert smtp.send_message(msg) == {}
    assert rows(db, "select user from tickets_ticket where subject='sent by a Django user'") == [("bob",)]
    failed = authed.wait_for("smtp.auth_failed")
    assert failed["username"] == "bob" and PASSWORD not in json.dumps(failed) and "not-his-password" not in json.dumps(failed)


async def test_mqtt_connect_and_topic_rights_come_from_django_users_and_permissions(authed, db):
    from .django_helpers import manage
    from .mqtt_helpers import connack

    assert str(await asyncio.to_thread(connack, authed.mqtt, "bob", "wrong")) != "Success"
    assert str(await asyncio.to_thread(connack, authed.mqtt)) != "Success"  # allow_anonymous: false
    failed = authed.wait_for("mqtt.auth_failed", username="bob")
    assert "wrong" not in json.dumps(failed)

    async def publish_as(user: str, device: str) -> None:
        peer = await asyncio.to_thread(Peer, authed.mqtt, f"{user}-{device}", username=user, password=PASSWORD)
        try:
            await asyncio.to_thread(peer.publish, f"sensors/{device}/temperature", b"20", 1)
        finally:
            peer.close()

    await publish_as("bob", "bobs-box")  # a Django user without the permission: acknowledged and dropped
    authed.wait_for("mqtt.publish_denied")
    await publish_as("alice", "alices-box")  # a superuser
    manage(db, "shell", "-c", "from django.contrib.auth.models import User, Permission;"
           "User.objects.get(username='bob').user_permissions.add(Permission.objects.get(codename='mqtt_publish'))")
    await publish_as("bob", "bobs-other-box")  # granted in the meantime: a new connection asks again
    deadline = asyncio.get_running_loop().time() + 20
    while len(rows(db, "select 1 from sensors_reading where device in ('alices-box', 'bobs-other-box')")) < 2:
        assert asyncio.get_running_loop().time() < deadline, authed.lines[-20:]
        await asyncio.sleep(0.1)
    assert rows(db, "select device, user from sensors_reading where device like '%box' order by device") == [
        ("alices-box", "alice"), ("bobs-other-box", "bob")]


async def test_handler_wsgi_serves_the_same_project(write, db):
    config = write("wsgi.yaml", f"""\
django: {{settings: mysite.settings, handler: wsgi}}
python_path: ["{PROJECT}"]
adapters: {{http: {{listen: "127.0.0.1:0"}}}}
routes:
  http: [{{app: django}}]
  websocket:
    - {{path: "/ws/chat/<room_name>/", app: "chat.consumers:ChatConsumer", middleware: ["channels.auth:AuthMiddlewareStack"]}}
""")
    gw = GatewayProcess(config, project_env(db))
    try:
        address = gw.started()["http"][0]
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            await login(client, "alice")  # a POST with a CSRF token, a session, a redirect
            assert (await client.get("/whoami/")).json()["user"] == "alice"
            assert (await client.get("/static/admin/css/base.css")).status_code == 200
            cookie = f"sessionid={client.cookies['sessionid']}"
        async with websockets.connect(f"ws://{address}/ws/chat/w/", origin=f"http://{address}",
                                      additional_headers={"Cookie": cookie}) as ws:
            assert json.loads(await ws.recv()) == {"hello": "alice"}
            async with httpx.AsyncClient(base_url=f"http://{address}") as client:  # a sync view's group_send
                assert (await client.get("/notify/w/", params={"text": "via wsgi"})).text == "sent"
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"message": "via wsgi"}
    finally:
        assert gw.stop() == 0
