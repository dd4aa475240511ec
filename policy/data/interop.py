"""Shared pieces of dataset import and export: the key map, episode mapping, image resizing, atomic output.

A ``KeyMap`` says how the arrays of another dataset become ours (``policy.keys``): whole arrays are
renamed (``keys``), several state arrays are concatenated on their last axis into one vector
(``state_keys``) that is cut into our keys by column ranges (``state_slices``), and images are resized
to ``image_size``. Nothing else is converted: an action of another dimension or convention is stored
as it is (the policy's ``action_dim`` is a config value).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from policy import keys
from policy.atomic import remove, swap_in
from policy.data.replay_buffer import DatasetError

_TARGET = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_image_key(key: str) -> bool:
    """Our image keys: ``scene_rgb``, ``wrist_rgb`` and any other ``*_rgb``."""
    return key in keys.IMAGE_KEYS or key.endswith("_rgb")


@dataclass
class KeyMap:
    """How the keys of another dataset become ours. All empty: take the keys as they are, untouched."""

    keys: dict[str, str] = field(default_factory=dict)  # source key -> our key, whole arrays
    state_keys: tuple[str, ...] = ()  # source keys (T, ...) concatenated on the last axis into one state vector
    state_slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # our key -> [start, stop) columns
    image_size: tuple[int, int] | None = (96, 96)  # (H, W) in pixels that images are resized to; null keeps them

    def __post_init__(self) -> None:
        targets = list(self.keys.values()) + list(self.state_slices)
        for t in targets:
            if not _TARGET.match(t):
                raise ValueError(f"map: target key {t!r} must be a non-empty name of letters, digits, '_', '.', '-'")
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise ValueError(f"map: target key(s) {dup} are produced twice (check map.keys and map.state_slices)")
        if bool(self.state_keys) != bool(self.state_slices):
            raise ValueError("map.state_keys and map.state_slices go together: set both or neither")
        for k, (a, b) in self.state_slices.items():
            if not 0 <= a < b:
                raise ValueError(f"map.state_slices.{k} must be [start, stop) with 0 <= start < stop, got [{a}, {b}]")
            if is_image_key(k):
                raise ValueError(f"map.state_slices.{k}: an image key cannot be cut from a state vector")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"map.image_size must be [H, W] with both >= 1 (or null), got {self.image_size}")

    @property
    def identity(self) -> bool:
        """True when nothing is mapped: the source keys are taken as they are."""
        return not self.keys and not self.state_keys

    @property
    def source_keys(self) -> list[str]:
        """Every source key this map reads, in order."""
        return list(dict.fromkeys([*self.keys, *self.state_keys]))


def resize_images(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8 with Pillow's antialiased bilinear filter; no-op at ``size``."""
    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    from PIL import Image

    out = np.empty((len(frames), h, w, 3), np.uint8)
    for i, f in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR))
    return out


def to_image(arr: np.ndarray, where: str, src: str, size: tuple[int, int] | None) -> np.ndarray:
    """Check (T, H, W, 3) images; floats in [0, 255] are rounded to uint8; resize to ``size`` (H, W)."""
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DatasetError(f"{where}: key '{src}' must hold (T, H, W, 3) images, found shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiu":
            raise DatasetError(f"{where}: key '{src}' has image dtype {arr.dtype} (expected uint8 or float in 0..255)")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255 or not np.isfinite([lo, hi]).all():
            raise DatasetError(f"{where}: key '{src}' image values span [{lo}, {hi}], expected 0..255")
        arr = np.rint(arr).astype(np.uint8)
    return resize_images(arr, size) if size is not None else arr


def map_episode(get: Callable[[str], np.ndarray], km: KeyMap, where: str) -> dict[str, np.ndarray]:
    """Our episode {key: (T, ...)} from the source arrays that ``get(source_key)`` returns.

    ``where`` (file, and episode) starts every error. With an identity map ``get`` is not called.
    """
    out: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    for src, dst in km.keys.items():
        arr = np.asarray(get(src))
        if arr.ndim == 0:
            raise DatasetError(f"{where}: key '{src}' is a scalar, expected a time-major array (T, ...)")
        lengths[src] = arr.shape[0]
        if is_image_key(dst):
            arr = to_image(arr, where, src, km.image_size)
        elif dst == keys.TIMESTAMP:
            arr = arr.reshape(len(arr)).astype(np.float64) if arr.size == len(arr) else arr
        out[dst] = arr
    if km.state_keys:
        parts = []
        for src in km.state_keys:
            arr = np.asarray(get(src))
            if arr.ndim == 0:
                raise DatasetError(f"{where}: state key '{src}' is a scalar, expected (T, ...)")
            lengths[src] = arr.shape[0]
            parts.append(arr.reshape(arr.shape[0], -1))
        if len(set(lengths.values())) > 1:  # before the concatenation, which would fail less clearly
            raise DatasetError(f"{where}: mismatched lengths {lengths}")
        state = np.concatenate(parts, axis=1)  # (T, D)
        for dst, (a, b) in km.state_slices.items():
            if b > state.shape[1]:
                raise DatasetError(f"{where}: map.state_slices.{dst} = [{a}, {b}] runs past the state vector of "
                                   f"width {state.shape[1]} (from {list(km.state_keys)})")
            out[dst] = state[:, a:b]
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{where}: mismatched lengths {lengths}")
    return out


def need(module: str) -> types.ModuleType:
    """Import an optional package, or ImportError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"dataset import/export needs {module.split('.')[0]}: pip install -e \".[interop]\"") from e


@contextmanager
def atomic_output(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path ``<out>.tmp-<pid>`` to write into; swapped in as ``out`` only on success
    (``policy.atomic.swap_in``, the swap of checkpoints too).

    An existing ``out`` is refused unless ``overwrite`` (then replaced only after the new one is complete);
    on any error the temporary output is removed, so a failed import leaves nothing behind. Temporary outputs
    of ``out`` left by killed processes (their pid is gone) are removed first.
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise DatasetError(f"out={out}: already exists; pass overwrite=true to replace it (nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f"{glob_escape(out.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            remove(stale)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    swap_in(tmp, out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


