"""``TableTopEnv``: the gymnasium base of the table-top tasks (MuJoCo, 10 Hz, absolute EE targets).

Observation (``spaces.Dict``, shared keys of ``policy.keys``):

- ``scene_rgb``, ``wrist_rgb``: (H, W, 3) uint8 from the fixed scene camera and the wrist camera.
- ``ee_pose``: (9,) float32, measured TCP position (m) + 6D rotation, robot base frame.
- ``gripper``: (1,) float32, measured finger width (m).

Action: (10,) float32 absolute target: TCP position (m, 3) + 6D rotation (6) + gripper width (m, 1).
Each ``step`` clips the target to the workspace, moves the mocap toward it by at most ``max_speed`` and
``max_rot_speed`` per control period (in ``n_interp`` increments, so the hand follows smoothly),
sets the finger width and advances the physics by one control period.

Reward = ``info["score"]``; ``terminated`` only on success with ``terminate_on_success``; ``truncated``
after ``max_episode_steps``.

A task subclass supplies its MJCF bodies (``_task_xml``), its random initial state (``_reset_task``),
its success test and score (``_evaluate``) and the geoms whose colors may be randomized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gymnasium as gym
import mujoco  # after ``sim/__init__`` has picked the headless GL backend
import numpy as np
from gymnasium import spaces

from policy import keys
from policy.config_utils import need
from policy.keys import ACTION_LAYOUT as LAYOUT
from runtime.rotation import (
    axis_angle_to_matrix,
    mat3_to_rot6d,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_mat3,
)
from sim import scene

POS_BOUND = np.array([2.0, 2.0, 2.0])  # m, observation-space bound of the measured TCP position


@dataclass
class RandomizationConfig:
    """Domain randomization, drawn at every reset; every amplitude 0 = off (the default)."""

    light: float = 0.0  # relative jitter of the light intensity (0.3: x U(0.7, 1.3)) and its direction
    colors: float = 0.0  # per-channel RGB jitter of the table, objects and gripper (0..1)
    camera_pos: float = 0.0  # m, uniform jitter of the scene camera position per axis
    camera_rot: float = 0.0  # rad, uniform jitter of the scene camera orientation per axis

    def __post_init__(self) -> None:
        for name in ("light", "colors", "camera_pos", "camera_rot"):
            need(getattr(self, name) >= 0, f"randomization.{name} must be >= 0, got {getattr(self, name)}")
        need(self.light < 1, f"randomization.light must be < 1, got {self.light}")


@dataclass
class TableTopConfig:
    """Settings shared by the table-top tasks (SI units)."""

    image_height: int = 96
    image_width: int = 96
    control_hz: float = 10.0
    timestep: float = 0.002  # s, physics step; the control period must be a whole number of them
    n_interp: int = 5  # mocap increments per control period
    max_episode_steps: int = 200  # control steps before ``truncated`` (demos take 70-135)
    terminate_on_success: bool = False
    max_speed: float = 0.5  # m/s, mocap translation limit
    max_rot_speed: float = 3.0  # rad/s, mocap rotation limit
    workspace_min: tuple[float, float, float] = (0.1, -0.45, 0.003)  # m, TCP target box
    workspace_max: tuple[float, float, float] = (0.8, 0.45, 0.5)
    ee_start: tuple[float, float, float] = (0.35, 0.0, 0.25)  # m, TCP at reset (top-down, yaw 0)
    ee_start_jitter: float = 0.02  # m, uniform per axis
    scene_camera_pos: tuple[float, float, float] = scene.SCENE_CAM_POS  # m, fixed scene camera
    scene_camera_lookat: tuple[float, float, float] = scene.SCENE_CAM_LOOKAT  # m, the point it looks at
    scene_camera_fovy: float = scene.SCENE_CAM_FOVY  # deg, vertical field of view
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)

    def __post_init__(self) -> None:
        need(self.image_height > 0 and self.image_width > 0,
              f"image_height/image_width must be > 0, got {self.image_height}x{self.image_width}")
        need(self.control_hz > 0 and self.timestep > 0, "control_hz and timestep must be > 0")
        n = self.n_substeps
        need(n >= 1 and abs(n * self.timestep - 1.0 / self.control_hz) < 1e-9,
              f"1/control_hz ({1 / self.control_hz} s) must be a whole number of timesteps ({self.timestep} s)")
        need(1 <= self.n_interp <= n and n % self.n_interp == 0,
              f"n_interp ({self.n_interp}) must divide the {n} physics steps of a control period")
        need(self.max_episode_steps >= 1, f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        need(self.max_speed > 0 and self.max_rot_speed > 0, "max_speed and max_rot_speed must be > 0")
        need(len(self.workspace_min) == 3 and len(self.workspace_max) == 3
              and all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)),
              f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max} (3 entries)")
        need(len(self.ee_start) == 3 and all(lo <= v <= hi for lo, v, hi in
                                              zip(self.workspace_min, self.ee_start, self.workspace_max)),
              f"ee_start {self.ee_start} must lie inside the workspace")
        need(self.ee_start_jitter >= 0, f"ee_start_jitter must be >= 0, got {self.ee_start_jitter}")
        need(len(self.scene_camera_pos) == 3 and len(self.scene_camera_lookat) == 3
              and any(a != b for a, b in zip(self.scene_camera_pos, self.scene_camera_lookat)),
              f"scene_camera_pos {self.scene_camera_pos} and scene_camera_lookat {self.scene_camera_lookat} must be "
              f"two different 3-D points")
        need(0 < self.scene_camera_fovy < 180,
              f"scene_camera_fovy must be in (0, 180) deg, got {self.scene_camera_fovy}")

    @property
    def n_substeps(self) -> int:
        """Physics steps per control period."""
        return round(1.0 / (self.control_hz * self.timestep))


class TableTopEnv(gym.Env):
    """Base class; see the module docstring. Subclasses set ``color_geoms`` and implement the task hooks."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    color_geoms: tuple[str, ...] = ("table",)  # geoms whose colors ``randomization.colors`` jitters

    def __init__(self, cfg: TableTopConfig | None = None, render_mode: str | None = None):
        self.cfg = cfg = cfg if cfg is not None else self.default_config()
        need(render_mode in (None, "rgb_array"), f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": cfg.control_hz}
        xml = scene.tabletop_xml(self._task_xml(), cfg.ee_start, scene.TOP_DOWN, cfg.timestep,
                                 (cfg.image_height, cfg.image_width),
                                 (cfg.scene_camera_pos, cfg.scene_camera_lookat, cfg.scene_camera_fovy))
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._hand_qadr = m.jnt_qposadr[m.joint("hand").id]
        self._hand_dofadr = m.jnt_dofadr[m.joint("hand").id]
        self._finger_qadr = [m.jnt_qposadr[m.joint(n).id] for n in ("finger_l", "finger_r")]
        self._tcp = m.site("tcp").id
        self._scene_cam = m.camera("scene").id
        self._nominal = {"cam_pos": m.cam_pos.copy(), "cam_quat": m.cam_quat.copy(), "geom_rgba": m.geom_rgba.copy(),
                         "light_diffuse": m.light_diffuse.copy(), "light_dir": m.light_dir.copy()}
        self._renderer: mujoco.Renderer | None = None
        self._lo, self._hi = np.array(cfg.workspace_min), np.array(cfg.workspace_max)
        h, w = cfg.image_height, cfg.image_width
        self.observation_space = spaces.Dict({
            keys.SCENE_RGB: spaces.Box(0, 255, (h, w, 3), np.uint8),
            keys.WRIST_RGB: spaces.Box(0, 255, (h, w, 3), np.uint8),
            keys.EE_POSE: spaces.Box(np.r_[-POS_BOUND, -1.0 * np.ones(6)].astype(np.float32),
                                     np.r_[POS_BOUND, np.ones(6)].astype(np.float32), (keys.EE_POSE_DIM,), np.float32),
            keys.GRIPPER: spaces.Box(0.0, scene.MAX_WIDTH, (keys.GRIPPER_DIM,), np.float32),
        })
        low = np.concatenate([self._lo, -np.ones(6), [0.0]]).astype(np.float32)
        high = np.concatenate([self._hi, np.ones(6), [scene.MAX_WIDTH]]).astype(np.float32)
        self.action_space = spaces.Box(low, high, (keys.ACTION_DIM,), np.float32)
        self._obs_lo, self._obs_hi = self.observation_space[keys.EE_POSE].low, self.observation_space[keys.EE_POSE].high
        self._obs: dict[str, np.ndarray] | None = None
        self._steps = 0

    # ---------------------------------------------------------------- task hooks

    @classmethod
    def default_config(cls) -> TableTopConfig:
        return TableTopConfig()

    def _task_xml(self) -> str:
        """MJCF ``<body>`` elements of the task's objects (world frame)."""
        return ""

    def _reset_task(self) -> None:
        """Place the task's objects from ``self.np_random`` (writes ``self.data``; before ``mj_forward``)."""

    def _evaluate(self) -> tuple[bool, float]:
        """(is_success, score in [0, 1]) of the current state."""
        return False, 0.0

    # ---------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        m, d, rng = self.model, self.data, self.np_random
        mujoco.mj_resetData(m, d)
        self._randomize_appearance()
        pos = np.asarray(self.cfg.ee_start) + rng.uniform(-1, 1, 3) * self.cfg.ee_start_jitter
        self.set_gripper_pose(np.clip(pos, self._lo, self._hi), scene.TOP_DOWN, scene.MAX_WIDTH)
        self._reset_task()
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=self.cfg.n_substeps)  # settle contacts before the first frame
        self._steps = 0
        self._obs = self._observe()
        success, score = self._evaluate()
        return self._obs, {"is_success": success, "score": score}

    def step(self, action: np.ndarray):
        target = self.clip_action(action)
        self._move(target)
        self._steps += 1
        self._obs = self._observe()
        success, score = self._evaluate()
        terminated = bool(success and self.cfg.terminate_on_success)
        truncated = self._steps >= self.cfg.max_episode_steps
        info = {"is_success": success, "score": score, "target": target}
        return self._obs, float(score), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The last scene and wrist frames side by side, (H, 2W, 3) uint8 (``render_mode='rgb_array'``)."""
        if self.render_mode != "rgb_array" or self._obs is None:
            return None
        return np.concatenate([self._obs[keys.SCENE_RGB], self._obs[keys.WRIST_RGB]], axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---------------------------------------------------------------- actions

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        """The (10,) float64 target the env will move toward: position clipped to the workspace, rotation
        re-orthonormalized (a degenerate 6D keeps the current orientation), width clipped to [0, max]."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (keys.ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {keys.ACTION_DIM} finite numbers, got {action!r}")
        try:
            r6 = mat3_to_rot6d(rot6d_to_mat3(a[LAYOUT.rotation]))  # pure Python: ~10x faster than numpy on 3-vectors
        except ValueError:  # degenerate 6D
            mat = np.zeros(9)
            mujoco.mju_quat2Mat(mat, self.data.mocap_quat[0])
            r6 = matrix_to_rot6d(mat.reshape(3, 3))
        width = np.clip(a[LAYOUT.width], 0.0, scene.MAX_WIDTH)
        return np.concatenate([np.clip(a[LAYOUT.position], self._lo, self._hi), r6, [width]])

    def _move(self, target: np.ndarray) -> None:
        """Drive the mocap toward ``target`` (speed-limited, in increments) over one control period."""
        m, d, cfg = self.model, self.data, self.cfg
        dt = 1.0 / cfg.control_hz
        p0 = d.mocap_pos[0].copy()
        r0 = np.zeros(9)
        mujoco.mju_quat2Mat(r0, d.mocap_quat[0])
        r0 = r0.reshape(3, 3)
        dp = target[LAYOUT.position] - p0
        dist = np.linalg.norm(dp)
        if dist > cfg.max_speed * dt:
            dp *= cfg.max_speed * dt / dist
        aa = matrix_to_axis_angle(np.reshape(rot6d_to_mat3(target[LAYOUT.rotation]), (3, 3)) @ r0.T)
        angle = np.linalg.norm(aa)
        if angle > cfg.max_rot_speed * dt:
            aa *= cfg.max_rot_speed * dt / angle
        d.ctrl[0] = target[LAYOUT.width] / 2  # half width per finger
        quat = np.zeros(4)
        for i in range(1, cfg.n_interp + 1):
            f = i / cfg.n_interp
            d.mocap_pos[0] = p0 + f * dp
            mujoco.mju_mat2Quat(quat, (axis_angle_to_matrix(f * aa) @ r0).reshape(-1))
            d.mocap_quat[0] = quat
            mujoco.mj_step(m, d, nstep=cfg.n_substeps // cfg.n_interp)

    def set_gripper_pose(self, pos: np.ndarray, rot: np.ndarray, width: float) -> None:
        """Teleport mocap and hand to TCP pose (pos (3,) m, rot (3, 3)) with the fingers at ``width`` (m)."""
        d, quat = self.data, np.zeros(4)
        mujoco.mju_mat2Quat(quat, np.asarray(rot, float).reshape(-1))
        d.mocap_pos[0], d.mocap_quat[0] = pos, quat
        a = self._hand_qadr
        d.qpos[a:a + 3], d.qpos[a + 3:a + 7] = pos, quat
        v = self._hand_dofadr
        d.qvel[v:v + 6] = 0
        for adr in self._finger_qadr:
            d.qpos[adr] = width / 2
        d.ctrl[0] = width / 2

    # ---------------------------------------------------------------- observations

    @property
    def renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            try:
                self._renderer = r = mujoco.Renderer(self.model, self.cfg.image_height, self.cfg.image_width)
            except Exception as e:
                raise RuntimeError(f"cannot open a headless MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r})"
                                   f": install libegl1 (or libosmesa6), and import sim before mujoco or set "
                                   f"MUJOCO_GL=egl yourself") from e
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                r.scene.flags[flag] = False
        return self._renderer

    def render_camera(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 image of a named camera (``scene`` or ``wrist``) for the current state."""
        r = self.renderer
        r.update_scene(self.data, camera=camera)
        return r.render()

    def ee_pose(self) -> np.ndarray:
        """(9,) float64 measured TCP position (m) + 6D rotation."""
        d = self.data
        return np.concatenate([d.site_xpos[self._tcp], matrix_to_rot6d(d.site_xmat[self._tcp].reshape(3, 3))])

    def gripper_width(self) -> float:
        """Measured finger width (m)."""
        return float(sum(self.data.qpos[a] for a in self._finger_qadr))

    def _observe(self) -> dict[str, np.ndarray]:
        width = np.clip(self.gripper_width(), 0.0, scene.MAX_WIDTH)
        return {
            keys.SCENE_RGB: self.render_camera("scene"),
            keys.WRIST_RGB: self.render_camera("wrist"),
            keys.EE_POSE: np.clip(self.ee_pose(), self._obs_lo, self._obs_hi).astype(np.float32),
            keys.GRIPPER: np.array([width], dtype=np.float32),
        }

    @property
    def last_obs(self) -> dict[str, np.ndarray] | None:
        """The observation returned by the last ``reset``/``step`` (None before the first reset)."""
        return self._obs

    # ---------------------------------------------------------------- domain randomization

    def _randomize_appearance(self) -> None:
        """Restore the nominal look, then jitter it per ``cfg.randomization`` (no draws when all are 0)."""
        m, rc, rng = self.model, self.cfg.randomization, self.np_random
        m.cam_pos[:], m.cam_quat[:] = self._nominal["cam_pos"], self._nominal["cam_quat"]
        m.geom_rgba[:] = self._nominal["geom_rgba"]
        m.light_diffuse[:], m.light_dir[:] = self._nominal["light_diffuse"], self._nominal["light_dir"]
        if rc.light > 0:
            m.light_diffuse[:] *= rng.uniform(1 - rc.light, 1 + rc.light, (m.nlight, 1))
            ldir = m.light_dir + rng.uniform(-rc.light, rc.light, m.light_dir.shape)
            m.light_dir[:] = ldir / np.linalg.norm(ldir, axis=1, keepdims=True)
        if rc.colors > 0:
            for name in self.color_geoms:
                g = m.geom(name).id
                m.geom_rgba[g, :3] = np.clip(m.geom_rgba[g, :3] + rng.uniform(-rc.colors, rc.colors, 3), 0, 1)
        c = self._scene_cam
        if rc.camera_pos > 0:
            m.cam_pos[c] += rng.uniform(-rc.camera_pos, rc.camera_pos, 3)
        if rc.camera_rot > 0:
            q, out = np.zeros(4), np.zeros(4)
            mujoco.mju_axisAngle2Quat(q, *_axis_angle(rng.uniform(-rc.camera_rot, rc.camera_rot, 3)))
            mujoco.mju_mulQuat(out, q, m.cam_quat[c])
            m.cam_quat[c] = out


def _axis_angle(v: np.ndarray) -> tuple[np.ndarray, float]:
    angle = float(np.linalg.norm(v))
    return (v / angle if angle > 0 else np.array([0.0, 0.0, 1.0])), angle
