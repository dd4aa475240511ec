"""``policy.action_frame=relative``: actions learned in the frame of the current ee_pose (UMI's relative
trajectories), absolute everywhere outside the policy (Policy, its RTC/BID prefix path, OnnxPolicy)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from policy import keys
from policy.action_frame import fit_normalizer, relative_action_range, to_absolute, to_relative
from policy.config import Config, PolicyConfig
from policy.config_utils import ConfigError, from_dict
from policy.data import ReplayBuffer, WindowSampler
from policy.data.synthetic import make_synthetic_dataset
from policy.model import to_model_inputs
from policy.policy import Policy
from policy.protocol import ChunkPrefix
from policy.train import Trainer, train
from policy.window import model_inputs

from .conftest import tiny_config, tiny_policy_config, window_from_episode

IMG_KEYS = ["scene_rgb", "wrist_rgb", "ee_pose", "gripper"]


def random_rotations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform random rotation matrices (*shape, 3, 3) from unit quaternions."""
    q = rng.normal(size=(*shape, 4))
    x, y, z, w = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                     np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                     np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def pose9(position: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """position (..., 3), rotation matrices (..., 3, 3) -> ee_pose (..., 9): position + the first two columns."""
    return np.concatenate([position, rot[..., :, 0], rot[..., :, 1]], axis=-1)


# ---------------------------------------------------------------- the conversion


def test_relative_round_trip_and_the_current_pose_is_the_identity():
    rng = np.random.default_rng(0)
    r0, r = random_rotations(rng, (5,)), random_rotations(rng, (5, 7))
    pose = pose9(rng.uniform(-1, 1, (5, 3)), r0)  # (B, 9)
    actions = np.concatenate([pose9(rng.uniform(-1, 1, (5, 7, 3)), r), rng.uniform(0, 0.08, (5, 7, 1))], -1)
    rel = to_relative(actions, pose)  # (B, T, 10)
    assert rel.dtype == np.float64 and rel.shape == actions.shape
    np.testing.assert_allclose(to_absolute(rel, pose), actions, rtol=0, atol=1e-6)
    # p_rel = R0^T (p - p0), R_rel = R0^T R, the gripper as it is
    r0t = np.swapaxes(r0, -1, -2)[:, None]  # (B, 1, 3, 3)
    np.testing.assert_allclose(rel[..., :3], (r0t @ (actions[..., :3] - pose[:, None, :3])[..., None])[..., 0],
                               atol=1e-9)
    np.testing.assert_allclose(rel[..., 3:9], pose9(np.zeros((5, 7, 3)), r0t @ r)[..., 3:], atol=1e-9)
    np.testing.assert_array_equal(rel[..., 9], actions[..., 9])
    # the current pose itself: zero position, identity rotation
    here = np.concatenate([pose, np.full((5, 1), 0.05)], -1)[:, None]  # (B, 1, 10)
    np.testing.assert_allclose(to_relative(here, pose)[:, 0, :9], np.tile([0, 0, 0, 1, 0, 0, 0, 1, 0], (5, 1)),
                               atol=1e-9)
    # a rigid motion of the whole scene (pose and actions) leaves the relative actions as they are
    g, d = random_rotations(rng, ()), rng.uniform(-1, 1, 3)
    moved = np.concatenate([pose9(actions[..., :3] @ g.T + d, g @ r), actions[..., 9:]], -1)
    np.testing.assert_allclose(to_relative(moved, pose9(pose[:, :3] @ g.T + d, g @ r0)), rel, atol=1e-9)
    # float32 in, float32 out, still within 1e-6 after a round trip
    a32, p32 = actions.astype(np.float32), pose.astype(np.float32)
    back = to_absolute(to_relative(a32, p32), p32)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, a32, rtol=0, atol=1e-6)


