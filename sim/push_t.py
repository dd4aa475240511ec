"""Push-T: push a T-shaped block across the table onto a fixed target outline.

The block is two boxes (the bar and the stem) on a body with joints slide x, slide y, slide z and hinge
z, so it slides and turns on the table but never tips; it rests on the table under gravity and the
friction of its box-on-table contacts makes pushing quasi-static (it stops within about a millimetre
once the pusher lets go). The body frame sits on the table at the T's centroid, with the bar along
local x at local +y and the stem toward local -y, so the block pose is ``(x, y, yaw)`` = the joint
values. The gripper pushes with closed fingers (a 2 x 2 cm pad) at a low height; its palm clears the
block. The goal is a thin, flat, visual-only T (no contacts) at a fixed pose.

Score (``info["score"]``): the overlap, the area of the T at its current pose intersected with the T
at the goal pose, divided by the T's area (exact polygon clipping in 2D, in [0, 1]).
Success (``info["is_success"]``): overlap >= ``success_overlap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from policy.config_utils import need
from sim.env import TableTopConfig, TableTopEnv


@dataclass
class PushTConfig(TableTopConfig):
    """Task settings (m, rad, kg) on top of the table-top ones."""

    max_episode_steps: int = 300  # demos take 55-245 steps, 130 on average
    ee_start: tuple[float, float, float] = (0.25, 0.0, 0.1)  # behind the block region, above it
    bar_length: float = 0.14  # the T's top bar (also its overall height with the defaults)
    arm_width: float = 0.035  # width of the bar and of the stem
    stem_length: float = 0.105  # the stem below the bar
    block_height: float = 0.03
    block_mass: float = 0.15
    block_friction: float = 1.5  # sliding friction of every block contact (table, fingers): its geoms have priority
    block_damping: float = 0.2  # N s/m on the slides (N m s/rad on the hinge x 0.01)
    goal_xy: tuple[float, float] = (0.5, 0.0)  # fixed goal pose of the T's centroid
    goal_yaw: float = math.pi / 4
    init_xy_min: tuple[float, float] = (0.4, -0.15)  # initial centroid drawn uniformly in this box
    init_xy_max: tuple[float, float] = (0.62, 0.15)
    init_yaw: float = math.pi / 2  # initial yaw drawn in goal_yaw +- init_yaw
    max_init_overlap: float = 0.5  # initial poses overlapping the goal more than this are drawn again
    init_clearance: float = 0.05  # min distance of the block from the gripper's xy at reset
    success_overlap: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        need(0 < self.arm_width < self.bar_length, f"arm_width must be in (0, bar_length), got {self.arm_width}")
        need(self.arm_width >= 0.025, f"arm_width must be >= 0.025 m (the pusher is 2 cm), got {self.arm_width}")
        need(self.bar_length <= 0.25, f"bar_length must be <= 0.25 m, got {self.bar_length}")
        need(self.stem_length > 0, f"stem_length must be > 0, got {self.stem_length}")
        need(0.01 <= self.block_height <= 0.035,
              f"block_height must be in [0.01, 0.035] m so the palm clears it, got {self.block_height}")
        need(self.block_mass > 0, f"block_mass must be > 0, got {self.block_mass}")
        need(self.block_friction > 0 and self.block_damping >= 0,
              f"block_friction must be > 0 and block_damping >= 0, got {self.block_friction}, {self.block_damping}")
        need(len(self.goal_xy) == 2, f"goal_xy must have 2 entries, got {self.goal_xy}")
        need(len(self.init_xy_min) == 2 and len(self.init_xy_max) == 2
              and all(lo <= hi for lo, hi in zip(self.init_xy_min, self.init_xy_max)),
              f"init_xy_min {self.init_xy_min} must not exceed init_xy_max {self.init_xy_max} (2 entries)")
        need(0 <= self.init_yaw <= math.pi, f"init_yaw must be in [0, pi], got {self.init_yaw}")
        need(0 < self.max_init_overlap < 1, f"max_init_overlap must be in (0, 1), got {self.max_init_overlap}")
        need(self.init_clearance >= 0, f"init_clearance must be >= 0, got {self.init_clearance}")
        need(0 < self.success_overlap <= 1, f"success_overlap must be in (0, 1], got {self.success_overlap}")


# ---------------------------------------------------------------- T geometry (2D, metres)


def t_rects(cfg: PushTConfig) -> np.ndarray:
    """(2, 4, 2) the bar's and the stem's corners (counter-clockwise) in the body frame (centroid origin)."""
    half, a, s = cfg.bar_length / 2, cfg.arm_width, cfg.stem_length
    bar = np.array([[-half, s], [half, s], [half, s + a], [-half, s + a]])
    stem = np.array([[-a / 2, 0.0], [a / 2, 0.0], [a / 2, s], [-a / 2, s]])
    rects = np.stack([bar, stem])
    rects[..., 1] -= t_centroid_y(cfg)
    return rects


def t_centroid_y(cfg: PushTConfig) -> float:
    """Height (m) of the T's centroid above the stem's end."""
    a, s = cfg.arm_width, cfg.stem_length
    bar, stem = cfg.bar_length * a, a * s
    return (bar * (s + a / 2) + stem * s / 2) / (bar + stem)


def t_outline(cfg: PushTConfig) -> np.ndarray:
    """(8, 2) the T's outline (counter-clockwise) in the body frame."""
    half, a, s, cy = cfg.bar_length / 2, cfg.arm_width, cfg.stem_length, t_centroid_y(cfg)
    pts = [(-a / 2, 0), (a / 2, 0), (a / 2, s), (half, s), (half, s + a), (-half, s + a), (-half, s), (-a / 2, s)]
    return np.array(pts, dtype=float) - np.array([0.0, cy])


