"""Third-party gymnasium envs behind our keys: the adapter, collection, training and evaluation with a mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policy.config_utils import ConfigError, from_dict, to_dict
from policy.data.replay_buffer import ReplayBuffer
from runtime.safety import SafetyConfig
from sim.collect import CollectConfig, collect, read_info
from sim.evaluate import EvalConfig, evaluate, resolve_task, run_episode
from sim.gym_adapter import GymConfig, make_gym_env, rollout_gym, to_image
from sim.gym_drivers import BoxSafety
from tests.sim import gym_toy
from tests.sim.gym_toy import ToyDemo

H = W = 32
TOY = "tests.sim.gym_toy:ToyReach"
MAPPING = {"id": "tests.sim.gym_toy:ToyReach-v0",  # registered: gymnasium.make (TimeLimit 60)
           "obs": {"scene_rgb": "pixels", "ee_pose": "state[0:2]", "gripper": "state[4:5]"},
           "action": {"dim": 2, "on_hold": "hold"}, "success_key": "success", "score_key": "closeness",
           "max_episode_steps": 60}


def _gym(**kw) -> GymConfig:
    return from_dict(GymConfig, {**MAPPING, "id": TOY, **kw}, "gym")


def test_adapter_emits_our_keys_and_success():
    env = make_gym_env(_gym(), (96, 96))
    try:
        obs, info = env.reset(seed=3)
        raw = env.last_raw_obs
        assert sorted(obs) == ["ee_pose", "gripper", "scene_rgb"]
        assert obs["scene_rgb"].shape == (96, 96, 3) and obs["scene_rgb"].dtype == np.uint8
        np.testing.assert_array_equal(obs["scene_rgb"], to_image(raw["pixels"], (96, 96), "x"))
        assert raw["pixels"].shape == (48, 64, 3)  # resized from 48 x 64
        np.testing.assert_allclose(obs["ee_pose"], raw["state"][:2], rtol=1e-6)
        assert obs["gripper"].shape == (1,) and obs["ee_pose"].dtype == np.float32
        assert env.observation_space.contains(obs) and env.action_space.shape == (2,)
        assert info["is_success"] is False
        demo = ToyDemo(env)
        demo.reset(3)
        for _ in range(60):
            obs, _, terminated, _, info = env.step(demo.act(obs))
            if terminated:
                break
        assert terminated and info["is_success"] and info["score"] == pytest.approx(info["closeness"])
        from gymnasium.utils.env_checker import check_env

        with pytest.warns(UserWarning):  # about the (-inf, inf) bounds of the vectors
            check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_affine_index_action_map_and_clipping():
    """Ours (2,) drives their dims [2, 0] of a 3-D Box in [-2, 2] as u = 2 a + 0.5; dim 1 is fixed at -1."""
    cfg = _gym(kwargs={"action_dim": 3, "action_high": 2.0},
               action={"index": [2, 0], "scale": [2.0], "offset": [0.5], "fill": [0.0, -1.0, 0.0]})
    env = make_gym_env(cfg, (H, W))
    try:
        np.testing.assert_allclose(env.action_space.low, [-1.25, -1.25])
        np.testing.assert_allclose(env.action_space.high, [0.75, 0.75])
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([0.25, -0.5]))
        np.testing.assert_allclose(env.unwrapped.last_action, [-0.5, -1.0, 1.0])
        np.testing.assert_allclose(info["action"], [0.25, -0.5])
        _, _, _, _, info = env.step(np.array([5.0, -5.0]))  # clipped to our bounds, mapped onto theirs
        np.testing.assert_allclose(info["action"], [0.75, -1.25])
        np.testing.assert_allclose(env.unwrapped.last_action, [-2.0, -1.0, 2.0])
        with pytest.raises(ValueError, match="gym.action"):
            env.step(np.array([0.0, np.nan]))
    finally:
        env.close()


def test_lowdim_only_observation_and_render_source():
    env = make_gym_env(_gym(kwargs={"pixels": False, "render_mode": "rgb_array"},
                            obs={"ee_pose": "[0:4]", "wrist_rgb": "@render"}), (H, W))
    try:
        obs, _ = env.reset(seed=1)
        assert sorted(obs) == ["ee_pose", "wrist_rgb"] and obs["ee_pose"].shape == (4,)
        np.testing.assert_allclose(obs["ee_pose"], env.last_raw_obs[:4], rtol=1e-6)
        assert obs["wrist_rgb"].shape == (H, W, 3) and obs["wrist_rgb"].max() > 100  # the red and green squares
    finally:
        env.close()
    env = make_gym_env(_gym(kwargs={"pixels": False}, obs={"ee_pose": ""}), (H, W))
    assert env.reset(seed=1)[0]["ee_pose"].shape == (5,)
    env.close()


@pytest.mark.parametrize("change, match", [
    ({"obs": {"scene_rgb": "pixel"}}, r"gym.obs.scene_rgb: their key 'pixel' is not in the observation"),
    ({"obs": {"ee_pose": "state[0:9]"}}, r"gym.obs.ee_pose: slice \[0:9\].*out of range \(size 5\)"),
    ({"obs": {"scene_rgb": "state"}}, r"gym.obs.scene_rgb: .*not an \(H, W"),
    ({"obs": {"scene_rgb": "@render"}}, r"gym.obs.scene_rgb: '@render' needs .*render_mode"),
    ({"kwargs": {"pixels": False}, "obs": {"ee_pose": "state"}}, r"gym.obs.ee_pose: the observation is not a Dict"),
    ({"action": {"dim": 3}}, r"gym.action.dim is 3, but the mapped action has 2 dims"),
    ({"action": {"index": [0, 2]}}, r"gym.action.index \[0, 2\] out of range"),
    ({"action": {"scale": [1.0, 2.0, 3.0]}}, r"gym.action.scale must have 1 or 2 entries"),
    ({"id": "tests.sim.gym_toy:DiscreteToy"}, r"gym.action: the env's action space is Discrete\(4\)"),
    ({"id": "tests.sim.no_such_module:Env"}, r"gym.id: cannot import"),
    ({"id": "NoSuchEnv-v0"}, r"gym.id: 'NoSuchEnv-v0' is neither"),
])
def test_bad_mappings_name_the_key(change, match):
    with pytest.raises(ValueError, match=match):
        make_gym_env(_gym(**change), (H, W))


def test_static_mapping_rules_and_collect_config():
    with pytest.raises(ConfigError, match="gym.obs.depth: unknown key of ours"):
        _gym(obs={"depth": "pixels"})
    with pytest.raises(ConfigError, match="gym.obs.ee_pose: '@render' gives an image"):
        _gym(obs={"ee_pose": "@render"})
    with pytest.raises(ConfigError, match="gym.action.on_hold"):
        _gym(action={"on_hold": "freeze"})
    base = {"episodes": 1, "out": "x.zarr", "gym": MAPPING}
    with pytest.raises(ConfigError, match="demonstrator: task=gym needs"):
        from_dict(CollectConfig, base)
    with pytest.raises(ConfigError, match="env: task overrides do not apply"):
        from_dict(CollectConfig, {**base, "demonstrator": "a:b", "env": {"cube_half": 0.01}})
    with pytest.raises(ConfigError, match="gym.id: task=gym needs"):
        from_dict(CollectConfig, {"task": "gym", "episodes": 1, "out": "x.zarr", "demonstrator": "a:b"})
    cfg = from_dict(CollectConfig, {**base, "demonstrator": "tests.sim.gym_toy:ToyDemo"})
    assert cfg.task == "gym"  # a gym.id switches to the mapped env


def test_a_success_key_that_never_appears_is_an_error():
    env = make_gym_env(_gym(success_key="succes"), (H, W))
    with pytest.raises(ValueError, match="gym.success_key: 'succes' never appeared"):
        rollout_gym(env, 0, ToyDemo(env))
    env.close()


def test_box_safety_clips_to_the_bounds_and_holds():
    for on_hold, held in (("last", [0.5, -0.5]), ("hold", [0.0, 0.0])):
        s = BoxSafety(SafetyConfig(), 0.1, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.zeros(2), on_hold)
        s.reset(np.zeros(2))
        res = s.check(np.array([0.5, -0.5]))
        assert res.reasons == [] and res.command.tolist() == [0.5, -0.5]
        res = s.check(np.array([3.0, -0.5]))
        assert res.reasons == ["action_bounds"] and res.command.tolist() == [1.0, -0.5]
        s.check(np.array([0.5, -0.5]))
        res = s.check(np.array([np.nan, 0.0]))
        assert res.reasons == ["nonfinite_action"] and res.command.tolist() == held
        assert s.counts == {"action_bounds": 1, "nonfinite_action": 1}


class GoalPolicy:
    """A ChunkPolicy heading from the measured position (ee_pose of the window) to the toy's goal at ``gain``
    times the top speed (beyond the bounds when gain > 1: the safety clips it)."""

    n_obs_steps = 2
    chunk_len = 4
    action_dim = 2
    obs_keys = ("scene_rgb", "ee_pose", "action_history")

    def __init__(self, env, gain: float):
        self.env, self.gain = env, gain

    def predict_chunk(self, window):
        assert window["scene_rgb"].shape == (2, 96, 96, 3) and window["action_history"].shape == (2, 2)
        pos = window["ee_pose"][-1]
        np.testing.assert_allclose(pos, self.env.unwrapped.pos, atol=0.11)  # the mapped observation, one step old
        d = self.env.unwrapped.goal - pos
        return np.tile(self.gain * d / max(np.linalg.norm(d), 1e-9), (self.chunk_len, 1))


def test_an_episode_runs_through_the_controller_on_the_mapped_env():
    env = make_gym_env(_gym(), (96, 96))
    try:
        cfg = from_dict(EvalConfig, {"checkpoint": "x", "latency": "zero", "max_steps": 60})
        rec = run_episode(env, GoalPolicy(env, gain=3.0), cfg, seed=4, record=True)
        assert rec["success"] and rec["error"] is None and rec["steps"] < 60 and rec["score"] > 0.9
        assert rec["interventions"]["action_bounds"] >= rec["steps"] - 2  # every chunk action was too fast
        assert rec["frames"].shape == (rec["steps"] + 1, 96, 96, 3)  # the scene camera only
        assert env.unwrapped._info()["success"]
    finally:
        env.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 toy demos collected through the registered id, 32x32, and a tiny policy trained on them (3 steps)."""
    from policy.train import train
    from tests.policy.conftest import tiny_config, tiny_policy_config

    root = tmp_path_factory.mktemp("gym")
    data = root / "demos.zarr"
    summary = collect(from_dict(CollectConfig, {"episodes": 4, "out": str(data), "workers": 1, "image_height": H,
                                                "image_width": W, "demonstrator": "tests.sim.gym_toy:ToyDemo",
                                                "gym": MAPPING}), progress=False)
    policy = tiny_policy_config(image_keys=("scene_rgb",), lowdim_dims={"ee_pose": 2, "gripper": 1}, action_dim=2)
    ckpt = train(tiny_config(data, root / "run", policy=policy, steps=3))
    return data, ckpt, summary


