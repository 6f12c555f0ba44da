"""The pytest plugin (entry point ``pytest11``): a project's gateway YAML, in process or live.

Which YAML: ``@pytest.mark.gateway_config("path/to/gateway.yaml")`` on a test or module, else
the ``gateway_config`` ini option (relative to the rootdir), else override the
``gateway_config_path`` fixture.

* ``communicators``: communicators bound to that YAML's routing (no sockets);
* ``gateway``: the whole daemon started from that YAML, every listener moved to a free port on
  127.0.0.1, yielded as a started ``Gateway`` (``gateway.addresses`` says where), stopped after
  the test. It needs pytest-asyncio, as any async test does.

The gateway itself is imported only when a test asks for one of these fixtures, so a project
that has the plugin installed but does not use it is unaffected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gateway.server import Gateway

    from .fixtures import Communicators

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the live fixture then explains itself
    pytest_asyncio = None  # type: ignore[assignment]

MARKER = "gateway_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(MARKER, "gateway YAML that the communicators and gateway fixtures load (relative to the rootdir)", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(path): the gateway YAML the communicators and gateway fixtures load")


@pytest.fixture
def gateway_config_path(request: pytest.FixtureRequest) -> Path:
    """The YAML the other fixtures load (see the module docstring for where it comes from)."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        given = Path(marker.args[0])
        return given if given.is_absolute() else Path(request.config.rootpath) / given
    ini = request.config.getini(MARKER)
    if ini:
        return Path(request.config.rootpath) / str(ini)
    raise pytest.UsageError(
        "which gateway YAML? mark the test with @pytest.mark.gateway_config('gateway.yaml'), set the "
        "'gateway_config' ini option, or override the 'gateway_config_path' fixture"
    )


@pytest.fixture
def communicators(gateway_config_path: Path) -> Iterator[Communicators]:
    """Communicators that run apps through the YAML's routes, runner and adapters (no sockets).
    The YAML's channel layer is the current one meanwhile, as in a started gateway, so
    consumers can join groups and a test can ``group_send`` to them."""
    from gateway.layers import get_channel_layer, set_channel_layer

    from .fixtures import Communicators
    from .harness import Harness

    harness = Harness.from_file(gateway_config_path)
    previous = get_channel_layer()
    set_channel_layer(harness.layer)
    try:
        yield Communicators(harness)
    finally:
        set_channel_layer(previous)


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def gateway(gateway_config_path: Path) -> AsyncIterator[Gateway]:
        """The whole gateway from the YAML, started on free ports; ``gateway.addresses`` says which."""
        from .fixtures import live_gateway

        gw = live_gateway(gateway_config_path)
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop(drain=1.0)

else:  # pragma: no cover

    @pytest.fixture
    def gateway() -> None:
        raise pytest.UsageError("the 'gateway' fixture is async: install pytest-asyncio")
