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

import enum
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from policy import keys
from policy.config_utils import need
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim import scene
from sim.motion import (
    Hand,
    Move,
    Tremor,
    Wait,
    draw,
    hand_target,
    maybe_pause,
    vary_speed,
    wait_tick,
    wrap_angle,
    yaw_of,
)
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


class Cue(enum.Enum):
    """Plan steps without arguments: a decision taken when the step is reached."""

    DESCEND = "descend"  # plan the way down onto the cube where it is now
    PLACE = "place"  # plan the lift, carry and release
    CHECK = "check"  # after the lift: is the cube between the fingers? if not, retry
    REPLAN = "replan"  # plan the pick again (after a retry's back-off)
    FINISH = "finish"  # done: hold still


@dataclass(frozen=True)
class Grip:
    """Command gripper width ``width`` m (takes no tick)."""

    width: float


@dataclass(frozen=True)
class Close:
    """Wait for the closing fingers to stop (on the cube); ``ticks`` spent so far."""

    ticks: int = 0


Step = Wait | Move | Grip | Close | Cue
CLOSE_MIN_TICKS, CLOSE_MAX_TICKS = 3, 12  # the fingers count as stopped after 3 ticks at the earliest, 12 at the latest
CLOSE_STILL = 2e-4  # m per tick: the fingers have stopped


