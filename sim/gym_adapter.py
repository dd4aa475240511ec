"""Any gymnasium environment behind our observation keys and a mapped action space (``task=gym``).

A ``gym:`` config section (``GymConfig``, in configs/collect.yaml and configs/evaluate.yaml) says how:

- ``id``: ``"package.module:EnvClass"`` (a class or factory, called with ``kwargs``) or a registered
  gymnasium id (``"FetchReach-v4"``, ``"package.module:Env-v0"``: ``gymnasium.make(id, **kwargs)``); a
  namespaced id (``"gym_pusht/PushT-v0"``) imports its namespace's module first if it is not registered.
- ``obs``: ``{our_key: source}`` for our keys ``scene_rgb``/``wrist_rgb`` (images) and ``ee_pose``/``gripper``
  (vectors of any length). A source is an entry of a Dict observation (``"pixels"``), a slice of a flat
  entry (``"state[0:3]"``), the whole / a slice of a non-Dict observation (``""``, ``"[0:3]"``) or
  ``"@render"`` (``env.render()``; make the env with ``kwargs: {render_mode: rgb_array}``). Images
  ((H, W), (H, W, 1|3|4), uint8 or float in [0, 1]) are resized to the collection's / the policy's image
  size, bilinear; vectors become float32. Only the mapped keys are emitted.
- ``action``: our (the policy's) action ``a`` (A,) drives the env's ``Box`` (D,) as ``u = fill;
  u[index] = scale * a + offset`` (defaults: all D dimensions in order, scale 1, offset 0, fill 0), so
  our bounds are the Box's mapped back; ``dim`` (if > 0) checks A. ``hold`` (A,) (default: zeros
  clipped to the bounds) is sent before the first chunk arrives, and on every hold when ``on_hold`` is
  ``hold`` (velocity / delta actions); ``on_hold: last`` repeats the last command (absolute targets).
- ``success_key`` / ``score_key``: the env's ``info`` entries for ``info["is_success"]`` and
  ``info["score"]`` (score_key ``""``: 1.0 on success, else 0.0). A missing entry counts as not
  successful; an episode in which the key never appears raises ValueError naming it (a typo).

Collection needs a ``demonstrator: "module:callable"``: ``callable(env)`` gets the adapter (``env.unwrapped``
is the third-party env, ``env.last_raw_obs`` its last raw observation) and returns an object with
``reset(seed)`` and ``act(obs) -> (A,)`` (our keys in, our action space out) and, optionally, ``done``.

Evaluation runs the adapter through the runtime ``Controller`` like our tasks (``sim.gym_drivers``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from policy import keys
from policy.config_utils import need

OUR_KEYS = (*keys.IMAGE_KEYS, *keys.LOWDIM_KEYS)
RENDER = "@render"
_SOURCE = re.compile(r"^(?P<key>[^\[\]]*?)(?:\[(?P<a>\d*):(?P<b>\d*)\])?$")


@dataclass
class GymActionConfig:
    """Our action (A,) -> the env's Box (D,): ``u = fill; u[index] = scale * a + offset``."""

    index: tuple[int, ...] = ()  # env action dims driven by ours, in order; (): all D, identity order
    scale: tuple[float, ...] = ()  # 1 or A entries; (): 1
    offset: tuple[float, ...] = ()  # 1 or A entries; (): 0
    fill: tuple[float, ...] = ()  # D entries for the dims not in index; (): 0
    dim: int = 0  # expected A (0: not checked)
    hold: tuple[float, ...] = ()  # A entries, our space; (): zeros clipped to the bounds
    on_hold: str = "last"  # what a controller hold sends: last (repeat the last command) | hold (the hold action)

    def __post_init__(self) -> None:
        need(all(i >= 0 for i in self.index) and len(set(self.index)) == len(self.index),
              f"gym.action.index must hold distinct indices >= 0, got {list(self.index)}")
        need(all(s != 0 and math.isfinite(s) for s in self.scale), f"gym.action.scale must be finite and non-zero, "
              f"got {list(self.scale)}")
        need(self.dim >= 0, f"gym.action.dim must be >= 0, got {self.dim}")
        need(self.on_hold in ("last", "hold"), f"gym.action.on_hold must be 'last' or 'hold', got {self.on_hold!r}")


