"""FrankaRobot against an embedded franky-sim server (fixture ``franka_sim`` in conftest.py).

Tolerances were measured on a shared 2-core machine, idle and with both cores saturated by other
processes (see the constants); no test asserts how fast anything runs, only that failures surface
before a generous hang guard.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from runtime.drivers.base import DriverError
from runtime.drivers.franka import FrankaConfig, FrankaRobot, check_target, matrix_pose, pose_matrix
from runtime.rotation import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix

DT = 0.1  # s, the controller's period
# Streaming 16 targets along a 5 cm line (3.1 mm per step, 3.1 cm/s) with dynamics_factor 0.1, measured
# over repeated runs idle and with three CPU hogs on the two cores:
# - distance from the line (y, z) and overshoot past its end: <= 0.13 mm and <= 0.2 mm -> PATH_TOL_M;
# - position 1 s after the last target: <= 0.09 mm idle, up to 0.57 mm overloaded -> FINAL_TOL_M, polled
#   for up to SETTLE_S so a slow simulator only takes longer;
# - peak-to-peak drift over 1 s without commands: <= 0.11 mm (the simulator's null-space jitter) -> HOLD_TOL_M.
# The lag behind the newest target at the end of each tick is 0.3-1.0 mm idle (a third of a step) but
# reached 20 mm under that overload because the 1 kHz Python simulator then runs slower than real time,
# so it is a timing figure and only asserted loosely (the arm covered a quarter of the line by the end).
PATH_TOL_M = 0.5e-3
FINAL_TOL_M = 0.5e-3
HOLD_TOL_M = 0.3e-3
SETTLE_S = 5.0  # generous deadline to converge on the last target
HANG_GUARD_S = 15.0  # a failure must surface before this; libfranka's own UDP timeout is 1 s


def run_within(seconds: float, fn: Callable[[], object]) -> object:
    """Run fn in a daemon thread; fail the test (instead of hanging) if it has not returned in time."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"call still blocked after {seconds} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def stream(robot: FrankaRobot, targets: np.ndarray) -> np.ndarray:
    """Write targets (N, 10) at 10 Hz on absolute deadlines, checking what write() returns; return the
    measured poses (N, 9) read at the end of each tick."""
    poses = []
    t0 = time.monotonic()
    for i, target in enumerate(targets):
        sent = robot.write(target)
        np.testing.assert_allclose(sent[:9], target[:9], atol=1e-9)
        time.sleep(max(0.0, t0 + (i + 1) * DT - time.monotonic()))
        poses.append(robot.read().ee_pose)
    return np.array(poses)


def settle(robot: FrankaRobot, target: np.ndarray) -> np.ndarray:
    """Poll until the measured position is within FINAL_TOL_M of target (10,) or SETTLE_S passed; return
    the last measured pose (9,)."""
    deadline = time.monotonic() + SETTLE_S
    pose = robot.read().ee_pose
    while np.linalg.norm(pose[:3] - target[:3]) >= FINAL_TOL_M and time.monotonic() < deadline:
        time.sleep(DT)
        pose = robot.read().ee_pose
    return pose


def line_targets(start_pose: np.ndarray, n: int = 16, length_m: float = 0.05, width: float = 0.04) -> np.ndarray:
    """(n, 10) targets along +x from start_pose (9,), keeping its orientation."""
    targets = np.tile(np.concatenate([start_pose, [width]]), (n, 1))
    targets[:, 0] += length_m * np.arange(1, n + 1) / n
    return targets


@pytest.fixture
def franka_robot(franka_sim):
    pytest.importorskip("franky", reason="franky-control not installed (pip install franky-control)")
    robot = FrankaRobot(FrankaConfig(ip=franka_sim.ip))
    robot.connect()
    try:
        yield robot
    finally:
        robot.close()


# ------------------------------------------------------------------ pure logic, no simulator
@pytest.mark.parametrize("field, kwargs", [
    ("ip", {"ip": ""}),
    ("ip", {"ip": "10.0.0 .2"}),
    ("dynamics_factor", {"dynamics_factor": 0.0}),
    ("dynamics_factor", {"dynamics_factor": 1.5}),
    ("gripper_max_width_m", {"gripper_min_width_m": 0.05, "gripper_max_width_m": 0.04}),
    ("gripper_speed_mps", {"gripper_speed_mps": -0.1}),
    ("gripper_deadband_m", {"gripper_deadband_m": -1e-3}),
    ("grasp_force_n", {"grasp_force_n": 500.0}),
    ("state_timeout_s", {"state_timeout_s": 0.0}),
    ("connect_timeout_s", {"connect_timeout_s": -1.0}),
])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        FrankaConfig(**{"ip": "172.16.0.2", **kwargs})


