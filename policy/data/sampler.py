"""Episode train/val split and padded training windows over a time-major replay buffer.

For a sample at global time ``t`` in episode ``[s, e)`` (all index arrays are global time indices):

- ``obs``     (B, To): times ``t-To+1 .. t``, clipped to ``>= s`` (first frame repeated at the start);
- ``action``  (B, Tp): times ``t .. t+Tp-1``, clipped to ``<= e-1`` (last action repeated at the end);
- ``history`` (B, Th): times ``t-Th .. t-1``, clipped to ``>= s``: the actions sent before the newest
  observation. ``gather`` replaces the entries before the episode start (times ``< s``, no action sent yet)
  by the action space's pad (``policy.action_space``): for absolute actions the episode's first measured
  ``ee_pose`` (+ ``gripper``), for delta actions the hold action, exactly as the runtime pads.

Windows never cross episode boundaries. Everything is vectorized over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from policy.action_space import ActionSpace
from policy.keys import ACTION, ACTION_HISTORY, EE_POSE, GRIPPER


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episode ids into sorted (train_ids, val_ids), int64.

    ``round(n_episodes * val_fraction)`` episodes go to validation, at least 1 when ``val_fraction > 0``
    and at most ``n_episodes - 1`` so training is never empty; a single episode always goes to train.
    """
    if not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
        raise ValueError(f"n_episodes must be an integer >= 1, got {n_episodes!r}")
    if not 0.0 <= val_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(n_episodes * val_fraction))
    if val_fraction > 0 and n_episodes >= 2:
        n_val = min(max(n_val, 1), n_episodes - 1)
    else:
        n_val = 0
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


