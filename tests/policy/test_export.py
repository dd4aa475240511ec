"""``policy.export`` and ``OnnxPolicy``: the exported graph computes torch's chunk from the same noise (flow and
DDIM), behaves like ``Policy`` at the boundary, and a broken export folder is named file by file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.checkpoint import CheckpointError, load_checkpoint
from policy.config import ObjectiveConfig
from policy.data import ReplayBuffer
from policy.data.synthetic import make_synthetic_dataset
from policy.export import ExportConfig, export_policy
from policy.loader import load_policy, load_spec
from policy.model import to_model_inputs
from policy.onnx_policy import ExportError, OnnxPolicy
from policy.policy import Policy
from policy.protocol import ChunkPolicy, PolicySpec, accepts_prefix, no_prefix_reason
from policy.train import train

from .conftest import tiny_config, tiny_policy_config, window_from_episode

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e \".[deploy]\")")

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = {"flow": ObjectiveConfig(name="flow", sampler="euler", num_inference_steps=4),
              "flow_sample": ObjectiveConfig(name="flow", sampler="euler", num_inference_steps=4,
                                             flow_prediction="sample"),  # the net predicts the clean chunk
              # one frame and three sent actions (policy.action_history_steps): the history input has its own length
              "flow_history3": ObjectiveConfig(name="flow", sampler="euler", num_inference_steps=4),
              "ddim": ObjectiveConfig(name="ddpm", sampler="ddim", num_inference_steps=4)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (checkpoint, exported folder, a window in robot units): tiny flow (velocity and clean-chunk
    prediction) and DDIM checkpoints, the first exported by the command line, the others by ``export_policy``."""
    root = tmp_path_factory.mktemp("export")
    make_synthetic_dataset(root / "demos.zarr", n_episodes=4, episode_len=12, image_shape=(32, 32), seed=0)
    ep = ReplayBuffer.open(root / "demos.zarr").get_episode(1)
    keys_ = ["scene_rgb", "wrist_rgb", "ee_pose", "gripper"]
    out = {}
    for name, objective in OBJECTIVES.items():
        frames = {"n_obs_steps": 1, "action_history_steps": 3} if name == "flow_history3" else {}
        policy = tiny_policy_config(objective=objective, **frames)
        win = window_from_episode(ep, 5, frames.get("n_obs_steps", 2), keys_, frames.get("action_history_steps"))
        ckpt = train(tiny_config(root / "demos.zarr", root / name, steps=3, policy=policy))
        dest = root / f"{name}_onnx"
        if name == "flow":
            r = subprocess.run([sys.executable, "-m", "policy.export", f"checkpoint={ckpt.parent.parent}",
                                f"out={dest}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            assert "differ by at most" in r.stdout and f"checkpoint={dest}" in r.stdout
        else:
            export_policy(ExportConfig(checkpoint=str(ckpt), out=str(dest)))
        out[name] = ckpt, dest, win
    return out


def _torch_chunk(ckpt, window, noise, steps=None):
    """Normalized chunks (B, Tp, A) that torch samples from ``noise`` for a robot-unit batch ``window``."""
    cfg, model, normalizer, _ = load_checkpoint(ckpt)
    inputs = to_model_inputs(window, cfg.policy, normalizer, torch.device("cpu"))
    return model.sample(inputs, steps=steps, noise=torch.from_numpy(noise)).numpy(), normalizer


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_the_onnx_chunk_equals_the_torch_chunk_for_the_same_noise(exported, name):
    ckpt, dest, win = exported[name]
    policy = OnnxPolicy(dest)
    batch = {k: np.stack([v, v[::-1].copy()]) for k, v in win.items()}  # two different windows (B=2)
    noise = np.random.default_rng(1).standard_normal((2, 8, 10)).astype(np.float32)
    want, normalizer = _torch_chunk(ckpt, batch, noise)
    got = policy.sample_normalized(batch, noise)
    assert got.shape == (2, 8, 10) and np.abs(want).max() > 0.05  # a real chunk, not zeros
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the batch rows are their own windows
    # robot units: predict_chunk unnormalizes with the same statistics
    chunk = policy.predict_chunk(win, noise=noise[0])
    assert chunk.shape == (8, 10) and chunk.dtype == np.float32
    np.testing.assert_allclose(chunk, normalizer.unnormalize("action", want[0]), atol=1e-4)
    info = json.loads((dest / "export.json").read_text())
    assert (info["sampler"], info["num_inference_steps"]) == (("ddim", 4) if name == "ddim" else ("euler", 4))


def test_the_export_folder_holds_the_graph_and_copies_of_the_checkpoint_files(exported):
    ckpt, dest, _ = exported["flow"]
    assert {p.name for p in dest.iterdir()} == {"policy.onnx", "export.json", "normalizer.json", "config.yaml",
                                                "meta.json"}
    for name in ("normalizer.json", "config.yaml", "meta.json"):
        assert (dest / name).read_bytes() == (ckpt / name).read_bytes()
    assert load_spec(dest) == load_spec(ckpt)  # the runtime sizes its windows the same way for both


def test_the_exported_policy_behaves_like_policy_at_the_boundary(exported):
    ckpt, dest, win = exported["flow"]
    p = load_policy(dest)
    assert isinstance(p, OnnxPolicy) and isinstance(p, ChunkPolicy)
    assert PolicySpec.of(p) == PolicySpec.of(Policy.from_pretrained(ckpt))
    a, b = p.predict_chunk(win, seed=3), p.predict_chunk(win, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, p.predict_chunk(win, seed=4))
    assert not accepts_prefix(p) and "cannot continue a prefix" in no_prefix_reason(p)
    with pytest.raises(KeyError, match="wrist_rgb"):
        p.predict_chunk({k: v for k, v in win.items() if k != "wrist_rgb"})
    with pytest.raises(ValueError, match=r"observation 'ee_pose': expected shape \(2, 9\)"):
        p.predict_chunk(dict(win, ee_pose=win["ee_pose"][:1]))
    with pytest.raises(ValueError, match="NaN"):
        p.predict_chunk(dict(win, gripper=np.full_like(win["gripper"], np.nan)))
    with pytest.raises(ValueError, match=r"noise must be a finite \(1, 8, 10\) array"):
        p.predict_chunk(win, noise=np.zeros((8, 9), np.float32))


def test_fewer_steps_at_export_and_refused_samplers_and_overrides(exported, tmp_path):
    ckpt, dest, win = exported["ddim"]
    export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "two"), num_inference_steps=2))
    batch = {k: v[None] for k, v in win.items()}
    noise = np.random.default_rng(2).standard_normal((1, 8, 10)).astype(np.float32)
    want, _ = _torch_chunk(ckpt, batch, noise, steps=2)
    np.testing.assert_allclose(OnnxPolicy(tmp_path / "two").sample_normalized(batch, noise), want, atol=1e-4)
    with pytest.raises(ValueError, match="sampler 'ddpm' draws fresh noise at every step and cannot be exported"):
        export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "x"), sampler="ddpm"))
    with pytest.raises(ValueError, match="sampler 'euler' does not fit objective 'ddpm'"):
        export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "x"), sampler="euler"))
    with pytest.raises(ValueError, match=r"was unrolled with num_inference_steps=4; export again"):
        load_policy(dest, num_inference_steps=8)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that an export does not write \(notes.txt\)"):
        export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "busy")))


