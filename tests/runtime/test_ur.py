"""URRobot: pose conversion and interpolation, the servo thread against a fake ur_rtde, and hardware tests
(marked ``hardware``; they run only when UR_ROBOT_IP names a reachable arm in remote control mode)."""

from __future__ import annotations

import os
import sys
import threading
import time
import types

import numpy as np
import pytest

from runtime.drivers.base import DriverError
from runtime.drivers.ur import URConfig, URRobot, interpolate_ur, pose_to_ur, ur_to_pose
from runtime.rotation import axis_angle_to_matrix, matrix_to_rot6d, rotation_angle

WAIT_S = 10.0  # hang guard for conditions the servo thread should reach in milliseconds


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# ------------------------------------------------------------------ pure conversions
def test_tool_down_pose_converts_to_6d():
    # The usual UR "tool pointing down" pose: rotation of pi about the base y axis.
    pose = ur_to_pose(np.array([0.3, -0.2, 0.4, 0.0, np.pi, 0.0]))
    np.testing.assert_allclose(pose, [0.3, -0.2, 0.4, -1, 0, 0, 0, 1, 0], atol=1e-12)
    back = pose_to_ur(pose)
    np.testing.assert_allclose(axis_angle_to_matrix(back[3:]), axis_angle_to_matrix(np.array([0, np.pi, 0])),
                               atol=1e-9)


def test_pose_round_trip_random_rotations():
    rng = np.random.default_rng(1)
    for _ in range(50):
        rotvec = rng.normal(size=3)
        rotvec *= rng.uniform(0, np.pi) / np.linalg.norm(rotvec)
        tcp = np.concatenate([rng.normal(size=3), rotvec])
        pose = ur_to_pose(tcp)
        np.testing.assert_allclose(pose[3:], matrix_to_rot6d(axis_angle_to_matrix(rotvec)), atol=1e-12)
        np.testing.assert_allclose(pose_to_ur(pose), tcp, atol=1e-7)


def test_non_orthonormal_6d_is_orthonormalized():
    tcp = pose_to_ur(np.array([0, 0, 0, 2.0, 0.1, 0, 0, 1.0, 0]))  # scaled, slightly skewed columns
    rot = axis_angle_to_matrix(tcp[3:])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rot[:, 0], [1, 0.05, 0] / np.linalg.norm([1, 0.05, 0]), atol=1e-12)


def test_interpolation_is_linear_and_geodesic():
    start = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    end = np.array([0.1, -0.2, 0.3, 0.0, 0.0, np.pi / 2])
    np.testing.assert_allclose(interpolate_ur(start, end, 0.0), start, atol=1e-12)
    np.testing.assert_allclose(interpolate_ur(start, end, 1.0), end, atol=1e-12)
    np.testing.assert_allclose(interpolate_ur(start, end, 2.0), end, atol=1e-12)  # clipped
    mid = interpolate_ur(start, end, 0.5)
    np.testing.assert_allclose(mid, [0.05, -0.1, 0.15, 0, 0, np.pi / 4], atol=1e-12)
    a = np.array([0.0, 0.0, 0.0, 0.0, np.pi * 0.9, 0.0])  # across the +-pi seam: the short way round
    b = np.array([0.0, 0.0, 0.0, 0.0, -np.pi * 0.9, 0.0])
    step = rotation_angle(axis_angle_to_matrix(a[3:]).T @ axis_angle_to_matrix(interpolate_ur(a, b, 0.5)[3:]))
    assert step == pytest.approx(0.1 * np.pi, abs=1e-9)


@pytest.mark.parametrize("field, kwargs", [
    ("ip", {"ip": " "}),
    ("servo_hz", {"servo_hz": 1000.0}),
    ("watchdog_hz", {"watchdog_hz": 200.0}),
    ("watchdog_hz", {"watchdog_hz": 0.0}),
    ("lookahead_time_s", {"lookahead_time_s": 0.5}),
    ("gain", {"gain": 50.0}),
    ("command_period_s", {"command_period_s": 0.0}),
    ("gripper_max_width_m", {"gripper_min_width_m": 0.1, "gripper_max_width_m": 0.05}),
    ("state_timeout_s", {"state_timeout_s": -1.0}),
])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        URConfig(**{"ip": "192.168.1.10", **kwargs})


# ------------------------------------------------------------------ driver against a fake ur_rtde
class FakeControl:
    """Records calls like RTDEControlInterface; servoL moves the fake TCP to the commanded pose."""

    def __init__(self, robot: FakeUR):
        self.robot = robot

    def _log(self, name: str, *args):
        with self.robot.lock:
            self.robot.calls.append((name, args))

    def servoL(self, pose, speed, acceleration, t, lookahead, gain):  # noqa: N802 - ur_rtde's name
        if self.robot.servo_error is not None:
            raise self.robot.servo_error
        self._log("servoL", list(pose), t, lookahead, gain)
        self.robot.tcp = np.array(pose)
        return self.robot.servo_accepts

    def __getattr__(self, name):  # setWatchdog, kickWatchdog, servoStop, stopScript, ...
        def call(*args):
            self._log(name, *args)
            return True
        return call


