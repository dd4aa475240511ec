"""Export a checkpoint for torch-free deployment: ``python -m policy.export checkpoint=<dir> out=<dir>``.

Writes into ``out``::

    policy.onnx       the observation encoder and the whole sampler, unrolled for its steps (opset 17):
                      inputs the observation window in network units (``policy.window.model_inputs``: images
                      (1, To, H, W, 3) uint8, the rest (1, To, D) float32 normalized) in ``obs_keys`` order,
                      then ``noise`` (1, Tp, A) float32, the initial sample; output ``actions`` (1, Tp, A)
                      float32, normalized (batch 1: ``OnnxPolicy.predict_chunks`` runs a batch row by row)
    export.json       what was exported: objective, sampler, steps, action frame, the graph's inputs, the source
                      checkpoint
    normalizer.json, config.yaml, meta.json   copies of the checkpoint's

``policy.onnx_policy.OnnxPolicy`` serves it with onnxruntime, without torch. Only deterministic samplers can be
unrolled with the noise as an input: ``euler`` (flow) and ``ddim``; a ``ddpm`` checkpoint is exported with
``sampler=ddim``. Why the whole sampler and not the network alone with the sampler in numpy: one
``session.run`` per chunk, the sampler's arithmetic stays the torch code (no second copy to keep equal), and it
measured as fast (README, "Deploying without torch"; ``tests/benchmarks/bench_predict_chunk.py``).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
except ImportError as e:  # the torch-free install (deploy extra) serves exported policies only
    raise ImportError('exporting a checkpoint (python -m policy.export) needs torch: '
                      'pip install "visuomotor-dp[train]"') from e
from torch import nn

from policy import keys as keys_
from policy.checkpoint import load_checkpoint, resolve_checkpoint_dir
from policy.config import SAMPLERS
from policy.config_utils import need
from policy.model import DiffusionPolicyModel, to_model_inputs
from policy.onnx_policy import (
    EXPORT_FILES,
    EXPORT_FORMAT,
    NOISE_INPUT,
    ONNX_FILE,
    OUTPUT,
    UNROLLABLE_SAMPLERS,
)
from policy.window import from_network_frame, obs_keys, window_steps

OPSET = 17  # onnxruntime >= 1.14 runs it; GroupNormalization (opset 18) is not needed


@dataclass
class ExportConfig:
    checkpoint: str = ""  # checkpoint folder, or a training run folder (its latest checkpoint)
    out: str = ""  # folder to write; created, and refused when it holds anything but a previous export
    num_inference_steps: int | None = None  # None: the checkpoint's
    sampler: str | None = None  # None: the checkpoint's (ddpm checkpoints: ddim)
    check: bool = True  # run the exported graph once with onnxruntime and compare to torch (needs onnxruntime)

    def __post_init__(self) -> None:
        need(bool(self.checkpoint), "checkpoint is empty: pass checkpoint=<checkpoint or training run folder>")
        need(bool(self.out), "out is empty: pass out=<folder for the exported policy>")
        need(self.num_inference_steps is None or self.num_inference_steps >= 1,
             f"num_inference_steps must be >= 1 (or null), got {self.num_inference_steps}")


class SamplerGraph(nn.Module):
    """Encoder + sampler with the initial noise as an input: (obs tensors in ``keys`` order, noise) -> actions."""

    def __init__(self, model: DiffusionPolicyModel, keys: tuple[str, ...], steps: int, sampler: str):
        super().__init__()
        self.model, self.keys, self.steps, self.sampler = model, keys, steps, sampler

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *obs, noise = inputs
        cfg = self.model.cfg
        cond = self.model.condition(dict(zip(self.keys, obs)))  # (B, FiLM)
        shape = (cfg.chunk_len, cfg.action_dim)
        return self.model.objective.sample(self.model.net, cond, shape, self.steps, self.sampler, noise=noise)


def _sampler_and_steps(cfg: Any, sampler: str | None, steps: int | None) -> tuple[str, int]:
    o = cfg.objective
    chosen = sampler or ("ddim" if o.sampler == "ddpm" else o.sampler)
    if chosen not in SAMPLERS[o.name]:
        raise ValueError(f"sampler {chosen!r} does not fit objective {o.name!r}; use one of {SAMPLERS[o.name]}")
    if chosen not in UNROLLABLE_SAMPLERS:
        raise ValueError(f"sampler {chosen!r} draws fresh noise at every step and cannot be exported; export with "
                         f"one of {UNROLLABLE_SAMPLERS} (sampler=ddim for a ddpm checkpoint)")
    n = o.num_inference_steps if steps is None else steps
    limit = o.num_train_timesteps if o.name == "ddpm" else 1000
    if not 1 <= n <= limit:
        raise ValueError(f"num_inference_steps must be in [1, {limit}] for objective {o.name!r}, got {n}")
    return chosen, n


def example_inputs(cfg: Any, normalizer: Any, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A random window in robot units (B, To, ...) for every key of ``cfg``, low-dim values inside the
    normalizer's range (what the policy sees), for tracing and the check."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for k in obs_keys(cfg):
        if k in cfg.image_keys:
            out[k] = rng.integers(0, 256, (batch, cfg.n_obs_steps, *cfg.image_shape, 3), dtype=np.uint8)
        else:
            s = normalizer.stats[k if k in cfg.lowdim_dims else keys_.ACTION]
            u = rng.uniform(0, 1, (batch, window_steps(cfg, k), len(s["min"])))
            out[k] = (s["min"] + u * (s["max"] - s["min"])).astype(np.float32)
    if keys_.ACTION_HISTORY in out:  # the statistics are in the network's frame, a window holds absolute actions
        out[keys_.ACTION_HISTORY] = from_network_frame(out[keys_.ACTION_HISTORY], out, cfg)
    return out


def _prepare_out(out: Path) -> None:
    """Create ``out``, or reuse it when it is empty or holds only a previous export's files."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out={out} exists and is not a folder")
        other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
        if other:
            raise ValueError(f"out={out} holds files that an export does not write ({', '.join(other[:5])}); "
                             "pick an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)


def export_policy(cfg: ExportConfig) -> Path:
    """Write ``policy.onnx`` and its companions to ``cfg.out``; returns that folder."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise ImportError("exporting needs the onnx package: pip install -e \".[export]\" (or pip install onnx)")
    src = resolve_checkpoint_dir(cfg.checkpoint)
    full, model, normalizer, _ = load_checkpoint(src, "cpu")
    pcfg = full.policy
    sampler, steps = _sampler_and_steps(pcfg, cfg.sampler, cfg.num_inference_steps)
    keys = obs_keys(pcfg)
    out = Path(cfg.out)
    _prepare_out(out)
    # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, recursively (a fresh module's
    # training mode would switch the encoder to random crops)
    graph = SamplerGraph(model, keys, steps, sampler).eval()
    window = to_model_inputs(example_inputs(pcfg, normalizer), pcfg, normalizer, torch.device("cpu"))
    noise = torch.randn(1, pcfg.chunk_len, pcfg.action_dim)
    args = (*(window[k] for k in keys), noise)
    names = [*keys, NOISE_INPUT]
    tmp = out / (ONNX_FILE + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # known and harmless here: the tracer fixes the crop test and the DDIM schedule as constants (both are
        # fixed by the config), and torch >= 2.9 calls this TorchScript-based exporter legacy
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # batch 1, no dynamic axis: measured 0.5 ms (10 %) faster per chunk than a dynamic batch (its Shape ops)
        torch.onnx.export(graph, args, str(tmp), input_names=names, output_names=[OUTPUT], opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    tmp.replace(out / ONNX_FILE)
    for name in ("normalizer.json", "config.yaml", "meta.json"):
        shutil.copyfile(src / name, out / name)
    info = {"format": EXPORT_FORMAT, "objective": pcfg.objective.name, "sampler": sampler,
            "action_frame": pcfg.action_frame,  # informative: OnnxPolicy reads it from config.yaml
            "num_inference_steps": steps, "inputs": names, "output": OUTPUT, "opset": OPSET,
            "source_checkpoint": str(src.resolve()), "torch": torch.__version__, "export": asdict(cfg)}
    (out / "export.json").write_text(json.dumps(info, indent=1))
    if cfg.check:
        diff = check_export(out, model, normalizer)
        print(f"check: onnxruntime and torch chunks differ by at most {diff:.2e} (normalized units)")
    return out


def check_export(out: Path, model: DiffusionPolicyModel, normalizer: Any, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over a random window and noise (normalized units); raises above 1e-4."""
    from policy.onnx_policy import OnnxPolicy

    policy = OnnxPolicy(out)
    window = example_inputs(policy.cfg, normalizer, batch=2, seed=seed)
    noise = np.random.default_rng(seed).standard_normal((2, policy.chunk_len, policy.action_dim)).astype(np.float32)
    got = policy.sample_normalized(window, noise)
    inputs = to_model_inputs(window, policy.cfg, normalizer, torch.device("cpu"))
    want = model.eval().sample(inputs, steps=policy.num_inference_steps, sampler=policy.sampler,
                        noise=torch.from_numpy(noise)).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff <= 1e-4:
        raise RuntimeError(f"{out / ONNX_FILE}: onnxruntime's chunk differs from torch's by {diff:.2e} "
                           "(normalized units, tolerance 1e-4)")
    return diff


def main() -> None:
    import sys

    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="export",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        try:
            out = export_policy(from_dict(ExportConfig, OmegaConf.to_container(dcfg, resolve=True)))
        except (ValueError, RuntimeError, ImportError) as e:
            sys.exit(f"export failed: {type(e).__name__}: {e}")
        print(f"exported to {out}: serve it with python -m runtime.run checkpoint={out}")

    _main()


if __name__ == "__main__":
    main()
