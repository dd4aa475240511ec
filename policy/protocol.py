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
    (To, D) float, and ``action_history`` (Th, A), Th = ``history_steps`` (an optional attribute; To when
    absent): the last actions actually sent to the robot before the newest observation (before the first one
    is sent, training and the runtime fill those entries with ``action_space.pad(ee_pose, gripper)``: the
    measured pose and gripper width for absolute actions, the hold action for delta actions;
    ``policy.action_space``).
    The result is (chunk_len, action_dim) float32 in robot units;
    row ``i`` is meant for ``t_obs + i * dt`` where ``t_obs`` is the newest observation's time.
    """

    n_obs_steps: int
    chunk_len: int
    action_dim: int
    obs_keys: tuple[str, ...]

    def predict_chunk(self, obs_window: Mapping[str, np.ndarray]) -> np.ndarray: ...


CONTINUATIONS = ("rtc", "bid")
RTC_SCHEDULES = ("exp", "linear")  # ChunkPrefix.schedule: the soft mask over the overlap (policy.guidance)


@dataclass(frozen=True)
class ChunkPrefix:
    """What the controller has committed when it asks for a chunk, for a policy that continues it
    (real-time chunking); passed as ``predict_chunk(window, prefix=...)`` to policies that accept it.

    actions: (P, A) float, robot units, P <= chunk_len; ``actions[i]`` is meant for ``t_obs + i * dt``, the
      same time as row ``i`` of the chunk to predict: the rest of the current buffer from the observation on.
    delay: d, 0 <= d <= P: the leading entries that will execute before the new chunk can arrive (fixed:
      the returned chunk should equal them); entries d..P-1 overlap the new chunk (a soft target).
    method: ``rtc`` (guided sampling that inpaints the prefix) or ``bid`` (pick among a batch of samples the
      one most coherent with the prefix).
    max_guidance: RTC's clip of the guidance weight (beta; 0 reproduces plain sampling).
    schedule: RTC's soft mask over the overlap (1 before d): ``exp``, weight ``exp(-decay * (i - d + 1))`` for
      i >= d, or ``linear``, the paper's ramp (P - i) / (P - d + 1) (``policy.guidance.rtc_weights``).
    decay: the ``exp`` schedule's rate per entry.
    samples: BID's batch of candidate chunks.
    """

    actions: np.ndarray
    delay: int
    method: str = "rtc"
    max_guidance: float = 5.0
    decay: float = 0.5
    samples: int = 16
    schedule: str = "exp"

    def __post_init__(self) -> None:
        a = np.asarray(self.actions)
        if a.ndim != 2 or not np.all(np.isfinite(a)):
            raise ValueError(f"prefix.actions must be a finite (P, A) array, got shape {a.shape}")
        if not 0 <= self.delay <= len(a):
            raise ValueError(f"prefix.delay must be in [0, {len(a)}] (entries), got {self.delay}")
        if self.method not in CONTINUATIONS:
            raise ValueError(f"prefix.method must be one of {CONTINUATIONS}, got {self.method!r}")
        if self.schedule not in RTC_SCHEDULES:
            raise ValueError(f"prefix.schedule must be one of {RTC_SCHEDULES}, got {self.schedule!r}")
        if not self.max_guidance >= 0 or not self.decay >= 0 or self.samples < 1:
            raise ValueError(f"prefix: max_guidance and decay must be >= 0 and samples >= 1, got "
                             f"{self.max_guidance}, {self.decay}, {self.samples}")


def accepts_prefix(policy: object) -> bool:
    """Whether ``policy.predict_chunk`` takes a ``prefix`` keyword (a policy without it keeps working)."""
    import inspect

    try:
        return "prefix" in inspect.signature(policy.predict_chunk).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def no_prefix_reason(policy: object) -> str:
    """Why ``policy`` cannot continue a ``ChunkPrefix``, in words for an error ("" when it can): its own
    ``no_prefix_reason`` attribute when it has one (e.g. an exported policy), else that its ``predict_chunk``
    takes no prefix."""
    if accepts_prefix(policy):
        return ""
    return str(getattr(policy, "no_prefix_reason", "") or "its predict_chunk takes no prefix")


@dataclass(frozen=True)
class PolicySpec:
    """What a caller must know about a policy without loading its weights (e.g. for a worker process)."""

    n_obs_steps: int
    chunk_len: int
    action_dim: int
    obs_keys: tuple[str, ...]
    control_hz: float | None = None  # the control rate of the training demos (Hz); None: unknown
    action_space: ActionSpace | None = None  # its history pad; None becomes absolute of action_dim
    history_steps: int | None = None  # Th: sent actions in a window's action_history; None becomes n_obs_steps

    def __post_init__(self) -> None:
        if self.action_space is None:
            object.__setattr__(self, "action_space", ActionSpace("absolute", self.action_dim))
        if self.history_steps is None:
            object.__setattr__(self, "history_steps", self.n_obs_steps)

    @classmethod
    def of(cls, policy: ChunkPolicy) -> PolicySpec:
        """The spec of a loaded policy; ``control_hz``, ``action_space`` and ``history_steps`` are optional
        attributes."""
        return cls(policy.n_obs_steps, policy.chunk_len, policy.action_dim, tuple(policy.obs_keys),
                   getattr(policy, "control_hz", None), getattr(policy, "action_space", None),
                   getattr(policy, "history_steps", None))
