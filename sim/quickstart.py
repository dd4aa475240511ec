"""The main job: collect demos of a simulated task, train the default CPU policy, evaluate it.

``python -m sim.quickstart [task=pick_place] [demos=100] [train_minutes=15] [out_dir=runs/quickstart]``

1. ``sim.collect``: ``demos`` scripted demonstrations into ``<out_dir>/demos.zarr`` (reused when it
   already holds them: a second run skips straight to training).
2. ``policy.train``: the ``policy`` config (default ``cpu_default``) for ``train_minutes`` of training
   time, the learning rate decaying over that budget; ``<out_dir>/train`` (a finished run is reused, an
   interrupted one resumed).
3. ``sim.evaluate``: ``eval_episodes`` unseen seeds through the runtime controller on the simulated
   clock; prints the success rate with its 95 % interval and the paths of the videos.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.config import Config, PolicyConfig, TrainConfig

log = logging.getLogger("sim.quickstart")


@dataclass
class QuickstartConfig:
    task: str = "pick_place"
    demos: int = 100  # scripted demonstrations to collect
    train_minutes: float = 15.0  # training-time budget
    eval_episodes: int = 50
    videos: int = 2
    workers: int = 2  # processes for collection and evaluation
    out_dir: str = "runs/quickstart"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: dict[str, Any] = field(default_factory=dict)  # extra TrainConfig keys (e.g. batch_size, lr)

    def __post_init__(self) -> None:
        from sim.tasks import get_task

        get_task(self.task)
        if self.demos < 1 or self.eval_episodes < 1 or self.workers < 1:
            raise ValueError(f"demos, eval_episodes and workers must be >= 1, got {self.demos}, "
                             f"{self.eval_episodes}, {self.workers}")
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes must be > 0, got {self.train_minutes}")
        reserved = {"dataset", "out_dir", "max_minutes", "resume"} & set(self.train)
        if reserved:
            raise ValueError(f"train.{sorted(reserved)[0]} is set by the quickstart itself; use the top-level keys")


def _collect(cfg: QuickstartConfig, out: Path) -> dict[str, Any]:
    from policy.config_utils import from_dict
    from policy.data.replay_buffer import ReplayBuffer
    from sim.collect import CollectConfig, collect, read_info

    data = out / "demos.zarr"
    if data.is_dir() and read_info(data).get("task") == cfg.task:
        n = ReplayBuffer.open(data).n_episodes
        if n >= cfg.demos:
            print(f"[1/3] reusing {n} demos in {data}")
            return {"kept": n, "seconds": 0.0}
    h, w = cfg.policy.image_shape
    print(f"[1/3] collecting {cfg.demos} demos of {cfg.task} into {data}")
    ccfg = from_dict(CollectConfig, {"task": cfg.task, "episodes": cfg.demos, "out": str(data),
                                     "workers": cfg.workers, "image_height": h, "image_width": w})
    return collect(ccfg)


def _train(cfg: QuickstartConfig, out: Path) -> Path:
    from policy.checkpoint import CheckpointError, resolve_checkpoint_dir
    from policy.config_utils import from_dict
    from policy.train import train

    run = out / "train"
    tcfg = {"steps": 1_000_000, "ckpt_every": 500, "val_every": 500, **cfg.train,
            "dataset": str(out / "demos.zarr"), "out_dir": str(run), "max_minutes": cfg.train_minutes}
    try:
        ckpt = resolve_checkpoint_dir(run)
        state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").is_file() else {}
        if state.get("train_seconds", 0.0) >= cfg.train_minutes * 60:
            print(f"[2/3] reusing the trained policy in {ckpt}")
            return ckpt
        tcfg["resume"] = True
        print(f"[2/3] resuming training in {run}")
    except CheckpointError:  # no checkpoint yet: a new run
        print(f"[2/3] training the {cfg.policy.encoder.backbone} policy for {cfg.train_minutes:g} min in {run}")
    return train(Config(policy=cfg.policy, train=from_dict(TrainConfig, tcfg, "train")))


def quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    from policy.config_utils import from_dict
    from sim.evaluate import EvalConfig, evaluate
    from sim.report import format_summary

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    _collect(cfg, out)
    times["collect_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt = _train(cfg, out)
    times["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    print(f"[3/3] evaluating {ckpt} on {cfg.eval_episodes} unseen seeds")
    summary = evaluate(from_dict(EvalConfig, {"checkpoint": str(ckpt), "episodes": cfg.eval_episodes,
                                              "workers": cfg.workers, "videos": cfg.videos,
                                              "out": str(out / "eval")}))
    times["evaluate_s"] = time.perf_counter() - t0
    print(format_summary(summary))
    print("time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in times.items()))
    summary["times"] = times
    return summary


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="quickstart",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        quickstart(from_dict(QuickstartConfig, OmegaConf.to_container(dcfg, resolve=True)))

    _main()


if __name__ == "__main__":
    main()
