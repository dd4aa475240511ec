"""A timestamped action buffer on the controller's tick grid.

A chunk predicted from the observation of tick ``k_obs`` holds ``chunk[i]`` for tick ``k_obs + i``
(time ``t_obs + i * dt``). Entries whose tick has already passed when the chunk arrives are dropped
(latency compensation); the rest replace the buffer from that tick on.
"""

from __future__ import annotations

import numpy as np


class ActionBuffer:
    """Actions keyed by tick index; at most one action per tick."""

    def __init__(self) -> None:
        self._actions: dict[int, tuple[np.ndarray, int]] = {}  # tick -> (action, obs tick of its chunk)
        self.chunk_tick: int | None = None  # tick of the observation the current chunk was predicted from
        self._popped: tuple[int, np.ndarray] | None = None  # (tick, action) last returned by pop

    def insert_chunk(self, chunk: np.ndarray, obs_tick: int, now_tick: int) -> int:
        """Replace the buffer from ``now_tick`` on with ``chunk`` (Tp, A) stamped from ``obs_tick``.

        Returns how many entries were dropped because their tick had already passed.
        """
        ticks = obs_tick + np.arange(len(chunk))
        keep = ticks >= now_tick
        self._actions = {t: a for t, a in self._actions.items() if t < now_tick}
        for t, a in zip(ticks[keep], chunk[keep]):
            self._actions[int(t)] = (np.asarray(a, dtype=np.float64), obs_tick)
        self.chunk_tick = obs_tick
        return int((~keep).sum())

    def pop(self, tick: int) -> tuple[np.ndarray, int] | None:
        """(action, obs tick of its chunk) for ``tick``, None if there is none (an underrun).

        Older entries are discarded.
        """
        for t in [t for t in self._actions if t < tick]:
            del self._actions[t]
        entry = self._actions.pop(tick, None)
        if entry is not None:
            self._popped = (tick, entry[0])
        return entry

    def committed(self, tick: int, limit: int) -> np.ndarray | None:
        """(P, A) the buffered actions for ticks ``tick, tick + 1, ...`` (the one already popped for ``tick``
        included), up to the first gap or ``limit`` entries; None when there is none for ``tick``."""
        rows = []
        for t in range(tick, tick + limit):
            entry = self._actions.get(t)
            if entry is not None:
                rows.append(entry[0])
            elif self._popped is not None and self._popped[0] == t:
                rows.append(self._popped[1])
            else:
                break
        return np.stack(rows) if rows else None

    def remaining(self, tick: int) -> int:
        """Buffered actions for ``tick`` and later."""
        return sum(1 for t in self._actions if t >= tick)

    def __len__(self) -> int:
        return len(self._actions)