class PickPlaceDemonstrator:
    """``reset(seed)`` after ``env.reset``, then ``act(obs)`` each step; ``done`` once it has let go and
    backed off (it then holds still). ``plan`` is the list of steps still to execute."""

    def __init__(self, env: Any, cfg: DemoConfig | None = None, dt: float | None = None):
        self.env: PickPlaceEnv = env.unwrapped
        self.cfg = cfg or DemoConfig()
        self.dt = dt if dt is not None else 1.0 / self.env.cfg.control_hz
        self.rng = np.random.default_rng()
        self.plan: list[Step] = []
        self.done = False

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode from the env's current (just reset) state."""
        c = self.cfg
        self.rng = np.random.default_rng(seed)
        pose = self.env.ee_pose()
        self.hand = Hand(pose[LAYOUT.position].copy(), yaw_of(pose), c.accel, c.rot_speed, self.dt)
        self.width = self._last_width = self.env.gripper_width()
        self.tremor = Tremor(c.tremor, (1.0, 1.0, 0.5))
        self.retries = 0
        self.done = False
        self.plan = []
        self._pause(0.5)
        self._plan_pick()

    @property
    def pos(self) -> np.ndarray:
        """(3,) commanded TCP position (m), without the tremor."""
        return self.hand.pos

    # ---------------------------------------------------------------- planning

    def _u(self, lohi: tuple[float, float]) -> float:
        return draw(self.rng, lohi)

    def _pause(self, prob: float | None = None, now: bool = False) -> None:
        """With probability ``prob`` (default ``pause_prob``) wait a few ticks: at the end of the plan, or
        before anything else when ``now``."""
        maybe_pause(self.rng, self.plan, self.cfg.pause_prob if prob is None else prob, self.cfg.pause_ticks, now)

    def _move(self, pos, yaw: float | None = None, speed: float | None = None) -> None:
        self.plan.append(Move(np.asarray(pos, float), speed or self._u(self.cfg.speed), yaw))

    def _grasp_yaw(self, cube_yaw: float) -> float:
        """The grasp yaw nearest the commanded one among the cube's face normals (or the other axis)."""
        options = sorted((cube_yaw + k * math.pi / 2 for k in range(-3, 4)),
                         key=lambda y: abs(wrap_angle(y - self.hand.yaw)))
        options = [y for y in options if abs(y) <= math.pi / 2 + 1e-6]
        return options[1] if len(options) > 1 and self.rng.random() < self.cfg.other_axis_prob else options[0]

    def _plan_pick(self) -> None:
        c = self.cfg
        cube, cube_yaw = self.env.cube_pose()
        yaw = self._grasp_yaw(cube_yaw)
        width = self._u(c.open_width)
        self.plan.append(Grip(width))
        above = np.array([cube[0], cube[1], self._u(c.approach_height)])
        if self.rng.random() < c.detour_prob:
            mid = 0.5 * (self.pos + above)
            via = mid + self.rng.uniform(-c.detour, c.detour, 3) * np.array([1.0, 1.0, 0.0])
            via[2] = max(mid[2], above[2]) + self.rng.uniform(0, c.detour)
            self._move(via, None)
            self._pause(0.15)
        self._move(above, yaw)
        self._pause()
        self.plan.append(Cue.DESCEND)

    def _plan_place(self) -> None:
        c, rng = self.cfg, self.rng
        bin_pos = self.env.bin_pos
        carry = self._u(c.carry_height)
        self._move([self.pos[0], self.pos[1], carry], None, 0.8 * self._u(c.speed))
        self.plan.append(Cue.CHECK)
        self._pause(0.2)
        release = bin_pos[:2] + rng.uniform(-c.release_offset, c.release_offset, 2)
        self._move([release[0], release[1], carry], None)
        self._pause()
        self._move([release[0], release[1], self._u(c.release_height)], None, 0.7 * self._u(c.speed))
        self.plan.append(Grip(self._u(c.open_width)))
        self.plan.append(Wait(int(rng.integers(3, 6))))
        self._move([release[0], release[1], carry + rng.uniform(0.0, 0.05)], None)
        self.plan.append(Cue.FINISH)

    def _retry(self) -> None:
        """The cube is not in the hand: open, back off upward, plan the pick again (or give up)."""
        c = self.cfg
        self.plan = [Grip(self._u(c.open_width)), Wait(3)]
        self.plan.append(Move(np.array([self.pos[0], self.pos[1], self._u(c.approach_height)]), self._u(c.speed)))
        self.retries += 1
        self.plan.append(Cue.FINISH if self.retries > c.max_retries else Cue.REPLAN)

    def _descend(self) -> list[Step]:
        """The way down onto the cube where it is now: fast to just above it, slow onto it, close."""
        cube, _ = self.env.cube_pose()
        grasp = np.array([cube[0], cube[1], cube[2] + self._u(self.cfg.grasp_offset)])
        slow = grasp + np.array([0.0, 0.0, self._u(self.cfg.fine_height)])
        return [Move(slow, self._u(self.cfg.speed)), Move(grasp, self._u(self.cfg.fine_speed)), Grip(0.0), Close()]

    # ---------------------------------------------------------------- acting

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(10,) float32 absolute target for this tick."""
        measured_width = float(obs[keys.GRIPPER][0])
        fine = False
        while self.plan:
            step = self.plan[0]
            if isinstance(step, Grip):
                self.width = step.width
                self.plan.pop(0)
            elif isinstance(step, Wait):
                if wait_tick(self.plan):
                    break
            elif isinstance(step, Move):
                fine = step.speed <= self.cfg.fine_speed[1]
                if self._step_toward(step):
                    self.plan.pop(0)
                    self._pause(0.1, now=True)
                break
            elif isinstance(step, Close):  # wait until the fingers have stopped (on the cube)
                self.plan[0] = Close(step.ticks + 1)
                fine = True
                if step.ticks >= CLOSE_MAX_TICKS or (step.ticks >= CLOSE_MIN_TICKS
                                                     and abs(measured_width - self._last_width) < CLOSE_STILL):
                    self.plan[0:1] = [Cue.PLACE]
                    self._pause(0.5, now=True)
                    continue
                break
            else:
                self.plan.pop(0)
                self._on_cue(step, measured_width)
        self._last_width = measured_width
        return self._action(fine)

    def _on_cue(self, cue: Cue, measured_width: float) -> None:
        if cue is Cue.DESCEND:
            self.plan[0:0] = self._descend()
        elif cue is Cue.PLACE:
            self._plan_place()
        elif cue is Cue.CHECK:
            cube, _ = self.env.cube_pose()
            if measured_width < 0.5 * self.env.cfg.cube_half or cube[2] < 2 * self.env.cfg.cube_half:
                self._retry()
        elif cue is Cue.REPLAN:
            self._plan_pick()
        elif cue is Cue.FINISH:
            self.done = True

    def _step_toward(self, move: Move) -> bool:
        """Advance the commanded pose one tick toward ``move``'s goal; True once there."""
        c = self.cfg
        cruise = vary_speed(self.rng, move.speed, c.fine_speed[1], c.speed[1], c.speed_change_prob)
        if cruise != move.speed:
            self.plan[0] = replace(move, speed=cruise)
        return self.hand.step_toward(move.goal, cruise, move.yaw)

    def _action(self, fine: bool) -> np.ndarray:
        offset = self.tremor.step(self.rng, 0.3 if fine or self.done else 1.0)
        return hand_target(self.hand, offset, self.width)
