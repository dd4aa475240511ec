"""Collect scripted demonstrations into a zarr replay buffer, in parallel.

``python -m sim.collect task=pick_place episodes=N out=<dir.zarr> [workers=2] [seed=0] [keep_failed=false]``
``python -m sim.collect gym.id=<module:Env or gymnasium id> demonstrator=<module:callable> out=... [gym.obs=...]``

Episodes with seeds ``seed, seed+1, ...`` are rolled out by the scripted demonstrator in a
``multiprocessing`` spawn pool of ``workers`` processes (each builds its env once). The parent appends
finished episodes to the buffer in seed order (out-of-order results wait in memory), keeping only the
successful ones unless ``keep_failed``. Every attempted seed is recorded in ``<out>/collect_seeds.json``
(a sorted JSON list, merged over appends) so that evaluation can avoid them, and the task with its image
size in ``<out>/collect_info.json`` (evaluation finds the task there; appending another task is refused).

On a built-in task the env executes the demonstrator's target plus smooth DART noise on its position
(``action_noise``, by default ``DEFAULT_ACTION_NOISE``; Laskey et al. 2017) while the buffer records the
demonstrator's own target, so the demos show how to recover from small deviations; ``action_noise=[0,0,0]``
collects clean demos. The setting is kept in ``collect_info.json``; appending with another one is refused.

An episode holds, per control tick t (T ticks): ``scene_rgb``/``wrist_rgb`` (T, H, W, 3) uint8 and
``ee_pose`` (T, 9), ``gripper`` (T, 1) float32 observed before the action, ``action`` (T, 10) float32
the action applied at tick t, and ``timestamp`` (T,) float64 = t / control_hz (s, from the episode start).

``task=gym`` (or a non-empty ``gym.id``) collects from a third-party gymnasium env mapped onto our keys by
the ``gym`` section (``sim.gym_adapter``), with the ``demonstrator`` named as ``module:callable``: the
episodes then hold the mapped keys only (vectors of the mapped sizes), ``action`` in the mapped action
space, and ``timestamp`` = t / gym.control_hz. ``demonstrator`` also replaces a task's scripted one.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policy import keys
from policy.data.replay_buffer import DatasetError, ReplayBuffer
from sim.gym_adapter import GymConfig

SEEDS_FILE = "collect_seeds.json"
INFO_FILE = "collect_info.json"  # {"task": ..., "image_height": ..., "image_width": ..., "env", "gym"}
GYM = "gym"  # the task name of a mapped third-party env
# The built-in tasks' DART noise (m, x y z): with it Push-T went from 59 % to 67 % at 60 CPU-minutes (300 seeds) and
# the chunk-switch jumps halved, while the demonstrator still succeeds 99/100 (README, "Learning per CPU-minute")
DEFAULT_ACTION_NOISE = (0.005, 0.005, 0.002)
EPISODE_KEYS = (keys.SCENE_RGB, keys.WRIST_RGB, keys.EE_POSE, keys.GRIPPER, keys.ACTION, keys.TIMESTAMP)


@dataclass
class CollectConfig:
    """What to collect and where; ``image_height``/``image_width`` (pixels) go to the task config."""

    task: str = "pick_place"
    episodes: int = 100  # episodes attempted (seeds seed .. seed + episodes - 1)
    out: str = ""  # replay buffer folder (created, or appended to when it is one)
    workers: int = 2  # spawn processes rolling out episodes
    seed: int = 0  # first episode seed
    keep_failed: bool = False  # also store episodes where the task did not succeed
    image_height: int = 96
    image_width: int = 96
    env: dict[str, Any] = field(default_factory=dict)  # task config overrides, e.g. {randomization: {light: 0.3}}
    demonstrator: str = ""  # "module:callable"(env) -> demonstrator; required for task=gym, else the task's own
    # DART noise injection: std (m, x y z) of smooth AR(1) noise on the executed target position; the recorded
    # action stays the demonstrator's. null: DEFAULT_ACTION_NOISE on a built-in task, off for task=gym; [0, 0, 0]: off
    action_noise: list[float] | None = None
    action_noise_rho: float = 0.8  # the noise's correlation from one tick to the next, in [0, 1)
    gym: GymConfig = field(default_factory=GymConfig)  # a third-party env (task=gym, or any non-empty gym.id)

    def __post_init__(self) -> None:
        from sim.tasks import TASKS

        if self.gym.id:
            self.task = GYM
        if self.task == GYM:
            if not self.gym.id:
                raise ValueError("gym.id: task=gym needs gym.id=<module:EnvClass or a registered gymnasium id>")
            if not self.demonstrator:
                raise ValueError("demonstrator: task=gym needs demonstrator=<module:callable>(env) -> demonstrator")
            if self.env:
                raise ValueError("env: task overrides do not apply to task=gym; pass the env's arguments as gym.kwargs")
            if self.action_noise is None:
                self.action_noise = [0.0, 0.0, 0.0]
            if any(self.action_noise):
                raise ValueError("action_noise: noise injection needs a built-in task (the position part of a mapped "
                                 "env's action is not known); leave it at [0, 0, 0] for task=gym")
        elif self.task not in TASKS:
            raise ValueError(f"task: unknown task {self.task!r}; known: {', '.join(sorted(TASKS))}, {GYM}")
        elif self.action_noise is None:
            self.action_noise = list(DEFAULT_ACTION_NOISE)
        if self.demonstrator and self.demonstrator.count(":") != 1:
            raise ValueError(f"demonstrator must be 'module:callable', got {self.demonstrator!r}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not self.out:
            raise ValueError("out must name the replay buffer folder (out=<dir.zarr>)")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if {"image_height", "image_width"} & set(self.env):
            raise ValueError("env.image_height/env.image_width: set the top-level image_height/image_width instead")
        from policy.config_utils import from_dict

        if self.task != GYM:  # unknown or bad env keys fail here, in the parent
            from_dict(TASKS[self.task].cfg_cls, {**self.env, "image_height": self.image_height,
                                                 "image_width": self.image_width}, "env")
        from sim.rollout import ActionNoise

        ActionNoise(self.action_noise, self.action_noise_rho)  # bad values fail here, in the parent
        if self.image_height < 1 or self.image_width < 1:
            raise ValueError(f"image_height/image_width must be >= 1, got {self.image_height}x{self.image_width}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.episodes))


# ----------------------------------------------------------------- worker side

@functools.cache
def collect_worker(cfg_json: str) -> tuple[CollectConfig, Any]:
    """The process's (config, env) for ``cfg_json`` (``CollectConfig`` as JSON), built on its first episode
    (where errors reach the parent; an exception in a pool initializer would respawn workers forever)."""
    from policy.config_utils import from_dict

    cfg = from_dict(CollectConfig, json.loads(cfg_json))
    return cfg, make_collect_env(cfg)


def make_collect_env(cfg: CollectConfig) -> Any:
    """The env ``cfg`` collects from: the task's, or the mapped third-party env for task=gym."""
    size = (cfg.image_height, cfg.image_width)
    if cfg.task == GYM:
        from sim.gym_adapter import make_gym_env

        return make_gym_env(cfg.gym, size)
    from sim.tasks import make_env

    return make_env(cfg.task, {**cfg.env, "image_height": size[0], "image_width": size[1]})


