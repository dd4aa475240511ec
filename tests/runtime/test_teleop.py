"""Teleop devices and the teleop loop on a simulated clock: motion, safety clipping, recording, e-stop."""

from __future__ import annotations

import os
import pty
import signal
import sys
import time

import numpy as np
import pytest

from policy import keys
from policy.data.replay_buffer import ReplayBuffer
from runtime.clock import SimClock
from runtime.drivers.base import DriverError
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.estop import EStop
from runtime.recorder import EpisodeRecorder
from runtime.rotation import matrix_to_axis_angle, rot6d_to_matrix
from runtime.safety import SafetyConfig, SafetyLayer
from runtime.teleop_devices import (
    CombinedDevice,
    KeyboardConfig,
    KeyboardDevice,
    ScriptedDevice,
    SpaceMouseConfig,
    SpaceMouseDevice,
    TeleopDevice,
    TeleopInput,
    apply_deadzone,
)
from runtime.teleop_loop import TeleopConfig, TeleopError, TeleopLoop, integrate_target, run_teleop

from .fakes import DyingCamera

DT = 0.1
START = np.array([0.4, 0.0, 0.3, 1, 0, 0, 0, 1, 0])  # identity rotation


def move(v=(0, 0, 0), w=(0, 0, 0), gripper=None, events=()) -> TeleopInput:
    return TeleopInput(np.array(v, float), np.array(w, float), gripper, events)


def setup(inputs, recorder_path=None, safety_cfg=None, start=START, cameras=None, stop_event=None, clock=None):
    clock = clock or SimClock()
    robot = FakeRobot(clock.now, start_pose=start)
    robot.connect()
    cams = cameras or {keys.SCENE_RGB: FakeCamera(clock.now, (12, 16)), keys.WRIST_RGB: FakeCamera(clock.now, (12, 16))}
    for cam in cams.values():
        cam.connect()
    device = inputs if isinstance(inputs, TeleopDevice) else ScriptedDevice(inputs)
    # the simulated clock outruns the writer thread: let every kept episode queue (back-pressure: test_faults)
    recorder = EpisodeRecorder(recorder_path, max_queued=100) if recorder_path is not None else None
    loop = TeleopLoop(robot, cams, device, SafetyLayer(safety_cfg or SafetyConfig(), DT), clock, recorder,
                      TeleopConfig(hz=1 / DT), stop_event=stop_event, keep_trace=True)
    return loop, robot, clock


# ------------------------------------------------------------------ devices


def test_keyboard_keys_map_to_velocities_gripper_and_events():
    clock = SimClock()
    cfg = KeyboardConfig(speed=0.05, rot_speed=0.3, hold_s=0.15)
    kb = KeyboardDevice(cfg, now=clock.now, use_terminal=False)
    kb.connect()
    assert np.all(kb.read().translation == 0)
    kb.feed("wa")
    inp = kb.read()
    np.testing.assert_allclose(inp.translation, [0.05, 0.05, 0])
    kb.feed("ws")  # opposite keys cancel
    np.testing.assert_allclose(kb.read().translation, [0, 0.05, 0])  # a is still held
    clock.advance(0.2)  # no repeat within hold_s: the key counts as released
    assert np.all(kb.read().translation == 0)
    kb.feed("F")  # caps lock does not change the bindings
    np.testing.assert_allclose(kb.read().translation, [0, 0, -0.05])
    kb.feed("i\x1b[D")  # i: +rx, arrow left: +rz
    np.testing.assert_allclose(kb.read().rotation, [0.3, 0, 0.3])
    kb.feed(" ")
    assert kb.read().gripper == "toggle"
    kb.feed("  ")  # two toggles in one tick cancel
    assert kb.read().gripper is None
    kb.feed("cvxq")
    inp = kb.read()
    assert inp.events == ("start", "keep", "discard", "quit")
    assert kb.read().events == ()  # events are delivered once


def test_keyboard_esc_triggers_the_estop_at_once():
    estop = EStop()
    kb = KeyboardDevice(use_terminal=False, estop=estop)
    kb.feed("\x1b")
    assert estop.triggered and estop.reason == "key ESC"
    assert kb.read().events == ("estop",)


def test_keyboard_reads_a_real_terminal():
    master, slave = pty.openpty()
    try:
        with KeyboardDevice(KeyboardConfig(hold_s=30.0), fd=slave) as kb:
            os.write(master, b"r ")
            deadline = time.monotonic() + 5.0
            seen_motion, seen_gripper = False, False
            while time.monotonic() < deadline and not (seen_motion and seen_gripper):
                inp = kb.read()
                seen_motion |= inp.translation[2] > 0
                seen_gripper |= inp.gripper == "toggle"
                time.sleep(0.01)
            assert seen_motion and seen_gripper
    finally:
        os.close(master)
        os.close(slave)