def test_pose_conversion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = axis_angle_to_matrix(rng.normal(size=3))
        pose = np.concatenate([rng.normal(size=3), matrix_to_rot6d(r)])
        m = pose_matrix(pose)
        np.testing.assert_allclose(m[:3, :3], r, atol=1e-12)
        np.testing.assert_allclose(matrix_pose(m), pose, atol=1e-12)


def test_bad_target_is_rejected_before_sending():
    robot = FrankaRobot(FrankaConfig(ip="172.16.0.2"))
    with pytest.raises(ValueError, match="franka@172.16.0.2"):
        robot.write(np.zeros(9))
    with pytest.raises(ValueError):
        check_target(np.full(10, np.nan), "franka")
    with pytest.raises(DriverError, match="not connected"):
        robot.write(np.concatenate([np.zeros(3), [1, 0, 0, 0, 1, 0], [0.04]]))


def test_missing_package_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)  # makes `import franky` raise ImportError
    with pytest.raises(DriverError, match="pip install franky-control"):
        FrankaRobot(FrankaConfig(ip="172.16.0.2")).connect()


def test_a_planner_failure_is_named_with_what_to_do():
    robot = FrankaRobot(FrankaConfig(ip="127.0.0.1"))
    err = robot._latch("the running motion", RuntimeError("Motion planner failed with error code -111"))
    assert "ruckig" in str(err) and "franky issue #76" in str(err) and "reset()" in str(err)
    err = FrankaRobot(FrankaConfig(ip="127.0.0.1"))._latch("reading the state", OSError("timed out"))
    assert "connection lost?" in str(err)


def test_refused_connection_names_the_ip():
    pytest.importorskip("franky", reason="franky-control not installed (pip install franky-control)")
    robot = FrankaRobot(FrankaConfig(ip="127.0.0.254", connect_timeout_s=5.0))  # nothing listens there
    with pytest.raises(DriverError, match="127.0.0.254"):
        run_within(HANG_GUARD_S, robot.connect)
    assert not robot.connected


# ------------------------------------------------------------------ against franky-sim
def test_connect_and_read_gives_a_sane_state(franka_sim, franka_robot):
    before = time.monotonic()
    state = franka_robot.read()
    assert before <= state.timestamp <= time.monotonic()
    assert state.ee_pose.shape == (9,) and state.gripper.shape == (1,) and state.joints.shape == (7,)
    rot = rot6d_to_matrix(state.ee_pose[3:])
    np.testing.assert_allclose(matrix_to_rot6d(rot), state.ee_pose[3:], atol=1e-6)  # already orthonormal
    assert 0.2 < state.ee_pose[0] < 0.8 and abs(state.ee_pose[1]) < 0.2 and 0.2 < state.ee_pose[2] < 0.9
    home = np.array([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])  # franky-sim's initial joints
    np.testing.assert_allclose(state.joints, home, atol=0.02)
    assert 0.0 <= state.gripper[0] <= 0.08
    assert franka_robot.read().timestamp >= state.timestamp


def test_streaming_a_line_is_followed(franka_robot):
    start = franka_robot.read().ee_pose
    targets = line_targets(start, width=0.02)  # also closes the hand from 0.04 to 0.02 m
    poses = stream(franka_robot, targets)
    off_line = np.linalg.norm(poses[:, 1:3] - start[1:3], axis=1)
    assert off_line.max() < PATH_TOL_M, f"distance from the line (m): {np.round(off_line, 5)}"
    progress = poses[:, 0] - start[0]
    assert progress.max() < 0.05 + PATH_TOL_M  # no overshoot
    assert np.all(np.diff(progress) > -PATH_TOL_M)  # never backs up
    assert progress[-1] > 0.05 / 4, f"the arm hardly moved while streaming: {np.round(progress, 4)}"
    final = settle(franka_robot, targets[-1])
    assert np.linalg.norm(final[:3] - targets[-1, :3]) < FINAL_TOL_M
    np.testing.assert_allclose(poses[:, 3:], np.tile(start[3:], (len(poses), 1)), atol=1e-3)  # orientation kept
    deadline = time.monotonic() + SETTLE_S
    while abs(franka_robot.read().gripper[0] - 0.02) > 2e-3 and time.monotonic() < deadline:
        time.sleep(DT)
    assert franka_robot.read().gripper[0] == pytest.approx(0.02, abs=2e-3)


