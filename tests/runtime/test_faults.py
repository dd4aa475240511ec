"""Issue 11's fault table, runtime side: one test per row, on fakes and the simulated clock.

The rule for all: a fault ends in a hold or a clean stop with ``robot.stop()`` called, the run's status
names the cause (``stop_reason``, ``error``), and nothing already recorded is lost.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from policy import keys
from policy.data.replay_buffer import ReplayBuffer
from policy.keys import ACTION_LAYOUT as LAYOUT
from policy.protocol import PolicySpec
from runtime.clock import SimClock
from runtime.controller import Controller, ControllerConfig, ControllerError
from runtime.drivers.fake import FakeCamera, FakeRobot
from runtime.inference import ChildProcessWorker, InferenceWorker, SimulatedLatencyWorker, WorkerDied
from runtime.metrics import RunMetrics
from runtime.recorder import EpisodeRecorder, RecorderBusy
from runtime.safety import SafetyConfig, SafetyLayer
from runtime.teleop_devices import ScriptedDevice, TeleopInput
from runtime.teleop_loop import TeleopConfig, TeleopError, TeleopLoop

from .fakes import DT, ScriptedPolicy, Z, x_at

START = np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0])  # inside the default box, identity rotation


def _controller(policy=None, worker=None, start=START, camera=None, cfg=None):
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=start)
    robot.connect()
    cam = camera(clock) if camera is not None else FakeCamera(clock.now)
    cam.connect()
    policy = policy or ScriptedPolicy()
    policy.tick_of = lambda: round(clock.now() / DT)
    worker = worker(clock) if worker is not None else SimulatedLatencyWorker(policy, clock, 0.3)
    ctrl = Controller(robot, {keys.SCENE_RGB: cam}, worker, SafetyLayer(SafetyConfig(), DT), clock,
                      cfg or ControllerConfig(keep_trace=True))
    return ctrl, robot


def _teleop(inputs, start=START, recorder=None, camera=None):
    clock = SimClock()
    robot = FakeRobot(clock.now, start_pose=start)
    robot.connect()
    cams = {keys.SCENE_RGB: camera(clock) if camera is not None else FakeCamera(clock.now, (12, 16)),
            keys.WRIST_RGB: FakeCamera(clock.now, (12, 16))}
    for cam in cams.values():
        cam.connect()
    loop = TeleopLoop(robot, cams, ScriptedDevice(inputs), SafetyLayer(SafetyConfig(), DT), clock, recorder,
                      TeleopConfig(hz=1 / DT), keep_trace=True)
    return loop, robot


def _is_rotation(r6: np.ndarray) -> bool:
    a, b = r6[:3], r6[3:]
    return abs(np.linalg.norm(a) - 1) < 1e-6 and abs(np.linalg.norm(b) - 1) < 1e-6 and abs(a @ b) < 1e-6


# ------------------------------------------------------------------ row 1: degenerate 6D rotation

class DegeneratePolicy(ScriptedPolicy):
    """Every chunk after the first carries a finite but degenerate rotation: zeros, or parallel columns."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def predict_chunk(self, window):
        chunk = super().predict_chunk(window)
        if self.calls > 1:
            _, rot, _ = LAYOUT.split(chunk)
            rot[:] = 0.0 if self.kind == "zeros" else [1, 0, 0, 2, 0, 0]
        return chunk


@pytest.mark.parametrize("kind", ["zeros", "parallel"])
def test_row1_degenerate_rotation_is_held_and_counted(kind):
    ctrl, robot = _controller(DegeneratePolicy(kind), cfg=ControllerConfig(keep_trace=True, max_rejected_actions=100))
    m = ctrl.run(max_ticks=30)
    assert m.stop_reason == "completed" and robot.stopped
    assert m.interventions["degenerate_rotation"] > 0
    assert all(_is_rotation(LAYOUT.split(c)[1]) for c in robot.sent)
    held = [r for r in m.trace if r.tick >= 11]  # the second chunk takes over at tick 10 (3 ticks of latency)
    assert all(np.array_equal(r.command, m.trace[9].command) for r in held)


# ------------------------------------------------------------------ row 2: any other exception in the loop

class RaisingCamera(FakeCamera):
    """A camera plug-in with a bug: ``read()`` raises a plain exception from ``at`` seconds on."""

    def __init__(self, now, at: float):
        super().__init__(now)
        self.at = at

    def read(self):
        if self.now() >= self.at:
            raise KeyError("frame_buffer")
        return super().read()


