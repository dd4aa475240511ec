"""LeRobot v3 import and export: round trip through our exporter, a hand-written v3 folder, bad files."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from policy.config_utils import ConfigError, from_dict  # noqa: E402
from policy.data.convert import ConvertConfig, convert  # noqa: E402
from policy.data.replay_buffer import DatasetError, ReplayBuffer  # noqa: E402
from policy.data.synthetic import synthetic_episode  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FPS = 10
OUR_MAP = {"keys": {"observation.images.scene": "scene_rgb", "observation.images.wrist": "wrist_rgb",
                    "action": "action", "timestamp": "timestamp"},
           "state_keys": ["observation.state"], "state_slices": {"ee_pose": [0, 9], "gripper": [9, 10]}}


def run(src, out, **kw) -> dict:
    return convert(from_dict(ConvertConfig, {"src": str(src), "out": str(out), "progress": False, **kw}))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".tmp-*")), "a failed conversion left its temporary output"


def make_ours(path: Path, lengths=(12, 7, 9), hw=(32, 32)) -> ReplayBuffer:
    rb = ReplayBuffer.create(path)
    rng = np.random.default_rng(0)
    for T in lengths:
        ep = synthetic_episode(rng, T, hw)
        ep["timestamp"] = np.arange(T) / FPS
        rb.add_episode(ep)
    return ReplayBuffer.open(path)


# ------------------------------------------------------------------------------- round trip via the exporter


def test_export_then_import_round_trip(tmp_path: Path) -> None:
    src = make_ours(tmp_path / "ours.zarr")
    lr = tmp_path / "lerobot"
    # a tiny data file limit: one data parquet per episode, so the importer switches files
    summary = run(src.path, lr, out_format="lerobot", lerobot={"fps": FPS, "data_file_size_mb": 1e-6})
    assert summary["episodes"] == 3 and summary["frames"] == 28

    info = json.loads((lr / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["total_frames"] == 28
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats["observation.images.scene"]["dtype"] == "video"
    assert feats["observation.images.wrist"]["shape"] == [32, 32, 3]
    assert feats["observation.state"]["names"][:3] == ["x", "y", "z"]
    assert feats["observation.state"]["names"][-1] == "gripper" and feats["action"]["shape"] == [10]
    assert len(list((lr / "data").glob("chunk-000/file-*.parquet"))) == 3
    stats = json.loads((lr / "meta/stats.json").read_text())
    assert np.array(stats["observation.images.scene"]["mean"]).shape == (3, 1, 1)
    assert stats["timestamp"]["min"] == [0.0] and stats["index"]["count"] == [28]
    np.testing.assert_allclose(stats["action"]["max"], src.load(["action"])["action"].max(0), rtol=1e-6)
    episodes = pq.read_table(lr / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == [12, 7, 9]
    assert [e["dataset_from_index"] for e in episodes] == [0, 12, 19]
    assert [e["videos/observation.images.scene/from_timestamp"] for e in episodes] == [0.0, 1.2, 1.9]
    data = pq.read_table(lr / "data/chunk-000/file-001.parquet")
    assert data.column("episode_index").to_pylist() == [1] * 7
    assert data.column("index").to_pylist() == list(range(12, 19))

    back = tmp_path / "back.zarr"
    summary = run(lr, back, map={**OUR_MAP, "image_size": [32, 32]})
    assert summary["src_format"] == "lerobot" and summary["episodes"] == 3
    a, b = ReplayBuffer.open(src.path), ReplayBuffer.open(back)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert b.keys == a.keys
    for k in ("ee_pose", "gripper", "action", "timestamp"):
        np.testing.assert_allclose(b.load([k])[k], a.load([k])[k], rtol=0, atol=1e-6, err_msg=k)
    for k in ("scene_rgb", "wrist_rgb"):
        x, y = a.load([k])[k].astype(np.float64), b.load([k])[k].astype(np.float64)
        assert x.shape == y.shape
        assert np.abs(x - y).mean() < 4.0, k  # AV1 yuv420p at crf 30: codec loss only
        per_frame = np.abs(x - y).mean(axis=(1, 2, 3))
        assert per_frame.max() < 8.0, k  # every frame is the right one (neighbours differ by far more)


# ------------------------------------------------------------------------------- a hand-written v3 folder


def frame_value(i: int) -> int:
    """Grey level of video frame i of a file: far apart, so a wrong frame is seen at once."""
    return 20 + 9 * i


def write_video(path: Path, n_frames: int, hw=(48, 64)) -> None:
    """Flat grey frames (level ``frame_value(i)``) at FPS, H.264."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.height, s.width = hw
        s.pix_fmt = "yuv420p"
        for i in range(n_frames):
            f = av.VideoFrame.from_ndarray(np.full((*hw, 3), frame_value(i), np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(s.encode(f))
        c.mux(s.encode())


def png(level: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), level, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


LENGTHS = [5, 7, 4]


def write_v3(root: Path) -> None:
    """3 episodes: scene video with episodes 0, 1 in file-000 and episode 2 in file-001 after 3 other frames;
    wrist as PNG "image" feature; a 12-D state; a 7-D action; two data files; two episodes files."""
    feats = {
        "observation.images.top": {"dtype": "video", "shape": [48, 64, 3], "names": ["height", "width", "channels"],
                                   "info": {"video.fps": FPS, "video.codec": "h264"}},
        "observation.images.hand": {"dtype": "image", "shape": [20, 24, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [12], "names": [f"s{i}" for i in range(12)]},
        "action": {"dtype": "float32", "shape": [7], "names": [f"a{i}" for i in range(7)]},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (
            ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
            ("task_index", "int64"))},
    }
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": 3, "total_frames": sum(LENGTHS),
            "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": FPS, "splits": {"train": "0:3"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": feats}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/stats.json").write_text("{}")
    write_video(root / "videos/observation.images.top/chunk-000/file-000.mp4", LENGTHS[0] + LENGTHS[1])
    write_video(root / "videos/observation.images.top/chunk-000/file-001.mp4", 3 + LENGTHS[2])
    video_loc = [(0, 0.0), (0, LENGTHS[0] / FPS), (1, 3 / FPS)]  # (file, from_timestamp)
    rows, tables, start = [], {0: [], 1: []}, 0
    for ep, T in enumerate(LENGTHS):
        data_file = 0 if ep < 2 else 1
        state = ep * 100 + np.arange(T * 12, dtype=np.float32).reshape(T, 12)
        tables[data_file].append(pa.table({
            "index": np.arange(start, start + T), "episode_index": np.full(T, ep), "frame_index": np.arange(T),
            "timestamp": (np.arange(T) / FPS).astype(np.float32), "task_index": np.zeros(T, np.int64),
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 12),
            "action": pa.array(list(-state[:, :7] - 0.5)),  # a plain (variable size) list column
            "observation.images.hand": pa.array([{"bytes": png(10 * ep + t), "path": None} for t in range(T)]),
        }))
        vfile, from_ts = video_loc[ep]
        rows.append({"episode_index": ep, "tasks": ["push"], "length": T, "data/chunk_index": 0,
                     "data/file_index": data_file, "dataset_from_index": start, "dataset_to_index": start + T,
                     "videos/observation.images.top/chunk_index": 0, "videos/observation.images.top/file_index": vfile,
                     "videos/observation.images.top/from_timestamp": from_ts,
                     "videos/observation.images.top/to_timestamp": from_ts + T / FPS})
        start += T
    for i, parts in tables.items():
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), root / f"data/chunk-000/file-{i:03d}.parquet")
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[2:]), root / "meta/episodes/chunk-000/file-001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["push"]}), root / "meta/tasks.parquet")