def test_stalled_stream_holds_still_without_error(franka_robot):
    start = franka_robot.read().ee_pose
    targets = line_targets(start, n=5, length_m=0.01)
    stream(franka_robot, targets)
    settle(franka_robot, targets[-1])
    positions = []
    for _ in range(10):  # 1 s with no commands
        time.sleep(DT)
        positions.append(franka_robot.read().ee_pose[:3])
    drift = np.ptp(np.array(positions), axis=0)
    assert np.all(drift < HOLD_TOL_M), f"drift (m): {drift}"
    resumed = line_targets(franka_robot.read().ee_pose, n=3, length_m=0.005)
    stream(franka_robot, resumed)  # streaming resumes after the stall
    assert np.linalg.norm(settle(franka_robot, resumed[-1])[:3] - resumed[-1, :3]) < FINAL_TOL_M


def test_stop_is_idempotent_and_refuses_until_reset(franka_robot):
    start = franka_robot.read().ee_pose
    stream(franka_robot, line_targets(start, n=3, length_m=0.006))
    franka_robot.stop()
    franka_robot.stop()
    held = franka_robot.read().ee_pose[:3]
    with pytest.raises(DriverError, match="stopped"):
        franka_robot.write(line_targets(start, n=1)[0])
    time.sleep(0.3)
    assert np.linalg.norm(franka_robot.read().ee_pose[:3] - held) < HOLD_TOL_M
    franka_robot.reset()
    resumed = line_targets(franka_robot.read().ee_pose, n=2, length_m=0.004)
    stream(franka_robot, resumed)
    assert np.linalg.norm(settle(franka_robot, resumed[-1])[:3] - resumed[-1, :3]) < FINAL_TOL_M
    franka_robot.close()
    franka_robot.stop()  # still fine after close
    franka_robot.close()


def _fail_loop(robot: FrankaRobot, target: np.ndarray) -> DriverError:
    """Alternate write/read at 10 Hz until a DriverError; return it."""
    for _ in range(int(HANG_GUARD_S / DT)):
        try:
            robot.write(target)
            robot.read()
        except DriverError as exc:
            return exc
        time.sleep(DT)
    pytest.fail("no DriverError after the simulator went away")


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_losing_the_simulator_raises_driver_error(franka_sim, franka_robot, how):
    """kill: the server process is gone (sockets closed). freeze: it stops answering (pulled cable)."""
    start = franka_robot.read().ee_pose
    targets = line_targets(start, n=4, length_m=0.008)
    stream(franka_robot, targets)
    if how == "kill":
        franka_sim.kill()
    else:
        franka_sim.server.cleanup()  # no more steps or state packets, connections left open
    exc = run_within(HANG_GUARD_S, lambda: _fail_loop(franka_robot, targets[-1]))
    assert franka_sim.ip in str(exc)
    for call in (franka_robot.read, lambda: franka_robot.write(targets[-1])):  # latched: fails fast, same message
        with pytest.raises(DriverError, match=franka_sim.ip):
            run_within(HANG_GUARD_S, call)
    run_within(HANG_GUARD_S, franka_robot.stop)  # never raises, never hangs
    run_within(HANG_GUARD_S, franka_robot.close)


class _FailingMotion:
    """Wraps a franky.Robot; poll_motion raises what a reflex would (franky-sim never reflexes)."""

    def __init__(self, robot, exc: Exception):
        self._robot, self._exc = robot, exc

    def poll_motion(self):
        raise self._exc

    def __getattr__(self, name):
        return getattr(self._robot, name)


def test_control_exception_is_latched_until_reset(franka_robot):
    import franky

    start = franka_robot.read().ee_pose
    targets = line_targets(start, n=2, length_m=0.004)
    stream(franka_robot, targets[:1])
    real = franka_robot._robot
    franka_robot._robot = _FailingMotion(real, franky.ControlException("cartesian_reflex"))
    with pytest.raises(DriverError, match=r"franka@.*cartesian_reflex.*reset\(\)"):
        franka_robot.write(targets[1])
    franka_robot._robot = real
    with pytest.raises(DriverError, match="cartesian_reflex"):  # latched, even though the motion is fine
        franka_robot.read()
    franka_robot.reset()
    stream(franka_robot, targets[1:])
    assert np.linalg.norm(settle(franka_robot, targets[-1])[:3] - targets[-1, :3]) < FINAL_TOL_M
