"""One recorded episode into a Rerun recording: ``python -m policy.data.inspect DATASET rerun=OUT.rrd [episode=N]``.

The same entity paths as the live view of the runtime (``runtime.viz``), on the timeline ``tick`` (the step
in the episode) and ``time`` (s from the episode's first ``timestamp``): ``cameras/<key>`` for every image
key, ``world/tcp/measured`` (``ee_pose`` position) and ``world/tcp/commanded`` (the action's) as 3-D points
with a trail, ``gripper/measured`` and ``gripper/commanded`` (m), ``timing/tick_jitter_ms`` (each step's
time against ``t0 + i * dt``, dt the median step). Open it with ``rerun OUT.rrd``. The Rerun SDK is
imported only here, when asked for: ``pip install -e ".[viz]"``.
"""

from __future__ import annotations

import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from policy import keys
from policy.data.replay_buffer import ReplayBuffer
from policy.keys import ACTION_LAYOUT as LAYOUT

TRAIL = 50  # positions kept behind each TCP point


def _rerun() -> Any:
    try:
        import rerun
    except ImportError as e:
        raise ImportError(f'rerun=<file.rrd> needs the Rerun SDK (rerun-sdk): pip install -e ".[viz]" ({e})') from e
    return rerun


def _positions(x: np.ndarray) -> np.ndarray:
    """(T, 3) positions of poses or actions (T, D); a short mapped action (D < 3) is padded with zeros."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if x.shape[1] >= 3:
        return x[:, LAYOUT.position]
    return np.concatenate([x, np.zeros((len(x), 3 - x.shape[1]))], axis=1)


def write_rerun(rb: ReplayBuffer, episode: int, path: str | Path, image_keys: list[str]) -> tuple[Path, int]:
    """Log episode ``episode`` of ``rb`` to ``path`` (.rrd); returns (path, steps). IndexError for a bad episode."""
    rr = _rerun()
    rb.episode_slice(episode)  # IndexError naming the range
    low = [k for k in (keys.EE_POSE, keys.GRIPPER, keys.ACTION, keys.TIMESTAMP) if k in rb.keys]
    ep = rb.get_episode(episode, [*image_keys, *low])
    T = len(ep[low[0]]) if low else len(ep[image_keys[0]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream("visuomotor-dp", recording_id=str(uuid.uuid4()))
    rec.save(str(path))
    rec.send_recording_name(f"{Path(rb.path).name} episode {episode}")
    ts = np.asarray(ep[keys.TIMESTAMP], np.float64).reshape(-1) if keys.TIMESTAMP in ep else None
    dt = float(np.median(np.diff(ts))) if ts is not None and T > 1 else None
    tracks = {name: _positions(ep[key]) for name, key in (("measured", keys.EE_POSE), ("commanded", keys.ACTION))
              if key in ep}  # (T, 3) each
    widths = {"measured": ep.get(keys.GRIPPER)}
    if keys.ACTION in ep and ep[keys.ACTION].reshape(T, -1).shape[1] >= LAYOUT.dim:
        widths["commanded"] = ep[keys.ACTION].reshape(T, -1)[:, LAYOUT.width]
    trails = {name: deque(maxlen=TRAIL) for name in tracks}
    colours = {"measured": (80, 160, 255), "commanded": (255, 140, 0)}
    for t in range(T):
        rec.set_time("tick", sequence=t)
        if ts is not None:
            rec.set_time("time", duration=float(ts[t] - ts[0]))
        for key in image_keys:
            rec.log(f"cameras/{key}", rr.Image(ep[key][t]))
        for name, track in tracks.items():
            trails[name].append(track[t])
            rec.log(f"world/tcp/{name}", rr.Points3D([track[t]], colors=[colours[name]], radii=0.006))
            if len(trails[name]) >= 2:
                rec.log(f"world/tcp/{name}/trail", rr.LineStrips3D([np.stack(trails[name])], colors=[colours[name]],
                                                                    radii=0.002))
        for name, width in widths.items():
            if width is not None:
                rec.log(f"gripper/{name}", rr.Scalars(float(np.reshape(width[t], -1)[0])))
        if dt:
            rec.log("timing/tick_jitter_ms", rr.Scalars((ts[t] - ts[0] - t * dt) * 1e3))
    rec.flush()
    rec.disconnect()
    return path, T
