"""Policy and checkpoints: round trip, statelessness, clear errors, no pickles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from policy.checkpoint import CheckpointError
from policy.data import ReplayBuffer
from policy.policy import Policy
from policy.protocol import ChunkPolicy
from policy.train import train

from .conftest import tiny_config, window_from_episode

IMG_KEYS = ["scene_rgb", "wrist_rgb", "ee_pose", "gripper"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained for a few steps on the tiny synthetic dataset (shared by this module)."""
    from policy.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("ckpt")
    make_synthetic_dataset(root / "demos.zarr", n_episodes=4, episode_len=12, image_shape=(32, 32), seed=0)
    ckpt = train(tiny_config(root / "demos.zarr", root / "run"))
    ep = ReplayBuffer.open(root / "demos.zarr").get_episode(1)
    return ckpt, window_from_episode(ep, 5, 2, IMG_KEYS)


def test_checkpoint_folder_layout_has_no_pickles(trained):
    ckpt, _ = trained
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.yaml", "model.safetensors", "normalizer.json", "meta.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".ckpt"))]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 6 and meta["chunk_len"] == 8 and meta["dataset"]["n_episodes"] == 4
    assert "torch" in meta["versions"] and len(meta["dataset"]["episode_ends_actions_sha256"]) == 64


def test_round_trip_gives_identical_chunks(trained, tmp_path):
    ckpt, win = trained
    a = Policy.from_pretrained(ckpt, device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    b = Policy.from_pretrained(copy, device="cpu")
    ca, cb = a.predict_chunk(win, seed=3), b.predict_chunk(win, seed=3)
    assert ca.shape == (8, 10) and ca.dtype == np.float32
    np.testing.assert_array_equal(ca, cb)
    # a run folder resolves to its latest checkpoint
    c = Policy.from_pretrained(ckpt.parent.parent, device="cpu")
    np.testing.assert_array_equal(ca, c.predict_chunk(win, seed=3))


def test_predict_chunk_is_stateless(trained):
    ckpt, win = trained
    p = Policy.from_pretrained(ckpt, device="cpu")
    first = p.predict_chunk(win, seed=11)
    other = dict(win, ee_pose=win["ee_pose"] + 0.3)
    for _ in range(3):
        p.predict_chunk(other)
    np.testing.assert_array_equal(first, p.predict_chunk(win, seed=11))
    assert isinstance(p, ChunkPolicy)
    assert p.obs_keys == ("scene_rgb", "wrist_rgb", "ee_pose", "gripper", "action_history")


def test_batched_prediction_matches_single(trained):
    ckpt, win = trained
    p = Policy.from_pretrained(ckpt, device="cpu")
    batch = {k: np.stack([v, v]) for k, v in win.items()}
    out = p.predict_chunks(batch, torch.Generator().manual_seed(0))
    assert out.shape == (2, 8, 10) and not np.array_equal(out[0], out[1])  # independent noise per sample


@pytest.mark.parametrize("change,match", [
    (lambda w: w.pop("wrist_rgb"), "missing 'wrist_rgb'"),
    (lambda w: w.__setitem__("ee_pose", w["ee_pose"][:, :7]), r"'ee_pose': expected shape \(2, 9\)"),
    (lambda w: w.__setitem__("scene_rgb", w["scene_rgb"][:1]), r"'scene_rgb': expected shape \(2, 32, 32, 3\)"),
    (lambda w: w.__setitem__("scene_rgb", w["scene_rgb"].astype(np.float32)), "uint8"),
    (lambda w: w["action_history"].__setitem__((1, 0), np.nan), "'action_history' contains NaN"),
])
def test_bad_observation_window_is_named(trained, change, match):
    ckpt, win = trained
    p = Policy.from_pretrained(ckpt, device="cpu")
    bad = {k: v.copy() for k, v in win.items()}
    change(bad)
    with pytest.raises((KeyError, ValueError), match=match):
        p.predict_chunk(bad)


def test_checkpoint_of_another_shape_names_the_tensor(trained, tmp_path):
    ckpt, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["policy"]["unet"]["down_dims"] = [64, 96]  # the weights were trained with [64, 128]
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"tensor net\.down\.1\.0\.block1\.0\.weight: checkpoint shape "
                                              r"\(128, 64, 3\), model shape \(96, 64, 3\)"):
        Policy.from_pretrained(bad, device="cpu")