class FakeMouse:
    """A pyspacemouse device: ``read()`` pops queued reports (x, y, z, roll, pitch, yaw, buttons)."""

    def __init__(self):
        self.reports: list[tuple] = []
        self.t = 0.0
        self.x = self.y = self.z = self.roll = self.pitch = self.yaw = 0.0
        self.buttons = [0, 0]
        self.closed = False

    def read(self):
        if self.reports:
            self.x, self.y, self.z, self.roll, self.pitch, self.yaw, self.buttons = self.reports.pop(0)
            self.t += 1.0
        return self

    def close(self):
        self.closed = True


def test_spacemouse_scaling_deadzone_axes_and_button_edges():
    mouse = FakeMouse()
    cfg = SpaceMouseConfig(max_speed=0.1, max_rot_speed=0.5, deadzone=0.1, translation_axes=("-y", "x", "z"))
    with SpaceMouseDevice(cfg, opener=lambda: mouse) as sm:
        mouse.reports = [(0.05, 0.5, 1.0, 0, 0, -1.0, [0, 0]),  # older report, drained
                         (0.05, 1.0, 0.55, 0, 0, -1.0, [1, 0])]
        inp = sm.read()
        np.testing.assert_allclose(inp.translation, [-0.1, 0.0, 0.05])  # x below the deadzone
        np.testing.assert_allclose(inp.rotation, [0, 0, -0.5])
        assert inp.gripper == "toggle" and inp.events == ()
        assert sm.read().gripper is None  # still held: no new edge
        mouse.reports = [(0, 0, 0, 0, 0, 0, [0, 1])]
        assert sm.read().events == ("record_toggle",)
    assert mouse.closed
    np.testing.assert_allclose(apply_deadzone([0.1, -0.55, 1.0, 2.0], 0.1), [0, -0.5, 1, 1])


def test_spacemouse_without_the_library_is_a_clear_driver_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)  # import fails
    with pytest.raises(DriverError, match="pip install pyspacemouse"):
        SpaceMouseDevice().connect()
    with pytest.raises(ValueError, match="translation_axes"):
        SpaceMouseConfig(translation_axes=("x", "y", "w"))


def test_combined_device_adds_motion_and_merges_events():
    a = ScriptedDevice([move(v=(0.1, 0, 0), events=("start",))], quit_at_end=False)
    b = ScriptedDevice([move(v=(0, 0.2, 0), gripper="close")], quit_at_end=False)
    with CombinedDevice(a, b) as dev:
        inp = dev.read()
    np.testing.assert_allclose(inp.translation, [0.1, 0.2, 0])
    assert inp.gripper == "close" and inp.events == ("start",)


# ------------------------------------------------------------------ loop


def test_integrate_target_composes_rotation_in_the_base_frame():
    sent = np.concatenate([START, [0.08]])
    t = integrate_target(sent, move(v=(0.1, 0, -0.2), w=(0, 0, 1.0)), 0.5, 0.02)
    np.testing.assert_allclose(t[:3], [0.45, 0, 0.2])
    np.testing.assert_allclose(matrix_to_axis_angle(rot6d_to_matrix(t[3:9])), [0, 0, 0.5], atol=1e-12)
    assert t[9] == 0.02


def test_loop_moves_the_robot_where_expected():
    inputs = [move(v=(0.05, 0, 0)) for _ in range(10)]
    inputs += [move(w=(0, 0, 0.5)) for _ in range(4)]
    inputs += [move(gripper="toggle"), move()]
    loop, robot, clock = setup(inputs)
    r = loop.run()
    assert r.stop_reason == "quit" and robot.stopped and r.ticks == 16
    np.testing.assert_allclose(robot.ee_pose[:3], START[:3] + [0.05, 0, 0], atol=1e-12)
    np.testing.assert_allclose(matrix_to_axis_angle(rot6d_to_matrix(robot.ee_pose[3:9])), [0, 0, 0.2], atol=1e-9)
    assert robot.gripper[0] == 0.0  # toggled from open (the fake starts at 0.08 m) to closed
    assert not r.interventions  # nothing hit a limit
    assert clock.now() == pytest.approx(16 * DT)  # paced to absolute deadlines on the clock


