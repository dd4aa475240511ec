"""The runtime's driver interfaces on top of a mapped third-party env (``sim.gym_adapter.GymAdapter``).

Evaluation runs a mapped env through the same ``runtime.Controller`` as our tasks: ``GymRobot`` steps
the env once per ``write``, ``GymSensor`` hands each mapped observation key (image or vector) to the
controller like a camera, and ``BoxSafety`` stands in for the safety layer. The safety layer of our
10-D end-effector actions (workspace box, speed and acceleration limits, gripper range) does not apply
to another action space: ``BoxSafety`` holds on non-finite actions, clips to the env's Box mapped to our
units (reason ``action_bounds``) and keeps the staleness watchdog of ``safety.stale_hold_s`` /
``stale_stop_s``; workspace and speed limits are the env's own business.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from policy import keys
from policy.config_utils import need
from runtime.drivers.base import CameraFrame, DriverError, Robot, RobotState
from runtime.safety import SafetyConfig, SafetyLayer, SafetyResult
from sim.drivers import EpisodeOutcome, FrameCamera
from sim.gym_adapter import GymAdapter, GymConfig

log = logging.getLogger("sim.gym_drivers")


class BoxSafety(SafetyLayer):
    """The safety layer for a mapped action space: non-finite -> hold, clip to [low, high] (``action_bounds``),
    and the staleness watchdog of ``SafetyLayer``. A hold repeats the last command (``on_hold: last``) or
    sends ``hold_action`` (``on_hold: hold``)."""

    def __init__(self, cfg: SafetyConfig, dt: float, low: np.ndarray, high: np.ndarray, hold_action: np.ndarray,
                 on_hold: str = "last"):
        super().__init__(cfg, dt)
        self.low, self.high, self.hold_action, self.on_hold = low, high, np.asarray(hold_action, float), on_hold

    def reset(self, current: np.ndarray) -> None:
        cmd = np.asarray(current, dtype=float).reshape(-1)
        need(cmd.shape == self.low.shape and bool(np.all(np.isfinite(cmd))),
              f"safety.reset needs a finite {self.low.shape} command, got {current!r}")
        self._last = np.clip(cmd, self.low, self.high).tolist()
        self._stale_since = None

    def hold(self, reason: str | None = None) -> SafetyResult:
        if self._last is None:
            raise RuntimeError("BoxSafety.hold before reset(): no command to hold")
        reasons: list[str] = []
        if reason:
            self._note(reasons, reason)
        if self.on_hold == "hold":
            self._last = self.hold_action.tolist()
        return SafetyResult(np.array(self._last), reasons)

    def check(self, target: np.ndarray) -> SafetyResult:
        if self._last is None:
            raise RuntimeError("BoxSafety.check before reset()")
        t = np.asarray(target, dtype=float)
        if t.shape != self.low.shape:
            raise ValueError(f"safety: target must have shape {self.low.shape}, got {t.shape}")
        if not np.all(np.isfinite(t)):
            log.warning("rejected a non-finite action %s; holding", t)
            return self.hold("nonfinite_action")
        reasons: list[str] = []
        cmd = np.clip(t, self.low, self.high)
        if not np.array_equal(cmd, t):
            self._note(reasons, "action_bounds")
        self._last = cmd.tolist()
        return SafetyResult(cmd, reasons)


class GymRobot(Robot):
    """The mapped env as a runtime ``Robot``: ``write(a)`` steps it once. ``read()`` carries the last command
    sent (at first the hold action) in ``RobotState.ee_pose`` with an empty ``gripper``: the controller takes
    its start target and first action history from the robot state; the observations the policy sees come
    from ``GymSensor`` channels (one per mapped key), which the controller puts over the robot's keys.
    Each step's info (and whether the env ended the episode) is recorded into ``outcome`` if given."""

    name = "gym_robot"

    def __init__(self, env: GymAdapter, now: Callable[[], float], outcome: EpisodeOutcome | None = None):
        super().__init__(now)
        self.env, self.outcome = env, outcome
        self.dt = 1.0 / env.cfg.control_hz
        self.frame_time = -math.inf
        self.command = env.hold_action.copy()
        self.info: dict[str, Any] = {}
        self.stopped = self.ended = False

    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, self.info = self.env.reset(seed=seed)
        self.frame_time, self.command = self.now(), self.env.hold_action.copy()
        self.stopped = self.ended = False
        return obs, self.info

    def connect(self) -> None:
        if self.env.last_obs is None:
            self.reset()
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(self) -> RobotState:
        if not self.connected:
            raise DriverError(f"{self.name}: not connected")
        return RobotState(self.command.copy(), np.zeros(0), self.now())

    def write(self, target: np.ndarray) -> np.ndarray:
        if self.stopped or self.ended:
            raise DriverError(f"{self.name}: {'stopped' if self.stopped else 'the episode ended'}, refusing commands")
        t = self.now()
        _, _, terminated, truncated, self.info = self.env.step(target)
        self.command, self.frame_time, self.ended = self.info["action"], t + self.dt, terminated or truncated
        if self.outcome is not None:
            self.outcome.record(self.info, self.env.last_obs, self.ended)
        return self.command.copy()

    def stop(self) -> None:
        self.stopped = True

    def frame(self, key: str) -> CameraFrame:
        if not self.connected or self.env.last_obs is None:
            raise DriverError(f"{self.name}: not connected")
        return CameraFrame(self.env.last_obs[key], min(self.frame_time, self.now()))


