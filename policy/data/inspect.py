"""Dataset viewer: print what a replay buffer holds and render one episode to an mp4.

``python -m policy.data.inspect DATASET [--episode N] [--video OUT.mp4] [--rerun OUT.rrd] [--fps F] [--scale S]``
(``episode=N video=OUT.mp4 rerun=OUT.rrd`` work too).

Prints the episode count, the episode lengths (min/mean/max, total steps), the shape and dtype of
every key, and per action dimension its min/max/mean/std over all committed steps. With ``--video``
it writes episode ``N`` (default 0, negative counts from the end) as an H.264 mp4: every image key
((H, W, 3) uint8: ``scene_rgb``, ``wrist_rgb``, ...) side by side on top, pixels repeated ``scale``
times, and below them the episode's actions, one line per dimension, each scaled to its own
min..max over the episode, with a cursor at the current step. A dataset without image keys gets
the plot alone. Encoding uses PyAV (``pip install -e ".[interop]"``), imported only for the video.
With ``--rerun`` it writes episode ``N`` as a Rerun recording (cameras, measured and commanded TCP, gripper,
step timing: ``policy.data.inspect_rerun``; ``pip install -e ".[viz]"``), opened with ``rerun OUT.rrd``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from policy import keys
from policy.data.replay_buffer import DatasetError, ReplayBuffer

PLOT_HEIGHT = 160  # px, the action plot under the images
PLOT_WIDTH = 480  # px, the plot width when the dataset has no image keys
MIN_IMAGE_HEIGHT = 192  # px, the default ``scale`` repeats pixels until the images are at least this tall
BACKGROUND = (24, 24, 24)
CURSOR = (255, 255, 255)
# distinct line colours, one per action dimension (cycled beyond 12)
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (67, 99, 216), (245, 130, 49), (145, 30, 180),
           (66, 212, 244), (240, 50, 230), (191, 239, 69), (250, 190, 212), (70, 153, 144), (220, 190, 255)]


def image_keys(rb: ReplayBuffer) -> list[str]:
    """Keys stored as (H, W, 3) uint8 frames: the shared camera keys first, then the others by name."""
    found = [k for k, (shape, dtype) in rb.frame_specs.items() if len(shape) == 3 and shape[-1] == 3
             and dtype == np.uint8]
    return [k for k in keys.IMAGE_KEYS if k in found] + sorted(k for k in found if k not in keys.IMAGE_KEYS)


def describe(rb: ReplayBuffer) -> str:
    """The text summary: episodes, lengths, key shapes and dtypes, per-dimension action statistics."""
    lengths = rb.episode_lengths
    lines = [f"dataset {rb.path}: {rb.n_episodes} episodes, {rb.n_steps} steps"]
    info = Path(rb.path) / "collect_info.json"
    if info.is_file():
        lines.append(f"collect_info.json: {json.dumps(json.loads(info.read_text()))}")
    if rb.n_episodes:
        lines.append(f"episode lengths: min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}, "
                     f"total {int(lengths.sum())} steps")
        shown = ", ".join(str(int(n)) for n in lengths[:20])
        lines.append(f"  per episode: {shown}{', ...' if len(lengths) > 20 else ''}")
    lines.append("keys:")
    for k, (shape, dtype) in sorted(rb.frame_specs.items()):
        lines.append(f"  {k:<16} {str((rb.n_steps, *shape)):<22} {dtype}")
    if keys.ACTION in rb.keys and rb.n_steps:
        act = rb.load([keys.ACTION])[keys.ACTION].reshape(rb.n_steps, -1).astype(np.float64)  # (N, A)
        lines.append(f"action ranges ({act.shape[1]} dims, over all {rb.n_steps} steps):")
        lines.append(f"  {'dim':>4} {'min':>11} {'max':>11} {'mean':>11} {'std':>11}")
        for d in range(act.shape[1]):
            a = act[:, d]
            lines.append(f"  {d:>4} {a.min():>11.5g} {a.max():>11.5g} {a.mean():>11.5g} {a.std():>11.5g}")
    return "\n".join(lines)


# ----------------------------------------------------------------- video


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def action_plot(actions: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Lines of ``actions`` (T, A) on a (height, width, 3) uint8 canvas; each dimension is scaled to its own
    min..max over the episode (a constant one gets its value in the legend and no line). Returns the canvas
    and the x pixel of each step (T,) int, for the cursor."""
    T, A = actions.shape
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 4, 4, 16, 14  # px margins: the legend above, the step counter below
    xs = left + np.round(np.arange(T) * (width - left - right - 1) / max(T - 1, 1)).astype(int)
    lo, hi = actions.min(axis=0), actions.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    unit = np.where(hi > lo, (actions - lo) / span, 0.5)  # (T, A) in [0, 1]
    ys = np.round(top + (1.0 - unit) * (height - top - bottom - 1)).astype(int)
    font = _font()
    if A == 0:
        draw.text((left, 2), "no action key", fill=CURSOR, font=font)
    x_label = left
    for d in range(A):
        colour = PALETTE[d % len(PALETTE)]
        label = f"a{d}" if hi[d] > lo[d] else f"a{d}={lo[d]:.3g}"  # a constant dimension: its value, no line
        if hi[d] > lo[d]:
            draw.line(list(zip(xs.tolist(), ys[:, d].tolist())), fill=colour, width=1)
        if x_label < width - 16:
            draw.text((x_label, 2), label, fill=colour, font=font)
            x_label += int(draw.textlength(label, font=font)) + 6
    return np.asarray(img, dtype=np.uint8).copy(), xs


