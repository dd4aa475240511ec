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

from runtime.rotation import (
    axis_angle_to_mat3,
    mat3_mul,
    mat3_mul_t,
    mat3_to_axis_angle,
    mat3_to_rot6d,
    rot6d_to_mat3,
)

log = logging.getLogger("runtime.safety")

ACTION_DIM = 10


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


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
        _need(len(self.workspace_min) == 3 and len(self.workspace_max) == 3,
              "safety.workspace_min and workspace_max must have 3 entries (x, y, z)")
        _need(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)),
              f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        for name in ("max_speed", "max_accel", "max_rot_speed", "max_rot_accel", "stale_hold_s"):
            _need(getattr(self, name) > 0, f"safety.{name} must be > 0, got {getattr(self, name)}")
        _need(0 <= self.gripper_min < self.gripper_max,
              f"safety.gripper_min/max must satisfy 0 <= min < max, got {self.gripper_min}, {self.gripper_max}")
        _need(self.stale_stop_s > self.stale_hold_s,
              f"safety.stale_stop_s ({self.stale_stop_s}) must exceed stale_hold_s ({self.stale_hold_s})")


@dataclass
class SafetyResult:
    """What to send (``command``), why it differs from the request (``reasons``), and whether to stop."""

    command: np.ndarray
    reasons: list[str] = field(default_factory=list)
    stop: bool = False


class SafetyLayer:
    """Stateful filter: remembers the last command it let through and its velocity."""

    def __init__(self, cfg: SafetyConfig, dt: float):
        _need(dt > 0, f"dt must be > 0, got {dt}")
        self.cfg, self.dt = cfg, dt
        self._lo, self._hi = [float(v) for v in cfg.workspace_min], [float(v) for v in cfg.workspace_max]
        self.last: np.ndarray | None = None  # (10,) last command let through
        self.velocity = np.zeros(3)  # m/s of the last command
        self.rot_velocity = np.zeros(3)  # rad/s (rotation vector per second) of the last command
        self.counts: Counter[str] = Counter()
        self._stale_since: float | None = None

    def reset(self, current: np.ndarray) -> None:
        """Start from the robot's current target (10,): velocity zero, nothing stale."""
        self.last = self._clip_static(np.asarray(current, float).copy(), [])
        self.velocity[:] = 0
        self.rot_velocity[:] = 0
        self._stale_since = None

    def _note(self, reasons: list[str], reason: str) -> None:
        reasons.append(reason)
        self.counts[reason] += 1

    def _clip_static(self, cmd: np.ndarray, reasons: list[str]) -> np.ndarray:
        pos = cmd[:3].tolist()
        clipped = [min(max(p, lo), hi) for p, lo, hi in zip(pos, self._lo, self._hi)]
        if clipped != pos:
            self._note(reasons, "workspace")
            cmd[:3] = clipped
        g = float(cmd[9])
        g_clipped = min(max(g, self.cfg.gripper_min), self.cfg.gripper_max)
        if g_clipped != g:
            self._note(reasons, "gripper_range")
            cmd[9] = g_clipped
        return cmd

    def hold(self, reason: str | None = None) -> SafetyResult:
        """Repeat the last command with zero velocity (e.g. on an underrun)."""
        if self.last is None:
            raise RuntimeError("SafetyLayer.hold before reset(): no target to hold")
        reasons: list[str] = []
        if reason:
            self._note(reasons, reason)
        self.velocity[:] = 0
        self.rot_velocity[:] = 0
        return SafetyResult(self.last.copy(), reasons)

    def check_staleness(self, ages: dict[str, float], now: float) -> SafetyResult | None:
        """``ages``: seconds since each observation source last updated. None when all are fresh."""
        stale = sorted(k for k, age in ages.items() if not np.isfinite(age) or age > self.cfg.stale_hold_s)
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
        if self.last is None:
            raise RuntimeError("SafetyLayer.check before reset(): call reset(current_target) first")
        target = np.asarray(target, dtype=float)
        if target.shape != (ACTION_DIM,):
            raise ValueError(f"safety: target must have shape ({ACTION_DIM},), got {target.shape}")
        if not np.all(np.isfinite(target)):
            res = self.hold("nonfinite_action")
            log.warning("rejected a non-finite action %s; holding", target)
            return res
        reasons: list[str] = []
        cmd = self._clip_static(target.copy(), reasons)
        cmd[:3] = self._limit_translation(cmd[:3], reasons)
        cmd[3:9] = self._limit_rotation(cmd[3:9], reasons)
        self.last = cmd
        if reasons:
            log.debug("safety interventions %s", reasons)
        return SafetyResult(cmd.copy(), reasons)

    def _limit_translation(self, pos: np.ndarray, reasons: list[str]) -> np.ndarray:
        dt, c = self.dt, self.cfg
        last = self.last[:3].tolist()
        v = [(float(p) - q) / dt for p, q in zip(pos, last)]
        pv = self.velocity.tolist()
        dv = [a - b for a, b in zip(v, pv)]
        dv_norm = math.sqrt(sum(x * x for x in dv))
        if dv_norm > c.max_accel * dt:
            k = c.max_accel * dt / dv_norm
            v = [b + x * k for b, x in zip(pv, dv)]
            self._note(reasons, "accel")
        speed = math.sqrt(sum(x * x for x in v))
        if speed > c.max_speed:
            v = [x * (c.max_speed / speed) for x in v]
            self._note(reasons, "speed")
        self.velocity = np.array(v)
        return np.array([q + x * dt for q, x in zip(last, v)])

    def _limit_rotation(self, r6: np.ndarray, reasons: list[str]) -> np.ndarray:
        dt, c = self.dt, self.cfg
        r_last = rot6d_to_mat3(self.last[3:9].tolist())
        r_target = rot6d_to_mat3(r6.tolist())
        w = [x / dt for x in mat3_to_axis_angle(mat3_mul_t(r_target, r_last))]  # rad/s, base frame
        pw = self.rot_velocity.tolist()
        dw = [a - b for a, b in zip(w, pw)]
        dw_norm = math.sqrt(sum(x * x for x in dw))
        limited = False
        if dw_norm > c.max_rot_accel * dt:
            k = c.max_rot_accel * dt / dw_norm
            w = [b + x * k for b, x in zip(pw, dw)]
            self._note(reasons, "rot_accel")
            limited = True
        rate = math.sqrt(sum(x * x for x in w))
        if rate > c.max_rot_speed:
            w = [x * (c.max_rot_speed / rate) for x in w]
            self._note(reasons, "rot_speed")
            limited = True
        self.rot_velocity = np.array(w)
        if not limited:
            return np.array(mat3_to_rot6d(r_target))
        return np.array(mat3_to_rot6d(mat3_mul(axis_angle_to_mat3(*(x * dt for x in w)), r_last)))
