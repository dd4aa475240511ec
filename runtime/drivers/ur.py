"""Universal Robots arm (CB3 / e-Series) through ur_rtde (pip package ``ur-rtde``; imports ``rtde_control``
and ``rtde_receive``).

Streaming: ``write`` only hands the new absolute target to a background servo thread. That thread runs at
``URConfig.servo_hz`` (125 Hz), moves the commanded pose from where it is now to the new target over
``command_period_s`` (the controller's 100 ms: linear in position, geodesic in rotation), calls ``servoL``
each tick and kicks the RTDE watchdog. When targets stop coming it keeps servoing the last one, so the arm
holds still; if the servo thread itself stops (crash, deadlock, lost link), the watchdog (``setWatchdog``,
``watchdog_hz``) makes the robot's control script stop the arm within ``1 / watchdog_hz`` s.

Poses: UR's TCP pose ``[x, y, z, rx, ry, rz]`` (m, rotation vector in rad) in the robot base frame, with the
TCP configured on the teach pendant, converted to and from position + 6D rotation.

Gripper: UR has none built in. Pass ``gripper_command(width_m)`` (must return quickly, e.g. a socket send to
a Robotiq) and optionally ``gripper_width() -> m``; without them the driver sends nothing and ``read()``
echoes the last commanded width (so the action history and the measured width agree).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.drivers.base import DriverError, Robot, RobotState, call_with_timeout, check_target
from runtime.rotation import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

log = logging.getLogger(__name__)
UR_NO_ANSWER = "wrong address, remote control mode off, or another RTDE client in control?"

UR_POSITION = slice(0, 3)  # a UR TCP pose (6,): x, y, z (m) ...
UR_ROTVEC = slice(3, 6)  # ... then a rotation vector (rad)


@dataclass
class URConfig:
    """Settings of one UR arm (units in the names: m, s, Hz, m/s^2)."""

    ip: str
    servo_hz: float = 125.0  # servoL rate of the background servo thread
    command_period_s: float = 0.1  # a new target is reached over this time (the controller's period)
    lookahead_time_s: float = 0.1  # servoL smoothing, [0.03, 0.2] s
    gain: float = 300.0  # servoL proportional gain, [100, 2000]
    watchdog_hz: float = 10.0  # the robot stops if the servo thread is silent for 1 / watchdog_hz s
    stop_deceleration_mps2: float = 2.0  # servoStop's tool deceleration
    gripper_min_width_m: float = 0.0
    gripper_max_width_m: float = 0.085  # Robotiq 2F-85
    gripper_deadband_m: float = 0.002  # smaller width changes do not call gripper_command
    state_timeout_s: float = 0.5  # the controller's clock not advancing this long = connection lost
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.ip, str) or not self.ip.strip() or any(c.isspace() for c in self.ip):
            raise ValueError(f"URConfig.ip must be a non-empty host name or IP address, got {self.ip!r}")
        if not 0.0 < self.servo_hz <= 500.0:
            raise ValueError(f"URConfig.servo_hz must be in (0, 500] Hz, got {self.servo_hz}")
        if not 0.0 < self.watchdog_hz < self.servo_hz:
            raise ValueError(f"URConfig.watchdog_hz must be in (0, servo_hz={self.servo_hz}), got {self.watchdog_hz}")
        if not 0.03 <= self.lookahead_time_s <= 0.2:
            raise ValueError(f"URConfig.lookahead_time_s must be in [0.03, 0.2] s, got {self.lookahead_time_s}")
        if not 100.0 <= self.gain <= 2000.0:
            raise ValueError(f"URConfig.gain must be in [100, 2000], got {self.gain}")
        if not 0.0 <= self.gripper_min_width_m < self.gripper_max_width_m:
            raise ValueError("URConfig.gripper_min_width_m/gripper_max_width_m must satisfy 0 <= min < max, got "
                             f"{self.gripper_min_width_m}, {self.gripper_max_width_m}")
        for name in ("command_period_s", "stop_deceleration_mps2", "state_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"URConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.gripper_deadband_m < 0.0:
            raise ValueError(f"URConfig.gripper_deadband_m must be >= 0, got {self.gripper_deadband_m}")


def import_rtde() -> tuple[Any, Any]:
    """Import ur_rtde's modules lazily; a missing package is a DriverError naming the pip package."""
    try:
        import rtde_control
        import rtde_receive
    except ImportError as exc:
        raise DriverError(f"ur: the ur_rtde package is missing ({exc}); install it with `pip install ur-rtde`") from exc
    return rtde_control, rtde_receive


def ur_to_pose(tcp: np.ndarray) -> np.ndarray:
    """UR TCP pose (6,) [x, y, z (m), rotation vector (rad)] -> (9,) position + 6D rotation."""
    tcp = np.asarray(tcp, dtype=np.float64)
    return np.concatenate([tcp[UR_POSITION], matrix_to_rot6d(axis_angle_to_matrix(tcp[UR_ROTVEC]))])