def test_workspace_limit_is_clipped_counted_and_not_wound_up():
    start = START.copy()
    start[0] = 0.78
    cfg = SafetyConfig(workspace_max=(0.8, 0.8, 0.8))
    inputs = [move(v=(0.1, 0, 0)) for _ in range(10)] + [move(v=(-0.1, 0, 0))]
    loop, robot, _ = setup(inputs, safety_cfg=cfg, start=start)
    r = loop.run()
    xs = [c[0] for c in r.trace]
    assert max(xs) == pytest.approx(0.8) and r.interventions["workspace"] >= 8
    assert xs[-1] == pytest.approx(0.79)  # pulling back moves off the wall at once


def test_speed_limit_is_counted():
    loop, robot, _ = setup([move(v=(1.0, 0, 0)) for _ in range(20)])
    r = loop.run()
    steps = np.diff([c[0] for c in r.trace])
    assert np.all(steps <= SafetyConfig().max_speed * DT + 1e-12)
    assert r.interventions["speed"] > 0 and r.interventions["accel"] > 0


def test_records_exactly_the_commands_sent_and_keep_discard_work(tmp_path):
    path = tmp_path / "demos.zarr"
    inputs = [move(v=(0.02, 0, 0), events=("start",))] + [move(v=(0.02, 0.01 * i, 0)) for i in range(4)]
    inputs += [move(events=("keep",)), move(events=("start",)), move(), move(events=("discard",))]
    inputs += [move(gripper="toggle", events=("record_toggle",)), move(), move(events=("record_toggle",))]
    inputs += [move(events=("start",)), move()]  # unfinished at quit: discarded in finally
    loop, robot, _ = setup(inputs, recorder_path=path)
    r = loop.run()
    assert r.stop_reason == "quit" and robot.stopped and not loop.recorder.recording
    assert r.episodes_kept == [0, 1] and r.episodes_discarded == 2 and r.steps_recorded == 7
    buf = ReplayBuffer.open(path, "r")
    assert buf.episode_lengths.tolist() == [5, 2]
    ep = buf.get_episode(0)
    np.testing.assert_array_equal(ep[keys.ACTION], np.stack(robot.sent[:5]).astype(np.float32))
    np.testing.assert_allclose(ep[keys.TIMESTAMP], np.arange(5) * DT, atol=1e-12)
    # the observation is the state read before the command of the same tick
    np.testing.assert_array_equal(ep[keys.EE_POSE][0], START.astype(np.float32))
    np.testing.assert_array_equal(ep[keys.EE_POSE][1:], np.stack(robot.sent[:4])[:, :9].astype(np.float32))
    assert ep[keys.SCENE_RGB].shape == (5, 12, 16, 3)
    ep1 = buf.get_episode(1)  # record_toggle: start at tick 9, keep at tick 11
    np.testing.assert_array_equal(ep1[keys.ACTION], np.stack(robot.sent[9:11]).astype(np.float32))
    assert ep1[keys.ACTION][0, 9] == 0.0  # the gripper toggle of tick 9 is in the recorded command


def test_a_bad_frame_discards_the_episode_and_teleop_goes_on(tmp_path):
    clock = SimClock()
    shape_at = lambda t: (12, 16) if t < 0.25 else (8, 8)  # noqa: E731 - the camera changes resolution
    scene = FakeCamera(clock.now, render=lambda t: np.zeros((*shape_at(t), 3), np.uint8))
    cams = {keys.SCENE_RGB: scene, keys.WRIST_RGB: FakeCamera(clock.now, (12, 16))}
    for cam in cams.values():
        cam.connect()
    robot = FakeRobot(clock.now, start_pose=START)
    robot.connect()
    loop = TeleopLoop(robot, cams, ScriptedDevice([move(events=("start",))] + [move()] * 5),
                      SafetyLayer(SafetyConfig(), DT), clock, EpisodeRecorder(tmp_path / "d.zarr"))
    r = loop.run()
    assert r.stop_reason == "quit" and r.ticks == 6
    assert r.interventions["bad_step_discarded"] == 1 and r.episodes_discarded == 1 and not r.episodes_kept