def test_position_only_pose():
    rng = np.random.default_rng(1)
    pose, actions = rng.uniform(0, 500, (4, 2)), rng.uniform(0, 500, (4, 6, 2))  # Push-T: 2-D target, pixels
    rel = to_relative(actions, pose)
    np.testing.assert_allclose(rel, actions - pose[:, None], atol=1e-9)
    np.testing.assert_allclose(to_absolute(rel, pose), actions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(to_relative(pose[:, None], pose), 0, atol=1e-12)
    # a 3-D position with a gripper after it: only the position moves
    p3, a4 = rng.uniform(-1, 1, (3, 3)), rng.uniform(-1, 1, (3, 5, 4))
    rel = to_relative(a4, p3)
    np.testing.assert_allclose(rel[..., :3], a4[..., :3] - p3[:, None], atol=1e-12)
    np.testing.assert_array_equal(rel[..., 3], a4[..., 3])
    with pytest.raises(ValueError, match="degenerate"):
        to_relative(np.zeros((1, 2, 10)), np.zeros((1, 9)))


def test_config_rules_name_policy_action_frame():
    assert PolicyConfig().action_frame == "absolute"
    assert from_dict(Config, {}).policy.action_frame == "absolute"  # a config without the key: absolute
    with pytest.raises(ConfigError, match=r"policy.action_frame must be one of \('absolute', 'relative'\)"):
        from_dict(Config, {"policy": {"action_frame": "local"}})
    with pytest.raises(ConfigError, match="policy.action_frame relative .* needs policy.action_space absolute"):
        from_dict(Config, {"policy": {"action_frame": "relative", "action_space": "delta"}})
    with pytest.raises(ValueError, match=r"policy.action_frame relative: ee_pose must have 9 numbers .* got 7"):
        PolicyConfig(lowdim_dims={"ee_pose": 7, "gripper": 2}, action_dim=7, action_space="absolute",
                     use_action_history=False, action_frame="relative")
    with pytest.raises(ValueError, match=r"policy.action_frame relative: it needs the current ee_pose"):
        PolicyConfig(lowdim_dims={"gripper": 1}, use_action_history=False, action_frame="relative")
    with pytest.raises(ValueError, match=r"policy.action_frame relative: the action \(12 numbers\) must be ee_pose"):
        PolicyConfig(action_dim=12, use_action_history=False, action_frame="relative")
    # Push-T's layout: a 2-D position as ee_pose and as the action
    push_t = PolicyConfig(image_keys=("scene_rgb",), lowdim_dims={"ee_pose": 2}, action_dim=2, action_frame="relative")
    assert push_t.action_frame == "relative"


# ---------------------------------------------------------------- the statistics


def rotating_arrays(rng: np.random.Generator, lengths: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Time-major ee_pose (N, 9), gripper (N, 1), action (N, 10) of episodes that turn and move, and
    episode_ends."""
    n = sum(lengths)
    rot = random_rotations(rng, (n,))
    pos = np.cumsum(rng.normal(0, 0.05, (n, 3)), axis=0) + 0.5
    ee = pose9(pos, rot).astype(np.float32)
    grip = rng.uniform(0, 0.08, (n, 1)).astype(np.float32)
    action = np.concatenate([np.roll(ee, -1, axis=0) + rng.normal(0, 0.01, (n, 9)), grip], 1).astype(np.float32)
    return {keys.EE_POSE: ee, keys.GRIPPER: grip, keys.ACTION: action}, np.cumsum(lengths)


def test_relative_statistics_cover_every_training_window():
    rng = np.random.default_rng(2)
    arrays, ends = rotating_arrays(rng, [30, 17, 25, 40])
    cfg = tiny_policy_config(image_keys=(), action_frame="relative", chunk_len=8, n_obs_steps=2)
    sampler = WindowSampler(ends, [0, 1, 3], cfg.n_obs_steps, cfg.chunk_len, cfg.n_obs_steps,
                            cfg.action_space_spec())
    normalizer = fit_normalizer(arrays, sampler, list(cfg.lowdim_dims), "relative")
    ids = np.arange(len(sampler))
    raw = sampler.gather(arrays, ids, list(cfg.lowdim_dims))
    net = model_inputs(raw, cfg, normalizer)  # the chokepoint: chunk and history in the relative frame
    for k in (keys.ACTION, keys.ACTION_HISTORY):
        assert np.abs(net[k]).max() <= 1 + 1e-5, k
    np.testing.assert_allclose(net[keys.ACTION], normalizer.normalize(
        keys.ACTION, to_relative(raw[keys.ACTION], raw[keys.EE_POSE][:, -1]).astype(np.float32)), atol=1e-6)
    # the range is reached, and it is not the absolute one
    assert np.isclose(max(net[k].max() for k in (keys.ACTION, keys.ACTION_HISTORY)), 1, atol=1e-5)
    absolute = fit_normalizer(arrays, sampler, list(cfg.lowdim_dims), "absolute")
    assert not np.allclose(absolute.stats[keys.ACTION]["min"], normalizer.stats[keys.ACTION]["min"])
    # the low-dim observations keep their absolute statistics; chunked fitting gives the same range
    np.testing.assert_array_equal(absolute.stats[keys.EE_POSE]["min"], normalizer.stats[keys.EE_POSE]["min"])
    low, high = relative_action_range(arrays, sampler, batch=7)
    np.testing.assert_allclose(low, normalizer.stats[keys.ACTION]["min"], atol=1e-6)
    np.testing.assert_allclose(high, normalizer.stats[keys.ACTION]["max"], atol=1e-6)


# ---------------------------------------------------------------- a trained relative policy


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A relative-frame checkpoint trained for a few steps on the tiny synthetic dataset, and a window."""
    root = tmp_path_factory.mktemp("relative")
    make_synthetic_dataset(root / "demos.zarr", n_episodes=4, episode_len=12, image_shape=(32, 32), seed=0)
    ckpt = train(tiny_config(root / "demos.zarr", root / "run", policy=tiny_policy_config(action_frame="relative")))
    ep = ReplayBuffer.open(root / "demos.zarr").get_episode(1)
    return ckpt, window_from_episode(ep, 5, 2, IMG_KEYS), ep, root / "demos.zarr"


def test_a_relative_run_trains_saves_and_predicts_absolute_actions(trained, tmp_path):
    ckpt, win, ep, data = trained
    assert yaml.safe_load((ckpt / "config.yaml").read_text())["policy"]["action_frame"] == "relative"
    # the saved action statistics are the relative ones of the training windows
    cfg = tiny_policy_config(action_frame="relative")
    meta = json.loads((ckpt / "meta.json").read_text())
    rb = ReplayBuffer.open(data)
    sampler = WindowSampler(rb.episode_ends, meta["train_episodes"], 2, 8, 2, cfg.action_space_spec())
    low, high = relative_action_range(rb.load(["ee_pose", "gripper", "action"]), sampler)
    stats = json.loads((ckpt / "normalizer.json").read_text())["stats"]["action"]
    np.testing.assert_allclose(stats["min"], low, atol=1e-6)
    np.testing.assert_allclose(stats["max"], high, atol=1e-6)
    policy = Policy.from_pretrained(ckpt, device="cpu")
    assert policy.cfg.action_frame == "relative"
    chunk = policy.predict_chunk(win, seed=0)
    assert chunk.shape == (8, 10) and chunk.dtype == np.float32 and np.all(np.isfinite(chunk))
    # absolute, around the current pose: in the relative frame about the training range (a barely trained
    # network: within 3x the normalized range); z and the rotation, constant in the demos, are the current pose's
    rel = policy.normalizer.normalize(keys.ACTION, to_relative(chunk, win["ee_pose"][-1]))
    assert np.abs(rel).max() < 3
    np.testing.assert_allclose(chunk[:, 2:9], np.tile(win["ee_pose"][-1, 2:9], (8, 1)), atol=1e-5)
    # an old checkpoint without the key loads as absolute
    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    conf = yaml.safe_load((old / "config.yaml").read_text())
    del conf["policy"]["action_frame"]
    (old / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    assert Policy.from_pretrained(old, device="cpu").cfg.action_frame == "absolute"


def test_policy_maps_the_network_chunk_to_the_current_pose(trained):
    """A stub network that always samples the same normalized chunk: moving and turning the window's poses
    (ee_pose and action history) moves and turns the returned absolute chunk the same way."""
    ckpt, win, _, _ = trained
    policy = Policy.from_pretrained(ckpt, device="cpu")
    fixed = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (1, 8, 10)).astype(np.float32))
    policy.model.sample = lambda inputs, *a, **k: fixed.expand(len(inputs["ee_pose"]), -1, -1)
    base = policy.predict_chunk(win)
    d = np.array([0.1, -0.2, 0.05], np.float32)
    shifted = dict(win, ee_pose=win["ee_pose"] + np.r_[d, np.zeros(6, np.float32)],
                   action_history=win["action_history"] + np.r_[d, np.zeros(7, np.float32)])
    moved = policy.predict_chunk(shifted)
    np.testing.assert_allclose(moved[:, :3], base[:, :3] + d, atol=1e-5)
    np.testing.assert_allclose(moved[:, 3:], base[:, 3:], atol=1e-6)
    yaw = np.pi / 3
    g = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])

    def turn(a: np.ndarray) -> np.ndarray:  # (T, 9 or 10) poses turned by g about the base origin
        r = np.stack([a[:, 3:6], a[:, 6:9], np.cross(a[:, 3:6], a[:, 6:9])], -1)
        return np.concatenate([pose9(a[:, :3] @ g.T, g @ r), a[:, 9:]], -1).astype(np.float32)

    turned = policy.predict_chunk(dict(win, ee_pose=turn(win["ee_pose"]), action_history=turn(win["action_history"])))
    np.testing.assert_allclose(turned, turn(base), atol=1e-5)
    # the batch path maps each window to its own pose
    both = policy.predict_chunks({k: np.stack([win[k], shifted[k]]) for k in win})
    np.testing.assert_allclose(both, np.stack([base, moved]), atol=1e-6)