HAND_MAP = {"keys": {"observation.images.top": "scene_rgb", "observation.images.hand": "wrist_rgb",
                     "action": "action"},
            "state_keys": ["observation.state"], "state_slices": {"ee_pose": [0, 9], "gripper": [9, 10]},
            "image_size": [24, 32]}


@pytest.fixture
def v3(tmp_path: Path) -> Path:
    root = tmp_path / "hand_v3"
    write_v3(root)
    return root


def test_import_handwritten_v3_folder(tmp_path: Path, v3: Path) -> None:
    out = tmp_path / "out.zarr"
    summary = run(v3, out, map=HAND_MAP)
    assert summary["episodes"] == 3 and summary["frames"] == sum(LENGTHS)
    rb = ReplayBuffer.open(out)
    np.testing.assert_array_equal(rb.episode_lengths, LENGTHS)
    assert rb.keys == ["action", "ee_pose", "gripper", "scene_rgb", "wrist_rgb"]
    first_in_file = [0, LENGTHS[0], 3]  # video frame of each episode's first step
    for ep, T in enumerate(LENGTHS):
        got = rb.get_episode(ep)
        state = ep * 100 + np.arange(T * 12, dtype=np.float32).reshape(T, 12)
        np.testing.assert_array_equal(got["ee_pose"], state[:, :9])
        np.testing.assert_array_equal(got["gripper"], state[:, 9:10])
        np.testing.assert_array_equal(got["action"], -state[:, :7] - 0.5)  # 7-D, stored as it is
        assert got["scene_rgb"].shape == (T, 24, 32, 3) and got["wrist_rgb"].shape == (T, 24, 32, 3)
        levels = got["scene_rgb"].reshape(T, -1).mean(1)
        np.testing.assert_allclose(levels, [frame_value(first_in_file[ep] + t) for t in range(T)], atol=3.5)
        np.testing.assert_array_equal(got["wrist_rgb"][:, 5, 5, 0], [10 * ep + t for t in range(T)])


