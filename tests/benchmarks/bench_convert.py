"""Dataset conversion speed: export to LeRobot v3 and import back, per video codec.

    python tests/benchmarks/bench_convert.py [--quick] [--out FILE.json] [--episodes 20] [--length 100]

A synthetic replay buffer (two 96x96 cameras, ``--episodes`` x ``--length`` frames) is exported to a LeRobot
v3 folder (``python -m policy.data.convert ... out_format=lerobot``) with AV1 (LeRobot's default) and H.264,
then imported back into our zarr format through a key map (PyAV decoding, the state vector cut into
``ee_pose``/``gripper``). A frame is one time step with both camera images. Figures:
``export_<codec>_frames_per_s``, ``import_<codec>_frames_per_s`` (best of two), ``decode_only_<codec>_frames_per_s``
(reading and mapping without writing), ``zarr_write_only_frames_per_s`` (our buffer's appends alone).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import finish, machine_info, parse_args, print_table

from policy.config_utils import from_dict
from policy.data.convert import ConvertConfig, convert
from policy.data.interop import KeyMap
from policy.data.lerobot import read_lerobot
from policy.data.replay_buffer import ReplayBuffer
from policy.data.synthetic import make_synthetic_dataset

MAP = {"keys": {"observation.images.scene": "scene_rgb", "observation.images.wrist": "wrist_rgb",
                "action": "action", "timestamp": "timestamp"},
       "state_keys": ["observation.state"], "state_slices": {"ee_pose": [0, 9], "gripper": [9, 10]}}


def main() -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--episodes", type=int, default=20)
        p.add_argument("--length", type=int, default=100, help="frames per episode")

    args = parse_args(__file__, __doc__.splitlines()[0], extra)
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.episodes, args.length = 2, 20
    root = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    res: dict[str, float] = {}
    try:
        src = make_synthetic_dataset(root / "src.zarr", n_episodes=args.episodes, episode_len=args.length,
                                     image_shape=(96, 96))
        for codec in ("libsvtav1", "libx264"):
            lr = root / f"lerobot_{codec}"
            s = convert(from_dict(ConvertConfig, {"src": str(root / "src.zarr"), "out": str(lr),
                                                  "out_format": "lerobot", "progress": False,
                                                  "lerobot": {"vcodec": codec}}))
            res[f"export_{codec}_frames_per_s"] = s["frames_per_s"]
            runs = [convert(from_dict(ConvertConfig, {"src": str(lr), "out": str(root / f"back_{codec}_{i}.zarr"),
                                                      "progress": False, "map": MAP}))["frames_per_s"]
                    for i in range(2)]
            res[f"import_{codec}_frames_per_s"] = max(runs)
            t0 = time.perf_counter()
            _, episodes = read_lerobot(lr, from_dict(KeyMap, MAP))
            frames = sum(len(e["action"]) for e in episodes)
            res[f"decode_only_{codec}_frames_per_s"] = round(frames / (time.perf_counter() - t0), 1)
        eps = [src.get_episode(i) for i in range(src.n_episodes)]
        t0 = time.perf_counter()
        rb = ReplayBuffer.create(root / "write_only.zarr")
        for e in eps:
            rb.add_episode(e)
        res["zarr_write_only_frames_per_s"] = round(src.n_steps / (time.perf_counter() - t0), 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(f"dataset conversion, {args.episodes} episodes x {args.length} frames, two 96x96 cameras",
                ["figure", "frames/s"], list(res.items()))
    finish({**res, "episodes": args.episodes, "frames_per_episode": args.length,
            **machine_info(args.threads, args.quick)}, args.out)


if __name__ == "__main__":
    main()
