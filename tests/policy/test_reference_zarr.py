"""Reference diffusion-policy zarr (v2 group, .zarr.zip): opened directly, key-mapped, trained on, copied."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest

from policy.config import EncoderConfig, PolicyConfig
from policy.config_utils import from_dict
from policy.data import DatasetError, KeyMap, KeyMappedBuffer, ReplayBuffer, open_dataset
from policy.data.convert import ConvertConfig, convert
from policy.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
ENDS = [4, 9, 15]
PUSHT = KeyMap(keys={"img": "scene_rgb", "action": "action"}, state_keys=("state",),
               state_slices={"ee_pose": (0, 2)}, image_size=(16, 16))


def write_v2_array(root: Path, name: str, arr: np.ndarray, chunk0: int) -> None:
    """One array the way zarr-python 2 writes it: .zarray JSON + Blosc-compressed chunk files 'i.j.k'."""
    d = root / name
    d.mkdir(parents=True)
    chunks = (chunk0, *arr.shape[1:])
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    meta = {"zarr_format": 2, "shape": list(arr.shape), "chunks": list(chunks), "dtype": arr.dtype.str,
            "compressor": blosc.get_config(), "fill_value": 0, "filters": None, "order": "C"}
    (d / ".zarray").write_text(json.dumps(meta, indent=4))
    for i in range(0, arr.shape[0], chunk0):
        block = np.zeros(chunks, arr.dtype)  # edge chunks are stored full size
        part = arr[i:i + chunk0]
        block[:len(part)] = part
        key = ".".join([str(i // chunk0)] + ["0"] * (arr.ndim - 1))
        (d / key).write_bytes(blosc.encode(np.ascontiguousarray(block)))


def write_reference(path: Path, arrays: dict[str, np.ndarray], ends=ENDS) -> Path:
    """A zarr v2 replay buffer directory (data/<key>, meta/episode_ends), as the reference code writes."""
    for g in ("", "data", "meta"):
        (path / g).mkdir(parents=True, exist_ok=True)
        (path / g / ".zgroup").write_text('{"zarr_format": 2}')
    for k, a in arrays.items():
        write_v2_array(path / "data", k, a, chunk0=1 if a.ndim == 4 else 6)
    write_v2_array(path / "meta", "episode_ends", np.asarray(ends, np.int64), chunk0=len(ends))
    return path


def zip_store(folder: Path, zip_path: Path) -> Path:
    """The same group as a zip store (zarr v2 ZipStore: keys relative to the root, stored uncompressed)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return zip_path


def pusht_arrays(n: int = ENDS[-1]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"img": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.float32),  # float32 in 0..255, as Push-T
            "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
            "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32)}


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    arrays = pusht_arrays()
    folder = write_reference(tmp_path / "pusht_cchi_v7_replay.zarr", arrays)
    return folder, zip_store(folder, tmp_path / "pusht.zarr.zip"), arrays


def test_v2_group_and_zip_store_open_read_only(reference) -> None:
    folder, zipped, arrays = reference
    for path in (folder, zipped):
        rb = ReplayBuffer.open(path)
        assert rb.read_only and rb.keys == sorted(arrays)
        np.testing.assert_array_equal(rb.episode_ends, ENDS)
        for k, a in rb.load().items():
            np.testing.assert_array_equal(a, arrays[k], err_msg=k)
        np.testing.assert_array_equal(rb.get_episode(1)["state"], arrays["state"][4:9])
        with pytest.raises(DatasetError, match="opens read-only"):
            ReplayBuffer.open(path, mode="a")


