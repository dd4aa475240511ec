"""The simulated robot and cameras behind the runtime's driver interfaces, driven by the Controller."""

from __future__ import annotations

import numpy as np
import pytest

from policy import keys
from runtime.clock import SimClock
from runtime.controller import Controller
from runtime.drivers.base import DriverError
from runtime.factory import make_camera, make_robot
from runtime.inference import SimulatedLatencyWorker
from runtime.safety import SafetyConfig, SafetyLayer
from sim.drivers import SimCamera, SimRobot
from sim.rollout import rollout

DT = 0.1


class ReplayPolicy:
    """A ChunkPolicy replaying recorded actions: the chunk from the observation at tick k is actions[k:k+16]."""

    n_obs_steps = 2
    chunk_len = 16
    action_dim = 10
    obs_keys = (keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER, keys.ACTION_HISTORY)

    def __init__(self, actions: np.ndarray, clock: SimClock):
        self.actions, self.clock = actions, clock
        self.windows = 0

    def predict_chunk(self, window):
        assert window[keys.SCENE_RGB].shape == (2, 96, 96, 3) and window[keys.EE_POSE].shape == (2, 9)
        self.windows += 1
        k = round(self.clock.now() / DT)
        idx = np.minimum(np.arange(k, k + self.chunk_len), len(self.actions) - 1)
        return self.actions[idx]


def test_controller_drives_the_simulated_task_like_an_arm(env):
    seed = 2
    demo = rollout(env, seed, keep_obs=False)
    clock = SimClock()
    robot = SimRobot(env, clock.now, seed=seed)
    cams = {k: SimCamera(robot, k) for k in keys.IMAGE_KEYS}
    robot.reset(seed)
    policy = ReplayPolicy(demo["actions"], clock)
    worker = SimulatedLatencyWorker(policy, clock, latency=0.0)
    with robot, cams[keys.SCENE_RGB], cams[keys.WRIST_RGB]:
        ctrl = Controller(robot, cams, worker, SafetyLayer(SafetyConfig(), DT), clock)
        m = ctrl.run(max_ticks=demo["steps"] + 5)
        with pytest.raises(DriverError, match="stopped"):
            robot.write(demo["actions"][0])
    assert m.stop_reason == "completed" and robot.stopped
    assert m.underruns == 0 and m.inference_failures == 0 and policy.windows > 5
    assert sum(m.interventions.values()) == 0  # the demo never needed the safety layer
    assert clock.now() == pytest.approx((demo["steps"] + 5) * DT)  # simulated time only: one dt per tick
    assert robot.info["is_success"], f"open-loop replay of a successful demo failed (score {robot.info['score']})"


def test_timestamps_follow_the_simulated_clock(env):
    clock = SimClock(5.0)
    robot = SimRobot(env, clock.now)
    cam = SimCamera(robot, keys.WRIST_RGB)
    with pytest.raises(DriverError):
        robot.read()
    robot.connect()
    cam.connect()
    state = robot.read()
    frame = cam.read()
    assert state.timestamp == frame.timestamp == 5.0
    target = np.concatenate([state.ee_pose, state.gripper]) + np.r_[0.03, 0, 0, np.zeros(7)]
    sent = robot.write(target)
    np.testing.assert_allclose(sent, target, atol=1e-6)
    assert cam.read().timestamp == 5.0  # the new frame shows t + dt, but is never stamped in the future
    clock.advance(DT)
    frame = cam.read()
    assert frame.timestamp == pytest.approx(5.1) and not np.array_equal(frame.image, np.zeros_like(frame.image))
    assert robot.read().ee_pose[0] == pytest.approx(target[0], abs=4e-3)  # the hand lags the mocap a little
    with pytest.raises(ValueError, match="10 finite"):
        robot.write(np.zeros(3))


def test_factory_plugs_the_simulator_in():
    clock = SimClock()
    spec = {"factory": "sim.drivers:make_sim_robot", "task": "pick_place", "seed": 3, "name": "factory_test",
            "image_height": 48, "image_width": 64, "randomization": {"colors": 0.1}}
    robot = make_robot(spec, clock.now)
    cam = make_camera({"factory": "sim.drivers:make_sim_camera", "view": "scene_rgb", "robot": "factory_test"},
                      clock.now)
    with robot, cam:
        assert cam.read().image.shape == (48, 64, 3)
        assert robot.read().ee_pose.shape == (9,)
    with pytest.raises(ValueError, match="bogus"):
        make_robot({"factory": "sim.drivers:make_sim_robot", "bogus": 1}, clock.now)
    with pytest.raises(ValueError, match="no sim robot named"):
        make_camera({"factory": "sim.drivers:make_sim_camera", "view": "scene_rgb", "robot": "nobody"}, clock.now)
    with pytest.raises(ValueError, match="view"):
        make_camera({"factory": "sim.drivers:make_sim_camera", "view": "depth", "robot": "factory_test"}, clock.now)
