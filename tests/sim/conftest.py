"""Shared fixtures for the simulation tests; the whole folder is left out when the ``sim`` extra is missing."""

from __future__ import annotations

import importlib.util

import pytest

_MISSING = [m for m in ("mujoco", "gymnasium") if importlib.util.find_spec(m) is None]
if _MISSING:
    collect_ignore_glob = ["test_*.py"]
else:
    import sim  # noqa: F401 - picks the headless GL backend before any test module imports mujoco


def pytest_report_header(config):
    if _MISSING:
        return f"tests/sim not collected: {', '.join(_MISSING)} missing (pip install -e '.[sim]')"
    return None


@pytest.fixture(scope="module")
def env():
    """One pick-and-place env per test module (building the model and renderer costs ~0.1 s)."""
    from sim.pick_place import PickPlaceEnv

    e = PickPlaceEnv()
    yield e
    e.close()
