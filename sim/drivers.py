"""The runtime's ``Robot`` and ``Camera`` interfaces on top of one simulated task env.

``SimRobot`` owns (or shares) a ``TableTopEnv``: ``write(target)`` applies the absolute target and steps
the env by one control period; ``read()`` returns the measured TCP pose and width stamped with the
clock's ``now``. ``SimCamera`` returns the robot's last rendered frame of one view. The physics state
after a ``write`` at clock time t is the state at t + dt (the control period), so frames are stamped
t + dt, never later than ``now`` (on a ``SimClock`` the next tick reads them at age 0).

Evaluation gives the robot an ``EpisodeOutcome``: each step's success and score are recorded there, and
its ``stop`` event (the controller's stop event) is set at the first success. ``task_drivers`` builds the
robot, cameras and safety layer of one evaluation episode.

Hydra/``runtime.factory`` plug-in: ``robot: {factory: "sim.drivers:make_sim_robot", task: pick_place,
seed: 0, ...task config}`` and, for each camera, ``{factory: "sim.drivers:make_sim_camera", view:
scene_rgb}``. The cameras find the robot by ``name`` (default ``sim``), so the robot is built first.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy import keys
from runtime.drivers.base import Camera, CameraFrame, DriverError, Robot, RobotState, check_target
from runtime.safety import SafetyConfig, SafetyLayer
from sim.env import TableTopEnv
from sim.report import side_by_side

Now = Callable[[], float]
_ROBOTS: weakref.WeakValueDictionary[str, SimRobot] = weakref.WeakValueDictionary()


@dataclass
class EpisodeOutcome:
    """What an evaluation episode has shown so far: ``steps`` env steps, ``success`` at any of them, the best
    ``score``. ``stop`` (the controller's stop event) is set at the first success or when the env ends the
    episode. With ``frames`` a list, each observation's camera views side by side are kept, (H, n*W, 3)."""

    steps: int = 0
    score: float = 0.0
    success: bool = False
    frames: list[np.ndarray] | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self, info: Mapping[str, Any], obs: Mapping[str, np.ndarray]) -> None:
        """The reset's info and observation (no step counted)."""
        self.score = float(info.get("score", 0.0))
        self._keep(obs)

    def record(self, info: Mapping[str, Any], obs: Mapping[str, np.ndarray], ended: bool = False) -> None:
        """One env step's info and observation; ``ended``: the env ended the episode."""
        self.steps += 1
        self.score = max(self.score, float(info.get("score", 0.0)))
        self.success = self.success or bool(info.get("is_success"))
        if self.success or ended:
            self.stop.set()
        self._keep(obs)

    def _keep(self, obs: Mapping[str, np.ndarray]) -> None:
        if self.frames is not None and (frame := side_by_side(obs)) is not None:
            self.frames.append(frame)


