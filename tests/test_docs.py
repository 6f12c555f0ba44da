"""The generated config reference matches the models that validate the config."""

from __future__ import annotations

from gateway.docgen import config_reference

from .gateway_helpers import ROOT


def test_config_reference_is_current():
    current = (ROOT / "docs" / "config-reference.md").read_text()
    assert current == config_reference(), "docs/config-reference.md is stale: run `make docs`"


def test_config_reference_covers_core_sections_and_builtin_adapters():
    text = config_reference()
    for needle in ("`instances`", "queue_size", "`adapters.http` keys", "`routes.http[]` keys", "`backend: memory`"):
        assert needle in text