def test_cli_with_the_lerobot_preset(tmp_path: Path) -> None:
    src = make_ours(tmp_path / "ours.zarr", lengths=(6, 5))
    lr, back = tmp_path / "lr", tmp_path / "back.zarr"
    cmd = [sys.executable, "-m", "policy.data.convert", f"src={src.path}", f"out={lr}", "out_format=lerobot",
           "progress=false", "lerobot.vcodec=libx264", "lerobot.crf=18"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    cmd = [sys.executable, "-m", "policy.data.convert", "convert=lerobot", f"src={lr}", f"out={back}",
           "map.image_size=[32,32]", "progress=false"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "'episodes': 2" in res.stdout
    rb = ReplayBuffer.open(back)
    np.testing.assert_array_equal(rb.load(["action"])["action"], src.load(["action"])["action"])
    res = subprocess.run([*cmd[:-1], "progress=false", "map.bogus=1"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "map.bogus" in res.stderr


# ------------------------------------------------------------------------------- bad files and options


def test_missing_feature_names_the_file_and_key(tmp_path: Path, v3: Path) -> None:
    out = tmp_path / "out.zarr"
    bad = {**HAND_MAP, "keys": {**HAND_MAP["keys"], "observation.images.front": "scene_rgb"}}
    del bad["keys"]["observation.images.top"]
    with pytest.raises(DatasetError, match=r"info\.json: no feature 'observation\.images\.front'"):
        run(v3, out, map=bad)
    assert_nothing_written(out)


def test_length_mismatch_names_the_data_file(tmp_path: Path, v3: Path) -> None:
    p = v3 / "meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(p).to_pylist()
    rows[1]["length"] = 8
    pq.write_table(pa.Table.from_pylist(rows), p)
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=r"data/chunk-000/file-000\.parquet: episode 1: 7 rows.*length 8"):
        run(v3, out, map=HAND_MAP)
    assert_nothing_written(out)


def test_unreadable_or_missing_video_names_the_file_and_key(tmp_path: Path, v3: Path) -> None:
    video = v3 / "videos/observation.images.top/chunk-000/file-001.mp4"
    video.write_bytes(b"not an mp4 at all" * 50)
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=r"cannot read video file .*file-001\.mp4 \(key 'observation\.images\.top"):
        run(v3, out, map=HAND_MAP)
    assert_nothing_written(out)
    video.unlink()
    with pytest.raises(DatasetError, match=r"missing video file .*file-001\.mp4 \(key 'observation\.images\.top'\)"):
        run(v3, out, map=HAND_MAP)
    assert_nothing_written(out)


def test_video_shorter_than_the_episode(tmp_path: Path, v3: Path) -> None:
    write_video(v3 / "videos/observation.images.top/chunk-000/file-001.mp4", 5)  # needs 3 + 4 frames
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=r"file-001\.mp4 \(key 'observation\.images\.top'\) ends at"):
        run(v3, out, map=HAND_MAP)
    assert_nothing_written(out)


def test_missing_parquet_names_the_path(tmp_path: Path, v3: Path) -> None:
    (v3 / "data/chunk-000/file-001.parquet").unlink()
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match=r"missing data file .*data/chunk-000/file-001\.parquet"):
        run(v3, out, map=HAND_MAP)
    assert_nothing_written(out)
    shutil.rmtree(v3 / "meta/episodes")
    with pytest.raises(DatasetError, match=r"no episodes files"):
        run(v3, out, map=HAND_MAP)


