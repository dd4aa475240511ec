"""Latency of ``Policy.predict_chunk`` on the CPU for the default config and each sampler.

    python tests/benchmarks/bench_predict_chunk.py [--quick] [--out FILE.json] [--threads N]

One observation window (two 96x96 cameras, the default config's To and chunk length, batch 1)
taken from a synthetic episode; untrained weights (latency does not depend on them). Each
variant gets 10 warm-up calls, then ``--calls`` timed calls (time.perf_counter around
``predict_chunk`` only). The encoder alone and one U-Net step are timed too, to show where the
time goes. The default config also runs each way of continuing a committed prefix (issue 13): ``rtc``
(guided sampling, one backward pass per step; d = 3 of a P = 8 prefix) and ``bid`` (16 samples as one
batch), against the 10 Hz loop's 100 ms and the target "default strategy's p50 <= 40 ms on 1 thread".
Figures go to tests/benchmarks/results/predict_chunk.json (see DESIGN.md, style 10).

The exported policy (``policy.export``, served by onnxruntime: ``OnnxPolicy``) is timed next to torch's
``predict_chunk`` on the same weights and window, interleaved call by call, with 1 and 2 threads for both;
and, for the design choice, against the network exported alone (encoder graph + one U-Net step graph) with the
Euler loop in numpy. ``--onnx-only`` runs just that part (to results/predict_chunk_onnx.json).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    DEFAULT_POLICY_YAML,
    finish,
    latency_stats_ms,
    load_default_policy_dict,
    machine_info,
    parse_args,
    print_table,
)

from policy import keys
from policy.config import PolicyConfig
from policy.config_utils import from_dict
from policy.data import ReplayBuffer, WindowSampler
from policy.data.synthetic import make_synthetic_dataset
from policy.model import DiffusionPolicyModel, obs_keys, to_model_inputs
from policy.normalizer import Normalizer
from policy.policy import Policy
from policy.protocol import ChunkPrefix

TARGET_DEFAULT_MS = 20.0  # the target for the default config's median predict_chunk latency
WARMUP_CALLS = 10
LOOP_BUDGET_MS = 100.0  # one tick of the 10 Hz control loop
TARGET_STRATEGY_MS = 40.0  # the target: the default strategy's chunk p50 on 1 thread
PREFIX_LEN, PREFIX_DELAY, BID_SAMPLES = 8, 3, 16
# name -> objective overrides applied to the default config
SAMPLERS: dict[str, dict[str, Any]] = {
    "ddim10": {"name": "ddpm", "sampler": "ddim", "num_inference_steps": 10},
    "ddim4": {"name": "ddpm", "sampler": "ddim", "num_inference_steps": 4},
    "flow10": {"name": "flow", "sampler": "euler", "num_inference_steps": 10},
    "flow4": {"name": "flow", "sampler": "euler", "num_inference_steps": 4},
    "ddpm100": {"name": "ddpm", "sampler": "ddpm", "num_inference_steps": 100},
}


def sampler_name(cfg: PolicyConfig) -> str:
    """Short name of a config's sampler and step count, as in SAMPLERS: flow4, ddim10, ddpm100."""
    o = cfg.objective
    return f"{'flow' if o.name == 'flow' else o.sampler}{o.num_inference_steps}"


def with_objective(base: dict[str, Any], **objective: Any) -> PolicyConfig:
    data = copy.deepcopy(base)
    data["objective"] = {**data.get("objective", {}), **objective}
    return from_dict(PolicyConfig, data)


def observation_window(cfg: PolicyConfig, tmp: Path) -> tuple[dict[str, np.ndarray], Normalizer]:
    """A window from the middle of a synthetic episode (robot units), and a normalizer fitted on the data."""
    make_synthetic_dataset(tmp / "demos.zarr", n_episodes=4, episode_len=40, image_shape=cfg.image_shape)
    rb = ReplayBuffer.open(tmp / "demos.zarr", "r")
    arrays = rb.load()
    normalizer = Normalizer.fit({k: arrays[k] for k in [*cfg.lowdim_dims, keys.ACTION]})
    hist = cfg.n_obs_steps if cfg.use_action_history else 0
    sampler = WindowSampler(rb.episode_ends, [0], cfg.n_obs_steps, cfg.chunk_len, hist)
    data_keys = [k for k in obs_keys(cfg) if k != keys.ACTION_HISTORY]
    batch = sampler.gather(arrays, np.array([20]), data_keys)  # each (1, To, ...)
    window = {k: np.ascontiguousarray(batch[k][0]) for k in obs_keys(cfg)}  # each (To, ...)
    return window, normalizer


