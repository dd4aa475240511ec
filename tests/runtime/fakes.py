"""Test doubles for the controller tests: a scripted ChunkPolicy and a camera that dies."""

from __future__ import annotations

import numpy as np

from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.drivers.fake import IDENTITY_6D, FakeCamera

DT = 0.1
Z = 0.3


def x_at(tick: int) -> float:
    """The fake policy's trajectory: the target x for a tick (absolute, whichever chunk holds it)."""
    return 0.3 + 0.002 * tick


class ScriptedPolicy:
    """A ChunkPolicy whose chunk from the observation at tick k holds x_at(k + i) for entry i.

    The observation tick is read back from ``ee_pose`` x, which the fake robot tracks exactly, so
    a correctly stamped chunk lines up with the absolute trajectory. ``fail_calls`` raise;
    ``nan_calls`` return NaN entries.
    """

    n_obs_steps = 2
    chunk_len = 16
    action_dim = 10
    obs_keys = ("scene_rgb", "ee_pose", "gripper", "action_history")

    def __init__(self, fail_calls: set[int] | None = None, nan_calls: set[int] | None = None):
        self.calls = 0
        self.windows: list[dict[str, np.ndarray]] = []
        self.obs_ticks: list[int] = []
        self.fail_calls = fail_calls or set()
        self.nan_calls = nan_calls or set()
        self.tick_of = None  # set by the test: callable returning the controller's current tick

    def predict_chunk(self, window):
        call = self.calls
        self.calls += 1
        self.windows.append({k: np.array(v) for k, v in window.items()})
        if call in self.fail_calls:
            raise RuntimeError(f"scripted failure on call {call}")
        k = self.tick_of()
        self.obs_ticks.append(k)
        position = np.zeros((self.chunk_len, 3))  # (L, 3): x along the trajectory, y 0, z Z
        position[:, 0] = [x_at(k + i) for i in range(self.chunk_len)]
        position[:, 2] = Z
        if call in self.nan_calls:
            position[4:, 0] = np.nan
        rotation = np.broadcast_to(IDENTITY_6D, (self.chunk_len, 6))
        return LAYOUT.join(position, rotation, 0.04)  # (L, 10)


class DyingCamera(FakeCamera):
    """A camera whose frames stop updating at ``die_at`` (seconds on its clock)."""

    def __init__(self, now, die_at: float, **kw):
        super().__init__(now, **kw)
        self.die_at = die_at

    def read(self):
        if self._frozen is None and self.now() >= self.die_at:
            self.freeze()
        return super().read()
