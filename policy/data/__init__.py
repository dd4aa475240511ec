"""Datasets: the zarr replay buffer, the training-window sampler, and key maps for other datasets' keys."""

from policy.data.interop import KeyMap
from policy.data.reference_zarr import KeyMappedBuffer, open_dataset
from policy.data.replay_buffer import DatasetError, ReplayBuffer
from policy.data.sampler import WindowSampler, split_episodes

__all__ = ["DatasetError", "KeyMap", "KeyMappedBuffer", "ReplayBuffer", "WindowSampler", "open_dataset",
           "split_episodes"]
