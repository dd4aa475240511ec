"""What the policy controller (``runtime.controller``) and the teleop loop (``runtime.teleop_loop``) share:
reading the robot and the cameras once per tick, and one way for a run to end.

- ``ObservationReader`` reads the robot state and the newest frame of every camera, with the age of each
  source for the staleness watchdog. A dead camera (a ``DriverError``) keeps its last frame and lets the
  watchdog judge its age; a robot state that is not finite, or a camera plug-in raising anything else,
  is an ``ObservationError`` that ends the run.
- ``guarded_run`` turns whatever ends a run into a stop reason and an error text on the run's status
  (``stop_reason``/``error`` of ``RunMetrics`` or ``TeleopResult``), raises every fault as the loop's
  own ``LoopFault`` subclass (so a caller catches one type), and calls ``robot.stop()`` in ``finally:``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import numpy as np

from policy import keys
from runtime.drivers.base import Camera, CameraFrame, DriverError, Robot, RobotState

log = logging.getLogger("runtime.loop")


class LoopFault(RuntimeError):
    """A run stopped because of a fault; its status names the cause (``stop_reason``, ``error``)."""


class ObservationError(RuntimeError):
    """An observation that cannot be used: a non-finite robot state, a camera plug-in that raised."""


class RunStatus(Protocol):
    stop_reason: str
    error: str | None


def target_from_state(state: RobotState) -> np.ndarray:
    """The action that holds the robot where it is: (10,) = ee_pose (9) + gripper (1)."""
    return np.concatenate([state.ee_pose, state.gripper]).astype(np.float64)


def stop_robot(robot: Robot) -> None:
    """``robot.stop()``; a failure is logged, never raised (it must not mask the error that ended the run)."""
    try:
        robot.stop()
    except Exception as e:  # noqa: BLE001 - stopping must not mask the original error
        log.error("robot.stop() failed: %r", e)


class ObservationReader:
    """Reads ``robot`` and ``cameras`` (observation key -> camera) once per tick; keeps each camera's last frame."""

    def __init__(self, robot: Robot, cameras: Mapping[str, Camera]):
        self.robot, self.cameras = robot, dict(cameras)
        self.frames: dict[str, CameraFrame] = {}

    def read_robot(self) -> RobotState:
        """The robot state; ``ObservationError`` when it is not finite (a ``DriverError`` passes through)."""
        state = self.robot.read()
        if not (np.all(np.isfinite(state.ee_pose)) and np.all(np.isfinite(state.gripper))):
            raise ObservationError(f"robot {self.robot.name}: state is not finite (ee_pose {state.ee_pose}, "
                                   f"gripper {state.gripper})")
        return state

    def read(self, now: float) -> tuple[RobotState, dict[str, float]]:
        """(robot state, seconds since each source updated: ``robot`` and every camera key)."""
        state = self.read_robot()
        ages = {"robot": now - state.timestamp}
        for key, cam in self.cameras.items():
            try:
                self.frames[key] = cam.read()
            except DriverError as e:  # a dead camera: keep its last frame, let the watchdog judge the age
                log.warning("camera %s: %s", key, e)
            except Exception as e:  # noqa: BLE001 - a plug-in bug: end the run naming the camera
                raise ObservationError(f"camera {key} ({cam.name}) raised {type(e).__name__}: {e}") from e
            frame = self.frames.get(key)
            ages[key] = now - frame.timestamp if frame is not None else math.inf
        return state, ages

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """``ee_pose`` (9,) and ``gripper`` (1,) float32 from ``state``, and the newest frame of each camera."""
        obs = {keys.EE_POSE: state.ee_pose.astype(np.float32), keys.GRIPPER: state.gripper.astype(np.float32)}
        for key, frame in self.frames.items():
            obs[key] = frame.image
        return obs


@contextlib.contextmanager
def guarded_run(robot: Robot, status: RunStatus, fault: type[LoopFault], what: str) -> Iterator[None]:
    """Run the body; on the way out set ``status`` and always stop ``robot``.

    ``fault`` (any ``LoopFault``): stop_reason ``fault``, re-raised. ``DriverError``: ``driver_error``,
    raised as ``fault``. ``KeyboardInterrupt``: ``interrupted``, re-raised. Anything else (a bug, a
    plug-in's exception, a bad robot state): ``fault`` with the exception's type and text, raised as
    ``fault`` naming ``what`` stopped.
    """
    try:
        yield
    except LoopFault as e:
        status.stop_reason, status.error = "fault", str(e)
        raise
    except DriverError as e:
        status.stop_reason, status.error = "driver_error", str(e)
        raise fault(f"driver error: {e}") from e
    except KeyboardInterrupt:
        status.stop_reason = "interrupted"
        raise
    except Exception as e:  # noqa: BLE001 - every other exception ends the run cleanly, with its text
        status.stop_reason, status.error = "fault", f"{type(e).__name__}: {e}"
        log.exception("%s stopped by an unexpected error", what)
        raise fault(f"{what} stopped: {type(e).__name__}: {e}") from e
    finally:
        stop_robot(robot)

