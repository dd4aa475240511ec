"""Parallel demo collection into a replay buffer: content, append, refusals, strict config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policy import keys
from policy.config_utils import ConfigError, from_dict
from policy.data.replay_buffer import DatasetError, ReplayBuffer
from sim.collect import DEFAULT_ACTION_NOISE, SEEDS_FILE, CollectConfig, collect

H = W = 32


def _cfg(out: Path, **kw) -> CollectConfig:
    base = {"task": "pick_place", "episodes": 3, "out": str(out), "workers": 2, "seed": 0,
            "image_height": H, "image_width": W}
    return from_dict(CollectConfig, {**base, **kw})


def test_collect_and_append(tmp_path):
    out = tmp_path / "demos.zarr"
    summary = collect(_cfg(out), progress=False)
    assert summary["attempted"] == 3 and summary["kept"] == 3 and summary["success_rate"] == 1.0

    rb = ReplayBuffer.open(out)
    assert rb.n_episodes == 3 and rb.n_steps == summary["steps"]
    assert sorted(rb.keys) == sorted([keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER,
                                      keys.ACTION, keys.TIMESTAMP])
    data = rb.load()
    T = rb.n_steps
    assert data[keys.SCENE_RGB].shape == (T, H, W, 3) and data[keys.SCENE_RGB].dtype == np.uint8
    assert data[keys.WRIST_RGB].shape == (T, H, W, 3) and data[keys.WRIST_RGB].dtype == np.uint8
    assert data[keys.EE_POSE].shape == (T, keys.EE_POSE_DIM)
    assert data[keys.GRIPPER].shape == (T, keys.GRIPPER_DIM)
    assert data[keys.ACTION].shape == (T, keys.ACTION_DIM) and np.isfinite(data[keys.ACTION]).all()
    ep0 = rb.get_episode(0)
    assert ep0[keys.TIMESTAMP][0] == 0.0 and np.all(np.diff(ep0[keys.TIMESTAMP]) > 0)
    assert json.loads((out / SEEDS_FILE).read_text()) == [0, 1, 2]

    summary2 = collect(_cfg(out, seed=3), progress=False)  # appends to the same buffer
    assert summary2["kept"] == 3
    rb = ReplayBuffer.open(out)
    assert rb.n_episodes == 6
    assert rb.get_episode(0)[keys.ACTION].shape == ep0[keys.ACTION].shape  # the first episodes are untouched
    assert json.loads((out / SEEDS_FILE).read_text()) == [0, 1, 2, 3, 4, 5]

    with pytest.raises(DatasetError, match="cannot append.*24, 24"):  # a different image size cannot append
        collect(_cfg(out, image_height=24, image_width=24, episodes=1), progress=False)


def test_refuses_existing_non_dataset(tmp_path):
    out = tmp_path / "not_a_dataset"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not a replay buffer"):
        collect(_cfg(out), progress=False)
    assert (out / "notes.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="bogus"):
        _cfg(tmp_path / "x.zarr", bogus=1)
    with pytest.raises(ConfigError, match="episodes"):
        _cfg(tmp_path / "x.zarr", episodes=0)
    with pytest.raises(ConfigError, match="out"):
        from_dict(CollectConfig, {"out": ""})
    with pytest.raises(ConfigError, match="unknown task"):
        _cfg(tmp_path / "x.zarr", task="nope")


def test_hydra_config_matches_dataclass():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf_dir = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        dcfg = compose(config_name="collect", overrides=["out=x.zarr", "episodes=5"])
    cfg = from_dict(CollectConfig, OmegaConf.to_container(dcfg, resolve=True))
    assert cfg.out == "x.zarr" and cfg.episodes == 5 and cfg.task == "pick_place"


def test_task_overrides_reach_the_env_and_bad_ones_fail_in_the_parent(tmp_path):
    with pytest.raises(ConfigError, match="env.*cube_sise"):
        _cfg(tmp_path / "a.zarr", env={"cube_sise": 0.02})
    with pytest.raises(ConfigError, match="image_height"):
        _cfg(tmp_path / "a.zarr", env={"image_height": 64})
    summary = collect(_cfg(tmp_path / "b.zarr", episodes=1, workers=1, env={"cube_half": 0.015}), progress=False)
    assert summary["kept"] == 1
    assert json.loads((tmp_path / "b.zarr" / "collect_info.json").read_text())["env"] == {"cube_half": 0.015}


def test_action_noise_perturbs_what_is_executed_not_what_is_recorded():
    """DART: the env executes the demonstrator's action plus smooth noise on the position; the demo records the
    demonstrator's own action, and the same seed gives the same noise."""
    from sim.rollout import ActionNoise, rollout
    from sim.tasks import make_env

    env = make_env("push_t", {"image_height": H, "image_width": W})
    executed = []
    step = env.step

    def spy(action):
        executed.append(np.array(action, copy=True))
        return step(action)

    env.step = spy
    noise = ActionNoise([0.005, 0.005, 0.002], 0.8)
    res = rollout(env, 3, max_steps=40, keep_obs=False, noise=noise)
    recorded, done = res["actions"], np.stack(executed)
    offset = done - recorded
    assert np.all(offset[:, keys.ACTION_LAYOUT.position.stop:] == 0)  # rotation and gripper untouched
    pos = offset[:, keys.ACTION_LAYOUT.position]
    assert np.all(np.abs(pos).max(axis=0) > 0) and np.abs(pos).max() < 0.05
    assert np.corrcoef(pos[:-1, 0], pos[1:, 0])[0, 1] > 0.5  # smooth (AR(1), rho 0.8), not white
    noise.reset(3)
    again = np.stack([noise.apply(np.zeros(keys.ACTION_DIM, np.float32)) for _ in range(len(recorded))])
    np.testing.assert_allclose(again[:, keys.ACTION_LAYOUT.position], pos, atol=1e-6)  # seeded by the episode
    noise.reset(4)
    assert not np.allclose(noise.apply(np.zeros(keys.ACTION_DIM, np.float32))[:3], pos[0])

    executed.clear()
    quiet = rollout(env, 3, max_steps=40, keep_obs=False, noise=ActionNoise([0.0, 0.0, 0.0], 0.8))
    np.testing.assert_array_equal(np.stack(executed), quiet["actions"])  # zero noise: executed as recorded


