"""The task table: name -> env class, and ``make_env`` from a plain config dict (hydra output)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy.config_utils import from_dict
from sim.env import TableTopEnv
from sim.pick_place import PickPlaceConfig, PickPlaceEnv

# name -> (env class, its config class)
TASKS: dict[str, tuple[type[TableTopEnv], type]] = {
    "pick_place": (PickPlaceEnv, PickPlaceConfig),
}


def make_env(task: str, overrides: Mapping[str, Any] | None = None, render_mode: str | None = None) -> TableTopEnv:
    """Build task ``task`` with its config built strictly from ``overrides`` (unknown keys fail)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    env_cls, cfg_cls = TASKS[task]
    return env_cls(from_dict(cfg_cls, dict(overrides or {}), task), render_mode=render_mode)
