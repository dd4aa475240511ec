"""Datasets: the zarr replay buffer and the training-window sampler."""

from policy.data.replay_buffer import DatasetError, ReplayBuffer
from policy.data.sampler import WindowSampler, split_episodes

__all__ = ["DatasetError", "ReplayBuffer", "WindowSampler", "split_episodes"]
