"""Learning-curve benchmark: rollout success against training CPU-minutes, per task and recipe.

    python tests/benchmarks/bench_learning.py [--quick] [--threads 1] [--tasks push_t,pick_place,peek_pick]
        [--minutes 30,60] [--demos 100] [--episodes 100] [--workers 1] [--work DIR]
        [--set policy.objective.flow_prediction=sample ...] [--tag NAME] [--results FILE.json] [--out FILE.json]

Per task, ``--demos`` demos are collected once (``sim.collect`` with its defaults, seeds 0..; kept under
``--work``; a folder that already holds them is reused, and how they were collected, ``action_noise``, is
reported). For each
budget in ``--minutes`` a fresh run of the default CPU policy (configs/policy/cpu_default.yaml, with the
``--set`` overrides: a lever) trains on ``--threads`` torch threads until that many CPU-minutes of training
steps (``train.budget_clock=cpu``: other load on the machine does not shrink the budget), its cosine LR spread
over the budget. The run's final EMA checkpoint (not a best-by-rollout one: nothing is evaluated during
training, so choosing costs nothing) is then evaluated on ``--episodes`` unseen seeds through the runtime
controller (``sim.evaluate``, measured inference latency), and the 95 % Wilson interval is reported.

Figures (``<name>`` is the task, or ``<task>_<tag>`` with ``--tag``): ``<name>_success_rate_<m>min`` (+
``_ci95_low``/``_ci95_high``), ``<name>_mean_score_<m>min``, ``<name>_steps_<m>min``,
``<name>_train_cpu_min_<m>min`` (CPU-minutes of training steps), ``<name>_train_wall_min_<m>min``,
``<name>_eval_cpu_min_<m>min`` (what the evaluation cost) and the overrides. ``--results`` merges the figures
into a shared JSON file (under a lock), so that several runs on separate cores write one table.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import check_flat, finish, load_default_policy_dict, machine_info, parse_args, print_table

import sim  # noqa: F401 - headless GL before mujoco
from policy.config import Config, PolicyConfig, TrainConfig
from policy.config_utils import from_dict


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (evaluation workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def apply_overrides(policy: dict[str, Any], train: dict[str, Any], sets: list[str]) -> None:
    """``policy.a.b=v`` / ``train.k=v`` (v parsed as JSON when it parses, else a string) into the dicts."""
    for s in sets:
        key, sep, raw = s.partition("=")
        root, _, path = key.partition(".")
        if not sep or root not in ("policy", "train") or not path:
            raise SystemExit(f"--set takes policy.<key>=<value> or train.<key>=<value>, got {s!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = policy if root == "policy" else train
        *parents, leaf = path.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise SystemExit(f"--set {s!r}: {root}.{p} is not a group of keys")
            node = node[p]
        node[leaf] = value


def run_task(task: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from policy.data.replay_buffer import ReplayBuffer
    from policy.train import train
    from sim.collect import CollectConfig, collect, read_info
    from sim.evaluate import EvalConfig, evaluate

    data = work / f"{task}_demos.zarr"
    if not (data.is_dir() and ReplayBuffer.open(data).n_episodes >= args.demos):
        print(f"collecting {args.demos} demos of {task}")
        collect(from_dict(CollectConfig, {"task": task, "episodes": args.demos, "out": str(data),
                                          "workers": args.workers}))
    name = f"{task}_{args.tag}" if args.tag else task
    res: dict[str, Any] = {f"{name}_overrides": " ".join(args.set) or "none (the default recipe)"}
    info = read_info(data)  # how the demos were collected (DART noise or none)
    noise = info.get("action_noise") or [0.0, 0.0, 0.0]  # a flat figure: the three stds in one string
    res[f"{name}_demos_action_noise_m"] = ",".join(f"{float(x):g}" for x in noise)
    if info.get("action_noise_rho") is not None:
        res[f"{name}_demos_action_noise_rho"] = float(info["action_noise_rho"])
    for minutes in args.minutes:
        pol = load_default_policy_dict()
        tcfg: dict[str, Any] = {"dataset": str(data), "steps": 1_000_000, "max_minutes": minutes,
                                "num_threads": args.threads, "budget_clock": "cpu", "ckpt_every": 2000,
                                "val_every": 2000, "progress": False}
        apply_overrides(pol, tcfg, args.set)
        run = work / f"{name}_run_{minutes:g}min"
        tcfg.update(out_dir=str(run), resume=(run / "checkpoints" / "latest").is_dir())
        if args.quick:
            tcfg.update(batch_size=16)
        cfg = Config(policy=from_dict(PolicyConfig, pol, "policy"), train=from_dict(TrainConfig, tcfg, "train"))
        print(f"{name}: training to {minutes:g} CPU-min")
        t0 = time.perf_counter()
        ckpt = train(cfg)
        wall = time.perf_counter() - t0
        meta = json.loads((ckpt / "meta.json").read_text())
        state_file = ckpt / "train_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        c0 = cpu_seconds()
        s = evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": args.episodes,
                                            "workers": args.workers, "videos": 1, "progress": False,
                                            "out": str(work / f"{name}_eval_{minutes:g}min")}))
        m = f"{minutes:g}min"
        key = f"{name}_success_rate_{m}"
        res[key] = s["success_rate"]
        res[f"{key}_ci95_low"], res[f"{key}_ci95_high"] = s["success_rate_ci95"]
        res[f"{name}_mean_score_{m}"] = s["mean_score"]
        res[f"{name}_steps_{m}"] = meta["step"]
        if "train_seconds" in state:
            res[f"{name}_train_cpu_min_{m}"] = state["train_seconds"] / 60
        res[f"{name}_train_wall_min_{m}"] = wall / 60
        res[f"{name}_eval_cpu_min_{m}"] = (cpu_seconds() - c0) / 60
        res[f"{name}_eval_episodes_{m}"] = args.episodes
        print(f"{name} after {minutes:g} CPU-min ({meta['step']} steps): success {s['success_rate']:.0%} "
              f"(95% CI {s['success_rate_ci95'][0]:.0%}-{s['success_rate_ci95'][1]:.0%}), "
              f"mean score {s['mean_score']:.3f}")
    return res


def merge_into(path: Path, results: dict[str, Any]) -> None:
    """Add ``results`` to the JSON object in ``path`` (created if missing), under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**old, **results}, indent=2) + "\n")


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tasks", default="push_t,pick_place,peek_pick")
        p.add_argument("--minutes", default="30,60", help="training budgets in CPU-minutes, a fresh run each")
        p.add_argument("--demos", type=int, default=100)
        p.add_argument("--episodes", type=int, default=100, help="evaluation episodes (unseen seeds) per budget")
        p.add_argument("--workers", type=int, default=1, help="processes for collection and evaluation")
        p.add_argument("--work", type=Path, default=None, help="folder for demos and runs (reused)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a lever: policy.<key>=<value> or train.<key>=<value> (repeatable)")
        p.add_argument("--tag", default="", help="names the figures <task>_<tag>_... (a lever's name)")
        p.add_argument("--results", type=Path, default=None, help="also merge the figures into this JSON file")

    args = parse_args(__file__, __doc__.splitlines()[0], extra)
    args.minutes = [float(m) for m in args.minutes.split(",") if m]
    if args.quick:
        args.minutes, args.demos, args.episodes = [0.05], 3, 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_learning_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"demos": args.demos, "checkpoint_choice": "final EMA checkpoint of each run"}
    for task in [t for t in args.tasks.split(",") if t]:
        results.update(run_task(task, args, work))
    rows = [(k, v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    print_table("learning curve", ["figure", "value"], rows)
    tagged = {f"{args.tag}_{k}" if args.tag else k: v for k, v in machine_info(args.threads, args.quick).items()}
    results.update(tagged)
    check_flat(results)  # before anything is merged into a shared results file
    if args.results:
        merge_into(args.results, results)
    finish(results, args.out)


if __name__ == "__main__":
    main()