def test_stale_camera_holds_then_stops_and_discards_the_unfinished_episode(tmp_path):
    clock = SimClock()
    cams = {keys.SCENE_RGB: DyingCamera(clock.now, die_at=0.5, shape=(12, 16)),
            keys.WRIST_RGB: FakeCamera(clock.now, (12, 16))}
    inputs = [move(v=(0.05, 0, 0), events=("start",))] + [move(v=(0.05, 0, 0))] * 50
    loop, robot, _ = setup(inputs, recorder_path=tmp_path / "d.zarr", cameras=cams, clock=clock)
    with pytest.raises(TeleopError, match="stale"):
        loop.run()
    r = loop.result
    assert r.stop_reason == "fault" and robot.stopped
    assert r.interventions["stale_scene_rgb"] > 0 and r.interventions["stale_stop"] == 1
    assert r.episodes_discarded == 1 and ReplayBuffer.open(tmp_path / "d.zarr", "r").n_episodes == 0
    # the frame is stale from 0.8 s (0.5 s + stale_hold_s): from then on the command is held
    assert r.interventions["stale_scene_rgb"] == r.ticks - 8 + 1  # + the tick that stopped before writing
    assert all(np.array_equal(c, r.trace[7]) for c in r.trace[8:])
    assert r.trace[7][0] > r.trace[6][0]  # it was moving before


class FailingDevice(ScriptedDevice):
    def read(self):
        raise DriverError("scripted: unplugged")


def test_a_dead_device_stops_the_run():
    loop, robot, _ = setup(FailingDevice([]))
    with pytest.raises(TeleopError, match="3 times"):
        loop.run()
    assert robot.stopped and loop.result.interventions["device_error"] == 3


class SignallingDevice(ScriptedDevice):
    """Moves +x and sends this process SIGTERM during read number ``at`` (0-based)."""

    def __init__(self, at: int):
        super().__init__([move(v=(0.05, 0, 0), events=("start",) if i == 0 else ()) for i in range(100)])
        self.at = at

    def read(self):
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().read()


def test_a_real_sigterm_stops_the_loop_and_the_robot(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with EStop() as estop:
        loop, robot, _ = setup(SignallingDevice(at=7), recorder_path=tmp_path / "d.zarr", stop_event=estop)
        r = loop.run()
    assert signal.getsignal(signal.SIGTERM) == before
    assert r.stop_reason == "stop_requested" and r.stop_detail == "signal SIGTERM"
    assert robot.stopped and r.ticks == 8 and len(robot.sent) == 8  # the tick that got the signal finished
    assert r.episodes_discarded == 1 and not loop.recorder.recording


def test_run_teleop_installs_the_estop_and_closes_everything(tmp_path):
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=START)
    cams = {k: FakeCamera(clock.now, (12, 16)) for k in keys.IMAGE_KEYS}
    device = SignallingDevice(at=3)
    before = signal.getsignal(signal.SIGTERM)
    r = run_teleop(robot, cams, device, EpisodeRecorder(tmp_path / "d.zarr"), clock=clock)
    assert r.stop_reason == "stop_requested" and r.ticks == 4 and robot.stopped
    assert not robot.connected and not device.connected and not any(c.connected for c in cams.values())
    assert signal.getsignal(signal.SIGTERM) == before


def test_keyboard_drives_the_loop_and_esc_stops_it():
    clock = SimClock()
    estop = EStop()
    kb = KeyboardDevice(KeyboardConfig(speed=0.05, hold_s=0.15), now=clock.now, use_terminal=False, estop=estop)
    loop, robot, _ = setup(kb, stop_event=estop, clock=clock)
    kb.feed("w")
    r = loop.run(max_ticks=4)  # the press acts for 0.15 s: ticks at 0.0 and 0.1
    assert r.stop_reason == "completed" and robot.stopped
    np.testing.assert_allclose(robot.ee_pose[:3], START[:3] + [0.01, 0, 0], atol=1e-12)
    loop, robot, _ = setup(kb, stop_event=estop, clock=clock)
    kb.feed("\x1b")
    r = loop.run()
    assert r.stop_reason == "stop_requested" and r.stop_detail == "key ESC" and robot.stopped and not robot.sent


def test_a_device_estop_event_stops_at_once():
    estop = EStop()
    loop, robot, _ = setup(ScriptedDevice([move(), move(events=("estop",))]), stop_event=estop)
    r = loop.run()
    assert r.stop_reason == "estop" and robot.stopped and len(robot.sent) == 1 and estop.triggered


def test_the_command_line_ends_a_fault_with_one_line_and_a_nonzero_exit(monkeypatch, tmp_path):
    import runtime.teleop as cli

    def faulty_run_teleop(*args, **kwargs):
        raise TeleopError("the arm starts outside the workspace box: x = 0.9000 m is outside [-0.8, 0.8] m")

    monkeypatch.setattr(cli, "run_teleop", faulty_run_teleop)
    monkeypatch.setattr(sys, "argv", ["runtime.teleop", f"out={tmp_path / 'd.zarr'}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code.startswith("teleop stopped: the arm starts outside the workspace box: x = 0.9000 m")
