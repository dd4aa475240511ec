"""Rotation helpers for the 6D convention: the first two columns of the rotation matrix, column-major
(r00, r10, r20, r01, r11, r21)."""

from __future__ import annotations

import math

import numpy as np


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (robust to small non-orthogonality)."""
    a, b = r6[..., 0:3], r6[..., 3:6]
    x = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    y = b / np.linalg.norm(b, axis=-1, keepdims=True)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)  # columns


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6): the first two columns."""
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def rotation_angle(m: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0)))


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: (3,) rotation vector (rad) -> (3, 3)."""
    theta = float(np.linalg.norm(axis_angle))
    if theta < 1e-12:
        return np.eye(3)
    k = axis_angle / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
    """(3, 3) -> (3,) rotation vector (rad)."""
    theta = rotation_angle(m)
    if theta < 1e-9:
        return np.zeros(3)
    if np.pi - theta < 1e-6:  # 180 degrees: axis from the symmetric part
        w, v = np.linalg.eigh((m + np.eye(3)) / 2)
        return v[:, np.argmax(w)] * theta
    vec = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2 * np.sin(theta))
    return vec * theta


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> (3, 3)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(3, 3) -> unit quaternion (x, y, z, w) with w >= 0."""
    t = np.trace(m)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        q = np.zeros(4)
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


# ---- pure-Python 3x3 helpers for the per-tick safety path (numpy costs ~µs per call on 3-vectors) ----
# A matrix is a tuple of 9 floats, row-major.

Mat3 = tuple[float, float, float, float, float, float, float, float, float]


class DegenerateRotation(ValueError):
    """A 6D rotation that names no rotation: a zero, non-finite or overflowing first column, or columns
    (anti)parallel to within ``PARALLEL_SIN`` (the sine of the angle between them)."""


PARALLEL_SIN = 1e-6  # columns closer to parallel than this carry no usable second axis


def rot6d_to_mat3(r6) -> Mat3:
    """6D (6 floats) -> row-major 3x3 via Gram-Schmidt; ``DegenerateRotation`` for a degenerate 6D."""
    a0, a1, a2, b0, b1, b2 = (float(v) for v in r6)
    na = math.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    if not (1e-9 <= na < math.inf):
        raise DegenerateRotation(f"degenerate 6D rotation: first column has norm {na:g}")
    x0, x1, x2 = a0 / na, a1 / na, a2 / na
    nb_in = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    d = x0 * b0 + x1 * b1 + x2 * b2
    b0, b1, b2 = b0 - d * x0, b1 - d * x1, b2 - d * x2
    nb = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    if not (nb >= 1e-9 and nb > PARALLEL_SIN * nb_in and nb < math.inf):
        raise DegenerateRotation(f"degenerate 6D rotation: columns are parallel or zero (second column "
                                 f"norm {nb_in:g}, {nb:g} of it orthogonal to the first)")
    y0, y1, y2 = b0 / nb, b1 / nb, b2 / nb
    z0, z1, z2 = x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0
    return (x0, y0, z0, x1, y1, z1, x2, y2, z2)


def mat3_to_rot6d(m: Mat3) -> list[float]:
    return [m[0], m[3], m[6], m[1], m[4], m[7]]


def mat3_mul(a: Mat3, b: Mat3) -> Mat3:
    """a @ b"""
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = a
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = b
    return (a0 * b0 + a1 * b3 + a2 * b6, a0 * b1 + a1 * b4 + a2 * b7, a0 * b2 + a1 * b5 + a2 * b8,
            a3 * b0 + a4 * b3 + a5 * b6, a3 * b1 + a4 * b4 + a5 * b7, a3 * b2 + a4 * b5 + a5 * b8,
            a6 * b0 + a7 * b3 + a8 * b6, a6 * b1 + a7 * b4 + a8 * b7, a6 * b2 + a7 * b5 + a8 * b8)


def mat3_mul_t(a: Mat3, b: Mat3) -> Mat3:
    """a @ b.T"""
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = b
    return mat3_mul(a, (b0, b3, b6, b1, b4, b7, b2, b5, b8))


def mat3_to_axis_angle(m: Mat3) -> tuple[float, float, float]:
    c = max(-1.0, min(1.0, (m[0] + m[4] + m[8] - 1) / 2))
    theta = math.acos(c)
    if theta < 1e-9:
        return (0.0, 0.0, 0.0)
    if math.pi - theta < 1e-6:  # rare: use the robust numpy path
        v = matrix_to_axis_angle(np.array(m).reshape(3, 3))
        return (float(v[0]), float(v[1]), float(v[2]))
    s = theta / (2 * math.sin(theta))
    return ((m[7] - m[5]) * s, (m[2] - m[6]) * s, (m[3] - m[1]) * s)


def axis_angle_to_mat3(v0: float, v1: float, v2: float) -> Mat3:
    theta = math.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
    if theta < 1e-12:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    k0, k1, k2 = v0 / theta, v1 / theta, v2 / theta
    s, c = math.sin(theta), math.cos(theta)
    t = 1 - c
    return (c + k0 * k0 * t, k0 * k1 * t - k2 * s, k0 * k2 * t + k1 * s,
            k1 * k0 * t + k2 * s, c + k1 * k1 * t, k1 * k2 * t - k0 * s,
            k2 * k0 * t - k1 * s, k2 * k1 * t + k0 * s, c + k2 * k2 * t)
