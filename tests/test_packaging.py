"""Building the distribution is silent: no setuptools warnings for a user's `make run` to print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .gateway_helpers import ROOT


def test_the_wheel_builds_without_setuptools_warnings(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    for noise in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "Package would be ignored", "!!"):
        assert noise not in output, noise
    wheel = next(tmp_path.glob("asgi_gateway-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("gateway/django/migrations/0001_initial.py",
                   "gateway_adapters/sms/providers/twilio.py", "gateway/py.typed", "gateway/bridges/config.py",
                   "gateway_adapters/mqtt/bridge.py"):
        assert needed in names, needed
    # every module of the source tree is in the wheel: pyproject.toml lists packages by hand,
    # and a new subpackage left out of that list would be missing only for users of the wheel
    sources = [(p, "gateway/" + p.relative_to(ROOT / "gateway").as_posix()) for p in (ROOT / "gateway").rglob("*.py")]
    sources += [(p, "gateway_adapters/" + p.relative_to(ROOT / "adapters").as_posix()) for p in (ROOT / "adapters").rglob("*.py")]
    missing = [name for path, name in sources if "__pycache__" not in name and name not in names]
    assert not missing, f"not in the wheel (add their packages to [tool.setuptools] packages): {missing}"
