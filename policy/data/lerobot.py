"""Read a LeRobotDataset v3.0 folder for import into our format, and write ours as one.

Layout (LeRobot ``codebase_version`` "v3.0"; nothing of LeRobot is imported)::

    meta/info.json       codebase_version, fps, chunks_size, data_path and video_path templates
                         ("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                         "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
                         features {key: {dtype, shape, names[, info]}}
    meta/stats.json      per feature min, max, mean, std, count (images per channel, (3, 1, 1), in [0, 1])
    meta/tasks.parquet   task (the index) -> task_index
    meta/episodes/chunk-*/file-*.parquet   a row per episode: episode_index, tasks, length, data/chunk_index,
                         data/file_index, dataset_from_index, dataset_to_index, videos/<key>/chunk_index,
                         videos/<key>/file_index, videos/<key>/from_timestamp, videos/<key>/to_timestamp, stats/...
    data/chunk-*/file-*.parquet   a row per frame: index, episode_index, frame_index, timestamp (s from the
                         episode start), task_index and the non-video features (vectors as lists)
    videos/<key>/chunk-*/file-*.mp4   episodes back to back: frame t of an episode is the video frame at
                         videos/<key>/from_timestamp + timestamp[t]

Import decodes the frames with PyAV, resized while decoding (swscale area filter) to the map's
``image_size``; features of dtype "image" (PNG bytes in the parquet) are decoded with Pillow.
Export is in ``policy.data.lerobot_export``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy.data.interop import KeyMap, is_image_key, map_episode, need
from policy.data.replay_buffer import DatasetError

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


@dataclass
class LeRobotConfig:
    """LeRobot v3 options: export (fps, video encoding, file sizes, task) and import (frame tolerance)."""

    fps: int = 10  # export: frames per second of the videos and timestamps (our control rate)
    vcodec: str = "libsvtav1"  # export: PyAV encoder, libsvtav1 (AV1, LeRobot's default) | libx264 | ...
    pix_fmt: str = "yuv420p"  # export: yuv420p (needs even H and W) | yuv444p (no chroma loss)
    crf: int = 30  # export: constant rate factor, lower is better quality
    gop: int = 2  # export: keyframe interval in frames (small: fast random access)
    task: str = "demonstration"  # export: the task description of every episode
    robot_type: str = ""  # export: info.json robot_type ("" -> null)
    chunks_size: int = 1000  # export: files per chunk-XXX folder
    data_file_size_mb: float = 100.0  # export: a new data parquet file starts past this size
    video_file_size_mb: float = 200.0  # export: a new mp4 file starts past this size
    tolerance_s: float = 0.0  # import: max |video frame time - wanted time| in s; 0: half a frame (0.5 / fps)

    def __post_init__(self) -> None:
        for name in ("fps", "chunks_size", "gop"):
            if getattr(self, name) < 1:
                raise ValueError(f"lerobot.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"lerobot.crf must be in [0, 63], got {self.crf}")
        if self.data_file_size_mb <= 0 or self.video_file_size_mb <= 0:
            raise ValueError("lerobot.data_file_size_mb and lerobot.video_file_size_mb must be > 0")
        if self.tolerance_s < 0:
            raise ValueError(f"lerobot.tolerance_s must be >= 0, got {self.tolerance_s}")


# ------------------------------------------------------------------------------------------------ import


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"LeRobot dataset: missing {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"LeRobot dataset: cannot read {path}: {e}") from e


def _read_parquet(path: Path, what: str, columns: list[str] | None = None):
    pq = need("pyarrow.parquet")
    if not path.is_file():
        raise DatasetError(f"LeRobot dataset: missing {what} file {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DatasetError(f"LeRobot dataset: cannot read {what} file {path}: {e}") from e
    for c in columns or []:
        if c not in table.column_names:
            raise DatasetError(f"LeRobot dataset: {what} file {path} has no column '{c}' "
                               f"(columns: {table.column_names})")
    return table


def _column(table, key: str, shape: list[int], where: str) -> np.ndarray:
    """A parquet column as (n, *shape): vectors from (fixed size) lists, "image" structs decoded to (n, H, W, 3)."""
    pa = need("pyarrow")
    arr = table.column(key).combine_chunks()
    n = len(arr)
    if arr.null_count:
        raise DatasetError(f"{where}: column '{key}' has {arr.null_count} null values")
    if pa.types.is_struct(arr.type):  # dtype "image": {bytes, path}
        from PIL import Image

        try:
            blobs = arr.field("bytes").to_pylist()
            return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        except (OSError, ValueError, TypeError) as e:
            raise DatasetError(f"{where}: column '{key}': cannot decode an image: {e}") from e
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    width = int(np.prod(shape)) if shape else 1
    if values.size != n * width:
        raise DatasetError(f"{where}: column '{key}' holds {values.size} values for {n} rows, expected shape {shape}")
    return values.reshape(n, *shape)


class _VideoReader:
    """Frames of one video key at wanted times, decoding forward and seeking only when needed."""

    def __init__(self, key: str, size: tuple[int, int] | None, tol: float) -> None:
        self.key, self.size, self.tol = key, size, tol
        self.path: Path | None = None
        self._container = self._frames = self._frame = self._img = None
        self._t = -np.inf
        self._reformatter = need("av").video.reformatter.VideoReformatter()  # shared: a frame's own costs ~4 ms

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None

    def _open(self, path: Path, start: float) -> None:
        av = need("av")
        self.close()
        self.path, self._t, self._frame, self._img = path, -np.inf, None, None
        if not path.is_file():
            raise DatasetError(f"LeRobot dataset: missing video file {path} (key '{self.key}')")
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            if start > 1.0:  # to the keyframe before start - 1 s, then decode forward
                self._container.seek(int((start - 1.0) / stream.time_base), stream=stream, backward=True)
            self._frames = self._container.decode(stream)
        except (av.FFmpegError, IndexError, OSError) as e:
            raise DatasetError(f"LeRobot dataset: cannot read video file {path} (key '{self.key}'): {e}") from e

    def _next(self, wanted: float) -> None:
        av = need("av")
        try:
            self._frame, self._img = next(self._frames), None
        except StopIteration:
            raise DatasetError(f"LeRobot dataset: video file {self.path} (key '{self.key}') ends at "
                               f"{self._t:.3f} s, before the frame wanted at {wanted:.3f} s") from None
        except av.FFmpegError as e:
            raise DatasetError(f"LeRobot dataset: cannot decode video file {self.path} (key '{self.key}'): {e}") from e
        if self._frame.time is None:
            raise DatasetError(f"LeRobot dataset: video file {self.path} (key '{self.key}') has frames without pts")
        self._t = float(self._frame.time)

    def frames(self, path: Path, times: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8: for each time (s in the file) the frame within ``tol`` of it."""
        if len(times) == 0:
            raise DatasetError(f"LeRobot dataset: an episode of length 0 in video file {path} (key '{self.key}')")
        if path != self.path or times[0] < self._t - self.tol or times[0] > self._t + 2.0:
            self._open(path, float(times[0]))
        out = []
        for q in times:
            while self._t < q - self.tol:
                self._next(q)
            if abs(self._t - q) > self.tol:
                raise DatasetError(f"LeRobot dataset: video file {path} (key '{self.key}') has no frame within "
                                   f"{self.tol:.4f} s of {q:.4f} s (nearest {self._t:.4f} s)")
            if self._img is None:
                h, w = self.size or (self._frame.height, self._frame.width)
                self._img = self._reformatter.reformat(self._frame, width=w, height=h, format="rgb24",
                                                       interpolation="AREA").to_ndarray()
            out.append(self._img)
        return np.stack(out)


