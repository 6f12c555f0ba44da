"""Config loading and validation: every bad input names the file, the line and the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load, loads
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"


def syslog_config(routes: str = "", extra: str = "") -> str:
    return f"""\
plugins: {{paths: ["{PLUGINS}"]}}
adapters:
  syslog: {{listen: "127.0.0.1:0", transport: tcp}}
{extra}routes:
  syslog:
    - {{match: "hello", app: "testapps.basic:record_syslog", name: greet}}
{routes}"""


def error_of(write, text: str, name: str = "gw.yaml") -> ConfigError:
    path = write(name, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


def test_valid_config_builds_routes(write):
    plan = load(write("gw.yaml", syslog_config()))
    [(protocol, route)] = list(plan.routes())
    assert protocol == "syslog"
    assert route.name == "greet"
    assert route.target == "testapps.basic:record_syslog"
    assert plan.adapters[0].config.transport == "tcp"


def test_yaml_syntax_error_reports_line_and_column(write):
    err = error_of(write, "adapters:\n  http: {listen: [1, 2}\n")
    assert err.file.endswith("gw.yaml")
    assert err.line == 2
    assert err.column is not None
    assert "YAML syntax error" in str(err)


def test_unknown_top_level_key_names_line_and_allowed_keys(write):
    err = error_of(write, "layer: {backend: memory}\nrouts: {}\n")
    assert (err.line, err.path) == (2, ("routs",))
    assert "unknown key 'routs'" in err.message
    assert "routes" in err.message  # the allowed keys are listed
    assert str(err).startswith(f"{err.file}:2:")


def test_unknown_nested_key(write):
    err = error_of(write, "instances:\n  queue_size: 10\n  app_close_timout: 3\n")
    assert err.line == 3
    assert err.path == ("instances", "app_close_timout")
    assert "app_close_timeout" in err.message


def test_wrong_type(write):
    err = error_of(write, "instances:\n  queue_size: lots\n")
    assert err.line == 2 and err.path == ("instances", "queue_size")
    assert err.message == "must be a whole number (got 'lots')"


def test_every_problem_is_listed_in_words_a_person_uses(write):
    err = error_of(write, "adapters:\n  http:\n  listen: 127.0.0.1:8000\n")
    assert err.path == ("adapters", "listen") and err.line == 3
    assert "unknown adapter 'listen'" in err.message and "indent it under that adapter" in err.message
    err = error_of(write, "instances: {queue_size: x, message_timeout: -1}\n")
    assert err.message.splitlines()[0] == "must be a whole number (got 'x')"
    assert "instances.message_timeout: must be greater than 0 (got -1)" in err.message.splitlines()[1]
    assert "more problem" not in err.message


def test_limit_boundary_queue_size(write):
    err = error_of(write, "instances: {queue_size: 0}\n")
    assert err.path == ("instances", "queue_size") and "greater than 0" in err.message
    assert load(write("ok.yaml", "instances: {queue_size: 1}\n")).config.instances.queue_size == 1


def test_unknown_adapter(write):
    err = error_of(write, "adapters:\n  smtpd: {}\n")
    assert err.line == 2 and err.path == ("adapters", "smtpd")
    assert "unknown adapter 'smtpd'" in err.message and "http" in err.message


def test_adapter_key_validated_by_its_own_schema(write):
    err = error_of(write, syslog_config().replace("transport: tcp", "transport: sctp"))
    assert err.path == ("adapters", "syslog", "transport")
    assert err.line == 3
    assert "'udp' or 'tcp'" in err.message


def test_route_for_protocol_without_adapter(write):
    text = f'plugins: {{paths: ["{PLUGINS}"]}}\nroutes:\n  syslog:\n    - {{app: "testapps.basic:record_syslog"}}\n'
    err = error_of(write, text)
    assert err.path == ("routes", "syslog") and err.line == 3
    assert "need the 'syslog' adapter" in err.message


def test_route_for_unknown_protocol(write):
    err = error_of(write, "routes:\n  gopher:\n    - {app: x:y}\n")
    assert err.path == ("routes", "gopher") and "unknown protocol 'gopher'" in err.message


def test_app_that_does_not_import(write):
    text = syslog_config('    - {app: "testapps.nope:app"}\n')
    err = error_of(write, text)
    assert err.path == ("routes", "syslog", 1, "app")
    assert err.line == 7
    assert "no module named 'testapps.nope'" in err.message


def test_app_attribute_missing(write):
    err = error_of(write, syslog_config('    - {app: "testapps.basic:missing"}\n'))
    assert "has no attribute 'missing'" in err.message


def test_app_module_raising_at_import_shows_where(write):
    err = error_of(write, syslog_config('    - {app: "testapps.broken:app"}\n'))
    assert "ZeroDivisionError: this module is broken on purpose" in err.message
    assert "broken.py:4" in err.message  # the traceback summary points into the module


def test_app_not_an_asgi_app(write):
    err = error_of(write, syslog_config('    - {app: "testapps.basic:not_callable"}\n'))
    assert "is not callable" in err.message
    err = error_of(write, syslog_config('    - {app: "testapps.basic:sync_three_args"}\n'))
    assert "neither an ASGI 3 application" in err.message


def test_app_django_names_what_it_needs(write, monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    err = error_of(write, syslog_config('    - {app: django}\n'))
    assert err.path == ("routes", "syslog", 1, "app") and "serves http routes only" in err.message
    err = error_of(write, "adapters:\n  http: {listen: '127.0.0.1:0'}\nroutes:\n  http:\n    - {app: django}\n")
    assert err.path == ("routes", "http", 0, "app")
    assert "django: {settings: yourproject.settings}" in err.message and "DJANGO_SETTINGS_MODULE" in err.message


def test_bad_middleware_import(write):
    err = error_of(write, syslog_config('    - {app: "testapps.basic:record_syslog", middleware: ["testapps.basic:nothing"]}\n'))
    assert err.path == ("routes", "syslog", 1, "middleware")


def test_duplicate_key(write):
    err = error_of(write, "instances:\n  queue_size: 1\n  queue_size: 2\n")
    assert err.line == 3 and "duplicate key 'queue_size'" in err.message


def test_listening_twice_on_one_address_is_refused(write):
    text = f"""\