def test_key_mapped_view_renames_slices_and_converts(reference) -> None:
    _, zipped, arrays = reference
    rb = open_dataset(zipped, PUSHT)
    assert isinstance(rb, KeyMappedBuffer) and rb.keys == ["action", "ee_pose", "scene_rgb"]
    assert rb.frame_specs["scene_rgb"] == ((16, 16, 3), np.dtype(np.uint8))
    policy = PolicyConfig(image_keys=("scene_rgb",), image_shape=(16, 16), lowdim_dims={"ee_pose": 2}, action_dim=2,
                          encoder=EncoderConfig(crop_shape=(12, 12)))
    rb.validate(policy.dataset_spec())  # what training checks first
    with pytest.raises(DatasetError, match=r"key 'ee_pose' expected \(T, 9\) float32, found \(T, 2\) float32"):
        rb.validate(PolicyConfig(image_keys=("scene_rgb",), image_shape=(16, 16), action_dim=2,
                                 use_action_history=False, encoder=EncoderConfig(crop_shape=(12, 12))).dataset_spec())
    loaded = rb.load()
    np.testing.assert_array_equal(loaded["scene_rgb"], arrays["img"].astype(np.uint8))
    np.testing.assert_array_equal(loaded["ee_pose"], arrays["state"][:, :2])
    np.testing.assert_array_equal(loaded["action"], arrays["action"])
    ep = rb.get_episode(2, ["ee_pose"])
    assert list(ep) == ["ee_pose"]
    np.testing.assert_array_equal(ep["ee_pose"], arrays["state"][9:, :2])
    small = open_dataset(zipped, KeyMap(keys={"img": "scene_rgb"}, image_size=(8, 8)))
    assert small.get_episode(0)["scene_rgb"].shape == (4, 8, 8, 3)
    with pytest.raises(DatasetError, match="no key 'wrist_rgb' after the key map"):
        rb.load(["wrist_rgb"])
    with pytest.raises(DatasetError, match=r"reads key 'agent_pos', which the dataset lacks"):
        open_dataset(zipped, KeyMap(keys={"agent_pos": "ee_pose"}))
    with pytest.raises(DatasetError, match=r"state_slices.ee_pose = \[0, 7\] runs past the state vector of width 5"):
        open_dataset(zipped, KeyMap(state_keys=("state",), state_slices={"ee_pose": (0, 7)}))
    assert isinstance(open_dataset(zipped), ReplayBuffer)  # no map: the plain buffer


def test_training_reads_a_zip_store_directly(tmp_path: Path) -> None:
    from policy.train import train

    from .conftest import tiny_config

    ours = make_synthetic_dataset(tmp_path / "demos.zarr", n_episodes=3, episode_len=10, image_shape=(32, 32))
    arrays = ours.load()
    v2 = write_reference(tmp_path / "v2.zarr", arrays, ends=ours.episode_ends.tolist())
    zipped = zip_store(v2, tmp_path / "demos.zarr.zip")
    ckpt = train(tiny_config(zipped, tmp_path / "run", steps=2, val_fraction=0.0))
    assert (ckpt / "model.safetensors").is_file()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["dataset"]["n_episodes"] == 3 and meta["dataset"]["path"].endswith("demos.zarr.zip")


def test_convert_copies_into_our_format(tmp_path: Path, reference) -> None:
    folder, zipped, arrays = reference
    out = tmp_path / "pusht.zarr"
    summary = convert(ConvertConfig(src=str(zipped), out=str(out), map=PUSHT, progress=False))
    assert summary["src_format"] == "zarr" and summary["frames"] == ENDS[-1]
    rb = ReplayBuffer.open(out, mode="a")  # ours: appendable
    assert rb.keys == ["action", "ee_pose", "scene_rgb"]
    np.testing.assert_array_equal(rb.load()["scene_rgb"], open_dataset(zipped, PUSHT).load()["scene_rgb"])
    same = tmp_path / "same.zarr"
    convert(ConvertConfig(src=str(folder), out=str(same), progress=False))  # no map: every key as it is
    got = ReplayBuffer.open(same).load()
    for k, a in arrays.items():
        np.testing.assert_array_equal(got[k], a, err_msg=k)


@pytest.mark.parametrize("preset", ["lerobot", "robomimic", "pusht"])
def test_presets_compose_into_a_valid_config(preset: str, tmp_path: Path, reference) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        dcfg = compose("convert", overrides=[f"convert={preset}", "src=in", "out=out", "progress=false"])
    cfg = from_dict(ConvertConfig, OmegaConf.to_container(dcfg, resolve=True))
    assert cfg.src_format == "auto"  # the presets set only the map; the format is detected from src
    assert "action" in cfg.map.keys.values() and cfg.map.image_size == (96, 96)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        mine = compose("convert", overrides=[f"convert={preset}", "src=in", "out=out", "~map.keys",
                                             "+map.keys={observation.images.top: scene_rgb, action: action}"])
    assert dict(mine.map["keys"]) == {"observation.images.top": "scene_rgb", "action": "action"}  # replaced, not merged
    if preset == "pusht":
        _, zipped, arrays = reference
        cfg.src, cfg.out, cfg.map.image_size = str(zipped), str(tmp_path / "p.zarr"), None
        convert(cfg)
        np.testing.assert_array_equal(ReplayBuffer.open(cfg.out).load()["ee_pose"], arrays["state"][:, :2])


