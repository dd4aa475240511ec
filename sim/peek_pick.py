"""Peek-and-pick: two identical cubes; the one to put in the bin is marked on the face the scene camera cannot see.

Both cubes have the same size, colour and mass. The target cube (MuJoCo body ``cube``, so the pick-place
machinery applies to it) carries a coloured patch, a thin visual-only plate, on its local -x face, the face
turned toward the robot base (cube yaw within +-``cube_yaw`` <= 45 degrees). The scene camera sits far out
at +x and looks back at the robot, so it only ever sees the cubes' top and +x-ish faces: the two cubes look
the same to it and only the wrist camera, which sits behind the TCP and looks forward-down, can tell them
apart (best from a short inspection hover behind the pair, as the scripted demonstrator does). The other
cube (``decoy``) carries an identical plate in the cube's own colour, so the geometry is symmetric.

Randomized per reset: the pair's centre (in ``cube_xy_min``..``cube_xy_max``), the centre distance across
the pair (``pair_gap``, along y) and their offset along x (+-``pair_dx``), each cube's yaw, and on which
side the marked cube lies.

Success (``info["is_success"]``): the marked cube is inside the bin, at rest and let go (as in
pick-and-place) and the decoy is not in the bin.
Score (``info["score"]``): 1 on success, else ``1 - d / d0`` clipped to [0, 0.99] for the marked cube
(``d``: distance from its centre to its resting point on the bin floor, ``d0``: that distance at reset),
halved when the decoy is in the bin or was moved more than ``disturb_tol`` from where it started. Picking
the wrong cube scores 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from policy.config_utils import need
from sim import scene
from sim.demo import Cue, DemoConfig, Grip, PickPlaceDemonstrator
from sim.motion import Wait
from sim.pick_place import PickPlaceConfig, PickPlaceEnv

MARK_HALF_THICKNESS = 0.0005  # m; the mark plate sticks out of its face by this much


@dataclass
class PeekPickConfig(PickPlaceConfig):
    """Task settings (m, rad). ``cube_xy_min``/``cube_xy_max`` bound the centre of the pair here."""

    cube_xy_min: tuple[float, float] = (0.43, -0.13)
    cube_xy_max: tuple[float, float] = (0.53, -0.03)
    cube_yaw: float = math.pi / 6  # each cube's yaw in +-cube_yaw: the marked face stays turned to the robot
    pair_gap: tuple[float, float] = (0.1, 0.13)  # centre distance of the two cubes across the pair (along y)
    pair_dx: float = 0.03  # one cube is offset from the other by up to +-pair_dx along x
    mark_half: float = 0.014  # half edge of the square mark, centred on its face
    mark_rgba: tuple[float, float, float, float] = (0.1, 0.9, 0.2, 1.0)  # green on a red cube
    disturb_tol: float = 0.03  # the decoy counts as moved beyond this distance from its start

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.cube_yaw <= math.pi / 4,
              f"cube_yaw must be <= pi/4 so the marked face stays turned to the robot, got {self.cube_yaw}")
        reach = scene.MAX_WIDTH / 2 + 2 * scene.FINGER_HALF[1] + math.sqrt(2) * self.cube_half
        need(len(self.pair_gap) == 2 and reach <= self.pair_gap[0] <= self.pair_gap[1],
              f"pair_gap {self.pair_gap} must be (lo, hi) with {reach:.3f} m (open fingers + cube) <= lo <= hi")
        need(0 <= self.pair_dx <= self.pair_gap[0] / 2, f"pair_dx must be in [0, pair_gap[0] / 2], got {self.pair_dx}")
        need(0 < self.mark_half < self.cube_half, f"mark_half must be in (0, cube_half), got {self.mark_half}")
        need(len(self.mark_rgba) == 4 and all(0 <= v <= 1 for v in self.mark_rgba) and self.mark_rgba[3] == 1,
              f"mark_rgba must be 4 values in [0, 1] with alpha 1, got {self.mark_rgba}")
        need(self.disturb_tol > 0, f"disturb_tol must be > 0, got {self.disturb_tol}")


class PeekPickEnv(PickPlaceEnv):
    """Pick the marked one of two identical cubes, place it in the bin. See the module docstring."""

    color_geoms = ("table", "cube", "mark", "bin_floor", "bin_wall_n", "bin_wall_s", "bin_wall_e", "bin_wall_w",
                   "palm")
    cfg: PeekPickConfig

    def __init__(self, cfg: PeekPickConfig | None = None, render_mode: str | None = None):
        super().__init__(cfg, render_mode)
        m = self.model
        self._decoy_qadr = m.jnt_qposadr[m.joint("decoy").id]
        self._decoy_dofadr = m.jnt_dofadr[m.joint("decoy").id]
        self._twin_geoms = (m.geom("cube").id, m.geom("decoy").id, m.geom("decoy_mark").id)
        self._decoy_start = np.zeros(3)

    @classmethod
    def default_config(cls) -> PeekPickConfig:
        return PeekPickConfig()

    def _task_xml(self) -> str:
        c = self.cfg
        xml = super()._task_xml()  # the bin and the (marked) cube
        anchor = '<freejoint name="cube"/>'
        if anchor not in xml:
            raise RuntimeError("PickPlaceEnv._task_xml changed: no cube free joint to attach the mark to")
        h, t, mh = c.cube_half, MARK_HALF_THICKNESS, c.mark_half

        def plate(name: str, rgba) -> str:  # visual only: no contacts, no mass
            return (f'<geom name="{name}" type="box" pos="{-h} 0 0" size="{t} {mh} {mh}" mass="0" contype="0" '
                    f'conaffinity="0" rgba="{" ".join(str(v) for v in rgba)}"/>')

        xml = xml.replace(anchor, anchor + "\n      " + plate("mark", c.mark_rgba))
        cx, cy = 0.5 * (np.array(c.cube_xy_min) + np.array(c.cube_xy_max))
        return xml + f"""
    <body name="decoy" pos="{cx} {cy + c.pair_gap[0]} {h}">
      <freejoint name="decoy"/>
      {plate("decoy_mark", (0.85, 0.2, 0.15, 1))}
      <geom name="decoy" type="box" size="{h} {h} {h}" mass="0.05" friction="1.2 0.01 0.001" condim="4"
            rgba="0.85 0.2 0.15 1"/>
    </body>"""

    # ---------------------------------------------------------------- task state

    def decoy_pose(self) -> tuple[np.ndarray, float]:
        """(position (3,) m, yaw rad) of the unmarked cube."""
        a = self._decoy_qadr
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, self.data.qpos[a + 3:a + 7])
        return self.data.qpos[a:a + 3].copy(), math.atan2(mat[3], mat[0])

    def place_decoy(self, pos, yaw: float) -> None:
        """Teleport the unmarked cube to ``pos`` (3,) with ``yaw``, at rest, and count ``decoy_moved`` from there;
        call ``mujoco.mj_forward`` after."""
        a, v = self._decoy_qadr, self._decoy_dofadr
        self.data.qpos[a:a + 3] = pos
        self.data.qpos[a + 3:a + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        self.data.qvel[v:v + 6] = 0.0
        self._decoy_start = np.asarray(pos, float).copy()

    def _randomize_appearance(self) -> None:
        super()._randomize_appearance()
        cube, decoy, decoy_mark = self._twin_geoms  # the twins must look alike whatever the color jitter drew
        self.model.geom_rgba[decoy] = self.model.geom_rgba[decoy_mark] = self.model.geom_rgba[cube]

    def _reset_task(self) -> None:
        c, rng = self.cfg, self.np_random
        self.model.body_pos[self._bin_body] = self._bin_nominal
        if c.bin_jitter > 0:
            self.model.body_pos[self._bin_body, :2] += rng.uniform(-c.bin_jitter, c.bin_jitter, 2)
        centre = rng.uniform(c.cube_xy_min, c.cube_xy_max)
        half_gap = 0.5 * np.array([rng.uniform(-c.pair_dx, c.pair_dx), rng.uniform(*c.pair_gap)])  # (dx, dy) / 2
        side = 1.0 if rng.random() < 0.5 else -1.0  # +1: the marked cube is the one at larger y
        yaws = rng.uniform(-c.cube_yaw, c.cube_yaw, 2)
        marked, decoy = centre + side * half_gap, centre - side * half_gap
        self.place_cube((marked[0], marked[1], c.cube_half), float(yaws[0]))
        self.place_decoy((decoy[0], decoy[1], c.cube_half), float(yaws[1]))
        self._d0 = max(float(np.linalg.norm(self.cube_pose()[0] - self.goal_pos())), 1e-6)

    # ---------------------------------------------------------------- success and score

    def decoy_in_bin(self) -> bool:
        """The unmarked cube's centre is inside the bin's inner walls and below the rim."""
        rel = self.decoy_pose()[0] - self.bin_pos
        return bool(np.all(np.abs(rel[:2]) < self.cfg.bin_inner_half) and rel[2] < self.cfg.bin_wall_height)

    def decoy_moved(self) -> bool:
        """The unmarked cube is more than ``disturb_tol`` from where it was placed."""
        return float(np.linalg.norm(self.decoy_pose()[0] - self._decoy_start)) > self.cfg.disturb_tol

    def _evaluate(self) -> tuple[bool, float]:
        placed, score = super()._evaluate()  # the marked cube, as in pick-and-place
        if placed and not self.decoy_in_bin():
            return True, 1.0
        score = min(score, 0.99)
        return False, 0.5 * score if self.decoy_moved() or self.decoy_in_bin() else score


# ==================================================================== scripted demonstrator


@dataclass
class PeekDemoConfig(DemoConfig):
    """Pick-place demo ranges plus the look at the pair (m, ticks); ``detour_prob`` applies to the way there."""

    other_axis_prob: float = 0.0  # a 90 degree turn would point the wrist camera away from the mark
    inspect_back: tuple[float, float] = (0.09, 0.12)  # TCP this far behind (-x) the pair centre while looking
    inspect_height: tuple[float, float] = (0.085, 0.11)  # TCP height while looking
    inspect_side: float = 0.015  # TCP within +-this (y) of the pair centre while looking
    inspect_ticks: tuple[int, int] = (2, 5)  # ticks spent looking before moving to the marked cube

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("inspect_back", "inspect_height", "inspect_ticks"):
            lo, hi = getattr(self, name)
            need(0 < lo <= hi, f"demo.{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        need(self.inspect_side >= 0, f"demo.inspect_side must be >= 0, got {self.inspect_side}")


class PeekPickDemonstrator(PickPlaceDemonstrator):
    """Pick-place demonstrator that first hovers behind the pair, looks (the wrist camera sees the marks), then
    commits at once: straight to the marked cube, no detour, the grasp yaw kept near the cube's so the wrist
    camera keeps the marked face in view on the way. Retries go straight back to the marked cube."""

    env: PeekPickEnv
    cfg: PeekDemoConfig

    def __init__(self, env, cfg: PeekDemoConfig | None = None, dt: float | None = None):
        super().__init__(env, cfg or PeekDemoConfig(), dt)
        self._looked = False

    def reset(self, seed: int | None = None) -> None:
        self._looked = False
        super().reset(seed)

    def _plan_pick(self) -> None:
        c = self.cfg
        if not self._looked:
            self._looked = True
            self._plan_look()
        cube, cube_yaw = self.env.cube_pose()  # the marked cube
        self.plan.append(Grip(self._u(c.open_width)))
        self._move([cube[0], cube[1], self._u(c.approach_height)], self._grasp_yaw(cube_yaw))
        self._pause()
        self.plan.append(Cue.DESCEND)

    def _plan_look(self) -> None:
        c, rng = self.cfg, self.rng
        pair = 0.5 * (self.env.cube_pose()[0] + self.env.decoy_pose()[0])
        look = np.array([pair[0] - self._u(c.inspect_back), pair[1] + rng.uniform(-c.inspect_side, c.inspect_side),
                         self._u(c.inspect_height)])
        if rng.random() < c.detour_prob:  # a wander on the way there, never after the look
            mid = 0.5 * (self.pos + look)
            via = mid + rng.uniform(-c.detour, c.detour, 3) * np.array([1.0, 1.0, 0.0])
            via[2] = max(mid[2], look[2]) + rng.uniform(0, c.detour)
            self._move(via, None)
            self._pause(0.15)
        self._move(look, None)
        self.plan.append(Wait(int(rng.integers(c.inspect_ticks[0], c.inspect_ticks[1] + 1))))
