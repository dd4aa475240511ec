"""Tests for policy.data.replay_buffer: round trip, crash safety (real SIGKILL), bad input, validate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from policy.data.replay_buffer import DatasetError, ReplayBuffer

REPO = Path(__file__).resolve().parents[2]


def make_episode(i: int, T: int, hw: tuple[int, int] = (6, 8)) -> dict[str, np.ndarray]:
    """Deterministic episode content derived from the episode index ``i``."""
    H, W = hw
    t = np.arange(T)
    base = (np.arange(H)[:, None, None] * 3 + np.arange(W)[:, None] * 5 + np.arange(3)) % 256  # (H, W, 3)
    shift = ((i * 31 + t) % 256).astype(np.uint8)[:, None, None, None]  # (T, 1, 1, 1)
    img = base.astype(np.uint8)[None] + shift  # (T, H, W, 3), uint8 wraps mod 256
    return {
        "scene_rgb": img,
        "wrist_rgb": 255 - img,
        "ee_pose": (i + 1e-3 * np.arange(T * 9).reshape(T, 9)).astype(np.float64),  # stored as float32
        "gripper": (0.01 * i + 1e-4 * t[:, None]).astype(np.float32),
        "action": (-i - 1e-3 * np.arange(T * 10).reshape(T, 10)).astype(np.float32),
        "timestamp": 1000.0 * i + 0.1 * t,
    }


def assert_episode_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        expected = want[k].astype(got[k].dtype)
        np.testing.assert_array_equal(got[k], expected, err_msg=k)


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    rb = ReplayBuffer.create(path)
    lengths = [4, 7, 2]
    episodes = [make_episode(i, T) for i, T in enumerate(lengths)]
    for i, ep in enumerate(episodes):
        assert rb.add_episode(ep) == i

    rb = ReplayBuffer.open(path)  # read-only
    assert rb.read_only
    assert rb.n_episodes == 3
    assert rb.n_steps == sum(lengths)
    assert rb.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum(lengths))
    np.testing.assert_array_equal(rb.episode_lengths, lengths)
    assert rb.keys == sorted(episodes[0])
    assert rb.episode_slice(-1) == slice(11, 13)

    for i, ep in enumerate(episodes):
        got = rb.get_episode(i)
        assert_episode_equal(got, ep)
        assert got["scene_rgb"].dtype == np.uint8
        assert got["ee_pose"].dtype == np.float32
        assert got["gripper"].dtype == np.float32
        assert got["action"].dtype == np.float32
        assert got["timestamp"].dtype == np.float64
        np.testing.assert_array_equal(got["timestamp"], ep["timestamp"])  # float64 exact
    assert list(rb.get_episode(1, keys=["action"])) == ["action"]

    loaded = rb.load()
    for k in episodes[0]:
        want = np.concatenate([ep[k] for ep in episodes]).astype(loaded[k].dtype)
        np.testing.assert_array_equal(loaded[k], want, err_msg=k)

    group = zarr.open_group(path, mode="r")
    for key in ("scene_rgb", "wrist_rgb"):
        arr = group[f"data/{key}"]
        assert arr.chunks == (1, 6, 8, 3)
        assert arr.compressors, f"{key} has no compressor"
    assert group["data/action"].compressors
    assert group["meta/episode_ends"].dtype == np.int64


def test_episode_slice_out_of_range(tmp_path: Path) -> None:
    rb = ReplayBuffer.create(tmp_path / "ds")
    rb.add_episode(make_episode(0, 3))
    with pytest.raises(IndexError):
        rb.episode_slice(1)
    with pytest.raises(IndexError):
        rb.episode_slice(-2)


def test_create_and_open_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="not an empty directory"):
        ReplayBuffer.create(tmp_path / "full")
    with pytest.raises(DatasetError, match="no such directory"):
        ReplayBuffer.open(tmp_path / "nope")
    with pytest.raises(DatasetError, match="root zarr group"):
        ReplayBuffer.open(tmp_path / "full")
    with pytest.raises(DatasetError, match="full"):
        ReplayBuffer.open(tmp_path / "full", mode="a")  # not empty and not a dataset: never overwritten
    assert (tmp_path / "full" / "x.txt").exists()

    group = zarr.open_group(tmp_path / "nometa", mode="w", zarr_format=3)
    group.create_group("data")
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "nometa")


def test_open_append_creates_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.n_episodes == 0 and rb.n_steps == 0 and rb.keys == []
    rb.add_episode(make_episode(0, 3))
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.add_episode(make_episode(1, 2)) == 1
    assert ReplayBuffer.open(path).n_steps == 5


# ------------------------------------------------------------------------------------------ crash safety

_CHILD = """
import sys
from test_replay_buffer import make_episode
from policy.data.replay_buffer import ReplayBuffer
rb = ReplayBuffer.create(sys.argv[1])
i = 0
while True:
    T = 4 + i if i < 2 else 1000  # small committed episodes, then large ones that get killed mid-write
    rb.add_episode(make_episode(i, T, hw=(24, 32)))
    print(f"committed {i}", flush=True)
    i += 1