@dataclass
class GymConfig:
    """A third-party gymnasium env mapped onto our keys (see the module docstring); ``id`` "" = not used."""

    id: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    obs: dict[str, str] = field(default_factory=dict)  # our key -> source
    action: GymActionConfig = field(default_factory=GymActionConfig)
    success_key: str = "is_success"
    score_key: str = ""
    control_hz: float = 10.0  # the env's step rate: dataset timestamps, controller and video rate
    max_episode_steps: int = 200  # collection and evaluation stop here (or when the env ends the episode)

    def __post_init__(self) -> None:
        for our, src in self.obs.items():
            need(our in OUR_KEYS, f"gym.obs.{our}: unknown key of ours; map onto {', '.join(OUR_KEYS)}")
            m = _SOURCE.match(str(src))
            need(src == RENDER or m is not None, f"gym.obs.{our}: source {src!r} must be 'key', 'key[a:b]', "
                  f"'[a:b]', '' or '{RENDER}'")
            need(src != RENDER or our in keys.IMAGE_KEYS, f"gym.obs.{our}: '{RENDER}' gives an image, not a vector")
        need(not self.id or bool(self.obs), "gym.obs must map at least one observation onto our keys")
        need(bool(self.success_key), "gym.success_key must name the env's success entry in info")
        need(self.control_hz > 0, f"gym.control_hz must be > 0, got {self.control_hz}")
        need(self.max_episode_steps >= 1, f"gym.max_episode_steps must be >= 1, got {self.max_episode_steps}")


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """``"module:attr"`` -> the callable; ValueError naming ``what`` when it cannot be loaded."""
    mod, sep, attr = spec.partition(":")
    need(bool(sep and mod and attr), f"{what}: {spec!r} must be 'module:callable'")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot load {spec!r}: {e}") from e
    need(callable(obj), f"{what}: {spec!r} is not callable")
    return obj


def make_raw_env(cfg: GymConfig) -> gym.Env:
    """The third-party env of ``cfg.id``: ``module:Callable`` called with kwargs, else ``gymnasium.make``."""
    need(bool(cfg.id), "gym.id is empty: name the env ('package.module:EnvClass' or a registered gymnasium id)")
    mod, sep, attr = cfg.id.partition(":")
    if sep:
        try:
            obj = getattr(importlib.import_module(mod), attr, None)
        except ImportError as e:
            raise ValueError(f"gym.id: cannot import {mod!r} of {cfg.id!r}: {e}") from e
        if callable(obj):
            return obj(**cfg.kwargs)
    import_namespace(cfg.id)
    try:
        return gym.make(cfg.id, **cfg.kwargs)
    except gym.error.Error as e:
        raise ValueError(f"gym.id: {cfg.id!r} is neither 'module:callable' nor a registered gymnasium id: {e}") from e


def import_namespace(env_id: str) -> None:
    """For a namespaced id (``"gym_pusht/PushT-v0"``) not registered yet, import the module named before the
    slash, which registers its envs (as ``gymnasium.make("gym_pusht:gym_pusht/PushT-v0")`` would); ValueError
    naming the id and the module when that import fails."""
    namespace, slash, _ = env_id.partition("/")
    if not slash or ":" in env_id or env_id in gym.registry:
        return
    try:
        importlib.import_module(namespace)
    except ImportError as e:
        raise ValueError(f"gym.id: {env_id!r} is not registered and its namespace module {namespace!r} cannot be "
                         f"imported ({e}); install the package that provides it") from e


def resolve_gym(task: str, cfg: GymConfig, info: dict[str, Any], env_overrides: dict[str, Any],
                where: str) -> tuple[str, GymConfig]:
    """(task, mapping) of an evaluation: a non-empty ``cfg.id`` means task gym; task gym with an empty id
    takes the mapping recorded with the demos (``info["gym"]`` of collect_info.json, found at ``where``)."""
    from policy.config_utils import from_dict

    need(not cfg.id or task in ("", "gym"), f"task={task} and gym.id={cfg.id} both given: evaluate one of them")
    task = "gym" if cfg.id else task
    if task == "gym" or (not task and info.get("task") == "gym"):
        need(not env_overrides, "env: task overrides do not apply to task=gym; the env's arguments are gym.kwargs")
        if not cfg.id:
            need(bool(info.get("gym", {}).get("id")), f"gym.id: task=gym, and {where} records no gym mapping")
            cfg = from_dict(GymConfig, info["gym"], "gym")
        task = "gym"
    return task, cfg


def make_gym_env(cfg: GymConfig, image_size: tuple[int, int]) -> GymAdapter:
    """Build the mapped env; images come out (H, W, 3) = ``image_size``."""
    raw = make_raw_env(cfg)
    need(isinstance(raw, gym.Env), f"gym.id: {cfg.id!r} made a {type(raw).__name__}, not a gymnasium.Env")
    try:
        return GymAdapter(raw, cfg, image_size)
    except Exception:
        raw.close()
        raise