@pytest.mark.parametrize("missing", ["policy.onnx", "normalizer.json", "export.json"])
def test_a_malformed_export_folder_names_the_file(exported, tmp_path, missing):
    _, dest, _ = exported["flow"]
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    (broken / missing).unlink()
    with pytest.raises(ExportError, match=rf"{broken} is missing {missing}"):
        load_policy(broken)


def test_a_wrong_normalizer_or_a_foreign_graph_is_named(exported, tmp_path):
    _, dest, _ = exported["flow"]
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    stats = json.loads((broken / "normalizer.json").read_text())
    del stats["stats"]["gripper"]
    (broken / "normalizer.json").write_text(json.dumps(stats))
    with pytest.raises(ExportError, match=r"normalizer.json has no statistics for \['gripper'\]"):
        load_policy(broken)
    shutil.copyfile(dest / "normalizer.json", broken / "normalizer.json")
    config = (broken / "config.yaml").read_text()
    (broken / "config.yaml").write_text(config.replace("chunk_len: 8", "chunk_len: 16"))
    with pytest.raises(ExportError, match=r"policy.onnx takes inputs .*'noise': \[1, 8, 10\].*needs .*"
                                          r"'noise': \[1, 16, 10\]"):
        load_policy(broken)
    (broken / "config.yaml").write_text(config)
    (broken / "policy.onnx").write_bytes(b"not a graph")
    with pytest.raises(ExportError, match=r"policy.onnx cannot be loaded"):
        load_policy(broken)
    bare = tmp_path / "bare"  # the companions alone: neither a checkpoint nor an export
    bare.mkdir()
    for name in ("normalizer.json", "config.yaml", "meta.json"):
        shutil.copyfile(dest / name, bare / name)
    with pytest.raises(CheckpointError, match="no model.safetensors.*an exported policy has policy.onnx"):
        load_policy(bare)
