"""Load whatever a ``checkpoint=`` argument names, behind ``ChunkPolicy``: an exported folder (``policy.onnx``,
``python -m policy.export``) is served by onnxruntime and never imports torch; anything else is a torch checkpoint
or training run folder (``policy.policy.Policy``). ``runtime.run``, its inference process and ``sim.evaluate``
load through here.
"""

from __future__ import annotations

from pathlib import Path

from policy.onnx_policy import is_exported
from policy.protocol import ChunkPolicy, PolicySpec


def require_torch(what: str) -> None:
    """Raise ImportError naming the extra when torch is not installed (the torch-free ``deploy`` install)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("torch") is not None
    except ImportError:  # an import hook that refuses it
        found = False
    if not found:
        raise ImportError(f"{what} needs torch, which is not installed (the torch-free install serves only "
                          f"exported policies: python -m policy.export). Install it with: "
                          f"pip install \"visuomotor-dp[train]\"")


def load_policy(path: str | Path, device: str = "cpu", num_threads: int = 0, num_inference_steps: int | None = None,
                sampler: str | None = None) -> ChunkPolicy:
    """The policy in ``path``; ``num_threads``: torch's (or onnxruntime's) CPU threads, 0 leaves the default."""
    if is_exported(path):
        from policy.onnx_policy import OnnxPolicy

        return OnnxPolicy(path, device, num_threads, num_inference_steps, sampler)
    require_torch(f"the torch checkpoint {path} (no policy.onnx there)")
    import torch

    from policy.policy import Policy

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return Policy.from_pretrained(path, device, num_inference_steps, sampler)


def load_spec(path: str | Path) -> PolicySpec:
    """The ``PolicySpec`` of ``path`` from its config and meta.json alone (no weights, no session)."""
    if is_exported(path):
        from policy.onnx_policy import exported_spec

        return exported_spec(path)
    from policy.checkpoint import load_spec as checkpoint_spec

    return checkpoint_spec(path)


def policy_dir(path: str | Path) -> Path:
    """The folder that holds the policy's files (config.yaml, meta.json): ``path`` itself for an exported policy,
    the resolved checkpoint folder otherwise (a run folder's ``checkpoints/latest``)."""
    if is_exported(path):
        return Path(path)
    from policy.checkpoint import resolve_checkpoint_dir

    return resolve_checkpoint_dir(path)


def load_config(path: str | Path):
    """The training ``policy.config.Config`` of ``path`` (exported or checkpoint), without loading weights."""
    if is_exported(path):
        from policy.onnx_policy import load_exported

        return load_exported(path)[0]
    from policy.checkpoint import load_config as checkpoint_config

    return checkpoint_config(path)
