"""One scripted demonstration of a task: the env and its demonstrator stepped together (``rollout``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT
from sim.motion import Tremor
from sim.tasks import make_demonstrator

NOISE_SEED = 0x5EED  # mixed with the episode seed: the noise draws differ from the demonstrator's


class ActionNoise:
    """Smooth noise on the executed target position: the demonstrators' ``sim.motion.Tremor`` (an AR(1) process per
    axis) with std ``std`` (3,) m and correlation ``rho`` per tick, stationary from the first tick, drawn from a
    generator seeded by the episode seed (the same seed gives the same noise)."""

    def __init__(self, std, rho: float):
        std = np.asarray(std, dtype=np.float64)
        if std.shape != (3,) or np.any(std < 0) or not np.all(np.isfinite(std)):
            raise ValueError(f"action noise std must be 3 finite numbers >= 0 (m, per axis), got {std}")
        if not 0 <= rho < 1:
            raise ValueError(f"action noise rho must be in [0, 1), got {rho}")
        self.tremor = Tremor(1.0, tuple(std), float(rho))  # unit AR(1), scaled per axis by std
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([NOISE_SEED, seed])
        self.tremor.value = self.rng.normal(size=3)  # stationary: the first offset already has the full std
        self.offset = self.tremor.value * self.tremor.weights

    def apply(self, action: np.ndarray) -> np.ndarray:
        """The action to execute: ``action`` with the current offset added to its position; advances one tick."""
        out = np.array(action, dtype=np.float32, copy=True)
        out[ACTION_LAYOUT.position] += self.offset.astype(np.float32)
        self.offset = self.tremor.step(self.rng)
        return out


def rollout(env: Any, seed: int, demo: Any = None, max_steps: int | None = None,
            extra_steps: int = 3, keep_obs: bool = True, noise: ActionNoise | None = None) -> dict[str, Any]:
    """Run one demonstration from ``env.reset(seed=seed)``; the demonstrator uses the same seed.

    ``demo`` defaults to the task's demonstrator (``sim.tasks``). Stops ``extra_steps`` after the
    demonstrator is done and the task succeeded, or after ``max_steps`` (default: the env's
    ``max_episode_steps``). Returns ``obs`` (list of the observations the actions were chosen from, if
    ``keep_obs``), ``actions`` (T, 10) float32, ``success``, ``score``, ``steps``.

    ``noise`` (DART, Laskey et al. 2017): the env executes the demonstrator's action plus this noise, while
    ``actions`` records the demonstrator's own; the demonstrator, closed loop on the task state, then shows how
    to recover from the states the noise leads to.
    """
    if demo is None:
        demo = make_demonstrator(env)
    max_steps = max_steps or env.unwrapped.cfg.max_episode_steps
    obs, info = env.reset(seed=seed)
    demo.reset(seed)
    if noise is not None:
        noise.reset(seed)
    observations, actions, after = [], [], 0
    for _ in range(max_steps):
        action = demo.act(obs)
        if keep_obs:
            observations.append(obs)
        actions.append(action)
        obs, _, terminated, _, info = env.step(action if noise is None else noise.apply(action))
        if demo.done and info["is_success"]:
            after += 1
        if terminated or after > extra_steps:
            break
    return {"obs": observations, "actions": np.stack(actions), "success": bool(info["is_success"]),
            "score": float(info["score"]), "steps": len(actions)}
