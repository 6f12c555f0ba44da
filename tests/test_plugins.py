"""Adapter plugins: discovery, contract checks, the example syslog plugin end to end."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from testapps import basic

from gateway import Gateway
from gateway.errors import ConfigError, PluginError, StartupError
from gateway.plugins import discover

from .gateway_helpers import eventually, send_lines, syslog_yaml

GOOD_PLUGIN = '''
from gateway.plugins import Adapter
from gateway.schema import RouteConfig

class EchoAdapter(Adapter):
    name = "echo"
    scope_types = ("echo",)
    route_models = {"echo": RouteConfig}
    async def start(self): pass
    async def stop(self, drain): pass
'''


def test_builtin_adapters_register_through_entry_points():
    found = discover([])
    assert "http" in found
    assert found["http"][1].startswith("entry point 'http'")


def test_discovery_from_a_plugin_folder(tmp_path):
    (tmp_path / "echo.py").write_text(GOOD_PLUGIN)
    (tmp_path / "test_echo.py").write_text("raise RuntimeError('test files are not plugins')")
    found = discover([tmp_path])
    assert found["echo"][1] == str(tmp_path / "echo.py")
    assert found["echo"][0].__module__ == "asgi_gateway_plugins.echo"


def test_duplicate_adapter_names(tmp_path):
    (tmp_path / "a.py").write_text(GOOD_PLUGIN)
    (tmp_path / "b.py").write_text(GOOD_PLUGIN)
    with pytest.raises(PluginError, match="two adapters are named 'echo'"):
        discover([tmp_path])


def test_duplicate_of_a_builtin(tmp_path):
    (tmp_path / "myhttp.py").write_text(GOOD_PLUGIN.replace('"echo"', '"http"', 1))
    with pytest.raises(PluginError, match="two adapters are named 'http': entry point"):
        discover([tmp_path])


def test_plugin_that_fails_to_import(tmp_path):
    (tmp_path / "bad.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match=r"bad.py failed to import: ModuleNotFoundError"):
        discover([tmp_path])


@pytest.mark.parametrize(
    "body, problem",
    [
        (GOOD_PLUGIN.replace("    async def stop(self, drain): pass\n", ""), "does not implement stop"),
        (GOOD_PLUGIN.replace('name = "echo"', 'name = "no good"'), "'name' must be an identifier-like string"),
        (GOOD_PLUGIN.replace('route_models = {"echo": RouteConfig}', "route_models = {}"), "scope type 'echo' has no route model"),
        (GOOD_PLUGIN.replace('scope_types = ("echo",)', 'scope_types = ("echo",)\n    outbound_channels = ("echo.out",)'),
         "does not override handle_outbound"),
        (GOOD_PLUGIN.replace('scope_types = ("echo",)', 'scope_types = ("echo",)\n    config_model = dict'), "'config_model' must be a pydantic model"),
    ],
)
def test_contract_violations(tmp_path, body, problem):
    (tmp_path / "echo.py").write_text(body)
    with pytest.raises(PluginError, match=problem):
        discover([tmp_path])


def test_configured_plugin_folder_must_exist(write):
    path = write("gw.yaml", "plugins: {paths: [nowhere]}\n")
    from gateway.config import load

    with pytest.raises(ConfigError, match="plugin folder .*nowhere does not exist"):
        load(path)


async def test_syslog_plugin_tcp_routes_lines_with_captures():
    basic.RECORD.clear()
    gw = Gateway.from_text(syslog_yaml(
        '    - {match: "sshd\\\\[(?P<pid>\\\\d+)\\\\]", app: "testapps.basic:record_syslog", name: sshd}\n'
        '    - {app: "testapps.basic:record_syslog", name: rest}\n'
    ))
    async with gw:
        await send_lines(gw.addresses["syslog"][0], b"<34>Oct 11 22:14:15 host sshd[42]: Failed password\n", b"plain line\n")
        await eventually(lambda: len(basic.RECORD) == 2)
    assert basic.RECORD[0] == ("sshd", {"pid": "42"}, "Oct 11 22:14:15 host sshd[42]: Failed password")
    assert basic.RECORD[1] == ("rest", {}, "plain line")


async def test_syslog_plugin_udp_and_line_limit():
    basic.RECORD.clear()
    gw = Gateway.from_text(syslog_yaml('    - {app: "testapps.basic:record_syslog", name: all}\n', transport="udp")
                           .replace("transport: udp}", "transport: udp, max_line: 10}"))
    async with gw:
        host, port = gw.addresses["syslog"][0].rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x" * 11, (host, int(port)))  # one byte over the limit: dropped, counted
            s.sendto(b"x" * 10, (host, int(port)))  # at the limit: handled
        await eventually(lambda: len(basic.RECORD) == 1)
        dropped = gw.metrics.registry.get_sample_value("gateway_syslog_dropped_total", {"reason": "too_long"})
    assert basic.RECORD == [("all", {}, "x" * 10)]
    assert dropped == 1


async def test_port_in_use_fails_start_and_leaves_nothing_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = Gateway.from_text(syslog_yaml('    - {app: "testapps.basic:record_syslog"}\n')
                               .replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await gw.start()
        assert gw.adapters == {} and gw.layer is None


def test_installed_import_names_do_not_clash_with_a_users_modules(tmp_path):
    """A Django project with its own `adapters` and `plugins` apps keeps them; ours are prefixed."""
    for name in ("adapters", "plugins"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"OWNER = 'user-{name}'\n")
    code = (
        "import adapters, plugins, gateway_adapters.http, gateway.plugins;"
        "print(adapters.OWNER, plugins.OWNER, gateway_adapters.http.HttpAdapter.name)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["user-adapters", "user-plugins", "http"]


STUBBORN_PLUGIN = '''
import asyncio
from gateway.plugins import Adapter
from gateway.schema import RouteConfig

HANDLED = []

class StubbornAdapter(Adapter):
    """Swallows the cancellation of its outbound handler, as aiosmtplib does while it closes."""
    name = "stubborn"
    scope_types = ("stubborn",)
    route_models = {"stubborn": RouteConfig}
    outbound_channels = ("stubborn.out",)
    async def start(self): pass
    async def stop(self, drain): pass
    async def handle_outbound(self, channel, message):
        HANDLED.append(message)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
'''


async def test_stop_ends_an_outbound_relay_whose_handler_swallowed_the_cancellation(tmp_path):
    import asyncio

    (tmp_path / "stubborn.py").write_text(STUBBORN_PLUGIN)
    gw = Gateway.from_text(f"plugins: {{paths: ['{tmp_path}']}}\nadapters: {{stubborn: {{}}}}\n")
    await gw.start()
    handled = sys.modules["asgi_gateway_plugins.stubborn"].HANDLED
    await gw.layer.send("stubborn.out", {"type": "stubborn.send"})
    await eventually(lambda: handled)
    await asyncio.wait_for(gw.stop(0), 30)  # hung for ever before the relay checked for a pending cancel
    assert handled == [{"type": "stubborn.send"}] and not gw.started