def test_collect_writes_our_keys_in_our_shapes(trained):
    data, _, summary = trained
    assert summary["attempted"] == 4 and summary["kept"] == 4 and summary["success_rate"] == 1.0
    rb = ReplayBuffer.open(data)
    assert sorted(rb.keys) == ["action", "ee_pose", "gripper", "scene_rgb", "timestamp"]
    d, T = rb.load(), rb.n_steps
    assert d["scene_rgb"].shape == (T, H, W, 3) and d["scene_rgb"].dtype == np.uint8
    assert d["ee_pose"].shape == (T, 2) and d["gripper"].shape == (T, 1) and d["ee_pose"].dtype == np.float32
    assert d["action"].shape == (T, 2) and np.abs(d["action"]).max() <= 1.0
    ep = rb.get_episode(0)
    env = gym_toy.ToyReach()
    env.reset(seed=0)
    np.testing.assert_allclose(ep["ee_pose"][0], env.pos, rtol=1e-6)  # seed 0's start, through the slice
    np.testing.assert_allclose(np.diff(ep["timestamp"]), 0.1)
    info = read_info(data)
    assert info["task"] == "gym" and info["gym"]["id"] == MAPPING["id"] and info["gym"]["obs"] == MAPPING["obs"]


def test_evaluate_a_mapped_env_with_a_tiny_checkpoint(trained, tmp_path):
    _, ckpt, _ = trained
    s = evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": 2, "workers": 1, "videos": 1,
                                        "latency": "zero", "max_steps": 10, "out": str(tmp_path / "ev"),
                                        "progress": False, "gym": MAPPING}))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["task"] == "gym" and saved["n_episodes"] == 2 and 0.0 <= saved["success_rate"] <= 1.0
    assert saved["safety"]["mode"] == "action_bounds" and saved["safety"]["low"] == [-1.0, -1.0]
    assert all(r["error"] is None and r["chunks"] >= 1 and 1 <= r["steps"] <= 10 for r in saved["episodes"])
    import imageio.v3 as iio

    video = iio.imread(s["videos"][0])
    assert video.shape == (saved["episodes"][0]["steps"] + 1, 2 * H, 2 * W, 3)  # scene only, scale 2