def time_calls(fn: Callable[[], object], calls: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Seconds per call of ``fn`` over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], calls: int, warmup: int = WARMUP_CALLS,
                     rotate: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name]``, called in turn (one of each per round) ``calls`` rounds.
    ``rotate``: start each round one function later, so that none always runs right after the same other one
    (whose work leaves the caches cold for it)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    items = list(fns.items())
    for r in range(calls):
        shift = r % len(items) if rotate else 0
        for name, fn in items[shift:] + items[:shift]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def onnx_comparison(cfg: PolicyConfig, model: DiffusionPolicyModel, normalizer: Normalizer,
                    window: dict[str, np.ndarray], calls: int, tmp: Path,
                    ) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Torch against onnxruntime on the same weights (1 and 2 threads each), and the unrolled sampler against the
    network alone with the sampler in numpy (flow only). -> (table rows, flat results)."""
    import onnxruntime as ort

    from policy.checkpoint import save_checkpoint
    from policy.config import Config
    from policy.export import ExportConfig, check_export, export_policy
    from policy.onnx_policy import OnnxPolicy
    from policy.window import model_inputs

    model.eval()
    save_checkpoint(tmp / "ckpt", Config(policy=cfg), model, normalizer, {"control_hz": None})
    out = export_policy(ExportConfig(checkpoint=str(tmp / "ckpt"), out=str(tmp / "onnx"), check=False))
    check_export(out, model, normalizer)  # raises above 1e-4 (untrained weights saturate the clip: see the tests)
    results: dict[str, Any] = {"onnxruntime_version": ort.__version__,
                               "onnx_file_mb": (out / "policy.onnx").stat().st_size / 1e6}
    torch_policy = Policy(model, normalizer, cfg, device="cpu")
    # the network alone: the encoder (-> FiLM condition) and one U-Net step as two graphs, Euler in numpy
    keys_ = obs_keys(cfg)
    inputs = to_model_inputs({k: v[None] for k, v in window.items()}, cfg, normalizer, torch.device("cpu"))
    x = torch.randn(1, cfg.chunk_len, cfg.action_dim)
    with torch.no_grad():
        cond = model.condition(inputs)

    class Encoder(torch.nn.Module):
        def __init__(self, m: DiffusionPolicyModel):
            super().__init__()
            self.m = m

        def forward(self, *obs: torch.Tensor) -> torch.Tensor:
            return self.m.condition(dict(zip(keys_, obs)))

    torch.onnx.export(Encoder(model).eval(), tuple(inputs[k] for k in keys_), str(tmp / "encoder.onnx"),
                      input_names=list(keys_), output_names=["cond"], opset_version=17, dynamo=False)
    torch.onnx.export(model.net.eval(), (x, torch.full((1,), 50.0), cond), str(tmp / "step.onnx"),
                      input_names=["x", "t", "cond"], output_names=["v"], opset_version=17, dynamo=False)
    model.eval()  # the exporter restores each wrapper's mode recursively
    steps, scale = cfg.objective.num_inference_steps, float(cfg.objective.num_train_timesteps)
    rows: list[tuple[Any, ...]] = []
    for n in (1, 2):
        torch.set_num_threads(n)
        onnx_policy = OnnxPolicy(out, num_threads=n)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
        enc = ort.InferenceSession(str(tmp / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        step = ort.InferenceSession(str(tmp / "step.onnx"), opts, providers=["CPUExecutionProvider"])

        def numpy_sampler(enc=enc, step=step) -> np.ndarray:
            """The network-alone alternative: what OnnxPolicy.predict_chunk does, with the Euler loop in numpy."""
            batch = {k: v[None] for k, v in window.items()}  # (1, To, ...)
            feed = {k: np.ascontiguousarray(v) for k, v in model_inputs(batch, cfg, normalizer).items()}
            c = enc.run(None, feed)[0]  # (1, FiLM)
            xs = np.random.default_rng().standard_normal((1, cfg.chunk_len, cfg.action_dim), dtype=np.float32)
            for i in range(steps):
                t = np.full((1,), i / steps * scale, np.float32)
                xs = xs + (1.0 / steps) * step.run(None, {"x": xs, "t": t, "cond": c})[0]
            return normalizer.unnormalize(keys.ACTION, np.clip(xs, -1, 1))[0]

        fns: dict[str, Callable[[], object]] = {
            "torch": lambda: torch_policy.predict_chunk(window),
            "onnx": lambda p=onnx_policy: p.predict_chunk(window),
        }
        if cfg.objective.name == "flow":
            fns["onnx_network_numpy_sampler"] = numpy_sampler
        timed = time_interleaved(fns, calls, rotate=True)
        for name, t in timed.items():
            st = latency_stats_ms(t)
            label = {"torch": "torch Policy", "onnx": "onnxruntime, sampler unrolled in the graph (exported)",
                     "onnx_network_numpy_sampler": "onnxruntime, network alone + numpy Euler loop"}[name]
            rows.append((f"{label}, {n} thread{'s' if n > 1 else ''}", st["median"], st["p90"], st["p99"],
                         st["mean"], calls))
            for stat in ("median", "p90", "p99"):
                results[f"default_{name}_predict_chunk_ms_{stat}_{n}thread"] = st[stat]
    return rows, results


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--calls", type=int, default=100,
                       help="timed calls per sampler (default 100, at least 50; --quick: 10)")
        p.add_argument("--default-calls", type=int, default=300,
                       help="timed calls for the default config, for its p99 (default 300; --quick: 10)")
        p.add_argument("--onnx-only", action="store_true",
                       help="only torch against the exported policy (default out: results/predict_chunk_onnx.json)")

    args = parse_args(__file__, "predict_chunk latency per sampler on the CPU", extra)
    calls = 10 if args.quick else max(50, args.calls)
    default_calls = 10 if args.quick else max(50, args.default_calls)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load_start = os.getloadavg()[0]  # other work on the machine inflates every figure; recorded with them
    base = load_default_policy_dict()
    cfg = from_dict(PolicyConfig, base)
    with tempfile.TemporaryDirectory(prefix="bench_predict_chunk_") as tmp:
        window, normalizer = observation_window(cfg, Path(tmp))
    shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in window.items())
    print(f"observation window: {shapes}")
    if args.onnx_only:
        if args.out is not None and args.out.name == "predict_chunk.json":
            args.out = args.out.with_name("predict_chunk_onnx.json")
        with tempfile.TemporaryDirectory(prefix="bench_predict_chunk_onnx_") as tmp:
            rows, onnx_results = onnx_comparison(cfg, DiffusionPolicyModel(cfg), normalizer, window, default_calls,
                                                 Path(tmp))
        print_table(f"predict_chunk latency (ms), torch against the exported policy: {sampler_name(cfg)}, "
                    f"batch 1, cpu", ["variant", "median", "p90", "p99", "mean", "calls"], rows)
        finish({**onnx_results, "default_sampler": sampler_name(cfg), "timed_calls": default_calls,
                "load_average_1min_start": load_start, "load_average_1min_end": os.getloadavg()[0],
                **machine_info(args.threads, args.quick)}, args.out)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{WARMUP_CALLS} warm-up calls, then {default_calls} (default) / {calls} (samplers) timed calls")

    # ---- the default config: predict_chunk, the encoder alone, one U-Net step
    model = DiffusionPolicyModel(cfg)
    policy = Policy(model, normalizer, cfg, device="cpu")
    out = policy.predict_chunk(window)
    if out.shape != (cfg.chunk_len, cfg.action_dim) or not np.all(np.isfinite(out)):
        raise RuntimeError(f"predict_chunk returned {out.shape} (finite: {np.all(np.isfinite(out))})")
    n_params = sum(p.numel() for p in model.parameters())
    # naive and each way of continuing a committed prefix (a previous chunk's rows 0..P-1, robot units),
    # interleaved call by call so that other load on the machine weighs on all three alike
    strategies = {
        "naive": None,
        "rtc": ChunkPrefix(out[:PREFIX_LEN], PREFIX_DELAY, "rtc"),
        "bid": ChunkPrefix(out[:PREFIX_LEN], PREFIX_DELAY, "bid", samples=BID_SAMPLES),
    }
    timed = time_interleaved({name: (lambda pr=pr: policy.predict_chunk(window, prefix=pr))
                              for name, pr in strategies.items()}, default_calls)
    default = latency_stats_ms(timed.pop("naive"))
    per_strategy = {name: latency_stats_ms(t) for name, t in timed.items()}

    inputs = to_model_inputs({k: v[None] for k, v in window.items()}, cfg, normalizer, torch.device("cpu"))
    with torch.inference_mode():
        cond = model.net.prepare_condition(model.encoder(inputs, None))  # (1, FiLM)
        x = torch.randn(1, cfg.chunk_len, cfg.action_dim)  # (1, Tp, A)
        t = torch.full((1,), 50.0)
        encoder = latency_stats_ms(time_calls(lambda: model.encoder(inputs, None), default_calls))
        unet = latency_stats_ms(time_calls(lambda: model.net(x, t, cond), default_calls))

    # ---- each sampler (fresh untrained weights; the network is the same for both objectives)
    per_sampler: dict[str, dict[str, float]] = {}
    for name, objective in SAMPLERS.items():
        scfg = with_objective(base, **objective)
        spolicy = Policy(DiffusionPolicyModel(scfg), normalizer, scfg, device="cpu")
        per_sampler[name] = latency_stats_ms(time_calls(lambda p=spolicy: p.predict_chunk(window), calls))

    # ---- torch against the exported policy, 1 and 2 threads
    with tempfile.TemporaryDirectory(prefix="bench_predict_chunk_onnx_") as tmp:
        onnx_rows, onnx_results = onnx_comparison(cfg, model, normalizer, window, calls, Path(tmp))
    torch.set_num_threads(args.threads)

    # ---- report
    steps = cfg.objective.num_inference_steps
    dname = sampler_name(cfg)
    setup = (f"{len(cfg.image_keys)} cameras {cfg.image_shape[0]}x{cfg.image_shape[1]}, "
             f"To={cfg.n_obs_steps}, chunk {cfg.chunk_len}x{cfg.action_dim}, batch 1, cpu")

    def row(name: str, s: dict[str, float], n: int) -> tuple[Any, ...]:
        return name, s["median"], s["p90"], s["p99"], s["mean"], n

    rows = [row(f"default ({dname})", default, default_calls)]
    rows += [row(f"default {name} (d={PREFIX_DELAY}, P={PREFIX_LEN}"
                 + (f", {BID_SAMPLES} samples)" if name == "bid" else ")"), s, default_calls)
             for name, s in per_strategy.items()]
    rows += [row(name, s, calls) for name, s in per_sampler.items()]
    rows += [row("  default encoder only", encoder, default_calls),
             row("  default one U-Net step", unet, default_calls)]
    print_table(f"predict_chunk latency (ms): {setup}; model {n_params / 1e6:.3f} M parameters",
                ["variant", "median", "p90", "p99", "mean", "calls"], rows)
    print_table("predict_chunk latency (ms), torch against the exported policy (policy.export, onnxruntime)",
                ["variant", "median", "p90", "p99", "mean", "calls"], onnx_rows)
    parts = encoder["median"] + steps * unet["median"]
    print(f"\ndefault breakdown: encoder {encoder['median']:.2f} + {steps} x U-Net step "
          f"{unet['median']:.2f} = {parts:.2f} ms of {default['median']:.2f} ms "
          "(the rest: input checks, normalization, noise, copies)")
    verdict = "met" if default["median"] <= TARGET_DEFAULT_MS else "NOT met"
    print(f"target (issue): default predict_chunk median <= {TARGET_DEFAULT_MS:.0f} ms: "
          f"{default['median']:.2f} ms, {verdict}")

    for name, s in {"naive": default, **per_strategy}.items():
        verdict = "met" if s["median"] <= TARGET_STRATEGY_MS else "NOT met"
        print(f"{name}: median {s['median']:.2f} ms, p99 {s['p99']:.2f} ms = {s['p99'] / LOOP_BUDGET_MS:.0%} of "
              f"the 10 Hz loop's {LOOP_BUDGET_MS:.0f} ms; target p50 <= {TARGET_STRATEGY_MS:.0f} ms "
              f"(on 1 thread; this run: {torch.get_num_threads()}): {verdict}")

    results: dict[str, Any] = {
        "default_predict_chunk_ms_median": default["median"],
        "default_predict_chunk_ms_p90": default["p90"],
        "default_predict_chunk_ms_p99": default["p99"],
        "default_predict_chunk_ms_mean": default["mean"],
        "default_encoder_ms_median": encoder["median"],
        "default_unet_step_ms_median": unet["median"],
        "default_params_millions": n_params / 1e6,
        "target_default_predict_chunk_ms": TARGET_DEFAULT_MS,
    }
    for name, s in per_strategy.items():
        for stat in ("median", "p90", "p99", "mean"):
            results[f"default_{name}_predict_chunk_ms_{stat}"] = s[stat]
        results[f"default_{name}_over_naive_median_ratio"] = s["median"] / default["median"]
    results.update({
        "loop_budget_ms": LOOP_BUDGET_MS,
        "target_strategy_predict_chunk_ms_median_1thread": TARGET_STRATEGY_MS,
        "prefix_len": PREFIX_LEN,
        "prefix_delay": PREFIX_DELAY,
        "bid_samples": BID_SAMPLES,
        "load_average_1min_start": load_start,
        "load_average_1min_end": os.getloadavg()[0],
    })
    results.update(onnx_results)
    for name, s in per_sampler.items():
        results[f"{name}_predict_chunk_ms_median"] = s["median"]
        results[f"{name}_predict_chunk_ms_p90"] = s["p90"]
    results.update({
        "default_config": DEFAULT_POLICY_YAML.stem,
        "default_sampler": dname,
        "default_objective": f"{cfg.objective.name}/{cfg.objective.sampler}",
        "default_inference_steps": str(steps),
        "setup": setup,
        "warmup_calls": WARMUP_CALLS,
        "default_timed_calls": default_calls,
        "sampler_timed_calls": calls,
        **machine_info(torch.get_num_threads(), args.quick),
    })
    finish(results, args.out)


if __name__ == "__main__":
    main()
