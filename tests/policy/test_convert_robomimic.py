"""robomimic HDF5 import: numeric demo order, key map and state slices, filter keys, bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from policy.config_utils import from_dict  # noqa: E402
from policy.data.convert import ConvertConfig, convert  # noqa: E402
from policy.data.replay_buffer import DatasetError, ReplayBuffer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEMOS = {"demo_0": 3, "demo_1": 4, "demo_2": 5, "demo_10": 6}  # name -> length; demo_10 sorts last
MAP = {"keys": {"obs/agentview_image": "scene_rgb", "obs/robot0_eye_in_hand_image": "wrist_rgb", "actions": "action"},
       "state_keys": ["obs/robot0_eef_pos", "obs/robot0_eef_quat", "obs/robot0_gripper_qpos"],
       "state_slices": {"ee_pose": [0, 7], "gripper": [7, 9]}, "image_size": [16, 16]}


def demo_arrays(n: int, T: int) -> dict[str, np.ndarray]:
    """Content derived from the demo number n, so the order of the imported episodes is visible."""
    t = np.arange(T, dtype=np.float64)[:, None]
    img = np.zeros((T, 12, 12, 3), np.uint8)
    img[:] = (np.arange(T, dtype=np.uint8) + 10 * n)[:, None, None, None]
    return {"actions": n + 0.01 * t + np.zeros((T, 7)),
            "obs/agentview_image": img, "obs/robot0_eye_in_hand_image": 255 - img,
            "obs/robot0_eef_pos": n + t + np.array([0.1, 0.2, 0.3]),
            "obs/robot0_eef_quat": np.tile([0.0, 0.0, 0.0, 1.0], (T, 1)) * (1 + n),
            "obs/robot0_gripper_qpos": np.tile([0.04, -0.04], (T, 1)) + 0.001 * t,
            "obs/object": np.zeros((T, 10))}


def write_hdf5(path: Path, demos=DEMOS, masks=None) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = '{"env_name": "Lift"}'
        for name in reversed(list(demos)):  # stored out of order on purpose
            g = data.create_group(name)
            g.attrs["num_samples"] = demos[name]
            for k, v in demo_arrays(int(name.split("_")[1]), demos[name]).items():
                g.create_dataset(k, data=v)
        for key, names in (masks or {}).items():
            f.create_dataset(f"mask/{key}", data=np.array([n.encode() for n in names]))


def run(src, out, **kw) -> dict:
    return convert(from_dict(ConvertConfig, {"src": str(src), "out": str(out), "progress": False, **kw}))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".tmp-*"))


def test_import_in_numeric_order_with_state_slices(tmp_path: Path) -> None:
    src, out = tmp_path / "image.hdf5", tmp_path / "out.zarr"
    write_hdf5(src)
    summary = run(src, out, map=MAP)
    assert summary["src_format"] == "robomimic" and summary["episodes"] == 4
    rb = ReplayBuffer.open(out)
    np.testing.assert_array_equal(rb.episode_lengths, [3, 4, 5, 6])  # demo_0, demo_1, demo_2, demo_10
    assert rb.keys == ["action", "ee_pose", "gripper", "scene_rgb", "wrist_rgb"]
    for i, n in enumerate([0, 1, 2, 10]):
        ep, want = rb.get_episode(i), demo_arrays(n, DEMOS[f"demo_{n}"])
        np.testing.assert_allclose(ep["action"], want["actions"], rtol=1e-6)  # 7-D, stored as it is
        np.testing.assert_allclose(ep["ee_pose"], np.concatenate(
            [want["obs/robot0_eef_pos"], want["obs/robot0_eef_quat"]], 1), rtol=1e-6)
        np.testing.assert_allclose(ep["gripper"], want["obs/robot0_gripper_qpos"], rtol=1e-6)
        assert ep["scene_rgb"].shape == (len(ep["action"]), 16, 16, 3) and ep["scene_rgb"].dtype == np.uint8
        np.testing.assert_array_equal(ep["scene_rgb"][:, 8, 8, 0], want["obs/agentview_image"][:, 6, 6, 0])
        np.testing.assert_array_equal(ep["wrist_rgb"][:, 0, 0, 1], 255 - want["obs/agentview_image"][:, 0, 0, 1])


def test_filter_key_selects_demos(tmp_path: Path) -> None:
    src, out = tmp_path / "image.hdf5", tmp_path / "out.zarr"
    write_hdf5(src, masks={"train": ["demo_10", "demo_1"], "valid": ["demo_7"]})
    run(src, out, map=MAP, robomimic={"filter_key": "train"})
    rb = ReplayBuffer.open(out)
    np.testing.assert_array_equal(rb.episode_lengths, [4, 6])
    assert rb.get_episode(1)["action"][0, 0] == 10
    with pytest.raises(DatasetError, match=r"mask/valid names demos that are absent: \['demo_7'\]"):
        run(src, tmp_path / "b.zarr", map=MAP, robomimic={"filter_key": "valid"})
    with pytest.raises(DatasetError, match=r"no filter key 'mask/test'"):
        run(src, tmp_path / "b.zarr", map=MAP, robomimic={"filter_key": "test"})
    assert_nothing_written(tmp_path / "b.zarr")


def test_missing_key_names_file_demo_and_key(tmp_path: Path) -> None:
    src, out = tmp_path / "image.hdf5", tmp_path / "out.zarr"
    write_hdf5(src)
    with h5py.File(src, "a") as f:
        del f["data/demo_2/obs/robot0_eye_in_hand_image"]
    with pytest.raises(DatasetError, match=r"image\.hdf5: data/demo_2: missing key 'obs/robot0_eye_in_hand_image'"):
        run(src, out, map=MAP)
    assert_nothing_written(out)


def test_mismatched_lengths_name_the_keys(tmp_path: Path) -> None:
    src, out = tmp_path / "image.hdf5", tmp_path / "out.zarr"
    write_hdf5(src)
    with h5py.File(src, "a") as f:
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = np.zeros((3, 7))
    with pytest.raises(DatasetError, match=r"data/demo_1: mismatched lengths .*'actions': 3"):
        run(src, out, map=MAP)
    assert_nothing_written(out)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    not_h5 = tmp_path / "demo.hdf5"
    not_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)  # looks like HDF5, is not
    with pytest.raises(DatasetError, match=r"demo\.hdf5: cannot open as HDF5"):
        run(not_h5, out, map=MAP)
    with pytest.raises(DatasetError, match="no such file"):
        run(tmp_path / "nope.hdf5", out, map=MAP, src_format="robomimic")
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetError, match=r"no 'data' group"):
        run(empty, out, map=MAP)
    with pytest.raises(DatasetError, match="key map is empty"):
        run(empty, out)
    assert_nothing_written(out)


def test_cli_with_the_robomimic_preset(tmp_path: Path) -> None:
    src, out = tmp_path / "image.hdf5", tmp_path / "out.zarr"
    write_hdf5(src)
    cmd = [sys.executable, "-m", "policy.data.convert", "convert=robomimic", f"src={src}", f"out={out}",
           "progress=false", "map.image_size=[24,24]"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rb = ReplayBuffer.open(out)
    assert rb.n_episodes == 4
    rb.validate({"scene_rgb": ((24, 24, 3), "uint8"), "ee_pose": ((7,), "float32"), "gripper": ((2,), "float32"),
                 "action": ((7,), "float32")})
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)  # out exists now
    assert res.returncode != 0 and "overwrite=true" in res.stderr
