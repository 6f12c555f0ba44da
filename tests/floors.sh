#!/bin/sh
# The tests that touch aiohttp, run with aiohttp pinned at the floor pyproject.toml declares
# (`aiohttp>=X` -> `aiohttp==X`), in a virtualenv of their own: a floor the code does not really
# work with fails here. `make test-floors` runs it; FLOORS_VENV picks the virtualenv's folder.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${FLOORS_VENV:-.venv-floors}

floor=$("$PYTHON" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
found = [m.group(1) for d in deps if (m := re.fullmatch(r"aiohttp\s*>=\s*([\w.]+)\s*(,.*)?", d.strip()))]
if len(found) != 1:
    raise SystemExit(f"pyproject.toml: expected one 'aiohttp>=X' dependency, found {deps}")
print(found[0])
EOF
)

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# One resolution with the pin: a dependency that needs a newer aiohttp makes pip fail here.
PYTHONWARNINGS=ignore "$VENV/bin/pip" install -q -e '.[dev,speed]' "aiohttp==$floor"
"$VENV/bin/python" -c "import aiohttp, sys; v = aiohttp.__version__; sys.exit(0 if v == '$floor' else f'aiohttp {v} installed, not the floor $floor')"
echo "aiohttp $floor (the declared floor):"
# the http adapter (aiohttp is its tests' client) and the SMS adapter (aiohttp is its REST client)
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_http_*.py tests/test_websocket_asgi.py \
    tests/test_sms_outbound.py tests/test_sms_providers.py tests/test_sms_webhooks.py "$@"
