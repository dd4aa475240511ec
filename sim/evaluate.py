"""Evaluate a checkpoint on a simulated task through the runtime controller, on the simulated clock.

``python -m sim.evaluate checkpoint=<dir> episodes=N [task=...] [workers=2] [latency=measured] [videos=2]``

Each episode resets the task with its own seed, then runs the same ``runtime.Controller`` as a real
arm (timestamped action buffer, replanning at half the chunk, dropping stale entries, the safety layer)
on a ``SimClock``: one env step per tick, and inference takes ``latency`` of simulated time: ``0``, a
fixed number of seconds, or ``measured`` (the wall time each inference really took). An episode ends at
the first tick where ``info["is_success"]`` holds, or after ``max_steps`` ticks; its score is the
highest ``info["score"]`` seen. Episodes run in ``workers`` spawn processes, each loading the policy
once (1 torch thread). Evaluation seeds start at ``seed`` and skip every seed used to collect the
training demos (read from the dataset folder the checkpoint was trained on). The task overrides the demos were
collected with (``env``: a moved camera, randomization) apply as well, under those given here.

Writes ``<out>/eval.json`` (success rate with a 95 % Wilson interval, mean score, episode lengths,
one record per episode, with the jumps between consecutive targets at chunk switches and within chunks
and the safety layer's rate-limit interventions; with ``controller.keep_trace`` the jump series too)
and ``<out>/videos/episode_<i>_seed_<s>.mp4`` (scene | wrist, side by side)
for the first ``videos`` episodes.

``task=gym`` (or a non-empty ``gym.id``; by default the mapping recorded with the training demos) runs a
third-party gymnasium env mapped by the ``gym`` section through the same controller (``sim.gym_drivers``);
its safety layer is reduced to the mapped action bounds (``safety`` in eval.json says which applied).

``display=rerun`` shows the first ``display_episodes`` episodes live in the Rerun viewer (one recording
each, named by episode and seed; the parent starts the viewer, the workers connect to it);
``display=rerun+save:<file.rrd>`` writes them instead: to ``<file.rrd>`` for one episode, to
``<file>_episode_<i>_seed_<s>.rrd`` for several (``runtime.viz``; the viz extra).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.controller import ControllerConfig, ControllerError
from runtime.safety import SafetyConfig
from runtime.viz import parse_display
from sim.gym_adapter import GymConfig
from sim.report import format_summary, summarize, write_video

log = logging.getLogger("sim.evaluate")

DEFAULT_EVAL_SEED = 1_000_000  # far from the collection default (0 ..); collected seeds are skipped anyway


@dataclass
class EvalConfig:
    checkpoint: str = ""  # checkpoint folder, or a training run folder (its latest checkpoint)
    task: str = ""  # "": the task the training demos were collected on (collect_info.json)
    episodes: int = 50
    seed: int = DEFAULT_EVAL_SEED  # first evaluation seed; collection seeds are skipped
    workers: int = 2  # spawn processes
    latency: str | float = "measured"  # "measured" | "zero" | seconds of simulated time, e.g. "0.05"
    max_steps: int = 0  # ticks per episode; 0: the task's max_episode_steps
    videos: int = 2  # record the first K episodes (scene | wrist mp4)
    video_scale: int = 2  # pixel repeat of the video frames
    out: str = ""  # results folder; "": <checkpoint>/eval
    device: str = "cpu"
    num_threads: int = 1  # torch (onnxruntime) threads per worker
    num_inference_steps: int | None = None  # None: the checkpoint's
    env: dict[str, Any] = field(default_factory=dict)  # task overrides over the demos' own (unknown keys fail)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    gym: GymConfig = field(default_factory=GymConfig)  # a third-party env (task=gym); "" id: the demos' mapping
    progress: bool = True
    display: str = "none"  # none | rerun | rerun+save:<file.rrd>: the first display_episodes live (runtime.viz)
    display_episodes: int = 1  # episodes shown by display

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint is empty: pass checkpoint=<checkpoint or training run folder>")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self.latency_s  # noqa: B018 - validates latency
        parse_display(self.display)
        if self.display_episodes < 0:
            raise ValueError(f"display_episodes must be >= 0, got {self.display_episodes}")
        if self.max_steps < 0 or self.videos < 0 or self.video_scale < 1:
            raise ValueError(f"max_steps and videos must be >= 0 and video_scale >= 1, got {self.max_steps}, "
                             f"{self.videos}, {self.video_scale}")

    @property
    def latency_s(self) -> float | str:
        """"measured", or simulated seconds."""
        lat = str(self.latency).strip().lower()
        if lat == "measured":
            return "measured"
        if lat == "zero":
            return 0.0
        try:
            value = float(lat)
        except ValueError:
            value = -1.0
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"latency must be 'measured', 'zero' or seconds >= 0, got {self.latency!r}")
        return value


def dataset_of(checkpoint: str | Path) -> Path | None:
    """The dataset folder a checkpoint was trained on (from its meta.json), if recorded."""
    from policy.loader import policy_dir

    meta_path = policy_dir(checkpoint) / "meta.json"
    meta = json.loads(meta_path.read_text())
    path = meta.get("dataset", {}).get("path")
    return Path(path) if path else None


def eval_seeds(first: int, n: int, exclude: set[int]) -> list[int]:
    """``n`` seeds from ``first`` upward, skipping ``exclude``."""
    seeds, s = [], first
    while len(seeds) < n:
        if s not in exclude:
            seeds.append(s)
        s += 1
    return seeds


# ----------------------------------------------------------------- worker side

FAULT_REASONS = ("fault", "driver_error")  # controller stop reasons that end an episode as failed


@dataclass
class EvalWorker:
    """What one evaluation process holds: its config, the policy (loaded once) and the env (built once)."""

    cfg: EvalConfig
    policy: Any
    env: Any


@functools.cache
def eval_worker(cfg_json: str, task: str) -> EvalWorker:
    """The process's ``EvalWorker`` for ``cfg_json`` (``EvalConfig`` as JSON) and ``task``, built on its first
    episode (where errors reach the parent; an exception in a pool initializer would respawn workers forever)."""
    from policy.config_utils import from_dict
    from policy.loader import load_policy
    from sim.gym_adapter import make_gym_env
    from sim.tasks import make_env

    cfg = from_dict(EvalConfig, json.loads(cfg_json))
    logging.getLogger("runtime.controller").setLevel(logging.ERROR)  # underruns are counted, not printed
    policy = load_policy(cfg.checkpoint, cfg.device, max(1, cfg.num_threads), cfg.num_inference_steps)
    size = (int(policy.cfg.image_shape[0]), int(policy.cfg.image_shape[1]))
    env = make_gym_env(cfg.gym, size) if task == "gym" else \
        make_env(task, {"image_height": size[0], "image_width": size[1], **cfg.env})
    return EvalWorker(cfg, policy, env)


@dataclass(frozen=True)
class EvalJob:
    """One episode for a pool worker: its ``index``, ``seed``, whether to ``record`` a video, and the worker
    it runs on (``cfg_json``, ``task``: see ``eval_worker``)."""

    index: int
    seed: int
    record: bool
    cfg_json: str
    task: str
    display: str = "none"  # this episode's display (runtime.viz), resolved by the parent


def run_job(job: EvalJob) -> dict[str, Any]:
    from runtime.viz import open_display

    w = eval_worker(job.cfg_json, job.task)
    display = open_display(job.display, f"evaluate {job.task} episode {job.index} seed {job.seed}")
    try:
        rec = run_episode(w.env, w.policy, w.cfg, job.seed, job.record, observers=[display] if display else [])
    finally:
        if display is not None:
            display.close()
    return {**rec, "index": job.index}


def episode_displays(display: str, n_episodes: int, seeds: list[int]) -> list[str]:
    """Each episode's display: ``display`` for the first ``n_episodes`` (a saved file per episode when
    several: ``<stem>_episode_<i>_seed_<s>.rrd``), ``none`` for the others."""
    spec = parse_display(display)
    out = ["none"] * len(seeds)
    for i, seed in enumerate(seeds[:n_episodes] if spec.enabled else []):
        if spec.save is None or n_episodes == 1:
            out[i] = display
        else:
            name = f"{spec.save.stem}_episode_{i:03d}_seed_{seed}{spec.save.suffix}"
            out[i] = f"rerun+save:{spec.save.with_name(name)}"
    return out


def seed_noise(policy: Any, seed: int) -> None:
    """Seed the generator of the policy's sampling noise: an exported policy's own ``rng``, else torch's."""
    if isinstance(getattr(policy, "rng", None), np.random.Generator):
        policy.rng = np.random.default_rng(seed)
        return
    import torch

    torch.manual_seed(seed)


