"""The task table: name -> (env class, config class, demonstrator class), and builders from plain dicts.

A demonstrator is built as ``demo_cls(env)`` and offers ``reset(seed)`` (after ``env.reset``),
``act(obs) -> (10,) action`` and ``done`` (True once it has finished and holds still).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy.config_utils import from_dict
from sim.demo import PickPlaceDemonstrator
from sim.env import TableTopEnv
from sim.peek_pick import PeekPickConfig, PeekPickDemonstrator, PeekPickEnv
from sim.pick_place import PickPlaceConfig, PickPlaceEnv
from sim.push_t import PushTConfig, PushTEnv
from sim.push_t_demo import PushTDemonstrator


@dataclass(frozen=True)
class Task:
    env_cls: type[TableTopEnv]
    cfg_cls: type
    demo_cls: type


TASKS: dict[str, Task] = {
    "pick_place": Task(PickPlaceEnv, PickPlaceConfig, PickPlaceDemonstrator),
    "push_t": Task(PushTEnv, PushTConfig, PushTDemonstrator),
    "peek_pick": Task(PeekPickEnv, PeekPickConfig, PeekPickDemonstrator),
}


def get_task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def make_env(task: str, overrides: Mapping[str, Any] | None = None, render_mode: str | None = None) -> TableTopEnv:
    """Build task ``task`` with its config built strictly from ``overrides`` (unknown keys fail)."""
    t = get_task(task)
    return t.env_cls(from_dict(t.cfg_cls, dict(overrides or {}), task), render_mode=render_mode)


def make_demonstrator(env: Any) -> Any:
    """The scripted demonstrator of ``env``'s task (looked up by the env's class)."""
    for t in TASKS.values():
        if type(env.unwrapped) is t.env_cls:
            return t.demo_cls(env)
    raise ValueError(f"no demonstrator registered for {type(env.unwrapped).__name__}")