def pose_to_ur(pose: np.ndarray) -> np.ndarray:
    """(>= 9,) position + 6D rotation -> UR TCP pose (6,) (rotation re-orthonormalized)."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.concatenate([pose[LAYOUT.position], matrix_to_axis_angle(rot6d_to_matrix(pose[LAYOUT.rotation]))])


def interpolate_ur(start: np.ndarray, end: np.ndarray, s: float) -> np.ndarray:
    """UR pose (6,) a fraction s (clipped to [0, 1]) of the way from start to end: linear in position,
    along the shortest rotation in orientation."""
    s = float(np.clip(s, 0.0, 1.0))
    r0, r1 = axis_angle_to_matrix(start[UR_ROTVEC]), axis_angle_to_matrix(end[UR_ROTVEC])
    rot = r0 @ axis_angle_to_matrix(s * matrix_to_axis_angle(r0.T @ r1))
    return np.concatenate([start[UR_POSITION] + s * (end[UR_POSITION] - start[UR_POSITION]), matrix_to_axis_angle(rot)])


class URRobot(Robot):
    """A UR arm streamed with absolute end-effector targets through servoL, with an optional gripper."""

    def __init__(self, config: URConfig, now: Callable[[], float] = time.monotonic,
                 gripper_command: Callable[[float], None] | None = None,
                 gripper_width: Callable[[], float] | None = None):
        super().__init__(now)
        self.config = config
        self.name = f"ur@{config.ip}"
        self.gripper_command = gripper_command
        self.gripper_width = gripper_width
        self._control: Any = None  # rtde_control.RTDEControlInterface, used by one thread at a time
        self._receive: Any = None  # rtde_receive.RTDEReceiveInterface
        self._error: str | None = None  # latched failure message
        self._stopped = False
        self._script_running = False
        self._lock = threading.Lock()
        self._segment: tuple[np.ndarray, np.ndarray, float] | None = None  # (start, end, t_start), UR poses
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_width = config.gripper_max_width_m
        self._last_controller_time, self._last_change = -1.0, 0.0

    # ----------------------------------------------------------------- lifecycle
    def connect(self) -> None:
        """Open the RTDE receive and control interfaces (the latter uploads ur_rtde's control script)."""
        if self.connected:
            return
        rtde_control, rtde_receive = import_rtde()
        try:
            self._receive = call_with_timeout(lambda: rtde_receive.RTDEReceiveInterface(self.config.ip),
                                              self.config.connect_timeout_s, f"{self.name} receive", UR_NO_ANSWER)
            self._control = call_with_timeout(lambda: rtde_control.RTDEControlInterface(self.config.ip),
                                              self.config.connect_timeout_s, f"{self.name} control", UR_NO_ANSWER)
        except DriverError:
            self._disconnect()
            raise
        except Exception as exc:
            self._disconnect()
            raise DriverError(f"{self.name}: connect failed: {type(exc).__name__}: {exc} "
                              "(remote control mode on? address right?)") from exc
        self._script_running, self._error, self._stopped = True, None, False
        self._last_controller_time, self._last_change = -1.0, self.now()
        self.connected = True

    def close(self) -> None:
        """Stop the arm (servoStop, stopScript) and disconnect (idempotent)."""
        try:
            self.stop()
        finally:
            self._disconnect()
            self.connected = False

    def _disconnect(self) -> None:
        for iface in (self._control, self._receive):
            if iface is not None:
                try:
                    iface.disconnect()
                except Exception as exc:
                    log.debug("%s: disconnect: %s", self.name, exc)
        self._control, self._receive = None, None

    def _require(self) -> None:
        if not self.connected or self._receive is None:
            raise DriverError(f"{self.name}: not connected")
        if self._error is not None:
            raise DriverError(self._error)

    def _fail(self, message: str) -> DriverError:
        if self._error is None:
            self._error = f"{self.name}: {message}"
        return DriverError(self._error)

    # ----------------------------------------------------------------- read / write / stop
    def read(self) -> RobotState:
        """Measured TCP pose (9,), gripper width (1,) and joints (6,), stamped at arrival."""
        self._require()
        rcv = self._receive
        try:
            if not rcv.isConnected():
                raise self._fail("RTDE receive connection lost")
            tcp, q, controller_time = rcv.getActualTCPPose(), rcv.getActualQ(), float(rcv.getTimestamp())
        except DriverError:
            raise
        except Exception as exc:
            raise self._fail(f"reading the robot state failed: {type(exc).__name__}: {exc}") from exc
        t = self.now()
        if controller_time != self._last_controller_time:
            self._last_controller_time, self._last_change = controller_time, t
        elif t - self._last_change > self.config.state_timeout_s:
            raise self._fail(f"controller clock has not advanced for {t - self._last_change:.2f} s "
                             f"(state_timeout_s={self.config.state_timeout_s}); connection lost?")
        width = self._last_width
        if self.gripper_width is not None:
            try:
                width = float(self.gripper_width())
            except Exception as exc:
                raise self._fail(f"reading the gripper failed: {type(exc).__name__}: {exc}") from exc
        return RobotState(ur_to_pose(np.asarray(tcp)), np.array([width]), t, np.asarray(q, dtype=np.float64))

    def write(self, target: np.ndarray) -> np.ndarray:
        """Hand an absolute target (10,) to the servo thread; returns it with the rotation re-orthonormalized
        and the gripper width clipped to the configured range."""
        target = check_target(target, self.name)
        self._require()
        if self._stopped or not self._script_running:
            raise DriverError(f"{self.name}: stopped, refusing commands (call reset() to resume)")
        try:
            if self._receive.isProtectiveStopped() or self._receive.isEmergencyStopped():
                raise self._fail("refused: the robot is in a protective or emergency stop "
                                 "(clear it on the pendant, then reset())")
        except DriverError:
            raise
        except Exception as exc:
            raise self._fail(f"reading the safety status failed: {type(exc).__name__}: {exc}") from exc
        goal = pose_to_ur(target)
        if self._segment is None:  # first target since connect/reset: start from where the arm is
            try:
                actual = np.asarray(self._receive.getActualTCPPose(), dtype=np.float64)
            except Exception as exc:
                raise self._fail(f"reading the TCP pose failed: {type(exc).__name__}: {exc}") from exc
            self._segment = (actual, actual, time.monotonic())
        now = time.monotonic()
        with self._lock:
            self._segment = (self._commanded(now), goal, now)
        if self._thread is None:
            self._start_servo()
        width = float(np.clip(target[LAYOUT.width], self.config.gripper_min_width_m, self.config.gripper_max_width_m))
        if abs(width - self._last_width) >= self.config.gripper_deadband_m:
            if self.gripper_command is not None:
                try:
                    self.gripper_command(width)
                except Exception as exc:
                    raise self._fail(f"gripper command failed: {type(exc).__name__}: {exc}") from exc
            self._last_width = width
        return np.concatenate([ur_to_pose(goal), [width]])

    def stop(self) -> None:
        """End servoing, decelerate (servoStop) and terminate the control script (stopScript), in that order.
        Idempotent; logs instead of raising so it is safe in ``finally:``."""
        self._stopped = True
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # no servoL may race the stop commands below
            self._thread = None
        control = self._control
        if control is None or not self._script_running:
            return
        self._script_running = False
        for what, call in (("servoStop", lambda: control.servoStop(self.config.stop_deceleration_mps2)),
                           ("stopScript", control.stopScript)):
            try:
                call()
            except Exception as exc:
                log.warning("%s: %s failed (the watchdog stops the arm anyway): %s", self.name, what, exc)

    def reset(self) -> None:
        """Clear a latched error or a stop: reconnect if needed, re-upload the control script."""
        if not self.connected or self._control is None:
            raise DriverError(f"{self.name}: not connected")
        self.stop()
        try:
            if not self._control.isConnected():
                self._control.reconnect()
            if not self._receive.isConnected():
                self._receive.reconnect()
            self._control.reuploadScript()
        except Exception as exc:
            raise DriverError(f"{self.name}: reset failed: {type(exc).__name__}: {exc}") from exc
        self._script_running, self._error, self._stopped, self._segment = True, None, False, None
        self._last_controller_time, self._last_change = -1.0, self.now()

    # ----------------------------------------------------------------- servo thread
    def _commanded(self, now: float) -> np.ndarray:
        """The interpolated UR pose (6,) the servo thread commands at time now (call with the lock held)."""
        start, end, t_start = self._segment
        return interpolate_ur(start, end, (now - t_start) / self.config.command_period_s)

    def _start_servo(self) -> None:
        try:
            if not self._control.setWatchdog(self.config.watchdog_hz):
                raise RuntimeError("setWatchdog returned False")
        except Exception as exc:
            raise self._fail(f"enabling the RTDE watchdog failed: {type(exc).__name__}: {exc}") from exc
        self._halt.clear()
        self._thread = threading.Thread(target=self._servo_loop, name=f"{self.name} servo", daemon=True)
        self._thread.start()

    def _servo_loop(self) -> None:
        """servoL the interpolated target and kick the watchdog every 1 / servo_hz s on absolute deadlines."""
        cfg, control = self.config, self._control
        period = 1.0 / cfg.servo_hz
        deadline = time.monotonic()
        while not self._halt.is_set():
            with self._lock:
                pose = self._commanded(time.monotonic())
            try:
                accepted = control.servoL(pose.tolist(), 0.0, 0.0, period, cfg.lookahead_time_s, cfg.gain)
                control.kickWatchdog()
            except Exception as exc:
                self._fail(f"servoL failed: {type(exc).__name__}: {exc} (connection lost?)")
                return
            if not accepted:
                self._fail("servoL was refused (control script stopped, protective stop or limit?)")
                return
            deadline += period
            delay = deadline - time.monotonic()
            if delay < 0.0:
                deadline = time.monotonic()  # overran: restart the schedule instead of bursting
            elif self._halt.wait(delay):
                return
