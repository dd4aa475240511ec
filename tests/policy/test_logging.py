"""Training logs: JSON lines, TensorBoard scalars and eval videos, W&B offline runs; resume appends to them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from policy.config import TrainConfig
from policy.logger import RunLogger, encode_gif, read_video
from policy.train import train

from .conftest import tiny_config

VIDEO_FRAMES = 6


def _write_mp4(path: Path, n_frames: int = VIDEO_FRAMES, hw: tuple[int, int] = (32, 48)) -> Path:
    """A small mp4 whose frame i is uniformly gray level 25 * i."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = hw
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((*hw, 3), 25 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def fake_eval(checkpoint, **args):
    """``train.eval_hook`` for these tests: writes one mp4 where ``sim.evaluate`` writes its videos."""
    ckpt = Path(checkpoint)
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    video = _write_mp4(ckpt.parent.parent / "eval" / f"step_{step:06d}" / "videos" / "episode_000.mp4")
    return {"success_rate": 0.25 * step, "mean_score": 0.5, "videos": [str(video)]}


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """W&B must never reach the network nor write outside the test folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_training_logs_scalars_and_eval_videos_to_tensorboard_and_wandb(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, run, steps=4, log_every=1, val_every=2, eval_every=2,
                      eval_hook="tests.policy.test_logging:fake_eval",
                      loggers=("tensorboard", "wandb"), wandb_mode="offline"))
    records = _jsonl(run)
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4]

    acc = _events(run)
    scalars = acc.Tags()["scalars"]
    assert {"loss", "lr", "samples_per_s", "val_loss", "eval_success_rate"} <= set(scalars)
    tb_loss = {e.step: e.value for e in acc.Scalars("loss")}
    assert tb_loss.keys() == losses.keys()
    np.testing.assert_allclose([tb_loss[s] for s in losses], list(losses.values()), rtol=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("eval_success_rate")] == [(2, 0.5), (4, 1.0)]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config as text

    videos = acc.Images("eval_video_0")
    assert [e.step for e in videos] == [2, 4]
    gif = Image.open(io.BytesIO(videos[0].encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == VIDEO_FRAMES and gif.size == (48, 32)
    gif.seek(VIDEO_FRAMES - 1)
    assert abs(np.asarray(gif.convert("RGB")).astype(float).mean() - 25 * (VIDEO_FRAMES - 1)) < 8

    run_id = (run / "wandb_run_id.txt").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0
    media = sorted((offline[0] / "files" / "media" / "videos").glob("eval_video_0_*.mp4"))
    assert len(media) == 2  # steps 2 and 4, copied from the eval folders


def test_resumed_run_appends_to_the_same_logs(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    cfg = dict(log_every=1, val_every=2, ckpt_every=2, loggers=("tensorboard", "wandb"))
    train(tiny_config(tiny_dataset, run, steps=2, **cfg))
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    train(tiny_config(tiny_dataset, run, steps=4, resume=True, **cfg))
    assert [r["step"] for r in _jsonl(run) if "loss" in r] == [1, 2, 3, 4]
    acc = _events(run)
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val_loss")] == [2, 4]
    assert (run / "wandb_run_id.txt").read_text().strip() == run_id  # the same W&B run continues
    wandb_files = sorted(p.name for p in (run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb_files == [f"run-{run_id}.wandb"] * 2  # one offline segment per session, one run id


def test_unreadable_video_is_skipped_and_the_rest_logged(tmp_path, tiny_dataset):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", loggers=("tensorboard",))
    good = _write_mp4(tmp_path / "good.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    logger = RunLogger(tmp_path / "run", cfg)
    try:
        logger.log(3, {"loss": 0.5, "note": "text stays in the JSON lines"})
        logger.log_videos(3, [tmp_path / "missing.mp4", bad, good])
    finally:
        logger.close()
    acc = _events(tmp_path / "run")
    assert acc.Tags()["images"] == ["eval_video_2"]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 0.5)]
    assert _jsonl(tmp_path / "run")[0]["note"] == "text stays in the JSON lines"


def test_video_decoding_and_gif_subsampling(tmp_path):
    frames, fps = read_video(_write_mp4(tmp_path / "v.mp4", n_frames=9))
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8 and fps == pytest.approx(10)
    gif = Image.open(io.BytesIO(encode_gif(frames, fps, max_frames=4)))
    assert gif.n_frames == 3  # every 3rd frame of 9
    assert gif.info["duration"] == 300  # 3 frames at 10 fps per GIF frame, in ms


@pytest.mark.parametrize("bad, field", [({"loggers": ("tensorbord",)}, "train.loggers"),
                                        ({"loggers": ("wandb", "wandb")}, "train.loggers"),
                                        ({"wandb_mode": "cloud"}, "train.wandb_mode"),
                                        ({"grad_accum": 3, "batch_size": 8}, "train.grad_accum")])
def test_bad_logging_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)
