"""Dry run: commands go to the log, never to the robot."""

from __future__ import annotations

import json

import numpy as np

from runtime.drivers.dry_run import DryRunRobot
from runtime.drivers.fake import FakeRobot


def test_dry_run_logs_commands_and_moves_nothing(tmp_path):
    robot = FakeRobot()
    with DryRunRobot(robot, tmp_path / "cmds.jsonl") as dry:
        before = dry.read().ee_pose.copy()
        target = np.array([0.5, 0.1, 0.2, 1, 0, 0, 0, 1, 0, 0.02])
        np.testing.assert_array_equal(dry.write(target), target)
        dry.write(target + 0.01)
        np.testing.assert_array_equal(dry.read().ee_pose, before)  # the arm did not move
        dry.stop()
    assert robot.sent == [] and robot.stopped and not robot.connected
    lines = [json.loads(line) for line in (tmp_path / "cmds.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["command"] == target.tolist()
