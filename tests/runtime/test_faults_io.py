"""Issue 11, the driver rows: each test failed on the code before the fix and passes after.

Row 6: a camera whose ``read()`` blocks must not block the loop (driver contract; staleness holds).
Row 12: a second controller connecting to a Franka already in use must be told the arm may be in use.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from runtime.clock import SimClock, WallClock
from runtime.drivers.background import BackgroundCamera, in_background
from runtime.drivers.base import CameraFrame, DriverError
from runtime.drivers.fake import FakeCamera
from runtime.factory import make_camera

HANG_GUARD_S = 30.0  # a guard against hanging the suite, never a timing assertion


class BlockingCamera(FakeCamera):
    """A FakeCamera whose ``read()`` blocks while ``gate`` is cleared (3 s, or until the test opens it).

    ``entered`` is set each time a read has started blocking; ``reads`` counts completed reads.
    """

    def __init__(self, now, block_s: float = 3.0):
        super().__init__(now, shape=(4, 4))
        self.block_s = block_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.reads = 0

    def read(self) -> CameraFrame:
        if not self.gate.is_set():
            self.entered.set()
            self.gate.wait(self.block_s)
        self.reads += 1
        return super().read()


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within the hang guard")
        time.sleep(0.005)


# ------------------------------------------------------------------ row 6: a blocking camera
def test_row6_factory_wraps_cameras_on_the_wall_clock_only():
    clock = WallClock()
    wall = make_camera({"type": "fake", "height": 4, "width": 4}, clock.now)
    assert isinstance(wall, BackgroundCamera) and wall.name == "fake_camera"
    assert isinstance(make_camera({"type": "fake"}, time.monotonic), BackgroundCamera)
    sim = make_camera({"type": "fake"}, SimClock().now)  # simulated time: renders synchronously
    assert isinstance(sim, FakeCamera)
    assert isinstance(make_camera({"type": "fake", "background": True}, SimClock().now), BackgroundCamera)
    assert isinstance(make_camera({"type": "fake", "background": False}, clock.now), FakeCamera)
    with pytest.raises(ValueError, match="background"):
        make_camera({"type": "fake", "background": "yes"}, clock.now)


def test_row6_a_camera_that_reads_in_background_is_not_wrapped_twice():
    from runtime.drivers.realsense import RealSenseCamera, RealSenseConfig

    rs = RealSenseCamera(RealSenseConfig(serial="123"))
    assert in_background(rs) is rs
    wrapped = in_background(FakeCamera())
    assert in_background(wrapped) is wrapped


def test_row6_a_blocked_read_returns_the_last_frame_at_once_and_it_ages():
    inner = BlockingCamera(time.monotonic, block_s=HANG_GUARD_S)
    cam = BackgroundCamera(inner, poll_hz=200.0)
    with cam:
        first = cam.read()
        inner.gate.clear()  # from now on the device stalls
        inner.entered.wait(HANG_GUARD_S)
        assert inner.entered.is_set()
        stalled = cam.read()  # the reader thread is stuck inside inner.read(); this call is not
        reads_before = inner.reads
        again = cam.read()
        assert again is stalled and inner.reads == reads_before  # nothing new: same frame, same timestamp
        assert stalled.timestamp >= first.timestamp
        # the frame ages while the device stalls: the controller's staleness check sees it
        assert time.monotonic() - again.timestamp > 0.0
        inner.gate.set()  # the device recovers: new frames with newer timestamps
        wait_for(lambda: cam.read().timestamp > again.timestamp, "a fresh frame after the stall")
    assert cam._thread is None and not cam.connected and not inner.connected  # joined and closed


BLOCKING: dict[str, BlockingCamera] = {}


def make_blocking_camera(params: dict, now) -> BlockingCamera:
    """A driver plug-in (``factory: tests.runtime.test_faults_io:make_blocking_camera``) built like any other."""
    cam = BlockingCamera(now, block_s=params.get("block_s", 3.0))
    BLOCKING["last"] = cam
    return cam


def test_row6_blocking_camera_holds_then_stops_instead_of_stalling_the_loop():
    """runtime.run's path: the factory builds the camera on the wall clock. The device stalls for good
    after its first frame; the loop keeps ticking, holds on the stale frame and stops (~1 s), where the
    old code blocked 3 s in every tick (29 overruns, no hold) and completed. The guard is only against
    hanging; nothing here asserts how long a tick took."""
    from runtime.controller import Controller, ControllerConfig, ControllerError
    from runtime.drivers.fake import FakeRobot
    from runtime.inference import ThreadedWorker
    from runtime.safety import SafetyConfig, SafetyLayer

    from .fakes import DT, ScriptedPolicy, Z, x_at

    clock = WallClock()
    cam = make_camera({"factory": f"{__name__}:make_blocking_camera", "block_s": 3.0}, clock.now)
    inner = BLOCKING["last"]
    robot = FakeRobot(clock.now, start_pose=np.array([x_at(0), 0, Z, 1, 0, 0, 0, 1, 0]))
    policy = ScriptedPolicy()
    policy.tick_of = lambda: 0
    worker = ThreadedWorker(policy, clock)
    box: dict = {}
    with robot, cam:
        inner.gate.clear()  # the device stalls after its first frame: every read now blocks 3 s
        ctrl = Controller(robot, {"scene_rgb": cam}, worker, SafetyLayer(SafetyConfig(), DT), clock,
                          ControllerConfig(keep_trace=True))

        def run() -> None:
            try:
                ctrl.run(max_ticks=40)
            except ControllerError as e:
                box["error"] = e

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(HANG_GUARD_S)
        inner.gate.set()
        worker.close()
        assert not runner.is_alive(), "the loop is stuck behind the camera"
    m = ctrl.metrics
    assert "stale" in str(box.get("error")) and m.stop_reason == "fault" and robot.stopped
    assert m.interventions["stale_scene_rgb"] >= 1
    assert m.trace and m.trace[-1].source == "hold"


def test_row6_no_frame_yet_and_a_dead_reader_raise_driver_errors_naming_the_camera():
    inner = BlockingCamera(time.monotonic, block_s=HANG_GUARD_S)
    inner.gate.clear()  # the very first read blocks
    cam = BackgroundCamera(inner, first_frame_timeout_s=0.05, join_timeout_s=HANG_GUARD_S)
    opener = threading.Thread(target=lambda: (inner.entered.wait(HANG_GUARD_S), time.sleep(0.2), inner.gate.set()))
    opener.start()
    with pytest.raises(DriverError, match="fake_camera: no first frame"):
        cam.connect()
    opener.join()
    assert cam._thread is None and not inner.connected  # the failed connect cleaned up (thread joined)

    inner = FakeCamera(time.monotonic, shape=(4, 4))
    cam = BackgroundCamera(inner, poll_hz=200.0)
    with cam:
        cam.read()
        inner.fail()  # the device dies: the reader thread ends with the error
        wait_for(lambda: cam._error is not None, "the reader thread to record the failure")
        with pytest.raises(DriverError, match="fake_camera: reader thread failed: DriverError"):
            cam.read()
    fresh = BackgroundCamera(FakeCamera())
    with pytest.raises(DriverError, match="fake_camera: no frame yet"):
        fresh.read()


def test_row6_frames_are_the_inner_cameras_own():
    inner = FakeCamera(time.monotonic, shape=(2, 3), render=lambda t: np.full((2, 3, 3), 7, np.uint8))
    with BackgroundCamera(inner) as cam:
        frame = cam.read()
    assert frame.image.shape == (2, 3, 3) and frame.image[0, 0, 0] == 7


# ------------------------------------------------------------------ row 12: a Franka already in use
def test_row12_second_client_is_told_the_arm_may_be_in_use(franka_sim):
    pytest.importorskip("franky", reason="franky-control not installed (pip install franky-control)")
    from runtime.drivers.franka import FrankaConfig, FrankaRobot

    first = FrankaRobot(FrankaConfig(ip=franka_sim.ip, gripper=False))
    first.connect()
    try:
        second = FrankaRobot(FrankaConfig(ip=franka_sim.ip, gripper=False, connect_timeout_s=2.0))
        with pytest.raises(DriverError) as info:
            second.connect()
        msg = str(info.value)
        assert franka_sim.ip in msg and "in use by another client" in msg and "accepts connections" in msg
        assert not second.connected and first.connected
    finally:
        first.close()


def test_row12_nobody_listening_still_lists_the_busy_arm_among_the_causes():
    from runtime.drivers.franka import diagnose_no_answer

    msg = diagnose_no_answer("127.0.0.254", probe_timeout_s=1.0)  # nothing listens on this loopback address
    assert "refused" in msg and "FCI" in msg and "in use by another client" in msg
