"""Motion primitives shared by the scripted demonstrators (``sim.demo``, ``sim.push_t_demo``).

A demonstrator acts like a teleoperator integrating a SpaceMouse: a commanded TCP (``Hand``) moves toward
the current waypoint with a trapezoid-like speed profile (accelerating, cruising, braking) and turns its
yaw at a limited rate, and a small smooth hand ``Tremor`` is added to the commanded position. Its plan is
a list of typed steps executed front to back, one tick at a time: the shared ``Wait`` and ``Move`` here,
and each demonstrator's own steps next to it. All randomness comes from the demonstrator's generator,
passed in, in a fixed order (the demos of a seed must not change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.rotation import matrix_to_rot6d
from sim import scene

SPEED_CHANGE = (0.6, 1.4)  # a random speed change scales the cruise speed by U(lo, hi)


def wrap_angle(angle: float) -> float:
    """``angle`` (rad) wrapped into [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def yaw_rot6d(yaw: float) -> np.ndarray:
    """(6,) top-down TCP orientation rotated by ``yaw`` (rad) about the world z axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return matrix_to_rot6d(rz @ scene.TOP_DOWN)


def yaw_of(pose: np.ndarray) -> float:
    """Yaw (rad) of a top-down pose (9,) = position + 6D rotation, from its first rotation column."""
    column = pose[LAYOUT.rotation]
    return math.atan2(column[1], column[0])


def draw(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    """One uniform draw from the range (lo, hi)."""
    return float(rng.uniform(*lohi))


# ---------------------------------------------------------------- plan steps


@dataclass(frozen=True)
class Wait:
    """Hold still for ``ticks`` more ticks."""

    ticks: int


@dataclass(frozen=True)
class Move:
    """Move the commanded TCP to ``goal`` (3,) m at cruise ``speed`` m/s, turning to ``yaw`` rad (None: keep)."""

    goal: np.ndarray
    speed: float
    yaw: float | None = None


def wait_tick(plan: list) -> bool:
    """One tick of the ``Wait`` at the head of ``plan``: True if the tick is spent waiting, False (and the
    step is removed) once it is over."""
    step = plan[0]
    if step.ticks <= 0:
        plan.pop(0)
        return False
    plan[0] = Wait(step.ticks - 1)
    return True


def maybe_pause(rng: np.random.Generator, plan: list, prob: float, ticks: tuple[int, int], front: bool = False) -> None:
    """With probability ``prob`` a ``Wait`` of U{ticks} ticks: at the end of ``plan``, or first when ``front``."""
    if rng.random() < prob:
        wait = Wait(int(rng.integers(ticks[0], ticks[1] + 1)))
        plan.insert(0 if front else len(plan), wait)


def vary_speed(rng: np.random.Generator, cruise: float, lo: float, hi: float, prob: float) -> float:
    """A cruise speed above ``lo`` changes with probability ``prob`` per tick by U(SPEED_CHANGE), clipped to
    [lo, hi] (m/s); fine moves (at most ``lo``) keep theirs, without a draw."""
    if cruise > lo and rng.random() < prob:
        return float(np.clip(cruise * rng.uniform(*SPEED_CHANGE), lo, hi))
    return cruise


# ---------------------------------------------------------------- hand


@dataclass
class Hand:
    """The commanded TCP: position ``pos`` (3,) m, ``yaw`` rad and path ``speed`` m/s, advanced one control
    period ``dt`` s at a time with acceleration ``accel`` m/s^2 and turn rate ``rot_speed`` rad/s."""

    pos: np.ndarray
    yaw: float
    accel: float
    rot_speed: float
    dt: float
    speed: float = 0.0

    def step_toward(self, goal: np.ndarray, cruise: float, yaw: float | None = None) -> bool:
        """Advance one tick toward ``goal`` (3,) at up to ``cruise`` m/s (and ``yaw``); True once there."""
        delta = goal - self.pos
        dist = float(np.linalg.norm(delta))
        self.speed = min(cruise, self.speed + self.accel * self.dt, math.sqrt(2 * self.accel * dist))
        step = min(self.speed * self.dt, dist)
        if dist > 1e-9:
            self.pos = self.pos + delta * (step / dist)
        yaw_done = True
        if yaw is not None:
            dyaw = wrap_angle(yaw - self.yaw)
            limit = self.rot_speed * self.dt
            turn = float(np.clip(dyaw, -limit, limit))
            self.yaw = wrap_angle(self.yaw + turn)
            yaw_done = abs(dyaw - turn) < 1e-6
        if dist - step < 1e-6 and yaw_done:
            self.speed = 0.0
            return True
        return False


class Tremor:
    """Smooth hand tremor: an AR(1) process per axis with std ``std`` m and correlation ``rho`` per tick,
    weighted per axis by ``weights`` (3,) (e.g. less in z)."""

    def __init__(self, std: float, weights: tuple[float, float, float], rho: float = 0.8):
        self.std, self.rho = std, rho
        self.weights = np.array(weights, dtype=np.float64)
        self.value = np.zeros(3)

    def reset(self) -> None:
        self.value = np.zeros(3)

    def step(self, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """Advance one tick; the (3,) m offset to add to the commanded position, times ``scale``."""
        rho = self.rho
        self.value = rho * self.value + math.sqrt(1 - rho * rho) * self.std * rng.normal(size=3)
        return self.value * scale * self.weights


def hand_target(hand: Hand, offset: np.ndarray, width: float) -> np.ndarray:
    """(10,) float32 absolute target: the hand's position + ``offset`` (3,) m, its yaw, gripper ``width`` m."""
    return LAYOUT.join(hand.pos + offset, yaw_rot6d(hand.yaw), width).astype(np.float32)