def run_episode(env: Any, policy: Any, cfg: EvalConfig, seed: int, record: bool = False,
                clock: Any = None, observers: Any = ()) -> dict[str, Any]:
    """One evaluation episode on ``env`` from ``seed`` through the runtime controller on a SimClock.

    The robot records each step into an ``EpisodeOutcome``, whose stop event ends the run at the first
    success (or when a mapped env ends the episode). Returns a record: seed, success, score (max over the
    episode), steps, controller counters, ``stop_reason`` and ``error`` (a controller fault ends the episode
    as a failure, with its reason) and, if ``record``, ``frames`` (T, H, 2W, 3) uint8. ``clock``: a fresh
    ``SimClock`` to run on (default: a new one). ``observers``: the controller's (``runtime.observer``).
    """
    from runtime.clock import SimClock
    from runtime.controller import Controller
    from runtime.inference import SimulatedLatencyWorker
    from runtime.metrics import JUMP_SERIES
    from sim.drivers import EpisodeOutcome, task_drivers
    from sim.gym_adapter import GymAdapter
    from sim.gym_drivers import gym_drivers

    seed_noise(policy, seed)  # the sampler's noise: the same episode for the same seed
    clock = clock if clock is not None else SimClock()
    outcome = EpisodeOutcome(frames=[] if record else None)  # the robot records each step here
    gym_env = isinstance(env, GymAdapter)
    if gym_env:
        robot, cams, safety = gym_drivers(env, policy, cfg.safety, clock.now, outcome)
    else:
        robot, cams, safety = task_drivers(env, policy.obs_keys, cfg.safety, clock.now, outcome)
    outcome.start(robot.reset(seed)[1], env.last_obs)
    worker = SimulatedLatencyWorker(policy, clock, cfg.latency_s)
    ctrl_cfg = ControllerConfig(**{**asdict(cfg.controller), "hz": env.cfg.control_hz})
    robot.connect()
    for cam in cams.values():
        cam.connect()
    ctrl = Controller(robot, cams, worker, safety, clock, ctrl_cfg, stop_event=outcome.stop, observers=observers)
    try:
        m = ctrl.run(max_ticks=cfg.max_steps or env.cfg.max_episode_steps)
    except ControllerError as e:
        m = ctrl.metrics
        m.error = m.error or str(e)
        m.stop_reason = m.stop_reason if m.stop_reason in FAULT_REASONS else "fault"
    faulted = m.stop_reason in FAULT_REASONS
    if faulted:
        log.warning("episode seed %d: %s (%s); counted as failed", seed, m.stop_reason, m.error)
    elif gym_env and outcome.steps:
        env.check_reported()  # a success_key/score_key that never appeared: a typo, not a failure
    lat = np.asarray(m.inference_latency_s, dtype=np.float64)
    rec = {"seed": seed, "success": outcome.success and not faulted, "score": round(outcome.score, 4),
           "steps": outcome.steps, "underruns": m.underruns, "chunks": m.chunks_received,
           "inference_failures": m.inference_failures, "interventions": dict(m.interventions),
           "inference_ms_mean": round(float(lat.mean()) * 1e3, 3) if lat.size else None,
           "stop_reason": m.stop_reason, "error": (m.error or m.stop_reason) if faulted else None,
           **{k: round(v, 6) if isinstance(v, float) else v for k, v in m.jump_summary().items()}}
    if cfg.controller.keep_trace:  # the jump series themselves, to pool over episodes (bench_realtime)
        rec["jumps"] = {name: [round(x, 7) for x in getattr(m, name)] for name in JUMP_SERIES}
    if outcome.frames:
        rec["frames"] = np.stack(outcome.frames)
    return rec