"""


def test_crash_sigkill_mid_episode(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent)]))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(2):
            line = proc.stdout.readline()
            assert line.strip() == f"committed {i}", f"child said {line!r}; stderr: {proc.stderr.read()}"
        # the child now writes the 1000-frame episode 2 (~1 ms per frame chunk): kill it once its first
        # array has grown on disk, i.e. surely between writing data and committing episode_ends
        meta = path / "data" / "scene_rgb" / "zarr.json"
        deadline = time.monotonic() + 20.0
        while json.loads(meta.read_text())["shape"][0] == 9 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    rb = ReplayBuffer.open(path)
    n_ep = rb.n_episodes
    assert n_ep >= 2
    lengths = [4 + i if i < 2 else 1000 for i in range(n_ep)]
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum(lengths))
    for i in range(n_ep):
        assert_episode_equal(rb.get_episode(i), make_episode(i, lengths[i], hw=(24, 32)))
    raw = zarr.open_group(path, mode="r")
    assert max(raw[f"data/{k}"].shape[0] for k in rb.keys) > rb.n_steps, "no uncommitted data left behind"
    assert all(v.shape[0] == rb.n_steps for v in rb.load().values())

    rb = ReplayBuffer.open(path, mode="a")
    new = make_episode(99, 5, hw=(24, 32))
    assert rb.add_episode(new) == n_ep
    rb = ReplayBuffer.open(path)
    assert rb.n_steps == sum(lengths) + 5
    for k in rb.keys:
        assert raw[f"data/{k}"].shape[0] == rb.n_steps, f"{k} not trimmed"
    assert_episode_equal(rb.get_episode(-1), new)
    assert_episode_equal(rb.get_episode(1), make_episode(1, 5, hw=(24, 32)))
    rb.validate({"action": ((10,), "float32")})


def _grow_data_by_hand(path: Path, n_extra: int) -> None:
    """Simulate a crash after the data arrays were written but before episode_ends was."""
    group = zarr.open_group(path, mode="a")
    for _, arr in group["data"].arrays():
        n = arr.shape[0]
        arr.resize((n + n_extra, *arr.shape[1:]))
        arr[n:] = 7 if arr.dtype != np.uint8 else 200


def test_uncommitted_data_is_ignored_then_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    rb = ReplayBuffer.create(path)
    ep0, ep1 = make_episode(0, 3), make_episode(1, 4)
    rb.add_episode(ep0)
    _grow_data_by_hand(path, 6)

    rb = ReplayBuffer.open(path, mode="a")
    assert rb.n_episodes == 1 and rb.n_steps == 3
    assert all(v.shape[0] == 3 for v in rb.load().values())
    assert_episode_equal(rb.get_episode(0), ep0)

    rb.add_episode(ep1)
    raw = zarr.open_group(path, mode="r")
    assert all(arr.shape[0] == 7 for _, arr in raw["data"].arrays())
    rb = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb.episode_ends, [3, 7])
    assert_episode_equal(rb.get_episode(0), ep0)
    assert_episode_equal(rb.get_episode(1), ep1)


@pytest.mark.parametrize("garbage", [0, 2, 3, 10**6])
def test_garbage_episode_ends_tail_is_ignored(tmp_path: Path, garbage: int) -> None:
    """A crash while episode_ends was resized/written: 0 (fill value), <= previous, or past the data."""
    path = tmp_path / "ds"
    rb = ReplayBuffer.create(path)
    rb.add_episode(make_episode(0, 3))
    _grow_data_by_hand(path, 4)  # the data of episode 1 was written ...
    ends = zarr.open_group(path, mode="a")["meta/episode_ends"]
    ends.resize((3,))
    ends[1:] = [garbage, 7]  # ... but its end (and one more) is garbage

    rb = ReplayBuffer.open(path, mode="a")
    np.testing.assert_array_equal(rb.episode_ends, [3])
    ep = make_episode(5, 2)
    assert rb.add_episode(ep) == 1
    rb = ReplayBuffer.open(path)
    np.testing.assert_array_equal(rb.episode_ends, [3, 5])
    assert_episode_equal(rb.get_episode(1), ep)
    assert zarr.open_group(path, mode="r")["meta/episode_ends"].shape == (2,)
    # the stale trailing entry must not come back when episode_ends grows again
    ends = zarr.open_group(path, mode="a")["meta/episode_ends"]
    ends.resize((3,))
    assert ends[2] == 0


def test_crashed_first_episode_is_replaced(tmp_path: Path) -> None:
    """Arrays of an uncommitted first episode may have other keys/shapes; the next episode wins."""
    path = tmp_path / "ds"
    rb = ReplayBuffer.create(path)
    group = zarr.open_group(path, mode="a")
    group["data"].create_array("old", shape=(5, 2), dtype="float32")
    group["data"].create_array("action", shape=(5, 3), dtype="float32")
    rb = ReplayBuffer.open(path, mode="a")
    assert rb.n_episodes == 0
    ep = make_episode(0, 3)
    rb.add_episode(ep)
    rb = ReplayBuffer.open(path)
    assert rb.keys == sorted(ep)
    assert_episode_equal(rb.get_episode(0), ep)


# ------------------------------------------------------------------------------------------ bad input


def _buffer_with_one_episode(tmp_path: Path) -> ReplayBuffer:
    rb = ReplayBuffer.create(tmp_path / "ds")
    rb.add_episode(make_episode(0, 3))
    return rb


def test_mismatched_lengths(tmp_path: Path) -> None:
    rb = ReplayBuffer.create(tmp_path / "ds")
    ep = make_episode(0, 3)
    ep["gripper"] = ep["gripper"][:2]
    with pytest.raises(DatasetError, match=r"gripper': 2"):
        rb.add_episode(ep)
    with pytest.raises(DatasetError, match="T >= 1"):
        rb.add_episode(make_episode(0, 0))
    assert rb.n_episodes == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_is_refused(tmp_path: Path, bad: float) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    ep = make_episode(1, 3)
    ep["ee_pose"][1, 4] = bad
    with pytest.raises(DatasetError, match="'ee_pose'.*NaN"):
        rb.add_episode(ep)
    ep = make_episode(1, 3)
    ep["ee_pose"][0, 0] = 1e300  # finite in float64, inf once stored as float32
    with pytest.raises(DatasetError, match="'ee_pose'"):
        rb.add_episode(ep)
    rb = ReplayBuffer.open(rb.path)
    assert rb.n_episodes == 1
    assert np.isfinite(rb.load()["ee_pose"]).all()


def test_changed_key_set(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    ep = make_episode(1, 3)
    del ep["gripper"]
    ep["force"] = np.zeros((3, 6), np.float32)
    with pytest.raises(DatasetError, match=r"missing keys \['gripper'\], extra keys \['force'\]"):
        rb.add_episode(ep)


def test_changed_frame_shape(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    ep = make_episode(1, 3)
    ep["ee_pose"] = ep["ee_pose"][:, :7]
    with pytest.raises(DatasetError, match=r"'ee_pose'.*expected \(9,\), found \(7,\)"):
        rb.add_episode(ep)
    with pytest.raises(DatasetError, match="'scene_rgb'"):
        rb.add_episode(make_episode(1, 3, hw=(5, 8)))
    assert ReplayBuffer.open(rb.path).n_episodes == 1


def test_float_into_integer_key_refused(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    ep = make_episode(1, 3)
    ep["scene_rgb"] = ep["scene_rgb"].astype(np.float32)
    with pytest.raises(DatasetError, match="'scene_rgb'"):
        rb.add_episode(ep)


def test_read_only_refuses_append(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    ro = ReplayBuffer.open(rb.path)
    with pytest.raises(DatasetError, match="read-only"):
        ro.add_episode(make_episode(1, 3))
    assert ReplayBuffer.open(rb.path).n_episodes == 1


def test_unknown_key_in_load(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    with pytest.raises(DatasetError, match="'force'"):
        rb.load(["force"])


# ------------------------------------------------------------------------------------------ validate


def test_validate(tmp_path: Path) -> None:
    rb = _buffer_with_one_episode(tmp_path)
    spec = {
        "scene_rgb": ((6, 8, 3), np.uint8),
        "ee_pose": ((9,), "float32"),
        "action": ((10,), np.dtype(np.float32)),
        "timestamp": ((), "float64"),
    }
    rb.validate(spec)  # extra keys (wrist_rgb, gripper) are fine

    with pytest.raises(DatasetError, match=r"'ee_pose' expected \(T, 7\) float32, found \(T, 9\) float32"):
        rb.validate({"ee_pose": ((7,), "float32")})
    with pytest.raises(DatasetError, match=r"'timestamp' expected \(T,\) float32, found \(T,\) float64"):
        rb.validate({"timestamp": ((), "float32")})
    with pytest.raises(DatasetError) as err:
        rb.validate({"joint_pos": ((7,), "float64")})
    msg = str(err.value)
    assert str(rb.path) in msg
    assert "missing key 'joint_pos' (expected shape (T, 7) float64)" in msg
    assert "found keys: ['action', 'ee_pose'" in msg
