"""The small interface the runtime uses to talk to a policy (no torch needed to import it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ChunkPolicy(Protocol):
    """Observation window in, action chunk out; stateless between calls.

    ``obs_window`` maps each key in ``obs_keys`` to an array with a leading time axis of
    ``n_obs_steps`` frames, oldest first: camera images (To, H, W, 3) uint8, low-dim state
    (To, D) float, and ``action_history`` (To, A): the last actions actually sent to the robot
    before the newest observation (before the first one is sent, the runtime fills it with the hold
    target, i.e. the measured pose and gripper width; training windows repeat the episode's first
    action there). The result is (chunk_len, action_dim) float32 in robot units;
    row ``i`` is meant for ``t_obs + i * dt`` where ``t_obs`` is the newest observation's time.
    """

    n_obs_steps: int
    chunk_len: int
    action_dim: int
    obs_keys: tuple[str, ...]

    def predict_chunk(self, obs_window: Mapping[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class PolicySpec:
    """What a caller must know about a policy without loading its weights (e.g. for a worker process)."""

    n_obs_steps: int
    chunk_len: int
    action_dim: int
    obs_keys: tuple[str, ...]

    @classmethod
    def of(cls, policy: ChunkPolicy) -> PolicySpec:
        return cls(policy.n_obs_steps, policy.chunk_len, policy.action_dim, tuple(policy.obs_keys))
