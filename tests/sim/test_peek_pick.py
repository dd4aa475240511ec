"""Peek-and-pick: the mark is hidden from the scene camera but not from the wrist camera; success detection;
the scripted demonstrator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policy import keys
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim import scene
from sim.env import RandomizationConfig
from sim.peek_pick import PeekDemoConfig, PeekPickConfig, PeekPickDemonstrator, PeekPickEnv
from sim.rollout import rollout


@pytest.fixture(scope="module")
def env():
    e = PeekPickEnv()
    yield e
    e.close()


def _forward(env) -> None:
    """``mj_forward`` after teleporting things (mujoco imported here: ``sim`` must pick the GL backend first)."""
    import mujoco

    mujoco.mj_forward(env.model, env.data)


def _mark_pixels(image: np.ndarray) -> int:
    """Pixels of the (green) mark's colour: far greener than red and blue, unlike table, cubes, bin and gripper."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(np.sum((g > r + 40) & (g > b + 40)))


def _pose_gripper(env, pos) -> None:
    env.set_gripper_pose(np.asarray(pos, float), scene.TOP_DOWN, scene.MAX_WIDTH)
    _forward(env)


def _inspection_pose(env) -> np.ndarray:
    """Where the demonstrator looks from: behind (-x) the pair centre, 10 cm up."""
    pair = 0.5 * (env.cube_pose()[0] + env.decoy_pose()[0])
    return np.array([pair[0] - 0.1, pair[1], 0.1])


def _swap_cubes(env) -> None:
    """Move the mark to the other cube: the marked and the plain cube trade poses."""
    (cube, cube_yaw), (decoy, decoy_yaw) = env.cube_pose(), env.decoy_pose()
    env.place_cube(decoy, decoy_yaw)
    env.place_decoy(cube, cube_yaw)
    _forward(env)


def _settle(env, ticks=3):
    """Hold the gripper still for a few control steps; the last info."""
    action = np.concatenate([env.ee_pose(), [env.gripper_width()]])
    for _ in range(ticks):
        *_, info = env.step(action)
    return info


def test_check_env_passes():
    e = PeekPickEnv(PeekPickConfig(image_height=32, image_width=32))
    with warnings.catch_warnings():  # actions are absolute targets in metres, not a normalized box
        warnings.filterwarnings("ignore", message=".*symmetric and normalized.*")
        check_env(e, skip_render_check=True)
    e.close()


