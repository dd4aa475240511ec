"""The safety layer between the action buffer and the robot.

Every command passes ``SafetyLayer.check``: non-finite targets are rejected (hold), positions are
clipped to the workspace box, translational and rotational speed and acceleration are limited per
tick, and the gripper width is clamped to its range. Stale observations make it hold, and stop
when they stay stale. Each intervention carries a reason that is counted and logged. Never ``assert``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from policy.config_utils import need
from runtime.rotation import (
    axis_angle_to_mat3,
    mat3_mul,
    mat3_mul_t,
    mat3_to_axis_angle,
    mat3_to_rot6d,
    rot6d_to_mat3,
)

log = logging.getLogger("runtime.safety")

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
              "safety.workspace_min and workspace_max must have 3 entries (x, y, z)")
        need(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)),
              f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        for name in ("max_speed", "max_accel", "max_rot_speed", "max_rot_accel", "stale_hold_s"):
            need(getattr(self, name) > 0, f"safety.{name} must be > 0, got {getattr(self, name)}")
        need(0 <= self.gripper_min < self.gripper_max,
              f"safety.gripper_min/max must satisfy 0 <= min < max, got {self.gripper_min}, {self.gripper_max}")
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

    def reset(self, current: np.ndarray) -> None:
        """Start from the robot's current target (10,): velocity zero, nothing stale."""
        cmd = np.asarray(current, dtype=float).reshape(-1).tolist()
        need(len(cmd) == LAYOUT.dim and all(map(math.isfinite, cmd)),
              f"safety.reset needs a finite ({LAYOUT.dim},) target, got {current!r}")
        self._last = self._clip_static(cmd, [])
        self._v, self._w = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        self._stale_since = None

    def _note(self, reasons: list[str], reason: str) -> None:
        reasons.append(reason)
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
        reasons: list[str] = []
        cmd = self._clip_static(cmd, reasons)
        cmd[LAYOUT.position] = self._limit_translation(cmd[LAYOUT.position], reasons)
        cmd[LAYOUT.rotation] = self._limit_rotation(cmd[LAYOUT.rotation], reasons)
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

    def _limit_rotation(self, r6: list[float], reasons: list[str]) -> list[float]:
        dt, c, pw = self.dt, self.cfg, self._w
        r_last = rot6d_to_mat3(self._last[LAYOUT.rotation])
        r_target = rot6d_to_mat3(r6)
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
