"""Safety layer: every limit clips or rejects a violating command and names its reason."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.rotation import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix, rotation_angle
from runtime.safety import OutsideWorkspace, SafetyConfig, SafetyLayer

DT = 0.1
HOME = np.array([0.3, 0.0, 0.3, 1, 0, 0, 0, 1, 0, 0.04])


def _layer(**cfg) -> SafetyLayer:
    layer = SafetyLayer(SafetyConfig(**cfg), DT)
    layer.reset(HOME)
    return layer


def _moved(dx=0.0, dy=0.0, dz=0.0, grip=0.04, rot=None) -> np.ndarray:
    t = HOME.copy()
    t[:3] += [dx, dy, dz]
    t[9] = grip
    if rot is not None:
        t[3:9] = matrix_to_rot6d(axis_angle_to_matrix(np.asarray(rot, float)))
    return t


def test_a_small_move_passes_unchanged():
    layer = _layer()
    res = layer.check(_moved(dx=0.001))
    assert res.reasons == [] and not res.stop
    np.testing.assert_allclose(res.command, _moved(dx=0.001), atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_rejected_and_the_robot_holds(bad):
    layer = _layer()
    target = _moved(dx=0.001)
    target[4] = bad
    res = layer.check(target)
    assert res.reasons == ["nonfinite_action"] and layer.counts["nonfinite_action"] == 1
    np.testing.assert_array_equal(res.command, HOME)


@pytest.mark.parametrize("rot", [[0, 0, 0, 0, 0, 0], [1, 0, 0, 3, 0, 0], [0, 1, 0, 0, -1e-300, 0]])
def test_degenerate_rotations_are_rejected_and_the_robot_holds(rot):
    layer = _layer()
    layer.check(_moved(dx=0.001))
    target = _moved(dx=0.002)
    target[3:9] = rot
    res = layer.check(target)
    assert res.reasons == ["degenerate_rotation"] and layer.counts["degenerate_rotation"] == 1
    np.testing.assert_array_equal(res.command, _moved(dx=0.001))
    assert np.all(layer.velocity == 0)


def test_reset_never_moves_the_arm_into_the_box():
    layer = SafetyLayer(SafetyConfig(workspace_max=(0.5, 0.8, 0.8)), DT)
    outside = HOME.copy()
    outside[0] = 0.6
    with pytest.raises(OutsideWorkspace, match=r"x = 0.6000 m is outside \[-0.8, 0.5\] m"):
        layer.reset(outside)
    assert layer.last is None and layer.counts["start_outside_workspace"] == 1
    wide = HOME.copy()
    wide[9] = 0.09
    assert layer.reset(wide) == ["gripper_range"] and layer.last[9] == 0.08
    np.testing.assert_array_equal(layer.last[:9], HOME[:9])


def test_workspace_box_clips_position():
    layer = _layer(workspace_min=(0.0, -0.5, 0.25), workspace_max=(0.5, 0.5, 0.6), max_speed=3, max_accel=50)
    res = layer.check(_moved(dz=-0.2))  # z = 0.1, below the table limit 0.25
    assert "workspace" in res.reasons and res.command[2] == pytest.approx(0.25)


def test_speed_is_limited_per_tick():
    layer = _layer(max_speed=0.25, max_accel=50)
    res = layer.check(_moved(dx=0.1))  # 1 m/s requested
    assert "speed" in res.reasons
    assert np.linalg.norm(res.command[:3] - HOME[:3]) == pytest.approx(0.25 * DT)


def test_acceleration_is_limited_per_tick():
    layer = _layer(max_speed=3, max_accel=1.0)
    res = layer.check(_moved(dx=0.02))  # from rest to 0.2 m/s in one tick = 2 m/s^2
    assert "accel" in res.reasons
    assert res.command[0] - HOME[0] == pytest.approx(1.0 * DT * DT)  # v = a*dt, moved v*dt


def test_rotational_speed_is_limited():
    layer = _layer(max_rot_speed=0.5, max_rot_accel=100)
    res = layer.check(_moved(rot=[0, 0, 0.5]))  # 5 rad/s requested
    assert "rot_speed" in res.reasons
    assert rotation_angle(rot6d_to_matrix(res.command[3:9])) == pytest.approx(0.05, abs=1e-9)


def test_rotational_acceleration_is_limited():
    layer = _layer(max_rot_speed=6, max_rot_accel=2.0)
    res = layer.check(_moved(rot=[0.1, 0, 0]))  # 1 rad/s from rest in one tick = 10 rad/s^2
    assert "rot_accel" in res.reasons
    assert rotation_angle(rot6d_to_matrix(res.command[3:9])) == pytest.approx(2.0 * DT * DT, abs=1e-9)


@pytest.mark.parametrize("grip,expected", [(0.5, 0.08), (-0.01, 0.0)])
def test_gripper_is_clamped_to_its_range(grip, expected):
    res = _layer().check(_moved(grip=grip))
    assert res.reasons == ["gripper_range"] and res.command[9] == expected


def test_stale_observation_holds_then_stops():
    layer = _layer(stale_hold_s=0.25, stale_stop_s=1.0)
    assert layer.check_staleness({"robot": 0.01, "scene_rgb": 0.05}, now=0.0) is None
    res = layer.check_staleness({"robot": 0.01, "scene_rgb": 0.3}, now=0.0)
    assert res.reasons == ["stale_scene_rgb"] and not res.stop
    np.testing.assert_array_equal(res.command, HOME)
    assert layer.check_staleness({"robot": 0.01, "scene_rgb": 0.8}, now=0.5).stop is False
    res = layer.check_staleness({"robot": 0.01, "scene_rgb": 1.1}, now=0.8)
    assert res.stop and "stale_stop" in res.reasons
    # fresh again: the watchdog resets
    assert layer.check_staleness({"robot": 0.01, "scene_rgb": 0.0}, now=0.9) is None


def test_interventions_are_counted_by_reason():
    layer = _layer(max_speed=0.25, max_accel=50)
    for _ in range(3):
        layer.check(_moved(dx=1.0))
    layer.hold("underrun")
    assert layer.counts["speed"] == 3 and layer.counts["underrun"] == 1


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="max_speed"):
        SafetyConfig(max_speed=0)
    with pytest.raises(ValueError, match="workspace_min"):
        SafetyConfig(workspace_min=(1, 0, 0), workspace_max=(0, 1, 1))
    with pytest.raises(ValueError, match="stale_stop_s"):
        SafetyConfig(stale_hold_s=1.0, stale_stop_s=0.5)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        _layer().check(np.zeros(7))
