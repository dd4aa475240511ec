"""The table-top env contract: gymnasium API, determinism, cameras, action handling, config rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policy import keys
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim.env import RandomizationConfig
from sim.motion import yaw_rot6d
from sim.pick_place import PickPlaceConfig, PickPlaceEnv


def _hold(obs) -> np.ndarray:
    """The action that keeps the gripper where it is, open."""
    return np.concatenate([obs[keys.EE_POSE], [0.08]]).astype(np.float32)


def test_check_env_passes():
    env = PickPlaceEnv(PickPlaceConfig(image_height=32, image_width=32))
    with warnings.catch_warnings():  # actions are absolute targets in metres, not a normalized box
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")
        check_env(env, skip_render_check=True)
    env.close()


def test_observation_shapes_and_dtypes(env):
    obs, info = env.reset(seed=0)
    assert obs[keys.SCENE_RGB].shape == obs[keys.WRIST_RGB].shape == (96, 96, 3)
    assert obs[keys.SCENE_RGB].dtype == np.uint8
    assert obs[keys.EE_POSE].shape == (9,) and obs[keys.EE_POSE].dtype == np.float32
    assert obs[keys.GRIPPER].shape == (1,) and obs[keys.GRIPPER].dtype == np.float32
    assert set(info) >= {"is_success", "score"}
    np.testing.assert_allclose(obs[keys.EE_POSE][LAYOUT.rotation], yaw_rot6d(0.0), atol=1e-4)  # top-down at reset
    assert obs[keys.GRIPPER][0] == pytest.approx(0.08, abs=1e-3)


def test_same_seed_gives_identical_observations_and_rollouts(env):
    def run(seed):
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        action = _hold(obs)
        for i in range(3):
            action[0] += 0.02
            action[9] = 0.02 * i
            frames.append(env.step(action)[0])
        return frames

    a, b = run(7), run(7)
    for fa, fb in zip(a, b):
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
    c = run(8)
    assert not np.array_equal(a[0][keys.SCENE_RGB], c[0][keys.SCENE_RGB])  # the cube moved


def test_both_cameras_change_when_the_gripper_moves(env):
    obs0, _ = env.reset(seed=1)
    action = _hold(obs0)
    action[:3] += (0.08, -0.06, -0.1)
    for _ in range(5):
        obs, *_ = env.step(action)
    np.testing.assert_allclose(obs[keys.EE_POSE][:3], action[:3], atol=2e-3)  # the hand tracks the target
    for key in keys.IMAGE_KEYS:
        diff = np.abs(obs[key].astype(int) - obs0[key].astype(int)).mean()
        assert diff > 2.0, f"{key} barely changed ({diff:.2f}) although the gripper moved 14 cm"


def test_motion_per_step_is_limited_and_targets_are_clipped(env):
    obs, _ = env.reset(seed=2)
    action = _hold(obs)
    action[0] += 0.3  # far away: one control period moves at most max_speed * dt
    obs1, _, _, _, info = env.step(action)
    step = np.linalg.norm(obs1[keys.EE_POSE][:3] - obs[keys.EE_POSE][:3])
    assert step <= env.cfg.max_speed / env.cfg.control_hz + 2e-3
    wild = np.array([5.0, -5.0, -1.0, 2, 0, 0, 0, 3, 0, 0.5])
    clipped = env.clip_action(wild)
    np.testing.assert_allclose(clipped[:3], [env.cfg.workspace_max[0], env.cfg.workspace_min[1],
                                             env.cfg.workspace_min[2]])
    np.testing.assert_allclose(clipped[3:9], [1, 0, 0, 0, 1, 0])  # re-orthonormalized
    assert clipped[9] == pytest.approx(0.08)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(10, np.nan))


def test_gripper_width_follows_the_command(env):
    obs, _ = env.reset(seed=3)
    action = _hold(obs)
    action[9] = 0.03
    for _ in range(4):
        obs, *_ = env.step(action)
    assert obs[keys.GRIPPER][0] == pytest.approx(0.03, abs=2e-3)


def test_randomization_is_off_by_default_and_seeded_when_on():
    cfg = PickPlaceConfig(image_height=32, image_width=32,
                          randomization=RandomizationConfig(light=0.3, colors=0.2, camera_pos=0.02, camera_rot=0.05))
    plain = PickPlaceEnv(PickPlaceConfig(image_height=32, image_width=32))
    rand = PickPlaceEnv(cfg)
    rgba = plain.model.geom_rgba.copy()
    plain.reset(seed=0)
    np.testing.assert_array_equal(plain.model.geom_rgba, rgba)
    a = rand.reset(seed=0)[0][keys.SCENE_RGB]
    b = rand.reset(seed=1)[0][keys.SCENE_RGB]
    c = rand.reset(seed=0)[0][keys.SCENE_RGB]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    assert not np.array_equal(rand.model.geom_rgba, rgba)
    plain.close()
    rand.close()


@pytest.mark.parametrize("bad, match", [
    (dict(timestep=0.003), "whole number"),
    (dict(n_interp=7), "n_interp"),
    (dict(workspace_min=(0.5, 0.0, 0.0), workspace_max=(0.4, 0.1, 0.1)), "workspace_min"),
    (dict(ee_start=(2.0, 0.0, 0.2)), "ee_start"),
    (dict(cube_half=0.05), "cube_half"),
    (dict(scene_camera_pos=(0.5, 0.0, 0.5), scene_camera_lookat=(0.5, 0.0, 0.5)), "scene_camera_pos"),
    (dict(scene_camera_fovy=0.0), "scene_camera_fovy"),
])
def test_config_rules_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PickPlaceConfig(**bad)
    with pytest.raises(ValueError, match="randomization.light"):
        RandomizationConfig(light=-1.0)


def test_scene_camera_pose_is_a_config_value():
    """Moving the scene camera changes only the scene image; the wrist camera and the state stay the same."""
    a = PickPlaceEnv(PickPlaceConfig())
    b = PickPlaceEnv(PickPlaceConfig(scene_camera_pos=(0.8, 0.0, 0.75), scene_camera_lookat=(0.5, 0.0, 0.0),
                                     scene_camera_fovy=40.0))
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    assert not np.array_equal(oa[keys.SCENE_RGB], ob[keys.SCENE_RGB])
    np.testing.assert_array_equal(oa[keys.WRIST_RGB], ob[keys.WRIST_RGB])
    np.testing.assert_array_equal(oa[keys.EE_POSE], ob[keys.EE_POSE])
    a.close()
    b.close()