class GymSensor(FrameCamera):
    """One mapped observation key (an image or a vector) of a ``GymRobot``, read like a camera."""

    def __init__(self, robot: GymRobot, key: str):
        super().__init__(robot, key, name=f"gym_sensor[{key}]")


def check_policy_fits(env: GymAdapter, obs_keys: tuple[str, ...], action_dim: int,
                      lowdim_dims: Mapping[str, int] | None = None) -> None:
    """ValueError naming what differs between a policy and the mapped env (keys, action and vector dims)."""
    needed = [k for k in obs_keys if k != keys.ACTION_HISTORY]
    missing = [k for k in needed if k not in env.observation_space.spaces]
    need(not missing, f"gym.obs: the policy needs {missing}, which the mapping does not provide "
          f"(mapped: {sorted(env.observation_space.spaces)})")
    need(action_dim == env.action_dim, f"gym.action: the policy predicts {action_dim}-D actions, the mapped env "
          f"takes {env.action_dim}-D")
    for k, d in (lowdim_dims or {}).items():
        found = env.observation_space[k].shape[0]
        need(found == d, f"gym.obs.{k}: the policy expects {d} values, the mapping gives {found}")


def gym_drivers(env: GymAdapter, policy: Any, safety: SafetyConfig, now: Callable[[], float],
                outcome: EpisodeOutcome) -> tuple[GymRobot, dict[str, GymSensor], BoxSafety]:
    """Robot (recording into ``outcome``), sensors (the mapped keys the policy reads) and safety layer for one
    evaluation episode."""
    check_policy_fits(env, tuple(policy.obs_keys), int(policy.action_dim))
    robot = GymRobot(env, now, outcome)
    sensors = {k: GymSensor(robot, k) for k in policy.obs_keys if k in env.observation_space.spaces}
    box = BoxSafety(safety, 1.0 / env.cfg.control_hz, env.low, env.high, env.hold_action, env.cfg.action.on_hold)
    return robot, sensors, box


def check_gym_eval(cfg: GymConfig, checkpoint: str, safety: SafetyConfig) -> dict[str, Any]:
    """Build the mapped env once and check that the checkpoint's policy fits it (ValueError naming what
    differs); returns the safety that evaluation applies, for eval.json."""
    from policy.loader import load_config
    from policy.window import obs_keys
    from sim.gym_adapter import make_gym_env

    p = load_config(checkpoint).policy
    env = make_gym_env(cfg, p.image_shape)
    try:
        check_policy_fits(env, obs_keys(p), p.action_dim, p.lowdim_dims)
        return {"mode": "action_bounds", "low": env.low.tolist(), "high": env.high.tolist(),
                "on_hold": cfg.action.on_hold, "stale_hold_s": safety.stale_hold_s, "stale_stop_s": safety.stale_stop_s}
    finally:
        env.close()