def test_evaluate_finds_the_demos_mapping_and_refuses_a_policy_that_does_not_fit(trained, tmp_path):
    _, ckpt, _ = trained
    task, _, gym_cfg, _ = resolve_task(from_dict(EvalConfig, {"checkpoint": str(ckpt), "task": "gym"}))
    assert task == "gym" and to_dict(gym_cfg) == to_dict(from_dict(GymConfig, MAPPING))
    task, _, gym_cfg, _ = resolve_task(from_dict(EvalConfig, {"checkpoint": str(ckpt)}))
    assert task == "gym" and gym_cfg.id == MAPPING["id"]
    narrow = {**MAPPING, "obs": {"scene_rgb": "pixels", "ee_pose": "state[0:3]", "gripper": "state[4:5]"}}
    with pytest.raises(ValueError, match="gym.obs.ee_pose: the policy expects 2 values, the mapping gives 3"):
        evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "gym": narrow, "out": str(tmp_path / "a")}))
    no_scene = {**MAPPING, "obs": {"ee_pose": "state[0:2]", "gripper": "state[4:5]"}}
    with pytest.raises(ValueError, match=r"gym.obs: the policy needs \['scene_rgb'\]"):
        evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "gym": no_scene, "out": str(tmp_path / "b")}))
    three = {**MAPPING, "kwargs": {"action_dim": 3}, "action": {}}
    with pytest.raises(ValueError, match="gym.action: the policy predicts 2-D actions, the mapped env takes 3-D"):
        evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "gym": three, "out": str(tmp_path / "c")}))


