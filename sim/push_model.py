"""The quasi-static pushing model the Push-T demonstrator plans with: candidate contacts on the T's outline,
the pose error between two poses of the T, and k pushes rolled out at once (sticking contact, ellipsoidal
limit surface about the centroid)."""

from __future__ import annotations

import math

import numpy as np


def contact_candidates(outline: np.ndarray, spacing: float, margin: float = 0.004,
                       concave_margin: float = 0.013) -> tuple[np.ndarray, np.ndarray]:
    """Points on a counter-clockwise outline (n, 2) every ``spacing`` m, kept ``margin`` from convex and
    ``concave_margin`` from concave corners: (points (k, 2), outward unit normals (k, 2)), body frame."""
    n = len(outline)
    edges = np.roll(outline, -1, axis=0) - outline
    turn = [edges[i - 1][0] * edges[i][1] - edges[i - 1][1] * edges[i][0] for i in range(n)]  # > 0: convex vertex i
    points, normals = [], []
    for i in range(n):
        a, e = outline[i], edges[i]
        length = float(np.linalg.norm(e))
        m0 = margin if turn[i] > 0 else concave_margin
        m1 = margin if turn[(i + 1) % n] > 0 else concave_margin
        if length - m0 - m1 <= 0:
            continue
        k = max(1, int(round((length - m0 - m1) / spacing)) + 1)
        for t in np.linspace(m0, length - m1, k):
            points.append(a + e * (t / length))
            normals.append(np.array([e[1], -e[0]]) / length)
    return np.array(points), np.array(normals)


def pose_error(pose: np.ndarray, goal: np.ndarray, radius2: float) -> np.ndarray:
    """RMS distance (m) between the T's points at ``pose`` (..., 3) and at ``goal`` (3,); ``radius2`` is the
    mean squared distance of the T's points from its centroid (m^2)."""
    dp = pose[..., :2] - goal[:2]
    return np.sqrt(np.sum(dp * dp, axis=-1) + 2 * (1 - np.cos(pose[..., 2] - goal[2])) * radius2)


def simulate_pushes(pose: np.ndarray, points: np.ndarray, normals: np.ndarray, dirs: np.ndarray,
                    goal: np.ndarray, radius2: float, c: float, mu: float, max_push: float,
                    ds: float = 0.003) -> tuple[np.ndarray, np.ndarray]:
    """Quasi-static roll-out of k pushes from ``pose`` (3,): contact ``points`` and outward ``normals``
    (k, 2) in the body frame, world push directions ``dirs`` (k, 2). The pusher advances ``ds`` m per step
    up to ``max_push``. Returns (best error (k,) m, push length after contact (k,) m reaching it)."""
    k = len(points)
    poses = np.repeat(pose[None, :], k, axis=0)  # (k, 3)
    best = pose_error(poses, goal, radius2)
    best_len = np.zeros(k)
    cos_mu = math.cos(math.atan(mu))
    for i in range(1, int(round(max_push / ds)) + 1):
        cs, sn = np.cos(poses[:, 2]), np.sin(poses[:, 2])
        r = np.stack([cs * points[:, 0] - sn * points[:, 1], sn * points[:, 0] + cs * points[:, 1]], axis=1)
        n_in = -np.stack([cs * normals[:, 0] - sn * normals[:, 1], sn * normals[:, 0] + cs * normals[:, 1]], axis=1)
        u = np.stack([-r[:, 1], r[:, 0]], axis=1)  # z x r
        vp = dirs * ds
        uv = np.sum(u * vp, axis=1)
        uu = np.sum(u * u, axis=1)
        v = vp - u * (uv / (c * c + uu))[:, None]  # sticking: v + w (z x r) = vp, v ~ f, w ~ (r x f) / c^2
        w = uv / (c * c + uu)
        vn = np.linalg.norm(v, axis=1) + 1e-12
        slip = np.sum(v * n_in, axis=1) / vn < cos_mu
        if np.any(slip):  # force on the friction-cone edge on v's side, normal velocity kept
            side = np.sign(n_in[:, 0] * v[:, 1] - n_in[:, 1] * v[:, 0])[:, None]
            t = np.stack([-n_in[:, 1], n_in[:, 0]], axis=1) * side
            f = n_in + mu * t
            uf = np.sum(u * f, axis=1)
            vc = f + u * (uf / (c * c))[:, None]  # contact velocity per unit force
            scale = np.sum(vp * n_in, axis=1) / np.maximum(np.sum(vc * n_in, axis=1), 1e-9)
            v = np.where(slip[:, None], f * scale[:, None], v)
            w = np.where(slip, uf / (c * c) * scale, w)
        poses = poses + np.concatenate([v, w[:, None]], axis=1)
        err = pose_error(poses, goal, radius2)
        better = err < best
        best, best_len = np.where(better, err, best), np.where(better, i * ds, best_len)
    return best, best_len
