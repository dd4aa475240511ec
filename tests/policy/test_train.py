"""Training: the hydra CLI end to end, exact resume, and refusals that lose no data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policy.data import DatasetError, ReplayBuffer
from policy.schedule import batch_ids, lr_at
from policy.train import train

from .conftest import tiny_config, tiny_policy_config

REPO = Path(__file__).resolve().parents[2]

TINY_CLI = ["policy.image_shape=[32,32]", "policy.encoder.crop_shape=[28,28]", "policy.encoder.channels=[8,8]",
            "policy.encoder.stem_stride=2", "policy.unet.down_dims=[32,64]", "policy.chunk_len=8",
            "train.steps=4", "train.batch_size=8", "train.warmup_steps=1", "train.val_every=2",
            "train.ckpt_every=2", "train.log_every=1", "train.val_batches=1", "train.device=cpu"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "policy.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_trains_validates_and_checkpoints(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    res = _cli(f"train.dataset={tiny_dataset}", f"train.out_dir={out}", *TINY_CLI)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "checkpoint:" in res.stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    val_recs = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    assert all(r["samples_per_s"] > 0 and np.isfinite(r["loss"]) for r in train_recs)
    assert [r["step"] for r in val_recs] == [2, 4]
    assert all(np.isfinite(r["val_action_mse"]) for r in val_recs)
    assert (out / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert "train:" in res.stderr  # the tqdm progress bar


def test_cli_rejects_a_misspelt_key(tmp_path, tiny_dataset):
    res = _cli(f"train.dataset={tiny_dataset}", f"train.out_dir={tmp_path / 'run'}", "train.stepz=3")
    assert res.returncode != 0 and "stepz" in res.stderr


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, tiny_dataset):
    straight = train(tiny_config(tiny_dataset, tmp_path / "a", steps=6, ckpt_every=6))
    # the same run, stopped after 3 steps and resumed
    train(tiny_config(tiny_dataset, tmp_path / "b", steps=3, ckpt_every=3))
    resumed = train(tiny_config(tiny_dataset, tmp_path / "b", steps=6, ckpt_every=6, resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    raw_a = load_file(str(straight / "train_state.safetensors"))
    raw_b = load_file(str(resumed / "train_state.safetensors"))
    for k in raw_a:
        np.testing.assert_allclose(raw_a[k].numpy(), raw_b[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    assert json.loads((resumed / "meta.json").read_text())["step"] == 6


def test_the_optimizer_step_is_the_fused_adamw_with_the_same_update(tmp_path, tiny_dataset):
    from policy.train import Trainer

    tr = Trainer(tiny_config(tiny_dataset, tmp_path / "run"))
    assert tr.optim.defaults["fused"]  # one kernel per step on CPU (2 ms instead of 15 ms for the default loop)
    # the same update as the per-tensor loop, moments included
    ref = [p.detach().clone().requires_grad_(True) for p in tr.model.parameters()]
    plain = torch.optim.AdamW(ref, lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, foreach=False)
    fused = torch.optim.AdamW(tr.model.parameters(), lr=1e-3, betas=(0.95, 0.999), weight_decay=1e-6, fused=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(ref, tr.model.parameters()):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        plain.step()
        fused.step()
    for a, b in zip(ref, tr.model.parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-6)


def test_existing_run_is_not_overwritten_without_resume(tmp_path, tiny_dataset):
    ckpt = train(tiny_config(tiny_dataset, tmp_path / "run", steps=2))
    before = (ckpt / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="train.resume=true"):
        train(tiny_config(tiny_dataset, tmp_path / "run", steps=2))
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_resume_with_another_policy_config_is_refused(tmp_path, tiny_dataset):
    train(tiny_config(tiny_dataset, tmp_path / "run", steps=2))
    other = tiny_policy_config(chunk_len=16)
    with pytest.raises(ValueError, match="policy config differs"):
        train(tiny_config(tiny_dataset, tmp_path / "run", other, steps=4, resume=True))


def test_dataset_that_does_not_fit_the_config_names_key_and_shapes(tmp_path):
    rb = ReplayBuffer.create(tmp_path / "bad.zarr")
    rng = np.random.default_rng(0)
    rb.add_episode({"scene_rgb": rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8),
                    "wrist_rgb": rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8),
                    "ee_pose": np.zeros((5, 7), np.float32),  # a quaternion pose, not the 6D one
                    "gripper": np.zeros((5, 1), np.float32), "action": np.zeros((5, 10), np.float32)})
    with pytest.raises(DatasetError, match=r"ee_pose.*\(T, 9\) float32.*\(T, 7\) float32"):
        train(tiny_config(tmp_path / "bad.zarr", tmp_path / "run"))
    with pytest.raises(DatasetError):
        train(tiny_config(tmp_path / "missing.zarr", tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = tiny_config("x", "y", steps=100, warmup_steps=10, lr=1e-3)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-6


def test_batches_cover_each_epoch_once_and_repeat_for_a_seed():
    n, b = 50, 8
    epoch = np.concatenate([batch_ids(s, n, b, seed=3) for s in range(n // b)])
    assert len(set(epoch.tolist())) == len(epoch) == 48
    np.testing.assert_array_equal(batch_ids(7, n, b, 3), batch_ids(7, n, b, 3))
    assert not np.array_equal(batch_ids(0, n, b, 3), batch_ids(0, n, b, 4))


def test_lr_schedule_decays_over_the_time_budget_when_it_ends_first():
    cfg = tiny_config("x", "y", steps=100_000, warmup_steps=10, lr=1e-3, max_minutes=2.0)
    assert lr_at(50, cfg, train_seconds=0.0) == pytest.approx(1e-3, rel=1e-3)  # steps far away, no time spent
    assert lr_at(50, cfg, train_seconds=60.0) == pytest.approx(0.5e-3)  # half the budget: cosine half way
    assert lr_at(50, cfg, train_seconds=120.0) == pytest.approx(0.0, abs=1e-12)
    short = tiny_config("x", "y", steps=110, warmup_steps=10, lr=1e-3, max_minutes=60.0)
    assert lr_at(60, short, train_seconds=1.0) == pytest.approx(0.5e-3)  # the step budget ends first here
