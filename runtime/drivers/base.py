"""Driver interfaces: small abstract classes with ``connect()/close()`` and a context manager.

``read()`` returns data stamped with the arrival time on the driver's clock (``time.monotonic`` for
hardware); ``write(target)`` returns what was actually sent. Targets use the shared action
convention: position (m, 3) + 6D rotation (6) + gripper width (m, 1), robot base frame.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT


class DriverError(RuntimeError):
    """A device is unreachable, disconnected or refused a command; the message names the device."""


def check_target(target: np.ndarray, name: str) -> np.ndarray:
    """(10,) finite float64 copy of an action, else ValueError naming the device."""
    t = np.asarray(target, dtype=np.float64).reshape(-1).copy()
    if t.shape != (LAYOUT.dim,) or not np.all(np.isfinite(t)):
        raise ValueError(f"{name}: target must be {LAYOUT.dim} finite numbers (pos 3, rot6d 6, gripper 1), "
                         f"got {target!r}")
    return t


def call_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str,
                      hint: str | Callable[[], str] = "wrong address or device not answering?") -> Any:
    """Run a blocking call (e.g. a TCP connect) in a daemon thread; DriverError if it takes > timeout_s.

    The error reads ``<what>: no answer within <t> s (<hint>)``; ``hint`` may be a function, called only
    on a timeout, that diagnoses why (e.g. by probing the address).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, name=f"connect {what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise DriverError(f"{what}: no answer within {timeout_s:.1f} s ({hint() if callable(hint) else hint})")
    if "error" in box:
        raise box["error"]
    return box["value"]


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
    """A color camera; ``read()`` returns the newest frame without waiting for a new one.

    A driver whose own thread keeps the newest frame sets ``reads_in_background = True``; the factory
    wraps any other camera in ``runtime.drivers.background.BackgroundCamera`` on the wall clock, so a
    ``read()`` that blocks can never stall the control loop.
    """

    reads_in_background: bool = False

    @abstractmethod
    def read(self) -> CameraFrame: ...
