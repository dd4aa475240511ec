"""Issue 11, the policy side: one test per fault row and structural debt, each failing on the code before it."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from policy.checkpoint import load_checkpoint, load_spec, resolve_checkpoint_dir, save_checkpoint
from policy.config import Config, EncoderConfig, PolicyConfig, TrainConfig
from policy.config_utils import ConfigError, from_dict
from policy.data import ReplayBuffer, WindowSampler
from policy.data.synthetic import synthetic_episode
from policy.model import DiffusionPolicyModel
from policy.normalizer import Normalizer
from policy.policy import Policy
from policy.protocol import PolicySpec
from policy.schedule import lr_at
from policy.train import Trainer, train
from policy.train_state import control_rate_hz, legacy_optimizer_state, optimizer_state, restore_optimizer

from .conftest import tiny_config, tiny_policy_config


def _records(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_row07_a_checkpoint_loads_without_its_pretrained_imagenet_file(tmp_path):
    import torchvision

    weights = tmp_path / "r18.safetensors"  # an ImageNet-style file (BatchNorm layout), on the training machine
    save_file({k: v.clone() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, str(weights))
    p = tiny_policy_config(image_keys=("scene_rgb",), n_obs_steps=1,
                           encoder=EncoderConfig(backbone="resnet18", crop_shape=(28, 28), feature_dim=16,
                                                 num_keypoints=8, pretrained_path=str(weights)))
    model = DiffusionPolicyModel(p).eval()
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"ee_pose": rng.normal(size=(20, 9)), "gripper": rng.normal(size=(20, 1)),
                           "action": rng.normal(size=(20, 10))})
    ckpt = save_checkpoint(tmp_path / "ckpt", Config(policy=p, train=TrainConfig()), model, norm, {"step": 1})
    weights.unlink()  # another machine: the file is not there
    _, loaded, _, _ = load_checkpoint(ckpt)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k  # the weights come from model.safetensors
    assert load_spec(ckpt).action_dim == 10
    assert Policy.from_pretrained(ckpt, device="cpu").action_dim == 10
    with pytest.raises(FileNotFoundError, match="pretrained_path"):  # a new model still needs it
        DiffusionPolicyModel(p)


def test_row09_the_checkpoint_records_its_control_rate(tmp_path, tiny_dataset):
    ckpt = train(tiny_config(tiny_dataset, tmp_path / "run", steps=2, ckpt_every=2))
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["control_hz"] == pytest.approx(10.0)  # synthetic demos: a timestamp every 0.1 s
    policy = Policy.from_pretrained(ckpt, device="cpu")
    assert policy.control_hz == pytest.approx(10.0)
    assert PolicySpec.of(policy).control_hz == pytest.approx(10.0)
    assert load_spec(ckpt).control_hz == pytest.approx(10.0)
    # a checkpoint from before the field keeps loading; its rate is unknown
    del meta["control_hz"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert Policy.from_pretrained(ckpt, device="cpu").control_hz is None and load_spec(ckpt).control_hz is None
    # the median step within episodes: jitter and the jump between episodes do not move it
    ts = np.concatenate([np.arange(10) * 0.05 + 100, np.arange(10) * 0.05 + np.r_[0, 0.003, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert control_rate_hz(ts, np.array([10, 20])) == pytest.approx(20.0)
    assert control_rate_hz(np.zeros(6), np.array([3, 6])) is None  # no usable clock
    assert control_rate_hz(np.full(6, np.nan), np.array([6])) is None


def test_row11_a_resumed_run_logs_each_step_once_from_the_checkpoint(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, run, steps=2, ckpt_every=2, val_every=2, log_every=1))
    # the killed run went on past its checkpoint (step 2) and logged steps 3 and 4, the last line torn
    with (run / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + json.dumps({"step": 4, "loss": 1.0}) + "\n")
        f.write('{"step": 5, "lo')
    train(tiny_config(tiny_dataset, run, steps=4, ckpt_every=2, val_every=2, log_every=1, resume=True))
    recs = _records(run)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "val_loss" in r] == [2, 4]
    steps = [r["step"] for r in recs]
    assert steps == sorted(steps)


def test_row13_the_history_pad_is_one_rule_for_training_and_runtime(tmp_path):
    ep = synthetic_episode(np.random.default_rng(0), 6, (32, 32))
    arrays = {k: ep[k] for k in ("ee_pose", "gripper", "action")}
    ends = np.array([6])
    absolute = tiny_policy_config().action_space_spec()
    batch = WindowSampler(ends, [0], 1, 4, history_len=2, action_space=absolute).gather(arrays, np.array([0, 1]), [])
    measured = np.concatenate([ep["ee_pose"][0], ep["gripper"][0]])  # the hold target the runtime sends
    np.testing.assert_array_equal(batch["action_history"][0], [measured, measured])
    np.testing.assert_array_equal(batch["action_history"][1], [measured, ep["action"][0]])
    np.testing.assert_array_equal(absolute.pad(ep["ee_pose"][0], ep["gripper"][0]), measured)  # runtime's call
    assert not np.allclose(measured, ep["action"][0])  # what training padded with before

    delta = tiny_policy_config(action_space="delta", hold_action=(0.0,) * 9 + (0.5,)).action_space_spec()
    batch = WindowSampler(ends, [0], 1, 4, history_len=2, action_space=delta).gather(arrays, np.array([0]), [])
    np.testing.assert_array_equal(batch["action_history"][0], [delta.hold_action] * 2)
    np.testing.assert_array_equal(delta.pad(), [0] * 9 + [0.5])  # the runtime needs no measurement
    assert tiny_policy_config(action_space="delta").action_space_spec().pad(None, None).tolist() == [0.0] * 10

    # a 7-D delta action next to our 9-D pose + gripper: absolute cannot pad, the error names the field
    delta7 = dict(lowdim_dims={"ee_pose": 9, "gripper": 1}, action_dim=7)
    with pytest.raises(ConfigError, match="policy.action_space"):
        from_dict(Config, {"policy": {**delta7, "image_keys": []}})
    assert PolicyConfig(**delta7, action_space="delta").action_space_spec().pad().shape == (7,)
    # Push-T (2-D position target, ee_pose 2, no gripper): the measured pose alone
    pusht = PolicyConfig(lowdim_dims={"ee_pose": 2}, action_dim=2).action_space_spec()
    np.testing.assert_array_equal(pusht.pad(np.array([3.0, 4.0]), None), [3.0, 4.0])
    with pytest.raises(ValueError, match="hold_action"):
        PolicyConfig(action_space="delta", hold_action=(0.0, 0.0))

    # a dataset without ee_pose and gripper (delta actions) trains; checkpoint, Policy and spec carry the space
    rb = ReplayBuffer.create(tmp_path / "state.zarr")
    rng = np.random.default_rng(0)
    for _ in range(3):
        rb.add_episode({"state": rng.normal(size=(10, 3)).astype(np.float32),
                        "action": rng.normal(size=(10, 2)).astype(np.float32)})
    p = tiny_policy_config(image_keys=(), lowdim_dims={"state": 3}, action_dim=2, action_space="delta",
                           hold_action=(0.0, 1.0))
    policy = Policy.from_pretrained(train(tiny_config(tmp_path / "state.zarr", tmp_path / "run", p, steps=2)))
    assert policy.action_space.kind == "delta" and policy.action_space.hold_action == (0.0, 1.0)
    assert PolicySpec.of(policy).action_space == policy.action_space
    assert load_spec(tmp_path / "run").action_space == policy.action_space
    assert policy.control_hz is None  # no timestamps in this dataset
    assert PolicySpec(1, 8, 10, ("ee_pose",)).action_space.kind == "absolute"  # the default


class _Killed(BaseException):
    """The process dies here."""


def test_structure4_a_kill_between_the_two_renames_keeps_the_best_checkpoint(tmp_path, tiny_dataset, monkeypatch):
    results = iter([0.5, 0.8, 0.3])  # success rates of the evaluations at steps 2, 4, 6
    monkeypatch.setattr("policy.train.load_plugin",
                        lambda spec, what: lambda ckpt, **kw: {"success_rate": next(results)})
    run = tmp_path / "run"
    cfg = dict(steps=4, eval_every=2, ckpt_every=100, val_every=100)
    rename = pathlib.Path.rename

    def dies_before_the_second(self, target):  # the second rename of the best swap: best.tmp -> best
        if self.name == "best.tmp" and self.with_name("best.old").exists():
            raise _Killed
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", dies_before_the_second)
    with pytest.raises(_Killed):
        Trainer(tiny_config(tiny_dataset, run, **cfg)).run()  # step 4 beats step 2: the swap is killed
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    best = run / "checkpoints" / "best"
    assert not best.exists() and (run / "checkpoints" / "best.old").is_dir()
    assert resolve_checkpoint_dir(best) == run / "checkpoints" / "best.old"  # readers find it meanwhile
    assert load_checkpoint(best)[3]["step"] == 2
    # resumed, a worse evaluation at step 6 must not take the place of the best one
    Trainer(tiny_config(tiny_dataset, run, **{**cfg, "steps": 6}, resume=True)).run()
    assert json.loads((best / "eval.json").read_text())["success_rate"] == 0.5
    assert json.loads((best / "meta.json").read_text())["step"] == 2
    assert not (run / "checkpoints" / "best.old").exists()


def test_structure5_random_crops_follow_the_training_mode_not_the_generator():
    p = tiny_policy_config()
    model = DiffusionPolicyModel(p)
    gen = torch.Generator().manual_seed(0)
    obs = {"scene_rgb": torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8, generator=gen),
           "wrist_rgb": torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8, generator=gen),
           "ee_pose": torch.zeros(2, 2, 9), "gripper": torch.zeros(2, 2, 1), "action_history": torch.zeros(2, 2, 10)}
    model.train()
    a, b = model.encoder(obs), model.encoder(obs)  # no generator: still augmented
    assert not torch.equal(a, b)
    seeded = [model.encoder(obs, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*seeded)  # repeatable with a generator
    assert torch.isfinite(model.loss(obs, torch.zeros(2, p.chunk_len, p.action_dim)))
    model.eval()
    assert torch.equal(model.encoder(obs), model.encoder(obs, torch.Generator().manual_seed(3)))  # centre crops


def test_structure6_the_optimizer_state_is_saved_as_its_state_dict(tmp_path, tiny_dataset):
    from safetensors.torch import load_file

    ckpt = train(tiny_config(tiny_dataset, tmp_path / "run", steps=3, ckpt_every=3))
    tr = Trainer(tiny_config(tiny_dataset, tmp_path / "run", steps=3, resume=True))
    saved = json.loads((ckpt / "train_state.json").read_text())["optimizer"]
    assert saved["param_groups"][0]["fused"] and len(saved["state"]) == len(list(tr.model.parameters()))
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    fresh = torch.optim.AdamW(tr.model.parameters(), lr=1.0, fused=True)
    restore_optimizer(fresh, tensors, saved)
    a, b = tr.optim.state_dict(), fresh.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] != 1.0
    for i, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"][i][k]) and v.dtype == b["state"][i][k].dtype, (i, k)
    # a checkpoint of the first format (moments by parameter index, one step count) still resumes
    flat, _ = optimizer_state(tr.optim)
    legacy = {k: v for k, v in flat.items() if not k.endswith(".step")}
    old = torch.optim.AdamW(tr.model.parameters(), lr=1.0, fused=True)
    restore_optimizer(old, legacy, legacy_optimizer_state(old, legacy, optim_step=3))
    assert all(torch.equal(old.state_dict()["state"][i]["exp_avg"], st["exp_avg"]) for i, st in a["state"].items())
    assert float(old.state_dict()["state"][0]["step"]) == 3.0


def test_structure8_a_time_budget_alone_runs_until_the_budget(tmp_path, tiny_dataset, monkeypatch, caplog):
    assert TrainConfig().max_steps == 3000 and TrainConfig(steps=50, max_minutes=1).max_steps == 50
    budget = TrainConfig(max_minutes=1, warmup_steps=0)
    assert budget.max_steps is None and "after 1 min" in budget.end_rule()
    cfg = Config(train=budget)
    assert lr_at(5000, cfg, train_seconds=30) == pytest.approx(budget.lr * 0.5)  # half the budget: half-way down
    # a run with a budget and no step count goes past the default step count (shrunk here to 2 steps)
    monkeypatch.setattr("policy.config.DEFAULT_STEPS", 2)
    caplog.set_level(logging.INFO, logger="policy.train")
    run = tmp_path / "run"
    ckpt = train(tiny_config(tiny_dataset, run, steps=None, max_minutes=0.05, budget_clock="cpu", ckpt_every=1000,
                             val_every=1000, log_every=1000))
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    assert step > 2
    assert "the run ends after 0.05 min" in caplog.text
    # resuming a run whose budget is spent trains no further step (it returns its checkpoint as it is)
    ckpt = train(tiny_config(tiny_dataset, run, steps=None, max_minutes=0.05, budget_clock="cpu", ckpt_every=1000,
                             val_every=1000, log_every=1000, resume=True))
    assert json.loads((ckpt / "meta.json").read_text())["step"] == step
    shutil.rmtree(run)
