"""Test tiers, by folder: unit (pure), functional (root, real OVS and namespaces), e2e (real
control plane and lab). Each item gets its tier's marker, so `pytest -m unit` works too."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "functional", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


def venv_bin(name: str) -> str:
    """A console script of this project, next to the running interpreter (no PATH needed)."""
    import sys

    return str(Path(sys.executable).parent / name)