def rollout_episode(env: Any, seed: int, demo: Any = None,
                    noise: Any = None) -> tuple[int, bool, dict[str, np.ndarray]]:
    """One demonstration from ``seed`` (``demo``: default the task's scripted demonstrator; required for a
    mapped env; ``noise``: a ``sim.rollout.ActionNoise`` on the executed actions of a built-in task): (seed,
    success, episode dict of the observation keys, ``action`` and ``timestamp``)."""
    from sim.gym_adapter import GymAdapter, rollout_gym

    if isinstance(env, GymAdapter):
        res, hz = rollout_gym(env, seed, demo), env.cfg.control_hz
    else:
        from sim.rollout import rollout

        res, hz = rollout(env, seed, demo, noise=noise), env.unwrapped.cfg.control_hz
    obs = res["obs"]
    episode = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    episode[keys.ACTION] = np.asarray(res["actions"], dtype=np.float32)
    episode[keys.TIMESTAMP] = np.arange(len(obs), dtype=np.float64) / hz
    return seed, bool(res["success"]), episode


def collect_one(job: tuple[int, str]) -> tuple[int, bool, dict[str, np.ndarray]]:
    """Pool job: the demonstration of seed ``job[0]`` on this process's ``collect_worker(job[1])``."""
    seed, cfg_json = job
    cfg, env = collect_worker(cfg_json)
    demo = None
    if cfg.demonstrator:
        from sim.gym_adapter import load_callable

        demo = load_callable(cfg.demonstrator, "demonstrator")(env)
    noise = None
    if any(cfg.action_noise):
        from sim.rollout import ActionNoise

        noise = ActionNoise(cfg.action_noise, cfg.action_noise_rho)
    return rollout_episode(env, seed, demo, noise)


def episode_spec(cfg: CollectConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (frame shape, dtype)} of the episodes ``cfg`` records; for task=gym the env is built once here
    (in the parent), so a bad mapping or demonstrator fails before any worker starts."""
    from sim.gym_adapter import load_callable

    if cfg.demonstrator:
        load_callable(cfg.demonstrator, "demonstrator")
    img = (cfg.image_height, cfg.image_width, 3)
    if cfg.task != GYM:
        return {keys.SCENE_RGB: (img, "uint8"), keys.WRIST_RGB: (img, "uint8"), keys.EE_POSE: ((keys.EE_POSE_DIM,),
                "float32"), keys.GRIPPER: ((keys.GRIPPER_DIM,), "float32"), keys.ACTION: ((keys.ACTION_DIM,),
                "float32"), keys.TIMESTAMP: ((), "float64")}
    env = make_collect_env(cfg)
    try:
        spec = {k: (tuple(s.shape), str(s.dtype)) for k, s in env.observation_space.spaces.items()}
        spec[keys.ACTION] = ((env.action_dim,), "float32")
    finally:
        env.close()
    return {**spec, keys.TIMESTAMP: ((), "float64")}


# ----------------------------------------------------------------- parent side


def _open_buffer(cfg: CollectConfig, spec: dict[str, tuple[tuple[int, ...], str]]) -> ReplayBuffer:
    """Open ``cfg.out`` for appending; DatasetError when it exists but is not a replay buffer with ``spec``."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"out={out}: exists and is not a folder (refusing to overwrite it)")
    try:
        rb = ReplayBuffer.open(out, "a")
    except DatasetError as e:
        raise DatasetError(f"out={out}: exists and is not a replay buffer; choose a new path ({e})") from e
    if rb.n_episodes > 0:
        if set(rb.keys) != set(spec):
            raise DatasetError(f"out={out}: cannot append, its keys {rb.keys} differ from {sorted(spec)}")
        try:
            rb.validate(spec)
        except DatasetError as e:
            raise DatasetError(f"out={out}: cannot append, the stored frames differ from this config: {e}") from e
    return rb


