"""The frame the network's actions are expressed in (``policy.action_frame``), without torch.

``absolute``: actions as the robot takes them (``policy.keys``: a target pose in the base frame + gripper width).
``relative`` (UMI's relative trajectories, Chi et al. 2024): the pose part of every action of a window, of the
target chunk and of the action history alike, is expressed in the frame of the window's current end-effector pose
(``ee_pose`` at the newest observation step), so the same motion looks the same wherever in the workspace it starts:

- ``ee_pose`` of 9 numbers (position + 6D rotation; the action starts with the same 9):
  ``p_rel = R0^T (p - p0)``, ``R_rel = R0^T R`` (back to 6D: both columns rotated by ``R0^T``);
- a position-only ``ee_pose`` of P <= 3 numbers (e.g. Push-T's 2-D target; the action's first P numbers):
  ``p_rel = p - p0``.

The rest of the action (the gripper width) is left as it is. ``R0`` is the current pose's 6D rotation made
orthonormal (Gram-Schmidt), so ``to_absolute(to_relative(a, pose), pose) == a`` up to float rounding, also for an
action whose own 6D columns are not orthonormal. The network learns and samples relative actions; the policy maps
them back to absolute before anything leaves it (``policy.window``), so runtime, sim and ONNX see absolute actions.
Everything here is numpy (float64 inside): training applies it to the robot-unit batch before it becomes tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from policy import keys
from policy.action_space import absolute_pad_layout
from policy.normalizer import Normalizer

ACTION_FRAMES = ("absolute", "relative")
POSE_DIM = keys.EE_POSE_DIM  # 9: an ee_pose with a rotation
MAX_POSITION_DIM = keys.ACTION_LAYOUT.position.stop  # 3: a position-only ee_pose has at most this many numbers
DEGENERATE_NORM = 1e-6  # a 6D rotation column shorter than this has no direction: no frame
FIT_WINDOWS = 8192  # windows converted at once while fitting the action statistics


def frame_rule(lowdim_dims: Mapping[str, int], action_dim: int) -> str | None:
    """None when the observed ``ee_pose`` (``lowdim_dims``, key -> numbers) can be the frame of actions of
    ``action_dim`` numbers, else what is wrong (for the config's error message)."""
    pose_dim = lowdim_dims.get(keys.EE_POSE)
    if pose_dim is None:
        return f"it needs the current {keys.EE_POSE} among the observations (policy.lowdim_dims)"
    if pose_dim != POSE_DIM and pose_dim > MAX_POSITION_DIM:
        return (f"{keys.EE_POSE} must have {POSE_DIM} numbers (position + 6D rotation) or at most "
                f"{MAX_POSITION_DIM} (position only), got {pose_dim}")
    if absolute_pad_layout(dict(lowdim_dims), action_dim, keys.EE_POSE, keys.GRIPPER) is None:
        return (f"the action ({action_dim} numbers) must be {keys.EE_POSE} (+ {keys.GRIPPER}) as "
                f"policy.action_space absolute means it, got policy.lowdim_dims {dict(lowdim_dims)}")
    return None


def _frame(pose: ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Current pose (..., P) -> origin (..., 1, 1, 3 or P) and the rotation R0 (..., 1, 3, 3) with the frame's axes as
    columns (None for a position-only pose); the singleton axes broadcast over (..., T, rows, 3)."""
    pose = np.asarray(pose, np.float64)[..., None, None, :]  # (..., 1, 1, P)
    if pose.shape[-1] != POSE_DIM:
        return pose, None
    lay = keys.ACTION_LAYOUT
    a, b = np.split(pose[..., 0, :, lay.rotation], 2, axis=-1)  # (..., 1, 3) each: the 6D's two columns
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    x = a / np.maximum(na, DEGENERATE_NORM)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    if np.any(na < DEGENERATE_NORM) or np.any(nb < DEGENERATE_NORM):
        raise ValueError(f"{keys.EE_POSE}'s 6D rotation is degenerate (a zero or repeated column): it defines no "
                         "frame for policy.action_frame=relative")
    y = b / nb
    rot = np.stack([x, y, np.cross(x, y)], axis=-1)  # (..., 1, 3, 3) columns x, y, z
    return pose[..., lay.position], rot


def _out_dtype(actions: np.ndarray) -> type:
    return np.float64 if actions.dtype == np.float64 else np.float32


def to_relative(actions: ArrayLike, pose: ArrayLike) -> np.ndarray:
    """Absolute actions (..., T, A) -> the same actions in the frame of ``pose`` (..., P), the current ``ee_pose``
    of each window; float64 in, float64 out, float32 otherwise."""
    a = np.asarray(actions)
    out = a.astype(np.float64)  # a copy: (..., T, A)
    origin, rot = _frame(pose)
    p = origin.shape[-1]
    if rot is None:
        out[..., :p] -= origin[..., 0, :]
        return out.astype(_out_dtype(a))
    rows = out[..., keys.ACTION_LAYOUT.pose].reshape(*out.shape[:-1], 3, 3)  # (..., T, 3, 3): position, columns
    rows[..., 0:1, :] -= origin
    out[..., keys.ACTION_LAYOUT.pose] = (rows @ rot).reshape(*out.shape[:-1], POSE_DIM)  # each row v: R0^T v
    return out.astype(_out_dtype(a))


def to_absolute(actions: ArrayLike, pose: ArrayLike) -> np.ndarray:
    """Relative actions (..., T, A) in the frame of ``pose`` (..., P) -> absolute actions; inverse of
    ``to_relative``."""
    a = np.asarray(actions)
    out = a.astype(np.float64)  # (..., T, A)
    origin, rot = _frame(pose)
    p = origin.shape[-1]
    if rot is None:
        out[..., :p] += origin[..., 0, :]
        return out.astype(_out_dtype(a))
    rows = out[..., keys.ACTION_LAYOUT.pose].reshape(*out.shape[:-1], 3, 3)  # (..., T, 3, 3)
    rows = rows @ np.swapaxes(rot, -1, -2)  # each row v: R0 v
    rows[..., 0:1, :] += origin
    out[..., keys.ACTION_LAYOUT.pose] = rows.reshape(*out.shape[:-1], POSE_DIM)
    return out.astype(_out_dtype(a))


def relative_action_range(arrays: Mapping[str, np.ndarray], sampler: Any,
                          batch: int = FIT_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """(min (A,), max (A,)) of the relative actions over every window of ``sampler`` (a
    ``policy.data.WindowSampler``): each window's target chunk and action history (with its pad), in the frame of
    the window's current ``ee_pose``. ``arrays``: the time-major ``ee_pose`` (+ ``gripper``) and ``action``."""
    lows, highs = [], []
    for start in range(0, len(sampler), batch):
        ids = np.arange(start, min(start + batch, len(sampler)))  # (B,)
        raw = sampler.gather(arrays, ids, [keys.EE_POSE])  # ee_pose (B, To, P), action (B, Tp, A), history
        pose = raw[keys.EE_POSE][:, -1]  # (B, P) the current pose of each window
        for k in (keys.ACTION, keys.ACTION_HISTORY):
            if k in raw and raw[k].shape[1] > 0:
                rel = to_relative(raw[k], pose).reshape(-1, raw[k].shape[-1])  # (B * T, A)
                lows.append(rel.min(axis=0))
                highs.append(rel.max(axis=0))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def fit_normalizer(arrays: Mapping[str, np.ndarray], sampler: Any, lowdim_keys: list[str] | tuple[str, ...],
                   action_frame: str = "absolute") -> Normalizer:
    """Min/max statistics of a training set: the low-dim keys and ``action`` over every step of the sampler's
    episodes (``absolute``), or the action over every window's relative chunk and history (``relative``: what the
    network learns; inference clips samples to [-1, 1], so a range fitted on absolute actions would clip)."""
    steps = sampler.step_indices()  # (N,)
    data = {k: np.asarray(arrays[k])[steps] for k in lowdim_keys}
    if action_frame == "relative":
        low, high = relative_action_range(arrays, sampler)
        data[keys.ACTION] = np.stack([low, high])  # (2, A): min/max is all the fit keeps
    elif action_frame == "absolute":
        data[keys.ACTION] = np.asarray(arrays[keys.ACTION])[steps]
    else:
        raise ValueError(f"policy.action_frame must be one of {ACTION_FRAMES}, got {action_frame!r}")
    return Normalizer.fit(data)
