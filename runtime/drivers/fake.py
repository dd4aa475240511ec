"""Pure-Python fakes of the driver interfaces, for the runtime's own tests (no simulator needed)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.drivers.base import Camera, CameraFrame, DriverError, Robot, RobotState

IDENTITY_6D = np.array([1, 0, 0, 0, 1, 0], dtype=np.float64)


class FakeRobot(Robot):
    """Moves a fraction ``tracking`` of the way to the last target on each ``write``; records commands."""

    name = "fake_robot"

    def __init__(self, now: Callable[[], float] = time.monotonic, start_pose: np.ndarray | None = None,
                 tracking: float = 1.0):
        super().__init__(now)
        pose = np.concatenate([np.zeros(3), IDENTITY_6D]) if start_pose is None else np.asarray(start_pose, float)
        self.ee_pose = pose.copy()
        self.gripper = np.array([0.08])
        self.tracking = tracking
        self.sent: list[np.ndarray] = []
        self.stopped = False
        self.fail_reads = False  # set True to make read() raise (a dead connection)

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def read(self) -> RobotState:
        if not self.connected or self.fail_reads:
            raise DriverError(f"{self.name}: not connected")
        return RobotState(self.ee_pose.copy(), self.gripper.copy(), self.now(), np.zeros(7))

    def write(self, target: np.ndarray) -> np.ndarray:
        if not self.connected:
            raise DriverError(f"{self.name}: not connected")
        if self.stopped:
            raise DriverError(f"{self.name}: stopped, refusing commands")
        target = np.asarray(target, dtype=np.float64).copy()
        self.ee_pose[LAYOUT.position] += self.tracking * (target[LAYOUT.position] - self.ee_pose[LAYOUT.position])
        self.ee_pose[LAYOUT.rotation] = target[LAYOUT.rotation]
        self.gripper = target[LAYOUT.gripper].copy()
        self.sent.append(target)
        return target

    def stop(self) -> None:
        self.stopped = True


class FakeCamera(Camera):
    """Returns ``render(t)`` (default: a flat grey image); ``freeze()`` makes it a dead camera whose
    frame stops updating (its timestamp stays old), ``fail()`` makes ``read()`` raise."""

    name = "fake_camera"

    def __init__(self, now: Callable[[], float] = time.monotonic, shape: tuple[int, int] = (96, 96),
                 render: Callable[[float], np.ndarray] | None = None):
        super().__init__(now)
        self.shape = shape
        self.render = render or (lambda t: np.full((*shape, 3), 128, np.uint8))
        self._frozen: CameraFrame | None = None
        self._fail = False

    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def freeze(self) -> None:
        t = self.now()
        self._frozen = CameraFrame(self.render(t), t)

    def fail(self) -> None:
        self._fail = True

    def read(self) -> CameraFrame:
        if not self.connected or self._fail:
            raise DriverError(f"{self.name}: no frames (disconnected)")
        if self._frozen is not None:
            return self._frozen
        t = self.now()
        return CameraFrame(self.render(t), t)
