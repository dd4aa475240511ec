"""Driver interfaces: small abstract classes with ``connect()/close()`` and a context manager.

``read()`` returns data stamped with the arrival time on the driver's clock (``time.monotonic`` for
hardware); ``write(target)`` returns what was actually sent. Targets use the shared action
convention: position (m, 3) + 6D rotation (6) + gripper width (m, 1), robot base frame.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class DriverError(RuntimeError):
    """A device is unreachable, disconnected or refused a command; the message names the device."""


@dataclass
class RobotState:
    """Measured robot state at ``timestamp`` (seconds on the driver's clock)."""

    ee_pose: np.ndarray  # (9,) position (m) + 6D rotation
    gripper: np.ndarray  # (1,) width (m)
    timestamp: float
    joints: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n_joints,) rad


@dataclass
class CameraFrame:
    """Newest color image (H, W, 3) uint8 and its arrival ``timestamp`` on the driver's clock."""

    image: np.ndarray
    timestamp: float


class _Device(ABC):
    """connect/close lifecycle and the context manager shared by robots and cameras."""

    name: str = "device"

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self.now = now  # the time source for timestamps: time.monotonic for hardware
        self.connected = False

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Robot(_Device):
    """An arm with a gripper, commanded by absolute end-effector targets."""

    @abstractmethod
    def read(self) -> RobotState: ...

    @abstractmethod
    def write(self, target: np.ndarray) -> np.ndarray:
        """Command target (10,); returns the (10,) command actually sent."""

    @abstractmethod
    def stop(self) -> None:
        """Stop motion now and hold (idempotent; safe to call from ``finally:``)."""


class Camera(_Device):
    """A color camera; ``read()`` returns the newest frame without waiting for a new one."""

    @abstractmethod
    def read(self) -> CameraFrame: ...