def test_older_version_and_empty_map_are_refused(tmp_path: Path, v3: Path) -> None:
    with pytest.raises(DatasetError, match="key map is empty"):
        run(v3, tmp_path / "out.zarr")
    info = json.loads((v3 / "meta/info.json").read_text())
    (v3 / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="v2.1"):
        run(v3, tmp_path / "out.zarr", map=HAND_MAP)
    assert_nothing_written(tmp_path / "out.zarr")


def test_existing_output_needs_overwrite(tmp_path: Path, v3: Path) -> None:
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="overwrite=true"):
        run(v3, out, map=HAND_MAP)
    assert (out / "keep.txt").read_text() == "mine"
    run(v3, out, map=HAND_MAP, overwrite=True)
    assert ReplayBuffer.open(out).n_episodes == 3 and not (out / "keep.txt").exists()


def test_config_and_rate_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="map.bogus"):
        from_dict(ConvertConfig, {"src": "a", "out": "b", "map": {"bogus": 1}})
    with pytest.raises(ConfigError, match="src_format"):
        from_dict(ConvertConfig, {"src": "a", "out": "b", "src_format": "rlds"})
    with pytest.raises(ConfigError, match="produced twice"):
        from_dict(ConvertConfig, {"src": "a", "out": "b", "map": {"keys": {"x": "action", "y": "action"}}})
    with pytest.raises(ConfigError, match="state_slices.ee_pose"):
        from_dict(ConvertConfig, {"src": "a", "out": "b", "map": {"state_keys": ["s"],
                                                                 "state_slices": {"ee_pose": [3, 3]}}})
    with pytest.raises(ConfigError, match="lerobot.crf"):
        from_dict(ConvertConfig, {"src": "a", "out": "b", "lerobot": {"crf": 99}})
    src = make_ours(tmp_path / "ours.zarr", lengths=(4, 4))  # timestamps at 10 Hz
    with pytest.raises(DatasetError, match=r"'timestamp' steps at 10.00 Hz, but lerobot.fps=30"):
        run(src.path, tmp_path / "lr", out_format="lerobot", lerobot={"fps": 30})
    assert_nothing_written(tmp_path / "lr")
    with pytest.raises(ValueError, match="lerobot.vcodec: PyAV has no video encoder 'h265x'"):
        run(src.path, tmp_path / "lr", out_format="lerobot", lerobot={"vcodec": "h265x"})
    assert_nothing_written(tmp_path / "lr")
    with pytest.raises(ConfigError, match="out must differ"):
        from_dict(ConvertConfig, {"src": str(tmp_path), "out": str(tmp_path)})
