"""The safety layer between the action buffer and the robot.

Every command passes ``SafetyLayer.check``: non-finite targets are rejected (hold), positions are
clipped to the workspace box, translational and rotational speed and acceleration are limited per
tick, and the gripper width is clamped to its range. Stale observations make it hold, and stop
when they stay stale. Each intervention carries a reason that is counted and logged. Never ``assert``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from runtime.rotation import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

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
        self.lo, self.hi = np.asarray(cfg.workspace_min, float), np.asarray(cfg.workspace_max, float)
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
        clipped = np.clip(cmd[:3], self.lo, self.hi)
        if not np.array_equal(clipped, cmd[:3]):
            self._note(reasons, "workspace")
            cmd[:3] = clipped
        g = float(np.clip(cmd[9], self.cfg.gripper_min, self.cfg.gripper_max))
        if g != cmd[9]:
            self._note(reasons, "gripper_range")
            cmd[9] = g
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
        v = (pos - self.last[:3]) / dt
        dv = v - self.velocity
        dv_norm = float(np.linalg.norm(dv))
        if dv_norm > c.max_accel * dt:
            v = self.velocity + dv * (c.max_accel * dt / dv_norm)
            self._note(reasons, "accel")
        speed = float(np.linalg.norm(v))
        if speed > c.max_speed:
            v = v * (c.max_speed / speed)
            self._note(reasons, "speed")
        self.velocity = v
        return self.last[:3] + v * dt

    def _limit_rotation(self, r6: np.ndarray, reasons: list[str]) -> np.ndarray:
        dt, c = self.dt, self.cfg
        r_last = rot6d_to_matrix(self.last[3:9])
        r_target = rot6d_to_matrix(r6)
        w = matrix_to_axis_angle(r_target @ r_last.T) / dt  # rad/s, in the base frame
        dw = w - self.rot_velocity
        dw_norm = float(np.linalg.norm(dw))
        if dw_norm > c.max_rot_accel * dt:
            w = self.rot_velocity + dw * (c.max_rot_accel * dt / dw_norm)
            self._note(reasons, "rot_accel")
        rate = float(np.linalg.norm(w))
        if rate > c.max_rot_speed:
            w = w * (c.max_rot_speed / rate)
            self._note(reasons, "rot_speed")
        self.rot_velocity = w
        return matrix_to_rot6d(axis_angle_to_matrix(w * dt) @ r_last)
