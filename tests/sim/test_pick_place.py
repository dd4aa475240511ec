"""Pick-and-place: success detection on hand-placed states, and the scripted demonstrator."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from policy import keys
from policy.keys import ACTION_LAYOUT as LAYOUT
from sim import scene
from sim.demo import Close, PickPlaceDemonstrator
from sim.rollout import rollout


def _settle(env, ticks=3):
    """Hold the gripper still for a few control steps; the last info."""
    action = np.concatenate([env.ee_pose(), [env.gripper_width()]])
    for _ in range(ticks):
        *_, info = env.step(action)
    return info


def test_initial_state_is_not_a_success(env):
    for seed in range(3):
        _, info = env.reset(seed=seed)
        assert info["is_success"] is False and info["score"] < 0.05
        assert _settle(env)["is_success"] is False


def test_cube_placed_in_the_bin_is_a_success(env):
    env.reset(seed=4)
    env.place_cube(env.goal_pos(), yaw=0.3)
    mujoco.mj_forward(env.model, env.data)
    info = _settle(env)
    assert info["is_success"] is True and info["score"] == 1.0


def test_cube_next_to_the_bin_or_held_over_it_is_not_a_success(env):
    env.reset(seed=5)
    outside = env.goal_pos() + np.array([0.0, -(env.cfg.bin_inner_half + 0.04), 0.0])
    outside[2] = env.cfg.cube_half
    env.place_cube(outside, yaw=0.0)
    mujoco.mj_forward(env.model, env.data)
    info = _settle(env)
    assert info["is_success"] is False and 0.0 < info["score"] < 0.99
    # the cube still clamped between the fingers inside the bin: not let go, so not a success
    grasp = env.goal_pos() + np.array([0.0, 0.0, 0.005])
    env.set_gripper_pose(grasp, scene.TOP_DOWN, 0.04)
    env.place_cube(env.goal_pos() + np.array([0.0, 0.0, 0.002]), yaw=0.0)
    mujoco.mj_forward(env.model, env.data)
    action = np.concatenate([grasp, env.ee_pose()[LAYOUT.rotation], [0.0]])
    for _ in range(3):
        *_, info = env.step(action)
    assert env.cube_in_bin() and env.cube_touches_fingers()
    assert info["is_success"] is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demonstrator_succeeds(env, seed):
    result = rollout(env, seed, keep_obs=False)
    assert result["success"], f"seed {seed}: score {result['score']:.2f} after {result['steps']} steps"
    assert result["actions"].shape == (result["steps"], keys.ACTION_DIM)
    assert result["steps"] < env.cfg.max_episode_steps


def test_demonstrator_stays_within_the_runtime_safety_limits(env):
    """Demos are recorded through the runtime's safety layer: they should never need clipping."""
    actions = rollout(env, 3, keep_obs=False)["actions"].astype(np.float64)
    speed = np.linalg.norm(np.diff(actions[:, LAYOUT.position], axis=0), axis=1) * env.cfg.control_hz
    assert speed.max() < 0.25  # runtime SafetyConfig.max_speed default
    assert np.all((actions[:, LAYOUT.width] >= 0) & (actions[:, LAYOUT.width] <= 0.08))


def test_demonstrator_retries_a_missed_grasp(env):
    """The cube is moved away while the fingers close: the check after the lift notices and it picks again."""
    obs, _ = env.reset(seed=6)
    demo = PickPlaceDemonstrator(env)
    demo.reset(6)
    moved = False
    for _ in range(2 * env.cfg.max_episode_steps):
        action = demo.act(obs)
        if not moved and demo.plan and isinstance(demo.plan[0], Close):
            cube, yaw = env.cube_pose()
            env.place_cube(cube + np.array([-0.08, -0.06, 0.0]), yaw + 0.4)
            moved = True
        obs, _, _, _, info = env.step(action)
        if demo.done and info["is_success"]:
            break
    assert moved and demo.retries == 1
    assert info["is_success"]


def test_make_env_builds_tasks_strictly():
    from sim.tasks import make_env

    e = make_env("pick_place", {"image_height": 32, "image_width": 40, "bin_jitter": 0.02})
    assert e.observation_space[keys.SCENE_RGB].shape == (32, 40, 3)
    e.close()
    with pytest.raises(ValueError, match="unknown task"):
        make_env("stack")
    with pytest.raises(ValueError, match="cube_size"):
        make_env("pick_place", {"cube_size": 0.02})