def test_hydra_configs_take_a_gym_mapping(tmp_path):
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf_dir = str(Path(__file__).resolve().parents[2] / "configs")
    obs = ["+gym.obs.scene_rgb=pixels", "+gym.obs.ee_pose='state[0:2]'"]  # keys added to an empty mapping: +
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        c = compose(config_name="collect", overrides=["out=x.zarr", f"gym.id={TOY}", *obs, "gym.success_key=success",
                                                      "demonstrator=tests.sim.gym_toy:ToyDemo", "gym.action.dim=2"])
        e = compose(config_name="evaluate", overrides=["checkpoint=x", f"gym.id={TOY}", *obs])
    cc = from_dict(CollectConfig, OmegaConf.to_container(c, resolve=True))
    assert cc.task == "gym" and cc.gym.obs == {"scene_rgb": "pixels", "ee_pose": "state[0:2]"}
    assert cc.gym.action.dim == 2 and cc.gym.success_key == "success"
    ec = from_dict(EvalConfig, OmegaConf.to_container(e, resolve=True))
    assert ec.gym.id == TOY and ec.gym.obs["ee_pose"] == "state[0:2]"
    # the README's way: a config file of one's own on top of collect.yaml
    (tmp_path / "toy.yaml").write_text(f"defaults: [collect, _self_]\ndemonstrator: tests.sim.gym_toy:ToyDemo\n"
                                       f"gym: {{id: '{TOY}', obs: {{ee_pose: '[0:4]'}}, kwargs: {{pixels: false}}}}\n")
    out = subprocess.run([sys.executable, "-m", "sim.collect", "--config-dir", str(tmp_path), "--config-name", "toy",
                          "out=x.zarr", "--cfg", "job"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    import yaml

    cfg = from_dict(CollectConfig, yaml.safe_load(out))
    assert cfg.task == "gym" and cfg.gym.obs == {"ee_pose": "[0:4]"} and cfg.gym.kwargs == {"pixels": False}


def test_a_namespaced_id_imports_its_package(tmp_path, monkeypatch):
    """``ns/Env-v0`` not yet registered: its namespace's module is imported (registering it), as
    ``gymnasium.make("ns:ns/Env-v0")`` would; a namespace that cannot be imported names the id and module."""
    import sys
    import uuid

    import gymnasium as gym

    ns = f"toy_ns_{uuid.uuid4().hex[:8]}"
    (tmp_path / ns).mkdir()
    (tmp_path / ns / "__init__.py").write_text(
        "import gymnasium as gym\n"
        f"gym.register('{ns}/Reach-v0', entry_point='{TOY}', max_episode_steps=60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env_id = f"{ns}/Reach-v0"
    try:
        assert env_id not in gym.registry
        env = make_gym_env(_gym(id=env_id), (H, W))
        try:
            assert isinstance(env.unwrapped, gym_toy.ToyReach) and gym.registry[env_id].max_episode_steps == 60
        finally:
            env.close()
    finally:
        gym.registry.pop(env_id, None)
        sys.modules.pop(ns, None)
    with pytest.raises(ValueError, match=r"'no_such_pkg_x/Env-v0'.*'no_such_pkg_x'"):
        make_gym_env(_gym(id="no_such_pkg_x/Env-v0"), (H, W))