def test_missing_or_extra_tensor_is_named(trained, tmp_path):
    ckpt, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    state = load_file(str(bad / "model.safetensors"))
    state.pop("net.final.1.bias")
    state["net.extra"] = torch.zeros(2)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor net\.final\.1\.bias.*unexpected tensor net\.extra"):
        Policy.from_pretrained(bad, device="cpu")


def test_incomplete_checkpoint_folder_is_named(trained, tmp_path):
    ckpt, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "normalizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing normalizer.json"):
        Policy.from_pretrained(bad, device="cpu")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        Policy.from_pretrained(tmp_path / "nothing", device="cpu")
    truncated = tmp_path / "truncated"
    shutil.copytree(ckpt, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read"):
        Policy.from_pretrained(truncated, device="cpu")


def test_config_with_unknown_key_in_checkpoint_is_named(trained, tmp_path):
    ckpt, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = yaml.safe_load((bad / "config.yaml").read_text())
    cfg["policy"]["chunk_length"] = 8
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"config.yaml.*policy\.chunk_length"):
        Policy.from_pretrained(bad, device="cpu")


def test_sampler_can_be_chosen_at_load_but_must_fit_the_objective(trained):
    ckpt, win = trained
    p = Policy.from_pretrained(ckpt, device="cpu", num_inference_steps=2)
    assert p.num_inference_steps == 2 and p.predict_chunk(win).shape == (8, 10)
    with pytest.raises(ValueError, match="does not fit objective 'flow'"):
        Policy.from_pretrained(ckpt, device="cpu", sampler="ddim")


def test_action_history_longer_than_the_frames(tiny_dataset, tmp_path):
    """policy.action_history_steps=Th > n_obs_steps: training windows, the checkpoint's spec and predict_chunk all
    use (Th, A) histories; a window with another length is refused, naming the key and the shape."""
    from policy.checkpoint import load_spec
    from policy.config import PolicyConfig
    from policy.config_utils import ConfigError, from_dict

    from .conftest import tiny_policy_config

    with pytest.raises(ConfigError, match="action_history_steps"):
        from_dict(PolicyConfig, {"action_history_steps": 0})
    assert from_dict(PolicyConfig, {"n_obs_steps": 2}).history_steps == 2
    assert from_dict(PolicyConfig, {"action_history_steps": 6}).history_steps == 6
    assert from_dict(PolicyConfig, {"use_action_history": False, "action_history_steps": 6}).history_steps == 0

    cfg = tiny_config(tiny_dataset, tmp_path / "run", policy=tiny_policy_config(n_obs_steps=1, action_history_steps=4))
    ckpt = train(cfg)
    policy = Policy.from_pretrained(ckpt, device="cpu")
    assert policy.history_steps == 4 and load_spec(ckpt).history_steps == 4
    ep = ReplayBuffer.open(tiny_dataset).get_episode(1)
    window = window_from_episode(ep, 5, 1, IMG_KEYS, n_hist=4)
    assert window["action_history"].shape == (4, 10)
    np.testing.assert_array_equal(window["action_history"], ep["action"][1:5])
    chunk = policy.predict_chunk(window, seed=0)
    assert chunk.shape == (8, 10) and np.all(np.isfinite(chunk))
    # the history changes the chunk: the network reads all four entries, not only the last
    older = {**window, "action_history": np.concatenate([window["action_history"][:1] + 0.05,
                                                         window["action_history"][1:]])}
    assert not np.allclose(policy.predict_chunk(older, seed=0), chunk)
    short = {**window, "action_history": window["action_history"][-1:]}
    with pytest.raises(ValueError, match=r"action_history.*\(1, 4, 10\)|action_history.*\(4, 10\)"):
        policy.predict_chunk(short)