def _fit_height(frame: np.ndarray, height: int) -> np.ndarray:
    """Resize (H, W, 3) to ``height`` rows keeping the aspect ratio (nearest neighbour)."""
    if frame.shape[0] == height:
        return frame
    width = max(1, round(frame.shape[1] * height / frame.shape[0]))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.NEAREST))


def episode_frames(rb: ReplayBuffer, episode: int, scale: int | None = None,
                   plot_height: int = PLOT_HEIGHT) -> tuple[Iterator[np.ndarray], tuple[int, int], int]:
    """Frames of one episode for the video: (iterator of (H, W, 3) uint8 frames, (H, W), T).

    Layout: the image keys side by side (each resized to the tallest one's height, then pixels repeated
    ``scale`` times; default: the smallest integer making them >= ``MIN_IMAGE_HEIGHT`` px tall), and the
    action plot of ``plot_height`` px under them. Width and height are padded to even numbers (H.264).
    Raises ``IndexError`` naming the range for a bad ``episode``.
    """
    if scale is not None and scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if plot_height < 32:
        raise ValueError(f"plot_height must be >= 32 px, got {plot_height}")
    sl = rb.episode_slice(episode)  # IndexError naming the dataset and the episode count
    T = sl.stop - sl.start
    cams = image_keys(rb)
    ep = rb.get_episode(episode, [*cams, *([keys.ACTION] if keys.ACTION in rb.keys else [])])
    if cams:
        h = max(ep[k].shape[1] for k in cams)
        scale = scale or max(1, -(-MIN_IMAGE_HEIGHT // h))
        top_h = h * scale
        top_w = sum(_fit_height(ep[k][0], h).shape[1] for k in cams) * scale
    else:
        top_h, top_w = 0, PLOT_WIDTH
    H, W = top_h + plot_height + (top_h + plot_height) % 2, top_w + top_w % 2
    actions = ep.get(keys.ACTION, np.zeros((T, 0), np.float32)).reshape(T, -1).astype(np.float64)
    plot, xs = action_plot(actions, W, plot_height)
    font = _font()

    def frames() -> Iterator[np.ndarray]:
        for t in range(T):
            out = np.zeros((H, W, 3), np.uint8)
            if cams:
                row = np.concatenate([_fit_height(ep[k][t], top_h // scale) for k in cams], axis=1)
                out[:top_h, :row.shape[1] * scale] = row.repeat(scale, axis=0).repeat(scale, axis=1)
            panel = plot.copy()
            x = int(xs[t])
            panel[:, max(x - 1, 0):x + 1] = CURSOR  # 2 px cursor
            pil = Image.fromarray(panel)
            ImageDraw.Draw(pil).text((4, plot_height - 13), f"step {t + 1}/{T}", fill=CURSOR, font=font)
            out[top_h:top_h + plot_height] = np.asarray(pil)
            yield out

    return frames(), (H, W), T


def write_mp4(path: str | Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float,
              crf: int = 18) -> Path:
    """Encode (H, W, 3) uint8 frames of ``size`` (even H and W) to an H.264 mp4 with PyAV (atomic rename)."""
    try:
        import av
    except ImportError as e:
        raise ImportError('writing an mp4 needs PyAV: pip install -e ".[interop]"') from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    tmp.replace(path)
    return path


def episode_fps(rb: ReplayBuffer, episode: int, default: float = 10.0) -> float:
    """Frame rate from the episode's ``timestamp`` steps (median), else ``default``."""
    if keys.TIMESTAMP not in rb.keys:
        return default
    ts = np.asarray(rb.get_episode(episode, [keys.TIMESTAMP])[keys.TIMESTAMP], np.float64).reshape(-1)
    dt = np.diff(ts)
    dt = dt[dt > 0]
    return float(1.0 / np.median(dt)) if dt.size else default


def _normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``episode=3 video=x.mp4`` (hydra style) as well as ``--episode 3 --video x.mp4``."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and not a.startswith("-") and key in ("episode", "video", "rerun", "fps", "scale", "plot_height"):
            out += [f"--{key}", value]
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m policy.data.inspect",
                                 description="Summarize a replay-buffer dataset and render an episode to mp4.")
    ap.add_argument("dataset", help="zarr replay buffer (a folder, or a *.zarr.zip)")
    ap.add_argument("--episode", type=int, default=0, help="episode for the video (negative: from the end)")
    ap.add_argument("--video", default="", help="write the episode to this mp4 (needs the interop extra)")
    ap.add_argument("--rerun", default="", help="write the episode as a Rerun recording (.rrd; the viz extra)")
    ap.add_argument("--fps", type=float, default=0.0, help="video frame rate; 0: from the timestamps (else 10)")
    ap.add_argument("--scale", type=int, default=0, help="pixel repeat of the images; 0: automatic")
    ap.add_argument("--plot_height", type=int, default=PLOT_HEIGHT, help="px of the action plot")
    args = ap.parse_args(_normalize_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        rb = ReplayBuffer.open(args.dataset, "r")
        print(describe(rb))
        if args.video:
            frames, size, T = episode_frames(rb, args.episode, args.scale or None, args.plot_height)
            fps = args.fps or episode_fps(rb, args.episode)
            path = write_mp4(args.video, frames, size, fps)
            print(f"episode {args.episode}: {T} frames {size[1]}x{size[0]} at {fps:g} fps -> {path}")
        if args.rerun:
            from policy.data.inspect_rerun import write_rerun

            path, T = write_rerun(rb, args.episode, args.rerun, image_keys(rb))
            print(f"episode {args.episode}: {T} steps -> {path} (open with: rerun {path})")
    except (DatasetError, IndexError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
