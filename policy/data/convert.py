"""Import other datasets into our zarr replay buffer, and export ours as a LeRobot v3 dataset.

Usage (hydra; every key maps onto ``ConvertConfig``, unknown keys fail)::

    python -m policy.data.convert src=<dataset> out=<new path> [convert=<preset>] [key=value ...]

    python -m policy.data.convert convert=lerobot   src=~/lerobot/my_task           out=my_task.zarr
    python -m policy.data.convert convert=robomimic src=lift/ph/image.hdf5 out=lift.zarr robomimic.filter_key=train
    python -m policy.data.convert convert=pusht     src=pusht_cchi_v7_replay.zarr   out=pusht.zarr
    python -m policy.data.convert src=demos.zarr out=demos_lerobot out_format=lerobot lerobot.fps=10
    python -m policy.data.convert src=other.zarr out=mine.zarr '++map.keys={img: scene_rgb, action: action}'
    python -m policy.data.convert src=demos.zarr out=demos_stream.zarr image_chunk=64 image_shard=1024

``src_format`` (auto: detected from ``src``): ``lerobot`` (a LeRobotDataset v3 folder: meta/info.json),
``robomimic`` (an HDF5 file), ``zarr`` (a replay buffer: ours, or the reference diffusion-policy zarr v2
group or ``.zarr.zip``). ``out_format``: ``zarr`` (ours, default) or ``lerobot`` (from a zarr source).
``map`` (``policy.data.interop.KeyMap``) says which source keys become which of ours: ``map.keys``
renames whole arrays, ``map.state_keys`` + ``map.state_slices`` cut a packed state vector into
``ee_pose``/``gripper``, images are resized to ``map.image_size`` (default 96x96). The presets under
``configs/convert/`` (``convert=lerobot|robomimic|pusht``, hydra package ``map``) set ``map``; copy one to
``configs/convert/<name>.yaml`` for another dataset, or replace its keys on the command line with
``~map.keys '+map.keys={...}'`` (hydra merges dicts, so a bare ``map.keys={...}`` would add to them).

The output is written to ``<out>.tmp-<pid>`` and renamed to ``out`` only when complete, so a failed
import leaves nothing behind; an existing ``out`` is refused unless ``overwrite=true``. Bad input
raises ``DatasetError`` naming the file and the key. A zarr source can also be used for training
without a copy: ``train.dataset_map`` (e.g. ``+convert@train.dataset_map=pusht``) reads it through
``policy.data.reference_zarr.open_dataset(path, KeyMap(...))``.

``image_chunk`` / ``image_shard`` set how the output's image arrays are chunked in time; chunks of 64 frames
in shards of 1024 suit training by streaming (``train.data=stream``, ``policy.data.stream``). One of our
datasets without a key map is copied array by array, a shard at a time (a rechunk: memory holds one shard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.data.interop import KeyMap, atomic_output
from policy.data.lerobot import LeRobotConfig
from policy.data.replay_buffer import DatasetError, ImageLayout, ReplayBuffer

SRC_FORMATS = ("auto", "lerobot", "robomimic", "zarr")
OUT_FORMATS = ("zarr", "lerobot")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class RobomimicConfig:
    """robomimic import options."""

    filter_key: str = ""  # import only the demos listed in mask/<filter_key> (e.g. train, valid); "": all


@dataclass
class ConvertConfig:
    """One conversion: ``src`` (format ``src_format``) -> ``out`` (format ``out_format``) through ``map``."""

    src: str = ""  # dataset to read: a LeRobot v3 folder, a robomimic .hdf5, a zarr replay buffer (dir or .zip)
    out: str = ""  # path to write (must not exist unless overwrite)
    src_format: str = "auto"  # auto | lerobot | robomimic | zarr
    out_format: str = "zarr"  # zarr (our replay buffer) | lerobot (LeRobot v3 folder; from a zarr source)
    overwrite: bool = False  # replace an existing out (only once the new one is complete)
    image_chunk: int = 1  # zarr out: frames per image chunk (64 for training by streaming)
    image_shard: int = 0  # zarr out: frames per zarr v3 shard file (0: none, a file per chunk; 1024 for streaming)
    progress: bool = True  # tqdm progress bar
    map: KeyMap = field(default_factory=KeyMap)
    lerobot: LeRobotConfig = field(default_factory=LeRobotConfig)
    robomimic: RobomimicConfig = field(default_factory=RobomimicConfig)

    def __post_init__(self) -> None:
        if not self.src:
            raise ValueError("src must name the dataset to read (src=<path>)")
        if not self.out:
            raise ValueError("out must name the path to write (out=<path>)")
        if self.src_format not in SRC_FORMATS:
            raise ValueError(f"src_format must be one of {SRC_FORMATS}, got {self.src_format!r}")
        if self.out_format not in OUT_FORMATS:
            raise ValueError(f"out_format must be one of {OUT_FORMATS}, got {self.out_format!r}")
        if self.out_format == "lerobot" and self.src_format not in ("auto", "zarr"):
            raise ValueError(f"out_format=lerobot exports a zarr replay buffer, not src_format={self.src_format}")
        if self.image_chunk < 1 or self.image_shard < 0 or (self.image_shard and self.image_shard % self.image_chunk):
            raise ValueError(f"image_chunk must be >= 1 and image_shard must be 0 or a multiple of image_chunk, got "
                             f"image_chunk={self.image_chunk}, image_shard={self.image_shard}")
        if Path(self.src).expanduser().resolve() == Path(self.out).expanduser().resolve():
            raise ValueError(f"out must differ from src ({self.src})")


def detect_format(src: Path) -> str:
    """lerobot, robomimic or zarr from what is at ``src``; DatasetError when none fits."""
    if (src / "meta" / "info.json").is_file():
        return "lerobot"
    if src.is_dir() and any((src / m).is_file() for m in ("zarr.json", ".zgroup")):
        return "zarr"
    if src.is_file():
        with open(src, "rb") as f:
            head = f.read(8)
        if head == _HDF5_MAGIC:
            return "robomimic"
        if head[:4] == b"PK\x03\x04":
            return "zarr"
    what = "no such file or directory" if not src.exists() else "not a LeRobot v3 folder, HDF5 file or zarr store"
    raise DatasetError(f"src={src}: {what} (set src_format to force one)")


def _read_episodes(src: Path, fmt: str, cfg: ConvertConfig) -> tuple[int, Any]:
    """(number of episodes, iterator over the mapped episodes) of a source dataset."""
    if fmt == "lerobot":
        from policy.data.lerobot import read_lerobot

        return read_lerobot(src, cfg.map, cfg.lerobot)
    if fmt == "robomimic":
        from policy.data.robomimic import read_robomimic

        return read_robomimic(src, cfg.map, cfg.robomimic.filter_key)
    from policy.data.reference_zarr import read_zarr

    return read_zarr(src, cfg.map)


def convert(cfg: ConvertConfig) -> dict[str, Any]:
    """Run one conversion; returns a summary (episodes, frames, seconds, frames per second, out)."""
    from tqdm import tqdm

    src = Path(cfg.src).expanduser()
    fmt = detect_format(src) if cfg.src_format == "auto" else cfg.src_format
    if cfg.out_format == "lerobot" and fmt != "zarr":
        raise DatasetError(f"src={src}: out_format=lerobot exports a zarr replay buffer, found a {fmt} dataset")
    t0 = time.perf_counter()
    with atomic_output(Path(cfg.out).expanduser(), cfg.overwrite) as tmp:
        if cfg.out_format == "lerobot":
            from policy.data.lerobot_export import write_lerobot
            from policy.data.reference_zarr import open_dataset

            summary = write_lerobot(open_dataset(src, cfg.map), tmp, cfg.lerobot, cfg.progress)
        else:
            rb = ReplayBuffer.create(tmp, ImageLayout(cfg.image_chunk, cfg.image_shard))
            if fmt == "zarr" and cfg.map.identity:  # a copy (a rechunk): array by array, a shard at a time
                src_rb = ReplayBuffer.open(src)
                if src_rb.n_episodes == 0:
                    raise DatasetError(f"src={src}: no episodes to import")
                rb.copy_from(src_rb)
            else:
                n, episodes = _read_episodes(src, fmt, cfg)
                if n == 0:
                    raise DatasetError(f"src={src}: no episodes to import")
                for i, ep in enumerate(tqdm(episodes, total=n, desc=f"import {fmt}", unit="ep",
                                            disable=not cfg.progress)):
                    try:
                        rb.add_episode(ep)
                    except DatasetError as e:
                        raise DatasetError(f"src={src}: episode {i} does not fit: {e}") from e
            summary = {"episodes": rb.n_episodes, "frames": rb.n_steps, "keys": rb.keys}
    seconds = time.perf_counter() - t0
    return {"src": str(src), "src_format": fmt, "out": cfg.out, "out_format": cfg.out_format, **summary,
            "seconds": round(seconds, 2), "frames_per_s": round(summary["frames"] / max(seconds, 1e-9), 1)}


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from policy.config_utils import from_dict

    @hydra.main(config_path=str(Path(__file__).resolve().parents[2] / "configs"), config_name="convert",
                version_base="1.3")
    def _main(dcfg: DictConfig) -> None:
        cfg = from_dict(ConvertConfig, OmegaConf.to_container(dcfg, resolve=True))
        print(convert(cfg))

    _main()


if __name__ == "__main__":
    main()
