"""Read robomimic HDF5 demonstrations (``demo.hdf5`` / ``image.hdf5``) for import into our format.

Layout read::

    data/demo_<N>/actions             (T, A) float      e.g. A = 7: delta (or absolute) OSC pose + gripper
    data/demo_<N>/obs/<key>           (T, ...)          agentview_image, robot0_eye_in_hand_image (T, H, W, 3)
                                                        uint8; robot0_eef_pos (T, 3), robot0_eef_quat (T, 4),
                                                        robot0_gripper_qpos (T, 2), ...
    mask/<filter_key>                 (M,) bytes        demo names of a split, e.g. "train", "valid"

Demos are read in numeric order (``demo_2`` before ``demo_10``). Source keys in the ``KeyMap`` are paths
inside a demo group (``obs/agentview_image``, ``actions``). Nothing is converted beyond the map: robomimic
actions are usually deltas and the pose a quaternion; they are stored as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from policy.data.interop import KeyMap, map_episode, need
from policy.data.replay_buffer import DatasetError

_DEMO = re.compile(r"^demo_(\d+)$")


def _demo_order(name: str) -> tuple[int, int, str]:
    """Sort key: ``demo_<N>`` by N, anything else after them by name."""
    m = _DEMO.match(name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def _open(src: Path):
    h5py = need("h5py")
    if not src.is_file():
        raise DatasetError(f"robomimic file {src}: no such file")
    try:
        return h5py.File(src, "r")
    except OSError as e:
        raise DatasetError(f"robomimic file {src}: cannot open as HDF5: {e}") from e


def demo_names(f, src: Path, filter_key: str = "") -> list[str]:
    """The demo groups of the open file ``f`` in numeric order (only those of ``mask/<filter_key>`` if given)."""
    if "data" not in f:
        raise DatasetError(f"robomimic file {src}: no 'data' group (found {sorted(f.keys())})")
    names = [n for n in f["data"].keys() if hasattr(f["data"][n], "keys")]
    if filter_key:
        if f"mask/{filter_key}" not in f:
            masks = sorted(f["mask"].keys()) if "mask" in f else []
            raise DatasetError(f"robomimic file {src}: no filter key 'mask/{filter_key}' (found {masks})")
        wanted = [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"mask/{filter_key}"][:]]
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise DatasetError(f"robomimic file {src}: mask/{filter_key} names demos that are absent: {missing[:5]}")
        names = wanted
    return sorted(names, key=_demo_order)


def read_robomimic(src: str | os.PathLike, key_map: KeyMap,
                   filter_key: str = "") -> tuple[int, Iterator[dict[str, np.ndarray]]]:
    """(number of demos, iterator over the mapped episodes) of the robomimic HDF5 file ``src``."""
    if key_map.identity:
        raise DatasetError(f"robomimic file {src}: the key map is empty; map at least the images and 'actions' "
                           f"(e.g. convert=robomimic)")
    src = Path(src)
    f = _open(src)
    try:
        names = demo_names(f, src, filter_key)
    except BaseException:
        f.close()
        raise

    def episodes() -> Iterator[dict[str, np.ndarray]]:
        try:
            for name in names:
                group = f["data"][name]
                where = f"robomimic file {src}: data/{name}"

                def get(key: str, group=group, where=where) -> np.ndarray:
                    if key not in group:
                        raise DatasetError(f"{where}: missing key '{key}' (found {_members(group)})")
                    try:
                        return group[key][()]
                    except (OSError, TypeError, ValueError) as e:
                        raise DatasetError(f"{where}: cannot read key '{key}': {e}") from e

                yield map_episode(get, key_map, where)
        finally:
            f.close()

    return len(names), episodes()


def _members(group) -> list[str]:
    """Dataset paths below an HDF5 group, e.g. ['actions', 'obs/agentview_image', ...]."""
    out: list[str] = []
    group.visit(lambda name: out.append(name) if not hasattr(group[name], "keys") else None)
    return sorted(out)