class WindowSampler:
    """One training window per time step of the selected episodes, with edge padding by index clipping."""

    def __init__(
        self,
        episode_ends: np.ndarray,
        episode_ids: Sequence[int],
        n_obs_steps: int,
        chunk_len: int,
        history_len: int | None = None,
        action_space: ActionSpace | None = None,
    ) -> None:
        """Args:
        episode_ends: (E,) cumulative exclusive episode ends (``ReplayBuffer.episode_ends``).
        episode_ids: the episodes to sample from (e.g. the train ids of ``split_episodes``).
        n_obs_steps: To, observation frames per sample (>= 1).
        chunk_len: Tp, actions per predicted chunk (>= 1).
        history_len: Th, past actions per sample (>= 0); defaults to ``n_obs_steps``.
        action_space: pads the history before the episode start; None: absolute, of the arrays' action dim.
        """
        ends = np.asarray(episode_ends)
        if ends.ndim != 1 or (ends.size and ends.dtype.kind not in "iu"):
            raise ValueError(f"episode_ends must be a 1-D integer array, got {ends.dtype} {ends.shape}")
        ends = ends.astype(np.int64)
        if ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
            raise ValueError("episode_ends must be non-negative and non-decreasing")
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        history_len = n_obs_steps if history_len is None else history_len
        if history_len < 0:
            raise ValueError(f"history_len must be >= 0, got {history_len}")
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("episode_ids is empty: no episodes selected")
        if ids.min() < 0 or ids.max() >= len(ends):
            raise ValueError(f"episode_ids must be in [0, {len(ends)}), got min {ids.min()}, max {ids.max()}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("episode_ids contains duplicates")
        self.n_obs_steps = int(n_obs_steps)  # To
        self.chunk_len = int(chunk_len)  # Tp
        self.history_len = int(history_len)  # Th
        self.episode_ids = ids
        self.action_space = action_space

        starts = np.concatenate([[0], ends[:-1]])[ids]  # (n_sel,)
        stops = ends[ids]
        lengths = stops - starts
        if lengths.sum() == 0:
            raise ValueError("episode_ids selects only empty episodes: no samples")
        # per-step arrays: t, and the [s, e) of its episode
        self._start = np.repeat(starts, lengths)  # (N,)
        self._stop = np.repeat(stops, lengths)  # (N,)
        self._t = self._start + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))

    def __len__(self) -> int:
        """Number of samples: one per time step of the selected episodes."""
        return len(self._t)

    def step_indices(self) -> np.ndarray:
        """Global time indices of all steps in the selected episodes, int64 (N,)."""
        return self._t.copy()

    def indices(self, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Global time indices for a batch: {"obs": (B, To), "action": (B, Tp), "history": (B, Th)}."""
        ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)  # (B,)
        if ids.size and (ids.min() < -len(self) or ids.max() >= len(self)):
            raise IndexError(
                f"sample_ids out of range [-{len(self)}, {len(self)}): min {ids.min()}, max {ids.max()}"
            )
        t, s, e = self._t[ids, None], self._start[ids, None], self._stop[ids, None]  # (B, 1) each
        To, Tp, Th = self.n_obs_steps, self.chunk_len, self.history_len
        return {
            "obs": np.maximum(t + np.arange(-To + 1, 1), s),  # (B, To)
            "action": np.minimum(t + np.arange(Tp), e - 1),  # (B, Tp)
            "history": np.maximum(t + np.arange(-Th, 0), s),  # (B, Th)
        }

    def gather(
        self, arrays: Mapping[str, np.ndarray], sample_ids: np.ndarray, obs_keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Index in-memory time-major arrays (e.g. ``ReplayBuffer.load()``) for a batch.

        Returns {k: (B, To, ...) for k in obs_keys, "action": (B, Tp, A), "action_history": (B, Th, A)};
        "action_history" is omitted when ``history_len == 0``. Its entries before the episode start are the
        action space's pad, from ``arrays["ee_pose"]`` (and ``"gripper"``) at the episode start (absolute).
        """
        for k in (*obs_keys, ACTION):
            if k not in arrays:
                raise ValueError(f"gather: key '{k}' not in arrays (found {sorted(arrays)})")
        for k in (ACTION, ACTION_HISTORY):
            if k in obs_keys:
                raise ValueError(f"gather: obs_keys must not contain '{k}', it is produced separately")
        idx = self.indices(sample_ids)
        out = {k: np.asarray(arrays[k])[idx["obs"]] for k in obs_keys}  # (B, To, ...)
        action = np.asarray(arrays[ACTION])
        out[ACTION] = action[idx["action"]]  # (B, Tp, A)
        if self.history_len > 0:
            out[ACTION_HISTORY] = self._history(arrays, action, idx["history"], sample_ids)  # (B, Th, A)
        return out

    def _history(self, arrays: Mapping[str, np.ndarray], action: np.ndarray, hist_idx: np.ndarray,
                 sample_ids: np.ndarray) -> np.ndarray:
        """(B, Th, A) sent actions; entries before the episode start replaced by the action space's pad."""
        ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)  # (B,)
        t, s = self._t[ids, None], self._start[ids, None]  # (B, 1)
        before = t + np.arange(-self.history_len, 0) < s  # (B, Th): no action had been sent yet
        hist = action[hist_idx]  # (B, Th, A)
        if not before.any():
            return hist
        space = self.action_space or ActionSpace("absolute", action.shape[-1],
                                                 with_gripper=GRIPPER in arrays)
        first = s[:, 0]  # (B,) global index of each episode's first frame
        if space.kind == "absolute":
            for k in (EE_POSE, GRIPPER) if space.with_gripper else (EE_POSE,):
                if k not in arrays:
                    raise ValueError(f"gather: action_space absolute pads the action history with the measured "
                                     f"'{k}', which is not in arrays (found {sorted(arrays)}); set "
                                     f"policy.action_space=delta for delta actions")
            grip = np.asarray(arrays[GRIPPER])[first] if space.with_gripper else None
            pad = space.pad(np.asarray(arrays[EE_POSE])[first], grip)  # (B, A)
        else:
            pad = np.broadcast_to(space.pad(), (len(ids), action.shape[-1]))  # (B, A)
        hist = hist.copy()
        hist[before] = np.broadcast_to(pad[:, None], hist.shape)[before]
        return hist