def test_bad_reference_stores_name_the_key(tmp_path: Path) -> None:
    arrays = pusht_arrays()
    arrays["img"] = arrays["img"][:12]  # shorter than episode_ends[-1] = 15
    short = write_reference(tmp_path / "short.zarr", arrays)
    with pytest.raises(DatasetError, match=r"data key 'img' has 12 steps \(mismatched lengths\)"):
        ReplayBuffer.open(short)
    out = tmp_path / "out.zarr"
    with pytest.raises(DatasetError, match="'img' has 12"):
        convert(ConvertConfig(src=str(short), out=str(out), map=PUSHT, progress=False))
    assert not out.exists() and not list(tmp_path.glob("out.zarr.tmp-*"))

    codec = write_reference(tmp_path / "jpeg.zarr", pusht_arrays())
    meta = json.loads((codec / "data/img/.zarray").read_text())
    (codec / "data/img/.zarray").write_text(json.dumps({**meta, "compressor": {"id": "imagecodecs_jpeg2k"}}))
    with pytest.raises(DatasetError, match=r"cannot open array data/img: .*imagecodecs_jpeg2k"):
        ReplayBuffer.open(codec)

    nometa = write_reference(tmp_path / "nometa.zarr", pusht_arrays())
    for p in sorted((nometa / "meta/episode_ends").iterdir()):
        p.unlink()
    (nometa / "meta/episode_ends").rmdir()
    with pytest.raises(DatasetError, match="lacks meta/episode_ends"):
        ReplayBuffer.open(zip_store(nometa, tmp_path / "nometa.zarr.zip"))

    (tmp_path / "junk.zarr.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match="not a zip store"):
        ReplayBuffer.open(tmp_path / "junk.zarr.zip")


def test_training_reads_the_reference_pusht_zip_through_the_preset(tmp_path: Path, reference) -> None:
    """``python -m policy.train +convert@train.dataset_map=pusht ...``: the hydra-composed train config maps the
    reference keys (img, state, action) onto ours and trains without a copy; the map travels in the checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from policy.config import Config
    from policy.train import train

    _, zipped, _ = reference
    overrides = ["+convert@train.dataset_map=pusht", "train.dataset_map.image_size=[16,16]",
                 f"train.dataset={zipped}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                 "train.batch_size=4", "train.warmup_steps=1", "train.val_fraction=0", "train.progress=false",
                 "train.device=cpu", "train.num_threads=1", "policy.image_keys=[scene_rgb]",
                 "policy.image_shape=[16,16]", "policy.encoder.crop_shape=[12,12]", "policy.lowdim_dims.ee_pose=2",
                 "~policy.lowdim_dims.gripper",
                 "policy.action_dim=2"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        dcfg = compose("train", overrides=overrides)
    cfg = from_dict(Config, OmegaConf.to_container(dcfg, resolve=True))
    assert cfg.train.dataset_map.keys == {"img": "scene_rgb", "action": "action"}
    ckpt = train(cfg)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["dataset"]["shapes"]["ee_pose"] == [2] and meta["dataset"]["shapes"]["scene_rgb"] == [16, 16, 3]
    with pytest.raises(DatasetError, match="reads key 'agent_pos'"):
        train(from_dict(Config, {**OmegaConf.to_container(dcfg, resolve=True),
                                 "train": {**OmegaConf.to_container(dcfg.train, resolve=True),
                                           "out_dir": str(tmp_path / "run2"),
                                           "dataset_map": {"keys": {"agent_pos": "ee_pose"}}}}))


def test_atomic_output_removes_what_killed_runs_left(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from policy.data.interop import atomic_output

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"out.zarr.tmp-{gone.pid}"  # a killed import's half-written output
    stale.mkdir()
    (stale / "half").write_text("x")
    running = tmp_path / f"out.zarr.tmp-{os.getppid()}"  # an import still running elsewhere: left alone
    running.mkdir()
    other = tmp_path / f"other.zarr.tmp-{gone.pid}"  # another output's: left alone
    other.mkdir()
    with atomic_output(tmp_path / "out.zarr") as tmp:
        tmp.mkdir()
        (tmp / "done").write_text("y")
    assert (tmp_path / "out.zarr" / "done").is_file()
    assert not stale.exists() and running.is_dir() and other.is_dir()