def _write_seeds(out: Path, seeds: list[int]) -> None:
    """Merge ``seeds`` into ``<out>/collect_seeds.json`` (sorted, unique), atomically."""
    path = out / SEEDS_FILE
    old = json.loads(path.read_text()) if path.is_file() else []
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sorted(set(old) | set(seeds))))
    tmp.replace(path)


def _write_info(out: Path, cfg: CollectConfig) -> None:
    """Record the task of the buffer; refuse to mix tasks in one buffer."""
    from policy.config_utils import to_dict

    info = {"task": cfg.task, "image_height": cfg.image_height, "image_width": cfg.image_width, "env": cfg.env}
    if any(cfg.action_noise):
        info.update(action_noise=list(cfg.action_noise), action_noise_rho=cfg.action_noise_rho)
    if cfg.task == GYM:
        info.update(gym=to_dict(cfg.gym), demonstrator=cfg.demonstrator)
    old = read_info(out)
    if old and old.get("task") != cfg.task:
        raise DatasetError(f"out={out}: holds demos of task {old.get('task')!r}, not {cfg.task!r}; choose a new path")
    noise = (info.get("action_noise"), info.get("action_noise_rho"))
    if old and (old.get("action_noise"), old.get("action_noise_rho")) != noise:
        raise DatasetError(f"out={out}: holds demos collected with action_noise {old.get('action_noise')} (rho "
                           f"{old.get('action_noise_rho')}), not {noise[0]} (rho {noise[1]}); choose a new path, or "
                           f"collect with the same action_noise ([0, 0, 0] for demos collected without it)")
    if old and cfg.task == GYM and old.get("gym", {}).get("id") != cfg.gym.id:
        raise DatasetError(f"out={out}: holds demos of gym env {old.get('gym', {}).get('id')!r}, not {cfg.gym.id!r}")
    tmp = out / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(out / INFO_FILE)


def read_info(out: str | Path) -> dict[str, Any]:
    """The collection info of the buffer at ``out`` ({} when none is recorded)."""
    path = Path(out) / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_seeds(out: str | Path) -> list[int]:
    """The seeds used to collect the buffer at ``out`` ([] when none are recorded)."""
    path = Path(out) / SEEDS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect ``cfg.episodes`` demonstrations into ``cfg.out``; returns a summary dict."""
    from tqdm import tqdm

    from policy.config_utils import to_dict

    rb = _open_buffer(cfg, episode_spec(cfg))
    out = Path(cfg.out)
    _write_info(out, cfg)
    seeds = cfg.seeds
    pending: dict[int, tuple[bool, dict[str, np.ndarray]]] = {}
    done: list[int] = []
    successes = kept = steps = 0
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    name = cfg.gym.id if cfg.task == GYM else cfg.task
    bar = tqdm(total=len(seeds), desc=f"collect {name}", unit="ep", disable=not progress)
    try:
        cfg_json = json.dumps(to_dict(cfg), sort_keys=True)
        with ctx.Pool(min(cfg.workers, len(seeds))) as pool:
            for seed, success, episode in pool.imap_unordered(collect_one, [(s, cfg_json) for s in seeds]):
                pending[seed] = (success, episode)
                while seeds[len(done)] in pending:  # append in seed order
                    s = seeds[len(done)]
                    ok, ep = pending.pop(s)
                    successes += ok
                    if ok or cfg.keep_failed:
                        rb.add_episode(ep)
                        kept += 1
                        steps += len(ep[keys.ACTION])
                    done.append(s)
                    bar.set_postfix(success=f"{successes}/{len(done)}", kept=kept, refresh=False)
                    bar.update(1)
                    if len(done) == len(seeds):
                        break
    finally:
        bar.close()
        if done:
            _write_seeds(out, done)
    return {"out": str(out), "attempted": len(done), "kept": kept, "successes": successes,
            "success_rate": successes / max(len(done), 1), "steps": steps,
            "seconds": round(time.perf_counter() - t0, 2), "n_episodes_total": rb.n_episodes}


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "configs"), config_name="collect",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        cfg = from_dict(CollectConfig, OmegaConf.to_container(dcfg, resolve=True))
        print(collect(cfg))

    _main()


if __name__ == "__main__":
    main()
