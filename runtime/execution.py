"""How the controller joins consecutive chunks (``controller.execution``), and what it tells inference.

- ``naive``: a chunk replaces the buffer from the tick it arrives (``runtime.buffer.ActionBuffer``).
- ``rtc`` / ``bid``: the same buffer, but every request carries a ``ChunkPrefix``: the rest of the current
  chunk from the observation tick on (row ``i`` for tick ``obs_tick + i``) and ``d``, the number of those
  entries that will execute before the new chunk can arrive. The policy continues them (real-time chunking:
  guided sampling; bidirectional decoding: the most coherent of a batch), so the switch is seamless.
- ``ensemble``: temporal ensembling (ACT): each tick's action is the weighted average of every received
  chunk's entry for that tick, weights ``exp(-m * i)`` with ``i`` the chunk's rank among those covering the
  tick, oldest first (``i = 0``); ACT's convention, so with ``m > 0`` older chunks weigh more, ``m = 0`` is a
  plain mean and ``m < 0`` favours the newest. The 6D rotation is averaged, then re-orthonormalized
  (Gram-Schmidt); the gripper width is averaged.

``d`` comes from ``DelayEstimator``: the ``latency_quantile`` of the last ``latency_window`` delays measured
in ticks, each the number of buffered entries that executed while a request ran (its arrival tick minus
its observation tick), which is right on a simulated and on the wall clock alike; before any arrival,
``latency_initial_s`` rounded up to ticks. Either way at least 1: the observation tick's own action is
sent before the request leaves.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from policy.protocol import CONTINUATIONS, ChunkPrefix
from runtime.buffer import ActionBuffer
from runtime.rotation import DegenerateRotation, mat3_to_rot6d, rot6d_to_mat3

EXECUTIONS = ("naive", *CONTINUATIONS, "ensemble")


class DelayEstimator:
    """A running estimate of ``d``: the ticks a request takes from its observation tick to its arrival."""

    def __init__(self, window: int, quantile: float, initial_s: float, dt: float):
        self.quantile, self.dt = quantile, dt
        self._delays: deque[int] = deque(maxlen=window)
        self.initial = max(1, math.ceil(initial_s / dt - 1e-6))  # ticks, before any measurement

    def add(self, obs_tick: int, arrival_tick: int) -> None:
        """One request answered at ``arrival_tick`` (its chunk is used from that tick on)."""
        self._delays.append(max(1, arrival_tick - obs_tick))

    @property
    def measured(self) -> int:
        return len(self._delays)

    def ticks(self) -> int:
        """``d`` for the next request: the quantile of the recent delays, rounded up to ticks (>= 1)."""
        if not self._delays:
            return self.initial
        q = float(np.quantile(np.fromiter(self._delays, float, len(self._delays)), self.quantile))
        return max(1, math.ceil(q - 1e-9))


def build_prefix(buffer: ActionBuffer, obs_tick: int, delay: int, method: str, max_guidance: float,
                 decay: float, samples: int, chunk_len: int, schedule: str = "exp") -> ChunkPrefix | None:
    """The committed actions for a request from ``obs_tick``: None before the first chunk or when nothing
    is buffered for ``obs_tick`` (an underrun), else a ``ChunkPrefix`` with ``min(delay, P)`` fixed entries."""
    actions = buffer.committed(obs_tick, chunk_len)
    if actions is None:
        return None
    return ChunkPrefix(actions, min(delay, len(actions)), method, max_guidance, decay, samples, schedule)


class EnsembleBuffer:
    """Temporal ensembling on the tick grid, with the ``ActionBuffer`` interface.

    Running sums per tick in a ring of ``chunk_len`` slots (every buffered tick lies in
    ``[now, now + chunk_len)``): a chunk adds ``w * action`` and ``w`` to each tick it covers, with
    ``w = exp(-decay * n)`` and ``n`` the number of chunks already covering that tick; ``pop`` divides.
    Nothing is allocated per tick but the returned action.
    """

    def __init__(self, chunk_len: int, action_dim: int, decay: float):
        self.size, self.decay = chunk_len, decay
        self._sum = np.zeros((chunk_len, action_dim))  # (R, A) weighted sums
        self._weight = np.zeros(chunk_len)  # (R,) sum of weights
        self._count = np.zeros(chunk_len, dtype=np.int64)  # (R,) chunks covering the slot's tick
        self._tick = np.full(chunk_len, -1, dtype=np.int64)  # (R,) tick held by each slot, -1: none
        self._newest = np.full(chunk_len, -1, dtype=np.int64)  # (R,) obs tick of the newest chunk in a slot
        self.chunk_tick: int | None = None

    def insert_chunk(self, chunk: np.ndarray, obs_tick: int, now_tick: int) -> int:
        """Add ``chunk`` (Tp, A) stamped from ``obs_tick`` to the ticks from ``now_tick`` on; returns how many
        entries were dropped because their tick had passed (or lies beyond the ring)."""
        dropped = 0
        for i in range(len(chunk)):
            t = obs_tick + i
            if t < now_tick or t >= now_tick + self.size:
                dropped += 1
                continue
            s = t % self.size
            if self._tick[s] != t:  # a slot left from a passed tick: start afresh
                self._sum[s] = 0.0
                self._weight[s] = 0.0
                self._count[s] = 0
                self._tick[s] = t
            w = math.exp(-self.decay * int(self._count[s]))
            self._sum[s] += w * chunk[i]
            self._weight[s] += w
            self._count[s] += 1
            self._newest[s] = obs_tick
        self.chunk_tick = obs_tick
        return dropped

    def pop(self, tick: int) -> tuple[np.ndarray, int] | None:
        """(the ensembled action for ``tick``, obs tick of the newest chunk in it), None if none covers it."""
        s = tick % self.size
        if self._tick[s] != tick or self._count[s] == 0:
            return None
        action = self._sum[s] / self._weight[s]  # (A,)
        try:  # the mean of unit 6D columns is not orthonormal: Gram-Schmidt it back
            action[LAYOUT.rotation] = mat3_to_rot6d(rot6d_to_mat3(action[LAYOUT.rotation]))
        except DegenerateRotation:
            pass  # opposite rotations averaged to nothing: the safety layer rejects it and holds
        self._tick[s] = -1
        return action, int(self._newest[s])

    def remaining(self, tick: int) -> int:
        """Buffered ticks at ``tick`` and later."""
        return int(np.count_nonzero((self._tick >= tick) & (self._count > 0)))

    def committed(self, tick: int, limit: int) -> np.ndarray | None:  # noqa: ARG002 - no prefix for ensembling
        return None

    def __len__(self) -> int:
        return int(np.count_nonzero(self._tick >= 0))


def make_buffer(execution: str, chunk_len: int, action_dim: int, ensemble_decay: float):
    """The action buffer for ``controller.execution``."""
    if execution == "ensemble":
        return EnsembleBuffer(chunk_len, action_dim, ensemble_decay)
    return ActionBuffer()
