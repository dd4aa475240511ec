"""Min/max normalizer: low-dim keys and actions to [-1, 1] per dimension, images to [-1, 1].

Applied only at the Policy boundary (and in training on batches): the networks see
normalized units, the runtime and sim never normalize. Statistics are fitted on the training
set and saved as JSON inside the checkpoint. ``normalize`` / ``unnormalize`` take numpy arrays and torch
tensors alike, and importing this module needs no torch (an exported policy normalizes in numpy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

RANGE_EPS = 1e-4  # a dimension whose range is below this is constant: it maps to 0


class Normalizer:
    """Per-key affine maps ``x_n = (x - offset) * scale`` fitted from min/max."""

    def __init__(self, stats: Mapping[str, Mapping[str, np.ndarray]]):
        self.stats = {k: {"min": np.asarray(v["min"], np.float32), "max": np.asarray(v["max"], np.float32)}
                      for k, v in stats.items()}
        self._scale: dict[str, np.ndarray] = {}
        self._inv_scale: dict[str, np.ndarray] = {}
        self._offset: dict[str, np.ndarray] = {}
        for k, s in self.stats.items():
            if s["min"].shape != s["max"].shape:
                raise ValueError(f"normalizer key {k!r}: min shape {s['min'].shape} != max shape {s['max'].shape}")
            if not (np.all(np.isfinite(s["min"])) and np.all(np.isfinite(s["max"]))):
                raise ValueError(f"normalizer key {k!r}: statistics are not finite")
            rng = s["max"] - s["min"]
            const = rng < RANGE_EPS
            # constant dimensions: centre on the value with unit scale (so they map to 0, not to NaN), and
            # unnormalize to exactly that value: what never varied in the demos is never predicted to vary
            self._scale[k] = np.where(const, 1.0, 2.0 / np.where(const, 1.0, rng)).astype(np.float32)
            self._inv_scale[k] = np.where(const, 0.0, 1.0 / self._scale[k]).astype(np.float32)
            self._offset[k] = np.where(const, s["min"], (s["max"] + s["min"]) / 2).astype(np.float32)
        self._torch_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, ...]] = {}  # (key, device) -> params

    @classmethod
    def fit(cls, arrays: Mapping[str, np.ndarray]) -> Normalizer:
        """Fit min/max per last-axis dimension; ``arrays[k]`` is (N, D)."""
        stats = {}
        for k, a in arrays.items():
            a = np.asarray(a, np.float32).reshape(-1, a.shape[-1])  # (N, D)
            if a.shape[0] == 0:
                raise ValueError(f"cannot fit the normalizer for {k!r}: no data")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"cannot fit the normalizer for {k!r}: data has NaN or inf")
            stats[k] = {"min": a.min(axis=0), "max": a.max(axis=0)}
        return cls(stats)

    def varying(self, key: str) -> np.ndarray:
        """(D,) bool: dimensions of ``key`` that vary in the training data (False for constant ones)."""
        return self._inv_scale[key] != 0

    def keys(self) -> list[str]:
        return list(self.stats)

    def _params(self, key: str, x: np.ndarray | torch.Tensor) -> tuple:
        """(scale, inv_scale, offset) of ``key``: float32 numpy arrays for a numpy ``x``, tensors on its device
        for a torch ``x``."""
        if key not in self.stats:
            raise KeyError(f"normalizer has no statistics for {key!r}; it has {self.keys()}")
        if isinstance(x, np.ndarray):
            return self._scale[key], self._inv_scale[key], self._offset[key]
        import torch

        cached = self._torch_cache.get((key, x.device))
        if cached is None:
            cached = tuple(torch.from_numpy(a[key]).to(x.device) for a in (self._scale, self._inv_scale, self._offset))
            self._torch_cache[(key, x.device)] = cached
        return cached

    def normalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Robot units -> normalized units; last axis is the feature axis (numpy: float32 in, float32 out)."""
        scale, _, offset = self._params(key, x)
        return (x - offset) * scale

    def unnormalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalized units -> robot units."""
        _, inv_scale, offset = self._params(key, x)
        return x * inv_scale + offset

    @staticmethod
    def normalize_image(x: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1]."""
        return x.float() * (2.0 / 255.0) - 1.0

    def to_json(self) -> dict:
        return {"type": "minmax", "range_eps": RANGE_EPS,
                "stats": {k: {"min": s["min"].tolist(), "max": s["max"].tolist()} for k, s in self.stats.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> Normalizer:
        if data.get("type") != "minmax" or "stats" not in data:
            raise ValueError("normalizer file is not a minmax normalizer (missing 'type': 'minmax' or 'stats')")
        return cls({k: {"min": np.asarray(v["min"], np.float32), "max": np.asarray(v["max"], np.float32)}
                    for k, v in data["stats"].items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        return cls.from_json(json.loads(Path(path).read_text()))