plugins: {{paths: ["{PLUGINS}"]}}
adapters:
  syslog: {{listen: "127.0.0.1:5514", transport: tcp}}
  http: {{listen: ["127.0.0.1:8000", "127.0.0.1:8000"]}}
"""
    err = error_of(write, text)
    assert "127.0.0.1:8000 is already used" in err.message
    assert err.path == ("adapters", "http")


def test_env_interpolation_with_types_and_defaults(write):
    text = "instances:\n  queue_size: ${QSIZE}\n  app_close_timeout: ${CLOSE:-2.5}\nlogging: {level: '${LVL:-warning}'}\n"
    from gateway.yamlsource import load_file

    source = load_file(write("gw.yaml", text), env={"QSIZE": "7"})
    assert source.data["instances"] == {"queue_size": 7, "app_close_timeout": 2.5}
    assert source.data["logging"]["level"] == "warning"
    # An env var is substituted as a scalar only: it can never smuggle in a mapping.
    source = load_file(write("gw2.yaml", "x: ${V}\n"), env={"V": "{a: 1}"})
    assert source.data["x"] == "{a: 1}"
    # $${...} is a literal
    source = load_file(write("gw3.yaml", "x: 'cost $${HOME}'\n"), env={})
    assert source.data["x"] == "cost ${HOME}"


def test_missing_env_var_names_variable_and_line(write):
    from gateway.yamlsource import load_file

    with pytest.raises(ConfigError) as info:
        load_file(write("gw.yaml", "adapters:\n  sms: {token: '${TWILIO_TOKEN}'}\n"), env={})
    assert info.value.line == 2
    assert "TWILIO_TOKEN is not set" in info.value.message


def test_include_and_override(write):
    write("base.yaml", "instances: {queue_size: 5, app_close_timeout: 3}\nlogging: {level: debug}\n")
    prod = write("prod.yaml", "include: base.yaml\ninstances: {queue_size: 50}\n")
    plan = load(prod)
    assert plan.config.instances.queue_size == 50  # overridden
    assert plan.config.instances.app_close_timeout == 3  # kept from base
    assert plan.config.logging.level == "debug"


def test_error_inside_included_file_names_that_file(write):
    write("base.yaml", "instances:\n  queue_size: many\n")
    err = error_of(write, "include: [base.yaml]\nlogging: {level: info}\n", name="prod.yaml")
    assert err.file.endswith("base.yaml") and err.line == 2


def test_missing_include_and_include_cycle(write):
    err = error_of(write, "include: [nothere.yaml]\n")
    assert "included file not found" in err.message and err.line == 1
    write("a.yaml", "include: b.yaml\n")
    write("b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load(Path(write("c.yaml", "include: a.yaml\n")))


def test_path_route_shape_errors(write):
    http = "adapters:\n  http: {listen: '127.0.0.1:0'}\nroutes:\n  http:\n"
    err = error_of(write, http + "    - {path: /, regex: '.*', app: 'testapps.basic:hello'}\n")
    assert err.path == ("routes", "http", 0) and "one of 'path' and 'regex', not both" in err.message
    err = error_of(write, http + "    - {path: '/<float:x>/', app: 'testapps.basic:hello'}\n")
    assert "unknown converter 'float'" in err.message
    err = error_of(write, http + "    - {regex: '(unclosed', app: 'testapps.basic:hello'}\n")
    assert "invalid regex" in err.message
    err = error_of(write, http + "    - {path: /api/, include: [{path: x/, ap: 'testapps.basic:hello'}]}\n")
    assert err.path == ("routes", "http", 0, "include", 0, "ap")


def test_layer_backend_errors(write):
    err = error_of(write, "layer: {backend: nosuch.module:Layer}\n")
    assert err.path == ("layer", "backend") and "no module named 'nosuch'" in err.message
    err = error_of(write, "layer: {backend: memory, capacty: 5}\n")
    assert err.path == ("layer", "capacty") and "capacity" in err.message


def test_loads_from_string():
    plan = loads("instances: {queue_size: 3}\n")
    assert plan.config.instances.queue_size == 3


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_check_ok_and_error(write):
    good = write("gw.yaml", syslog_config())
    res = run_cli("check", str(good), cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout and "1 routes" in res.stdout
    bad = write("bad.yaml", "instances:\n  queue_size: -1\n")
    res = run_cli("check", str(bad))
    assert res.returncode == 1
    assert f"{bad}:2:" in res.stderr and "instances.queue_size" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_routes_table(write):
    cfg = write("gw.yaml", syslog_config(
        '    - {app: "testapps.basic:record_syslog", middleware: ["testapps.basic:outer"]}\n'))
    res = run_cli("routes", str(cfg), cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["PROTOCOL", "MATCHER", "APP", "NAME", "MIDDLEWARE"]
    assert "syslog" in lines[1] and "match hello" in lines[1] and "greet" in lines[1]
    assert "(any)" in lines[2] and "testapps.basic:outer" in lines[2]


def test_cli_version():
    res = run_cli("version")
    assert res.returncode == 0 and res.stdout.startswith("asgi-gateway ")


def test_default_config_is_valid():
    res = run_cli("check", "config/gateway.yaml")
    assert res.returncode == 0, res.stderr


def test_a_path_route_without_matcher_keys_matches_every_path(write):
    plan = load(write("gw.yaml", "adapters:\n  http: {listen: '127.0.0.1:0'}\nroutes:\n  http:\n"
                                 "    - {path: /api/, app: 'testapps.basic:hello', name: api}\n"
                                 "    - {app: 'testapps.basic:hello', name: rest}\n"))
    router = plan.routers["http"]
    for path in ("/", "/api", "/x/y/z", "/api/"):
        match = router.resolve({"type": "http", "path": path, "headers": []})
        assert match is not None and match.route.name == ("api" if path == "/api/" else "rest")


def test_django_style_paths_without_leading_slash_and_include_slashes_match(write):
    plan = load(write("gw.yaml", "adapters:\n  http: {listen: '127.0.0.1:0'}\nroutes:\n  http:\n"
                                 "    - {path: 'chat/<room>/', app: 'testapps.basic:hello', name: chat}\n"
                                 "    - path: /api/\n      include:\n"
                                 "        - {path: /orders/, app: 'testapps.basic:hello', name: orders}\n"
                                 "        - {path: 'items/', app: 'testapps.basic:hello', name: items}\n"))
    router = plan.routers["http"]
    for path, name in (("/chat/lobby/", "chat"), ("/api/orders/", "orders"), ("/api/items/", "items")):
        match = router.resolve({"type": "http", "path": path, "headers": []})
        assert match is not None and match.route.name == name, path
    assert router.resolve({"type": "http", "path": "/api//orders/", "headers": []}) is None


@pytest.mark.parametrize("adapter", [
    "http: {listen: %s}",
    "mqtt: {mode: broker, listen: %s}",
    "email: {smtp: {listen: %s}}",
    "syslog: {listen: %s}",
])
def test_every_adapter_writes_listen_the_same_way(write, adapter):
    plugins = f"plugins: {{paths: ['{PLUGINS}']}}\n"
    for ok in ('"127.0.0.1:0"', '["127.0.0.1:0"]', '["127.0.0.1:0", "127.0.0.1:0"]'):
        load(write("ok.yaml", plugins + "adapters:\n  " + adapter % ok + "\n"))
    err = error_of(write, plugins + "adapters:\n  " + adapter % "8000" + "\n")
    assert err.message == "an address is host:port, e.g. 127.0.0.1:8000 ([::1]:8000, unix:/path/to.sock and fd://3 work too), or a list of them (got 8000)"
    err = error_of(write, plugins + "adapters:\n  " + adapter % '"http://127.0.0.1:18300"' + "\n")
    assert err.message.startswith("'http://127.0.0.1:18300' is a URL; an address is host:port")


def test_cli_routes_lists_the_mounts_first_in_the_order_they_match():
    res = run_cli("routes", "config/gateway.yaml")
    assert res.returncode == 0, res.stderr
    rows = [line.split()[:3] for line in res.stdout.splitlines()[1:]]
    mounts = [row for row in rows if row[1] == "mount"]
    assert rows[:len(mounts)] == mounts  # every mount before every route
    assert [row[2] for row in mounts] == ["/metrics", "/healthz", "/readyz", "/sms/in", "/livez", "/mqtt"]
    assert ["websocket", "mount", "/mqtt"] in rows and ["http", "mount", "/sms/in"] in rows


def test_an_error_about_a_key_no_file_sets_says_so_and_where_to_set_it(write):
    from gateway.workers import check_shareable

    write("a.yaml", "# shared\nadapters: {http: {listen: '127.0.0.1:8123'}}\n")
    main = write("b.yaml", "# production\ninclude: a.yaml\nlogging: {level: info}\n")
    with pytest.raises(ConfigError) as info:
        check_shareable(load(main), 2)
    err = info.value
    assert err.file == str(main) and err.path == ("layer", "backend")
    assert err.message.endswith(f"(layer.backend is not set in any config file; set it in {main})")
    # a value that is in a file is still pinned to that file
    write("a.yaml", "layer: {backend: nosuch}\n")
    with pytest.raises(ConfigError) as info:
        load(write("c.yaml", "include: a.yaml\n"))
    assert info.value.file.endswith("a.yaml") and "not set in any config file" not in info.value.message