def test_action_noise_config_and_provenance(tmp_path):
    with pytest.raises(ConfigError, match="std"):
        _cfg(tmp_path / "a.zarr", action_noise=[0.01, -0.01, 0.0])
    with pytest.raises(ConfigError, match="std"):
        _cfg(tmp_path / "a.zarr", action_noise=[0.01, 0.01])
    with pytest.raises(ConfigError, match="rho"):
        _cfg(tmp_path / "a.zarr", action_noise=[0.01, 0.01, 0.0], action_noise_rho=1.0)
    with pytest.raises(ConfigError, match="action_noise.*built-in task"):
        from_dict(CollectConfig, {"out": str(tmp_path / "g.zarr"), "demonstrator": "a:b",
                                  "gym": {"id": "x.y:Z", "obs": {"scene_rgb": "pixels"}},
                                  "action_noise": [0.01, 0.0, 0.0]})
    out = tmp_path / "noisy.zarr"
    summary = collect(_cfg(out, episodes=1, workers=1, action_noise=[0.004, 0.004, 0.001]), progress=False)
    assert summary["kept"] == 1
    info = json.loads((out / "collect_info.json").read_text())
    assert info["action_noise"] == [0.004, 0.004, 0.001] and info["action_noise_rho"] == 0.8
    with pytest.raises(DatasetError, match="action_noise"):  # one buffer, one way of collecting
        collect(_cfg(out, episodes=1, seed=1, workers=1), progress=False)
    assert ReplayBuffer.open(out).n_episodes == 1


def test_action_noise_defaults_to_dart_on_built_in_tasks_and_off_for_gym(tmp_path):
    """Unset, action_noise is DART noise on a built-in task and off for a mapped env; [0, 0, 0] turns it off.
    A buffer of clean demos refuses the default (with the way to append to it) and keeps its episodes."""
    assert any(DEFAULT_ACTION_NOISE)
    assert _cfg(tmp_path / "a.zarr").action_noise == list(DEFAULT_ACTION_NOISE)
    for task in ("push_t", "peek_pick"):
        assert _cfg(tmp_path / "a.zarr", task=task).action_noise == list(DEFAULT_ACTION_NOISE)
    assert _cfg(tmp_path / "a.zarr", action_noise=[0.0, 0.0, 0.0]).action_noise == [0.0, 0.0, 0.0]
    gym = from_dict(CollectConfig, {"out": str(tmp_path / "g.zarr"), "demonstrator": "a:b",
                                    "gym": {"id": "x.y:Z", "obs": {"scene_rgb": "pixels"}}})
    assert gym.task == "gym" and gym.action_noise == [0.0, 0.0, 0.0]

    out = tmp_path / "clean.zarr"
    collect(_cfg(out, episodes=1, workers=1, action_noise=[0.0, 0.0, 0.0]), progress=False)
    assert "action_noise" not in json.loads((out / "collect_info.json").read_text())
    with pytest.raises(DatasetError, match=r"\[0, 0, 0\] for demos collected without it"):
        collect(_cfg(out, episodes=1, seed=1, workers=1), progress=False)
    assert ReplayBuffer.open(out).n_episodes == 1
    collect(_cfg(out, episodes=1, seed=1, workers=1, action_noise=[0.0, 0.0, 0.0]), progress=False)
    assert ReplayBuffer.open(out).n_episodes == 2