class SimRobot(Robot):
    """A simulated arm: one env step per ``write``. ``info`` holds the last step's info (``is_success``,
    ``score``), also recorded into ``outcome`` if given; ``reset(seed)`` starts a new episode. ``close()``
    closes the env if ``owns_env``."""

    name = "sim_robot"

    def __init__(self, env: TableTopEnv, now: Now = time.monotonic, seed: int | None = None, owns_env: bool = False,
                 outcome: EpisodeOutcome | None = None):
        super().__init__(now)
        self.env, self.seed, self.owns_env, self.outcome = env, seed, owns_env, outcome
        self.dt = 1.0 / env.cfg.control_hz
        self.frame_time = -math.inf  # clock time the last rendered frames show
        self.info: dict[str, Any] = {}
        self.stopped = False

    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the env (a new episode, frames stamped now) and accept commands again."""
        obs, self.info = self.env.reset(seed=seed)
        self.frame_time = self.now()
        self.stopped = False
        return obs, self.info

    def connect(self) -> None:
        """Reset the env with ``seed`` unless it already holds an episode (then its frames count as new)."""
        if self.env.last_obs is None:
            self.reset(self.seed)
        elif self.frame_time == -math.inf:
            self.frame_time = self.now()
        self.connected = True

    def close(self) -> None:
        self.connected = False
        if self.owns_env:
            self.env.close()

    def _require(self) -> dict[str, np.ndarray]:
        obs = self.env.last_obs
        if not self.connected or obs is None:
            raise DriverError(f"{self.name}: not connected")
        return obs

    def read(self) -> RobotState:
        obs = self._require()
        return RobotState(obs[keys.EE_POSE].astype(np.float64), obs[keys.GRIPPER].astype(np.float64), self.now())

    def write(self, target: np.ndarray) -> np.ndarray:
        """Step the env toward ``target`` (10,); returns the target as the env applies it (position in the
        workspace, rotation re-orthonormalized, width in range)."""
        target = check_target(target, self.name)
        self._require()
        if self.stopped:
            raise DriverError(f"{self.name}: stopped, refusing commands (reset() starts a new episode)")
        t = self.now()
        sent = self.env.clip_action(target)
        obs, _, _, _, self.info = self.env.step(sent)
        self.frame_time = t + self.dt
        if self.outcome is not None:
            self.outcome.record(self.info, obs)
        return sent

    def stop(self) -> None:
        self.stopped = True

    def frame(self, view: str) -> CameraFrame:
        """The last rendered image of ``view`` (an observation key) and the time it shows (<= now)."""
        obs = self._require()
        return CameraFrame(obs[view], min(self.frame_time, self.now()))


class FrameCamera(Camera):
    """One observation key of a simulated robot (``robot.frame(key)``: the latest observation), read like a
    camera. The robot steps the env; this only hands on what the step observed."""

    def __init__(self, robot: Any, key: str, now: Now | None = None, name: str | None = None):
        super().__init__(now or robot.now)
        self.robot, self.key = robot, key
        self.name = name or f"frame_camera[{key}]"

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(self) -> CameraFrame:
        if not self.connected:
            raise DriverError(f"{self.name}: not connected")
        return self.robot.frame(self.key)


class SimCamera(FrameCamera):
    """One view (``scene_rgb`` or ``wrist_rgb``) of a ``SimRobot``'s env."""

    def __init__(self, robot: SimRobot, view: str, now: Now | None = None):
        if view not in keys.IMAGE_KEYS:
            raise ValueError(f"view must be one of {keys.IMAGE_KEYS}, got {view!r}")
        super().__init__(robot, view, now, f"sim_camera[{view}]")


def task_drivers(env: TableTopEnv, obs_keys: Collection[str], safety: SafetyConfig, now: Now,
                 outcome: EpisodeOutcome) -> tuple[SimRobot, dict[str, SimCamera], SafetyLayer]:
    """Robot (recording into ``outcome``), the cameras of the views in ``obs_keys`` and the safety layer of one
    evaluation episode on a task env."""
    robot = SimRobot(env, now, outcome=outcome)
    cams = {k: SimCamera(robot, k) for k in keys.IMAGE_KEYS if k in obs_keys}
    return robot, cams, SafetyLayer(safety, 1.0 / env.cfg.control_hz)


def make_sim_robot(params: Mapping[str, Any], now: Now) -> SimRobot:
    """``runtime.factory`` plug-in: ``task`` (default ``pick_place``), ``seed`` (first reset), ``name``
    (for the cameras, default ``sim``); every other key goes to the task's config (unknown keys fail)."""
    from sim.tasks import make_env

    params = dict(params)
    task, seed, name = params.pop("task", "pick_place"), params.pop("seed", None), str(params.pop("name", "sim"))
    robot = SimRobot(make_env(task, params), now, seed=seed, owns_env=True)
    _ROBOTS[name] = robot
    return robot


def make_sim_camera(params: Mapping[str, Any], now: Now) -> SimCamera:
    """``runtime.factory`` plug-in: ``view`` (``scene_rgb`` | ``wrist_rgb``) of the robot named ``robot``
    (default ``sim``), which must have been built first."""
    params = dict(params)
    view, robot_name = params.pop("view", None), str(params.pop("robot", "sim"))
    if params:
        raise ValueError(f"unknown sim camera setting(s) {sorted(params)}; valid: view, robot")
    if view is None:
        raise ValueError(f"sim camera needs 'view' (one of {keys.IMAGE_KEYS})")
    robot = _ROBOTS.get(robot_name)
    if robot is None:
        raise ValueError(f"no sim robot named {robot_name!r}: build the robot (make_sim_robot) before its cameras")
    return SimCamera(robot, view, now)