class FakeReceive:
    def __init__(self, robot: FakeUR):
        self.robot = robot

    def isConnected(self):  # noqa: N802
        return True

    def getActualTCPPose(self):  # noqa: N802
        return list(self.robot.tcp)

    def getActualQ(self):  # noqa: N802
        return [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]

    def getTimestamp(self):  # noqa: N802
        self.robot.controller_time += 0.002 if self.robot.clock_runs else 0.0
        return self.robot.controller_time

    def isProtectiveStopped(self):  # noqa: N802
        return self.robot.protective_stop

    def isEmergencyStopped(self):  # noqa: N802
        return False

    def disconnect(self):
        pass


class FakeUR:
    """Shared state of the fake arm; installs fake rtde_control / rtde_receive modules."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.calls: list[tuple[str, tuple]] = []
        self.tcp = np.array([0.4, 0.0, 0.3, 0.0, np.pi, 0.0])
        self.controller_time = 0.0
        self.clock_runs = True
        self.protective_stop = False
        self.servo_accepts = True
        self.servo_error: Exception | None = None
        control = types.SimpleNamespace(RTDEControlInterface=lambda ip: FakeControl(self))
        receive = types.SimpleNamespace(RTDEReceiveInterface=lambda ip: FakeReceive(self))
        monkeypatch.setitem(sys.modules, "rtde_control", control)
        monkeypatch.setitem(sys.modules, "rtde_receive", receive)

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    def servo_poses(self) -> np.ndarray:
        with self.lock:
            return np.array([args[0] for name, args in self.calls if name == "servoL"])


@pytest.fixture
def ur_fake(monkeypatch):
    return FakeUR(monkeypatch)


@pytest.fixture
def ur_robot(ur_fake):
    robot = URRobot(URConfig(ip="192.168.1.10"))
    robot.connect()
    try:
        yield robot
    finally:
        robot.close()


def test_missing_package_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)
    with pytest.raises(DriverError, match="pip install ur-rtde"):
        URRobot(URConfig(ip="192.168.1.10")).connect()


def test_read_converts_and_stamps(ur_fake):
    clock = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    robot = URRobot(URConfig(ip="192.168.1.10"), now=lambda: next(clock))
    robot.connect()
    state = robot.read()
    np.testing.assert_allclose(state.ee_pose, [0.4, 0, 0.3, -1, 0, 0, 0, 1, 0], atol=1e-12)
    assert state.timestamp == 2.0 and state.joints.shape == (6,)
    assert state.gripper[0] == pytest.approx(0.085)  # no gripper: the (open) default width
    assert "servoL" not in ur_fake.names() and "setWatchdog" not in ur_fake.names()  # reading does not servo
    robot.close()


def test_write_streams_interpolated_servo_targets_with_watchdog(ur_fake, ur_robot):
    start = ur_robot.read().ee_pose
    target = np.concatenate([start, [0.04]])
    target[0] += 0.01
    sent = ur_robot.write(target)
    np.testing.assert_allclose(sent, target, atol=1e-9)
    wait_for(lambda: len(ur_fake.servo_poses()) > 0 and abs(ur_fake.servo_poses()[-1][0] - target[0]) < 1e-9,
             "the servo thread to reach the target")
    names = ur_fake.names()
    assert names.index("setWatchdog") < names.index("servoL")
    with ur_fake.lock:
        watchdog_hz = next(args[0] for name, args in ur_fake.calls if name == "setWatchdog")
        servo_args = next(args for name, args in ur_fake.calls if name == "servoL")
    assert watchdog_hz == 10.0 and servo_args[1:] == (1 / 125.0, 0.1, 300.0)
    assert names.count("kickWatchdog") >= names.count("servoL") - 1
    xs = ur_fake.servo_poses()[:, 0]
    assert np.all(np.diff(xs) >= -1e-12) and xs[0] >= start[0] - 1e-12  # interpolated, not a jump back
    np.testing.assert_allclose(ur_robot.read().ee_pose, target[:9], atol=1e-9)


def test_stalled_stream_keeps_holding_the_last_target(ur_fake, ur_robot):
    target = np.concatenate([ur_robot.read().ee_pose, [0.04]])
    ur_robot.write(target)
    wait_for(lambda: len(ur_fake.servo_poses()) > 30, "servoing to continue without new targets")
    np.testing.assert_allclose(ur_fake.servo_poses()[-10:], np.tile(pose_to_ur(target), (10, 1)), atol=1e-9)
    ur_robot.read()  # no error


def test_stop_order_and_idempotence(ur_fake, ur_robot):
    ur_robot.write(np.concatenate([ur_robot.read().ee_pose, [0.04]]))
    wait_for(lambda: "servoL" in ur_fake.names(), "servoing")
    ur_robot.stop()
    ur_robot.stop()
    names = ur_fake.names()
    assert names.count("servoStop") == 1 and names.count("stopScript") == 1
    assert names.index("servoStop") < names.index("stopScript")
    assert "servoL" not in names[names.index("servoStop"):]
    with pytest.raises(DriverError, match="stopped"):
        ur_robot.write(np.concatenate([ur_robot.read().ee_pose, [0.04]]))
    ur_robot.reset()
    assert "reuploadScript" in ur_fake.names()
    ur_robot.write(np.concatenate([ur_robot.read().ee_pose, [0.04]]))


def test_lost_connection_in_servo_thread_raises(ur_fake, ur_robot):
    target = np.concatenate([ur_robot.read().ee_pose, [0.04]])
    ur_robot.write(target)
    ur_fake.servo_error = RuntimeError("RTDE control script is not running!")
    with pytest.raises(DriverError, match="192.168.1.10.*servoL failed"):
        wait_for(lambda: ur_robot.write(target) is None, "a DriverError")
    with pytest.raises(DriverError, match="192.168.1.10"):  # latched
        ur_robot.read()


def test_refused_servo_and_protective_stop_raise(ur_fake, ur_robot):
    target = np.concatenate([ur_robot.read().ee_pose, [0.04]])
    ur_fake.protective_stop = True
    with pytest.raises(DriverError, match="protective"):
        ur_robot.write(target)


def test_refused_servol_raises(ur_fake, ur_robot):
    target = np.concatenate([ur_robot.read().ee_pose, [0.04]])
    ur_fake.servo_accepts = False
    ur_robot.write(target)
    with pytest.raises(DriverError, match="refused"):
        wait_for(lambda: ur_robot.read() is None, "a DriverError")


def test_frozen_controller_clock_raises(ur_fake):
    clock = [0.0]
    robot = URRobot(URConfig(ip="192.168.1.10", state_timeout_s=0.5), now=lambda: clock[0])
    robot.connect()
    robot.read()
    ur_fake.clock_runs = False
    robot.read()
    clock[0] = 0.4
    robot.read()  # within the timeout
    clock[0] = 1.0
    with pytest.raises(DriverError, match="192.168.1.10.*not advanced"):
        robot.read()
    robot.close()


def test_gripper_callable_gets_clipped_width_with_deadband(ur_fake):
    sent: list[float] = []
    robot = URRobot(URConfig(ip="192.168.1.10"), gripper_command=sent.append, gripper_width=lambda: 0.033)
    robot.connect()
    try:
        pose = robot.read().ee_pose
        assert robot.write(np.concatenate([pose, [0.5]]))[9] == pytest.approx(0.085)  # clipped, == last: no send
        robot.write(np.concatenate([pose, [0.02]]))
        robot.write(np.concatenate([pose, [0.021]]))  # inside the 2 mm deadband
        robot.write(np.concatenate([pose, [-0.01]]))
        assert sent == [0.02, 0.0]
        assert robot.read().gripper[0] == pytest.approx(0.033)  # measured by gripper_width
    finally:
        robot.close()


def test_without_gripper_read_echoes_the_command(ur_robot):
    pose = ur_robot.read().ee_pose
    ur_robot.write(np.concatenate([pose, [0.03]]))
    assert ur_robot.read().gripper[0] == pytest.approx(0.03)


# ------------------------------------------------------------------ real hardware
@pytest.mark.hardware
@pytest.mark.skipif(not os.environ.get("UR_ROBOT_IP"), reason="set UR_ROBOT_IP to run against a real UR arm")
def test_hardware_read_and_hold():
    """Connects, reads, then streams the current pose (no motion) for 1 s and checks the arm stayed put."""
    pytest.importorskip("rtde_control", reason="ur-rtde not installed")
    robot = URRobot(URConfig(ip=os.environ["UR_ROBOT_IP"]))
    robot.connect()
    try:
        state = robot.read()
        assert state.ee_pose.shape == (9,) and state.joints.shape == (6,)
        target = np.concatenate([state.ee_pose, [state.gripper[0]]])
        t0 = time.monotonic()
        for i in range(10):
            robot.write(target)
            time.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))
        assert np.linalg.norm(robot.read().ee_pose[:3] - state.ee_pose[:3]) < 1e-3
    finally:
        robot.close()


def test_refused_connection_names_the_ip():
    pytest.importorskip("rtde_control", reason="ur-rtde not installed")
    robot = URRobot(URConfig(ip="127.0.0.254", connect_timeout_s=5.0))  # nothing listens there
    with pytest.raises(DriverError, match="ur@127.0.0.254"):
        robot.connect()
    assert not robot.connected
