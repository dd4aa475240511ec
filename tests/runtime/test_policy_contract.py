"""What the runtime takes from a checkpoint beyond its weights (issue 11, rows 9 and 13): the control rate
of its demos, and the one rule for the action history before the first action is sent."""

from __future__ import annotations

import numpy as np
import pytest

from policy import keys
from policy.action_space import ActionSpace
from policy.data.sampler import WindowSampler
from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.inference import SimulatedLatencyWorker
from runtime.safety import SafetyConfig, SafetyLayer

from .fakes import DT, ScriptedPolicy, Z, x_at

START = np.array([x_at(0), 0.05, Z, 1, 0, 0, 0, 1, 0])


def _controller(policy: ScriptedPolicy, hz: float = 1 / DT, **cfg) -> tuple[Controller, FakeRobot]:
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=START)
    robot.connect()
    cam = FakeCamera(clock.now)
    cam.connect()
    policy.tick_of = lambda: round(clock.now() * hz)
    worker = SimulatedLatencyWorker(policy, clock, 0.0)
    ctrl = Controller(robot, {keys.SCENE_RGB: cam}, worker, SafetyLayer(SafetyConfig(), 1 / hz), clock,
                      ControllerConfig(hz=hz, **cfg))
    return ctrl, robot


class RatedPolicy(ScriptedPolicy):
    def __init__(self, control_hz: float | None, action_space: ActionSpace | None = None):
        super().__init__()
        self.control_hz = control_hz
        if action_space is not None:
            self.action_space = action_space


# ------------------------------------------------------------------ row 9: the checkpoint's control rate


def test_row9_a_checkpoint_at_another_rate_is_refused_unless_allowed():
    with pytest.raises(ValueError, match=r"controller.hz is 20 Hz .* demos at 10 Hz.*allow_rate_mismatch"):
        _controller(RatedPolicy(10.0), hz=20.0)
    ctrl, _ = _controller(RatedPolicy(10.0), hz=20.0, allow_rate_mismatch=True)  # explicit override runs
    assert ctrl.run(max_ticks=5).stop_reason == "completed"


@pytest.mark.parametrize("control_hz", [10.0, 10.1, None])  # the same rate (within 2 %), or unknown
def test_row9_the_same_or_an_unknown_rate_runs(control_hz):
    ctrl, _ = _controller(RatedPolicy(control_hz), hz=10.0)
    assert ctrl.run(max_ticks=5).stop_reason == "completed"


# ------------------------------------------------------------------ row 13: one history pad


def test_row13_absolute_history_starts_with_the_measured_pose_as_training_does():
    policy = RatedPolicy(None)
    ctrl, robot = _controller(policy)
    measured = np.concatenate([START, robot.gripper]).astype(np.float32)  # the arm at the start
    ctrl.run(max_ticks=3)
    first = policy.windows[0][keys.ACTION_HISTORY]  # (To, 10): nothing had been sent before the first window
    np.testing.assert_allclose(first, np.broadcast_to(measured, first.shape), atol=1e-6)

    # training pads the window at an episode's first step the same way, from the first measured frame
    T = 6
    ee_pose = np.repeat(START[None].astype(np.float32), T, axis=0)
    arrays = {keys.EE_POSE: ee_pose, keys.GRIPPER: np.full((T, 1), measured[-1], np.float32),
              keys.ACTION: np.random.default_rng(0).normal(size=(T, 10)).astype(np.float32)}  # not the pose
    sampler = WindowSampler(np.array([T]), [0], n_obs_steps=2, chunk_len=4, action_space=ActionSpace())
    trained = sampler.gather(arrays, np.array([0]), [keys.EE_POSE])[keys.ACTION_HISTORY][0]  # (Th, 10)
    np.testing.assert_allclose(trained, first, atol=1e-6)


def test_row13_delta_history_starts_with_the_hold_action():
    hold = tuple(float(i) / 100 for i in range(10))
    policy = RatedPolicy(None, ActionSpace("delta", 10, hold))
    ctrl, _ = _controller(policy)
    ctrl.run(max_ticks=3)
    first = policy.windows[0][keys.ACTION_HISTORY]
    np.testing.assert_allclose(first, np.broadcast_to(np.array(hold, np.float32), first.shape))
    sampler = WindowSampler(np.array([5]), [0], n_obs_steps=2, chunk_len=4,
                            action_space=ActionSpace("delta", 10, hold))
    arrays = {keys.ACTION: np.ones((5, 10), np.float32), keys.EE_POSE: np.zeros((5, 9), np.float32)}
    trained = sampler.gather(arrays, np.array([0]), [keys.EE_POSE])[keys.ACTION_HISTORY][0]
    np.testing.assert_allclose(trained, first)
