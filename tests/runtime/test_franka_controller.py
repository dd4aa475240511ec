"""The controller driving a Franka FR3 over the real libfranka protocol (franky-sim on loopback).

Follows a commanded chunk, holds when the command stream stalls, and stops cleanly with a clear
error when the simulator dies mid-run. Tolerances are loose on purpose: the simulator runs in real
time on a shared 2-core machine.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.clock import WallClock
from runtime.controller import Controller, ControllerConfig, ControllerError
from runtime.inference import ThreadedWorker
from runtime.safety import SafetyConfig, SafetyLayer

STEP = 0.003  # m of x per tick
LENGTH = 0.05  # m, the commanded line


class LinePolicy:
    """Targets along +x from the first observed pose, STEP per tick, LENGTH at most; ``stall_after`` calls
    then block (an inference that never returns)."""

    n_obs_steps, chunk_len, action_dim = 2, 16, 10
    obs_keys = ("ee_pose", "gripper", "action_history")

    def __init__(self, stall_after: int | None = None):
        self.start: np.ndarray | None = None
        self.t0 = time.monotonic()
        self.calls = 0
        self.stall_after = stall_after
        self.release = threading.Event()

    def predict_chunk(self, window):
        self.calls += 1
        if self.stall_after is not None and self.calls > self.stall_after:
            self.release.wait(30)
        if self.start is None:
            self.start = np.concatenate([window["ee_pose"][-1], window["gripper"][-1]]).astype(np.float64)
        k = round((time.monotonic() - self.t0) / 0.1)
        chunk = np.repeat(self.start[None], self.chunk_len, axis=0)
        chunk[:, 0] += np.minimum(STEP * (k + np.arange(self.chunk_len)), LENGTH)
        return chunk


def _controller(franka_sim, policy):
    from runtime.drivers.franka import FrankaConfig, FrankaRobot

    clock = WallClock()
    robot = FrankaRobot(FrankaConfig(ip=franka_sim.ip), now=clock.now)
    robot.connect()
    worker = ThreadedWorker(policy, clock)
    safety = SafetyLayer(SafetyConfig(workspace_min=(-1, -1, -0.2), workspace_max=(1, 1, 1.2)), 0.1)
    return Controller(robot, {}, worker, safety, clock, ControllerConfig(keep_trace=True)), robot, worker


def _run(franka_sim, policy_factory, duration_s: float, after_run):
    """A fresh policy and controller run for ``duration_s``; -> (policy, metrics, ``after_run(robot)``).

    franky's own planner (ruckig) rarely fails to synchronize a trajectory (error -111, franky issue #76;
    CI hit it in two of these tests, under load). The driver stops and names it; a run that hit it is
    run once more on a reconnected arm (connect() recovers), a second time fails the test.
    """
    for attempt in range(2):
        policy = policy_factory()
        ctrl, robot, worker = _controller(franka_sim, policy)
        try:
            m = ctrl.run(duration_s=duration_s)
            return policy, m, after_run(robot)
        except ControllerError as e:
            if attempt == 0 and "Motion planner failed" in str(e):
                assert "franky issue #76" in str(e)
                continue
            raise
        finally:
            policy.release.set()
            worker.close()
            robot.close()


def test_arm_follows_a_commanded_chunk(franka_sim):
    # the line takes ~1.8 s; the rest holds its end
    policy, m, end = _run(franka_sim, LinePolicy, 4.5, lambda robot: robot.read().ee_pose)
    assert m.stop_reason == "completed" and m.chunks_received >= 2 and m.inference_failures == 0
    moved = end[:3] - policy.start[:3]
    assert moved[0] == pytest.approx(LENGTH, abs=0.003)  # reached the end of the line
    assert np.abs(moved[1:]).max() < 0.003  # and stayed on it


def test_stalled_command_stream_holds_the_arm(franka_sim):
    def still(robot):
        a = robot.read().ee_pose[:3]  # right after the run (robot.stop() only decelerates a still arm)
        time.sleep(0.2)
        return a, robot.read().ee_pose[:3]

    # the second inference never returns
    _, m, (a, b) = _run(franka_sim, lambda: LinePolicy(stall_after=1), 3.5, still)
    holds = [r for r in m.trace if r.source == "hold"]
    assert m.underruns > 0 and len(holds) == m.underruns
    assert all(np.array_equal(h.command, holds[0].command) for h in holds)  # one held target
    assert np.linalg.norm(b - a) < 0.001  # holding still
    assert np.linalg.norm(a - holds[0].command[:3]) < 0.003  # where it was told to hold


def test_simulator_dying_mid_run_stops_the_controller_with_a_clear_error(franka_sim):
    policy = LinePolicy()
    ctrl, robot, worker = _controller(franka_sim, policy)
    killer = threading.Timer(1.5, franka_sim.kill)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ControllerError, match=franka_sim.ip.replace(".", r"\.")):
            ctrl.run(duration_s=30.0)
    finally:
        killer.cancel()
        worker.close()
        robot.close()
    assert ctrl.metrics.stop_reason == "driver_error"
    assert time.monotonic() - t0 < 15.0  # it did not hang until the end of the run
