"""Use a zarr replay buffer with other key names directly, or read it episode by episode for a copy.

The reference diffusion-policy datasets are zarr v2 groups in our layout (``data/<key>``,
``meta/episode_ends``), as a directory or a ``.zarr.zip``; e.g. ``pusht_cchi_v7_replay.zarr`` holds
``data/img`` (N, 96, 96, 3) float32 in 0..255, ``data/state`` (N, 5) (agent x, y, block x, y, angle),
``data/action`` (N, 2), ``data/keypoint`` (N, 9, 2), ``data/n_contacts`` (N, 1). ``ReplayBuffer.open``
reads them read-only; ``open_dataset(path, KeyMap(...))`` wraps one in a ``KeyMappedBuffer``, which
renames, slices and converts keys as episodes are read, so training uses it without a conversion::

    rb = open_dataset("pusht_cchi_v7_replay.zarr",
                      KeyMap(keys={"img": "scene_rgb", "action": "action"},
                             state_keys=("state",), state_slices={"ee_pose": (0, 2)}))
    rb.validate(policy_cfg.dataset_spec()); arrays = rb.load()   # {"scene_rgb": (N, 96, 96, 3) uint8, ...}

``read_zarr`` yields the mapped episodes for ``policy.data.convert`` to copy into our zarr v3 format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from policy.data.interop import KeyMap, map_episode
from policy.data.replay_buffer import DatasetError, ReplayBuffer, check_spec, storage_dtype


class KeyMappedBuffer:
    """A read-only ``ReplayBuffer`` seen through a ``KeyMap``: the read API of ``ReplayBuffer``.

    Arrays come out as a ``ReplayBuffer`` would store them: images uint8, ``timestamp`` float64, other
    floats float32. Mapping happens per episode, so ``load`` never holds more than one source episode.
    """

    def __init__(self, rb: ReplayBuffer, key_map: KeyMap) -> None:
        self.rb = rb
        self.key_map = key_map
        self.path = rb.path
        self.read_only = True
        found = rb.frame_specs
        for k in key_map.source_keys:
            if k not in found:
                raise DatasetError(f"dataset {rb.path}: the key map reads key '{k}', which the dataset lacks; "
                                   f"found keys: {sorted(found)}")
        # shapes and dtypes after mapping, from one zero frame of each source key (nothing is read)
        zeros = {k: np.zeros((1, *found[k][0]), found[k][1]) for k in key_map.source_keys}
        mapped = self._map(zeros.__getitem__, f"dataset {rb.path}")
        self._specs = {k: (tuple(a.shape[1:]), a.dtype) for k, a in mapped.items()}

    def _map(self, get, where: str, km: KeyMap | None = None) -> dict[str, np.ndarray]:
        out = map_episode(get, km or self.key_map, where)
        return {k: a.astype(storage_dtype(k, a.dtype), copy=False) for k, a in out.items()}

    # -------------------------------------------------------------- the ReplayBuffer read API

    @property
    def episode_ends(self) -> np.ndarray:
        return self.rb.episode_ends

    @property
    def n_episodes(self) -> int:
        return self.rb.n_episodes

    @property
    def n_steps(self) -> int:
        return self.rb.n_steps

    @property
    def episode_lengths(self) -> np.ndarray:
        return self.rb.episode_lengths

    @property
    def keys(self) -> list[str]:
        """Sorted mapped keys."""
        return sorted(self._specs)

    @property
    def frame_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-frame shape and dtype of each mapped key."""
        return dict(self._specs)

    def episode_slice(self, i: int) -> slice:
        return self.rb.episode_slice(i)

    def _submap(self, keys: list[str]) -> KeyMap:
        """The part of the key map that produces ``keys``."""
        km = self.key_map
        slices = {d: r for d, r in km.state_slices.items() if d in keys}
        return KeyMap(keys={s: d for s, d in km.keys.items() if d in keys},
                      state_keys=km.state_keys if slices else (), state_slices=slices, image_size=km.image_size)

    def _check_keys(self, keys: Iterable[str] | None) -> list[str]:
        keys = self.keys if keys is None else list(keys)
        for k in keys:
            if k not in self._specs:
                raise DatasetError(f"dataset {self.path}: no key '{k}' after the key map; found keys: {self.keys}")
        return keys

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Mapped arrays of episode ``i``: {key: (T, *frame_shape)}."""
        keys = self._check_keys(keys)
        km = self._submap(keys)
        src = self.rb.get_episode(i, km.source_keys)
        return self._map(src.__getitem__, f"dataset {self.path}: episode {i}", km)

    def load(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All committed steps of the mapped keys: {key: (n_steps, *frame_shape)}."""
        keys = self._check_keys(keys)
        out = {k: np.empty((self.n_steps, *self._specs[k][0]), self._specs[k][1]) for k in keys}
        for i in range(self.n_episodes):
            sl = self.episode_slice(i)
            for k, a in self.get_episode(i, keys).items():
                out[k][sl] = a
        return out

    def validate(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype | str]]) -> None:
        """Check the mapped keys against ``spec`` ({key: (frame_shape, dtype)}); DatasetError naming the key."""
        check_spec(f"dataset {self.path} (through the key map)", self._specs, spec)
        self.rb.validate({})

    def __repr__(self) -> str:
        return (f"KeyMappedBuffer({str(self.path)!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, "
                f"keys={self.keys})")


def open_dataset(path: str | os.PathLike, key_map: KeyMap | None = None) -> ReplayBuffer | KeyMappedBuffer:
    """Open a replay buffer read-only (ours, a zarr v2 group or a zip store), through ``key_map`` if given."""
    rb = ReplayBuffer.open(path, "r")
    return rb if key_map is None or key_map.identity else KeyMappedBuffer(rb, key_map)


def read_zarr(src: str | os.PathLike, key_map: KeyMap) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
    """(number of episodes, iterator over the mapped episodes) of the replay buffer at ``src``."""
    rb = open_dataset(Path(src), key_map)
    return rb.n_episodes, (rb.get_episode(i) for i in range(rb.n_episodes))
