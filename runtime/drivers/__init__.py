"""Robot and camera drivers: abstract interfaces (``base``), pure-Python fakes for tests (``fake``),
and real hardware (``franka``, ``ur``, ``realsense``; their packages are imported lazily)."""

from runtime.drivers.base import Camera, CameraFrame, DriverError, Robot, RobotState

__all__ = ["Camera", "CameraFrame", "DriverError", "Robot", "RobotState"]
