"""Push-T: the env contract, the overlap score, success detection and the scripted demonstrator."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policy import keys
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim.push_t import PushTConfig, PushTEnv, point_distance, t_outline, transform
from sim.push_t_demo import PushDemoConfig, PushTDemonstrator
from sim.rollout import rollout


@pytest.fixture(scope="module")
def env():
    """One Push-T env per module (overrides the pick-and-place ``env`` of conftest)."""
    e = PushTEnv()
    yield e
    e.close()


def _place(env, pose) -> dict:
    """Put the T at ``pose`` and hold the gripper still for a few control steps; the last info."""
    env.place_block(pose)
    action = np.concatenate([env.ee_pose(), [0.0]])
    for _ in range(3):
        *_, info = env.step(action)
    return info


def test_check_env_passes():
    e = PushTEnv(PushTConfig(image_height=32, image_width=32))
    with warnings.catch_warnings():  # actions are absolute targets in metres, not a normalized box
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")
        check_env(e, skip_render_check=True)
    e.close()


def test_reset_is_seeded_random_and_never_near_solved(env):
    a, info = env.reset(seed=7)
    pose_a = env.block_pose()
    b, _ = env.reset(seed=7)
    np.testing.assert_array_equal(env.block_pose(), pose_a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    poses = []
    for seed in range(20):
        _, info = env.reset(seed=seed)
        pose = env.block_pose()
        poses.append(pose)
        assert info["is_success"] is False and info["score"] < env.cfg.max_init_overlap
        hand = env.ee_pose()[:2]
        assert point_distance(hand, transform(t_outline(env.cfg), pose)) >= env.cfg.init_clearance - 0.005
        assert abs(env.data.qpos[env._qadr[2]]) < 1e-3  # resting on the table
    spread = np.ptp(np.array(poses), axis=0)
    assert spread[0] > 0.1 and spread[1] > 0.1 and spread[2] > 1.5


def test_both_cameras_change_when_the_gripper_moves(env):
    obs0, _ = env.reset(seed=1)
    action = np.concatenate([obs0[keys.EE_POSE], [0.0]]).astype(np.float32)
    action[:3] += (-0.06, 0.1, 0.05)
    for _ in range(5):
        obs, *_ = env.step(action)
    np.testing.assert_allclose(obs[keys.EE_POSE][:3], action[:3], atol=2e-3)
    for key in keys.IMAGE_KEYS:
        diff = np.abs(obs[key].astype(int) - obs0[key].astype(int)).mean()
        assert diff > 2.0, f"{key} barely changed ({diff:.2f}) although the gripper moved 13 cm"


def test_block_at_the_goal_is_a_success_and_off_goal_is_not(env):
    env.reset(seed=2)
    info = _place(env, env.goal_pose)
    assert info["is_success"] is True and info["score"] > 0.99
    for offset in ([0.03, 0.0, 0.0], [0.0, 0.0, 0.35], [0.01, -0.01, 0.1]):
        info = _place(env, env.goal_pose + np.array(offset))
        assert info["is_success"] is False and 0.3 < info["score"] < env.cfg.success_overlap, offset
    info = _place(env, env.goal_pose + np.array([0.0, 0.0, math.pi]))  # upside down on the outline: no
    assert info["is_success"] is False


def test_overlap_of_a_small_shift_matches_the_analytic_value(env):
    c, goal = env.cfg, env.goal_pose
    length, arm, stem = c.bar_length, c.arm_width, c.stem_length
    rot = np.array([[math.cos(goal[2]), -math.sin(goal[2])], [math.sin(goal[2]), math.cos(goal[2])]])
    for shift, expected in (
        ((0.01, 0.0), ((length - 0.01) * arm + (arm - 0.01) * stem) / env.area),  # along the bar
        ((0.0, 0.008), ((arm - 0.008) * length + stem * arm) / env.area),  # toward the bar: the stem stays covered
    ):
        pose = goal + np.r_[rot @ np.array(shift), 0.0]
        assert env.overlap_at(pose) == pytest.approx(expected, abs=0.01)
    # an arbitrary pose against a dense grid estimate
    pose = goal + np.array([0.012, -0.02, 0.4])
    xs = np.arange(0.3, 0.7, 0.0005)
    grid = np.stack(np.meshgrid(xs, xs - 0.5), axis=-1).reshape(-1, 2)  # (N, 2) world points, 0.5 mm apart
    cur, tgt = transform(t_outline(c), pose), transform(t_outline(c), goal)
    inside = [_inside(grid, cur), _inside(grid, tgt)]
    estimate = np.sum(inside[0] & inside[1]) / np.sum(inside[1])
    assert env.overlap_at(pose) == pytest.approx(estimate, abs=0.01)


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool, even-odd rule."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    result = np.zeros(len(points), dtype=bool)
    for (x0, y0), (x1, y1) in zip(a, b):
        crosses = (y0 > points[:, 1]) != (y1 > points[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (points[:, 1] - y0) * (x1 - x0) / (y1 - y0)
        result ^= crosses & (points[:, 0] < x_at)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demonstrator_succeeds(env, seed):
    result = rollout(env, seed, keep_obs=False)
    assert result["success"], f"seed {seed}: score {result['score']:.2f} after {result['steps']} steps"
    assert result["actions"].shape == (result["steps"], keys.ACTION_DIM)
    assert result["steps"] < env.cfg.max_episode_steps
    assert abs(env.data.qpos[env._qadr[2]]) < 2e-3  # pushed, never lifted
    actions = result["actions"].astype(np.float64)
    speed = np.linalg.norm(np.diff(actions[:, LAYOUT.position], axis=0), axis=1) * env.cfg.control_hz
    assert speed.max() < 0.25  # runtime SafetyConfig.max_speed default
    position, _, width = LAYOUT.split(actions)
    assert np.all(position[:, 2] > 0.015) and np.all(width == 0.0)  # fingers closed, above the table


def test_demonstrator_rotates_from_either_side(env):
    """The task is multimodal: for the same turn, different seeds push from opposite sides of the T."""
    env.reset(seed=0)
    env.place_block(env.goal_pose + np.array([0.0, 0.0, 1.2]))
    demo = PushTDemonstrator(env)
    starts = []
    for seed in range(12):
        demo.reset(seed)
        start, direction, length = demo.choose_push()
        assert length > 0 and np.linalg.norm(direction) == pytest.approx(1.0)
        starts.append(start)
    starts = np.array(starts)
    assert np.max(np.linalg.norm(starts[:, None] - starts[None], axis=-1)) > 0.08


def test_make_env_builds_push_t_strictly():
    from sim.tasks import make_demonstrator, make_env

    e = make_env("push_t", {"image_height": 32, "image_width": 40, "init_yaw": 1.0})
    assert isinstance(e, PushTEnv) and e.observation_space[keys.SCENE_RGB].shape == (32, 40, 3)
    assert isinstance(make_demonstrator(e), PushTDemonstrator)
    e.close()
    with pytest.raises(ValueError, match="t_size"):
        make_env("push_t", {"t_size": 0.1})


@pytest.mark.parametrize("bad, match", [
    (dict(arm_width=0.2), "arm_width"),
    (dict(block_height=0.05), "block_height"),
    (dict(init_yaw=4.0), "init_yaw"),
    (dict(init_xy_min=(0.6, 0.0), init_xy_max=(0.5, 0.1)), "init_xy_min"),
    (dict(max_init_overlap=0.0), "max_init_overlap"),
    (dict(success_overlap=1.5), "success_overlap"),
    (dict(block_friction=0.0), "block_friction"),
])
def test_config_rules_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PushTConfig(**bad)


@pytest.mark.parametrize("bad, match", [
    (dict(push_speed=(0.1, 0.05)), "push_speed"),
    (dict(travel_height=(0.03, 0.05)), "travel_height"),
    (dict(choice=1.0), "choice"),
])
def test_demo_config_rules_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PushDemoConfig(**bad)
