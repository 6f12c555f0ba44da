"""Broker mode: authentication and ACL hooks (sync or async), `scope["user"]`, login throttling."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from mqtt_helpers import (
    APPS,
    HOOK_CALLS,
    DeviceUser,
    Peer,
    broker_yaml,
    connack,
    port_of,
    route,
    wait_for,
)
from structlog.testing import capture_logs

from gateway.server import Gateway

pytestmark = [pytest.mark.usefixtures("only_mqtt", "clean_apps"), pytest.mark.timeout(60)]

QUICK = "shutdown: {drain_timeout: 1}"


@pytest.fixture(autouse=True)
def _calls() -> Any:
    HOOK_CALLS.clear()
    yield
    HOOK_CALLS.clear()


async def peer(port: int, **kwargs: Any) -> Peer:
    return await asyncio.to_thread(Peer, port, **kwargs)


def counter(gw: Gateway, name: str, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{inner}}} "
    for line in gw.metrics.render().decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def test_a_sync_auth_app_runs_in_a_thread_and_its_user_reaches_the_scope() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        scopes.append(scope)

    APPS["d"] = app
    yaml = broker_yaml(route("devices/#", "d"), extra=QUICK, users="{admin: {password: pw}}", auth_app='"mqtt_helpers:sync_device_user"')
    async with Gateway.from_text(yaml) as gw:
        port = port_of(gw)
        assert (await asyncio.to_thread(connack, port, "device-7", "wrong")) != 0
        device = await peer(port, username="device-7", password="token-7")
        admin = await peer(port, username="admin", password="pw")
        try:
            await asyncio.to_thread(device.publish, "devices/device-7/t", b"1", 1)
            await asyncio.to_thread(admin.publish, "devices/admin/t", b"2", 1)
            await wait_for(lambda: len(scopes) == 2, what="both routed")
        finally:
            device.close()
            admin.close()
    by_name = {s["username"]: s for s in scopes}
    user = by_name["device-7"]["user"]
    assert isinstance(user, DeviceUser) and user.name == "device-7"
    assert "user" not in by_name["admin"]  # a `users:` login has no user object; `username` says who
    assert all(thread != threading.get_ident() for _, _, thread in HOOK_CALLS)  # off the event loop


@pytest.mark.parametrize("hook", ["sync_topic_acl", "async_topic_acl"])
async def test_acl_app_decides_publish_and_subscribe_and_is_cached_per_connection(hook: str) -> None:
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["topic"])

    APPS["all"] = app
    yaml = broker_yaml(route("#", "all"), extra=QUICK, auth_app='"mqtt_helpers:sync_device_user"', acl_app=f'"mqtt_helpers:{hook}"')
    with capture_logs() as logs:
        async with Gateway.from_text(yaml) as gw:
            device = await peer(port_of(gw), client_id="d7", username="device-7", password="token-7")
            try:
                assert [c.value for c in await asyncio.to_thread(device.subscribe, "cmd/device-7", 1)] == [1]
                assert (await asyncio.to_thread(device.subscribe, "cmd/device-8", 1))[0].is_failure  # SUBACK 0x80
                for _ in range(3):
                    await asyncio.to_thread(device.publish, "devices/device-8/t", b"no", 1)  # acknowledged, dropped
                    await asyncio.to_thread(device.publish, "devices/device-7/t", b"yes", 1)
                await wait_for(lambda: len(got) == 3, what="allowed messages")
            finally:
                device.close()
            denied = counter(gw, "gateway_mqtt_messages_total", outcome="denied")
    assert got == ["devices/device-7/t"] * 3
    assert denied == 3
    acl = [args for kind, args, _ in HOOK_CALLS if kind == "acl"]
    assert isinstance(acl[0][0], DeviceUser)
    publish_checks = sorted(topic for _, topic, action in acl if action == "publish")
    assert publish_checks == ["devices/device-7/t", "devices/device-8/t"]  # once per topic and connection
    logged = [e for e in logs if e["event"] == "mqtt.publish_denied"]
    assert len(logged) == 3 and logged[0]["topic"] == "devices/device-8/t"


async def test_failed_logins_are_logged_and_throttled_per_address() -> None:
    yaml = broker_yaml(route("x", "x"), extra=QUICK, auth_app='"mqtt_helpers:sync_device_user"',
                       login_throttle="{max_failures: 5, window: 60}")
    with capture_logs() as logs:
        async with Gateway.from_text(yaml) as gw:
            port = port_of(gw)
            codes = [await asyncio.to_thread(connack, port, "device-3", f"guess-{i}") for i in range(30)]
            # the right password is refused too while the address is throttled, without asking the hook
            throttled_ok = await asyncio.to_thread(connack, port, "device-3", "token-3")
            hook_calls = len(HOOK_CALLS)
            bad = counter(gw, "gateway_auth_failures_total", adapter="mqtt", reason="invalid")
            throttled = counter(gw, "gateway_auth_failures_total", adapter="mqtt", reason="throttled")
    assert all(c != 0 for c in codes) and throttled_ok != 0
    assert hook_calls == 5
    assert (bad, throttled) == (5, 26)
    failed = [e for e in logs if e["event"] == "mqtt.auth_failed"]
    assert len(failed) == 31
    assert all(e["client"] == "127.0.0.1" and e["username"] == "device-3" for e in failed)
    assert [e["reason"] for e in failed[:6]] == ["invalid"] * 5 + ["throttled"]
    assert not any("guess" in str(e) or "token-3" in str(e) for e in logs)  # never the password
