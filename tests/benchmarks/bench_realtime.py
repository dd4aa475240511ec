"""Real-time chunking under simulated inference latency: success and smoothness of each way to join chunks.

    python tests/benchmarks/bench_realtime.py --checkpoint pick_place=DIR --checkpoint push_t=DIR
        [--latencies 0,0.1,0.2,0.3,0.5] [--strategies naive,rtc,rtc_linear,bid,ensemble] [--replan half[,continuous]]
        [--episodes 100] [--seed 1000000] [--workers N] [--threads 1] [--max-steps 0] [--cost-calls 30] [--work DIR]
        [--quick] [--out FILE.json]

For every checkpoint (``label=DIR``; the label names its figures and, when it is a task name, the task;
otherwise the task is the one its demos were collected on), replanning mode, strategy
(``controller.execution``) and simulated inference latency (s of simulated time, ``sim.evaluate``'s
``latency``), ``sim.evaluate`` runs ``--episodes`` unseen seeds through the runtime controller.
Figures, named ``<label>_<strategy>[_continuous]_<latency>s_<figure>``:
``success_rate`` with its 95 % Wilson interval (``_ci95_low``/``_ci95_high``), ``mean_score``; the jump
between consecutive buffer targets (the policy's targets handed to the safety layer) at chunk switches and
within a chunk, pooled over all episodes: ``switch_jump_m_mean``/``_p95``, ``switch_jump_rad_mean``/``_p95``,
``within_jump_m_mean``/``_p95``, ``within_jump_rad_mean``/``_p95``; how often the safety layer's rate limits
intervened (``speed_interventions``, ``accel_interventions``, ``rot_speed_interventions``,
``rot_accel_interventions``, and all four per episode: ``limit_interventions_per_episode``), ``underruns``
and ``faults``. A configuration that cannot run (e.g. rtc with a policy without prefix support) gets an
``_error`` string instead.

Inference cost (``--cost-calls`` > 0): ``<label>_<strategy>_predict_chunk_ms_median``/``_p99``: the wall time
of ``Policy.predict_chunk`` with ``--threads`` torch threads on one window of neutral inputs, with the prefix
each strategy sends (naive and ensemble: none; a committed prefix of half a chunk with d = 3 otherwise), and
what share of the 100 ms tick at 10 Hz its median takes (``_tick_budget_share``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import finish, latency_stats_ms, machine_info, parse_args, print_table

import sim  # noqa: F401 - headless GL before mujoco
from policy.config_utils import from_dict

STRATEGIES = ("naive", "rtc", "rtc_linear", "bid", "ensemble")
# a strategy -> controller keys: rtc_linear is rtc with the paper's linear soft mask (controller.rtc_schedule)
STRATEGY_KEYS = {"rtc_linear": {"execution": "rtc", "rtc_schedule": "linear"}}
JUMPS = ("switch_jump_m", "switch_jump_rad", "within_jump_m", "within_jump_rad")
LIMITS = ("speed", "accel", "rot_speed", "rot_accel")


def _checkpoints(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--checkpoint takes LABEL=DIR (e.g. push_t=runs/push_t), got {item!r}")
        if not Path(path).exists():
            raise SystemExit(f"--checkpoint {label}: {path} does not exist")
        out[label] = Path(path)
    return out


def pooled(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Jump figures pooled over the episodes' jump series, and the safety layer's rate-limit counts."""
    res: dict[str, Any] = {}
    for name in JUMPS:
        values = np.concatenate([np.asarray(e["jumps"][name], float) for e in episodes]) if episodes else np.zeros(0)
        res[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
        res[f"{name}_p95"] = float(np.percentile(values, 95)) if values.size else float("nan")
    res["chunk_switches"] = int(sum(len(e["jumps"]["switch_jump_m"]) for e in episodes))
    for reason in LIMITS:
        res[f"{reason}_interventions"] = int(sum(e["interventions"].get(reason, 0) for e in episodes))
    total = sum(res[f"{r}_interventions"] for r in LIMITS)
    res["limit_interventions_per_episode"] = total / len(episodes) if episodes else float("nan")
    return res


def evaluate_one(label: str, ckpt: Path, strategy: str, latency: float, replan: str, args: argparse.Namespace,
                 out: Path) -> dict[str, Any]:
    from sim.evaluate import EvalConfig, evaluate
    from sim.tasks import TASKS

    cfg = from_dict(EvalConfig, {
        "checkpoint": str(ckpt), "task": label if label in TASKS else "", "episodes": args.episodes,
        "workers": args.workers, "latency": latency, "seed": args.seed,
        "max_steps": args.max_steps, "videos": 0, "out": str(out), "num_threads": args.threads,
        "progress": False, "controller": {"execution": strategy, **STRATEGY_KEYS.get(strategy, {}), "replan": replan,
                                          "keep_trace": True}})
    s = evaluate(cfg)
    lo, hi = s["success_rate_ci95"]
    return {"success_rate": s["success_rate"], "success_rate_ci95_low": lo, "success_rate_ci95_high": hi,
            "mean_score": s["mean_score"], "underruns": s["underruns"], "faults": s["faults"],
            **pooled(s["episodes"]), "task": s["task"]}


def neutral_window(policy: Any) -> dict[str, np.ndarray]:
    """A window of neutral inputs of the right shapes: grey images, an identity pose at 0.3 m, half-open gripper."""
    from policy import keys
    from policy.keys import ACTION_LAYOUT as LAYOUT

    to, cfg = policy.n_obs_steps, policy.cfg
    pose = np.array([0.3, 0.0, 0.3, 1, 0, 0, 0, 1, 0], np.float32)
    width = np.array([0.04], np.float32)
    out: dict[str, np.ndarray] = {}
    for k in policy.obs_keys:
        if k in cfg.image_keys:
            out[k] = np.full((to, *cfg.image_shape, 3), 128, np.uint8)
        elif k == keys.ACTION_HISTORY:
            th = cfg.history_steps
            out[k] = np.repeat(policy.action_space.pad(pose[LAYOUT.pose], width)[None], th, 0).astype(np.float32)
        elif k == keys.EE_POSE:
            out[k] = np.repeat(pose[None], to, 0)
        elif k == keys.GRIPPER:
            out[k] = np.repeat(width[None], to, 0)
        else:
            out[k] = np.zeros((to, cfg.lowdim_dims[k]), np.float32)
    return out


def inference_cost(ckpt: Path, strategies: list[str], calls: int, threads: int) -> dict[str, Any]:
    """Median and p99 ms of predict_chunk per strategy on ``threads`` torch threads."""
    import torch

    from policy.policy import Policy
    from policy.protocol import ChunkPrefix, accepts_prefix

    torch.set_num_threads(threads)
    policy = Policy.from_pretrained(ckpt, "cpu")
    window = neutral_window(policy)
    chunk = policy.predict_chunk(window, seed=0)
    half = policy.chunk_len // 2
    res: dict[str, Any] = {}
    for strategy in strategies:
        prefix = None
        keys_ = {"execution": strategy, **STRATEGY_KEYS.get(strategy, {})}
        if keys_["execution"] in ("rtc", "bid"):
            if not accepts_prefix(policy):
                res[f"{strategy}_predict_chunk_error"] = "the policy takes no prefix"
                continue
            prefix = ChunkPrefix(chunk[half:].astype(np.float64), min(3, policy.chunk_len - half),
                                 keys_["execution"], schedule=keys_.get("rtc_schedule", "exp"))
        times = []
        for i in range(calls + 3):  # 3 warm-up calls
            t0 = time.perf_counter()
            policy.predict_chunk(window, seed=i, prefix=prefix) if prefix is not None else \
                policy.predict_chunk(window, seed=i)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        st = latency_stats_ms(times)
        res[f"{strategy}_predict_chunk_ms_median"] = st["median"]
        res[f"{strategy}_predict_chunk_ms_p99"] = st["p99"]
        res[f"{strategy}_predict_chunk_tick_budget_share"] = st["median"] / 100.0
    return res


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=DIR",
                       help="a checkpoint (or training run folder) and the label of its figures; repeatable")
        p.add_argument("--latencies", default="0,0.1,0.2,0.3,0.5", help="simulated inference latencies, s")
        p.add_argument("--strategies", default=",".join(STRATEGIES), help="controller.execution values")
        p.add_argument("--replan", default="half", help="controller.replan values: half, continuous or both")
        p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per configuration")
        p.add_argument("--workers", type=int, default=2, help="evaluation processes")
        p.add_argument("--max-steps", type=int, default=0, help="ticks per episode; 0: the task's")
        p.add_argument("--seed", type=int, default=1_000_000,
                       help="first evaluation seed (sim.evaluate's seed; another start: a repeat on other seeds)")
        p.add_argument("--cost-calls", type=int, default=30, help="timed predict_chunk calls per strategy; 0: skip")
        p.add_argument("--work", type=Path, default=None, help="folder for the evaluation outputs")

    args = parse_args(__file__, __doc__.splitlines()[0], extra)
    ckpts = _checkpoints(args.checkpoint)
    if not ckpts:
        raise SystemExit("pass at least one --checkpoint LABEL=DIR")
    latencies = [float(x) for x in args.latencies.split(",") if x]
    strategies = [s for s in args.strategies.split(",") if s]
    replans = [r for r in args.replan.split(",") if r]
    if bad := [s for s in strategies if s not in STRATEGIES]:
        raise SystemExit(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
    if bad := [r for r in replans if r not in ("half", "continuous")]:
        raise SystemExit(f"--replan: unknown {bad}; choose half and/or continuous")
    if args.quick:
        args.episodes, latencies, args.cost_calls = min(args.episodes, 2), latencies[:2], min(args.cost_calls, 3)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_realtime_"))
    results: dict[str, Any] = {"episodes": args.episodes, "first_seed": args.seed,
                               "latencies_s": ",".join(f"{x:g}" for x in latencies),
                               "strategies": ",".join(strategies), "replan": ",".join(replans)}
    rows = []
    for label, ckpt in ckpts.items():
        if args.cost_calls > 0:
            cost = inference_cost(ckpt, strategies, args.cost_calls, args.threads)
            results.update({f"{label}_{k}": v for k, v in cost.items()})
        for replan in replans:
            for strategy in strategies:
                for lat in latencies:
                    name = f"{label}_{strategy}{'_continuous' if replan == 'continuous' else ''}_{lat:g}s"
                    t0 = time.perf_counter()
                    try:
                        r = evaluate_one(label, ckpt, strategy, lat, replan, args, work / name)
                    except Exception as e:  # noqa: BLE001 - one configuration failing must not lose the others
                        print(f"{name}: failed: {type(e).__name__}: {e}")
                        results[f"{name}_error"] = f"{type(e).__name__}: {e}"
                        continue
                    results[f"{label}_task"] = r.pop("task")
                    results.update({f"{name}_{k}": v for k, v in r.items()})
                    rows.append((name, r["success_rate"], r["success_rate_ci95_low"], r["success_rate_ci95_high"],
                                 r["mean_score"], r["switch_jump_m_p95"] * 1e3, r["within_jump_m_p95"] * 1e3,
                                 r["switch_jump_rad_p95"], r["within_jump_rad_p95"],
                                 r["limit_interventions_per_episode"], r["underruns"]))
                    print(f"{name}: success {r['success_rate']:.0%} ({time.perf_counter() - t0:.0f} s)")
    print_table("real-time chunking (jumps: p95, mm and rad)",
                ["configuration", "success", "ci95 lo", "ci95 hi", "score", "switch mm", "within mm",
                 "switch rad", "within rad", "limits/ep", "underruns"], rows)
    cost_rows = [(k, v) for k, v in results.items() if "predict_chunk_ms" in k]
    if cost_rows:
        print_table(f"predict_chunk on {args.threads} thread(s)", ["figure", "ms"], cost_rows)
    results.update(machine_info(args.threads, args.quick))
    finish({k: v for k, v in results.items() if not (isinstance(v, float) and v != v)}, args.out)


if __name__ == "__main__":
    main()
