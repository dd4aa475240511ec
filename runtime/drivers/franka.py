"""Franka FR3 / Panda arm and Franka Hand through franky (pip package ``franky-control``, import ``franky``).

Works against a real robot (FCI enabled in Desk) or a ``franky-sim`` server on loopback.

Streaming: every ``write`` sends an absolute Cartesian target as a new asynchronous ``CartesianMotion``
that keeps holding its target (``return_when_finished=False``). franky swaps the running motion for
the new one inside the same 1 kHz control loop, re-planning a jerk-limited trajectory (Ruckig) from
the current state, so a new target every 100 ms gives continuous motion; when targets stop coming, the
arm settles on the last one and holds still. Velocity, acceleration and jerk limits are scaled by
``FrankaConfig.dynamics_factor``.

Poses are franky's ``O_T_EE``: the configured end effector (Desk's end-effector settings; the Franka Hand
TCP by default) in the robot base frame. Gripper commands are asynchronous (``move_async`` /
``grasp_async``) and a background thread keeps the newest measured width, so neither ``read`` nor
``write`` waits on the gripper.

Errors: franky's exceptions (``NetworkException``, ``ControlException`` from a reflex or an aborted
motion, ``CommandException``, and plain ``RuntimeError`` that some network failures surface as) become
a ``DriverError`` naming the robot's IP. The first error is latched: later calls fail fast with the same
message until ``reset()`` (franky's automatic error recovery) succeeds. A lost connection is reported
within ``state_timeout_s`` (the robot's state clock stops advancing) or libfranka's 1 s UDP timeout.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.drivers.base import DriverError, Robot, RobotState, call_with_timeout, check_target
from runtime.rotation import matrix_to_rot6d, rot6d_to_matrix

log = logging.getLogger(__name__)


@dataclass
class FrankaConfig:
    """Settings of one Franka arm (units in the names: m, m/s, N, s)."""

    ip: str  # FCI address of the robot, or the loopback address of a franky-sim server
    dynamics_factor: float = 0.1  # scales franky's velocity/acceleration/jerk limits, (0, 1]
    gripper: bool = True  # False: no Franka Hand (gripper reads echo the last commanded width)
    gripper_min_width_m: float = 0.0
    gripper_max_width_m: float = 0.08
    gripper_speed_mps: float = 0.05
    gripper_deadband_m: float = 0.002  # width changes smaller than this send no new gripper command
    grasp_on_close: bool = True  # closing uses grasp() (holds force on an object), opening uses move()
    grasp_force_n: float = 20.0
    state_timeout_s: float = 0.5  # the robot's state clock not advancing this long = connection lost
    connect_timeout_s: float = 10.0
    enforce_realtime: bool = False  # True on a PREEMPT_RT host: refuse to run without realtime scheduling

    def __post_init__(self) -> None:
        if not isinstance(self.ip, str) or not self.ip.strip() or any(c.isspace() for c in self.ip):
            raise ValueError(f"FrankaConfig.ip must be a non-empty host name or IP address, got {self.ip!r}")
        if not 0.0 < self.dynamics_factor <= 1.0:
            raise ValueError(f"FrankaConfig.dynamics_factor must be in (0, 1], got {self.dynamics_factor}")
        if not 0.0 <= self.gripper_min_width_m < self.gripper_max_width_m <= 0.2:
            raise ValueError("FrankaConfig.gripper_min_width_m/gripper_max_width_m must satisfy "
                             f"0 <= min < max <= 0.2 m, got {self.gripper_min_width_m}, {self.gripper_max_width_m}")
        if not 0.0 < self.gripper_speed_mps <= 0.2:
            raise ValueError(f"FrankaConfig.gripper_speed_mps must be in (0, 0.2] m/s, got {self.gripper_speed_mps}")
        if self.gripper_deadband_m < 0.0:
            raise ValueError(f"FrankaConfig.gripper_deadband_m must be >= 0, got {self.gripper_deadband_m}")
        if not 0.0 < self.grasp_force_n <= 140.0:
            raise ValueError(f"FrankaConfig.grasp_force_n must be in (0, 140] N, got {self.grasp_force_n}")
        for name in ("state_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"FrankaConfig.{name} must be > 0, got {getattr(self, name)}")


def import_franky() -> Any:
    """Import franky lazily; a missing package is a DriverError that names the pip package."""
    try:
        import franky
    except ImportError as exc:
        raise DriverError(f"franka: the franky package is missing ({exc}); "
                          "install it with `pip install franky-control`") from exc
    return franky


FCI_COMMAND_PORT = 1337  # libfranka's fixed TCP command port (the gripper's is 1338)
IN_USE = "the arm may be in use by another client (another controller or Desk)"


def diagnose_no_answer(ip: str, port: int = FCI_COMMAND_PORT, probe_timeout_s: float = 1.0) -> str:
    """Why a franky connect got no answer, from a bare TCP connect to the command port (nothing is sent).

    The FCI serves one client at a time: a second client's TCP connection is accepted by the kernel but
    never answered (franky-sim behaves the same way), so "port open, no answer" points at a busy arm.
    A refused port points at FCI being off; no TCP answer at all at a wrong address or a network problem.
    """
    try:
        with socket.create_connection((ip, port), timeout=probe_timeout_s):
            pass
    except ConnectionRefusedError:
        return f"port {port} refused: FCI not enabled in Desk, or the wrong address; or {IN_USE}"
    except OSError as exc:
        return (f"port {port} does not answer ({type(exc).__name__}): wrong address or network down?; "
                f"or {IN_USE}")
    return (f"port {port} accepts connections but the arm sent no answer: {IN_USE}; stop that client "
            "(or release control in Desk) and retry; otherwise check that FCI is enabled")


def pose_matrix(target: np.ndarray) -> np.ndarray:
    """(>= 9,) position (m) + 6D rotation -> (4, 4) homogeneous transform (rotation re-orthonormalized)."""
    m = np.eye(4)
    m[:3, :3] = rot6d_to_matrix(np.asarray(target[LAYOUT.rotation], dtype=np.float64))
    m[:3, 3] = target[LAYOUT.position]
    return m


def matrix_pose(m: np.ndarray) -> np.ndarray:
    """(4, 4) homogeneous transform -> (9,) position (m) + 6D rotation."""
    m = np.asarray(m, dtype=np.float64)
    return np.concatenate([m[:3, 3], matrix_to_rot6d(m[:3, :3])])


class FrankaRobot(Robot):
    """A Franka arm streamed with absolute Cartesian targets at ~10 Hz, plus the Franka Hand."""

    def __init__(self, config: FrankaConfig, now: Callable[[], float] = time.monotonic):
        super().__init__(now)
        self.config = config
        self.name = f"franka@{config.ip}"
        self._franky: Any = None
        self._robot: Any = None
        self._gripper: Any = None
        self._error: str | None = None  # latched failure message
        self._stopped = False
        self._last_robot_time = -1.0  # the robot's own state clock (s) at the last freshness check
        self._last_change = 0.0  # host time (now()) when that clock last advanced
        self._gripper_future: Any = None
        self._gripper_sent: float | None = None
        self._gripper_width = config.gripper_max_width_m
        self._gripper_error: str | None = None
        self._gripper_lock = threading.Lock()
        self._gripper_halt = threading.Event()
        self._gripper_thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def connect(self) -> None:
        """Connect to the arm (and hand), recovering from errors left over from a previous session."""
        if self.connected:
            return
        franky = import_franky()
        cfg = self.config
        realtime = franky.RealtimeConfig.Enforce if cfg.enforce_realtime else franky.RealtimeConfig.Ignore
        try:
            self._robot = call_with_timeout(
                lambda: franky.Robot(cfg.ip, relative_dynamics_factor=cfg.dynamics_factor, realtime_config=realtime),
                cfg.connect_timeout_s, self.name, lambda: diagnose_no_answer(cfg.ip))
            if self._robot.has_errors:
                log.warning("%s: robot has errors from a previous session, running automatic recovery", self.name)
                self._robot.recover_from_errors()
            if cfg.gripper:
                self._gripper = call_with_timeout(lambda: franky.Gripper(cfg.ip), cfg.connect_timeout_s,
                                                  f"{self.name} gripper",
                                                  lambda: diagnose_no_answer(cfg.ip, FCI_COMMAND_PORT + 1))
                self._gripper_width = float(self._gripper.width)
        except DriverError:
            self._release()
            raise
        except Exception as exc:
            self._release()
            raise DriverError(f"{self.name}: connect failed: {type(exc).__name__}: {exc}") from exc
        self._franky = franky
        self._error, self._stopped, self._gripper_error = None, False, None
        self._gripper_future, self._gripper_sent = None, None
        self._last_robot_time, self._last_change = -1.0, self.now()
        if self._gripper is not None:
            self._gripper_halt.clear()
            self._gripper_thread = threading.Thread(target=self._gripper_loop, name=f"{self.name} gripper",
                                                    daemon=True)
            self._gripper_thread.start()
        self.connected = True

    def close(self) -> None:
        """Stop motion, end the gripper monitor and drop the connections (idempotent)."""
        try:
            self.stop()
        finally:
            self._release()
            self.connected = False

    def _release(self) -> None:
        self._gripper_halt.set()
        if self._gripper_thread is not None:
            self._gripper_thread.join(timeout=2.0)  # a blocked width read ends by libfranka's 1 s UDP timeout
        self._gripper_thread = None
        self._robot, self._gripper, self._gripper_future = None, None, None

    # ----------------------------------------------------------------- errors
    def _latch(self, what: str, exc: BaseException) -> DriverError:
        """Remember the first failure and build the DriverError to raise."""
        franky = self._franky
        hint = "connection lost? close() and connect() again"
        if franky is not None and isinstance(exc, franky.ControlException):
            hint = "the robot aborted the motion (reflex or limit violation); call reset() to recover"
        elif franky is not None and isinstance(exc, franky.CommandException):
            hint = "the robot refused the command; call reset() to recover"
        elif "Motion planner failed" in str(exc):  # ruckig inside franky: -111 = synchronization step failed
            hint = ("franky's trajectory planner (ruckig) found no trajectory to the target, a rare numerical "
                    "failure (franky issue #76); the motion stopped; call reset() to resume")
        if self._error is None:
            self._error = f"{self.name}: {what} failed: {type(exc).__name__}: {exc} ({hint})"
        return DriverError(self._error)

    def _require(self) -> Any:
        if not self.connected or self._robot is None:
            raise DriverError(f"{self.name}: not connected")
        if self._error is not None:
            raise DriverError(self._error)
        return self._robot

    def _state(self) -> Any:
        """The newest franky RobotState; DriverError when it cannot be read or has stopped advancing."""
        robot = self._require()
        try:
            state = robot.state  # the control loop's latest state while moving, else one UDP read (<= 1 ms)
        except Exception as exc:
            raise self._latch("reading the robot state", exc) from exc
        t, robot_time = self.now(), float(state.time.to_sec())
        if robot_time != self._last_robot_time:
            self._last_robot_time, self._last_change = robot_time, t
        elif t - self._last_change > self.config.state_timeout_s:
            self._error = (f"{self.name}: robot state has not advanced for {t - self._last_change:.2f} s "
                           f"(state_timeout_s={self.config.state_timeout_s}); connection lost?")
            raise DriverError(self._error)
        return state

    # ----------------------------------------------------------------- read / write / stop
    def read(self) -> RobotState:
        """Measured end-effector pose (9,), gripper width (1,) and joints (7,), stamped at arrival."""
        state = self._state()
        t = self.now()
        if self._gripper_error is not None:
            raise DriverError(self._gripper_error)
        with self._gripper_lock:
            width = self._gripper_width
        return RobotState(matrix_pose(np.asarray(state.O_T_EE.matrix)), np.array([width]), t,
                          np.asarray(state.q, dtype=np.float64).copy())

    def write(self, target: np.ndarray) -> np.ndarray:
        """Send an absolute target (10,) without blocking; returns it with the rotation re-orthonormalized
        and the gripper width clipped to the configured range."""
        target = check_target(target, self.name)
        robot = self._require()
        if self._stopped:
            raise DriverError(f"{self.name}: stopped, refusing commands (call reset() to resume)")
        try:
            robot.poll_motion()  # re-raises what ended the previous motion (reflex, network error)
        except Exception as exc:
            raise self._latch("the running motion", exc) from exc
        self._state()  # fail within state_timeout_s on a dead connection instead of sending blind
        franky = self._franky
        pose = pose_matrix(target)
        motion = franky.CartesianMotion(franky.Affine(pose), franky.ReferenceType.Absolute,
                                        return_when_finished=False)
        try:
            robot.move(motion, asynchronous=True)
        except Exception as exc:
            raise self._latch("sending the Cartesian target", exc) from exc
        width = float(np.clip(target[LAYOUT.width], self.config.gripper_min_width_m, self.config.gripper_max_width_m))
        self._command_gripper(width)
        return np.concatenate([matrix_pose(pose), [width]])

    def stop(self) -> None:
        """Decelerate to a stop within the dynamics limits and end the motion (idempotent, never raises)."""
        self._stopped = True
        robot, franky = self._robot, self._franky
        if robot is None or franky is None:
            return
        try:
            if robot.is_in_control:
                robot.move(franky.CartesianStopMotion(), asynchronous=True)
                robot.join_motion(timeout=2.0)
        except Exception as exc:  # a preempted or failed motion: the hard stop below still runs
            log.debug("%s: stop motion: %s", self.name, exc)
        try:
            robot.stop()
        except Exception as exc:
            log.warning("%s: stop failed (connection lost? the robot stops on its own then): %s", self.name, exc)

    def reset(self) -> None:
        """Clear a latched error or a stop: run franky's automatic error recovery, accept commands again.
        A lost connection (robot or gripper) needs close() and connect() instead."""
        if not self.connected or self._robot is None:
            raise DriverError(f"{self.name}: not connected")
        robot = self._robot
        try:
            robot.poll_motion()
        except Exception as exc:  # the error being reset; already reported
            log.info("%s: clearing motion error: %s", self.name, exc)
        try:
            robot.recover_from_errors()
        except Exception as exc:
            raise DriverError(f"{self.name}: error recovery failed: {type(exc).__name__}: {exc} "
                              "(close() and connect() again)") from exc
        if self._gripper is not None and (self._gripper_thread is None or not self._gripper_thread.is_alive()):
            raise DriverError(f"{self.name}: gripper connection lost; close() and connect() again")
        self._error, self._stopped, self._gripper_error, self._gripper_future = None, False, None, None
        self._last_robot_time, self._last_change = -1.0, self.now()

    # ----------------------------------------------------------------- gripper
    def _command_gripper(self, width: float) -> None:
        """Send a width asynchronously unless one is still running or it is within the deadband."""
        gripper, cfg = self._gripper, self.config
        if gripper is None:
            with self._gripper_lock:
                self._gripper_width = width  # no hand: echo the command
            return
        future = self._gripper_future
        if future is not None:
            if not future.wait(0.0):
                return  # still moving; the newest target goes out with a later write
            self._gripper_future = None
            try:
                if not future.get():
                    log.debug("%s: gripper command ended without success (blocked or no object)", self.name)
            except Exception as exc:
                self._gripper_error = f"{self.name}: gripper command failed: {type(exc).__name__}: {exc}"
                raise DriverError(self._gripper_error) from exc
        with self._gripper_lock:
            reference = self._gripper_sent if self._gripper_sent is not None else self._gripper_width
        if self._gripper_sent is not None and abs(width - reference) < cfg.gripper_deadband_m:
            return
        try:
            if cfg.grasp_on_close and width < reference - cfg.gripper_deadband_m:
                # wide epsilons: any final width counts as a grasp, so the hand keeps squeezing the object
                self._gripper_future = gripper.grasp_async(width, cfg.gripper_speed_mps, cfg.grasp_force_n,
                                                           epsilon_inner=1.0, epsilon_outer=1.0)
            else:
                self._gripper_future = gripper.move_async(width, cfg.gripper_speed_mps)
        except Exception as exc:
            self._gripper_error = f"{self.name}: gripper command refused: {type(exc).__name__}: {exc}"
            raise DriverError(self._gripper_error) from exc
        self._gripper_sent = width

    def _gripper_loop(self) -> None:
        """Background thread: keep the newest gripper width so read() never waits on the hand."""
        gripper = self._gripper
        while not self._gripper_halt.is_set():
            try:
                width = float(gripper.width)  # blocks until the next gripper state (releases the GIL)
            except Exception as exc:
                if not self._gripper_halt.is_set():
                    self._gripper_error = (f"{self.name}: gripper state lost: {type(exc).__name__}: {exc} "
                                           "(connection lost?)")
                return
            with self._gripper_lock:
                self._gripper_width = width
            self._gripper_halt.wait(0.01)  # ~100 Hz is plenty for a 10 Hz loop
