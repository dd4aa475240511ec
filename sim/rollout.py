"""One scripted demonstration of a task: the env and its demonstrator stepped together (``rollout``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.tasks import make_demonstrator


def rollout(env: Any, seed: int, demo: Any = None, max_steps: int | None = None,
            extra_steps: int = 3, keep_obs: bool = True) -> dict[str, Any]:
    """Run one demonstration from ``env.reset(seed=seed)``; the demonstrator uses the same seed.

    ``demo`` defaults to the task's demonstrator (``sim.tasks``). Stops ``extra_steps`` after the
    demonstrator is done and the task succeeded, or after ``max_steps`` (default: the env's
    ``max_episode_steps``). Returns ``obs`` (list of the observations the actions were chosen from, if
    ``keep_obs``), ``actions`` (T, 10) float32, ``success``, ``score``, ``steps``.
    """
    if demo is None:
        demo = make_demonstrator(env)
    max_steps = max_steps or env.unwrapped.cfg.max_episode_steps
    obs, info = env.reset(seed=seed)
    demo.reset(seed)
    observations, actions, after = [], [], 0
    for _ in range(max_steps):
        action = demo.act(obs)
        if keep_obs:
            observations.append(obs)
        actions.append(action)
        obs, _, terminated, _, info = env.step(action)
        if demo.done and info["is_success"]:
            after += 1
        if terminated or after > extra_steps:
            break
    return {"obs": observations, "actions": np.stack(actions), "success": bool(info["is_success"]),
            "score": float(info["score"]), "steps": len(actions)}