def test_a_prefix_is_continued_in_absolute_units(trained):
    ckpt, win, ep, _ = trained
    policy = Policy.from_pretrained(ckpt, device="cpu")
    committed = ep["action"][4:10]  # (6, A) absolute, the "previous chunk" from the demo
    for method in ("rtc", "bid"):
        out = policy.predict_chunk(win, seed=3, prefix=ChunkPrefix(committed, delay=3, method=method, samples=4))
        assert out.shape == (8, 10) and np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[:3], committed[:3])
    # beta = 0: plain sampling past the prefix; over the overlap a blend of the absolute prefix and plain
    plain = policy.predict_chunk(win, seed=3)
    zero = policy.predict_chunk(win, seed=3, prefix=ChunkPrefix(committed, delay=3, max_guidance=0.0))
    np.testing.assert_allclose(zero[6:], plain[6:], atol=1e-6)
    w = np.exp(-0.5 * (np.arange(3, 6) - 3 + 1))[:, None]  # the default exp mask (decay 0.5) over rows d..P-1
    varying = policy.normalizer.varying(keys.ACTION)  # relative dims; the rotation is constant (identity)
    np.testing.assert_allclose(zero[3:6, varying], (w * committed[3:6] + (1 - w) * plain[3:6])[:, varying],
                               atol=1e-5)


