#!/bin/sh
# The whole suite (tests/compose aside: it is `make test-compose`) with EVERY runtime dependency
# pinned at the floor pyproject.toml declares (`aiohttp>=X` -> `aiohttp==X`, the runtime extras
# too), in a virtualenv of its own: a floor the code does not really work with fails here.
# `make test-floors` runs it; FLOORS_VENV picks the virtualenv's folder. See docs/compatibility.md.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${FLOORS_VENV:-.venv-floors}

pins=$("$PYTHON" tests/floors.py pins)
extras=$("$PYTHON" tests/floors.py extras)

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# One resolution: the floors exactly, the test tools (the dev extra) at whatever they need on top.
# A dependency or a test tool that needs a newer version than a floor makes pip fail here.
# (`echo | xargs` passes each pin as one argument: a pin may hold a space before its marker.)
echo "$pins" | PYTHONWARNINGS=ignore xargs -d '\n' "$VENV/bin/pip" install -q -e ".[dev,$extras]"
# The proof that the pins were honoured (a platform marker or a stale virtualenv could leave another
# version): every floor next to the version installed; a mismatch stops the run.
echo "the declared floors, installed:"
"$VENV/bin/python" tests/floors.py verify
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
