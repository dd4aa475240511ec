"""``DryRunRobot``: reads the real robot, but streams commands to a JSON-lines log instead of moving it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import numpy as np

from runtime.drivers.base import Robot, RobotState


class DryRunRobot(Robot):
    """Wraps a robot: ``read()`` is the robot's, ``write()`` logs the command and sends nothing."""

    def __init__(self, robot: Robot, log_path: str | Path):
        super().__init__(robot.now)
        self.robot = robot
        self.name = f"dry_run({robot.name})"
        self.log_path = Path(log_path)
        self._log: IO[str] | None = None

    def connect(self) -> None:
        self.robot.connect()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a")
        self.connected = True

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.robot.close()
        self.connected = False

    def read(self) -> RobotState:
        return self.robot.read()

    def write(self, target: np.ndarray) -> np.ndarray:
        target = np.asarray(target, dtype=np.float64)
        if self._log is not None:
            self._log.write(json.dumps({"t": self.now(), "command": target.tolist()}) + "\n")
            self._log.flush()
        return target

    def stop(self) -> None:
        """Nothing was sent, so nothing moves; the real robot is told to stop all the same."""
        self.robot.stop()
