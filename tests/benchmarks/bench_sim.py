"""Simulation benchmark: env speed, and success rate against CPU-minutes of training, per task.

    python tests/benchmarks/bench_sim.py [--quick] [--out FILE.json] [--threads N]
        [--tasks pick_place,push_t,peek_pick,peek_pick:scene_only] [--minutes 10,30,60] [--demos 100]
        [--episodes 50] [--work DIR] [--speed-only] [--resume-budgets]

Per task: env steps per second with both cameras rendered (one process, one core, the scripted
demonstrator acting), then ``--demos`` demos are collected (``sim.collect``, seeds 0..), the default
CPU policy (configs/policy/cpu_default.yaml) is trained with ``--threads`` torch threads on a budget of
CPU-minutes (process CPU time of the training steps, ``train.budget_clock=cpu``, so that other load on
the machine does not shrink the budget), and after each budget in ``--minutes`` the checkpoint is
evaluated on ``--episodes`` unseen seeds through the runtime controller (``sim.evaluate``, measured inference latency).
Each budget is a run of its own, its cosine LR schedule spread over that budget, as a user would train
with ``train.max_minutes``. ``--resume-budgets`` instead reaches the budgets by resuming one run (cheaper:
the largest budget instead of their sum), but each resume stretches the schedule over the next budget (a
warm restart), which measured much worse on Push-T (18 % vs 40 % at 60 CPU-min). A task named
``<task>:scene_only`` is trained with only the scene camera.

Figures: ``<task>_env_steps_per_s``, ``<task>_success_rate_<m>min`` (+ ``_ci95_low``/``_ci95_high``,
``_mean_score``, ``_train_steps``), ``<task>_scene_only_success_rate_<m>min``. Work files (demos, runs)
stay under ``--work`` (default: a temporary folder) so a benchmark can be resumed by passing it again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import finish, load_default_policy_dict, machine_info, parse_args, print_table

import sim  # noqa: F401 - headless GL before mujoco
from policy.config import Config, PolicyConfig, TrainConfig
from policy.config_utils import from_dict


def env_steps_per_s(task: str, steps: int) -> float:
    """Steps per second of the task env with both cameras rendered, the demonstrator acting (one process)."""
    from sim.tasks import make_demonstrator, make_env

    env = make_env(task)
    demo = make_demonstrator(env)
    n, seed, elapsed = 0, 0, 0.0
    while n < steps:
        obs, _ = env.reset(seed=seed)
        demo.reset(seed)
        for _ in range(env.cfg.max_episode_steps):
            action = demo.act(obs)
            t0 = time.perf_counter()
            obs, _, _, _, _ = env.step(action)
            elapsed += time.perf_counter() - t0
            n += 1
            if n >= steps or demo.done:
                break
        seed += 1
    env.close()
    return n / elapsed


def run_task(task: str, args: argparse.Namespace, work: Path, scene_only: bool) -> dict[str, Any]:
    from policy.data.replay_buffer import ReplayBuffer
    from policy.train import train
    from sim.collect import CollectConfig, collect
    from sim.evaluate import EvalConfig, evaluate

    data = work / f"{task}_demos.zarr"
    if not (data.is_dir() and ReplayBuffer.open(data).n_episodes >= args.demos):
        print(f"collecting {args.demos} demos of {task}")
        collect(from_dict(CollectConfig, {"task": task, "episodes": args.demos, "out": str(data), "workers": 2}))
    pol = load_default_policy_dict()
    if scene_only:
        pol["image_keys"] = ["scene_rgb"]
    policy = from_dict(PolicyConfig, pol, "policy")
    name = f"{task}_scene_only" if scene_only else task
    res: dict[str, Any] = {}
    for minutes in args.minutes:
        run = work / (f"{name}_run" if args.resume_budgets else f"{name}_run_{minutes:g}min")
        tcfg = {"dataset": str(data), "out_dir": str(run), "steps": 1_000_000, "max_minutes": minutes,
                "num_threads": args.threads, "budget_clock": "cpu", "ckpt_every": 1000, "val_every": 1000,
                "progress": False, "resume": (run / "checkpoints" / "latest").is_dir()}
        if args.quick:
            tcfg.update(batch_size=16)
        print(f"{name}: training to {minutes:g} min")
        ckpt = train(Config(policy=policy, train=from_dict(TrainConfig, tcfg, "train")))
        step = json.loads((ckpt / "meta.json").read_text())["step"]
        s = evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": args.episodes, "workers": 2,
                                            "videos": 1, "out": str(work / f"{name}_eval_{minutes:g}min"),
                                            "progress": False}))
        key = f"{name}_success_rate_{minutes:g}min"
        res[key] = s["success_rate"]
        res[f"{key}_ci95_low"], res[f"{key}_ci95_high"] = s["success_rate_ci95"]
        res[f"{name}_mean_score_{minutes:g}min"] = s["mean_score"]
        res[f"{name}_train_steps_{minutes:g}min"] = step
        print(f"{name} after {minutes:g} min ({step} steps): success {s['success_rate']:.0%} "
              f"(95% CI {s['success_rate_ci95'][0]:.0%}-{s['success_rate_ci95'][1]:.0%}), "
              f"mean score {s['mean_score']:.3f}")
    return res


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tasks", default="pick_place,push_t,peek_pick,peek_pick:scene_only",
                       help="tasks; <task>:scene_only trains without the wrist camera")
        p.add_argument("--minutes", default="10,30,60", help="training budgets (CPU-minutes), increasing")
        p.add_argument("--demos", type=int, default=100)
        p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per budget")
        p.add_argument("--work", type=Path, default=None, help="folder for demos and runs (reused)")
        p.add_argument("--speed-only", action="store_true", help="only the env speed")
        p.add_argument("--resume-budgets", action="store_true",
                       help="reach the budgets by resuming one run (warm LR restarts) instead of a run per budget")

    args = parse_args(__file__, __doc__.splitlines()[0], extra)
    runs = [t.split(":") for t in args.tasks.split(",") if t]
    if any(len(r) > 2 or (len(r) == 2 and r[1] != "scene_only") for r in runs):
        raise SystemExit(f"--tasks: entries are <task> or <task>:scene_only, got {args.tasks!r}")
    args.minutes = [float(m) for m in args.minutes.split(",") if m]
    if args.quick:
        args.minutes, args.demos, args.episodes = [0.1], 4, 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_sim_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for task in dict.fromkeys(r[0] for r in runs):
        results[f"{task}_env_steps_per_s"] = env_steps_per_s(task, 100 if args.quick else 1000)
        print(f"{task}: {results[f'{task}_env_steps_per_s']:.0f} env steps/s with both cameras")
    if not args.speed_only:
        results.update(demos=args.demos, eval_episodes=args.episodes,
                       budgets="one resumed run" if args.resume_budgets else "a fresh run per budget")
        for r in runs:
            results.update(run_task(r[0], args, work, scene_only=len(r) == 2))
    rows = [(k, v) for k, v in results.items() if isinstance(v, float)]
    print_table("simulation benchmark", ["figure", "value"], rows)
    results.update(machine_info(args.threads, args.quick))
    finish(results, args.out)


if __name__ == "__main__":
    main()