# ----------------------------------------------------------------- parent side


def resolve_task(cfg: EvalConfig) -> tuple[str, list[int], GymConfig, dict[str, Any]]:
    """(task, seeds used for collection, gym mapping, task overrides) from the config and the checkpoint's
    dataset folder; for task=gym with an empty ``gym.id`` the mapping recorded with the demos. On the demos'
    own task, the overrides they were collected with (a moved camera, randomization) apply too, under
    ``cfg.env`` (a key given there replaces the recorded one)."""
    from sim.collect import read_info, read_seeds
    from sim.gym_adapter import resolve_gym

    dataset = dataset_of(cfg.checkpoint)
    info = read_info(dataset) if dataset is not None and dataset.is_dir() else {}
    collected = read_seeds(dataset) if dataset is not None and dataset.is_dir() else []
    task, gym_cfg = resolve_gym(cfg.task, cfg.gym, info, cfg.env, f"the checkpoint's dataset ({dataset})")
    task = task or info.get("task", "")
    if not task:
        raise ValueError(f"task is empty and the checkpoint's dataset ({dataset}) records none: pass task=<name>")
    if cfg.task and info.get("task") and info["task"] != cfg.task:
        log.warning("evaluating on task %s, but the demos were collected on %s", cfg.task, info["task"])
    if not collected:
        log.warning("no collection seeds found next to the dataset %s: evaluation seeds start at %d unchecked",
                    dataset, cfg.seed)
    env = {**info.get("env", {}), **cfg.env} if task == info.get("task") and task != "gym" else dict(cfg.env)
    return task, collected, gym_cfg, env


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; returns the summary (also written to ``<out>/eval.json``)."""
    from dataclasses import replace

    from tqdm import tqdm

    from policy.config_utils import from_dict, to_dict
    from policy.loader import policy_dir
    from sim.gym_drivers import check_gym_eval
    from sim.tasks import get_task

    ckpt = policy_dir(cfg.checkpoint)
    task, collected, gym_cfg, env = resolve_task(cfg)
    cfg = replace(cfg, gym=gym_cfg, env=env)
    if task == "gym":  # a mapping the policy does not fit fails here (the env is built once), not in a worker
        safety = check_gym_eval(cfg.gym, cfg.checkpoint, cfg.safety)
    else:  # so do bad task overrides
        from_dict(get_task(task).cfg_cls, cfg.env, "env")
        safety = {"mode": "safety_layer", **to_dict(cfg.safety)}
    out = Path(cfg.out) if cfg.out else ckpt / "eval"
    out.mkdir(parents=True, exist_ok=True)
    seeds = eval_seeds(cfg.seed, cfg.episodes, set(collected))
    cfg_json = json.dumps(to_dict(cfg), sort_keys=True)
    displays = episode_displays(cfg.display, cfg.display_episodes, seeds)
    if parse_display(cfg.display).enabled and parse_display(cfg.display).save is None and cfg.display_episodes:
        from runtime.viz import spawn_viewer

        spawn_viewer()  # once, here: the workers' recordings connect to it
    jobs = [EvalJob(i, s, i < cfg.videos, cfg_json, task, displays[i]) for i, s in enumerate(seeds)]
    records: list[dict[str, Any]] = []
    videos: list[str] = []
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    name = cfg.gym.id if task == "gym" else task
    bar = tqdm(total=len(jobs), desc=f"evaluate {name}", unit="ep", disable=not cfg.progress)
    n_workers = min(cfg.workers, len(jobs))
    try:
        with ctx.Pool(n_workers) as pool:
            for rec in pool.imap_unordered(run_job, jobs):
                frames = rec.pop("frames", None)
                if frames is not None:
                    fps = cfg.gym.control_hz if task == "gym" else float(cfg.env.get("control_hz", 10.0))
                    path = out / "videos" / f"episode_{rec['index']:03d}_seed_{rec['seed']}.mp4"
                    videos.append(str(write_video(path, frames, fps, cfg.video_scale)))
                records.append(rec)
                ok = sum(r["success"] for r in records)
                bar.set_postfix(success=f"{ok}/{len(records)}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
    records.sort(key=lambda r: r["index"])
    summary = summarize(records)
    summary.update(task=task, checkpoint=str(ckpt), latency=str(cfg.latency), seeds_first=seeds[0],
                   seeds_skipped=len(set(range(seeds[0], seeds[-1] + 1)) & set(collected)),
                   env=cfg.env, workers=n_workers, seconds=round(time.perf_counter() - t0, 2), videos=sorted(videos),
                   safety=safety, controller=asdict(cfg.controller), episodes=records)
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "eval.json")
    summary["out"] = str(out)
    return summary


def evaluate_in_training(checkpoint: str | Path, **args: Any) -> dict[str, Any]:
    """``train.eval_hook`` of ``policy.train``: evaluate ``checkpoint`` (a run's ``checkpoints/latest``) with
    ``args`` (EvalConfig keys; default 10 episodes, 1 video, no progress bar); results go to
    ``<run>/eval/step_<N>``. Returns the summary without the per-episode records."""
    from policy.config_utils import from_dict

    ckpt = Path(checkpoint)
    step = json.loads((ckpt / "meta.json").read_text()).get("step", 0)
    base = {"checkpoint": str(ckpt), "episodes": 10, "videos": 1, "progress": False,
            "out": str(ckpt.parent.parent / "eval" / f"step_{step:06d}")}
    summary = evaluate(from_dict(EvalConfig, {**base, **args}))
    summary.pop("episodes")
    return summary


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="evaluate",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        cfg = from_dict(EvalConfig, OmegaConf.to_container(dcfg, resolve=True))
        print(format_summary(evaluate(cfg)))

    _main()


if __name__ == "__main__":
    main()
