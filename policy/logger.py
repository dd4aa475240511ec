"""Training logs: JSON lines always, TensorBoard and Weights & Biases when ``train.loggers`` names them.

``RunLogger(out_dir, cfg)`` appends every record to ``<out_dir>/log.jsonl`` and fans the numeric
values out as scalars (tag = the record key, e.g. ``loss``, ``val_loss``, ``eval_success_rate``). A run
resumed at step S first drops the lines of steps > S that a killed run wrote after its last checkpoint, so
the log continues from the checkpoint's step with no step twice (as TensorBoard's ``purge_step`` does):

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` into ``<out_dir>/tensorboard``; a resumed
  run appends to it and hides the events that a crashed run wrote after its checkpoint (``purge_step``).
- ``wandb``: ``wandb.init(mode=train.wandb_mode, dir=<out_dir>)`` with the resolved config and a run id
  kept in ``<out_dir>/wandb_run_id.txt``, so a resumed run continues the same W&B run (``resume="allow"``).
  ``offline`` (the default) writes ``<out_dir>/wandb/offline-run-*`` and needs no network
  (``wandb sync <dir>`` uploads it later).

Evaluation videos (mp4 paths) go to W&B as ``wandb.Video`` files, and to TensorBoard as animated GIF
images (what ``add_video`` writes, encoded here with Pillow so that moviepy is not needed; the images tab
plays them). tensorboard and wandb are imported only when configured (``pip install -e ".[logging]"``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy.config import Config
from policy.config_utils import to_dict

log = logging.getLogger("policy.logger")

GIF_MAX_FRAMES = 200  # longer videos are subsampled in time for TensorBoard (the W&B mp4 is untouched)


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a record as floats (bools, strings and lists stay in the JSON lines only)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a video file -> (frames (T, H, W, 3) uint8, frames per second); PyAV, else imageio."""
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 10)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        if not frames:
            raise ValueError(f"{path}: the video has no frames")
        return np.stack(frames), fps
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise ImportError('decoding evaluation videos for TensorBoard needs PyAV or imageio: '
                          'pip install -e ".[interop]" (or ".[sim]")') from e
    frames = np.asarray(iio.imread(path))
    fps = float(iio.immeta(path).get("fps", 10))
    return frames[..., :3], fps


def encode_gif(frames: np.ndarray, fps: float, max_frames: int = GIF_MAX_FRAMES) -> bytes:
    """(T, H, W, 3) uint8 -> animated GIF bytes, looping, subsampled in time to at most ``max_frames``."""
    from PIL import Image

    stride = max(1, math.ceil(len(frames) / max_frames))
    frames = frames[::stride]
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    duration_ms = max(20, int(round(1000 * stride / max(fps, 1e-3))))  # GIF delays are in 10 ms units
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def truncate_jsonl(path: Path, start_step: int) -> int:
    """Drop the records of steps > ``start_step`` (and a torn last line) from a JSON-lines log, atomically.

    -> the number of lines dropped. Nothing happens when the file is absent or nothing needs dropping.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):  # a line torn by the kill
            step = math.inf
        if isinstance(step, (int, float)) and step <= start_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)
        log.info("%s: dropped %d records after step %d (written after the checkpoint the run resumes from)",
                 path, dropped, start_step)
    return dropped


class RunLogger:
    """JSON lines in ``<out_dir>/log.jsonl`` plus the backends of ``cfg.train.loggers``.

    ``start_step`` is the step the run starts (or resumes) at. Each record is one step's values.
    """

    def __init__(self, out_dir: str | Path, cfg: Config, start_step: int = 0):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        t = cfg.train
        truncate_jsonl(self.out / "log.jsonl", start_step)
        self.jsonl = (self.out / "log.jsonl").open("a")
        self.tb = None
        self.wandb_run = None
        try:
            if "tensorboard" in t.loggers:
                self.tb = self._open_tensorboard(cfg, start_step)
            if "wandb" in t.loggers:
                self.wandb_run = self._open_wandb(cfg)
        except BaseException:
            self.close()
            raise

    def _open_tensorboard(self, cfg: Config, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError('train.loggers contains tensorboard, which is not installed: '
                              'pip install -e ".[logging]"') from e
        import yaml

        # resuming at step S: events of steps > S that a crashed run wrote after its last checkpoint are hidden
        writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step + 1 if start_step > 0 else None)
        if start_step == 0:
            text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
            writer.add_text("config", "```\n" + text + "```", 0)  # markdown code block
        return writer

    def _open_wandb(self, cfg: Config):
        try:
            import wandb
        except ImportError as e:
            raise ImportError('train.loggers contains wandb, which is not installed: '
                              'pip install -e ".[logging]"') from e
        t = cfg.train
        id_file = self.out / "wandb_run_id.txt"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]  # W&B ids: letters and digits
            id_file.write_text(run_id + "\n")
        return wandb.init(project=t.wandb_project, entity=t.wandb_entity or None, name=self.out.name,
                          dir=str(self.out), config=to_dict(cfg), mode=t.wandb_mode, id=run_id, resume="allow")

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        """Append ``record`` (JSON-serializable values) at ``step``; numbers also go to the backends."""
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
        self.jsonl.flush()
        scalars = _scalars(record)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=step)

    def log_videos(self, step: int, paths: Sequence[str | Path], tag: str = "eval_video") -> None:
        """Log mp4 files (e.g. the evaluation videos) at ``step`` as ``<tag>_<i>``; a file that cannot be
        read is skipped with a warning (a broken video must not end a training run)."""
        for i, path in enumerate(paths):
            name = f"{tag}_{i}"
            if not Path(path).is_file():
                log.warning("step %d: video %s does not exist; not logged", step, path)
                continue
            if self.tb is not None:
                try:
                    self._tb_video(name, Path(path), step)
                except Exception:  # noqa: BLE001 - decoding errors come from PyAV/imageio/Pillow in many types
                    log.exception("step %d: cannot log video %s to TensorBoard", step, path)
            if self.wandb_run is not None:
                import wandb

                self.wandb_run.log({name: wandb.Video(str(path), format=Path(path).suffix.lstrip(".") or "mp4")},
                                   step=step)

    def _tb_video(self, tag: str, path: Path, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        frames, fps = read_video(path)  # (T, H, W, 3)
        image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                              encoded_image_string=encode_gif(frames, fps))
        # the same summary add_video writes (it needs moviepy only to encode the GIF)
        self.tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.tb.flush()

    def close(self) -> None:
        """Flush and close every backend (idempotent)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if not self.jsonl.closed:
            self.jsonl.close()