def transform(points: np.ndarray, pose) -> np.ndarray:
    """Body-frame points (..., 2) to the world at pose (x, y, yaw)."""
    c, s = math.cos(pose[2]), math.sin(pose[2])
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(pose[:2], dtype=float)


def _clip(subject: list, clip: list) -> list:
    """Sutherland-Hodgman: the convex polygon ``subject`` cut by the convex counter-clockwise ``clip``."""
    out = subject
    for i in range(len(clip)):
        (ax, ay), (bx, by) = clip[i - 1], clip[i]
        poly, out = out, []
        if not poly:
            break
        side = [(bx - ax) * (py - ay) - (by - ay) * (px - ax) for px, py in poly]
        for j in range(len(poly)):
            p, q, sp, sq = poly[j - 1], poly[j], side[j - 1], side[j]
            if sq >= 0:
                if sp < 0:
                    out.append(_cut(p, q, sp, sq))
                out.append(q)
            elif sp >= 0:
                out.append(_cut(p, q, sp, sq))
    return out


def _cut(p, q, sp: float, sq: float) -> tuple[float, float]:
    t = sp / (sp - sq)
    return p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])


def _boxes_meet(a: list, b: list) -> bool:
    """Do the bounding boxes of two polygons overlap?"""
    return all(max(p[k] for p in a) > min(p[k] for p in b) and max(p[k] for p in b) > min(p[k] for p in a)
               for k in (0, 1))


def _area(poly: list) -> float:
    return 0.5 * abs(sum(poly[i - 1][0] * poly[i][1] - poly[i][0] * poly[i - 1][1] for i in range(len(poly))))


def overlap(rects_a: np.ndarray, rects_b: np.ndarray) -> float:
    """Area (m^2) of the union of the convex pieces ``rects_a`` (n, 4, 2) intersected with that of
    ``rects_b`` (m, 4, 2), both counter-clockwise; the pieces of each must not overlap each other."""
    total = 0.0
    for ra in np.asarray(rects_a, dtype=float).tolist():  # plain floats: ~10x faster than numpy scalars
        for rb in np.asarray(rects_b, dtype=float).tolist():
            if _boxes_meet(ra, rb):
                total += _area(_clip(ra, rb))
    return total


# ---------------------------------------------------------------- env