def test_seeded_reset_is_deterministic_and_randomizes_the_marked_side(env):
    a, _ = env.reset(seed=5)
    pose_a = env.cube_pose()[0], env.decoy_pose()[0]
    b, _ = env.reset(seed=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(env.cube_pose()[0], pose_a[0])
    np.testing.assert_array_equal(env.decoy_pose()[0], pose_a[1])
    sides, gaps = [], []
    for seed in range(16):
        env.reset(seed=seed)
        (cube, yaw), (decoy, _) = env.cube_pose(), env.decoy_pose()
        sides.append(cube[1] > decoy[1])
        gaps.append(abs(cube[1] - decoy[1]))
        assert abs(yaw) <= env.cfg.cube_yaw + 1e-6
    assert 3 <= sum(sides) <= 13  # the marked cube is on either side
    assert min(gaps) >= env.cfg.pair_gap[0] - 1e-3 and max(gaps) <= env.cfg.pair_gap[1] + 1e-3


def test_both_cameras_change_when_the_gripper_moves(env):
    obs0, _ = env.reset(seed=1)
    action = np.concatenate([obs0[keys.EE_POSE], [0.08]]).astype(np.float32)
    action[:3] += (0.08, -0.06, -0.1)
    for _ in range(5):
        obs, *_ = env.step(action)
    for key in keys.IMAGE_KEYS:
        diff = np.abs(obs[key].astype(int) - obs0[key].astype(int)).mean()
        assert diff > 2.0, f"{key} barely changed ({diff:.2f}) although the gripper moved 14 cm"


@pytest.mark.parametrize("colors", [0.0, 0.2])
def test_only_the_wrist_camera_can_tell_which_cube_is_marked(env, colors):
    """The same state but for which cube carries the mark: identical scene images, different wrist images."""
    e = env if colors == 0 else PeekPickEnv(PeekPickConfig(randomization=RandomizationConfig(colors=colors)))
    for seed in (0, 1, 2):
        e.reset(seed=seed)
        for pose in (e.ee_pose()[:3], _inspection_pose(e)):
            _pose_gripper(e, pose)
            scene_a, wrist_a = e.render_camera("scene"), e.render_camera("wrist")
            _swap_cubes(e)
            scene_b, wrist_b = e.render_camera("scene"), e.render_camera("wrist")
            _swap_cubes(e)
            scene_diff = np.abs(scene_a.astype(int) - scene_b.astype(int)).max(axis=-1)
            assert np.sum(scene_diff > 0) <= 2 and scene_diff.max() <= 10, f"seed {seed}: the scene camera sees it"
            assert colors > 0 or _mark_pixels(scene_a) == 0  # (jittered table colours may pass for the mark)
        wrist_diff = np.abs(wrist_a.astype(int) - wrist_b.astype(int)).max(axis=-1)
        assert np.sum(wrist_diff > 40) >= 30, f"seed {seed}: wrist images at the inspection pose barely differ"
        assert colors > 0 or (_mark_pixels(wrist_a) >= 15 and _mark_pixels(wrist_b) >= 15)
    if e is not env:
        e.close()


def test_marked_cube_in_the_bin_is_a_success(env):
    env.reset(seed=4)
    env.place_cube(env.goal_pos(), yaw=0.3)
    _forward(env)
    info = _settle(env)
    assert info["is_success"] is True and info["score"] == 1.0


def test_the_plain_cube_in_the_bin_is_not_a_success(env):
    env.reset(seed=4)
    env.place_decoy(env.goal_pos(), yaw=0.0)  # the wrong cube in the bin, the marked one untouched
    _forward(env)
    info = _settle(env)
    assert env.decoy_in_bin() and info["is_success"] is False and info["score"] < 0.05
    side = np.array([0.0, 0.03, 0.0])  # both in the bin, side by side
    env.place_decoy(env.goal_pos() - side, yaw=0.0)
    env.place_cube(env.goal_pos() + side, yaw=0.0)
    _forward(env)
    info = _settle(env)
    assert env.cube_in_bin() and env.decoy_in_bin() and info["is_success"] is False and info["score"] < 0.5


def test_moving_the_plain_cube_halves_the_score(env):
    env.reset(seed=6)
    spot = env.bin_pos + np.array([0.0, -0.12, env.cfg.cube_half])  # on the table, just short of the bin
    env.place_cube(spot, 0.0)
    _forward(env)
    score = _settle(env)["score"]
    assert 0.2 < score < 0.99
    qadr = env.model.jnt_qposadr[env.model.joint("decoy").id]
    env.data.qpos[qadr] -= 2 * env.cfg.disturb_tol  # pushed away (its start stays where it was)
    _forward(env)
    assert env.decoy_moved() and _settle(env)["score"] == pytest.approx(0.5 * score, abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demonstrator_succeeds(env, seed):
    result = rollout(env, seed, keep_obs=False)
    assert result["success"], f"seed {seed}: score {result['score']:.2f} after {result['steps']} steps"
    assert result["steps"] < env.cfg.max_episode_steps
    assert not env.decoy_moved()


def test_demonstrator_looks_then_keeps_the_mark_in_view_and_never_goes_for_the_plain_cube(env):
    result = rollout(env, 7)
    obs, actions = result["obs"], result["actions"]
    assert result["success"]
    close = int(np.argmax(actions[:, LAYOUT.width] == 0.0))  # the fingers start closing on the marked cube
    env.reset(seed=7)
    (cube, _), (decoy, _) = env.cube_pose(), env.decoy_pose()
    tcp = np.stack([o[keys.EE_POSE][:3] for o in obs[:close]])
    seen = np.array([_mark_pixels(o[keys.WRIST_RGB]) for o in obs[:close]])
    behind = np.flatnonzero(tcp[:, 0] < min(cube[0], decoy[0]) - 0.06)  # hovering behind the pair
    assert behind.size and seen[behind].max() >= 15  # it had a good look at the mark
    assert np.all(seen[behind[-1]:] >= 3), f"the mark left the wrist view on the way: {seen[behind[-1]:]}"
    assert np.all(np.linalg.norm(tcp[behind[-1]:, :2] - decoy[:2], axis=1) > 0.06)  # committed: never over the decoy


def test_demonstrator_is_seeded(env):
    a = rollout(env, 11, keep_obs=False)["actions"]
    b = rollout(env, 11, keep_obs=False)["actions"]
    np.testing.assert_array_equal(a, b)
    env.reset(seed=11)
    demo = PeekPickDemonstrator(env)
    demo.reset(seed=12)
    obs, c = env.last_obs, []
    for _ in range(20):
        c.append(demo.act(obs))
        obs, *_ = env.step(c[-1])
    assert not np.allclose(np.stack(c), a[:20], atol=1e-3)


@pytest.mark.parametrize("bad, match", [
    (dict(cube_yaw=1.0), "cube_yaw"),
    (dict(pair_gap=(0.05, 0.1)), "pair_gap"),
    (dict(pair_gap=(0.12, 0.1)), "pair_gap"),
    (dict(pair_dx=0.2), "pair_dx"),
    (dict(mark_half=0.02), "mark_half"),
    (dict(mark_rgba=(0.1, 0.9, 0.2, 0.5)), "mark_rgba"),
    (dict(disturb_tol=0.0), "disturb_tol"),
    (dict(cube_half=0.05), "cube_half"),
])
def test_config_rules_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PeekPickConfig(**bad)


@pytest.mark.parametrize("bad, match", [
    (dict(inspect_back=(0.12, 0.09)), "inspect_back"),
    (dict(inspect_height=(0.0, 0.1)), "inspect_height"),
    (dict(inspect_side=-0.01), "inspect_side"),
    (dict(speed=(0.3, 0.1)), "speed"),
])
def test_demo_config_rules_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        PeekDemoConfig(**bad)


def test_task_table_builds_it():
    from sim.tasks import make_demonstrator, make_env

    e = make_env("peek_pick", {"image_height": 32, "image_width": 32, "pair_gap": [0.1, 0.11]})
    assert isinstance(e, PeekPickEnv) and isinstance(make_demonstrator(e), PeekPickDemonstrator)
    e.close()
    with pytest.raises(ValueError, match="mark_colour"):
        make_env("peek_pick", {"mark_colour": [1, 0, 0, 1]})