def read_lerobot(src: str | os.PathLike, key_map: KeyMap,
                 cfg: LeRobotConfig | None = None) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
    """(number of episodes, iterator over the mapped episodes) of the LeRobot v3 folder ``src``."""
    cfg = cfg or LeRobotConfig()
    src = Path(src)
    info_path = src / "meta" / "info.json"
    info = _read_json(info_path)
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise DatasetError(f"{info_path}: codebase_version {version}, only LeRobot v3.x is read (convert older "
                           f"datasets with LeRobot's convert_dataset_v21_to_v30 first)")
    for k in ("fps", "features", "data_path"):
        if k not in info:
            raise DatasetError(f"{info_path}: missing key '{k}'")
    if key_map.identity:
        raise DatasetError(f"LeRobot dataset {src}: the key map is empty; map at least the cameras and 'action' "
                           f"(e.g. convert=lerobot)")
    features: dict[str, Any] = info["features"]
    for k in key_map.source_keys:
        if k not in features:
            raise DatasetError(f"{info_path}: no feature '{k}' (features: {sorted(features)})")
    videos = [k for k in key_map.source_keys if features[k].get("dtype") == "video"]
    if videos and "video_path" not in info:
        raise DatasetError(f"{info_path}: missing key 'video_path' (needed for video features {videos})")
    ep_cols = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    ep_cols += [f"videos/{k}/{c}" for k in videos for c in ("chunk_index", "file_index", "from_timestamp")]
    ep_files = sorted((src / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise DatasetError(f"LeRobot dataset {src}: no episodes files meta/episodes/chunk-*/file-*.parquet")
    rows = [r for p in ep_files for r in _read_parquet(p, "episodes", ep_cols).select(ep_cols).to_pylist()]
    rows.sort(key=lambda r: r["episode_index"])
    tol = cfg.tolerance_s or 0.5 / float(info["fps"])
    readers = {k: _VideoReader(k, key_map.image_size if is_image_key(key_map.keys.get(k, "")) else None, tol)
               for k in videos}
    columns = ["episode_index", "frame_index", "timestamp"]
    columns += [k for k in key_map.source_keys if k not in videos and k not in columns]

    def episodes() -> Iterator[dict[str, np.ndarray]]:
        cache: dict[Path, Any] = {}
        try:
            for row in rows:
                ep = row["episode_index"]
                path = src / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                      file_index=row["data/file_index"])
                if path not in cache:
                    cache.clear()
                    table = _read_parquet(path, "data", columns).select(columns)
                    cache[path] = (table, table.column("episode_index").to_numpy())
                table, ep_index = cache[path]
                where = f"LeRobot data file {path}: episode {ep}"
                sel = np.flatnonzero(ep_index == ep)
                if len(sel) != row["length"]:
                    raise DatasetError(f"{where}: {len(sel)} rows, but the episodes file says length {row['length']}")
                part = table.take(sel)
                sel = np.argsort(part.column("frame_index").to_numpy(), kind="stable")
                part = part.take(sel)
                ts = part.column("timestamp").to_numpy().astype(np.float64)

                def get(key: str, part=part, ts=ts, row=row, where=where) -> np.ndarray:
                    if key in readers:
                        vpath = src / info["video_path"].format(video_key=key,
                                                                chunk_index=row[f"videos/{key}/chunk_index"],
                                                                file_index=row[f"videos/{key}/file_index"])
                        return readers[key].frames(vpath, row[f"videos/{key}/from_timestamp"] + ts)
                    return _column(part, key, list(features[key].get("shape", [])), where)

                yield map_episode(get, key_map, where)
        finally:
            for r in readers.values():
                r.close()

    return len(rows), episodes()

