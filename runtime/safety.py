"""The safety layer between the action buffer and the robot.

Every command passes ``SafetyLayer.check``: non-finite targets are rejected (hold), positions are
clipped to the workspace box, translational and rotational speed and acceleration are limited per
tick, and the gripper width is clamped to its range. Stale observations make it hold, and stop
when they stay stale. Each intervention carries a reason that is counted and logged. Never ``assert``.

Rejected actions (the robot holds its last command): ``nonfinite_action`` (NaN or inf anywhere) and
``degenerate_rotation`` (a finite 6D rotation that names no rotation: a zero first column, parallel
columns). ``reset`` never moves the target: an arm measured outside the workspace box raises
``OutsideWorkspace`` (the loops refuse to start) instead of commanding a jump into the box.

Every limit has bounds a real arm could need and a value in another unit cannot pass (``max_speed=250``
meant as mm/s fails naming the field and the unit): Franka FR3's Cartesian limits are 1.7-3 m/s,
13 m/s^2, 2.5 rad/s, 25 rad/s^2; UR e-series tool speed limits go up to ~3 m/s.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from policy.config_utils import need
from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.rotation import (
    DegenerateRotation,
    Mat3,
    axis_angle_to_mat3,
    mat3_mul,
    mat3_mul_t,
    mat3_to_axis_angle,
    mat3_to_rot6d,
    rot6d_to_mat3,
)

log = logging.getLogger("runtime.safety")

REJECTED = frozenset({"nonfinite_action", "degenerate_rotation"})  # reasons that refuse an action: the robot holds
RATE_LIMITS = ("speed", "accel", "rot_speed", "rot_accel")  # reasons that slow a target down (rate limits)

# field: (lower bound (exclusive), upper bound (inclusive), unit, the unit a too large value was likely meant in)
LIMIT_BOUNDS: dict[str, tuple[float, float, str, str]] = {
    "max_speed": (0.0, 3.0, "m/s", "mm/s"),
    "max_accel": (0.0, 50.0, "m/s^2", "mm/s^2"),
    "max_rot_speed": (0.0, 2 * math.pi, "rad/s", "deg/s"),
    "max_rot_accel": (0.0, 100.0, "rad/s^2", "deg/s^2"),
    "stale_hold_s": (0.0, 2.0, "s", "ms"),
    "stale_stop_s": (0.0, 10.0, "s", "ms"),
}
WORKSPACE_REACH_M = 3.0  # |workspace_min/max| bound, robot base frame: beyond any arm's reach
GRIPPER_MAX_M = 0.3  # gripper_max bound: the widest parallel grippers open ~0.25 m


def _bounded(name: str, value: float, lo: float, hi: float, unit: str, other_unit: str,
             lo_closed: bool = False) -> None:
    """``value`` in (lo, hi] (or [lo, hi] with ``lo_closed``), else a ValueError naming the field and the unit."""
    ok = (lo <= value if lo_closed else lo < value) and value <= hi  # False for NaN
    hint = f" ({other_unit}? use {unit})" if value > hi else ""
    need(ok, f"safety.{name} must be in {'[' if lo_closed else '('}{lo:g}, {hi:g}] {unit}, got {value!r}{hint}")


class OutsideWorkspace(ValueError):
    """The measured pose is outside the workspace box: starting there would command a jump into it."""


@dataclass
class SafetyConfig:
    """Limits, in SI units. Speeds are per second; the layer converts them with the tick period."""

    workspace_min: tuple[float, float, float] = (-0.8, -0.8, 0.0)  # m, robot base frame
    workspace_max: tuple[float, float, float] = (0.8, 0.8, 0.8)
    max_speed: float = 0.25  # m/s, translational
    max_accel: float = 2.0  # m/s^2
    max_rot_speed: float = 1.0  # rad/s
    max_rot_accel: float = 8.0  # rad/s^2
    gripper_min: float = 0.0  # m
    gripper_max: float = 0.08  # m
    stale_hold_s: float = 0.25  # an observation older than this: hold
    stale_stop_s: float = 1.0  # still stale after this long: stop the run

    def __post_init__(self) -> None:
        need(len(self.workspace_min) == 3 and len(self.workspace_max) == 3,
              "safety.workspace_min and workspace_max must have 3 entries (x, y, z), in m")
        r = WORKSPACE_REACH_M
        for name in ("workspace_min", "workspace_max"):
            for i, v in enumerate(getattr(self, name)):
                _bounded(f"{name}[{i}] ({'xyz'[i]})", v, -r, r, "m", "mm", lo_closed=True)
        need(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)),
              f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max} (m)")
        for name, (lo, hi, unit, other) in LIMIT_BOUNDS.items():
            _bounded(name, getattr(self, name), lo, hi, unit, other)
        _bounded("gripper_max", self.gripper_max, 0.0, GRIPPER_MAX_M, "m", "mm")
        need(0 <= self.gripper_min < self.gripper_max,
              f"safety.gripper_min/max must satisfy 0 <= min < max (m), got {self.gripper_min}, {self.gripper_max}")
        need(self.stale_stop_s > self.stale_hold_s,
              f"safety.stale_stop_s ({self.stale_stop_s}) must exceed stale_hold_s ({self.stale_hold_s})")


@dataclass
class SafetyResult:
    """What to send (``command``), why it differs from the request (``reasons``), and whether to stop."""

    command: np.ndarray
    reasons: list[str] = field(default_factory=list)
    stop: bool = False


class SafetyLayer:
    """Stateful filter: remembers the last command it let through and its velocity.

    Runs once per tick on the control loop: its state is kept as plain floats and numpy is touched
    only at the boundary (one ``tolist`` in, one array out), which keeps it cheap even when the loop
    wakes with cold caches.
    """

    def __init__(self, cfg: SafetyConfig, dt: float):
        need(dt > 0, f"dt must be > 0, got {dt}")
        self.cfg, self.dt = cfg, dt
        self._lo, self._hi = [float(v) for v in cfg.workspace_min], [float(v) for v in cfg.workspace_max]
        self._last: list[float] | None = None  # (10,) last command let through
        self._v = [0.0, 0.0, 0.0]  # m/s of the last command
        self._w = [0.0, 0.0, 0.0]  # rad/s (rotation vector per second) of the last command
        self.counts: Counter[str] = Counter()
        self._stale_since: float | None = None

    @property
    def last(self) -> np.ndarray | None:
        """(10,) the last command let through (None before ``reset``)."""
        return None if self._last is None else np.array(self._last)

    @property
    def velocity(self) -> np.ndarray:
        return np.array(self._v)

    @property
    def rot_velocity(self) -> np.ndarray:
        return np.array(self._w)

    def reset(self, current: np.ndarray) -> list[str]:
        """Start from the robot's measured target (10,): velocity zero, nothing stale.

        The position is never moved: outside the workspace box raises ``OutsideWorkspace`` naming the
        axis, the value and the box (counted as ``start_outside_workspace``). A gripper width outside its
        range is clamped (``gripper_range``, logged: the gripper's own motion, not the arm's). Returns the
        reasons of what was changed.
        """
        cmd = np.asarray(current, dtype=float).reshape(-1).tolist()
        need(len(cmd) == LAYOUT.dim and all(map(math.isfinite, cmd)),
              f"safety.reset needs a finite ({LAYOUT.dim},) target, got {current!r}")
        try:
            rot6d_to_mat3(cmd[LAYOUT.rotation])
        except DegenerateRotation as e:
            raise ValueError(f"safety.reset: the measured rotation {cmd[LAYOUT.rotation]} is unusable: {e}") from e
        out = [f"{axis} = {p:.4f} m is outside [{lo:g}, {hi:g}] m"
               for axis, p, lo, hi in zip("xyz", cmd[LAYOUT.position], self._lo, self._hi) if not lo <= p <= hi]
        if out:
            self.counts["start_outside_workspace"] += 1
            msg = (f"the arm starts outside the workspace box: {'; '.join(out)} (safety.workspace_min "
                   f"{list(self.cfg.workspace_min)}, workspace_max {list(self.cfg.workspace_max)}, robot base frame); "
                   f"refusing to start rather than jump into the box: move the arm inside or widen the box")
            log.error(msg)
            raise OutsideWorkspace(msg)
        reasons: list[str] = []
        self._last = self._clip_static(cmd, reasons)
        if reasons:
            log.warning("start: measured gripper width %.4f m clamped to [%g, %g] m", current[LAYOUT.width],
                        self.cfg.gripper_min, self.cfg.gripper_max)
        self._v, self._w = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self._stale_since = None
        return reasons

    def _note(self, reasons: list[str], reason: str) -> None:
        """Record one intervention: counted always, logged the first time its reason occurs."""
        reasons.append(reason)
        if reason not in self.counts:  # rate limits are routine (INFO); clips and rejections are warnings
            log.log(logging.INFO if reason in RATE_LIMITS else logging.WARNING,
                    "safety: first %r intervention (the rest are counted in the run's metrics)", reason)
        self.counts[reason] += 1

    def _clip_static(self, cmd: list[float], reasons: list[str]) -> list[float]:
        clipped = [min(max(p, lo), hi) for p, lo, hi in zip(cmd[LAYOUT.position], self._lo, self._hi)]
        if clipped != cmd[LAYOUT.position]:
            self._note(reasons, "workspace")
            cmd[LAYOUT.position] = clipped
        g = min(max(cmd[LAYOUT.width], self.cfg.gripper_min), self.cfg.gripper_max)
        if g != cmd[LAYOUT.width]:
            self._note(reasons, "gripper_range")
            cmd[LAYOUT.width] = g
        return cmd

    def hold(self, reason: str | None = None) -> SafetyResult:
        """Repeat the last command with zero velocity (e.g. on an underrun)."""
        if self._last is None:
            raise RuntimeError("SafetyLayer.hold before reset(): no target to hold")
        reasons: list[str] = []
        if reason:
            self._note(reasons, reason)
        self._v, self._w = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        return SafetyResult(np.array(self._last), reasons)

    def check_staleness(self, ages: dict[str, float], now: float) -> SafetyResult | None:
        """``ages``: seconds since each observation source last updated. None when all are fresh."""
        stale = sorted(k for k, age in ages.items() if not math.isfinite(age) or age > self.cfg.stale_hold_s)
        if not stale:
            self._stale_since = None
            return None
        if self._stale_since is None:
            self._stale_since = now
        res = self.hold("stale_" + "+".join(stale))
        if now - self._stale_since + self.cfg.stale_hold_s >= self.cfg.stale_stop_s:
            self._note(res.reasons, "stale_stop")
            res.stop = True
            log.error("observations %s stale for %.2f s: stopping", stale, now - self._stale_since)
        return res

    def check(self, target: np.ndarray) -> SafetyResult:
        """Filter one requested target (10,) into a command that respects every limit."""
        if self._last is None:
            raise RuntimeError("SafetyLayer.check before reset(): call reset(current_target) first")
        if getattr(target, "shape", None) != (LAYOUT.dim,):
            raise ValueError(f"safety: target must have shape ({LAYOUT.dim},), got {getattr(target, 'shape', None)}")
        cmd = target.tolist()
        if not all(map(math.isfinite, cmd)):
            res = self.hold("nonfinite_action")
            log.warning("rejected a non-finite action %s; holding", target)
            return res
        try:
            r_target = rot6d_to_mat3(cmd[LAYOUT.rotation])
        except DegenerateRotation as e:
            res = self.hold("degenerate_rotation")
            log.warning("rejected an action with a degenerate rotation (%s); holding", e)
            return res
        reasons: list[str] = []
        cmd = self._clip_static(cmd, reasons)
        cmd[LAYOUT.position] = self._limit_translation(cmd[LAYOUT.position], reasons)
        cmd[LAYOUT.rotation] = self._limit_rotation(r_target, reasons)
        self._last = cmd
        return SafetyResult(np.array(cmd), reasons)

    def _limit_translation(self, pos: list[float], reasons: list[str]) -> list[float]:
        dt, c, last, pv = self.dt, self.cfg, self._last, self._v
        v = [(pos[i] - last[i]) / dt for i in range(3)]
        dv = [v[i] - pv[i] for i in range(3)]
        dv_norm = math.sqrt(dv[0] * dv[0] + dv[1] * dv[1] + dv[2] * dv[2])
        if dv_norm > c.max_accel * dt:
            k = c.max_accel * dt / dv_norm
            v = [pv[i] + dv[i] * k for i in range(3)]
            self._note(reasons, "accel")
        speed = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        if speed > c.max_speed:
            v = [x * (c.max_speed / speed) for x in v]
            self._note(reasons, "speed")
        self._v = v
        return [last[i] + v[i] * dt for i in range(3)]

    def _limit_rotation(self, r_target: Mat3, reasons: list[str]) -> list[float]:
        """``r_target``: the requested rotation as a row-major 3x3 (``rotation.Mat3``)."""
        dt, c, pw = self.dt, self.cfg, self._w
        r_last = rot6d_to_mat3(self._last[LAYOUT.rotation])
        w = [x / dt for x in mat3_to_axis_angle(mat3_mul_t(r_target, r_last))]  # rad/s, base frame
        dw = [w[i] - pw[i] for i in range(3)]
        dw_norm = math.sqrt(dw[0] * dw[0] + dw[1] * dw[1] + dw[2] * dw[2])
        limited = False
        if dw_norm > c.max_rot_accel * dt:
            k = c.max_rot_accel * dt / dw_norm
            w = [pw[i] + dw[i] * k for i in range(3)]
            self._note(reasons, "rot_accel")
            limited = True
        rate = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
        if rate > c.max_rot_speed:
            w = [x * (c.max_rot_speed / rate) for x in w]
            self._note(reasons, "rot_speed")
            limited = True
        self._w = w
        if not limited:
            return mat3_to_rot6d(r_target)
        return mat3_to_rot6d(mat3_mul(axis_angle_to_mat3(w[0] * dt, w[1] * dt, w[2] * dt), r_last))
