"""An observation window at the policy boundary, without torch: its keys, its checks, and the network inputs
made from it (images as they are, the rest normalized; actions in the network's frame, ``policy.action_frame``).
Shared by training, the torch ``Policy`` and the exported ``OnnxPolicy``, so they accept and reject exactly the
same windows and see actions in the same frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from policy import keys
from policy.action_frame import to_absolute, to_relative
from policy.config import PolicyConfig
from policy.normalizer import Normalizer
from policy.protocol import PolicySpec


def obs_keys(cfg: PolicyConfig) -> tuple[str, ...]:
    """Keys of an observation window, in a fixed order."""
    extra = (keys.ACTION_HISTORY,) if cfg.use_action_history else ()
    return (*cfg.image_keys, *cfg.lowdim_dims, *extra)


def window_steps(cfg: PolicyConfig, key: str) -> int:
    """Entries on the time axis of ``key`` in a window: Th (``history_steps``) for the action history, To else."""
    return cfg.history_steps if key == keys.ACTION_HISTORY else cfg.n_obs_steps


def policy_spec(cfg: PolicyConfig, control_hz: float | None) -> PolicySpec:
    """The ``PolicySpec`` (what the runtime needs) of a policy built from ``cfg``, trained at ``control_hz``."""
    return PolicySpec(cfg.n_obs_steps, cfg.chunk_len, cfg.action_dim, obs_keys(cfg), control_hz=control_hz,
                      action_space=cfg.action_space_spec(), history_steps=cfg.history_steps or None)


def check_window(obs: Mapping[str, np.ndarray], cfg: PolicyConfig, batched: bool) -> None:
    """Raise naming the key when ``obs`` is not a window the policy of ``cfg`` takes: each key of
    ``obs_keys(cfg)`` present, (To, ...) per key (``batched``: (B, To, ...)), uint8 images, finite numbers."""
    lead = 2 if batched else 1
    for k in obs_keys(cfg):
        if k not in obs:
            raise KeyError(f"observation window is missing {k!r}; the policy needs {list(obs_keys(cfg))}")
        a = np.asarray(obs[k])
        if k in cfg.image_keys:
            want: tuple[int, ...] = (*cfg.image_shape, 3)
        elif k == keys.ACTION_HISTORY:
            want = (cfg.action_dim,)
        else:
            want = (cfg.lowdim_dims[k],)
        steps = window_steps(cfg, k)
        if a.ndim != lead + len(want) or a.shape[lead - 1] != steps or tuple(a.shape[lead:]) != want:
            expected = ("B, " if batched else "") + ", ".join(map(str, (steps, *want)))
            raise ValueError(f"observation {k!r}: expected shape ({expected}), got {a.shape}")
        if k in cfg.image_keys:
            if a.dtype != np.uint8:
                raise ValueError(f"observation {k!r}: expected uint8 images, got {a.dtype}")
        elif not np.all(np.isfinite(a)):
            raise ValueError(f"observation {k!r} contains NaN or inf")


def _as_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    return np.asarray(x, dtype)


def to_network_frame(actions: Any, batch: Mapping[str, Any], cfg: PolicyConfig) -> np.ndarray:
    """Absolute robot-unit actions (B, T, A) of the windows of ``batch`` -> the frame the network works in
    (``cfg.action_frame``: unchanged, or relative to each window's newest ``ee_pose``), float32 numpy."""
    actions = np.asarray(actions, np.float32)
    if cfg.action_frame == "absolute":
        return actions
    return to_relative(actions, np.asarray(batch[keys.EE_POSE])[:, -1])  # pose (B, P): the newest frame


def from_network_frame(actions: Any, batch: Mapping[str, Any], cfg: PolicyConfig) -> np.ndarray:
    """Robot-unit actions (B, T, A) in the network's frame -> absolute, float32 numpy (inverse of
    ``to_network_frame``): what leaves the policy."""
    actions = np.asarray(actions, np.float32)
    if cfg.action_frame == "absolute":
        return actions
    return to_absolute(actions, np.asarray(batch[keys.EE_POSE])[:, -1])


def model_inputs(batch: Mapping[str, Any], cfg: PolicyConfig, normalizer: Normalizer,
                 convert: Callable[..., Any] = _as_numpy) -> dict[str, Any]:
    """Robot-unit batch (B, To, ...) -> what the network takes: images stay uint8, the rest normalized.

    ``action`` (B, Tp, A) is normalized too when present; the action history uses the action statistics. Both are
    put into the network's frame first (``to_network_frame``; numpy, on CPU arrays or tensors). ``convert(x,
    dtype)`` makes the array type (dtype None: keep; float32 for everything normalized): numpy by default, torch
    tensors on a device in ``policy.model.to_model_inputs``.
    """
    out: dict[str, Any] = {}
    for k in cfg.image_keys:
        out[k] = convert(batch[k], None)
    for k in cfg.lowdim_dims:
        out[k] = normalizer.normalize(k, convert(batch[k], np.float32))
    for k in (keys.ACTION_HISTORY, keys.ACTION):
        if k in batch and (k == keys.ACTION or cfg.use_action_history):
            a = batch[k] if cfg.action_frame == "absolute" else to_network_frame(batch[k], batch, cfg)
            out[k] = normalizer.normalize(keys.ACTION, convert(a, np.float32))
    return out


def check_normalizer(normalizer: Normalizer, cfg: PolicyConfig, source: str,
                     error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``source`` (the normalizer file) unless it has statistics of the config's shape for
    every low-dim key and the action."""
    needed = [*cfg.lowdim_dims, keys.ACTION]
    absent = [k for k in needed if k not in normalizer.stats]
    if absent:
        raise error(f"{source} has no statistics for {absent}")
    for k in needed:
        dim = cfg.action_dim if k == keys.ACTION else cfg.lowdim_dims[k]
        found = normalizer.stats[k]["min"].shape
        if found != (dim,):
            raise error(f"{source}: {k} statistics have shape {found}, the config says ({dim},)")
