"""Pick-and-place: a cube with random position and yaw on the table is picked and placed in a bin.

Success (``info["is_success"]``): the cube's centre lies inside the bin's inner walls and below their
rim, the cube is at rest (speed < ``settle_speed``) and no finger touches it (it was let go).
Score (``info["score"]``): 1 on success, else ``1 - d / d0`` clipped to [0, 0.99], where ``d`` is the
distance (m) from the cube centre to its resting point on the bin floor and ``d0`` that distance at reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from policy.config_utils import need
from sim.env import TableTopConfig, TableTopEnv

BIN_FLOOR_HALF = 0.004  # m, half thickness of the bin floor
BIN_WALL_HALF = 0.005  # m, half thickness of a bin wall


@dataclass
class PickPlaceConfig(TableTopConfig):
    """Task settings (m, rad) on top of the table-top ones."""

    cube_half: float = 0.02  # half edge
    cube_xy_min: tuple[float, float] = (0.32, -0.22)  # cube centre drawn uniformly in this box
    cube_xy_max: tuple[float, float] = (0.55, 0.06)
    cube_yaw: float = math.pi / 4  # yaw drawn in +-cube_yaw (the cube looks the same every 90 degrees)
    bin_xy: tuple[float, float] = (0.45, 0.25)  # bin centre
    bin_jitter: float = 0.0  # uniform jitter of the bin centre per axis
    bin_inner_half: float = 0.065  # half inner width of the square bin
    bin_wall_height: float = 0.05
    settle_speed: float = 0.05  # m/s, the cube counts as at rest below this speed

    def __post_init__(self) -> None:
        super().__post_init__()
        need(0 < self.cube_half < 0.035, f"cube_half must be in (0, 0.035) m to fit the gripper, got {self.cube_half}")
        need(len(self.cube_xy_min) == 2 and len(self.cube_xy_max) == 2
              and all(lo <= hi for lo, hi in zip(self.cube_xy_min, self.cube_xy_max)),
              f"cube_xy_min {self.cube_xy_min} must not exceed cube_xy_max {self.cube_xy_max} (2 entries)")
        need(0 <= self.cube_yaw <= math.pi, f"cube_yaw must be in [0, pi], got {self.cube_yaw}")
        need(self.bin_jitter >= 0, f"bin_jitter must be >= 0, got {self.bin_jitter}")
        need(self.bin_inner_half > 1.5 * self.cube_half,
              f"bin_inner_half ({self.bin_inner_half}) must exceed 1.5 * cube_half ({self.cube_half})")
        need(self.bin_wall_height > self.cube_half,
              f"bin_wall_height ({self.bin_wall_height}) must exceed cube_half ({self.cube_half})")
        need(self.settle_speed > 0, f"settle_speed must be > 0, got {self.settle_speed}")


class PickPlaceEnv(TableTopEnv):
    """Pick the cube, place it in the bin. See the module docstring for success and score."""

    color_geoms = ("table", "cube", "bin_floor", "bin_wall_n", "bin_wall_s", "bin_wall_e", "bin_wall_w", "palm")
    cfg: PickPlaceConfig

    def __init__(self, cfg: PickPlaceConfig | None = None, render_mode: str | None = None):
        super().__init__(cfg, render_mode)
        m = self.model
        self._cube_qadr = m.jnt_qposadr[m.joint("cube").id]
        self._cube_dofadr = m.jnt_dofadr[m.joint("cube").id]
        self._cube_geom = m.geom("cube").id
        self._finger_geoms = {m.geom("finger_l").id, m.geom("finger_r").id}
        self._bin_body = m.body("bin").id
        self._bin_nominal = m.body_pos[self._bin_body].copy()
        self._d0 = 1.0

    @classmethod
    def default_config(cls) -> PickPlaceConfig:
        return PickPlaceConfig()

    def _task_xml(self) -> str:
        c = self.cfg
        h, wh, t, f = c.bin_inner_half, c.bin_wall_height / 2, BIN_WALL_HALF, BIN_FLOOR_HALF
        o = h + t  # wall centre offset from the bin centre
        walls = "\n".join(
            f'<geom name="bin_wall_{n}" type="box" pos="{x} {y} {wh}" size="{sx} {sy} {wh}" rgba="0.2 0.35 0.7 1"/>'
            for n, x, y, sx, sy in (("n", o, 0, t, o + t), ("s", -o, 0, t, o + t),
                                    ("e", 0, o, h, t), ("w", 0, -o, h, t)))
        cx, cy = 0.5 * (np.array(c.cube_xy_min) + np.array(c.cube_xy_max))
        return f"""
    <body name="bin" pos="{c.bin_xy[0]} {c.bin_xy[1]} 0">
      <geom name="bin_floor" type="box" pos="0 0 {f}" size="{h} {h} {f}" rgba="0.25 0.4 0.75 1"/>
      {walls}
    </body>
    <body name="cube" pos="{cx} {cy} {c.cube_half}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{c.cube_half} {c.cube_half} {c.cube_half}" mass="0.05"
            friction="1.2 0.01 0.001" condim="4" rgba="0.85 0.2 0.15 1"/>
    </body>"""

    # ---------------------------------------------------------------- task state

    @property
    def bin_pos(self) -> np.ndarray:
        """(3,) bin centre on the table (m)."""
        return self.model.body_pos[self._bin_body].copy()

    def goal_pos(self) -> np.ndarray:
        """(3,) where the cube centre rests on the bin floor (m)."""
        return self.bin_pos + np.array([0.0, 0.0, 2 * BIN_FLOOR_HALF + self.cfg.cube_half])

    def cube_pose(self) -> tuple[np.ndarray, float]:
        """(position (3,) m, yaw rad) of the cube."""
        a = self._cube_qadr
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, self.data.qpos[a + 3:a + 7])
        return self.data.qpos[a:a + 3].copy(), math.atan2(mat[3], mat[0])

    def place_cube(self, pos, yaw: float) -> None:
        """Teleport the cube to ``pos`` (3,) with ``yaw``, at rest; call ``mujoco.mj_forward`` after."""
        a, v = self._cube_qadr, self._cube_dofadr
        self.data.qpos[a:a + 3] = pos
        self.data.qpos[a + 3:a + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        self.data.qvel[v:v + 6] = 0.0

    def _reset_task(self) -> None:
        c, rng = self.cfg, self.np_random
        self.model.body_pos[self._bin_body] = self._bin_nominal
        if c.bin_jitter > 0:
            self.model.body_pos[self._bin_body, :2] += rng.uniform(-c.bin_jitter, c.bin_jitter, 2)
        xy = rng.uniform(c.cube_xy_min, c.cube_xy_max)
        self.place_cube((xy[0], xy[1], c.cube_half), float(rng.uniform(-c.cube_yaw, c.cube_yaw)))
        self._d0 = max(float(np.linalg.norm(self.data.qpos[self._cube_qadr:self._cube_qadr + 3] - self.goal_pos())),
                       1e-6)

    # ---------------------------------------------------------------- success and score

    def cube_touches_fingers(self) -> bool:
        d, cube, fingers = self.data, self._cube_geom, self._finger_geoms
        pairs = d.contact.geom[:d.ncon]
        return any((g1 == cube and g2 in fingers) or (g2 == cube and g1 in fingers) for g1, g2 in pairs)

    def cube_in_bin(self) -> bool:
        """The cube's centre is inside the inner walls and below the rim (resting or not)."""
        pos, _ = self.cube_pose()
        rel = pos - self.bin_pos
        c = self.cfg
        return bool(np.all(np.abs(rel[:2]) < c.bin_inner_half) and rel[2] < c.bin_wall_height)

    def _evaluate(self) -> tuple[bool, float]:
        v = self._cube_dofadr
        at_rest = float(np.linalg.norm(self.data.qvel[v:v + 3])) < self.cfg.settle_speed
        success = self.cube_in_bin() and at_rest and not self.cube_touches_fingers()
        if success:
            return True, 1.0
        d = float(np.linalg.norm(self.cube_pose()[0] - self.goal_pos()))
        return False, float(np.clip(1.0 - d / self._d0, 0.0, 0.99))
