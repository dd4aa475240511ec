"""The dataset viewer: printed summary, the episode video (layout, pixels, cursor), bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from policy import keys
from policy.data.inspect import main
from policy.data.replay_buffer import ReplayBuffer

av = pytest.importorskip("av")

H = W = 32
SCALE = 3
PLOT_H = 120


def _blocks(rng: np.random.Generator) -> np.ndarray:
    """(32, 32, 3) uint8: a 4x4 grid of 8 px blocks in random colours (distinct from step to step)."""
    return rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(8, axis=0).repeat(8, axis=1)


def _episode(rng: np.random.Generator, T: int, offset: float, images: bool = True) -> dict[str, np.ndarray]:
    t = np.arange(T, dtype=np.float32)
    ep = {keys.ACTION: np.stack([offset + t, -2.0 * t, np.full(T, 0.5, np.float32)], axis=1).astype(np.float32),
          keys.EE_POSE: np.zeros((T, 4), np.float32), keys.TIMESTAMP: np.arange(T) * 0.2}
    if images:
        ep[keys.SCENE_RGB] = np.stack([_blocks(rng) for _ in range(T)])
        ep[keys.WRIST_RGB] = np.stack([_blocks(rng) for _ in range(T)])
    return ep


@pytest.fixture
def dataset(tmp_path):
    """Two episodes of 5 and 8 steps; actions (T, 3): offset + t, -2 t, 0.5 (constant)."""
    rng = np.random.default_rng(0)
    rb = ReplayBuffer.create(tmp_path / "d.zarr")
    rb.add_episode(_episode(rng, 5, 10.0))
    rb.add_episode(_episode(rng, 8, 0.0))
    return tmp_path / "d.zarr", rb


def _decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_summary_lists_lengths_shapes_and_action_ranges(dataset, capsys):
    path, _ = dataset
    main([str(path)])
    out = capsys.readouterr().out
    assert "2 episodes, 13 steps" in out
    assert "min 5, mean 6.5, max 8, total 13 steps" in out
    assert "(13, 32, 32, 3)" in out and "(13, 3)" in out and "(13, 4)" in out and "(13,)" in out
    rows = {int(line.split()[0]): [float(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.startswith("     ") and len(line.split()) == 5}
    acts = np.concatenate([10.0 + np.arange(5), np.arange(8)])
    assert rows[0] == pytest.approx([0.0, 14.0, acts.mean(), acts.std()], rel=1e-4)
    assert rows[1][:2] == [-14.0, 0.0]
    assert rows[2] == pytest.approx([0.5, 0.5, 0.5, 0.0])


def test_video_shows_the_cameras_of_each_step_and_a_moving_cursor(dataset, tmp_path, capsys):
    path, rb = dataset
    video = tmp_path / "ep.mp4"
    main([str(path), "episode=1", f"video={video}", "--scale", str(SCALE), "--plot_height", str(PLOT_H)])
    assert "episode 1: 8 frames" in capsys.readouterr().out
    frames = _decode(video)
    ep = rb.get_episode(1)
    assert len(frames) == 8
    assert frames[0].shape == (H * SCALE + PLOT_H, 2 * W * SCALE, 3)
    for t in (0, 3, 7):
        left = frames[t][:H * SCALE, :W * SCALE].astype(float)
        right = frames[t][:H * SCALE, W * SCALE:].astype(float)
        scene = ep[keys.SCENE_RGB][t].repeat(SCALE, 0).repeat(SCALE, 1).astype(float)
        wrist = ep[keys.WRIST_RGB][t].repeat(SCALE, 0).repeat(SCALE, 1).astype(float)
        assert np.abs(left - scene).mean() < 8  # this step's scene image (lossy H.264)
        assert np.abs(right - wrist).mean() < 8
        other = ep[keys.SCENE_RGB][(t + 1) % 8].repeat(SCALE, 0).repeat(SCALE, 1).astype(float)
        assert np.abs(left - other).mean() > 40  # and not another step's
    plots = [f[H * SCALE + 20:H * SCALE + PLOT_H - 16].astype(float) for f in frames]  # below legend, above text
    cursor_x = [int(np.argmax(p.min(axis=2).mean(axis=0))) for p in plots]  # the white column
    assert all(b > a for a, b in zip(cursor_x, cursor_x[1:])), cursor_x
    assert cursor_x[0] < 10 and cursor_x[-1] > 2 * W * SCALE - 10
    assert np.abs(plots[0] - plots[-1]).mean() > 0.5


def test_video_of_a_dataset_without_images_is_the_plot(tmp_path, capsys):
    rb = ReplayBuffer.create(tmp_path / "lowdim.zarr")
    rb.add_episode(_episode(np.random.default_rng(1), 6, 0.0, images=False))
    main([str(tmp_path / "lowdim.zarr"), "--video", str(tmp_path / "v.mp4"), "--episode", "-1"])
    frames = _decode(tmp_path / "v.mp4")
    assert len(frames) == 6 and frames[0].shape == (160, 480, 3)
    assert "fps" in capsys.readouterr().out


def test_bad_episode_and_missing_pyav_fail_with_a_clear_error(dataset, tmp_path, capsys, monkeypatch):
    path, _ = dataset
    with pytest.raises(SystemExit):
        main([str(path), "--episode", "2", "--video", str(tmp_path / "x.mp4")])
    assert "episode 2 out of range (2 episodes)" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing.zarr")])
    assert "error:" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(SystemExit):
        main([str(path), "--video", str(tmp_path / "y.mp4")])
    assert 'pip install -e ".[interop]"' in capsys.readouterr().err
