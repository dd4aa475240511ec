"""A small third-party-style gymnasium env that differs from our tasks in every point, and its demonstrator.

``ToyReach``: a point in the square [-1, 1]^2 moves toward a goal. Observation: a Dict with ``pixels``
(48 x 64 RGB, the point red, the goal green) and ``state`` (5,) float64 = (x, y, goal x, goal y,
distance), or, with ``pixels=False``, that flat vector alone. Action: a Box of ``action_dim`` numbers in
[-action_high, action_high]; the first two are the velocity (0.1 / action_high per step and unit).
Success: ``info["success"]`` (distance < 0.1, which also terminates); ``info["closeness"]`` in [0, 1].
Registered as ``ToyReach-v0`` (60 steps) when this module is imported.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SIZE = (48, 64)  # (H, W) of the pixels
GOAL_RADIUS = 0.1


class ToyReach(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, pixels: bool = True, action_dim: int = 2, action_high: float = 1.0,
                 render_mode: str | None = None):
        self.pixels, self.action_high, self.render_mode = pixels, action_high, render_mode
        state = spaces.Box(-np.inf, np.inf, (5,), np.float64)
        self.observation_space = (spaces.Dict({"pixels": spaces.Box(0, 255, (*SIZE, 3), np.uint8), "state": state})
                                  if pixels else state)
        self.action_space = spaces.Box(-action_high, action_high, (action_dim,), np.float32)
        self.pos = np.zeros(2)
        self.goal = np.zeros(2)
        self.last_action: np.ndarray | None = None

    def _image(self) -> np.ndarray:
        img = np.full((*SIZE, 3), 30, np.uint8)
        for p, colour in ((self.goal, (40, 200, 40)), (self.pos, (220, 40, 40))):
            r = int(round((1 - p[1]) / 2 * (SIZE[0] - 1)))  # row: y up
            c = int(round((p[0] + 1) / 2 * (SIZE[1] - 1)))
            img[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4] = colour
        return img

    def _obs(self):
        dist = float(np.linalg.norm(self.goal - self.pos))
        state = np.array([*self.pos, *self.goal, dist])
        return {"pixels": self._image(), "state": state} if self.pixels else state

    def _info(self) -> dict:
        dist = float(np.linalg.norm(self.goal - self.pos))
        return {"success": dist < GOAL_RADIUS, "closeness": max(0.0, 1.0 - dist / (2 * np.sqrt(2)))}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.8, 0.8, 2)
        self.goal = self.np_random.uniform(-0.8, 0.8, 2)
        while np.linalg.norm(self.goal - self.pos) < 0.5:
            self.goal = self.np_random.uniform(-0.8, 0.8, 2)
        return self._obs(), {}

    def step(self, action):
        self.last_action = np.array(action)
        v = np.clip(np.asarray(action, np.float64)[:2], -self.action_high, self.action_high) / self.action_high
        self.pos = np.clip(self.pos + 0.1 * v, -1, 1)
        info = self._info()
        return self._obs(), float(info["closeness"]), bool(info["success"]), False, info

    def render(self):
        return self._image() if self.render_mode == "rgb_array" else None


class DiscreteToy(ToyReach):
    """The same env with a Discrete action space (cannot be mapped)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.action_space = spaces.Discrete(4)


class ToyDemo:
    """Scripted demonstrator for ``ToyReach`` behind the identity action map: heads for the goal (privileged
    state of ``env.unwrapped``) at a seeded speed with a little noise. ``act`` returns our (2,) action."""

    def __init__(self, env):
        self.env = env
        self.rng = np.random.default_rng(0)
        self.speed = 1.0

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.speed = self.rng.uniform(0.6, 1.0)

    @property
    def done(self) -> bool:
        toy = self.env.unwrapped
        return bool(np.linalg.norm(toy.goal - toy.pos) < GOAL_RADIUS)

    def act(self, obs: dict) -> np.ndarray:
        assert set(obs) <= {"scene_rgb", "wrist_rgb", "ee_pose", "gripper"}, obs.keys()
        toy = self.env.unwrapped
        d = toy.goal - toy.pos
        step = min(1.0, np.linalg.norm(d) / 0.1) * self.speed
        direction = d / max(np.linalg.norm(d), 1e-9)
        return (direction * step + self.rng.normal(0, 0.05, 2)).astype(np.float32)


if "ToyReach-v0" not in gym.registry:
    gym.register("ToyReach-v0", entry_point="tests.sim.gym_toy:ToyReach", max_episode_steps=60)
