"""Lifespan: once per distinct app, unsupported apps skipped, failures abort start-up, state shared."""

from __future__ import annotations

import pytest
from testapps import lifespans

from gateway import Gateway
from gateway.errors import StartupError

from .gateway_helpers import eventually, send_lines, syslog_yaml


@pytest.fixture(autouse=True)
def clear_events():
    lifespans.EVENTS.clear()


async def test_startup_once_per_app_and_state_copied_into_scopes():
    gw = Gateway.from_text(syslog_yaml(
        '    - {match: "^a", app: "testapps.lifespans:with_state"}\n'
        '    - {match: "^b", app: "testapps.lifespans:with_state"}\n'
        '    - {app: "testapps.lifespans:no_lifespan"}\n'
    ))
    async with gw:
        assert lifespans.EVENTS == ["startup"]  # two routes, one app: one lifespan
        await send_lines(gw.addresses["syslog"][0], b"a1\n", b"b2\n")
        await eventually(lambda: len(lifespans.EVENTS) == 3)
    assert lifespans.EVENTS == ["startup", "state:connected", "state:connected", "shutdown"]


async def test_startup_failure_aborts_with_the_apps_message():
    gw = Gateway.from_text(syslog_yaml('    - {app: "testapps.lifespans:failing_startup"}\n'))
    with pytest.raises(StartupError, match="failed to start: database unreachable"):
        await gw.start()
    assert not gw.adapters  # nothing left listening


async def test_mode_on_refuses_apps_without_lifespan():
    gw = Gateway.from_text(syslog_yaml('    - {app: "testapps.lifespans:no_lifespan"}\n', extra="lifespan: {mode: 'on'}\n"))
    with pytest.raises(StartupError, match="does not support lifespan"):
        await gw.start()


async def test_mode_off_sends_nothing():
    gw = Gateway.from_text(syslog_yaml('    - {app: "testapps.lifespans:with_state"}\n', extra="lifespan: {mode: 'off'}\n"))
    async with gw:
        assert lifespans.EVENTS == []
