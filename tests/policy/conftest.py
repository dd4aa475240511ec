"""Shared fixtures: tiny configs and datasets that the policy tests train on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.config import Config, EncoderConfig, ObjectiveConfig, PolicyConfig, TrainConfig, UNetConfig
from policy.data.synthetic import make_synthetic_dataset


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tiny_policy_config(**overrides) -> PolicyConfig:
    """32x32 images, a narrow encoder and U-Net: trains in seconds on a CPU."""
    base = dict(
        image_shape=(32, 32),
        encoder=EncoderConfig(channels=(16, 16), stem_stride=2, crop_shape=(28, 28), feature_dim=32,
                              num_keypoints=16),
        unet=UNetConfig(down_dims=(64, 128), kernel_size=3, step_embed_dim=32),
        objective=ObjectiveConfig(name="flow", sampler="euler", num_inference_steps=4),
        chunk_len=8,
        n_obs_steps=2,  # the CPU default is 1; the tests cover multi-frame windows
    )
    base.update(overrides)
    return PolicyConfig(**base)


def tiny_config(dataset, out_dir, policy: PolicyConfig | None = None, **train_overrides) -> Config:
    train = dict(dataset=str(dataset), out_dir=str(out_dir), steps=6, batch_size=8, warmup_steps=2,
                 val_every=3, ckpt_every=3, log_every=2, val_batches=1, progress=False, device="cpu")
    train.update(train_overrides)
    return Config(policy=policy or tiny_policy_config(), train=TrainConfig(**train))


@pytest.fixture
def tiny_dataset(tmp_path):
    path = tmp_path / "demos.zarr"
    make_synthetic_dataset(path, n_episodes=4, episode_len=12, image_shape=(32, 32), seed=0)
    return path


def window_from_episode(ep: dict[str, np.ndarray], t: int, n_obs: int, keys_: list[str],
                        n_hist: int | None = None) -> dict[str, np.ndarray]:
    """Observation window ending at step t with edge padding, as the sampler builds it: ``n_hist`` (default
    ``n_obs``) sent actions, history entries before the episode start are the measured first pose and gripper
    (absolute actions)."""
    obs_idx = np.clip(np.arange(t - n_obs + 1, t + 1), 0, None)
    hist_t = np.arange(t - (n_obs if n_hist is None else n_hist), t)
    win = {k: ep[k][obs_idx] for k in keys_}
    pad = np.concatenate([ep["ee_pose"][0], ep["gripper"][0]])  # (A,)
    win["action_history"] = np.where((hist_t < 0)[:, None], pad, ep["action"][np.clip(hist_t, 0, None)])
    return win