def test_a_streamed_relative_run_fits_and_trains_like_a_loaded_one(trained, tmp_path):
    _, _, _, data = trained
    pcfg = tiny_policy_config(action_frame="relative")
    loaded = Trainer(tiny_config(data, tmp_path / "m", policy=pcfg, data="memory"))
    streamed = Trainer(tiny_config(data, tmp_path / "s", policy=pcfg, data="stream", stream_block=8, stream_pool=2))
    try:
        assert streamed.stream is not None
        for k in loaded.normalizer.stats:
            np.testing.assert_array_equal(loaded.normalizer.stats[k]["min"], streamed.normalizer.stats[k]["min"])
            np.testing.assert_array_equal(loaded.normalizer.stats[k]["max"], streamed.normalizer.stats[k]["max"])
        batch = streamed._train_batch(0, 0)
        assert float(batch[keys.ACTION].abs().max()) <= 1 + 1e-5
        assert np.isfinite(float(streamed.train_step()))
    finally:
        streamed.stream.close()


def test_onnx_export_of_a_relative_policy_equals_torch(trained, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e \".[deploy]\")")
    pytest.importorskip("onnx", reason="onnx not installed (pip install -e \".[export]\")")
    from policy.export import ExportConfig, export_policy
    from policy.onnx_policy import OnnxPolicy

    ckpt, win, _, _ = trained
    dest = export_policy(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "onnx")))
    assert json.loads((dest / "export.json").read_text())["action_frame"] == "relative"
    onnx = OnnxPolicy(dest)
    assert onnx.cfg.action_frame == "relative"
    policy = Policy.from_pretrained(ckpt, device="cpu")
    # the noise Policy draws for seed=3 (objectives.randn on the CPU generator), given to the graph as input
    noise = torch.randn((1, 8, 10), generator=torch.Generator().manual_seed(3)).numpy()
    want = policy.predict_chunk(win, seed=3)
    got = onnx.predict_chunk(win, noise=noise[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.abs(got[:, :2] - win["ee_pose"][-1, :2]).max() < 1.0  # absolute, near the current pose
    inputs = to_model_inputs({k: v[None] for k, v in win.items()}, policy.cfg, policy.normalizer,
                             torch.device("cpu"))
    np.testing.assert_allclose(inputs[keys.ACTION_HISTORY].numpy(),
                               model_inputs({k: v[None] for k, v in win.items()}, onnx.cfg, onnx.normalizer)[
                                   keys.ACTION_HISTORY], atol=1e-6)
