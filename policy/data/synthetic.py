"""Small synthetic demo datasets in the replay-buffer format, for tests, benchmarks and smoke runs.

Each episode moves the end effector from a random start towards a target drawn as a coloured
square in the scene image; the wrist image shows the square shifted by the pose. Actions follow
the shared convention: position (3) + 6D rotation (6) + gripper width (1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policy import keys
from policy.data.replay_buffer import ReplayBuffer

IDENTITY_6D = np.array([1, 0, 0, 0, 1, 0], np.float32)  # first two columns of the identity rotation


def _draw(image_shape: tuple[int, int], centre_xy: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image: grey background, a square of ``colour`` centred at ``centre_xy`` in [-1, 1]."""
    h, w = image_shape
    img = np.full((h, w, 3), 40, np.uint8)
    cx, cy = ((np.clip(centre_xy, -1, 1) + 1) / 2 * [w - 1, h - 1]).astype(int)
    r = max(2, h // 12)
    img[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = colour
    return img


def synthetic_episode(rng: np.random.Generator, length: int, image_shape: tuple[int, int] = (96, 96),
                      ) -> dict[str, np.ndarray]:
    """One episode: keys scene_rgb, wrist_rgb (T, H, W, 3) uint8, ee_pose (T, 9), gripper (T, 1), action (T, 10)."""
    target = rng.uniform(-0.8, 0.8, size=2).astype(np.float32)
    pos = np.zeros((length + 1, 3), np.float32)
    pos[0, :2] = rng.uniform(-0.8, 0.8, size=2)
    for t in range(length):  # move 20 % of the way to the target per step
        pos[t + 1] = pos[t]
        pos[t + 1, :2] += 0.2 * (target - pos[t, :2])
    grip = np.linspace(0.08, 0.0, length + 1, dtype=np.float32)[:, None]
    colour = np.array([220, 60, 60], np.uint8)
    scene = np.stack([_draw(image_shape, target, colour) for _ in range(length)])
    wrist = np.stack([_draw(image_shape, (target - pos[t, :2]) * 1.5, colour) for t in range(length)])
    rot = np.broadcast_to(IDENTITY_6D, (length, 6))
    ee_pose = np.concatenate([pos[:-1], rot], axis=1)  # (T, 9) measured pose
    action = np.concatenate([pos[1:], rot, grip[1:]], axis=1)  # (T, 10) next target
    return {keys.SCENE_RGB: scene, keys.WRIST_RGB: wrist, keys.EE_POSE: ee_pose.astype(np.float32),
            keys.GRIPPER: grip[:-1], keys.ACTION: action.astype(np.float32),
            keys.TIMESTAMP: np.arange(length, dtype=np.float64) * 0.1}


def make_synthetic_dataset(path: str | Path, n_episodes: int = 10, episode_len: int = 40,
                           image_shape: tuple[int, int] = (96, 96), seed: int = 0) -> ReplayBuffer:
    """Write ``n_episodes`` synthetic episodes to a new replay buffer at ``path``."""
    rb = ReplayBuffer.create(path)
    rng = np.random.default_rng(seed)
    for _ in range(n_episodes):
        rb.add_episode(synthetic_episode(rng, episode_len, image_shape))
    return rb


def main(argv: list[str] | None = None) -> None:
    """``python -m policy.data.synthetic OUT.zarr [--episodes N] [--length T] [--size H]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic demo dataset (replay-buffer format).")
    ap.add_argument("out", help="path of the new zarr dataset")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--length", type=int, default=40, help="steps per episode")
    ap.add_argument("--size", type=int, default=96, help="image height and width")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rb = make_synthetic_dataset(args.out, args.episodes, args.length, (args.size, args.size), args.seed)
    print(f"wrote {rb.n_episodes} episodes, {rb.n_steps} steps to {args.out}")


if __name__ == "__main__":
    main()
