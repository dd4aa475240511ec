"""The controller on a simulated clock: replanning, latency compensation, underruns, faults."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.clock import SimClock, WallClock
from runtime.controller import Controller, ControllerConfig, ControllerError
from runtime.drivers.base import DriverError
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.inference import SimulatedLatencyWorker, ThreadedWorker
from runtime.safety import SafetyConfig, SafetyLayer

from .fakes import DT, DyingCamera, ScriptedPolicy, Z, x_at


def _setup(latency=0.3, policy=None, camera=None, cfg=None, safety_cfg=None):
    clock = SimClock()
    start = np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0])
    robot = FakeRobot(clock.now, start_pose=start)
    robot.connect()
    cam = camera or FakeCamera(clock.now)
    cam.connect()
    policy = policy or ScriptedPolicy()
    worker = SimulatedLatencyWorker(policy, clock, latency)
    ctrl = Controller(robot, {"scene_rgb": cam}, worker, SafetyLayer(safety_cfg or SafetyConfig(), DT), clock,
                      cfg or ControllerConfig(keep_trace=True))
    policy.tick_of = lambda: round(clock.now() / DT)
    return ctrl, robot, policy, clock


def test_latency_is_hidden_by_replanning_at_half_the_buffer():
    ctrl, robot, policy, _ = _setup(latency=0.3)
    m = ctrl.run(max_ticks=100)
    assert m.stop_reason == "completed" and robot.stopped
    assert m.underruns == 0 and m.inference_failures == 0
    assert m.startup_hold_ticks == 3  # the first chunk needs 0.3 s = 3 ticks
    # chunks are requested when half of the current one has run: observation ticks 0, 7, 14, ...
    assert policy.obs_ticks[:4] == [0, 7, 14, 21]
    # every chunk arrives 3 ticks after its observation; its 3 past entries are dropped
    assert m.dropped_stale_actions == 3 * m.chunks_received
    sources = {r.tick: r.chunk_obs_tick for r in m.trace}
    assert [sources[t] for t in range(3, 12)] == [0, 0, 0, 0, 0, 0, 0, 7, 7]  # switch exactly at tick 10
    assert sources[17] == 14 and sources[16] == 7
    # latency compensation: after start-up the arm follows the absolute trajectory tick by tick
    xs = np.array([r.command[0] for r in m.trace])
    np.testing.assert_allclose(xs[3:], [x_at(t) for t in range(3, 100)], atol=1e-9)
    assert np.all(xs[:3] == x_at(0))  # held still until the first chunk


def test_inference_slower_than_half_the_buffer_underruns_and_holds():
    ctrl, robot, _, _ = _setup(latency=1.0)
    m = ctrl.run(max_ticks=60)
    assert m.underruns > 0
    holds = [r for r in m.trace if r.source == "hold"]
    assert len(holds) == m.underruns and m.interventions["underrun"] == m.underruns
    by_tick = {r.tick: r.command for r in m.trace}
    for r in holds:  # a hold repeats the previous command exactly
        np.testing.assert_array_equal(r.command, by_tick[r.tick - 1])


def test_continuous_replanning_keeps_the_worker_busy():
    ctrl, _, policy, _ = _setup(latency=0.3, cfg=ControllerConfig(replan="continuous", keep_trace=True))
    m = ctrl.run(max_ticks=40)
    assert m.underruns == 0 and policy.obs_ticks[:4] == [0, 3, 6, 9]


def test_replan_after_sets_how_much_of_each_chunk_runs_before_the_next_request():
    # chunk of 16, 0.3 s latency: after 12 executed actions the next is requested (LeRobot's n_action_steps)
    ctrl, _, policy, _ = _setup(latency=0.3, cfg=ControllerConfig(replan_after=12, keep_trace=True))
    m = ctrl.run(max_ticks=60)
    assert policy.obs_ticks[:4] == [0, 11, 22, 33] and m.underruns == 0
    ctrl, _, policy, _ = _setup(latency=0.3, cfg=ControllerConfig(replan_after=4, keep_trace=True))
    ctrl.run(max_ticks=30)
    assert policy.obs_ticks[:4] == [0, 3, 6, 9]  # every answer (3 ticks late) is already due for a new request
    with pytest.raises(ValueError, match="replan_after=16 must be below the policy's chunk length 16"):
        _setup(latency=0.3, cfg=ControllerConfig(replan_after=16))
    with pytest.raises(ValueError, match="controller.replan_after must be >= 0"):
        ControllerConfig(replan_after=-1)


def test_window_holds_frames_and_the_actions_sent_before_the_observation():
    ctrl, robot, policy, _ = _setup(latency=0.3)
    m = ctrl.run(max_ticks=30)
    sent = {r.tick: r.command for r in m.trace}
    win, k = policy.windows[1], policy.obs_ticks[1]  # the request made at tick 7
    assert win["scene_rgb"].shape == (2, 96, 96, 3) and win["ee_pose"].shape == (2, 9)
    np.testing.assert_allclose(win["action_history"], np.stack([sent[k - 2], sent[k - 1]]), atol=1e-6)
    assert win["ee_pose"][1, 0] == pytest.approx(sent[k - 1][0])  # robot state read at tick k


def test_inference_failures_are_retried_then_stop_the_robot():
    policy = ScriptedPolicy(fail_calls={1})
    ctrl, robot, _, _ = _setup(latency=0.3, policy=policy)
    m = ctrl.run(max_ticks=40)
    assert m.inference_failures == 1 and m.stop_reason == "completed" and policy.calls > 3

    policy = ScriptedPolicy(fail_calls=set(range(1, 100)))
    ctrl, robot, _, _ = _setup(latency=0.3, policy=policy)
    with pytest.raises(ControllerError, match="inference failed 3 times in a row"):
        ctrl.run(max_ticks=100)
    assert robot.stopped and ctrl.metrics.stop_reason == "fault"


def test_nan_actions_never_reach_the_robot():
    ctrl, robot, _, _ = _setup(latency=0.3, policy=ScriptedPolicy(nan_calls={0}))
    m = ctrl.run(max_ticks=30)
    assert m.interventions["nonfinite_action"] > 0
    assert all(np.all(np.isfinite(c)) for c in robot.sent)


def test_dead_camera_holds_then_stops():
    clock_holder = {}
    cam = DyingCamera(lambda: clock_holder["clock"].now(), die_at=2.0)
    ctrl, robot, _, clock = _setup(latency=0.3, camera=cam,
                                   safety_cfg=SafetyConfig(stale_hold_s=0.25, stale_stop_s=1.0))
    clock_holder["clock"] = clock
    with pytest.raises(ControllerError, match="stale"):
        ctrl.run(max_ticks=100)
    m = ctrl.metrics
    assert robot.stopped and m.interventions["stale_scene_rgb"] >= 5
    holds = [r for r in m.trace if r.tick > 23]
    assert holds and all(r.source == "hold" for r in holds)
    assert m.trace[-1].tick < 35  # stopped about 1 s after the frames stopped


def test_robot_connection_loss_stops_with_a_clear_error():
    ctrl, robot, _, clock = _setup(latency=0.3)

    orig = robot.read

    def read():
        if clock.now() >= 1.0:
            raise DriverError("fake_robot: connection lost")
        return orig()

    robot.read = read
    with pytest.raises(ControllerError, match="connection lost"):
        ctrl.run(max_ticks=50)
    assert robot.stopped and ctrl.metrics.stop_reason == "driver_error"


def test_stop_event_ends_the_run_and_stops_the_robot():
    event = threading.Event()
    ctrl, robot, _, clock = _setup(latency=0.3)
    ctrl.stop_event = event
    orig = robot.write

    def write(cmd):
        if clock.now() >= 0.5:
            event.set()
        return orig(cmd)

    robot.write = write
    m = ctrl.run(max_ticks=100)
    assert m.stop_reason == "stop_requested" and robot.stopped and len(m.trace) == 6


def test_threaded_worker_on_the_wall_clock():
    clock = WallClock()
    robot = FakeRobot(clock.now, start_pose=np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0]))
    robot.connect()
    cam = FakeCamera(clock.now)
    cam.connect()
    policy = ScriptedPolicy()
    t0 = clock.now()
    policy.tick_of = lambda: round((clock.now() - t0) / 0.02)
    worker = ThreadedWorker(policy, clock)
    try:
        ctrl = Controller(robot, {"scene_rgb": cam}, worker, SafetyLayer(SafetyConfig(), 0.02), clock,
                          ControllerConfig(hz=50.0))
        m = ctrl.run(max_ticks=40)
    finally:
        worker.close()
    assert m.stop_reason == "completed" and m.chunks_received >= 2 and robot.stopped


def test_missing_camera_for_the_policy_is_named():
    clock = SimClock()
    policy = ScriptedPolicy()
    with pytest.raises(ValueError, match="scene_rgb"):
        Controller(FakeRobot(clock.now), {}, SimulatedLatencyWorker(policy, clock, 0.0),
                   SafetyLayer(SafetyConfig(), DT), clock)


def test_window_holds_as_many_sent_actions_as_the_policy_takes():
    """policy.action_history_steps: a one-frame policy may see more of its own sent actions than frames; the
    history starts as the pad (the measured pose) and then holds the last Th commands sent, oldest first."""
    policy = ScriptedPolicy()
    policy.n_obs_steps, policy.history_steps = 1, 5
    ctrl, robot, policy, _ = _setup(latency=0.3, policy=policy)
    m = ctrl.run(max_ticks=30)
    sent = {r.tick: r.command for r in m.trace}
    first, win, k = policy.windows[0], policy.windows[1], policy.obs_ticks[1]
    assert first["scene_rgb"].shape == (1, 96, 96, 3) and first["action_history"].shape == (5, 10)
    assert np.all(first["action_history"][:, 0] == pytest.approx(x_at(0)))  # the pad before anything is sent
    np.testing.assert_allclose(win["action_history"], np.stack([sent[k - i] for i in range(5, 0, -1)]), atol=1e-6)
