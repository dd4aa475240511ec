"""The small interface the runtime uses to talk to a policy (no torch needed to import it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from policy.action_space import ActionSpace


@runtime_checkable
class ChunkPolicy(Protocol):
    """Observation window in, action chunk out; stateless between calls.

    ``obs_window`` maps each key in ``obs_keys`` to an array with a leading time axis of
    ``n_obs_steps`` frames, oldest first: camera images (To, H, W, 3) uint8, low-dim state
    (To, D) float, and ``action_history`` (To, A): the last actions actually sent to the robot
    before the newest observation (before the first one is sent, training and the runtime fill those
    entries with ``action_space.pad(ee_pose, gripper)``: the measured pose and gripper width for
    absolute actions, the hold action for delta actions; ``policy.action_space``).
    The result is (chunk_len, action_dim) float32 in robot units;
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
    control_hz: float | None = None  # the control rate of the training demos (Hz); None: unknown
    action_space: ActionSpace | None = None  # its history pad; None becomes absolute of action_dim

    def __post_init__(self) -> None:
        if self.action_space is None:
            object.__setattr__(self, "action_space", ActionSpace("absolute", self.action_dim))

    @classmethod
    def of(cls, policy: ChunkPolicy) -> PolicySpec:
        """The spec of a loaded policy; ``control_hz`` and ``action_space`` are optional attributes."""
        return cls(policy.n_obs_steps, policy.chunk_len, policy.action_dim, tuple(policy.obs_keys),
                   getattr(policy, "control_hz", None), getattr(policy, "action_space", None))
