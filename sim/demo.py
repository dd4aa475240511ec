"""Scripted pick-and-place demonstrator, varied the way human demos are, acting at 10 Hz.

The demonstrator reads the privileged task state (cube pose, bin position) from the env and the
measured gripper width from the observation, and emits absolute targets in the shared action
convention, like a teleoperator integrating a SpaceMouse: a commanded pose that moves toward the
current waypoint with a trapezoid-like speed profile (accelerating, cruising, braking), plus a small
smooth hand tremor. Variation per episode, all from its own seeded generator: approach and carry
heights, an optional detour on the way to the cube, which of the cube's two grasp axes it takes,
speeds per segment and random speed changes within a segment, short pauses, release point in the bin.
A missed or dropped grasp is retried from above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from policy import keys
from runtime.rotation import matrix_to_rot6d
from sim import scene
from policy.config_utils import need
from sim.pick_place import PickPlaceEnv


@dataclass
class DemoConfig:
    """Ranges (lo, hi) are drawn uniformly per episode or segment (m, m/s, rad/s, ticks)."""

    speed: tuple[float, float] = (0.1, 0.2)  # cruise speed of a free-space segment
    fine_speed: tuple[float, float] = (0.04, 0.08)  # the last few cm onto the cube
    fine_height: tuple[float, float] = (0.015, 0.04)  # the descent slows to fine_speed this far above the grasp
    accel: float = 1.0  # m/s^2
    rot_speed: float = 0.7  # rad/s
    approach_height: tuple[float, float] = (0.09, 0.16)  # TCP height above the table before descending
    grasp_offset: tuple[float, float] = (0.0, 0.008)  # TCP height above the cube centre when closing
    carry_height: tuple[float, float] = (0.13, 0.2)
    release_height: tuple[float, float] = (0.085, 0.11)
    release_offset: float = 0.02  # release point: bin centre +- this per axis
    open_width: tuple[float, float] = (0.065, 0.08)
    detour_prob: float = 0.4  # probability of a via point on the way to the cube
    detour: float = 0.07  # via point offset per axis (xy), plus up to this much higher
    other_axis_prob: float = 0.25  # grasp along the cube's other face pair (a 90 degree longer turn)
    pause_prob: float = 0.3  # probability of a pause after a segment
    pause_ticks: tuple[int, int] = (1, 4)
    speed_change_prob: float = 0.05  # per tick: the cruise speed is scaled by U(0.6, 1.4)
    tremor: float = 0.0015  # m, std of the smooth (AR(1)) position noise
    max_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("speed", "fine_speed", "fine_height", "approach_height", "grasp_offset", "carry_height",
                     "release_height", "open_width", "pause_ticks"):
            lo, hi = getattr(self, name)
            need(lo <= hi, f"demo.{name}: low {lo} must not exceed high {hi}")
        need(self.speed[0] > 0 and self.fine_speed[0] > 0, "demo.speed and demo.fine_speed must be > 0")
        need(self.accel > 0 and self.rot_speed > 0, "demo.accel and demo.rot_speed must be > 0")
        need(self.open_width[1] <= scene.MAX_WIDTH, f"demo.open_width must be <= {scene.MAX_WIDTH}")
        for name in ("detour_prob", "other_axis_prob", "pause_prob", "speed_change_prob"):
            need(0 <= getattr(self, name) <= 1, f"demo.{name} must be in [0, 1], got {getattr(self, name)}")
        need(self.tremor >= 0 and self.max_retries >= 0, "demo.tremor and demo.max_retries must be >= 0")


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def yaw_rot6d(yaw: float) -> np.ndarray:
    """(6,) top-down TCP orientation rotated by ``yaw`` (rad) about the world z axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return matrix_to_rot6d(rz @ scene.TOP_DOWN)


