"""What a training run saves besides the weights: the optimizer's state as it is, the dataset's fingerprint
and control rate, and the named seeds of validation. Never pickles: tensors go to safetensors, the rest to JSON.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from policy import keys
from policy.data import ReplayBuffer

# Validation draws its randomness from streams of its own, apart from training's (batch_ids: [seed, epoch];
# shard_seed: seed * 1_000_003 + step + shard * 2**40), so that validating never shifts a training sample:
VAL_ORDER_STREAM = 7  # np.random.default_rng([seed, 7]): the order of the validation windows
VAL_LOSS_SEED_OFFSET = 12345  # seed + 12345 + i: crops and noise of validation-loss batch i
VAL_SAMPLE_SEED_OFFSET = 54321  # seed + 54321: the noise of the chunks sampled for the action MSE

OPTIM_PREFIX = "optim."  # train_state.safetensors keys of the optimizer's tensors: optim.<param index>.<name>


def dataset_fingerprint(rb: ReplayBuffer, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Path, sizes, a hash of the episode ends and actions, and the per-frame shapes of ``arrays``."""
    h = hashlib.sha256(np.asarray(rb.episode_ends, np.int64).tobytes())
    h.update(np.ascontiguousarray(arrays[keys.ACTION]).tobytes())
    return {"path": str(rb.path.resolve()), "n_episodes": rb.n_episodes, "n_steps": rb.n_steps,
            "episode_ends_actions_sha256": h.hexdigest(),
            "shapes": {k: list(v.shape[1:]) for k, v in arrays.items()}}


def control_rate_hz(timestamps: np.ndarray, episode_ends: np.ndarray) -> float | None:
    """Control rate (Hz) of a dataset: 1 / the median step (s) within episodes of ``timestamps`` (N,).

    None when no episode has two finite, increasing timestamps (no usable clock in the data).
    """
    ts = np.asarray(timestamps, np.float64).reshape(len(timestamps), -1)[:, 0]  # (N,)
    ends = np.asarray(episode_ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    steps = [np.diff(ts[s:e]) for s, e in zip(starts, ends) if e - s >= 2]
    dt = np.concatenate(steps) if steps else np.zeros(0)
    dt = dt[np.isfinite(dt) & (dt > 0)]
    if dt.size == 0:
        return None
    return round(float(1.0 / np.median(dt)), 3)


def dataset_control_hz(rb: ReplayBuffer) -> float | None:
    """``control_rate_hz`` of the dataset's ``timestamp`` key; None without one."""
    if keys.TIMESTAMP not in rb.keys:
        return None
    return control_rate_hz(rb.load([keys.TIMESTAMP])[keys.TIMESTAMP], rb.episode_ends)


def optimizer_state(optim: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optim.state_dict()`` flattened -> (tensors for safetensors, the rest for JSON).

    Each tensor of ``state[i]`` becomes ``optim.<i>.<name>`` and, in the JSON, ``{"tensor": "optim.<i>.<name>"}``;
    ``param_groups`` go to the JSON as they are.
    """
    sd = optim.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for i, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                key = f"{OPTIM_PREFIX}{i}.{name}"
                tensors[key] = v
                entry[name] = {"tensor": key}
            else:
                entry[name] = v
        state[str(i)] = entry
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def restore_optimizer(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """Load what ``optimizer_state`` wrote with ``optim.load_state_dict``; ValueError naming what is missing."""
    state: dict[int, dict[str, Any]] = {}
    for i, entry in saved["state"].items():
        st = {}
        for name, v in entry.items():
            if isinstance(v, dict) and "tensor" in v:
                if v["tensor"] not in tensors:
                    raise ValueError(f"train_state.safetensors lacks the optimizer tensor {v['tensor']}")
                st[name] = tensors[v["tensor"]]
            else:
                st[name] = v
        state[int(i)] = st
    optim.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def legacy_optimizer_state(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           optim_step: int) -> dict[str, Any]:
    """The JSON half of ``optimizer_state`` for a checkpoint of the first format (AdamW moments by parameter
    index, ``optim.<i>.exp_avg`` / ``exp_avg_sq``, and one step count), so that such runs still resume."""
    n = sum(len(g["params"]) for g in optim.param_groups)
    state = {}
    for i in range(n):
        names = [f"{OPTIM_PREFIX}{i}.exp_avg", f"{OPTIM_PREFIX}{i}.exp_avg_sq"]
        if any(k not in tensors for k in names):
            raise ValueError(f"train_state.safetensors lacks the AdamW moments of parameter {i}")
        tensors[f"{OPTIM_PREFIX}{i}.step"] = torch.tensor(float(optim_step), dtype=torch.float32)
        state[str(i)] = {name: {"tensor": f"{OPTIM_PREFIX}{i}.{name}"} for name in ("step", "exp_avg", "exp_avg_sq")}
    return {"state": state, "param_groups": optim.state_dict()["param_groups"]}