def to_image(value: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) uint8 or float [0, 1] -> (size[0], size[1], 3) uint8 (bilinear resize)."""
    a = np.asarray(value)
    if a.ndim == 3 and a.shape[-1] in (1, 4):
        a = a[..., 0] if a.shape[-1] == 1 else a[..., :3]
    need(a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3),
          f"{where}: expected an (H, W) or (H, W, 1|3|4) image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * (255.0 if a.dtype.kind == "f" else 1.0), 0, 255)
        a = np.round(a).astype(np.uint8)
    img = Image.fromarray(a).convert("RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class GymAdapter(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The env with ``spaces.Dict`` observations of our mapped keys, a Box action space in our units,
    and ``info["is_success"]``, ``info["score"]``, ``info["action"]`` (the action applied, our units)."""

    def __init__(self, env: gym.Env, cfg: GymConfig, image_size: tuple[int, int]):
        gym.utils.RecordConstructorArgs.__init__(self, cfg=cfg, image_size=image_size)
        gym.Wrapper.__init__(self, env)
        self.cfg, self.image_size = cfg, (int(image_size[0]), int(image_size[1]))
        self._sources: dict[str, tuple[str | None, slice | None]] = {}
        obs_spaces: dict[str, spaces.Space] = {}
        for our, src in cfg.obs.items():
            self._sources[our], obs_spaces[our] = self._check_source(our, src)
        self.observation_space = spaces.Dict(obs_spaces)
        self._setup_action(cfg.action)
        self.last_obs: dict[str, np.ndarray] | None = None
        self.last_raw_obs: Any = None
        self.reported: set[str] = set()  # success/score keys seen in info since the last reset

    # ---------------------------------------------------------------- mapping

    def _check_source(self, our: str, src: str) -> tuple[tuple[str | None, slice | None], spaces.Space]:
        where, image = f"gym.obs.{our}", our in keys.IMAGE_KEYS
        h, w = self.image_size
        if src == RENDER:
            need(getattr(self.env, "render_mode", None) == "rgb_array",
                  f"{where}: '{RENDER}' needs the env made with render_mode rgb_array (gym.kwargs.render_mode)")
            return (None, None), spaces.Box(0, 255, (h, w, 3), np.uint8)
        m = _SOURCE.match(src)
        key, sliced = m["key"], m["a"] is not None
        space = self.env.observation_space
        if isinstance(space, spaces.Dict):
            need(key in space.spaces, f"{where}: their key {key!r} is not in the observation (keys: "
                  f"{', '.join(space.spaces)})")
            space = space[key]
        else:
            need(key == "", f"{where}: the observation is not a Dict ({space}); name it '' or '[a:b]', not {key!r}")
        need(isinstance(space, spaces.Box), f"{where}: source {src!r} is {space}, not a Box")
        if image:
            need(not sliced and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3, 4))),
                  f"{where}: source {src!r} of shape {space.shape} is not an (H, W[, 1|3|4]) image")
            return (key, None), spaces.Box(0, 255, (h, w, 3), np.uint8)
        size = int(np.prod(space.shape))
        a, b = (int(m["a"] or 0), int(m["b"] or size)) if sliced else (0, size)
        need(0 <= a < b <= size, f"{where}: slice [{a}:{b}] of {src!r} is out of range (size {size})")
        return (key, slice(a, b)), spaces.Box(-np.inf, np.inf, (b - a,), np.float32)

    def _setup_action(self, ac: GymActionConfig) -> None:
        box = self.env.action_space
        need(isinstance(box, spaces.Box), f"gym.action: the env's action space is {box}; only a Box "
              f"(continuous) action space can be mapped")
        self._their_shape, D = box.shape, int(np.prod(box.shape))
        lo, hi = box.low.reshape(-1).astype(np.float64), box.high.reshape(-1).astype(np.float64)
        need(all(i < D for i in ac.index), f"gym.action.index {list(ac.index)} out of range for the env's {D} "
              f"action dims ({box})")
        self._index = np.array(ac.index or range(D), dtype=np.int64)
        A = len(self._index)
        need(ac.dim in (0, A), f"gym.action.dim is {ac.dim}, but the mapped action has {A} dims (env action "
              f"space {box}, index {list(ac.index)})")

        def per_dim(values: tuple[float, ...], n: int, default: float, name: str, one: bool = False) -> np.ndarray:
            need(len(values) in ((0, 1, n) if one else (0, n)),
                  f"gym.action.{name} must have {'1 or ' if one else ''}{n} entries, got {len(values)}")
            return np.broadcast_to(np.asarray(values or [default], np.float64), (n,)).copy()

        self._scale = per_dim(ac.scale, A, 1.0, "scale", one=True)
        self._offset = per_dim(ac.offset, A, 0.0, "offset", one=True)
        self._fill = np.clip(per_dim(ac.fill, D, 0.0, "fill"), lo, hi)
        b1, b2 = (lo[self._index] - self._offset) / self._scale, (hi[self._index] - self._offset) / self._scale
        self.low, self.high = np.minimum(b1, b2), np.maximum(b1, b2)  # (A,) our bounds
        self.action_space = spaces.Box(self.low.astype(np.float32), self.high.astype(np.float32), (A,), np.float32)
        hold = per_dim(ac.hold, A, 0.0, "hold")
        need(bool(np.all(np.isfinite(hold))), f"gym.action.hold must be finite, got {list(ac.hold)}")
        self.hold_action = np.clip(hold, self.low, self.high)

    @property
    def action_dim(self) -> int:
        return len(self._index)

    def clip_action(self, action: Any) -> np.ndarray:
        """(A,) float64 action clipped to our bounds; ValueError for a wrong shape or non-finite values."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        need(a.shape == (self.action_dim,) and bool(np.all(np.isfinite(a))),
              f"action must be {self.action_dim} finite numbers (gym.action), got {action!r}")
        return np.clip(a, self.low, self.high)

    def to_theirs(self, action: np.ndarray) -> np.ndarray:
        """Our (A,) action -> the env's action (its Box shape and dtype)."""
        u = self._fill.copy()
        u[self._index] = self._scale * action + self._offset
        box = self.env.action_space
        return np.clip(u, box.low.reshape(-1), box.high.reshape(-1)).reshape(self._their_shape).astype(box.dtype)

    def _map_obs(self, raw: Any) -> dict[str, np.ndarray]:
        out = {}
        for our, (key, sl) in self._sources.items():
            value = self.env.render() if key is None else raw[key] if key else raw
            if our in keys.IMAGE_KEYS:
                out[our] = to_image(value, self.image_size, f"gym.obs.{our}")
            else:
                out[our] = np.asarray(value, dtype=np.float32).reshape(-1)[sl].copy()
        return out

    def _map_info(self, info: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        self.reported |= {k for k in (c.success_key, c.score_key) if k and k in info}
        success = bool(info.get(c.success_key, False))
        score = float(info.get(c.score_key, float(success))) if c.score_key else float(success)
        return {**info, "is_success": success, "score": score}

    def check_reported(self) -> None:
        """ValueError naming ``gym.success_key``/``score_key`` if it never appeared in info this episode."""
        for name, key in (("success_key", self.cfg.success_key), ("score_key", self.cfg.score_key)):
            need(not key or key in self.reported, f"gym.{name}: {key!r} never appeared in the env's info "
                  f"during an episode; check the key")

    # ---------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        self.reported = set()
        self.last_raw_obs, self.last_obs = raw, self._map_obs(raw)
        return self.last_obs, self._map_info(info)

    def step(self, action: Any):
        a = self.clip_action(action)
        raw, reward, terminated, truncated, info = self.env.step(self.to_theirs(a))
        self.last_raw_obs, self.last_obs = raw, self._map_obs(raw)
        return self.last_obs, float(reward), bool(terminated), bool(truncated), {**self._map_info(info), "action": a}


def rollout_gym(env: GymAdapter, seed: int, demo: Any, extra_steps: int = 3) -> dict[str, Any]:
    """One demonstration, like ``sim.rollout.rollout``: stops when the env ends the episode, ``extra_steps``
    after success (and the demonstrator's ``done``, if it has one), or after ``gym.max_episode_steps``.
    ``actions`` are the actions applied (clipped to the bounds), our units."""
    obs, info = env.reset(seed=seed)
    demo.reset(seed)
    observations, actions, after = [], [], 0
    for _ in range(env.cfg.max_episode_steps):
        observations.append(obs)
        obs, _, terminated, truncated, info = env.step(demo.act(obs))
        actions.append(info["action"].astype(np.float32))
        if info["is_success"] and getattr(demo, "done", True):
            after += 1
        if terminated or truncated or after > extra_steps:
            break
    env.check_reported()
    return {"obs": observations, "actions": np.stack(actions), "success": bool(info["is_success"]),
            "score": float(info["score"]), "steps": len(actions)}
