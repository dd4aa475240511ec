"""Checkpoint folders: resolved config, EMA weights, normalizer, meta; never unpickles.

Layout of a checkpoint folder::

    config.yaml              resolved training config (policy + train)
    model.safetensors        EMA weights of DiffusionPolicyModel (what inference uses)
    normalizer.json          min/max statistics fitted on the training set
    meta.json                format version, step, library versions, dataset fingerprint, shapes, and
                             ``control_hz``: the demos' control rate (Hz, from their timestamps; null: unknown)
    train_state.safetensors  (resume only) raw weights ``model.*`` and the optimizer's tensors ``optim.<i>.<name>``
    train_state.json         (resume only) step, training time and the optimizer's ``state_dict()`` without
                             its tensors (``policy.train_state``)

A folder is replaced by one swap (``policy.atomic.swap_in``); loading takes ``<name>.old`` when a kill
between the swap's two renames left no ``<name>``. The encoder's ``pretrained_path`` is never read on load.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from policy.atomic import old_path, swap_in
from policy.config import Config
from policy.config_utils import ConfigError, from_dict, to_dict
from policy.normalizer import Normalizer
from policy.window import check_normalizer

FORMAT_VERSION = 1
REQUIRED_FILES = ("config.yaml", "model.safetensors", "normalizer.json", "meta.json")


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not fit the model/config."""


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint folder or a training run folder (then ``checkpoints/latest``)."""
    p = Path(path)
    # <name>.old stands in for a folder whose swap (policy.atomic.swap_in) was killed between its two renames
    for cand in (p, p / "checkpoints" / "latest"):
        for c in (cand, old_path(cand)):
            if (c / "model.safetensors").is_file():
                return c
    raise CheckpointError(f"{p} is not a checkpoint folder (no model.safetensors there or in "
                          f"{p / 'checkpoints' / 'latest'}; an exported policy has policy.onnx)")


def _state_to_cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it cannot be read."""
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types (truncated, not a file, ...)
        raise CheckpointError(f"{path}: cannot read the safetensors file ({e})") from e


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` exactly; any missing, extra or mis-shaped tensor is named."""
    own = module.state_dict()
    problems = [f"missing tensor {k} (model shape {tuple(v.shape)})" for k, v in own.items() if k not in state]
    problems += [f"unexpected tensor {k} (checkpoint shape {tuple(v.shape)})" for k, v in state.items()
                 if k not in own]
    problems += [f"tensor {k}: checkpoint shape {tuple(state[k].shape)}, model shape {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{source} does not fit the model built from the config: {shown}")
    module.load_state_dict(state, strict=True)


def library_versions() -> dict[str, str]:
    import numpy
    import zarr

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "zarr": zarr.__version__}


def save_checkpoint(path: str | Path, cfg: Config, ema_model: nn.Module, normalizer: Normalizer,
                    meta: Mapping[str, Any], train_state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically: into ``<path>.tmp``, then swap it in place of ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    save_file(_state_to_cpu(ema_model.state_dict()), str(tmp / "model.safetensors"))
    normalizer.save(tmp / "normalizer.json")
    full_meta = {"format_version": FORMAT_VERSION, "created_unix": time.time(), "versions": library_versions(),
                 **meta}
    (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1))
    if train_state is not None:
        save_file(_state_to_cpu(train_state["tensors"]), str(tmp / "train_state.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps(train_state["json"], indent=1))
    return swap_in(tmp, path)


def load_config(path: str | Path) -> Config:
    path = resolve_checkpoint_dir(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        return from_dict(Config, yaml.safe_load((path / "config.yaml").read_text()) or {})
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path / 'config.yaml'}: {e}") from e


def load_spec(path: str | Path):
    """The ``PolicySpec`` of a checkpoint, from its config and meta.json alone (no weights are loaded)."""
    from policy.window import policy_spec

    path = resolve_checkpoint_dir(path)
    return policy_spec(load_config(path).policy, read_control_hz(path))


def read_control_hz(path: Path) -> float | None:
    """The control rate (Hz) that meta.json records (``control_hz``); None when absent (older checkpoints)."""
    try:
        hz = json.loads((path / "meta.json").read_text()).get("control_hz")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path / 'meta.json'} cannot be read ({e})") from e
    return None if hz is None else float(hz)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"):
    """-> (config, model with EMA weights in eval mode, normalizer, meta). Never unpickles."""
    from policy.model import DiffusionPolicyModel

    path = resolve_checkpoint_dir(path)
    cfg = load_config(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format_version {meta.get('format_version')!r}, "
                              f"this code reads {FORMAT_VERSION}")
    model = DiffusionPolicyModel(cfg.policy, load_pretrained=False)  # the weights come from model.safetensors
    load_state_checked(model, _read_tensors(path / "model.safetensors"), str(path / "model.safetensors"))
    normalizer = Normalizer.load(path / "normalizer.json")
    check_normalizer(normalizer, cfg.policy, f"checkpoint {path / 'normalizer.json'}", CheckpointError)
    return cfg, model.to(device).eval(), normalizer, meta


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors_file, json_file = path / "train_state.safetensors", path / "train_state.json"
    if not (tensors_file.is_file() and json_file.is_file()):
        raise CheckpointError(f"checkpoint {path} has no training state to resume from "
                              f"(train_state.safetensors / train_state.json)")
    return _read_tensors(tensors_file), json.loads(json_file.read_text())