def test_row2_unexpected_exception_is_a_clean_fault():
    ctrl, robot = _controller(camera=lambda clock: RaisingCamera(clock.now, at=0.5))
    with pytest.raises(ControllerError, match="camera scene_rgb .* raised KeyError"):
        ctrl.run(max_ticks=30)
    m = ctrl.metrics
    assert robot.stopped and m.stop_reason == "fault" and "KeyError" in m.error and len(robot.sent) == 5

    ctrl, robot = _controller()
    robot.ee_pose[0] = np.nan  # a driver reporting a NaN state at start
    with pytest.raises(ControllerError, match="not finite"):
        ctrl.run(max_ticks=30)
    assert robot.stopped and ctrl.metrics.stop_reason == "fault" and not robot.sent

    loop, robot = _teleop([TeleopInput()] * 20, camera=lambda clock: RaisingCamera(clock.now, at=0.5))
    with pytest.raises(TeleopError, match="KeyError"):
        loop.run()
    assert robot.stopped and loop.result.stop_reason == "fault" and "KeyError" in loop.result.error


def test_row2_cli_exits_nonzero_with_one_line(monkeypatch, tmp_path):
    import runtime.run as run_mod

    def faulty_run(cfg, stop_event=None):
        m = RunMetrics()
        m.stop_reason, m.error = "fault", "inference did not answer within 5.0 s"
        return m

    monkeypatch.setattr(run_mod, "run", faulty_run)
    monkeypatch.setattr(sys, "argv", ["runtime.run", "checkpoint=ckpt", f"log_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        run_mod.main()
    assert e.value.code == "run stopped (fault): inference did not answer within 5.0 s"


# ------------------------------------------------------------------ row 3: inference process killed mid-request

class HangingPolicy:
    """Answers nothing: every request sleeps (the test kills the process meanwhile)."""

    n_obs_steps, chunk_len, action_dim, obs_keys = 2, 16, 10, ("ee_pose",)

    def predict_chunk(self, window):
        time.sleep(600)


def load_hanging_policy() -> HangingPolicy:  # runs in the spawned child, which imports it by name
    return HangingPolicy()


def test_row3_killed_inference_process_is_named_and_counted():
    spec = PolicySpec(2, 16, 10, ("ee_pose",))
    workers: list[ChildProcessWorker] = []

    def make(clock):
        workers.append(ChildProcessWorker(spec, clock, load_hanging_policy, "a hanging policy", start_timeout_s=60))
        return workers[0]

    ctrl, robot = _controller(worker=make)
    worker = workers[0]
    orig = robot.write

    def write(cmd):
        if len(robot.sent) == 2:  # the request of tick 0 is in flight: kill the child mid-request
            os.kill(worker.pid, signal.SIGKILL)
            t_end = time.monotonic() + 30
            while worker.alive and time.monotonic() < t_end:
                time.sleep(0.01)
        return orig(cmd)

    robot.write = write
    try:
        with pytest.raises(ControllerError, match=r"inference process \(pid \d+\) died mid-request "
                                                  r"\(exit code -9, killed by SIGKILL\)"):
            ctrl.run(max_ticks=30)
    finally:
        worker.close()
    m = ctrl.metrics
    assert m.inference_failures == 1 and m.stop_reason == "fault" and "SIGKILL" in m.error and robot.stopped
    assert len(robot.sent) == 3  # it stopped at the first tick after the death


def test_row3_a_dead_process_is_reported_by_submit_too():
    worker = ChildProcessWorker(PolicySpec(2, 16, 10, ("ee_pose",)), SimClock(), load_hanging_policy, "hanging")
    try:
        os.kill(worker.pid, signal.SIGKILL)
        while worker.alive:
            time.sleep(0.01)
        worker.submit({"ee_pose": np.zeros((2, 9))}, obs_tick=0)
        res = worker.poll()
        assert isinstance(res.error, WorkerDied) and "exit code -9" in str(res.error) and not worker.busy
    finally:
        worker.close()


# ------------------------------------------------------------------ row 4: the arm starts outside the box

def test_row4_start_outside_the_workspace_is_refused_without_a_jump():
    start = START.copy()
    start[0] = 0.9  # 10 cm beyond workspace_max x = 0.8
    ctrl, robot = _controller(start=start)
    with pytest.raises(ControllerError, match=r"x = 0.9000 m is outside \[-0.8, 0.8\] m"):
        ctrl.run(max_ticks=30)
    m = ctrl.metrics
    assert robot.stopped and not robot.sent and m.stop_reason == "fault" and "workspace" in m.error
    assert m.interventions["start_outside_workspace"] == 1

    loop, robot = _teleop([TeleopInput()] * 5, start=start)
    with pytest.raises(TeleopError, match=r"x = 0.9000 m is outside"):
        loop.run()
    assert robot.stopped and not robot.sent and loop.result.interventions["start_outside_workspace"] == 1


def test_row4_a_gripper_outside_its_range_at_start_is_clamped_and_counted():
    ctrl, robot = _controller()
    robot.gripper[:] = 0.0805  # a calibration a hair beyond gripper_max 0.08
    m = ctrl.run(max_ticks=5)
    assert m.interventions["gripper_range"] >= 1 and robot.sent[0][LAYOUT.width] == 0.08
    np.testing.assert_array_equal(LAYOUT.split(robot.sent[0])[0], START[LAYOUT.position])  # the arm stays


# ------------------------------------------------------------------ row 5: NaN forever, inference that hangs

class NaNPolicy(ScriptedPolicy):
    def predict_chunk(self, window):
        return np.full_like(super().predict_chunk(window), np.nan)


def test_row5_only_rejected_actions_stop_with_a_fault():
    ctrl, robot = _controller(NaNPolicy(), cfg=ControllerConfig(keep_trace=True, max_rejected_actions=10))
    with pytest.raises(ControllerError, match="10 actions in a row were rejected"):
        ctrl.run(duration_s=60.0)
    m = ctrl.metrics
    assert m.stop_reason == "fault" and robot.stopped and m.interventions["nonfinite_action"] == 10
    assert all(np.all(np.isfinite(c)) for c in robot.sent) and len(robot.sent) == 3 + 9


class HangingWorker(InferenceWorker):
    """Takes requests and never answers."""

    busy = False

    def submit(self, window, obs_tick):
        self.busy = True

    def poll(self):
        return None


def test_row5_inference_that_hangs_times_out_on_the_controller_clock():
    spec = PolicySpec.of(ScriptedPolicy())
    ctrl, robot = _controller(worker=lambda clock: HangingWorker(spec, clock),
                              cfg=ControllerConfig(keep_trace=True, inference_timeout_s=1.0))
    with pytest.raises(ControllerError, match=r"did not answer within controller.inference_timeout_s=1.0 s"):
        ctrl.run(duration_s=60.0)
    m = ctrl.metrics
    assert m.stop_reason == "fault" and robot.stopped and m.inference_failures == 1
    assert m.trace[-1].tick == 10 and ctrl.clock.now() < 1.5  # 1 s after the request of tick 0


def test_row5_a_slow_but_answering_inference_is_no_fault():
    """What already held and must keep holding: a 2 s latency spike gives counted underruns, then it recovers."""

    class SpikeWorker(SimulatedLatencyWorker):
        def submit(self, window, obs_tick):
            super().submit(window, obs_tick)
            self.latency = 0.3  # only the first request takes 2 s

    policy = ScriptedPolicy()
    ctrl, robot = _controller(policy, worker=lambda clock: SpikeWorker(policy, clock, 2.0))
    m = ctrl.run(max_ticks=60)
    assert m.stop_reason == "completed" and m.underruns > 0 and m.interventions["underrun"] == m.underruns
    assert m.chunks_received >= 3 and m.inference_failures == 0 and m.trace[-1].source == "chunk"


# ------------------------------------------------------------------ row 8: limits in the wrong unit

@pytest.mark.parametrize("field, value, message", [
    ("max_speed", 250, r"safety.max_speed must be in \(0, 3\] m/s, got 250 \(mm/s\? use m/s\)"),
    ("max_accel", 2000, r"safety.max_accel must be in \(0, 50\] m/s\^2, got 2000 \(mm/s\^2\? use m/s\^2\)"),
    ("max_rot_speed", 57.3, r"safety.max_rot_speed must be in \(0, 6.28319\] rad/s, got 57.3 \(deg/s\?"),
    ("max_rot_accel", 458, r"safety.max_rot_accel must be in \(0, 100\] rad/s\^2, got 458 \(deg/s\^2\?"),
    ("gripper_max", 80, r"safety.gripper_max must be in \(0, 0.3\] m, got 80 \(mm\? use m\)"),
    ("workspace_max", (800, 800, 800), r"safety.workspace_max\[0\] \(x\) must be in \[-3, 3\] m, got 800 \(mm\?"),
    ("workspace_min", (-0.5, -0.5, -900), r"safety.workspace_min\[2\] \(z\) must be in \[-3, 3\] m, got -900"),
    ("stale_hold_s", 250, r"safety.stale_hold_s must be in \(0, 2\] s, got 250 \(ms\? use s\)"),
    ("stale_stop_s", 1000, r"safety.stale_stop_s must be in \(0, 10\] s, got 1000 \(ms\? use s\)"),
    ("max_speed", float("nan"), r"safety.max_speed must be in \(0, 3\] m/s, got nan"),
    ("max_speed", -0.1, r"safety.max_speed must be in \(0, 3\] m/s, got -0.1$"),
])
def test_row8_safety_limits_in_the_wrong_unit_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        SafetyConfig(**{field: value})


def test_row8_limits_a_real_arm_needs_are_accepted():
    SafetyConfig(max_speed=1.7, max_accel=13.0, max_rot_speed=2.5, max_rot_accel=25.0, gripper_max=0.14,
                 workspace_min=(-1.3, -1.3, -0.4), workspace_max=(1.3, 1.3, 1.6), stale_hold_s=0.1, stale_stop_s=0.5)


# ------------------------------------------------------------------ row 10: a writer that falls behind or fails

class SlowWriterRecorder(EpisodeRecorder):
    """Writes only once ``release`` is set; episodes listed in ``fail`` (by write order) hit a full disk."""

    def __init__(self, path, fail=(), **kw):
        super().__init__(path, **kw)
        self.release = threading.Event()
        self.fail, self.writes = set(fail), 0

    def _write(self, episode):
        self.release.wait(timeout=60)
        i, self.writes = self.writes, self.writes + 1
        if i in self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super()._write(episode)


def _record(rec: EpisodeRecorder, n: int, t0: float = 0.0) -> None:
    rec.start()
    for i in range(n):
        obs = {k: np.zeros((8, 6, 3), np.uint8) for k in rec.image_keys}
        obs.update({keys.EE_POSE: START, keys.GRIPPER: np.array([0.04])})
        rec.add_step(obs, LAYOUT.join(START[LAYOUT.position], START[LAYOUT.rotation], 0.04), t0 + i * DT)


def test_row10_a_writer_that_falls_behind_refuses_new_episodes(tmp_path, caplog):
    rec = SlowWriterRecorder(tmp_path / "d.zarr", max_queued=2)
    for _ in range(2):
        _record(rec, 3)
        rec.stop_and_keep(wait=False)
    assert rec.writer_behind and rec.n_queued == 2 and rec.committed == []
    with caplog.at_level(logging.WARNING, "runtime.recorder"), pytest.raises(RecorderBusy, match="writer is behind"):
        rec.start()
    assert "writer is behind" in caplog.text
    rec.release.set()
    rec.flush()
    assert rec.committed == [0, 1] and rec.committed_steps == 6 and not rec.writer_behind
    _record(rec, 2)  # caught up: recording goes on
    rec.stop_and_keep()
    rec.close()
    assert ReplayBuffer.open(tmp_path / "d.zarr", "r").episode_lengths.tolist() == [3, 3, 2]


def test_row10_a_full_disk_is_not_counted_as_kept(tmp_path):
    rec = SlowWriterRecorder(tmp_path / "d.zarr", fail={1}, max_queued=5)
    rec.release.set()
    for n in (3, 4):
        _record(rec, n)
        rec.stop_and_keep(wait=False)
    with pytest.raises(OSError, match="No space left"):
        rec.flush()
    assert rec.committed == [0] and len(rec.failed) == 1 and rec.n_episodes == 1
    rec.close()
    assert ReplayBuffer.open(tmp_path / "d.zarr", "r").episode_lengths.tolist() == [3]


def test_row10_teleop_counts_what_was_committed(tmp_path):
    rec = SlowWriterRecorder(tmp_path / "d.zarr", max_queued=1)
    episode = [TeleopInput(events=("start",)), TeleopInput(), TeleopInput(events=("keep",))]
    loop, robot = _teleop(episode * 3, recorder=rec)
    orig = robot.write

    def write(cmd):  # the writer is stuck for the first 7 ticks: the second and third starts find it behind
        if len(robot.sent) == 7:
            rec.release.set()
            rec.flush()
        return orig(cmd)

    robot.write = write
    r = loop.run()
    assert r.stop_reason == "quit" and r.interventions["recorder_behind"] == 2
    assert r.episodes_kept == [0] and r.steps_recorded == 2 and r.summary()["episodes_kept"] == 1

    rec = SlowWriterRecorder(tmp_path / "e.zarr", fail={1}, max_queued=5)
    rec.release.set()
    loop, robot = _teleop(episode * 3, recorder=rec)
    with pytest.raises(TeleopError, match="No space left"):
        loop.run()
    r = loop.result
    # the second episode hit the full disk; the third was written after it, as dataset episode 1
    assert r.stop_reason == "fault" and robot.stopped and r.episodes_failed == 1 and r.episodes_kept == [0, 1]
    assert r.steps_recorded == 4 and ReplayBuffer.open(tmp_path / "e.zarr", "r").n_episodes == 2