class PickPlaceDemonstrator:
    """``reset(seed)`` after ``env.reset``, then ``act(obs)`` each step; ``done`` once it has let go and
    backed off (it then holds still)."""

    def __init__(self, env: Any, cfg: DemoConfig | None = None, dt: float | None = None):
        self.env: PickPlaceEnv = env.unwrapped
        self.cfg = cfg or DemoConfig()
        self.dt = dt if dt is not None else 1.0 / self.env.cfg.control_hz
        self.rng = np.random.default_rng()
        self._plan: list[tuple[str, Any]] = []
        self.done = False

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode from the env's current (just reset) state."""
        self.rng = np.random.default_rng(seed)
        pose = self.env.ee_pose()
        self.pos = pose[LAYOUT.position].copy()  # commanded TCP position (m)
        self.yaw = math.atan2(pose[4], pose[3])  # commanded yaw, from the first rotation column
        self.width = self._last_width = self.env.gripper_width()
        self.speed = 0.0  # current speed along the path (m/s)
        self.tremor = np.zeros(3)
        self.retries = 0
        self.done = False
        self._plan = []
        self._pause(0.5)
        self._plan_pick()

    # ---------------------------------------------------------------- planning

    def _u(self, lohi: tuple[float, float]) -> float:
        return float(self.rng.uniform(*lohi))

    def _pause(self, prob: float | None = None, now: bool = False) -> None:
        """With probability ``prob`` (default ``pause_prob``) wait a few ticks: at the end of the plan, or
        before anything else when ``now``."""
        if self.rng.random() < (self.cfg.pause_prob if prob is None else prob):
            wait = ("wait", int(self.rng.integers(self.cfg.pause_ticks[0], self.cfg.pause_ticks[1] + 1)))
            self._plan.insert(0 if now else len(self._plan), wait)

    def _move(self, pos, yaw: float | None = None, speed: float | None = None) -> None:
        self._plan.append(("move", (np.asarray(pos, float), yaw, speed or self._u(self.cfg.speed))))

    def _grasp_yaw(self, cube_yaw: float) -> float:
        """The grasp yaw nearest the commanded one among the cube's face normals (or the other axis)."""
        options = sorted((cube_yaw + k * math.pi / 2 for k in range(-3, 4)), key=lambda y: abs(_wrap(y - self.yaw)))
        options = [y for y in options if abs(y) <= math.pi / 2 + 1e-6]
        return options[1] if len(options) > 1 and self.rng.random() < self.cfg.other_axis_prob else options[0]

    def _plan_pick(self) -> None:
        c = self.cfg
        cube, cube_yaw = self.env.cube_pose()
        yaw = self._grasp_yaw(cube_yaw)
        width = self._u(c.open_width)
        self._plan.append(("width", width))
        above = np.array([cube[0], cube[1], self._u(c.approach_height)])
        if self.rng.random() < c.detour_prob:
            mid = 0.5 * (self.pos + above)
            via = mid + self.rng.uniform(-c.detour, c.detour, 3) * np.array([1.0, 1.0, 0.0])
            via[2] = max(mid[2], above[2]) + self.rng.uniform(0, c.detour)
            self._move(via, None)
            self._pause(0.15)
        self._move(above, yaw)
        self._pause()
        self._plan.append(("descend", None))

    def _plan_place(self) -> None:
        c, rng = self.cfg, self.rng
        bin_pos = self.env.bin_pos
        carry = self._u(c.carry_height)
        self._move([self.pos[0], self.pos[1], carry], None, 0.8 * self._u(c.speed))
        self._plan.append(("check", None))
        self._pause(0.2)
        release = bin_pos[:2] + rng.uniform(-c.release_offset, c.release_offset, 2)
        self._move([release[0], release[1], carry], None)
        self._pause()
        self._move([release[0], release[1], self._u(c.release_height)], None, 0.7 * self._u(c.speed))
        self._plan.append(("width", self._u(c.open_width)))
        self._plan.append(("wait", int(rng.integers(3, 6))))
        self._move([release[0], release[1], carry + rng.uniform(0.0, 0.05)], None)
        self._plan.append(("finish", None))

    def _retry(self) -> None:
        """The cube is not in the hand: open, back off upward, plan the pick again (or give up)."""
        self._plan = [("width", self._u(self.cfg.open_width)), ("wait", 3),
                      ("move", (np.array([self.pos[0], self.pos[1], self._u(self.cfg.approach_height)]), None,
                                self._u(self.cfg.speed)))]
        self.retries += 1
        if self.retries > self.cfg.max_retries:
            self._plan.append(("finish", None))
        else:
            self._plan.append(("replan", None))

    # ---------------------------------------------------------------- acting

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(10,) float32 absolute target for this tick."""
        measured_width = float(obs[keys.GRIPPER][0])
        fine = False
        while self._plan:
            kind, arg = self._plan[0]
            if kind == "width":
                self.width = arg
                self._plan.pop(0)
            elif kind == "wait":
                if arg <= 0:
                    self._plan.pop(0)
                    continue
                self._plan[0] = ("wait", arg - 1)
                break
            elif kind == "move":
                fine = arg[2] <= self.cfg.fine_speed[1]
                if self._step_toward(*arg):
                    self._plan.pop(0)
                    self._pause(0.1, now=True)
                break
            elif kind == "descend":
                cube, _ = self.env.cube_pose()
                grasp = np.array([cube[0], cube[1], cube[2] + self._u(self.cfg.grasp_offset)])
                slow = grasp + np.array([0.0, 0.0, self._u(self.cfg.fine_height)])
                self._plan[0:1] = [("move", (slow, None, self._u(self.cfg.speed))),
                                   ("move", (grasp, None, self._u(self.cfg.fine_speed))),
                                   ("width", 0.0), ("close", 0)]
            elif kind == "close":  # wait until the fingers have stopped (on the cube), at most 12 ticks
                self._plan[0] = ("close", arg + 1)
                fine = True
                if arg >= 12 or (arg >= 3 and abs(measured_width - self._last_width) < 2e-4):
                    self._plan[0:1] = [("place", None)]
                    self._pause(0.5, now=True)
                    continue
                break
            elif kind == "place":
                self._plan.pop(0)
                self._plan_place()
            elif kind == "check":  # after the lift: is the cube between the fingers?
                self._plan.pop(0)
                cube, _ = self.env.cube_pose()
                if measured_width < 0.5 * self.env.cfg.cube_half or cube[2] < 2 * self.env.cfg.cube_half:
                    self._retry()
            elif kind == "replan":
                self._plan.pop(0)
                self._plan_pick()
            elif kind == "finish":
                self._plan.pop(0)
                self.done = True
        self._last_width = measured_width
        return self._action(fine)

    def _step_toward(self, goal: np.ndarray, yaw: float | None, cruise: float) -> bool:
        """Advance the commanded pose one tick toward ``goal``; True once there."""
        c, dt = self.cfg, self.dt
        if cruise > c.fine_speed[1] and self.rng.random() < c.speed_change_prob:  # not on fine moves
            cruise = float(np.clip(cruise * self.rng.uniform(0.6, 1.4), c.fine_speed[1], c.speed[1]))
            self._plan[0] = ("move", (goal, yaw, cruise))
        delta = goal - self.pos
        dist = float(np.linalg.norm(delta))
        self.speed = min(cruise, self.speed + c.accel * dt, math.sqrt(2 * c.accel * dist))
        step = min(self.speed * dt, dist)
        if dist > 1e-9:
            self.pos = self.pos + delta * (step / dist)
        yaw_done = True
        if yaw is not None:
            dyaw = _wrap(yaw - self.yaw)
            turn = float(np.clip(dyaw, -c.rot_speed * dt, c.rot_speed * dt))
            self.yaw = _wrap(self.yaw + turn)
            yaw_done = abs(dyaw - turn) < 1e-6
        if dist - step < 1e-6 and yaw_done:
            self.speed = 0.0
            return True
        return False

    def _action(self, fine: bool) -> np.ndarray:
        c = self.cfg
        rho = 0.8
        self.tremor = rho * self.tremor + math.sqrt(1 - rho * rho) * c.tremor * self.rng.normal(size=3)
        noise = self.tremor * (0.3 if fine or self.done else 1.0) * np.array([1.0, 1.0, 0.5])
        pos = self.pos + noise
        return np.concatenate([pos, yaw_rot6d(self.yaw), [self.width]]).astype(np.float32)


def rollout(env: Any, seed: int, demo: Any = None, max_steps: int | None = None,
            extra_steps: int = 3, keep_obs: bool = True) -> dict[str, Any]:
    """Run one demonstration from ``env.reset(seed=seed)``; the demonstrator uses the same seed.

    ``demo`` defaults to the task's demonstrator (``sim.tasks``). Stops ``extra_steps`` after the
    demonstrator is done and the task succeeded, or after ``max_steps`` (default: the env's
    ``max_episode_steps``). Returns ``obs`` (list of the observations the actions were chosen from, if
    ``keep_obs``), ``actions`` (T, 10) float32, ``success``, ``score``, ``steps``.
    """
    if demo is None:
        from sim.tasks import make_demonstrator

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
