"""Write a replay buffer as a LeRobotDataset v3.0 folder (layout in ``policy.data.lerobot``).

Features written: ``observation.images.scene`` / ``observation.images.wrist`` (videos of ``scene_rgb`` /
``wrist_rgb``, episodes back to back in mp4 files encoded with PyAV), ``observation.state``
(``ee_pose`` + ``gripper`` concatenated, named x, y, z, r00 ... r21, gripper), ``action`` (named likewise
when 10-D), and LeRobot's ``timestamp`` (``frame_index / fps``, s), ``frame_index``, ``episode_index``,
``index``, ``task_index``; one task (``lerobot.task``). Per-episode and global statistics (min, max,
mean, std, count; images per channel in [0, 1]) go to the episodes files and ``meta/stats.json``.
Other keys of the buffer are skipped and listed in the summary.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from policy import keys
from policy.data.interop import need
from policy.data.lerobot import DATA_PATH, EPISODES_PATH, VIDEO_PATH, LeRobotConfig
from policy.data.replay_buffer import DatasetError

EXPORT_VIDEOS = {keys.SCENE_RGB: "observation.images.scene", keys.WRIST_RGB: "observation.images.wrist"}
EE_POSE_NAMES = ["x", "y", "z", "r00", "r10", "r20", "r01", "r11", "r21"]  # m, 6D rotation (policy.keys)


def _stats(x: np.ndarray) -> dict[str, list]:
    """min, max, mean, std over frames of (N, ...) values (a (N,) array as (N, 1), like LeRobot); count N."""
    x = x.astype(np.float64).reshape(len(x), *(x.shape[1:] or (1,)))
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(x)]}


class _ImageStats:
    """Per-channel min/max/mean/std of frames in [0, 1], shaped (3, 1, 1) as LeRobot stores them.

    Kept as a histogram of the 256 levels per channel: exact, and adding is one bincount per channel.
    """

    def __init__(self) -> None:
        self.n, self.hist = 0, np.zeros((3, 256), np.int64)

    def add(self, frames: np.ndarray) -> dict[str, list]:
        """Add (T, H, W, 3) uint8 frames; returns their own stats."""
        own = _ImageStats()
        own.n = len(frames)
        x = frames.reshape(-1, 3)
        for c in range(3):
            own.hist[c] = np.bincount(x[:, c], minlength=256)
        self.n, self.hist = self.n + own.n, self.hist + own.hist
        return own.result()

    def result(self) -> dict[str, list]:
        levels = np.arange(256) / 255.0
        px = self.hist.sum(1)  # (3,)
        mean = self.hist @ levels / px
        std = np.sqrt(np.maximum(self.hist @ levels**2 / px - mean**2, 0))
        present = self.hist > 0
        lo = np.array([levels[np.argmax(p)] for p in present])
        hi = np.array([levels[255 - np.argmax(p[::-1])] for p in present])
        c = lambda v: v.reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": c(lo), "max": c(hi), "mean": c(mean), "std": c(std), "count": [self.n]}


class _Files:
    """Chunk/file numbering with rollover: file number n lives at chunk n // chunks_size, file n % chunks_size."""

    def __init__(self, chunks_size: int, limit_mb: float) -> None:
        self.n, self.chunks_size, self.limit = 0, chunks_size, limit_mb * 2**20

    @property
    def index(self) -> dict[str, int]:
        return {"chunk_index": self.n // self.chunks_size, "file_index": self.n % self.chunks_size}


class _VideoWriter(_Files):
    """One video key: episodes appended back to back into mp4 files, a new file past the size limit."""

    def __init__(self, root: Path, key: str, cfg: LeRobotConfig) -> None:
        super().__init__(cfg.chunks_size, cfg.video_file_size_mb)
        self.root, self.key, self.cfg = root, key, cfg
        self._c = self._s = self.path = None
        self.frames_in_file = 0

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode (T, H, W, 3) uint8 frames; returns the episode's videos/<key>/... columns."""
        av = need("av")
        if self._c is None:
            self.path = self.root / VIDEO_PATH.format(video_key=self.key, **self.index)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._c = av.open(str(self.path), "w")
            self._s = self._c.add_stream(self.cfg.vcodec, rate=self.cfg.fps)
            self._s.height, self._s.width = frames.shape[1:3]
            self._s.pix_fmt = self.cfg.pix_fmt
            self._s.options = {"g": str(self.cfg.gop), "crf": str(self.cfg.crf)}
            self.frames_in_file = 0
        cols = {f"videos/{self.key}/{k}": v for k, v in self.index.items()}
        cols[f"videos/{self.key}/from_timestamp"] = self.frames_in_file / self.cfg.fps
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = self.frames_in_file, Fraction(1, self.cfg.fps)
            self._c.mux(self._s.encode(frame))
            self.frames_in_file += 1
        cols[f"videos/{self.key}/to_timestamp"] = self.frames_in_file / self.cfg.fps
        if self.path.exists() and self.path.stat().st_size >= self.limit:  # the encoder may still hold frames
            self.close()
            self.n += 1
        return cols

    def close(self) -> None:
        if self._c is not None:
            self._c.mux(self._s.encode())
            self._c.close()
        self._c = None


class _DataWriter(_Files):
    """Frame rows into parquet files, a new file past the size limit."""

    def __init__(self, root: Path, cfg: LeRobotConfig) -> None:
        super().__init__(cfg.chunks_size, cfg.data_file_size_mb)
        self.root, self.tables, self.size = root, [], 0

    def add(self, table) -> dict[str, int]:
        cols = {f"data/{k}": v for k, v in self.index.items()}
        self.tables.append(table)
        self.size += table.nbytes
        if self.size >= self.limit:
            self.flush()
        return cols

    def flush(self) -> None:
        if self.tables:
            pa, pq = need("pyarrow"), need("pyarrow.parquet")
            path = self.root / DATA_PATH.format(**self.index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(self.tables), path)
            self.tables, self.size, self.n = [], 0, self.n + 1


def _names(key: str, dim: int) -> list[str]:
    if key == keys.EE_POSE and dim == len(EE_POSE_NAMES):
        return list(EE_POSE_NAMES)
    if key == keys.ACTION and dim == keys.ACTION_DIM:
        return [*EE_POSE_NAMES, "gripper"]
    return [key] if dim == 1 else [f"{key}_{i}" for i in range(dim)]


def _check_rate(rb, fps: int, where: str) -> None:
    """DatasetError when the buffer's timestamps show a step rate more than 5 % away from ``fps``."""
    if keys.TIMESTAMP not in rb.frame_specs or rb.n_episodes == 0:
        return
    ts = np.concatenate([np.diff(rb.get_episode(i, [keys.TIMESTAMP])[keys.TIMESTAMP].reshape(-1))
                         for i in range(min(rb.n_episodes, 5))])
    if len(ts) and np.median(ts) > 0 and abs(1.0 / np.median(ts) / fps - 1) > 0.05:
        raise DatasetError(f"{where}: key 'timestamp' steps at {1.0 / np.median(ts):.2f} Hz, but lerobot.fps={fps}; "
                           f"set lerobot.fps to the recording rate (LeRobot locates video frames by frame_index / fps)")


def write_lerobot(rb, out: str | os.PathLike, cfg: LeRobotConfig, progress: bool = False) -> dict[str, Any]:
    """Write the episodes of ``rb`` (a ReplayBuffer or KeyMappedBuffer) as a LeRobot v3 folder at ``out``."""
    pa, pq, av = need("pyarrow"), need("pyarrow.parquet"), need("av")
    from tqdm import tqdm

    out, specs = Path(out), rb.frame_specs
    where = f"export of dataset {rb.path}"
    if keys.ACTION not in specs or len(specs[keys.ACTION][0]) != 1:
        raise DatasetError(f"{where}: needs key 'action' of shape (T, A); found {sorted(specs)}")
    state_keys = [k for k in (keys.EE_POSE, keys.GRIPPER) if k in specs]
    videos = {k: v for k, v in EXPORT_VIDEOS.items() if k in specs}
    for k in videos:
        (h, w, c), dtype = specs[k]
        if c != 3 or dtype != np.uint8 or (cfg.pix_fmt == "yuv420p" and (h % 2 or w % 2)):
            raise DatasetError(f"{where}: key '{k}' is {specs[k]}; needs (H, W, 3) uint8 with even H, W for yuv420p")
    state_names = [n for k in state_keys for n in _names(k, int(np.prod(specs[k][0])))]
    action_names = _names(keys.ACTION, specs[keys.ACTION][0][0])
    try:
        codec = av.Codec(cfg.vcodec, "w").canonical_name
    except (av.FFmpegError, ValueError) as e:
        raise ValueError(f"lerobot.vcodec: PyAV has no video encoder {cfg.vcodec!r} ({e})") from e
    features: dict[str, Any] = {}
    for k, name in videos.items():
        h, w, _ = specs[k][0]
        features[name] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"], "info": {
            "video.height": h, "video.width": w, "video.codec": codec,
            "video.pix_fmt": cfg.pix_fmt, "video.is_depth_map": False, "video.fps": cfg.fps, "video.channels": 3,
            "has_audio": False}}
    if state_keys:
        features["observation.state"] = {"dtype": "float32", "shape": [len(state_names)], "names": state_names}
    features["action"] = {"dtype": "float32", "shape": [len(action_names)], "names": action_names}
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        features[k] = {"dtype": dtype, "shape": [1], "names": None}

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (its info banner goes to stderr)
    _check_rate(rb, cfg.fps, where)
    vwriters = {name: _VideoWriter(out, name, cfg) for name in videos.values()}
    data = _DataWriter(out, cfg)
    img_stats = {name: _ImageStats() for name in videos.values()}
    lowdim: dict[str, list[np.ndarray]] = {}
    ep_rows, start = [], 0
    try:
        for i in tqdm(range(rb.n_episodes), desc="export", unit="ep", disable=not progress):
            ep = rb.get_episode(i, [*videos, *state_keys, keys.ACTION])
            T = len(ep[keys.ACTION])
            row: dict[str, Any] = {"episode_index": i, "tasks": [cfg.task], "length": T}
            cols = {"index": np.arange(start, start + T), "episode_index": np.full(T, i),
                    "frame_index": np.arange(T), "timestamp": (np.arange(T) / cfg.fps).astype(np.float32),
                    "task_index": np.zeros(T, np.int64), "action": ep[keys.ACTION].reshape(T, -1).astype(np.float32)}
            if state_keys:
                cols["observation.state"] = np.concatenate([ep[k].reshape(T, -1) for k in state_keys], 1)
            arrays = {k: pa.FixedSizeListArray.from_arrays(pa.array(v.astype(np.float32).ravel()), v.shape[1])
                      if v.ndim == 2 else pa.array(v) for k, v in cols.items()}
            row.update(data.add(pa.table(arrays)))
            row.update({"dataset_from_index": start, "dataset_to_index": start + T,
                        "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            for k, name in videos.items():
                row.update(vwriters[name].add(ep[k]))
                row.update({f"stats/{name}/{s}": v for s, v in img_stats[name].add(ep[k]).items()})
            for k, v in cols.items():
                lowdim.setdefault(k, []).append(v)
                row.update({f"stats/{k}/{s}": x for s, x in _stats(v).items()})
            ep_rows.append(row)
            start += T
    finally:
        for w in vwriters.values():
            w.close()
    data.flush()
    path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), path)
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}]}
    tasks = pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array([cfg.task])})
    pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), out / "meta" / "tasks.parquet")
    stats = {k: _stats(np.concatenate(v)) for k, v in lowdim.items()} if lowdim else {}
    stats.update({name: s.result() for name, s in img_stats.items() if s.n})
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    info = {"codebase_version": "v3.0", "robot_type": cfg.robot_type or None, "total_episodes": rb.n_episodes,
            "total_frames": start, "total_tasks": 1, "chunks_size": cfg.chunks_size,
            "data_files_size_in_mb": cfg.data_file_size_mb, "video_files_size_in_mb": cfg.video_file_size_mb,
            "fps": cfg.fps, "splits": {"train": f"0:{rb.n_episodes}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if videos else None, "features": features}
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return {"episodes": rb.n_episodes, "frames": start, "videos": list(videos.values()),
            "state": state_names, "skipped_keys": sorted(set(specs) - {*videos, *state_keys, keys.ACTION})}