class PushTEnv(TableTopEnv):
    """Push the T onto the goal outline. See the module docstring for success and score."""

    color_geoms = ("table", "t_bar", "goal_bar", "palm")  # the stems follow their bars
    cfg: PushTConfig

    def __init__(self, cfg: PushTConfig | None = None, render_mode: str | None = None):
        super().__init__(cfg, render_mode)
        m = self.model
        self._qadr = [m.jnt_qposadr[m.joint(n).id] for n in ("t_x", "t_y", "t_z", "t_yaw")]
        self._dofadr = [m.jnt_dofadr[m.joint(n).id] for n in ("t_x", "t_y", "t_z", "t_yaw")]
        self.rects = t_rects(self.cfg)  # (2, 4, 2) body frame
        self.area = self.cfg.arm_width * (self.cfg.bar_length + self.cfg.stem_length)
        self.goal_pose = np.array([*self.cfg.goal_xy, self.cfg.goal_yaw])
        self._goal_rects = transform(self.rects, self.goal_pose)
        self._pairs = [(m.geom("t_bar").id, m.geom("t_stem").id), (m.geom("goal_bar").id, m.geom("goal_stem").id)]

    @classmethod
    def default_config(cls) -> PushTConfig:
        return PushTConfig()

    def _task_xml(self) -> str:
        c = self.cfg
        bar, stem = t_rects(c)
        h = c.block_height / 2
        bc, sc = bar.mean(axis=0), stem.mean(axis=0)
        bh, sh = (bar[2] - bar[0]) / 2, (stem[2] - stem[0]) / 2
        m_bar = c.block_mass * c.bar_length / (c.bar_length + c.stem_length)
        fr = f"{c.block_friction} 0.005 0.0001"
        gx, gy = c.goal_xy
        return f"""
    <body name="goal" pos="{gx} {gy} 0.0005" euler="0 0 {c.goal_yaw}">
      <geom name="goal_bar" type="box" pos="{bc[0]} {bc[1]} 0" size="{bh[0]} {bh[1]} 0.0005"
            contype="0" conaffinity="0" rgba="0.35 0.75 0.4 1"/>
      <geom name="goal_stem" type="box" pos="{sc[0]} {sc[1]} 0" size="{sh[0]} {sh[1]} 0.0005"
            contype="0" conaffinity="0" rgba="0.35 0.75 0.4 1"/>
    </body>
    <body name="t_block">
      <joint name="t_x" type="slide" axis="1 0 0" damping="{c.block_damping}"/>
      <joint name="t_y" type="slide" axis="0 1 0" damping="{c.block_damping}"/>
      <joint name="t_z" type="slide" axis="0 0 1"/>
      <joint name="t_yaw" type="hinge" axis="0 0 1" damping="{0.01 * c.block_damping}"/>
      <geom name="t_bar" type="box" pos="{bc[0]} {bc[1]} {h}" size="{bh[0]} {bh[1]} {h}" mass="{m_bar}"
            friction="{fr}" condim="3" priority="1" rgba="0.2 0.3 0.8 1"/>
      <geom name="t_stem" type="box" pos="{sc[0]} {sc[1]} {h}" size="{sh[0]} {sh[1]} {h}"
            mass="{c.block_mass - m_bar}" friction="{fr}" condim="3" priority="1" rgba="0.2 0.3 0.8 1"/>
    </body>"""

    # ---------------------------------------------------------------- task state

    def block_pose(self) -> np.ndarray:
        """(3,) the T's pose on the table: centroid x, y (m), yaw (rad, wrapped to [-pi, pi))."""
        q = self.data.qpos
        yaw = (q[self._qadr[3]] + math.pi) % (2 * math.pi) - math.pi
        return np.array([q[self._qadr[0]], q[self._qadr[1]], yaw])

    def place_block(self, pose) -> None:
        """Teleport the T to ``pose`` (x, y, yaw), at rest on the table (and update the derived state)."""
        q, v = self.data.qpos, self.data.qvel
        for adr, value in zip(self._qadr, (pose[0], pose[1], 0.0, pose[2])):
            q[adr] = value
        for adr in self._dofadr:
            v[adr] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def overlap_at(self, pose) -> float:
        """Fraction of the T's area at ``pose`` (x, y, yaw) that covers the goal T, in [0, 1]."""
        return float(np.clip(overlap(transform(self.rects, pose), self._goal_rects) / self.area, 0.0, 1.0))

    def _reset_task(self) -> None:
        c, rng = self.cfg, self.np_random
        hand = self.data.mocap_pos[0, :2].copy()
        outline = t_outline(c)
        for _ in range(1000):
            xy = rng.uniform(c.init_xy_min, c.init_xy_max)
            pose = np.array([xy[0], xy[1], c.goal_yaw + rng.uniform(-c.init_yaw, c.init_yaw)])
            if (self.overlap_at(pose) < c.max_init_overlap
                    and point_distance(hand, transform(outline, pose)) >= c.init_clearance):
                break
        else:
            raise RuntimeError("no initial pose of the T satisfies max_init_overlap and init_clearance; "
                               "widen init_xy_min/init_xy_max or init_yaw")
        self.place_block(pose)

    def _randomize_appearance(self) -> None:
        super()._randomize_appearance()
        for first, second in self._pairs:  # one color per T
            self.model.geom_rgba[second] = self.model.geom_rgba[first]

    def _evaluate(self) -> tuple[bool, float]:
        score = self.overlap_at(self.block_pose())
        return bool(score >= self.cfg.success_overlap), score


def point_distance(point: np.ndarray, polygon: np.ndarray) -> float:
    """Distance (m) from ``point`` (2,) to a simple polygon (n, 2); 0 inside it."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab, ap = b - a, point - a
    t = np.clip(np.sum(ap * ab, axis=1) / np.sum(ab * ab, axis=1), 0.0, 1.0)
    dist = float(np.min(np.linalg.norm(ap - t[:, None] * ab, axis=1)))
    # even-odd rule for inside
    crosses = (a[:, 1] > point[1]) != (b[:, 1] > point[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = a[:, 0] + (point[1] - a[:, 1]) * ab[:, 0] / ab[:, 1]
    inside = int(np.sum(crosses & (point[0] < x_at))) % 2 == 1
    return 0.0 if inside else dist
