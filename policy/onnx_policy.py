"""An exported policy (``python -m policy.export``) served by onnxruntime behind ``ChunkPolicy``, without torch.

Importing this module, and everything ``OnnxPolicy`` needs (config, normalizer, window checks: numpy), never
imports torch: a robot computer runs it with onnxruntime and numpy (README: "Deploying without torch").
The graph unrolls the sampler for the steps it was exported with (``export.json``); the initial noise is an
input, so ``predict_chunk(window, seed=s)`` is repeatable, and ``noise=`` gives the exact chunk torch computes
from the same noise. It cannot continue a committed prefix (``controller.execution=rtc`` or ``bid``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from policy import keys
from policy.config import Config
from policy.config_utils import from_dict
from policy.normalizer import Normalizer
from policy.protocol import PolicySpec
from policy.window import (
    check_normalizer,
    check_window,
    from_network_frame,
    model_inputs,
    obs_keys,
    policy_spec,
    window_steps,
)

ONNX_FILE = "policy.onnx"
EXPORT_FORMAT = 1
NOISE_INPUT = "noise"  # the graph's last input: the initial sample (1, Tp, A) float32
OUTPUT = "actions"  # its output: (1, Tp, A) float32, normalized
UNROLLABLE_SAMPLERS = ("euler", "ddim")  # deterministic given the initial noise
REQUIRED_FILES = (ONNX_FILE, "export.json", "normalizer.json", "config.yaml", "meta.json")
EXPORT_FILES = (*REQUIRED_FILES, ONNX_FILE + ".tmp")
DEVICES = ("auto", "cpu", "cuda")


class ExportError(ValueError):
    """An exported policy folder is incomplete or does not fit itself."""


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is meant as an exported policy (it holds ``policy.onnx`` or ``export.json``)."""
    p = Path(path)
    return (p / ONNX_FILE).is_file() or (p / "export.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"exported policy file {path} cannot be read ({e})") from e


def load_exported(path: str | Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """-> (the ``policy.config.Config``, meta.json, export.json) of an exported folder; ``ExportError`` naming a
    missing or unreadable file."""
    p = Path(path)
    if not p.is_dir():
        raise ExportError(f"exported policy {p} is not a folder")
    missing = [f for f in REQUIRED_FILES if not (p / f).is_file()]
    if missing:
        raise ExportError(f"exported policy {p} is missing {', '.join(missing)} (python -m policy.export "
                          "checkpoint=<dir> out=<dir> writes them)")
    try:
        cfg = from_dict(Config, yaml.safe_load((p / "config.yaml").read_text()) or {})
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ExportError(f"exported policy file {p / 'config.yaml'}: {e}") from e
    info = _read_json(p / "export.json")
    if info.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{p / 'export.json'}: format {info.get('format')!r}, this code reads {EXPORT_FORMAT}")
    return cfg, _read_json(p / "meta.json"), info


def exported_spec(path: str | Path) -> PolicySpec:
    """The ``PolicySpec`` of an exported folder, from its files alone (no session is built)."""
    cfg, meta, _ = load_exported(path)
    hz = meta.get("control_hz")
    return policy_spec(cfg.policy, None if hz is None else float(hz))


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device not in DEVICES:
        raise ValueError(f"device for an exported policy must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ValueError(f"device=cuda: this onnxruntime has no CUDAExecutionProvider (it has {available}); "
                         "install onnxruntime-gpu or use device=cpu")
    if device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPolicy:
    """Observation window (robot units) -> action chunk (robot units), from an exported folder; stateless
    between calls but for ``rng``, the generator of the initial noise when no ``seed`` is given (as torch's
    global generator is for ``Policy``; ``sim.evaluate`` reseeds it per episode)."""

    no_prefix_reason = ("an exported (ONNX) policy cannot continue a prefix: its graph holds only the plain sampler "
                        "(rtc's guidance needs gradients through the network, bid scores a batch against the "
                        "prefix); run the torch checkpoint for rtc or bid")

    def __init__(self, path: str | Path, device: str = "cpu", num_threads: int = 1,
                 num_inference_steps: int | None = None, sampler: str | None = None):
        """``num_threads``: onnxruntime's intra-op threads (0: its default). ``num_inference_steps`` and
        ``sampler`` can only repeat what the graph was exported with (re-export for others)."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("serving an exported policy needs onnxruntime: pip install "
                              "\"visuomotor-dp[deploy]\" (or pip install onnxruntime)") from e
        self.path = Path(path)
        full, meta, info = load_exported(self.path)
        self.cfg = full.policy
        self.sampler, self.num_inference_steps = str(info.get("sampler")), int(info.get("num_inference_steps", 0))
        for name, asked, have in (("num_inference_steps", num_inference_steps, self.num_inference_steps),
                                  ("sampler", sampler, self.sampler)):
            if asked is not None and asked != have:
                raise ValueError(f"{name}={asked}: the exported policy {self.path} was unrolled with {name}="
                                 f"{have}; export again with python -m policy.export ... {name}={asked}")
        try:
            self.normalizer = Normalizer.load(self.path / "normalizer.json")
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f"exported policy file {self.path / 'normalizer.json'}: {e}") from e
        check_normalizer(self.normalizer, self.cfg, f"exported policy file {self.path / 'normalizer.json'}",
                         ExportError)
        hz = meta.get("control_hz")
        self.control_hz = None if hz is None else float(hz)
        self.action_space = self.cfg.action_space_spec()
        c = self.cfg
        self.n_obs_steps, self.chunk_len, self.action_dim = c.n_obs_steps, c.chunk_len, c.action_dim
        self.history_steps = c.history_steps or None  # None: no action history
        self.obs_keys = obs_keys(self.cfg)
        self.rng = np.random.default_rng()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, int(num_threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(self.path / ONNX_FILE), opts, providers=_providers(device))
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a corrupt or foreign file
            raise ExportError(f"exported policy file {self.path / ONNX_FILE} cannot be loaded ({e})") from e
        found = {i.name: list(i.shape) for i in self.session.get_inputs()}
        want = {k: [1, window_steps(c, k), *((*c.image_shape, 3) if k in c.image_keys else
                                              (c.lowdim_dims.get(k, c.action_dim),))] for k in self.obs_keys}
        want[NOISE_INPUT] = [1, c.chunk_len, c.action_dim]
        if found != want:
            raise ExportError(f"{self.path / ONNX_FILE} takes inputs {found}, its config.yaml needs {want}: the "
                              "files come from different checkpoints; export again")

    def sample_normalized(self, batch: Mapping[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
        """Robot-unit window batch (B, To, ...) and initial noise (B, Tp, A) -> actions (B, Tp, A) normalized, in the
        network's frame (``policy.action_frame``: relative ones are mapped back to absolute by ``predict_chunks``)."""
        inputs = model_inputs({k: batch[k] for k in self.obs_keys}, self.cfg, self.normalizer)
        noise = np.asarray(noise, np.float32)
        rows = []
        for i in range(len(noise)):  # the graph takes batch 1 (policy.export)
            feed = {k: np.ascontiguousarray(inputs[k][i:i + 1]) for k in self.obs_keys}
            feed[NOISE_INPUT] = np.ascontiguousarray(noise[i:i + 1])
            rows.append(self.session.run([OUTPUT], feed)[0])  # (1, Tp, A)
        return np.concatenate(rows)

    def predict_chunks(self, obs_batch: Mapping[str, np.ndarray], rng: np.random.Generator | None = None,
                       noise: np.ndarray | None = None) -> np.ndarray:
        """Batch of windows, each key (B, To, ...) -> chunks (B, Tp, A) float32 in robot units. ``noise``
        (B, Tp, A): the initial sample (None: standard normal from ``rng``, else from ``self.rng``)."""
        check_window(obs_batch, self.cfg, batched=True)
        b = np.asarray(obs_batch[self.obs_keys[0]]).shape[0]
        shape = (b, self.chunk_len, self.action_dim)
        if noise is None:
            noise = (rng or self.rng).standard_normal(shape, dtype=np.float32)
        elif np.shape(noise) != shape or not np.all(np.isfinite(noise)):
            raise ValueError(f"noise must be a finite {shape} array, got shape {np.shape(noise)}")
        actions = self.sample_normalized(obs_batch, noise)  # (B, Tp, A) normalized, in the network's frame
        return from_network_frame(self.normalizer.unnormalize(keys.ACTION, actions), obs_batch, self.cfg)

    def predict_chunk(self, obs_window: Mapping[str, np.ndarray], seed: int | None = None,
                      noise: np.ndarray | None = None) -> np.ndarray:
        """One window, each key (To, ...) -> chunk (Tp, A) float32 in robot units; ``chunk[i]`` is the target
        for ``t_obs + i * dt``. ``seed`` makes the sample repeatable; ``noise`` (Tp, A) gives the initial sample."""
        check_window(obs_window, self.cfg, batched=False)
        batch = {k: np.asarray(obs_window[k])[None] for k in self.obs_keys}  # (1, To, ...)
        rng = None if seed is None else np.random.default_rng(seed)
        return self.predict_chunks(batch, rng, None if noise is None else np.asarray(noise)[None])[0]
